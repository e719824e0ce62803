"""The layer contract in pyproject.toml holds: data -> nn -> evaluation -> training -> models -> ... -> cli,
each importing only layers below it (import-linter), and no package module imports recvae inside a
function to dodge a cycle (the command line's lazy imports keep `recvae --help` fast and are exempt)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    """The lint-imports command of this interpreter's environment (its bin/ may not be on PATH)."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    return command


def test_layers_only_point_down():
    result = subprocess.run([_lint_imports()], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_function_level_imports_of_recvae_outside_the_cli():
    offenders = []
    for path in sorted((ROOT / "recvae").rglob("*.py")):
        if path.name == "__main__.py" or path.parent.name == "cli":  # recvae/cli/: the command line
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("recvae"):
                        offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno} from {inner.module}")
                    elif isinstance(inner, ast.Import) and any(a.name.startswith("recvae") for a in inner.names):
                        offenders.append(f"{path.relative_to(ROOT)}:{inner.lineno} import")
    assert not offenders, offenders


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package where data imports models is refused."""
    command = _lint_imports()
    shutil.copytree(ROOT / "recvae", tmp_path / "recvae")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "recvae" / "data" / "ids.py"
    bad.write_text(bad.read_text() + "\nfrom recvae.models import base as _upward  # noqa\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result = subprocess.run([command], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and "broken" in result.stdout
