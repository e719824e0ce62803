"""Mult-VAE in fp32 and in bf16 autocast: seconds per epoch and test NDCG@100, side by side.

Trains the paper's Mult-VAE twice on the same split and seed, once with
``precision="fp32"`` and once with ``precision="bf16"`` (torch.autocast of the matrix
products; the loss and log-softmax stay fp32), for the same number of epochs. The
two runs go back to back (one trainer cannot interleave them): run it on an
otherwise idle machine and read the ratio. On CPUs without native bf16
matrix units (no AVX-512 BF16 / AMX) bf16 is emulated and slower; on CUDA it is
the fast path.

    python experiments/bench_precision.py                        # ml-1m-implicit, 20 epochs each
    python experiments/bench_precision.py --dataset ml-100k --epochs 50 --device cuda

Prints a table and writes experiments/results/precision_<dataset>.{md,json}.
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from recvae.evaluation import evaluate
from recvae.models import MultVAE
from recvae.training import TrainingConfig

from protocol_datasets import DATASETS, RESULTS, load_protocol_split


def cpu_flags() -> str:
    """The bf16-related CPU flags this machine reports (Linux), or ``unknown``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return " ".join(wanted) or "none of avx2/avx512/amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m-implicit", choices=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loaded = load_protocol_split(args.dataset)
    if loaded is None:
        raise SystemExit(f"{args.dataset} not found under ../shared/datasets")
    _, split = loaded
    rows = []
    for precision in ("fp32", "bf16"):
        training = TrainingConfig(epochs=args.epochs, precision=precision, device=args.device, seed=args.seed,
                                  progress=False)
        started = time.perf_counter()
        model = MultVAE(training=training).fit(split)
        wall = time.perf_counter() - started
        history = model.history_
        test = evaluate(model, split, "test")
        rows.append({
            "precision": precision,
            "s/epoch (train)": float(history["train_seconds"].mean()),
            "s/epoch (validation)": float(history["eval_seconds"].mean()),
            "fit s": wall,
            "best epoch": model.training_.best_epoch,
            "validation ndcg@100": model.training_.best_score,
            "test ndcg@100": test["ndcg@100"],
            "test ndcg@100 ci95": 1.96 * float(test.summary.loc["ndcg@100", "std_err"]),
        })
        print(rows[-1], flush=True)
    fp32, bf16 = rows
    header = (f"# Mult-VAE fp32 vs bf16 autocast on {args.dataset} ({args.epochs} epochs each, seed {args.seed})\n\n"
              f"Device {model.device_}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
              f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}, {platform.machine()}. "
              "Runs back to back; read the ratio.\n")
    lines = ["| precision | s/epoch (train) | s/epoch (validation) | best epoch | validation NDCG@100 | test NDCG@100 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['s/epoch (train)']:.2f} | {r['s/epoch (validation)']:.2f} | "
                     f"{r['best epoch']} | {r['validation ndcg@100']:.4f} | {r['test ndcg@100']:.4f} ± "
                     f"{r['test ndcg@100 ci95']:.4f} |")
    summary = (f"\nbf16 / fp32 seconds per training epoch: {bf16['s/epoch (train)'] / fp32['s/epoch (train)']:.2f}x; "
               f"test NDCG@100 difference (bf16 − fp32): {bf16['test ndcg@100'] - fp32['test ndcg@100']:+.4f}.\n")
    text = header + "\n" + "\n".join(lines) + "\n" + summary
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"precision_{args.dataset}.md").write_text(text)
    (RESULTS / f"precision_{args.dataset}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
