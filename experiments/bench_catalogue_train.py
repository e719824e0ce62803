"""A Mult-VAE training step (I-600-200-600-I, batch 500) as the catalogue grows: full, chunked, sampled.

For each catalogue size I, each in its own subprocess (so its peak RSS is its own):

- ``full``: today's path, batch x I logits, softmax and gradient (skipped where the
  estimated memory does not fit);
- ``chunked``: the exact NLL over blocks of ``--chunk`` items (``VAEConfig.item_chunk``);
- ``chunked+sparse``: the same with ``TrainingConfig.sparse_item_updates`` (SparseAdam
  for the input layer);
- ``sampled``: sampled softmax with ``--negatives`` popularity negatives
  (``VAEConfig.sampled_softmax``);
- ``sampled+sparse``: the same with sparse updates of the input and output layers;
- ``...+bf16moments``: the sparse modes with ``TrainingConfig.item_moments="bf16"`` (the lazy
  Adam's moments stored in bf16: 8 rather than 12 bytes per item-matrix parameter);
- ``bound``: the decoder's matmul lower bound at the step's shape, the three
  B x 600 x I matmuls of the output layer (see ``decoder_bound.py``), measured in the
  same invocation. Sampled softmax does less than the bound's work by design.

A step is ``recvae.training.train_step``: forward, backward and the optimizer step
(fused Adam, or SparseAdam + fused Adam). The data are a few thousand synthetic users
with ~50 Zipf-popular items each, built as CSR arrays (never users x items), so a
million-item model fits wherever its weights and Adam state do (~16 bytes x 1201 x I).

    python experiments/bench_catalogue_train.py --items 20000 100000 1000000
    python experiments/bench_catalogue_train.py --items 20000 --quick     # a smoke test (1 step, in-process)

Prints a table (Markdown); ``--out FILE`` writes it too. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recvae.nn.annealing import AnnealConfig
from recvae.nn.sparse import DeviceCSR
from recvae.nn.vae import VAE, VAEConfig
from recvae.training import (TrainingConfig, make_optimizer, prepare_item_training, retained_host_memory,
                              train_step)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_bound import DecoderMatmuls  # noqa: E402  (a sibling script, not a package)

BATCH = 500
HIDDEN = 600
MODES = ("full", "chunked", "chunked+sparse", "chunked+sparse+bf16moments", "sampled", "sampled+sparse",
         "sampled+sparse+bf16moments")


def synthetic_rows(n_users: int, n_items: int, per_user: int = 50, seed: int = 0) -> sp.csr_matrix:
    """~``per_user`` Zipf-popular items per user (duplicates merged), as CSR arrays only."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1))
    cdf /= cdf[-1]
    items = np.minimum(np.searchsorted(cdf, rng.random(n_users * per_user)), n_items - 1)
    items = rng.permutation(n_items)[items]  # popularity not ordered by item id
    rows = np.repeat(np.arange(n_users), per_user)
    matrix = sp.csr_matrix((np.ones(len(items), np.float32), (rows, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def estimated_bytes(mode: str, n_items: int, chunk: int, negatives: int) -> float:
    """Weights, gradients and Adam moments plus the step's largest activations.

    Dense Adam: 16 B per parameter (weight, gradient, two fp32 moments). A layer with sparse
    updates has no dense gradient (12 B), and with bf16 moments 8 B. Sparse updates cover the
    input layer, and the output layer too under sampled softmax.
    """
    sparse = "+sparse" in mode
    sparse_bytes = 8.0 if mode.endswith("+bf16moments") else 12.0
    input_bytes = sparse_bytes if sparse else 16.0
    output_bytes = sparse_bytes if sparse and mode.startswith("sampled") else 16.0
    state = (input_bytes * HIDDEN + output_bytes * (HIDDEN + 1)) * n_items
    if mode == "full":
        return state + 3 * 4.0 * BATCH * n_items
    if mode.startswith("chunked"):
        return state + 3 * 4.0 * BATCH * min(chunk, n_items)
    return state + 3 * 4.0 * BATCH * min(n_items, 25_000 + negatives)


def available_bytes(device: str = "cpu") -> float:
    """Free memory where the cell will run: MemAvailable on CPU, free device memory on CUDA."""
    if torch.device(device).type == "cuda":
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return float("inf")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_device_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# =============================================================================== the child: one cell
def child(args: argparse.Namespace, n_items: int, mode: str) -> dict:
    """One cell: the median step time (or the bound's), peak RSS so far, build seconds, the last NLL."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    retain = not getattr(args, "release_host_memory", False) and device.type == "cpu"
    if mode == "bound":  # under the steps' host-memory setting: its outputs are allocated each run too
        with retained_host_memory(retain):
            matmuls = DecoderMatmuls(BATCH, HIDDEN, n_items, device)
            matmuls.run()
            times = [matmuls.seconds() for _ in range(args.steps)]
        return {"items": n_items, "mode": mode, "step_ms": 1000 * statistics.median(times), "peak_rss_mb": peak_rss_mb(),
                "peak_device_mb": _peak_device_mb(device)}
    matrix = synthetic_rows(args.users, n_items)
    config = VAEConfig(hidden_dims=(HIDDEN,), latent_dim=200,
                       item_chunk=args.chunk if mode.startswith("chunked") else None,
                       sampled_softmax=args.negatives if mode.startswith("sampled") else None,
                       negative_sampler="popularity")
    training = TrainingConfig(batch_size=BATCH, device=args.device, precision="fp32", progress=False,
                              anneal=AnnealConfig(kind="constant", cap=0.2), sparse_item_updates="+sparse" in mode,
                              item_moments="bf16" if mode.endswith("+bf16moments") else "fp32",
                              retain_host_memory=retain)
    started = time.perf_counter()
    net = VAE(n_items, config).to(device).train()
    prepare_item_training(net, matrix, training, None)
    optimizer = make_optimizer(net.parameters(), training)
    data = DeviceCSR(matrix, device)
    build_s = time.perf_counter() - started
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(matrix.shape[0], generator=generator, device=device)
    times = []
    with retained_host_memory(training.retain_host_memory):  # as the trainers do
        for step in range(args.steps + 1):  # the first step is a warm-up (optimizer state, allocator)
            batch = data.rows(order[(step * BATCH) % (matrix.shape[0] - BATCH):][:BATCH])
            _sync(device)
            started = time.perf_counter()
            parts = train_step(net, optimizer, batch, 0.2, generator, device)
            _sync(device)
            if step:
                times.append(time.perf_counter() - started)
            if not torch.isfinite(parts["loss"]):
                raise FloatingPointError(f"{mode} at {n_items} items: non-finite loss")
    return {"items": n_items, "mode": mode, "step_ms": 1000 * statistics.median(times),
            "peak_rss_mb": peak_rss_mb(), "peak_device_mb": _peak_device_mb(device), "build_s": build_s,
            "nll": float(parts["nll"].detach())}


# =============================================================================== the parent
def run_cell(args: argparse.Namespace, n_items: int, mode: str) -> dict:
    if mode != "bound":
        need = estimated_bytes(mode, n_items, args.chunk, args.negatives)
        free = available_bytes(args.device)
        if need > 0.85 * free:
            return {"items": n_items, "mode": mode, "skipped": f"needs ~{need / 2**30:.1f} GiB, "
                                                              f"{free / 2**30:.1f} GiB available"}
    if args.in_process:
        return child(args, n_items, mode)
    command = [sys.executable, str(Path(__file__).resolve()), "--child-items", str(n_items), "--child-mode", mode,
               "--steps", str(args.steps), "--users", str(args.users), "--chunk", str(args.chunk),
               "--negatives", str(args.negatives), "--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.release_host_memory:
        command += ["--release-host-memory"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"items": n_items, "mode": mode, "skipped": f"failed: {_last_line(done)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_line(done: subprocess.CompletedProcess, width: int = 120) -> str:
    """The child's last line of stderr, or its exit status when it wrote none (killed by the OOM killer)."""
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:width]


def table(results: list[dict]) -> str:
    bounds = {r["items"]: r["step_ms"] for r in results if r["mode"] == "bound" and "step_ms" in r}
    lines = ["| items | mode | step ms | × matmul bound | peak RSS MB | peak device MB | build s | NLL |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['items']:,} | {r['mode']} | skipped: {r['skipped']} | | | | | |")
            continue
        ratio = r["step_ms"] / bounds[r["items"]] if r["items"] in bounds and r["mode"] != "bound" else None
        device_mb = "" if r.get("peak_device_mb") is None else f"{r['peak_device_mb']:.0f}"
        build = "" if "build_s" not in r else f"{r['build_s']:.1f}"
        nll = "" if "nll" not in r else f"{r['nll']:.1f}"
        lines.append(f"| {r['items']:,} | {r['mode']} | {r['step_ms']:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {r['peak_rss_mb']:.0f} | {device_mb} | {build} | {nll} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per cell (after one warm-up)")
    parser.add_argument("--users", type=int, default=4000, help="synthetic users (~50 items each)")
    parser.add_argument("--chunk", type=int, default=8192, help="item_chunk of the chunked modes")
    parser.add_argument("--negatives", type=int, default=2000, help="sampled_softmax of the sampled modes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per subprocess")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n] (not exercised on CUDA by its author)")
    parser.add_argument("--quick", action="store_true",
                        help="1 timed step, 1000 users, all cells in this process: a smoke test")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cells in this process (saves an interpreter start per cell; the peak RSS "
                             "is then the process's running peak, not each cell's)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--release-host-memory", action="store_true",
                        help="train with retain_host_memory=False (glibc's default: large blocks unmapped when "
                             "freed) instead of the trainers' default")
    parser.add_argument("--child-items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", choices=(*MODES, "bound"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.users, args.in_process = 1, 1000, True
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_mode is not None:
        print(json.dumps(child(args, args.child_items, args.child_mode)))
        return
    results = []
    for n_items in args.items:
        for mode in ("bound", *args.modes):
            results.append(run_cell(args, n_items, mode))
            print(f"  {n_items:,} {mode}: {results[-1].get('step_ms', results[-1].get('skipped'))}", file=sys.stderr)
    header = (f"Mult-VAE I-600-200-600-I training step on {args.device}, batch {BATCH}, fp32, CPU threads "
              f"{args.threads or torch.get_num_threads()}, median of {args.steps} steps after 1 warm-up; "
              f"chunk {args.chunk}, {args.negatives} popularity negatives; {args.users} synthetic users "
              f"x ~50 items; {'peak RSS is the running peak of one process' if args.in_process else 'each cell in its own subprocess'}; "
              f"host memory {'released (glibc default)' if args.release_host_memory else 'retained while training (the default)'}.\n\n")
    text = header + table(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
