"""Serving under load (issue 31): ``recvae serve`` on ML-1M Mult-VAE against wrk, an external load generator.

The server runs pinned to one core (``taskset -c 1``, its worker processes too), wrk to the other
(``taskset -c 0 wrk -t1``), both on 127.0.0.1. Mult-VAE is fitted as bench_serve.py does (every user of
../shared/datasets/ml-1m-implicit/ratings.csv.gz, 2 epochs: this measures serving, not quality).

Cells: workers (1, 2) x batching (on, ``--no-batching``) x kind x concurrency (1, 8, 64, 256 connections),
``--seconds`` each (30). Kinds: ``known`` = ``POST /recommend {"user_id", "k": 10}`` for a random known user;
``new`` = ``POST /recommend/new-user {"item_ids", "k": 10}`` with a random user's history (its first 100
item ids). Per cell: req/s (200 answers over the cell's wall time), wrk's p50 / p95 / p99 latency of every
answer, 503s (overloaded, ``Retry-After``) counted apart from other errors (other statuses, socket errors,
wrk timeouts at 5 s). Memory: one server (1 worker, batching) after 10 s of warm-up requests and after
``--memory-requests`` (100,000) more known-user requests at c=64: RSS and its growth.

    python experiments/bench_serve_load.py --workers 1            # one worker's cells and the memory check
    python experiments/bench_serve_load.py --workers 2 --no-memory
    python experiments/bench_serve_load.py --overload 32          # c=256 against --max-queue 32: the 503s
    python experiments/bench_serve_load.py --quick                # 5 s cells, 10,000 memory requests

Rows are kept in experiments/results/serve_load.json (a call replaces the rows of its workers) and shown in
experiments/results/serve.md (its ``bench_serve_load`` section). Needs wrk (``apt-get install wrk``) and
taskset (util-linux). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bench_serve import fit_runs
from serve_helpers import Server, write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CONCURRENCY = (1, 8, 64, 256)
NEW_USER_ITEMS = 100
SERVER_CPUS, CLIENT_CPUS = "1", "0"

#: wrk's script: a random body of the BODIES file per request, 200 / 503 / other answers counted per thread;
#: the totals and latency percentiles written as one JSON line.
LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("URL_PATH")
n200, n503, nother = 0, 0, 0
threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function() return wrk.format(nil, path, nil, bodies[math.random(#bodies)]) end
response = function(status, headers, body)
  if status == 200 then n200 = n200 + 1 elseif status == 503 then n503 = n503 + 1 else nother = nother + 1 end
end
done = function(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("n200"); b = b + t:get("n503"); c = c + t:get("nother") end
  io.stderr:write(string.format('RESULT {"answers": %d, "us": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "ok": %d, "n503": %d, "other": %d}\n',
    summary.requests, summary.duration, summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99), a, b, c))
end
"""


def wrk(url: str, path: str, bodies: Path, script: Path, concurrency: int, seconds: float) -> dict:
    """One wrk run pinned to the client core: its RESULT line as a dict."""
    command = ["taskset", "-c", CLIENT_CPUS, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "5s",
               "-s", str(script), url]
    env = {**os.environ, "BODIES": str(bodies), "URL_PATH": path}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120)
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    return json.loads(lines[-1][len("RESULT "):])


def cell_row(result: dict, info_before: dict, info_after: dict) -> dict:
    seconds = result["us"] / 1e6
    batches = info_after["batches"] - info_before["batches"]
    scored = info_after["batched_requests"] - info_before["batched_requests"]
    return {"req_per_s": result["ok"] / seconds, "p50_ms": result["p50_us"] / 1000, "p95_ms": result["p95_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000, "ok": result["ok"], "503s": result["n503"],
            "errors": result["other"] + result["socket_errors"] + result["timeouts"],
            "mean_batch": scored / batches if batches > 0 else float("nan")}


def _info(server: Server) -> dict:
    """/info of one worker (with several workers: whichever answers; its batch counts are its own)."""
    status, body = server.get("/info")
    return json.loads(body) if status == 200 else {"batches": 0, "batched_requests": 0}


def write_bodies(run_dir: Path, workdir: Path) -> dict[str, tuple[str, Path]]:
    """One JSON body per line for each kind: known users by id, new users by their history's item ids."""
    users = np.load(run_dir / "users.npz", allow_pickle=False)
    ids, indptr, indices = users["user_ids"], users["history_indptr"], users["history_indices"]
    from recvae.runs import Run

    item_ids = Run.load(run_dir, device="cpu").item_ids
    known, new = workdir / "known.txt", workdir / "new.txt"
    known.write_text("".join(json.dumps({"user_id": u, "k": 10}) + "\n" for u in ids.tolist()))
    new.write_text("".join(json.dumps({"item_ids": item_ids[indices[indptr[r]:indptr[r + 1]][:NEW_USER_ITEMS]].tolist(),
                                       "k": 10}) + "\n" for r in range(len(ids))))
    return {"known": ("/recommend", known), "new": ("/recommend/new-user", new)}


def run_cells(run_dir: Path, bodies: dict, script: Path, workers: int, seconds: float) -> list[dict]:
    rows = []
    for batching in (True, False):
        args = ["--workers", str(workers)] + ([] if batching else ["--no-batching"])
        with Server(run_dir, *args, cpus=SERVER_CPUS) as server:
            for path, file in bodies.values():  # warm-up: every worker, both kinds
                wrk(server.url, path, file, script, 8, 3)
            for kind, (path, file) in bodies.items():
                for concurrency in CONCURRENCY:
                    before = _info(server)
                    result = wrk(server.url, path, file, script, concurrency, seconds)
                    row = {"workers": workers, "batching": "on" if batching else "off", "kind": kind,
                           "c": concurrency, **cell_row(result, before, _info(server)),
                           "load_1min": os.getloadavg()[0]}
                    if workers > 1:  # /info answers from one worker or another: no batch count to compare
                        row["mean_batch"] = float("nan")
                    rows.append(row)
                    print(f"workers={workers} batching={row['batching']:3} {kind:5} c={concurrency:<3} "
                          f"{row['req_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  "
                          f"p99 {row['p99_ms']:7.1f} ms  503s {row['503s']}  errors {row['errors']}  "
                          f"batch {row['mean_batch']:.1f}  load {row['load_1min']:.2f}", flush=True)
    return rows


def overload_cell(run_dir: Path, bodies: dict, script: Path, seconds: float, max_queue: int) -> dict:
    """One worker, batching, known users at c=256 against a queue of ``max_queue``: the overload is refused
    (503 at once) while the answered requests keep their throughput and latency."""
    path, file = bodies["known"]
    with Server(run_dir, "--max-queue", str(max_queue), cpus=SERVER_CPUS) as server:
        wrk(server.url, path, file, script, 8, 3)
        before = _info(server)
        result = wrk(server.url, path, file, script, 256, seconds)
        row = {"max_queue": max_queue, "kind": "known", "c": 256, **cell_row(result, before, _info(server)),
               "load_1min": os.getloadavg()[0]}
    print(f"overload (max_queue {max_queue}, c=256): {row['req_per_s']:.1f} req/s, p99 {row['p99_ms']:.1f} ms, "
          f"503s {row['503s']}, errors {row['errors']}", flush=True)
    return row


def memory_check(run_dir: Path, bodies: dict, script: Path, requests: int) -> dict:
    """RSS of one server (1 worker, batching) after 10 s of warm-up requests and after ``requests`` more (wrk
    runs of 10 s at c=64 until they add up)."""
    path, file = bodies["known"]
    with Server(run_dir, cpus=SERVER_CPUS) as server:
        warm = wrk(server.url, path, file, script, 64, 10)
        before = server.rss_mib()
        started, sent = time.perf_counter(), 0
        while sent < requests:
            result = wrk(server.url, path, file, script, 64, 10)
            sent += result["ok"] + result["n503"] + result["other"]
        seconds = time.perf_counter() - started
        after = server.rss_mib()
    row = {"warm_up": warm["ok"], "requests": sent, "seconds": seconds, "rss_before_mib": before,
           "rss_after_mib": after, "growth_pct": 100 * (after - before) / before}
    print(f"memory: {row['requests']:,} requests in {seconds:.0f} s, RSS {before:.1f} -> {after:.1f} MiB "
          f"({row['growth_pct']:+.2f}%)", flush=True)
    return row


def write_results(rows: list[dict], memory: dict | None, overload: dict | None, data_name: str, epochs: int,
                  seconds: float, argv: list[str], quick: bool) -> tuple[Path, Path]:
    store = RESULTS / ("serve_load_quick.json" if quick else "serve_load.json")
    kept = json.loads(store.read_text()) if store.exists() else {"rows": [], "memory": None}
    workers = {r["workers"] for r in rows}
    kept["rows"] = [r for r in kept["rows"] if r["workers"] not in workers] + rows
    kept["memory"] = memory if memory is not None else kept.get("memory")
    kept["overload"] = overload if overload is not None else kept.get("overload")
    label = ("workers " + ",".join(map(str, sorted(workers)))) if rows else "overload"
    kept.setdefault("written", {})[label] = (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {seconds:g} s cells, `python experiments/"
        f"bench_serve_load.py {' '.join(argv)}`")
    store.write_text(json.dumps(kept, indent=1) + "\n")
    table = pd.DataFrame(kept["rows"]).sort_values(["workers", "kind", "batching", "c"], ascending=[True, True, False, True])
    text = table.to_markdown(index=False, floatfmt=".1f")
    mem = kept["memory"]
    memory_text = ("" if mem is None else
                   f"Memory (1 worker, batching, known users at c=64): RSS {mem['rss_before_mib']:.1f} MiB after "
                   f"{mem['warm_up']:,} warm-up requests, {mem['rss_after_mib']:.1f} MiB after {mem['requests']:,} more "
                   f"({mem['growth_pct']:+.2f}%, {mem['seconds']:.0f} s).\n\n")
    over = kept.get("overload")
    overload_text = ("" if over is None else
                     f"Overload (1 worker, batching, known users at c=256, `--max-queue {over['max_queue']}`): "
                     f"{over['req_per_s']:.1f} req/s answered, p50 / p95 / p99 {over['p50_ms']:.1f} / "
                     f"{over['p95_ms']:.1f} / {over['p99_ms']:.1f} ms, {over['503s']:,} answered 503 at once, "
                     f"{over['errors']} errors (load {over['load_1min']:.2f}).\n\n")
    written = "; ".join(f"{w}: {when}" for w, when in sorted(kept["written"].items()))
    out = RESULTS / ("serve_quick.md" if quick else "serve.md")
    write_section(out, "bench_serve_load",
                  f"## Under load: wrk against `recvae serve` (`bench_serve_load.py`)\n\n"
                  f"Data: {data_name}; Mult-VAE ({epochs} epochs) on every user (6,040 users, 3,706 items). Server "
                  f"pinned to core {SERVER_CPUS} (`taskset`, its worker processes too), wrk {_wrk_version()} "
                  f"pinned to core {CLIENT_CPUS} (one thread), {os.cpu_count()} cores "
                  f"({platform.processor() or platform.machine()}). `known`: POST /recommend of a random known "
                  f"user, k=10; `new`: POST /recommend/new-user with a random user's first {NEW_USER_ITEMS} "
                  f"history items, k=10. req_per_s counts 200 answers; latencies are wrk's, of every answer; "
                  f"503s are overload refusals (none expected at these concurrencies: the queue holds 1,024), "
                  f"errors are other statuses, socket errors and wrk timeouts (5 s); mean_batch is requests per "
                  f"scoring call (one worker's count); load_1min is the machine's load average after the cell.\n\n"
                  f"{text}\n\n{memory_text}{overload_text}Written: {written}.\n")
    return out, store


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 else "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes (default 1 2)")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default 30; --quick 5)")
    parser.add_argument("--memory-requests", type=int, help="requests of the memory check (default 100,000)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--overload", type=int, metavar="MAX_QUEUE",
                        help="only the overload cell: c=256 against --max-queue MAX_QUEUE (e.g. 32)")
    parser.add_argument("--quick", action="store_true", help="5 s cells, 10,000 memory requests, 1 epoch")
    parser.add_argument("--run-dir", type=Path, help="a fitted Mult-VAE run directory to serve (default: fit one)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'}")
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    requests = args.memory_requests or (10_000 if args.quick else 100_000)
    epochs = 1 if args.quick else 2
    with tempfile.TemporaryDirectory(prefix="bench_serve_load_") as tmp:
        workdir = Path(tmp)
        if args.run_dir is not None:
            config = json.loads((args.run_dir / "config.json").read_text())
            run_dir, epochs = args.run_dir, config.get("epochs_trained", "?")
            data_name = f"{Path(config['data']['source']).parent.name} (a run fitted before: --run-dir)"
        else:
            runs, data_name = fit_runs(workdir, epochs, ("mult-vae",))
            run_dir = runs["mult-vae"]
        bodies = write_bodies(run_dir, workdir)
        script = workdir / "bodies.lua"
        script.write_text(LUA)
        print(f"load {os.getloadavg()}", flush=True)
        if args.overload is not None:
            rows, memory = [], None
            overload = overload_cell(run_dir, bodies, script, seconds, args.overload)
        else:
            rows = [row for workers in args.workers for row in run_cells(run_dir, bodies, script, workers, seconds)]
            memory = None if args.no_memory else memory_check(run_dir, bodies, script, requests)
            overload = None
    out, store = write_results(rows, memory, overload, data_name, epochs, seconds, argv, args.quick)
    print(f"written to {out} and {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
