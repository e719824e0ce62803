"""Every shell command of the README runs, on tiny data, so that the README cannot go stale.

The ```bash / ```sh / ```console blocks of README.md are parsed (continued lines joined, ``&&``
split, comments dropped) and each ``recvae ...`` / ``python -m recvae ...`` command runs, in README
order, in one temporary directory, through :func:`recvae.cli.main` (in-process: one import of torch),
with only these substitutions:

- the logs the README names are written by the test: ``log.parquet`` (the own-log recipe: string ids
  in ``customer`` / ``product``, ``stars``, ``ts``) and ``ratings.csv`` (MovieLens-style, with the
  user and item ids the README's examples use); a MovieLens name (``ml-1m`` ..., a download) reads
  ``ratings.csv`` instead;
- epochs and budgets are cut: ``--epochs N`` / ``epochs=N`` to 1, ``--trials N`` to 2, ``recvae demo``
  gets ``--users 300 --items 120 --epochs 1``; a torch model's ``train`` without epochs gets ``--epochs 1``.

``pip install`` and ``pytest`` lines are skipped and counted; any other command must match :data:`SKIPPED`,
a short list with the reason for each. A README command that is neither run nor listed fails the test.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.data.movielens import MOVIELENS

README = Path(__file__).resolve().parents[1] / "README.md"

#: (what a command starts with, or a token it holds) -> why the test does not run it
SKIPPED = {
    "recvae serve": "serves HTTP until stopped; tests/test_serve*.py start the app",
    "curl": "talks to the server started by 'recvae serve'",
    "recvae experiment": "a benchmark table: minutes to hours; tests/test_experiment.py runs tiny configs",
    "torchrun": "starts several processes (several machines); tests/test_distributed.py trains data-parallel",
    "--nproc": "starts torchrun processes; tests/test_distributed.py trains data-parallel",
    "python experiments/": "benchmark scripts: minutes to hours on full-size data",
    "python tools/mutate.py": "plants every bug and runs the suite for each: hours",
    "python tools/compare_scores.py": "compares against a git commit (--ref)",
    "lint-imports": "tests/test_architecture.py checks the layer contract",
}
#: extras a command needs: skipped (with the reason) where the extra is not installed
NEEDS = {"recvae export": "onnx", "recvae tune": "optuna"}


def readme_commands(text: str) -> list[list[str]]:
    """The commands of the shell blocks of ``text``, as token lists."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.S | re.M):
        lines = [line[2:] if line.startswith("$ ") else line for line in block.splitlines()]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        for line in joined.splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                commands.append(tokens[:cut])
                tokens = tokens[cut + 1:]
    return [c for c in commands if c]


def _skip_reason(tokens: list[str]) -> str | None:
    line = " ".join(tokens)
    for key, reason in SKIPPED.items():
        if line.startswith(key) or key in tokens:
            return reason
    for key, module in NEEDS.items():
        if line.startswith(key) and importlib.util.find_spec(module) is None:
            return f"needs {module} (not installed here)"
    return None


def _argv(tokens: list[str]) -> list[str] | None:
    """The arguments of ``recvae`` in a command, substituted for tiny data; None for any other program."""
    if tokens[0] == "recvae":
        args = tokens[1:]
    elif tokens[:3] == ["python", "-m", "recvae"]:
        args = tokens[3:]
    else:
        return None
    args = ["ratings.csv" if a.lower() in MOVIELENS else a for a in args]
    args = [re.sub(r"^epochs=\d+$", "epochs=1", a) for a in args]
    for flag, value in (("--epochs", "1"), ("--trials", "2")):
        if flag in args:
            args[args.index(flag) + 1] = value
    if args and args[0] == "demo":
        args += ["--users", "300", "--items", "120", "--epochs", "1", "--no-progress"]
    if args and args[0] == "train" and not any(a in ("--epochs", "--epochs-from") or a == "epochs=1" for a in args):
        from recvae.models.options import torch_model_names

        model = args[args.index("--model") + 1] if "--model" in args else "mult-vae"
        if model in torch_model_names():
            args += ["--epochs", "1"]
    return args


def _write_logs(folder: Path) -> None:
    """``ratings.csv`` (MovieLens columns; users 1-80, items 1-150, 260 and 1196, as the README's examples),
    ``log.parquet`` (string ids in customer/product, stars, ts: the own-log recipe) and the update recipe's
    ``new.csv`` (MovieLens columns), ``today.csv`` (the own log's columns) and ``week.csv`` (the own log and today's)."""
    rng = np.random.default_rng(0)
    items = np.r_[np.arange(1, 151), 260, 1196]
    rows = []
    for user in range(1, 81):
        taste = rng.integers(0, 4)
        liked = [i for j, i in enumerate(items) if rng.random() < (0.3 if j % 4 == taste else 0.05)]
        liked += [1, 2, 260, 1196][: 1 + user % 4]
        for item in dict.fromkeys(liked):
            rows.append((user, int(item), float(rng.choice([3.0, 4.0, 4.5, 5.0], p=[0.2, 0.3, 0.2, 0.3])),
                         int(1e9) + len(rows)))
    frame = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    frame.to_csv(folder / "ratings.csv", index=False)
    own = pd.DataFrame({"customer": "u" + frame["userId"].astype(str), "product": "m" + frame["movieId"].astype(str),
                        "stars": frame["rating"], "ts": frame["timestamp"]})
    own.to_parquet(folder / "log.parquet")
    # the update recipe's new events: known users and a new one, on known items and a new one
    new = frame.sample(40, random_state=0).assign(movieId=lambda f: f["movieId"].where(f.index % 2 == 0, 1))
    new = pd.concat([new, pd.DataFrame({"userId": [999] * 3, "movieId": [1, 2, 151], "rating": 5.0,
                                        "timestamp": int(2e9)})], ignore_index=True)
    new.to_csv(folder / "new.csv", index=False)
    today = pd.DataFrame({"customer": "u" + new["userId"].astype(str), "product": "m" + new["movieId"].astype(str),
                          "stars": new["rating"], "ts": new["timestamp"]})
    today.to_csv(folder / "today.csv", index=False)
    pd.concat([own, today], ignore_index=True).to_csv(folder / "week.csv", index=False)


def test_the_readme_parses_into_commands():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert sum(_argv(c) is not None for c in commands) >= 20, "the README's recvae commands were not found"
    tokens = readme_commands("```bash\nrecvae a \\\n  --b 'c d'  # note\npip install x && python -m recvae demo\n```\n")
    assert tokens == [["recvae", "a", "--b", "c d"], ["pip", "install", "x"], ["python", "-m", "recvae", "demo"]]


def test_every_readme_command_runs_on_tiny_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_logs(tmp_path)
    ran, skipped, failures = [], {}, []
    for tokens in readme_commands(README.read_text(encoding="utf-8")):
        line = " ".join(tokens)
        if tokens[0] == "pip" or "pytest" in tokens[:3]:
            skipped.setdefault("installs or runs the test suite", []).append(line)
            continue
        reason = _skip_reason(tokens)
        if reason is not None:
            skipped.setdefault(reason, []).append(line)
            continue
        argv = _argv(tokens)
        if argv is None:
            failures.append(f"{line}: neither run nor in SKIPPED (add it there, with the reason)")
            continue
        try:
            code = main(argv)
        except SystemExit as err:
            code = err.code
        ran.append(line)
        if code != 0:
            failures.append(f"{line} (run as: recvae {shlex.join(argv)}): {code}")
    capsys.readouterr()
    assert not failures, "README commands that failed:\n" + "\n".join(failures)
    assert len(ran) >= 20 and {"installs or runs the test suite"} <= set(skipped)
