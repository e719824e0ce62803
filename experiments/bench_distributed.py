"""Mult-VAE data-parallel training: 1 process vs N processes (gloo) on ML-20M-shaped data.

Generates the ML-20M-shaped synthetic data (116,677 training users x 20,108 items
after a 10,000 + 10,000 strong-generalization split), then trains Mult-VAE
(I-600-200-600-I, batch 500, fp32) for 2 epochs on the first ``--users``
training users, once in one process with ``--threads`` threads and once in
``--nproc`` processes with ``--threads // nproc`` threads each (the same cores).
The second epoch's training time is extrapolated to a full epoch (234 steps);
validation on ``--val-users`` users is extrapolated to the 10,000. On a machine
with few cores the point is correctness (same steps, same validation NDCG up to
the noise streams), not speed.

    python experiments/bench_distributed.py                # -> experiments/results/distributed.{md,json}

Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from recvae.data import HeldOut, ML20M_SHAPE, Split, strong_generalization, synthetic_interactions
from recvae.runtime.distributed import spawn

from protocol_datasets import RESULTS

BATCH = 500


def train_two_epochs(ctx, split: Split, n_users: int, n_val: int, threads: int) -> dict:
    """Runs in each process (``ctx`` is None for one process)."""
    torch.set_num_threads(threads)
    from recvae.models import MultVAE
    from recvae.training import TrainingConfig

    validation = HeldOut(split.validation.fold_in[:n_val], split.validation.target[:n_val],
                         split.validation.user_ids[:n_val])
    model = MultVAE(training=TrainingConfig(epochs=2, eval_every=2, progress=False, device="cpu", seed=0))
    model.fit(split.train[:n_users], validation)
    history = model.history_
    return {"train s (epoch 2)": float(history["train_seconds"].iloc[1]),
            "validation s": float(history["eval_seconds"].iloc[1]),
            "validation ndcg@100": float(history["val_ndcg@100"].iloc[1]),
            "steps": int(history["step"].iloc[1])}


def extrapolate(result: dict, split: Split, n_users: int, n_val: int) -> dict:
    steps_per_epoch = math.ceil(split.train.shape[0] / BATCH)
    per_step = result["train s (epoch 2)"] / math.ceil(n_users / BATCH)
    validation = result["validation s"] * split.validation.n_users / n_val
    return {**result, "s/step": per_step, "train s/epoch": per_step * steps_per_epoch,
            "validation s/epoch": validation, "s/epoch": per_step * steps_per_epoch + validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (one process gets them all)")
    parser.add_argument("--users", type=int, default=3000, help="training users timed (default 6 batches)")
    parser.add_argument("--val-users", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    split = strong_generalization(synthetic_interactions(ML20M_SHAPE), 10_000)
    print(f"{split} ({time.perf_counter() - started:.0f} s)", flush=True)
    one = extrapolate(train_two_epochs(None, split, args.users, args.val_users, args.threads), split,
                      args.users, args.val_users)
    print("1 process:", one, flush=True)
    ranks = spawn(train_two_epochs, args.nproc, split, args.users, args.val_users,
                  max(1, args.threads // args.nproc), device="cpu", threads=max(1, args.threads // args.nproc))
    if len({r["validation ndcg@100"] for r in ranks}) != 1:
        raise RuntimeError(f"ranks disagree on the validation metric: {ranks}")
    many = extrapolate(ranks[0], split, args.users, args.val_users)
    print(f"{args.nproc} processes:", many, flush=True)
    rows = [(f"1 process x {args.threads} threads", one),
            (f"{args.nproc} processes x {max(1, args.threads // args.nproc)} thread(s), gloo", many)]
    lines = [f"# Mult-VAE on the ML-20M shape: 1 vs {args.nproc} processes\n",
             f"{split.train.shape[0]:,} training users x {split.n_items:,} items; 2 epochs on the first "
             f"{args.users:,} users, the second epoch's time extrapolated to {math.ceil(split.train.shape[0] / BATCH)} "
             f"steps; validation on {args.val_users:,} users extrapolated to {split.validation.n_users:,}. torch "
             f"{torch.__version__}. `python experiments/bench_distributed.py`\n",
             "| configuration | s/step | train s/epoch | validation s | s/epoch | validation NDCG@100 (2 epochs) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['s/step']:.2f} | {r['train s/epoch']:.0f} | {r['validation s/epoch']:.1f} | "
                     f"{r['s/epoch']:.0f} | {r['validation ndcg@100']:.4f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distributed.md").write_text(text)
    (RESULTS / "distributed.json").write_text(json.dumps({"args": vars(args), "rows": dict(rows)}, indent=1))


if __name__ == "__main__":
    main()
