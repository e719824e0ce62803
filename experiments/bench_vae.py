"""Mult-VAE with the paper's defaults on MovieLens, per likelihood, plus training speed.

For each dataset (Liang et al.'s protocol: rating > 3.5 where ratings exist, users
>= 5, strong generalization with seed 98765) and likelihood: test NDCG@100,
Recall@20, Recall@50 (mean ± 95% CI), the selected epoch and its beta, the beta
reached, seconds per training epoch, and the ratio of that to the decoder's matmul
lower bound measured in the same process at the same shape.

The speed section trains one epoch on ML-20M-shaped synthetic data.

Prints the tables and writes them to experiments/results/. Asserts nothing about
numbers: machines are shared and noisy, so read ratios, not seconds.

    python experiments/bench_vae.py                      # everything found in ../shared/datasets
    python experiments/bench_vae.py --datasets ml-100k --likelihoods multinomial --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from recvae.data import ML20M_SHAPE, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import MultVAE, VAEConfig
from recvae.training import TrainingConfig

from protocol_datasets import DATASETS, RESULTS, load_protocol_split


def decoder_bound_seconds(batch: int, hidden: int, n_items: int, repeats: int = 5) -> float:
    """Seconds for the decoder output layer's three matmuls (forward, grad input, grad weight)."""
    a, w, g = torch.randn(batch, hidden), torch.randn(n_items, hidden), torch.randn(batch, n_items)

    def run():
        _ = a @ w.T
        _ = g @ w
        _ = g.T @ a

    run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def epoch_bound(n_users: int, batch: int, hidden: int, n_items: int) -> float:
    """Lower bound of one epoch: full batches at the measured rate, the last one pro rata."""
    per_batch = decoder_bound_seconds(batch, hidden, n_items)
    return per_batch * n_users / batch


def quality(datasets: list[str], likelihoods: list[str], epochs: int, progress: bool) -> pd.DataFrame:
    rows = []
    for name in datasets:
        loaded = load_protocol_split(name)
        if loaded is None:
            continue
        data, split = loaded
        print(f"\n{name}: {data.report}\n{split}")
        for likelihood in likelihoods:
            training = TrainingConfig(epochs=epochs, progress=progress)
            model = MultVAE(VAEConfig(likelihood=likelihood), training).fit(split)
            result = evaluate(model, split, "test")
            history = model.history_
            sec_per_epoch = float(history["train_seconds"].median())
            # Measured right after training, in the same process, at the same shape.
            bound = epoch_bound(split.train.shape[0], training.batch_size, 600, split.n_items * (2 if likelihood == "gaussian_learned" else 1))
            s = result.summary
            rows.append({
                "dataset": name, "likelihood": likelihood,
                **{m: s.loc[m, "mean"] for m in ("ndcg@100", "recall@20", "recall@50")},
                **{f"{m} ci95": 1.96 * s.loc[m, "std_err"] for m in ("ndcg@100", "recall@20", "recall@50")},
                "test users": int(s.loc["ndcg@100", "n_users"]),
                "best epoch": model.training_.best_epoch, "beta at best": model.training_.best_beta,
                "beta reached": model.training_.final_beta,
                "s/epoch": sec_per_epoch, "decoder bound s/epoch": bound, "ratio": sec_per_epoch / bound,
            })
            print(pd.DataFrame(rows[-1:]).to_string(index=False))
    return pd.DataFrame(rows)


def speed_ml20m(batches: int | None, progress: bool) -> dict:
    """One training epoch on ML-20M-shaped synthetic data (136,677 x 20,108 at 0.37%)."""
    started = time.perf_counter()
    data = synthetic_interactions(ML20M_SHAPE)
    make_seconds = time.perf_counter() - started
    split = strong_generalization(data, 10_000)
    train = split.train if batches is None else split.train[: batches * 500]
    model = MultVAE(training=TrainingConfig(epochs=1, progress=progress))
    model.fit(train)
    sec = float(model.history_["train_seconds"].iloc[0])
    bound = epoch_bound(train.shape[0], 500, 600, split.n_items)
    out = {
        "shape": f"{train.shape[0]:,} train users x {split.n_items:,} items, {train.nnz:,} events",
        "synthetic data seconds": make_seconds, "s/epoch": sec, "decoder bound s/epoch": bound, "ratio": sec / bound,
        "threads": torch.get_num_threads(),
    }
    print("\nML-20M shape, one epoch:", json.dumps(out, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--likelihoods", nargs="*", default=["multinomial", "bernoulli", "gaussian", "gaussian_learned"])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--speed-batches", type=int, default=None, help="limit the ML-20M epoch to this many batches")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--tag", default="vae", help="results file prefix")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = quality(args.datasets, args.likelihoods, args.epochs, args.progress)
    if len(table):
        table.to_csv(RESULTS / f"{args.tag}_quality.csv", index=False)
        (RESULTS / f"{args.tag}_quality.md").write_text(table.to_markdown(index=False, floatfmt=".4f") + "\n")
        print("\n" + table.to_markdown(index=False, floatfmt=".4f"))
    if not args.skip_speed:
        speed = speed_ml20m(args.speed_batches, args.progress)
        (RESULTS / f"{args.tag}_speed_ml20m.json").write_text(json.dumps(speed, indent=1) + "\n")


if __name__ == "__main__":
    main()
