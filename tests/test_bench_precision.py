"""The precision benchmark (issue 28) runs end to end in its quick mode, so it cannot rot between the runs
on ml-1m-half: a row per model, precision and seed, and a summary whose differences follow from the rows."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_precision_benchmark_quick_writes_every_fit_and_the_paired_summary(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_precision.py"), "--quick",
                             "--models", "mult-dae", "--epochs", "2", "--seeds", "0", "1", "--device", "cpu",
                             "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "precision_synthetic-quick.json").read_text())
    rows = data["rows"]
    assert sorted((r["precision"], r["seed"]) for r in rows) == [("bf16", 0), ("bf16", 1), ("fp32", 0), ("fp32", 1)]
    assert all(r["model"] == "mult-dae" and r["epochs"] == 2 for r in rows)
    test = {(r["precision"], r["seed"]): r["test ndcg@100"] for r in rows}
    (summary,) = data["summaries"]
    assert summary["fp32"] == pytest.approx(np.mean([test["fp32", 0], test["fp32", 1]]))
    assert summary["bf16"] == pytest.approx(np.mean([test["bf16", 0], test["bf16", 1]]))
    assert summary["diff"] == pytest.approx(summary["bf16"] - summary["fp32"])
    assert summary["per-seed diffs"] == pytest.approx([test["bf16", s] - test["fp32", s] for s in (0, 1)])
    text = (tmp_path / "precision_synthetic-quick.md").read_text()
    assert text.count("| mult-dae | fp32 |") == 2 and text.count("| mult-dae | bf16 |") == 2
    assert f"{summary['diff']:+.4f}" in text
