"""Sparse EASE and blocked recommendation on power-law catalogues of 100k and 1M items.

For each catalogue size, in its own subprocess (so its peak resident memory is its own):

1. ``catalogue_interactions`` draws 20,000 users x I items, ~50 events per user (timed);
2. ``SparseEASE(neighbours=K).fit`` on every user (timed; peak RSS above the data's);
3. ``recommend`` top-100 for ``--users`` users under the default 1 GiB ``max_memory``
   (timed; peak RSS above the model's), blocks of items merged into a running top-k.

Peak RSS is Linux's VmHWM, reset before each stage (``/proc/self/clear_refs``), minus
the resident memory before it; single-threaded BLAS.

    python experiments/bench_sparse_ease.py --items 100000 1000000

Prints one Markdown row per size; ``--out FILE`` writes the table too. Asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

HEADER = ("| items | users | events | weights | generate s | fit s | fit peak RSS | estimate "
          "| recommend users | recommend s | recommend peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _stage(action):
    """(result, seconds, peak bytes above the resident memory before)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started, _status("VmHWM") - before


def measure(n_items: int, n_users: int, neighbours: int, rec_users: int,
            max_memory: int | None = None) -> dict:
    """One size: generate, fit and recommend, each stage's seconds and peak RSS above the resident
    memory before it (``*_peak``) and absolute (``*_rss``: VmHWM, reset at the stage's start)."""
    import dataclasses

    from threadpoolctl import threadpool_limits

    from recvae.data import CATALOGUE_1M, CATALOGUE_100K, catalogue_interactions
    from recvae.models import SparseEASE
    from recvae.models.sparse_ease import sparse_ease_memory_bytes

    config = dataclasses.replace(CATALOGUE_1M if n_items >= 1_000_000 else CATALOGUE_100K, n_items=n_items,
                                 n_users=n_users)
    with threadpool_limits(1):
        data, gen_s, _ = _stage(lambda: catalogue_interactions(config))
        model, fit_s, fit_peak = _stage(lambda: SparseEASE(neighbours=neighbours).fit(data))
        fit_rss = _status("VmHWM")  # the fit's absolute peak: _stage reset VmHWM before it
        rows = data.matrix[:rec_users]
        recs, rec_s, rec_peak = _stage(lambda: model.recommend(rows, k=100, max_memory=max_memory))
        rec_rss = _status("VmHWM")
    assert recs.items.shape == (rec_users, 100)
    x = data.matrix
    return {"items": n_items, "users": n_users, "events": int(x.nnz), "weights": int(model.weights_.nnz),
            "generate_s": gen_s, "fit_s": fit_s, "fit_peak": fit_peak,
            "estimate": sparse_ease_memory_bytes(x, neighbours), "rec_users": rec_users, "rec_s": rec_s,
            "rec_peak": rec_peak, "fit_rss": fit_rss, "rec_rss": rec_rss}


def row(r: dict) -> str:
    gib = 2**30
    return (f"| {r['items']:,} | {r['users']:,} | {r['events']:,} | {r['weights']:,} | {r['generate_s']:.1f} "
            f"| {r['fit_s']:.1f} | {r['fit_peak'] / gib:.2f} GiB | {r['estimate'] / gib:.2f} GiB | {r['rec_users']:,} "
            f"| {r['rec_s']:.1f} | {r['rec_peak'] / 2**20:.0f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--neighbours", type=int, default=64)
    parser.add_argument("--recommend-users", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess: one size, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.users, args.neighbours, args.recommend_users)))
        return
    lines = [HEADER]
    print(HEADER, flush=True)
    for n_items in args.items:
        out = subprocess.run([sys.executable, __file__, "--one", str(n_items), "--users", str(args.users),
                              "--neighbours", str(args.neighbours), "--recommend-users", str(args.recommend_users)],
                             check=True, capture_output=True, text=True).stdout
        lines.append(row(json.loads(out.strip().splitlines()[-1])))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
