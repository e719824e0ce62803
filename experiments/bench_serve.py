"""Serving speed of ``recvae serve``: throughput and latency with and without micro-batching.

For Mult-VAE and EASE fitted on ../shared/datasets/ml-1m-implicit/ratings.csv.gz (when
present; else a synthetic log of ML1M_SHAPE), every user and every item (``heldout_users=0``;
Mult-VAE trains briefly: this measures serving, not quality), a real server
(``python -m recvae serve RUN --host 127.0.0.1``) is started in a subprocess, with and without
``--no-batching``, and a fixed number of ``POST /recommend`` requests (random known users,
k=10) is sent at each concurrency (1, 8, 64 requests in flight) from an asyncio httpx client
on the same machine. Per cell: requests per second over the cell's wall time and the p50 /
p95 / p99 latency each client saw. Each cell stops by itself after its requests (or at
``--cell-timeout`` seconds); every server is terminated when its cells end.

    python experiments/bench_serve.py            # 600 requests per cell -> experiments/results/serve.md
    python experiments/bench_serve.py --quick    # 120 requests per cell, 1 epoch -> serve_quick.md

The client shares the CPU cores with the server, so the figures are a lower bound on what a
server with its own cores does; compare the rows, not the absolute numbers. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from recvae.data import ML1M_SHAPE, synthetic_log
from recvae.runs import LogSpec, Run, SplitSpec
from serve_helpers import Server, write_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "ml-1m-implicit" / "ratings.csv.gz"
RESULTS = ROOT / "experiments" / "results"
CONCURRENCY = (1, 8, 64)


def fit_runs(workdir: Path, epochs: int, models: tuple[str, ...] = ("mult-vae", "ease")) -> tuple[dict[str, Path], str]:
    """Run directories of Mult-VAE and EASE (or those of ``models``) on every user of the log; and the log's name."""
    if DATA.is_file():
        log, name = LogSpec(str(DATA), implicit=True), "ml-1m-implicit"
    else:
        log, name = LogSpec(synthetic_log(ML1M_SHAPE), rating_threshold=None), "synthetic (ML-1M shape)"
    quiet = lambda _: None  # noqa: E731
    runs = {}
    every = {"mult-vae": {"epochs": epochs, "seed": 0}, "ease": {"l2": 500.0}}
    for model, params in ((m, every[m]) for m in models):
        started = time.perf_counter()
        Run.fit(log, model, params=params, split=SplitSpec(heldout_users=0, seed=0), evaluate=False,
                output=workdir / model, report=quiet)
        print(f"fitted {model} on {name} in {time.perf_counter() - started:.1f} s", flush=True)
        runs[model] = workdir / model
    return runs, name


async def load(url: str, users: list, concurrency: int, k: int, timeout_s: float) -> dict:
    """Send ``len(users)`` requests, ``concurrency`` in flight; latencies of the answered ones."""
    latencies: list[float] = []
    errors = 0
    queue = list(reversed(users))
    deadline = time.perf_counter() + timeout_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(concurrency)))  # open the connections first
        before = (await client.get("/info")).json()

        async def worker() -> None:
            nonlocal errors
            while queue and time.perf_counter() < deadline:
                user = queue.pop()
                sent = time.perf_counter()
                try:
                    response = await client.post("/recommend", json={"user_id": user, "k": k})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        info = (await client.get("/info")).json()
    ms = np.asarray(latencies) * 1000.0
    return {"requests": len(latencies), "errors": errors, "seconds": wall,
            "req_per_s": len(latencies) / wall if wall > 0 else float("nan"),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "mean_batch": _mean_batch(before, info)}


def onnx_vs_torch(run_dir: Path, workdir: Path, n_users: int = 1000, repeats: int = 3) -> list[dict]:
    """Users/s of the fold-in scorer: torch ``model.score`` beside onnxruntime on the exported graph, same rows."""
    import onnxruntime

    from recvae.serving.onnx_export import export_onnx

    run = Run.load(run_dir, device="cpu")
    rows = run.history[:n_users]
    path = export_onnx(run, workdir / "scorer.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"indices": rows.indices.astype(np.int64), "offsets": rows.indptr.astype(np.int64),
             "values": rows.data.astype(np.float32)}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
    timings = {}
    for name, score in (("torch", lambda: run.model.score(rows)), ("onnxruntime", lambda: session.run(None, feeds))):
        score()  # warm-up
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            score()
            seconds.append(time.perf_counter() - started)
        timings[name] = min(seconds)
    return [{"scorer": name, "users": rows.shape[0], "users_per_s": rows.shape[0] / t, "ms": t * 1000.0}
            for name, t in timings.items()]


def _mean_batch(before: dict, after: dict) -> float | None:
    """/recommend requests per scored micro-batch between two /info answers (None without batching)."""
    if not after.get("batches") or after["batches"] <= before["batches"]:
        return None
    return (after["batched_requests"] - before["batched_requests"]) / (after["batches"] - before["batches"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="120 requests per cell, 1 Mult-VAE epoch")
    parser.add_argument("--requests", type=int, help="requests per cell (default 600; --quick 120)")
    parser.add_argument("--epochs", type=int, help="Mult-VAE epochs (default 2; --quick 1)")
    parser.add_argument("--k", type=int, default=10, help="items per request (default 10)")
    parser.add_argument("--cell-timeout", type=float, default=60.0, help="seconds one cell may take (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_requests = args.requests or (120 if args.quick else 600)
    epochs = args.epochs or (1 if args.quick else 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        runs, data_name = fit_runs(Path(tmp), epochs)
        scorer = onnx_vs_torch(runs["mult-vae"], Path(tmp))
        for row in scorer:
            print(f"{row['scorer']:12} {row['users_per_s']:10,.0f} users/s ({row['users']} users, {row['ms']:.1f} ms)")
        for model, run_dir in runs.items():
            user_ids = np.load(run_dir / "users.npz", allow_pickle=False)["user_ids"]
            rng = np.random.default_rng(args.seed)
            for batching in (True, False):
                with Server(run_dir, *([] if batching else ["--no-batching"])) as server:
                    asyncio.run(load(server.url, user_ids[:20].tolist(), 4, args.k, args.cell_timeout))  # warm-up
                    for concurrency in CONCURRENCY:
                        users = rng.choice(user_ids, size=n_requests).tolist()
                        cell = asyncio.run(load(server.url, users, concurrency, args.k, args.cell_timeout))
                        rows.append({"model": model, "micro-batching": "yes" if batching else "no",
                                     "concurrency": concurrency, **cell})
                        print(f"{model:9} batching={'yes' if batching else 'no ':3} c={concurrency:<3} "
                              f"{cell['req_per_s']:8.1f} req/s  p50 {cell['p50_ms']:7.1f} ms  "
                              f"p95 {cell['p95_ms']:7.1f} ms  p99 {cell['p99_ms']:7.1f} ms  "
                              f"errors {cell['errors']}", flush=True)
    table = pd.DataFrame(rows)
    shown = table[["model", "micro-batching", "concurrency", "requests", "errors", "req_per_s", "p50_ms", "p95_ms",
                   "p99_ms", "mean_batch"]]
    text = shown.to_markdown(index=False, floatfmt=".1f")
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("serve_quick.md" if args.quick else "serve.md")
    write_section(out, "bench_serve",
        f"## The in-process client (`bench_serve.py`, POST /recommend, k={args.k})\n\n"
        f"Data: {data_name}; Mult-VAE ({epochs} epoch(s)) and EASE (l2=500) on every user. "
        f"{n_requests} requests per cell from random known users, an asyncio httpx client on the same machine "
        f"({os.cpu_count()} CPU cores shared with the server; {platform.processor() or platform.machine()}). "
        f"Batching: no fixed wait, max batch 256; mean_batch = requests per scored batch in the cell."
        f"\n\n{text}\n\n"
        f"The Mult-VAE fold-in scorer, torch `model.score` beside onnxruntime on the exported graph "
        f"(`recvae export --format onnx`), same rows, best of 3:\n\n"
        f"{pd.DataFrame(scorer).to_markdown(index=False, floatfmt='.1f')}\n\n"
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `python experiments/bench_serve.py"
        f"{' --quick' if args.quick else ''}`.\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
