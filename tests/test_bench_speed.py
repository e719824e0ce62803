"""The speed benchmark (issue 16) runs end to end in its quick mode with its fp32 and bf16 rows, so it cannot
rot between the runs at the ML-1M and ML-20M shapes."""

import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BF16_ROWS = [  # (table label, speed.json key) of each bf16 row
    ("Mult-VAE step, sparse input, bf16 autocast (s)", "bf16 sparse s/step"),
    ("decoder matmul bound, bf16 operands (s/step)", "bf16 decoder bound s/step"),
    ("bf16 sparse / bf16 decoder bound", "bf16 sparse / decoder bound"),
    ("bf16 / fp32 Mult-VAE sparse step", "bf16 / fp32 sparse s/step"),
    ("RecVAE, one batch's epoch, bf16 autocast (s)", "bf16 RecVAE s/batch (3 encoder + 1 decoder steps)"),
    ("RecVAE decoder matmul bound, bf16 operands (s/batch)", "bf16 RecVAE decoder bound s/batch"),
    ("RecVAE bf16 / its bf16 decoder bound", "bf16 RecVAE / decoder bound"),
    ("bf16 / fp32 RecVAE", "bf16 / fp32 RecVAE s/batch"),
]


def _number(cell: str) -> float:
    return float(cell.strip().rstrip("x").replace(",", ""))


def test_speed_benchmark_quick_writes_fp32_and_bf16_rows_with_their_ratios(tmp_path):
    # the default precisions (fp32 bf16), one tiny shape, one timed step of each kind
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_speed.py"), "--quick",
                             "--shapes", "ml-1m", "--steps", "1", "--threads", "1", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "speed_quick.md").read_text()
    assert "CPU capability " in text and "native CPU bf16" in text and "precisions fp32, bf16" in text
    rows = {line.split(" | ")[0].lstrip("| "): line.strip().strip("|").split("|")[1:]
            for line in text.splitlines() if line.startswith("| ") and " | " in line}
    labels = list(rows)
    # fp32's rows stay, the bf16 Mult-VAE rows follow fp32's Mult-VAE rows, the bf16 RecVAE rows fp32's RecVAE rows
    for label in ("Mult-VAE step, sparse input (s)", "decoder matmul bound (s/step)", "sparse / decoder bound",
                  "RecVAE, one batch's epoch: 3 encoder + 1 decoder steps (s)", "RecVAE / its decoder bound"):
        assert _number(rows[label][0]) > 0, label
    assert labels.index("decoder matmul GFLOP/s") < labels.index(BF16_ROWS[0][0]) < labels.index(
        "RecVAE, one batch's epoch: 3 encoder + 1 decoder steps (s)")
    assert labels.index("RecVAE s/epoch decoder bound (extrapolated)") < labels.index(BF16_ROWS[4][0]) < labels.index(
        "evaluation users/s (top-100, seen masked)")
    for label, _ in BF16_ROWS:
        assert label in rows, label
        assert len(rows[label]) == 1 and _number(rows[label][0]) > 0, label

    figures = json.loads((tmp_path / "speed_quick.json").read_text())
    assert figures["args"]["precisions"] == ["fp32", "bf16"]
    assert isinstance(figures["cpu capability"], str) and isinstance(figures["cpu native bf16"], bool)
    shape = figures["shapes"]["ml-1m"]
    assert shape["precisions"] == ["fp32", "bf16"]
    assert shape["host memory retained"] is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert "Host memory: freed memory kept for reuse" in text
    for _, key in BF16_ROWS:
        assert shape[key] > 0, key
    # the ratios are of the figures beside them
    assert abs(shape["bf16 / fp32 sparse s/step"] - shape["bf16 sparse s/step"] / shape["sparse s/step"]) < 1e-9
    assert abs(shape["bf16 RecVAE / decoder bound"] - shape["bf16 RecVAE s/batch (3 encoder + 1 decoder steps)"]
               / shape["bf16 RecVAE decoder bound s/batch"]) < 1e-9
    # the all-matmul bounds add the dense layers' matmuls to the decoder's, so they are larger and their
    # ratios smaller; each ratio is of the figures beside it
    for step, decoder, layers, bound, ratio in [
            ("sparse s/step", "decoder bound s/step", "dense layers s/step", "all-matmul bound s/step",
             "sparse / all-matmul bound"),
            ("RecVAE s/batch (3 encoder + 1 decoder steps)", "RecVAE decoder bound s/batch",
             "RecVAE encoder dense layers s/batch", "RecVAE all-matmul bound s/batch", "RecVAE / all-matmul bound")]:
        assert shape[layers] > 0 and abs(shape[bound] - shape[decoder] - shape[layers]) < 1e-12, bound
        assert abs(shape[ratio] - shape[step] / shape[bound]) < 1e-9, ratio
    for label in ("all-matmul bound: decoder + dense layers (s/step)", "sparse / all-matmul bound",
                  "RecVAE all-matmul bound: decoder + encoder layers (s/batch)", "RecVAE / its all-matmul bound"):
        assert _number(rows[label][0]) > 0, label


def test_fp32_kinds_keep_their_order_beside_other_precisions():
    """The timing order interleaves the precisions, but the fp32 kinds (one shared generator) run in the order
    they would alone, so fp32's figures are those of an fp32-only run; every kind still runs first in turn."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from bench_speed import interleaved
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    fp32 = ("sparse", "dense", "bound", "recvae", "recvae bound")
    bf16 = ("sparse bf16", "bound bf16", "recvae bf16", "recvae bound bf16")
    firsts = set()
    for rep in range(40):
        alone = list(fp32[rep % 5:] + fp32[:rep % 5])
        assert interleaved([fp32], rep) == alone
        order = interleaved([fp32, bf16], rep)
        assert sorted(order) == sorted(fp32 + bf16) and [k for k in order if k in fp32] == alone
        firsts.add(order[0])
    assert firsts == set(fp32 + bf16)
