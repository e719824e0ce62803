"""Every public module imports on its own in a fresh interpreter (no import cycles)."""

import subprocess
import sys

import pytest

MODULES = ["recvae.training", "recvae.evaluation", "recvae.tuning", "recvae.runtime.distributed",
           "recvae.models.mult_vae", "recvae.models.rec_vae", "recvae.models.hybrid", "recvae.experiment"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_each_module_imports_first():
    code = "; ".join(
        f"import subprocess, sys; r = subprocess.run([sys.executable, '-c', 'import {m}']); assert r.returncode == 0, '{m}'"
        for m in MODULES
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_package_and_cli_import_without_torch():
    result = _run("import sys, recvae, recvae.data, recvae.cli; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_models_namespace_exports_everything():
    import recvae.models as models

    for name in models.__all__:
        assert getattr(models, name) is not None
    with pytest.raises(AttributeError):
        models.NoSuchModel
