"""Every registered model on large sparse catalogues: it fits, or refuses in one line, within 10 s; never killed.

Issue 30's bar for the 80k- and 300k-item synthetic stand-ins of a practitioner's log
(long-tailed popularity, 5-15 events per user): ``recvae train --model M`` either starts
fitting or refuses with the one-line advice within seconds, and the kernel's OOM killer
never ends it. For each catalogue the log is drawn once (:func:`catalogue_interactions`)
and split as ``recvae train`` splits it (strong generalization, its default held-out
users); then each model is fitted in a subprocess of its own with its default
parameters (``epochs=1`` for the torch models, as ``--epochs 1``):

- ``refuses``: the fit raised a :class:`MemoryError` (the line is printed);
- ``fits``: the fit finished within the budget;
- ``running``: still fitting at the budget (the torch models have started their first
  epoch: ``started`` says so) and stopped there -- not refused, not killed;
- ``KILLED`` / ``OVER CAP`` / ``error``: a failure (a signal we did not send; the cap on
  resident memory passed; another exception).

Seconds count from the call to ``fit`` (the data load and split are shown apart), peak
RSS is the child's ``ru_maxrss``. ``--cap-gib`` bounds the machine a model may use, as a
container's memory limit would: the child sees ``min(available, cap - its RSS)`` as its
available memory and the parent stops it if its RSS passes the cap.

Run (one big job at a time on a shared machine)::

    flock /tmp/bigmem.lock python experiments/bench_catalogue_limits.py            # both catalogues
    python experiments/bench_catalogue_limits.py --catalogues 80k --models als,mult-vae

``--measure`` instead measures the VAE family's peak against its memory plan
(:meth:`recvae.models.MultVAE.memory_parts`) on small fits at 20k and 80k items.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 2**30
#: issue 30's stand-ins: (users, items), 5-15 events per user (mean 10), Zipf popularity.
CATALOGUES = {"80k": (60_000, 80_000), "300k": (200_000, 300_000)}
#: models fitted besides the registry's single ones: a blend needs its components.
BLEND_PARAMS = {"components": [{"name": "sparse-ease"}, {"name": "mult-vae", "params": {"epochs": 1}}]}
TORCH_MODELS = ("mult-dae", "mult-vae", "recvae", "joint-vae")


def catalogue_config(users: int, items: int, seed: int = 0):
    """A practitioner-like log: 5-15 events per user (mean 10), Zipf popularity, 200 tastes."""
    from recvae.data.synthetic import CatalogueConfig

    return CatalogueConfig(n_users=users, n_items=items, events_per_user=10.0, min_events=5, max_events=15,
                           n_tastes=200, seed=seed)


def model_params(name: str) -> dict:
    """The CLI's defaults with ``--epochs 1`` (no progress bar)."""
    if name == "blend":
        return BLEND_PARAMS
    if name in TORCH_MODELS:
        return {"epochs": 1, "progress": False, "device": "cpu"}
    return {}


# ------------------------------------------------------------------ the child: one fit
def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(data: str, name: str, cap: int) -> int:
    """Load the log, split it, fit ``name``; print READY, STARTED, then REFUSED / FITTED / ERROR lines."""
    import logging

    import numpy as np
    import scipy.sparse as sp

    import recvae.runtime.memory as memory
    from recvae.data import SplitSpec
    from recvae.data.interactions import Interactions
    from recvae.models.registry import make_model

    real = memory.available_memory_bytes
    memory.available_memory_bytes = lambda: min(real(), cap - _rss())  # the cap, as a cgroup limit would be

    class Started(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("precision:"):  # the training loops, just before the first batch
                print(f"STARTED {time.perf_counter() - t0:.2f}", flush=True)

    logging.getLogger("recvae.training").addHandler(Started())
    logging.getLogger("recvae.training").setLevel(logging.INFO)
    loaded = time.perf_counter()
    matrix = sp.load_npz(data).tocsr()
    inter = Interactions(matrix, np.arange(1, matrix.shape[0] + 1), np.arange(1, matrix.shape[1] + 1))
    split = SplitSpec("strong").make(inter)
    print(f"READY {time.perf_counter() - loaded:.2f} {split.train.shape[0]} {split.train.shape[1]} {split.train.nnz}",
          flush=True)
    t0 = time.perf_counter()
    try:
        make_model(name, model_params(name)).fit(split)
    except MemoryError as err:
        print(f"REFUSED {time.perf_counter() - t0:.2f} {str(err).splitlines()[0] if str(err) else 'MemoryError'}",
              flush=True)
        return 3
    except Exception as err:  # noqa: BLE001 - reported, the bench goes on
        print(f"ERROR {time.perf_counter() - t0:.2f} {type(err).__name__}: {str(err)[:300]}", flush=True)
        return 4
    print(f"FITTED {time.perf_counter() - t0:.2f}", flush=True)
    return 0


# ------------------------------------------------------------------ the parent: the table
def run_one(data: Path, name: str, budget: float, cap: int) -> dict:
    """One model's fit in a subprocess, watched: its outcome, seconds, peak RSS and refusal line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(data), name, "--cap-gib", str(cap / GIB)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []
    errors: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append((time.perf_counter(), ln.rstrip())) for ln in proc.stdout],
                              daemon=True)
    reader.start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    stopped, over_cap, ready_at = False, False, None
    while True:  # os.wait4 (not Popen.poll) reaps the child: its rusage holds the peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
        ready_at = ready_at or next((t for t, ln in list(lines) if ln.startswith("READY")), None)
        try:
            rss = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            rss = 0
        over_cap = rss > cap
        if over_cap or (ready_at is not None and time.perf_counter() - ready_at > budget):
            stopped = True
            os.kill(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    text = dict((ln.split(" ", 1)[0], ln.split(" ", 1)[1] if " " in ln else "") for _, ln in lines)
    row = {"model": name, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, "line": ""}
    if "READY" in text:
        prep, users, items, nnz = text["READY"].split()
        row.update(prep_s=float(prep), users=int(users), items=int(items), nnz=int(nnz))
    row["started"] = "STARTED" in text
    if "REFUSED" in text:
        seconds, line = text["REFUSED"].split(" ", 1)
        row.update(outcome="refuses", seconds=float(seconds), line=line)
    elif "FITTED" in text:
        row.update(outcome="fits", seconds=float(text["FITTED"]))
    elif "ERROR" in text:
        seconds, line = text["ERROR"].split(" ", 1)
        row.update(outcome="error", seconds=float(seconds), line=line)
    elif over_cap:
        row.update(outcome="OVER CAP", seconds=budget)
    elif stopped:
        row.update(outcome="running", seconds=budget)
    else:
        row.update(outcome="KILLED", seconds=float("nan"),
                   line=f"exit {proc.returncode}; {''.join(errors)[-300:].strip()}")
    return row


def run_catalogue(label: str, models: list[str], budget: float, cap: int, workdir: Path) -> list[dict]:
    """Draw one catalogue, save it, fit each model on it in turn."""
    import scipy.sparse as sp

    from recvae.data.synthetic import catalogue_interactions

    users, items = CATALOGUES[label]
    started = time.perf_counter()
    matrix = catalogue_interactions(catalogue_config(users, items)).matrix
    path = workdir / f"catalogue-{label}.npz"
    sp.save_npz(path, matrix)
    events = matrix.getnnz(axis=1)
    print(f"\n## {label}: {users:,} users x {items:,} items, {matrix.nnz:,} events "
          f"({events.mean():.1f} per user, {events.min()}-{events.max()}); drawn in "
          f"{time.perf_counter() - started:.1f}s; budget {budget:.0f}s from fit(); cap {cap / GIB:.1f} GiB\n", flush=True)
    print("| model | outcome | seconds | started epoch | peak RSS (GiB) | split (items, nnz) | refusal / note |")
    print("|---|---|---:|---|---:|---|---|", flush=True)
    rows = []
    for name in models:
        row = run_one(path, name, budget, cap)
        rows.append({"catalogue": label, **row})
        shape = f"{row.get('items', 0):,} items, {row.get('nnz', 0):,}" if "items" in row else "-"
        print(f"| {name} | {row['outcome']} | {row['seconds']:.1f} | {'yes' if row['started'] else '-'} | "
              f"{row['peak_rss_gib']:.2f} | {shape} | {row['line']} |", flush=True)
    return rows


# ------------------------------------------------------------------ --measure: the VAE family's plan
def measure(name: str, items: int, params: dict) -> dict:
    """Fit ``name`` on 3,000 users x ``items`` (500 validation users, one epoch); the peak RSS growth
    of the fit next to its planned peak (:meth:`memory_parts`)."""
    import resource

    import numpy as np

    from recvae.data.splits import HeldOut
    from recvae.data.synthetic import catalogue_interactions
    from recvae.models.registry import make_model

    matrix = catalogue_interactions(catalogue_config(3_500, items)).matrix.tocsr()
    train, held = matrix[:3_000], matrix[3_000:]
    validation = HeldOut(fold_in=held, target=held, user_ids=np.arange(held.shape[0]))
    model = make_model(name, {"epochs": 1, "progress": False, "device": "cpu", **params})
    plan = model.memory_parts(train.shape[0], items, train.nnz, held.shape[0])
    before = _rss()
    model.fit(train, validation)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": name, "items": items, "params": params, "plan_gib": sum(plan.values()) / GIB,
            "measured_gib": (peak - before) / GIB}


MEASURED = [("mult-vae", {}), ("mult-dae", {}), ("recvae", {}), ("mult-vae", {"item_chunk": 4096}),
            ("recvae", {"item_chunk": 4096}), ("mult-vae", {"sampled_softmax": 1000, "sparse_item_updates": True}),
            ("mult-vae", {"batch_size": 100})]


def run_measure(sizes: list[int]) -> None:
    print("| model | items | params | planned (GiB) | measured growth (GiB) | plan / measured |")
    print("|---|---:|---|---:|---:|---:|", flush=True)
    for items in sizes:
        for name, params in MEASURED:
            out = subprocess.run([sys.executable, __file__, "--measure-one", name, str(items), json.dumps(params)],
                                 capture_output=True, text=True)
            try:
                row = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print(f"| {name} | {items:,} | {params} | failed: {out.stderr.strip()[-200:]} |", flush=True)
                continue
            print(f"| {name} | {items:,} | {json.dumps(params) if params else '-'} | {row['plan_gib']:.2f} | "
                  f"{row['measured_gib']:.2f} | {row['plan_gib'] / row['measured_gib']:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogues", default="80k,300k", help=f"of {', '.join(CATALOGUES)}")
    parser.add_argument("--models", default="all", help="comma-separated registry names (default: every one)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds from fit() to an outcome")
    parser.add_argument("--cap-gib", type=float, default=13.0, help="resident memory a fit may reach")
    parser.add_argument("--json", metavar="PATH", help="also write the rows there")
    parser.add_argument("--measure", action="store_true", help="the VAE family's memory plan against its peak")
    parser.add_argument("--sizes", default="20000,80000", help="--measure: catalogue sizes")
    parser.add_argument("--child", nargs=2, metavar=("DATA", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-one", nargs=3, metavar=("MODEL", "ITEMS", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cap = int(args.cap_gib * GIB)
    if args.child:
        return child(args.child[0], args.child[1], cap)
    if args.measure_one:
        print(json.dumps(measure(args.measure_one[0], int(args.measure_one[1]), json.loads(args.measure_one[2]))))
        return 0
    if args.measure:
        run_measure([int(s) for s in args.sizes.split(",")])
        return 0
    from recvae.models.registry import model_names

    models = model_names() if args.models == "all" else args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="recvae-limits-") as tmp:
        for label in args.catalogues.split(","):
            rows += run_catalogue(label, models, args.budget, cap, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r["outcome"] not in ("fits", "refuses", "running") or r["seconds"] > args.budget]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} fits started, finished or refused within {args.budget:.0f}s; "
          f"{len(bad)} failed: {', '.join(r['catalogue'] + ' ' + r['model'] for r in bad) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
