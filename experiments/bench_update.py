"""A living model on ml-1m-implicit: fold new events in, warm-start a refit, or refit from scratch.

The log (``../shared/datasets/ml-1m-implicit/ratings.csv.gz``: every (user, movie) pair of
MovieLens 1M) is cut three ways, all seeded:

1. ``--test-users`` users (600) are the evaluation users: never trained on by any model; each
   gives 80% of their events as fold-in and 20% as the target (the same rows for every model).
2. The other users' events: 10% are held back as "new". The log has no timestamps, so the
   share is drawn at random (seeded); with a ``--timestamp-col`` the latest 10% by time are.
3. The first run is fitted on the remaining 90% (a strong split of ``--heldout-users`` users
   picks its epoch).

Then, for Mult-VAE: (a) ``Run.update`` with the new events, fold-in only (``refit="never"``;
events on items the run lacks are left out and counted), (b) ``Run.update(refit="always")``,
the warm-start refit on all events, and (c) ``Run.fit`` from scratch on all events with the
same split settings. EASE and ALS show the fold-in update (a) against their own full refit (c).
Each is timed and scored on the same evaluation users: NDCG@100 (and Recall@20).

    python experiments/bench_update.py                       # prints the table
    python experiments/bench_update.py --out experiments/results/update.md
    python experiments/bench_update.py --base-dir /tmp/base --skip-first   # the first fits, once
    python experiments/bench_update.py --base-dir /tmp/base                # then time the updates only

Goal (issue 32): (b) within 0.003 NDCG@100 of (c) in at most a quarter of its time. Asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "ml-1m-implicit" / "ratings.csv.gz"
HEADER = ("| model | path | seconds | NDCG@100 | Recall@20 | epochs | notes |\n"
          "|---|---|---|---|---|---|---|")


def cut(frame: pd.DataFrame, test_users: int, new_share: float, seed: int, timestamp_col: str | None):
    """(evaluation users' events, old training events, new training events)."""
    rng = np.random.default_rng(seed)
    users = np.sort(frame["user"].unique())
    chosen = rng.choice(users, size=test_users, replace=False)
    evaluation = frame[frame["user"].isin(chosen)]
    rest = frame[~frame["user"].isin(chosen)]
    if timestamp_col:
        order = np.argsort(rest[timestamp_col].to_numpy(), kind="stable")
        is_new = np.zeros(len(rest), dtype=bool)
        is_new[order[int(len(rest) * (1 - new_share)):]] = True
    else:
        is_new = rng.random(len(rest)) < new_share
    return evaluation, rest[~is_new], rest[is_new]


def heldout_for(evaluation: pd.DataFrame, item_ids: np.ndarray, seed: int):
    """The evaluation users' fold-in (80%) and target (20%) rows over a model's ``item_ids``, and the target
    events on items the model does not have (left out of its target)."""
    from recvae.data.splits import HeldOut

    rng = np.random.default_rng(seed + 1)
    keys = rng.random(len(evaluation))
    frame = evaluation.assign(key=keys).sort_values(["user", "key"])
    rank = frame.groupby("user").cumcount().to_numpy()
    size = frame.groupby("user")["item"].transform("size").to_numpy()
    is_target = rank < (0.2 * size).astype(int)
    users = np.sort(frame["user"].unique())
    rows = pd.Index(users).get_indexer(frame["user"])
    cols = pd.Index(item_ids).get_indexer(frame["item"])
    known = cols >= 0

    def matrix(mask):
        keep = mask & known
        return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
                             shape=(len(users), len(item_ids)))

    return HeldOut(matrix(~is_target), matrix(is_target), users), int((is_target & ~known).sum())


def score(model, evaluation: pd.DataFrame, item_ids: np.ndarray, seed: int) -> tuple[float, float, int]:
    from recvae.evaluation import evaluate_heldout

    heldout, missing = heldout_for(evaluation, item_ids, seed)
    result = evaluate_heldout(model.score, heldout, ks=(20, 100), metrics=("ndcg", "recall"))
    summary = result.summary["mean"]
    return float(summary["ndcg@100"]), float(summary["recall@20"]), missing


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def run_model(name: str, params: dict, old, new, evaluation, args, out_dir: Path) -> list[str]:
    """The rows of one model: its first fit, (a) the fold-in update, (b) the warm refit (torch), (c) a full refit."""
    from recvae.data import LogSpec
    from recvae.runs import Run, SplitSpec

    def spec(frame):
        return LogSpec(frame, rating_col="none", timestamp_col="none", min_user_events=args.min_user_events)

    split = SplitSpec("strong", heldout_users=args.heldout_users, seed=args.seed)
    saved = None if args.base_dir is None else Path(args.base_dir) / name
    if saved is not None and saved.exists():  # the first fit, made by an earlier call with the same cut
        base = Run.load(saved, device="cpu")
        fit_s = float(base.config.get("fit_seconds") or float("nan"))
    else:
        base, fit_s = timed(lambda: Run.fit(spec(old), name, params=params, split=split, evaluate=False,
                                            report=lambda line: None))
        if saved is not None:
            base.save(saved)
    rows = []

    def row(path, run, seconds, notes=""):
        ndcg, recall, missing = score(run.model, evaluation, run.item_ids, args.seed)
        epochs = run.config.get("epochs_trained") or "-"
        extra = f"{missing} target events on items it lacks; " if missing else ""
        rows.append(f"| {name} | {path} | {seconds:.1f} | {ndcg:.4f} | {recall:.4f} | {epochs} | {extra}{notes} |")
        print(rows[-1], flush=True)
        return ndcg

    if args.skip_first:
        return rows
    row("fit on 90%", base, fit_s, f"best epoch {base.config.get('best_epoch')}" if base.config.get("best_epoch")
        else "")
    known_items = new["item"].isin(base.item_ids)
    if "a" not in args.paths:
        folded = None
    else:
        folded, fold_s = timed(lambda: base.update(new[known_items], refit="never", report=lambda line: None))
    if folded is not None:
        record = folded.config["updates"][-1]
        row("(a) update: fold-in", folded, fold_s,
            f"{record['known_users_updated']} users updated, {record['new_users']} new; "
            f"{int((~known_items).sum())} events on {new.loc[~known_items, 'item'].nunique()} new items left out")
    if "b" in args.paths and name in ("mult-vae",):
        warm, warm_s = timed(lambda: base.update(new, refit="always", epochs=args.warm_epochs,
                                                 report=lambda line: None))
        row("(b) update: warm-start refit", warm, warm_s,
            f"best epoch {warm.config.get('best_epoch')}; {warm.config['updates'][-1]['new_items']} new items")
    if "c" not in args.paths:
        return rows
    full, full_s = timed(lambda: Run.fit(spec(pd.concat([old, new])), name, params=params, split=split,
                                         evaluate=False, report=lambda line: None))
    row("(c) full refit", full, full_s, f"best epoch {full.config.get('best_epoch')}" if full.config.get("best_epoch")
        else "")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--models", nargs="+", default=["mult-vae", "ease", "als"])
    parser.add_argument("--test-users", type=int, default=600)
    parser.add_argument("--heldout-users", type=int, default=300)
    parser.add_argument("--new-share", type=float, default=0.1)
    parser.add_argument("--min-user-events", type=int, default=5)
    parser.add_argument("--timestamp-col", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-epochs", type=int, default=None, help="epochs of the warm refit (default: Run.update's)")
    parser.add_argument("--paths", default="abc",
                        help="which paths to run: a (fold-in), b (warm refit, mult-vae), c (full refit); default abc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--base-dir", default=None,
                        help="keep the first fits here (and reuse them: a later call times only the update paths)")
    parser.add_argument("--skip-first", action="store_true", help="with --base-dir: only write the first fits")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    raw = pd.read_csv(args.data)
    frame = raw.rename(columns={"userId": "user", "movieId": "item"})
    evaluation, old, new = cut(frame, args.test_users, args.new_share, args.seed, args.timestamp_col)
    print(f"{Path(args.data).name}: {len(frame):,} events; {args.test_users} evaluation users "
          f"({len(evaluation):,} events); first fit on {len(old):,} events, {len(new):,} new", flush=True)
    params = {"mult-vae": {"device": "cpu", "progress": False}, "ease": {"l2": 500.0},
              "als": {"factors": 64, "iterations": 15, "regularization": 0.05}}
    print(HEADER)
    rows = []
    for name in args.models:
        rows += run_model(name, params.get(name, {}), old, new, evaluation, args, Path("."))
    if args.out:
        text = (f"# Living model: update vs warm start vs full refit (`experiments/bench_update.py`)\n\n"
                f"{Path(args.data).name}: {len(frame):,} events, {args.test_users} evaluation users never trained "
                f"on ({len(evaluation):,} events, 80% fold-in / 20% target); the other users' events: "
                f"{len(old):,} for the first fit, {len(new):,} ({args.new_share:.0%}, "
                f"{'latest by ' + args.timestamp_col if args.timestamp_col else 'drawn at random: the log has no timestamps'}) "
                f"as new. Seed {args.seed}, {args.threads} torch threads, {platform.processor() or platform.machine()}.\n\n"
                + HEADER + "\n" + "\n".join(rows) + "\n")
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
