"""The GPU check in one command, within ten minutes: run it once on any machine with an NVIDIA GPU.

    python experiments/bench_gpu.py               # -> experiments/results/gpu.md (and gpu.json)
    python experiments/bench_gpu.py --dry-run     # tiny shapes on the CPU: the test suite runs this

It prints one table and writes it:

1. the CUDA tests of the suite (``pytest -k cuda``; the distributed ones need 2 GPUs);
2. Mult-VAE (I-600-200-600-I) and RecVAE seconds per epoch and training users/s on the
   ML-20M shape (136,677 x 20,108 synthetic users x items), in fp32 and in bf16 autocast,
   each from timed steps (the trainer's own ``train_step`` / ``_train_phase`` on device CSR
   batches of 500) extrapolated to an epoch;
3. the decoder's matmul bound on that device (``decoder_bound.py``) in the same precision,
   and the ratio step / bound;
4. evaluation users/s (top-100 over the full catalogue, fold-in items masked);
5. peak GPU memory (``torch.cuda.max_memory_allocated``).

Data-parallel 1 vs N GPUs is not measured here: run ``experiments/bench_distributed.py``
on a machine with several GPUs. Every figure is measured in this run; nothing is asserted
about time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from recvae.data import ML20M_SHAPE, SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate_heldout
from recvae.nn import VAE, RecVAEConfig, RecVAENet, VAEConfig
from recvae.nn.sparse import DeviceCSR
from recvae.training import TrainingConfig, make_optimizer, sparse_rows, train_step
from recvae.training.rec_vae import PriorPosteriors, _train_phase

from decoder_bound import DecoderMatmuls

ROOT = Path(__file__).resolve().parents[1]
BATCH = 500
PRECISIONS = ("fp32", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[len(seconds) // 2]


def run_cuda_tests(dry_run: bool) -> str:
    if dry_run or not torch.cuda.is_available():
        return "not run (dry run)" if dry_run else "not run (no CUDA)"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    return f"exit {result.returncode}: {lines[-1] if lines else '(no output)'}"


def measure(device: torch.device, dry_run: bool, steps: int) -> dict:
    shape = SyntheticConfig(n_users=200, n_items=100, seed=0) if dry_run else ML20M_SHAPE
    started = time.perf_counter()
    split = strong_generalization(synthetic_interactions(shape), 20 if dry_run else 10_000)
    n_train, n_items = split.train.shape
    data_seconds = time.perf_counter() - started
    data = DeviceCSR(split.train, device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = torch.arange(min(BATCH, n_train), device=device)
    steps_per_epoch = math.ceil(n_train / BATCH)
    rows: list[dict] = []
    for precision in PRECISIONS:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        torch.manual_seed(0)
        net = VAE(n_items, VAEConfig()).to(device)
        optimizer = make_optimizer(net.parameters(), TrainingConfig(lr=1e-3))
        x = data.rows(batch)
        step = _timed(lambda: train_step(net, optimizer, x, 0.2, generator, device, precision), device, steps, 2)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        matmuls = DecoderMatmuls(len(batch), 600, n_items, device, dtype=dtype)
        bound = _timed(matmuls.run, device, steps, 1)
        rows.append({"model": "Mult-VAE", "precision": precision, "s/epoch": step * steps_per_epoch,
                     "users/s": len(batch) / step, "bound s/step": bound, "ratio": step / bound})

        recvae_config = RecVAEConfig()
        torch.manual_seed(0)
        recvae = RecVAENet(n_items, recvae_config).to(device)
        optimizers = {part: make_optimizer(getattr(recvae, part).parameters(), TrainingConfig(lr=5e-4))
                      for part in ("encoder", "decoder")}

        prior = PriorPosteriors(n_train)  # the prior's posteriors, kept per user as train_recvae does

        def recvae_batch() -> None:  # the trainer's order: encoder passes, prior refreshed, decoder passes
            _train_phase(recvae, "encoder", optimizers["encoder"], data, batch, generator,
                         passes=recvae_config.encoder_epochs, batch_size=len(batch), precision=precision, prior=prior)
            recvae.update_prior()
            _train_phase(recvae, "decoder", optimizers["decoder"], data, batch, generator,
                         passes=recvae_config.decoder_epochs, batch_size=len(batch), precision=precision, prior=prior)

        step = _timed(recvae_batch, device, max(2, steps // 2), 1)
        recvae_matmuls = DecoderMatmuls(len(batch), recvae_config.latent_dim, n_items, device, dtype=dtype)
        passes = recvae_config.encoder_epochs + recvae_config.decoder_epochs
        bound = _timed(lambda: recvae_matmuls.run(forward=passes, grad_input=recvae_config.encoder_epochs,
                                                  grad_weight=recvae_config.decoder_epochs), device, steps, 1)
        rows.append({"model": "RecVAE", "precision": precision, "s/epoch": step * steps_per_epoch,
                     "users/s": len(batch) / step, "bound s/step": bound, "ratio": step / bound})
        del net, optimizer, recvae, optimizers

    torch.manual_seed(0)
    scorer = VAE(n_items, VAEConfig()).to(device).eval()

    def score_fn(rows_csr):
        return scorer.scores(sparse_rows(rows_csr, device))

    _sync(device)
    started = time.perf_counter()
    evaluate_heldout(score_fn, split.test, ks=(min(100, n_items),), metrics=("ndcg",), batch_size=1000)
    _sync(device)
    eval_users_per_second = split.test.n_users / (time.perf_counter() - started)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "shape": f"{n_train:,} train users x {n_items:,} items ({split.train.nnz:,} events), data {data_seconds:.0f}s",
        "training": rows,
        "eval users/s": eval_users_per_second,
        "peak GPU memory GiB": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
    }


def table(figures: dict) -> str:
    lines = [f"Device: {figures['device']}; {figures['shape']}", f"CUDA tests: {figures['cuda tests']}", "",
             "| model | precision | s/epoch | training users/s | decoder bound s/step | step / bound |",
             "|---|---|---|---|---|---|"]
    for row in figures["training"]:
        lines.append(f"| {row['model']} | {row['precision']} | {row['s/epoch']:.2f} | {row['users/s']:,.0f} | "
                     f"{row['bound s/step'] * 1e3:.2f} ms | {row['ratio']:.2f} |")
    memory = figures["peak GPU memory GiB"]
    lines += ["", f"Evaluation: {figures['eval users/s']:,.0f} users/s (top-100, fold-in masked).",
              f"Peak GPU memory: {memory:.2f} GiB." if memory is not None else "Peak GPU memory: n/a (CPU).",
              "Data-parallel 1 vs N GPUs: not measured here (experiments/bench_distributed.py)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, a few steps (for the tests)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per figure (default 20; 2 dry)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = args.steps or (2 if args.dry_run else 20)
    figures = {"cuda tests": run_cuda_tests(args.dry_run), **measure(device, args.dry_run, steps),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "torch": torch.__version__, "dry run": args.dry_run}
    text = table(figures)
    print(text)
    name = "gpu_dry_run" if args.dry_run else "gpu"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    (args.out_dir / f"{name}.md").write_text(f"# GPU benchmark ({figures['created']})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
