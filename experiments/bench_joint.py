"""Seconds per training epoch of the joint model (JointVAE) beside RecVAE's, measured side by side.

Both at their defaults (RecVAE's network and schedule; the joint model adds the item-item
path x W and its fused NLL), on one experiment config's training users, alternating
RecVAE and JointVAE fits of a few epochs so that a busy machine slows both alike. The
joint model's start (EDLAE's dense solve, or sparse EASE's for ``--linear-form sparse``) is
timed apart.

    python experiments/bench_joint.py experiments/configs/ml-1m-half.toml --epochs 3 --repeats 2
    python experiments/bench_joint.py experiments/configs/ml-1m-half.toml --linear-form sparse

Prints a table; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recvae.experiment.config import load_config
from recvae.experiment.runner import load_dataset, make_split
from recvae.models.ease import edlae_weights
from recvae.models.joint import JointVAE
from recvae.models.rec_vae import RecVAE
from recvae.models.sparse_ease import sparse_ease_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an experiment config (its dataset and split are used)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--linear-form", choices=("auto", "dense", "sparse"), default="auto",
                        help="the joint model's item-item path (default: auto, by memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    data = load_dataset(config)
    split = make_split(data, config.split)
    per_epoch: dict[str, list[float]] = {"RecVAE": [], "JointVAE": []}
    for _ in range(args.repeats):
        for name, cls in (("RecVAE", RecVAE), ("JointVAE", JointVAE)):
            extra = {"linear_form": args.linear_form} if cls is JointVAE else {}
            model = cls(epochs=args.epochs, progress=False, device="cpu", **extra).fit(split)
            per_epoch[name] += model.history_["train_seconds"].tolist()
    form = model.net_.decoder.form
    started = time.perf_counter()
    if form == "sparse":
        sparse_ease_weights(split.train, 500.0, model.config.linear_neighbours, dropout=0.25)
    else:
        edlae_weights(split.train, 500.0, 0.25)
    start_seconds = time.perf_counter() - started
    rec, joint = statistics.median(per_epoch["RecVAE"]), statistics.median(per_epoch["JointVAE"])
    print(f"{config.name}: {split.train.shape[0]:,} training users x {split.n_items:,} items, "
          f"{torch.get_num_threads()} thread(s), median of {len(per_epoch['RecVAE'])} epochs each")
    print("| model | s / epoch (training, no validation) | ratio to RecVAE |")
    print("|---|---|---|")
    print(f"| RecVAE | {rec:.2f} | 1.00 |")
    print(f"| JointVAE ({form} W) | {joint:.2f} | {joint / rec:.2f} |")
    print(f"{'sparse EASE' if form == 'sparse' else 'EDLAE'} start of the joint model (once per fit): "
          f"{start_seconds:.1f} s")


if __name__ == "__main__":
    main()
