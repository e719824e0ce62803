"""Mult-VAE with the paper's defaults on MovieLens, per likelihood, plus training speed.

For each dataset (Liang et al.'s protocol: rating > 3.5 where ratings exist, users
>= 5, strong generalization with seed 98765) and likelihood: test NDCG@100,
Recall@20, Recall@50 (mean ± 95% CI), the selected epoch and its beta, the beta
reached, seconds per training epoch, and the ratio of that to the decoder's matmul
lower bound measured in the same process at the same shape.

The speed section times training steps on ml-1m-implicit and on ML-20M-shaped
synthetic data, each step followed by a timing of the decoder's matmuls (same
load on the machine), and reports the ratio.

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
from recvae.models import VAE, MultVAE, VAEConfig
from recvae.nn.sparse import DeviceCSR
from recvae.training import TrainingConfig, make_optimizer, train_step

from decoder_bound import DecoderMatmuls, decoder_bound_seconds
from protocol_datasets import DATASETS, RESULTS, load_protocol_split


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


def interleaved_speed(split, steps: int, batch: int = 500, seed: int = 0) -> dict:
    """Training-step seconds against the decoder bound, measured alternately.

    Each training step (exactly the trainer's ``train_step``) is followed by one
    timing of the decoder's three matmuls at the same shape, so both see the same
    machine load; the ratio of the sums is the figure to read.
    """
    device = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VAE(split.n_items, VAEConfig())
    optimizer = make_optimizer(net.parameters(), TrainingConfig())
    data = DeviceCSR(split.train, device)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(split.train.shape[0], generator=generator)
    batches = [b for b in order.split(batch) if len(b) == batch][: steps + 2]
    matmuls = DecoderMatmuls(batch, 600, split.n_items, device)
    train_s = bound_s = 0.0
    for i, index in enumerate(batches):
        t0 = time.perf_counter()
        train_step(net, optimizer, data.rows(index), 0.2, generator, device)
        t1 = time.perf_counter()
        matmuls.run()
        t2 = time.perf_counter()
        if i >= 2:  # the first steps allocate optimizer state and warm caches
            train_s += t1 - t0
            bound_s += t2 - t1
    n = len(batches) - 2
    steps_per_epoch = split.train.shape[0] / batch
    flops = matmuls.flops
    return {
        "train users x items": f"{split.train.shape[0]:,} x {split.n_items:,} ({split.train.nnz:,} events)",
        "steps measured": n, "s/step": train_s / n, "decoder bound s/step": bound_s / n,
        "ratio": train_s / bound_s, "s/epoch (steps x s/step)": steps_per_epoch * train_s / n,
        "decoder bound s/epoch": steps_per_epoch * bound_s / n,
        "decoder matmul GFLOP/s": flops * n / bound_s / 1e9, "threads": torch.get_num_threads(),
    }


def speed(steps: int) -> dict:
    """Interleaved step timing on ml-1m-implicit (when present) and ML-20M-shaped synthetic data."""
    out = {}
    loaded = load_protocol_split("ml-1m-implicit")
    if loaded is not None:
        out["ml-1m-implicit"] = interleaved_speed(loaded[1], steps)
        print("ml-1m-implicit:", json.dumps(out["ml-1m-implicit"], indent=1))
    started = time.perf_counter()
    split = strong_generalization(synthetic_interactions(ML20M_SHAPE), 10_000)
    out["ml-20m-shape (synthetic)"] = {"make data + split s": time.perf_counter() - started,
                                       **interleaved_speed(split, steps)}
    print("ML-20M shape:", json.dumps(out["ml-20m-shape (synthetic)"], indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--likelihoods", nargs="*", default=["multinomial", "bernoulli", "gaussian", "gaussian_learned"])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--speed-steps", type=int, default=60, help="training steps timed per speed dataset")
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
        figures = speed(args.speed_steps)
        (RESULTS / f"{args.tag}_speed.json").write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
