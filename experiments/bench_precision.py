"""fp32 vs bf16 training: seconds per epoch and test NDCG@100 over several seeds, side by side.

Trains each model once per seed with ``precision="fp32"`` and once with ``precision="bf16"``
(torch.autocast of the matrix products; the likelihood and every score that selects or
reports stay fp32), on the same split. What the two precisions may differ in is the
weights they learn; validation and test are scored alike (fp32) for both. The runs go back
to back (one trainer cannot interleave them): run it on an otherwise idle machine and read
the ratio. On CPUs without native bf16 matrix units (no AVX-512 BF16 / AMX) bf16 is emulated
and many times slower, but its arithmetic -- and so the NDCG it reaches -- is bf16's.

    python experiments/bench_precision.py                                   # ml-1m-half, Mult-VAE, 3 seeds
    python experiments/bench_precision.py --models mult-vae recvae --epochs 50
    python experiments/bench_precision.py --dataset ml-100k --device cuda
    python experiments/bench_precision.py --quick --out-dir /tmp/p    # tiny synthetic split (a smoke test)

Prints a table and writes precision_<dataset>.{md,json} to experiments/results (or --out-dir).
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import make_model

from protocol_datasets import DATASETS, RESULTS, load_protocol_split

PRECISIONS = ("fp32", "bf16")


def cpu_flags() -> str:
    """The bf16-related CPU flags this machine reports (Linux), or ``unknown``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return " ".join(wanted) or "none of avx2/avx512/amx"


def fit_one(name: str, split, precision: str, seed: int, args) -> dict:
    """One fit and its test evaluation: the row of the table."""
    params = dict(precision=precision, device=args.device, seed=seed, progress=False)
    if args.epochs is not None:
        params["epochs"] = args.epochs
    started = time.perf_counter()
    model = make_model(name, params).fit(split)
    wall = time.perf_counter() - started
    history = model.history_
    test = evaluate(model, split, "test")
    return {
        "model": name, "precision": precision, "seed": seed,
        "s/epoch (train)": float(history["train_seconds"].mean()),
        "s/epoch (validation)": float(history["eval_seconds"].mean()),
        "fit s": wall, "epochs": int(history["epoch"].max()),
        "best epoch": model.training_.best_epoch,
        "validation ndcg@100": model.training_.best_score,
        "test ndcg@100": test["ndcg@100"],
        "test per user": test.per_user["ndcg@100"].to_numpy(),
    }


def paired(rows: list[dict], name: str) -> dict:
    """bf16 - fp32 for one model: mean test NDCG@100 over seeds, the seeds' differences, and a paired
    t-test over users of the seed-averaged per-user values."""
    by = {(r["precision"], r["seed"]): r for r in rows if r["model"] == name}
    seeds = sorted({s for _, s in by})
    means = {p: float(np.mean([by[p, s]["test ndcg@100"] for s in seeds])) for p in PRECISIONS}
    users = {p: np.nanmean([by[p, s]["test per user"] for s in seeds], axis=0) for p in PRECISIONS}
    keep = ~(np.isnan(users["fp32"]) | np.isnan(users["bf16"]))
    test = scipy.stats.ttest_rel(users["bf16"][keep], users["fp32"][keep])
    seconds = {p: float(np.mean([by[p, s]["s/epoch (train)"] for s in seeds])) for p in PRECISIONS}
    return {
        "model": name, "seeds": seeds, "fp32": means["fp32"], "bf16": means["bf16"],
        "diff": means["bf16"] - means["fp32"],
        "per-seed diffs": [by["bf16", s]["test ndcg@100"] - by["fp32", s]["test ndcg@100"] for s in seeds],
        "t p-value": float(test.pvalue), "train s/epoch ratio": seconds["bf16"] / seconds["fp32"],
    }


def report(rows: list[dict], summaries: list[dict], args, device: str) -> str:
    header = (f"# fp32 vs bf16 training on {args.dataset} (seeds {', '.join(map(str, args.seeds))}; "
              f"epochs: {args.epochs or 'the model defaults'})\n\n"
              f"Device {device}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
              f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}, {platform.machine()}. "
              "Every score (validation, test) in fp32; runs back to back, read the ratios.\n")
    lines = ["| model | precision | seed | s/epoch (train) | best epoch | validation NDCG@100 | test NDCG@100 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['seed']} | {r['s/epoch (train)']:.2f} | "
                     f"{r['best epoch']} | {r['validation ndcg@100']:.4f} | {r['test ndcg@100']:.4f} |")
    lines += ["", "| model | test NDCG@100 fp32 (mean) | bf16 (mean) | bf16 − fp32 | per seed | paired t p | "
              "bf16 / fp32 s per epoch |", "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['model']} | {s['fp32']:.4f} | {s['bf16']:.4f} | {s['diff']:+.4f} | "
                     f"{', '.join(f'{d:+.4f}' for d in s['per-seed diffs'])} | {s['t p-value']:.3g} | "
                     f"{s['train s/epoch ratio']:.2f}x |")
    return header + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m-half", choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=["mult-vae"], help="registry names (default mult-vae)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default: each model's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny synthetic split instead of --dataset (300 users, 120 items), for a smoke test")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the tables go (default experiments/results)")
    args = parser.parse_args()
    if args.quick:
        args.dataset = "synthetic-quick"
        split = strong_generalization(synthetic_interactions(SyntheticConfig(n_users=300, n_items=120, seed=0)), 30)
    else:
        loaded = load_protocol_split(args.dataset)
        if loaded is None:
            raise SystemExit(f"{args.dataset} not found under ../shared/datasets")
        _, split = loaded
    rows = []
    for name in args.models:
        for seed in args.seeds:
            for precision in PRECISIONS:
                rows.append(fit_one(name, split, precision, seed, args))
                print({k: v for k, v in rows[-1].items() if k != "test per user"}, flush=True)
    summaries = [paired(rows, name) for name in args.models]
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    text = report(rows, summaries, args, device)
    print("\n" + text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"precision_{args.dataset}.md").write_text(text)
    plain = [{k: v for k, v in r.items() if k != "test per user"} for r in rows]
    (args.out_dir / f"precision_{args.dataset}.json").write_text(
        json.dumps({"args": {**vars(args), "out_dir": str(args.out_dir)}, "rows": plain, "summaries": summaries},
                   indent=1))


if __name__ == "__main__":
    main()
