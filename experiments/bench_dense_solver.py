"""EASE's dense closed-form solve at large catalogues: does it hold, how long, how much memory.

For each catalogue size, in its own subprocess (so its peak resident memory is its own):
a seeded power-law log (``catalogue_interactions``: ``--users-per-item`` x I users, about
``--events`` events each), then EASE's whole fit (``_closed_form_weights``: the dense Gram
build, torch's in-place Cholesky factorisation and inverse, the float32 weights) with
``--threads`` threads. Prints per size: solver, dtype, the stages' seconds, the peak RSS
over the resident memory before the fit (Linux VmHWM, reset first), the memory check's
estimate and their ratio. A size that crashes shows its exit status instead of a row.

    python experiments/bench_dense_solver.py --items 4000 8000 16000
    python experiments/bench_dense_solver.py --items 20000 35000 --dtype float32

``--compare`` also fits the float32 solve next to the float64 one and prints the largest
weight difference and NDCG@100 / Recall@20 of both on 20% held-out events per user.
Asserts nothing. On shared, oversubscribed cores set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP
threads made the 2-thread inverse 10x slower there (2,000 items: 10.2 s against 1.0 s).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

SOLVER = "torch.linalg.cholesky_ex + torch.cholesky_inverse, in place (MKL)"
HEADER = ("| items | users | events | threads | dtype | Gram s | solve s | weights s | total s | peak RSS "
          "| estimate | estimate / peak |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _log(n_items: int, n_users: int, events: float):
    from recvae.data import CatalogueConfig, catalogue_interactions

    config = CatalogueConfig(n_users=n_users, n_items=n_items, events_per_user=events, n_tastes=max(20, n_items // 200))
    return catalogue_interactions(config).matrix.tocsr()


def measure(n_items: int, n_users: int, events: float, threads: int, dtype: str) -> dict:
    """One size: the fit's stage seconds (from its log line), peak RSS above the RSS before it, the estimate."""
    import numpy as np
    import torch

    from recvae.models import ease

    torch.set_num_threads(threads)
    matrix = _log(n_items, n_users, events)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("recvae.models.ease").addHandler(handler)
    logging.getLogger("recvae.models.ease").setLevel(logging.INFO)
    chosen = ease._check_ease_memory(matrix) if dtype == "auto" else np.dtype(dtype)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    started = time.perf_counter()
    weights = ease._closed_form_weights(matrix, 500.0, 0.0, "EASE", dtype=chosen)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM") - before
    stages = [float(v) for v in re.search(r"Gram ([\d.]+)s, Cholesky inverse ([\d.]+)s, weights ([\d.]+)s",
                                          lines[-1]).groups()]
    assert weights.shape == (n_items, n_items) and weights.dtype == np.float32
    return {"items": n_items, "users": n_users, "events": int(matrix.nnz), "threads": threads, "dtype": chosen.name,
            "stages": stages, "seconds": seconds, "peak": peak, "weights_rss": _status("VmRSS") - before,
            "estimate": ease.ease_memory_bytes(n_items, chosen, matrix), "solver": SOLVER}


def compare(n_items: int, n_users: int, events: float, threads: int) -> dict:
    """float32 against float64 at one size: largest |ΔB| and the ranking metrics of both on held-out events."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from recvae.evaluation.metrics import mask_seen, ndcg_at_k, recall_at_k, top_k
    from recvae.models import ease

    torch.set_num_threads(threads)
    matrix = _log(n_items, n_users, events)
    held = np.random.default_rng(1).random(matrix.nnz) < 0.2
    coo = matrix.tocoo()
    fold_in = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=matrix.shape)
    target = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=matrix.shape)
    out = {"items": n_items}
    both = {}
    for dtype in ("float64", "float32"):
        both[dtype] = ease._closed_form_weights(fold_in, 500.0, 0.0, "EASE", dtype=dtype)
        top = top_k(mask_seen(np.asarray(fold_in @ both[dtype]), fold_in), 100)
        out[dtype] = {"ndcg@100": float(ndcg_at_k(top, target, 100).mean()),
                      "recall@20": float(recall_at_k(top[:, :20], target, 20).mean())}
    out["max_abs_diff"] = float(np.abs(both["float64"] - both["float32"]).max())
    out["max_abs_weight"] = float(np.abs(both["float64"]).max())
    return out


def row(r: dict) -> str:
    mib = 2**20
    gram, solve, weights = r["stages"]
    return (f"| {r['items']:,} | {r['users']:,} | {r['events']:,} | {r['threads']} | {r['dtype']} | {gram:.1f} "
            f"| {solve:.1f} | {weights:.1f} | {r['seconds']:.1f} | {r['peak'] / mib:,.0f} MiB "
            f"| {r['estimate'] / mib:,.0f} MiB | {r['estimate'] / r['peak']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[4000, 8000, 16000])
    parser.add_argument("--users-per-item", type=float, default=2.0, help="users = this x items")
    parser.add_argument("--events", type=float, default=10.0, help="mean events per user")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("auto", "float64", "float32"), default="auto",
                        help="the solve's precision (auto: what the memory check picks)")
    parser.add_argument("--compare", action="store_true", help="float32 against float64 at each size")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess: one size, JSON out
    args = parser.parse_args()
    if args.one:
        users = int(args.users_per_item * args.one)
        result = (compare(args.one, users, args.events, args.threads) if args.compare
                  else measure(args.one, users, args.events, args.threads, args.dtype))
        print(json.dumps(result))
        return
    import os

    print(f"solver: {SOLVER}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: threads spin)')}", flush=True)
    lines = [HEADER] if not args.compare else []
    if lines:
        print(HEADER, flush=True)
    for n_items in args.items:
        command = [sys.executable, __file__, "--one", str(n_items), "--users-per-item", str(args.users_per_item),
                   "--events", str(args.events), "--threads", str(args.threads), "--dtype", args.dtype]
        done = subprocess.run(command + (["--compare"] if args.compare else []), capture_output=True, text=True)
        if done.returncode != 0:
            lines.append(f"| {n_items:,} | exit status {done.returncode}: {done.stderr.strip()[-300:]} |")
        elif args.compare:
            lines.append(done.stdout.strip().splitlines()[-1])
        else:
            lines.append(row(json.loads(done.stdout.strip().splitlines()[-1])))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
