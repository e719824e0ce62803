"""The GPU benchmark runs end to end in its CPU dry-run mode, so it cannot rot before a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_prints_and_writes_its_table(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_gpu.py"), "--dry-run", "--steps", "1",
                             "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| Mult-VAE | fp32 |" in result.stdout and "| RecVAE | bf16 |" in result.stdout
    figures = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert {(r["model"], r["precision"]) for r in figures["training"]} == {
        ("Mult-VAE", "fp32"), ("Mult-VAE", "bf16"), ("RecVAE", "fp32"), ("RecVAE", "bf16")}
    assert all(r["s/epoch"] > 0 and r["ratio"] > 0 for r in figures["training"])
    assert figures["eval users/s"] > 0 and (tmp_path / "gpu_dry_run.md").read_text().startswith("# GPU benchmark")
