"""The catalogue benchmark (issue 17) runs end to end in its quick mode and prints its table, so it cannot rot
between the rare runs at a million items."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_catalogue_benchmark_quick_prints_one_table_per_size_with_every_stage(tmp_path):
    out = tmp_path / "catalogue.md"
    # A chunk and negatives below the catalogue, so that the chunked and sampled paths are the ones timed.
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_catalogue.py"), "--quick",
                             "--items", "3000", "--chunk", "1024", "--negatives", "500", "--threads", "1",
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.rstrip().endswith(result.stdout.rstrip().split("\n\n")[-1])  # the file holds what was printed
    assert text.count("### ") == 1 and "### 3,000 items" in text
    header = "| stage | seconds | users/s | peak RSS | working set | decoder matmul bound s | × bound |"
    lines = text[text.index(header):].strip().splitlines()[2:]
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("|").split("|") for line in lines}
    expected = [f"train step: {kind}{updates}" for kind in ("exact chunked (chunk 1,024)", "sampled softmax (500 negatives)")
                for updates in ("", " + sparse updates", " + sparse updates, bf16 moments")]
    assert list(rows)[:6] == expected
    assert list(rows)[6].startswith("Mult-VAE recommend top-100: 200 users")
    assert list(rows)[7].startswith("SparseEASE fit: 1,000 users") and list(rows)[8].startswith(
        "SparseEASE recommend top-100: 200 users")
    assert len(rows) == 9 and not any("skipped" in line for line in lines)
    for label, cells in rows.items():
        cells = [c.strip() for c in cells]
        assert len(cells) == 7, label
        seconds, users_per_s, peak, working, bound, ratio = cells[1:]
        assert float(seconds) > 0 and peak.endswith(("MiB", "GiB")), label
        if not label.startswith("SparseEASE fit"):
            assert float(users_per_s.replace(",", "")) > 0, label
        if label.startswith(("Mult-VAE recommend", "SparseEASE")):
            assert working.endswith(("MiB", "GiB")), label  # the peak above the resident memory before the call
        if label.startswith(("train", "Mult-VAE")):  # every VAE row stands beside its matmul bound
            assert float(bound) > 0 and float(ratio) > 0, label
        else:
            assert bound == "" and ratio == "", label
