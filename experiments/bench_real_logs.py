"""Models on logs shaped like a practitioner's: large, sparse catalogues with few events per user.

For each log and each model, in its own subprocess (so the peak resident memory is the model's
own and a kill by the kernel is seen as a kill, not as the end of the benchmark):
``Run.fit`` with the package's defaults (catalogue-aware choices included, logged), a strong
split of held-out users, then the test users' NDCG@100 and Recall@20. Prints one Markdown row
per (log, model): NDCG@100, Recall@20, fit seconds, peak RSS, the best epoch, and how the fit
ended (``ok``, ``refused: <the one-line reason>``, ``killed (signal N)``, ``timeout``).

Logs:

- ``yelp``: ``../shared/datasets/yelp2018-test/pairs.csv.gz`` (36k items, ~10 events per user),
  when present;
- ``synthetic-80k`` and ``synthetic-300k``: seeded stand-ins
  (:func:`recvae.data.catalogue_interactions`) with a Zipf catalogue of 80,000 / 300,000 items
  and 5-15 events per user (60,000 / 200,000 users: about 600k / 2M events).

    python experiments/bench_real_logs.py --logs yelp --models popularity sparse-ease als mult-vae
    python experiments/bench_real_logs.py --logs synthetic-80k --timeout 900 --out results.md

``--param model:key=value`` sets a model's parameter (repeatable). Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YELP = ROOT.parent / "shared" / "datasets" / "yelp2018-test" / "pairs.csv.gz"
DEFAULT_MODELS = ("popularity", "sparse-ease", "als", "mult-vae", "weighted-vae", "joint-vae", "ease")
HEADER = ("| log | model | outcome | ndcg@100 | recall@20 | fit s | peak RSS GiB | best epoch | choices |\n"
          "|---|---|---|---|---|---|---|---|---|")


def stand_in(n_items: int):
    """The synthetic stand-in with ``n_items`` items: a users x items log as a DataFrame."""
    import numpy as np
    import pandas as pd

    from recvae.data import CatalogueConfig, catalogue_interactions

    users = {80_000: 60_000, 300_000: 200_000}.get(n_items, n_items * 3 // 4)
    data = catalogue_interactions(CatalogueConfig(n_users=users, n_items=n_items, events_per_user=10.0,
                                                  min_events=5, max_events=15, n_tastes=max(200, n_items // 400),
                                                  seed=0))
    matrix = data.matrix.tocoo()
    return pd.DataFrame({"user": data.user_ids[matrix.row], "item": data.item_ids[matrix.col]}).astype(np.int64)


def log_source(name: str):
    if name == "yelp":
        from recvae.data import LogSpec

        return LogSpec(str(YELP), rating_col=None)
    if name.startswith("synthetic-") and name.endswith("k"):
        return stand_in(int(name[len("synthetic-"):-1]) * 1000)
    raise SystemExit(f"unknown log {name!r}: yelp, synthetic-80k, synthetic-300k (synthetic-Nk)")


def child(log: str, model: str, params: dict, heldout: int, seed: int) -> None:
    """One fit in this process; prints one JSON line with what it measured."""
    import logging

    from recvae.data import SplitSpec
    from recvae.runs import Run

    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    source = log_source(log)
    params = {"progress": False, **params} if model in _torch_models() else dict(params)
    started = time.perf_counter()
    try:
        run = Run.fit(source, model, params=params, split=SplitSpec(heldout_users=heldout, seed=seed),
                      report=lambda line: print("  " + line, file=sys.stderr, flush=True))
    except MemoryError as err:
        print(json.dumps({"outcome": f"refused: {err}", "seconds": time.perf_counter() - started,
                          "peak_gib": _own_peak_gib()}))
        return
    summary = run.metrics["test"]["summary"]
    print(json.dumps({
        "outcome": "ok",
        "ndcg@100": summary["ndcg@100"]["mean"],
        "recall@20": summary["recall@20"]["mean"],
        "seconds": run.config.get("fit_seconds"),
        "best_epoch": run.config.get("best_epoch"),
        "choices": run.config.get("catalogue_choices"),
        "peak_gib": _own_peak_gib(),
    }))


def _own_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _torch_models() -> list[str]:
    from recvae.models.options import torch_model_names

    return torch_model_names()


def measure(log: str, model: str, params: dict, heldout: int, seed: int, timeout: float) -> dict:
    """Run :func:`child` in a subprocess: what it measured (its own peak RSS included), or how it ended."""
    command = [sys.executable, __file__, "--child", log, model, json.dumps(params), str(heldout), str(seed)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"outcome": f"timeout after {timeout:.0f} s", "seconds": time.perf_counter() - started}
    sys.stderr.write(done.stderr)
    if done.returncode < 0:
        result = {"outcome": f"killed ({signal.Signals(-done.returncode).name})"}
    else:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"outcome": f"exit {done.returncode}: "
                                                      + (done.stderr.strip().splitlines() or ["?"])[-1]}
    result.setdefault("seconds", time.perf_counter() - started)
    return result


def row(log: str, model: str, result: dict) -> str:
    def number(key, fmt):
        value = result.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else ""

    choices = result.get("choices") or {}
    shown = ", ".join(f"{k}={v}" for k, v in choices.items()) if isinstance(choices, dict) else str(choices)
    return (f"| {log} | {model} | {result['outcome']} | {number('ndcg@100', '.4f')} | {number('recall@20', '.4f')} "
            f"| {number('seconds', '.0f')} | {number('peak_gib', '.2f')} | {result.get('best_epoch') or ''} "
            f"| {shown} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        log, model, params, heldout, seed = sys.argv[2:7]
        child(log, model, json.loads(params), int(heldout), int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", nargs="+", default=["yelp", "synthetic-80k"])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--param", action="append", default=[], metavar="MODEL:KEY=VALUE")
    parser.add_argument("--heldout-users", type=int, default=None,
                        help="validation and test users each (default: 10%% of users, at most 10,000)")
    parser.add_argument("--seed", type=int, default=98765)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit (default 1800)")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    if "yelp" in args.logs and not YELP.exists():
        print(f"skipping yelp: {YELP} is absent", file=sys.stderr)
        args.logs = [log for log in args.logs if log != "yelp"]
    params: dict[str, dict] = {}
    for item in args.param:
        model, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        try:
            params.setdefault(model, {})[key] = json.loads(value)
        except json.JSONDecodeError:
            params.setdefault(model, {})[key] = value
    heldout = {"yelp": 3000, "synthetic-80k": 6000, "synthetic-300k": 10000}
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPU(s).", "", HEADER]
    print("\n".join(lines), flush=True)
    for log in args.logs:
        for model in args.models:
            n_heldout = args.heldout_users or heldout.get(log, 3000)
            result = measure(log, model, params.get(model, {}), n_heldout, args.seed, args.timeout)
            lines.append(row(log, model, result))
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
