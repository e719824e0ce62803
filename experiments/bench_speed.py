"""Training and evaluation speed and memory of recvae's Mult-VAE (and RecVAE) at ML-1M and ML-20M shapes.

For each shape, in its own subprocess (so its peak memory is its own):

1. seconds per training step of Mult-VAE (the trainer's own pieces: ``DeviceCSR``
   batches of 500 users and ``recvae.training.train_step``), and the decoder's
   matmul lower bound at the same batch shape (the output layer's three
   B x 600 x I matmuls, see ``decoder_bound.py``), with their ratio; likewise
   RecVAE, whose epoch is 3 encoder passes and 1 decoder pass (per batch: 3 + 1
   steps against 4 forward, 3 input-gradient and 1 weight-gradient B x 200 x I matmuls),
   run as ``train_recvae`` runs it (the prior refreshed between the phases, the prior's
   posteriors kept per user: always the same batch, so that the cache is in its
   training steady state);
   and, for each precision of ``--precisions`` beyond fp32 (bf16: the library's own
   autocast path, ``train_step(..., precision="bf16")`` and ``_train_phase(...,
   precision="bf16")``), the same Mult-VAE sparse-input step and RecVAE batch epoch
   in that precision beside the decoder bound in that precision (``DecoderMatmuls``
   on bf16 operands, as autocast makes them), their ratios and the step's ratio to
   the fp32 step. On a CPU without native bf16 (no AVX512-BF16 / AMX; the header
   records ``torch.backends.cpu.get_cpu_capability()`` and
   ``recvae.training.cpu_has_native_bf16()``) torch emulates bf16 and it is much
   slower than fp32 (~15x on AVX2): a finding about the machine, not a bug;
2. the same step with a densified input (each batch made a dense B x I tensor,
   L2-normalised and dropped out densely, and a dense first layer starting from
   the same weights, as common PyTorch ports do) against our sparse input;
3. evaluation throughput: users per second for full-catalogue top-100 with the
   fold-in items masked (``recvae.evaluation.evaluate_heldout`` on the test users);
4. peak memory: the subprocess's peak RSS (and ``torch.cuda.max_memory_allocated``
   on a GPU), beside the size a dense users x items float32 matrix would take.

The step kinds (and every precision's) are interleaved (step by step, their order
rotating), so machine noise hits all of them alike; read the ratios, not the seconds. Seconds
per epoch are N timed steps extrapolated to an epoch (the mean step time times
the number of batches of an epoch), not a timed epoch. Runs on CUDA when it is
available (``--device`` to choose).

Shapes: ``ml-1m`` is ../shared/datasets/ml-1m-implicit (when present; else
synthetic data of ML1M_SHAPE), 600 + 600 held-out users; ``ml-20m`` is synthetic
data of ML20M_SHAPE (136,677 x 20,108 at 0.37%, ~20 s to generate), 10,000 +
10,000 held-out users.

    python experiments/bench_speed.py                       # both shapes -> experiments/results/speed.json, speed.md
    python experiments/bench_speed.py --shapes ml-1m --steps 10 --threads 2
    python experiments/bench_speed.py --precisions fp32     # fp32 only (the table before bf16 rows)
    python experiments/bench_speed.py --quick               # tiny shapes, a smoke test -> speed_quick.*

Prints the figures and writes them; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from recvae.data import (
    ML1M_SHAPE,
    ML20M_SHAPE,
    SyntheticConfig,
    load_movielens,
    strong_generalization,
    synthetic_interactions,
)
from recvae.evaluation import evaluate_heldout, top_k_for_rows
from recvae.models import VAE, RecVAENet, VAEConfig
from recvae.nn.rec_vae import RecVAEConfig
from recvae.training.rec_vae import PriorPosteriors, _train_phase
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training import (
    TrainingConfig,
    cpu_has_native_bf16,
    make_optimizer,
    resolve_device,
    retained_host_memory,
    sparse_rows,
    train_step,
)

from decoder_bound import DecoderMatmuls, DenseLayerMatmuls

ROOT = Path(__file__).resolve().parents[1]
ML1M_FILE = ROOT.parent / "shared" / "datasets" / "ml-1m-implicit" / "ratings.csv.gz"
SHAPES = ("ml-1m", "ml-20m")
BATCH = 500
HIDDEN = 600  # Mult-VAE's I-600-200-600-I: the decoder's last layer is 600 x I
WARMUP = 2  # untimed steps of each kind first: optimizer state, allocator, caches
PRECISIONS = ("fp32", "bf16")  # --precisions must hold fp32: the baseline of the ratios
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the decoder bound's operands in each precision


class DenseInputVAE(VAE):
    """Mult-VAE with the input densified, as common PyTorch ports write it.

    Each batch becomes a dense B x I tensor, normalised and dropped out densely,
    and the first layer is a dense matmul with the same (I x 600) weight as
    recvae's sparse first layer. Everything after the first layer is recvae's.
    For speed comparison only.
    """

    def encode(self, x: SparseRows, generator: torch.Generator | None = None):
        dense = x.to_dense()  # B x I: what recvae never builds
        if self.config.normalize_input:
            dense = F.normalize(dense, dim=1)
        dense = F.dropout(dense, p=self.config.input_dropout, training=self.training)
        h = dense @ self.input_layer.weight + self.input_layer.bias
        for layer in self.encoder:
            h = layer(self._act(h))
        d = self.config.latent_dim
        return h[:, :d], h[:, d:]


# =============================================================================== the child: one shape
def make_split(shape: str, quick: bool):
    """(split, description) of a shape."""
    if quick:
        config = {"ml-1m": SyntheticConfig(n_users=1200, n_items=400, mean_events_per_user=40.0, with_ratings=False),
                  "ml-20m": SyntheticConfig(n_users=2400, n_items=1000, mean_events_per_user=30.0,
                                            with_ratings=False)}[shape]
        return strong_generalization(synthetic_interactions(config), 100), f"tiny synthetic stand-in for {shape} (--quick)"
    if shape == "ml-1m":
        if ML1M_FILE.exists():
            return strong_generalization(load_movielens(ML1M_FILE), 600), f"ml-1m-implicit ({ML1M_FILE.name}), 600 + 600 held out"
        return (strong_generalization(synthetic_interactions(ML1M_SHAPE), 600),
                "synthetic ML1M_SHAPE (ml-1m-implicit not found), 600 + 600 held out")
    return strong_generalization(synthetic_interactions(ML20M_SHAPE), 10_000), "synthetic ML20M_SHAPE, 10,000 + 10,000 held out"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def interleaved(groups: list[tuple[str, ...]], rep: int) -> list[str]:
    """The timing order of repetition ``rep``: the groups' kinds dealt round-robin, starting at group
    ``rep % len(groups)``; the first group's kinds rotated by ``rep``, the others' by ``rep // len(groups)``
    (so that every kind runs first in turn).

    The first group's kinds keep among themselves the order they would have alone, so the fp32
    kinds (which share one generator) draw the same numbers with or without other precisions."""
    queues = []
    for i, group in enumerate(groups):
        shift = (rep if i == 0 else rep // len(groups)) % len(group)
        queues.append(list(group[shift:] + group[:shift]))
    start = rep % len(queues)
    queues = queues[start:] + queues[:start]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order


def measure(shape: str, steps: int, device: torch.device, quick: bool,
            precisions: tuple[str, ...] = ("fp32",)) -> dict:
    """Every figure of one shape, measured in this process; fp32, and each other of ``precisions``
    for the Mult-VAE sparse step, the RecVAE batch epoch and their decoder bounds."""
    started = time.perf_counter()
    split, description = make_split(shape, quick)
    data_seconds = time.perf_counter() - started
    peak_after_data = _peak_rss_bytes()
    n_train, n_items = split.train.shape
    n_users_all = n_train + split.validation.n_users + split.test.n_users
    print(f"{shape}: {description}; {split}; data {data_seconds:.1f}s", flush=True)

    # (1) + (2): sparse step, dense-input step and decoder bound, interleaved
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sparse_net = VAE(n_items, VAEConfig()).to(device)
    dense_net = DenseInputVAE(n_items, VAEConfig()).to(device)
    dense_net.load_state_dict(sparse_net.state_dict())  # the same starting weights
    training = TrainingConfig()
    optimizers = {"sparse": make_optimizer(sparse_net.parameters(), training),
                  "dense": make_optimizer(dense_net.parameters(), training)}
    nets = {"sparse": sparse_net, "dense": dense_net}
    data = DeviceCSR(split.train, device)
    generator = torch.Generator(device=device).manual_seed(0)
    active = torch.from_numpy((split.train.getnnz(axis=1) > 0).nonzero()[0]).to(device)
    order = active[torch.randperm(len(active), generator=generator, device=device)]
    batches = [b for b in order.split(BATCH) if len(b) == BATCH] or [order]
    batch_size = len(batches[0])
    matmuls = DecoderMatmuls(batch_size, HIDDEN, n_items, device)
    layer_matmuls = DenseLayerMatmuls(batch_size, [sparse_net.encoder, sparse_net.decoder[:-1]], device)
    # RecVAE: one batch's share of an epoch is 3 encoder-phase steps and 1 decoder-phase step;
    # its decoder is latent (200) x I, and each phase skips the frozen part's gradients.
    recvae_config = RecVAEConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        recvae_net = RecVAENet(n_items, recvae_config).to(device)
    recvae_optimizers = {part: make_optimizer(getattr(recvae_net, part).parameters(), TrainingConfig(lr=5e-4))
                         for part in ("encoder", "decoder")}
    recvae_matmuls = DecoderMatmuls(batch_size, recvae_config.latent_dim, n_items, device)
    # Its encoder's dense layers: 3 forward and backward passes (encoder phases) and 1 forward
    # (the decoder phase's frozen posterior, which doubles as the refreshed prior's).
    recvae_layer_matmuls = DenseLayerMatmuls(batch_size, [recvae_net.encoder], device)
    passes = recvae_config.encoder_epochs + recvae_config.decoder_epochs
    recvae_decoder_runs = {"forward": passes, "grad_input": recvae_config.encoder_epochs,
                           "grad_weight": recvae_config.decoder_epochs}
    recvae_encoder_runs = {"forward": passes, "grad_input": recvae_config.encoder_epochs,
                           "grad_weight": recvae_config.encoder_epochs}
    # As train_recvae: encoder passes, the prior refreshed, decoder passes, with the prior's posteriors
    # kept per user. RecVAE always takes the same batch, whose posteriors the previous repetition's
    # decoder pass kept: the cache's steady state in training (the first repetition fills it, untimed).
    recvae_prior = PriorPosteriors(n_train)
    recvae_batch = batches[0]

    def recvae_batch_epoch(batch: torch.Tensor) -> None:
        _train_phase(recvae_net, "encoder", recvae_optimizers["encoder"], data, batch, generator,
                     passes=recvae_config.encoder_epochs, batch_size=len(batch), prior=recvae_prior)
        recvae_net.update_prior()
        _train_phase(recvae_net, "decoder", recvae_optimizers["decoder"], data, batch, generator,
                     passes=recvae_config.decoder_epochs, batch_size=len(batch), prior=recvae_prior)

    # Each other precision: nets of the same starting weights (built as above), and their own
    # optimizers, generator and prior cache, so that the fp32 kinds run exactly as they would alone.
    others = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = VAE(n_items, VAEConfig()).to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            rnet = RecVAENet(n_items, recvae_config).to(device)
        others[precision] = {
            "net": net, "optimizer": make_optimizer(net.parameters(), training),
            "generator": torch.Generator(device=device).manual_seed(0),
            "matmuls": DecoderMatmuls(batch_size, HIDDEN, n_items, device, dtype=DTYPES[precision]),
            "recvae net": rnet,
            "recvae optimizers": {part: make_optimizer(getattr(rnet, part).parameters(), TrainingConfig(lr=5e-4))
                                  for part in ("encoder", "decoder")},
            "recvae matmuls": DecoderMatmuls(batch_size, recvae_config.latent_dim, n_items, device,
                                             dtype=DTYPES[precision]),
            "recvae prior": PriorPosteriors(n_train),
        }

    def other_recvae_batch_epoch(precision: str, batch: torch.Tensor) -> None:  # as recvae_batch_epoch, in precision
        o = others[precision]
        _train_phase(o["recvae net"], "encoder", o["recvae optimizers"]["encoder"], data, batch, o["generator"],
                     passes=recvae_config.encoder_epochs, batch_size=len(batch), precision=precision,
                     prior=o["recvae prior"])
        o["recvae net"].update_prior()
        _train_phase(o["recvae net"], "decoder", o["recvae optimizers"]["decoder"], data, batch, o["generator"],
                     passes=recvae_config.decoder_epochs, batch_size=len(batch), precision=precision,
                     prior=o["recvae prior"])

    kinds = ("sparse", "dense", "bound", "layers", "recvae", "recvae bound", "recvae layers")
    # timing keys: the fp32 kinds as they are; another precision's as "<kind> <precision>", e.g. "sparse bf16"
    keys = {kind: (kind, "fp32") for kind in kinds}
    groups = [kinds]
    for precision in others:
        group = {f"{kind} {precision}": (kind, precision) for kind in ("sparse", "bound", "recvae", "recvae bound")}
        keys.update(group)
        groups.append(tuple(group))
    seconds: dict[str, list[float]] = {k: [] for k in keys}
    for rep in range(WARMUP + steps):
        batch = batches[rep % len(batches)]
        x = data.rows(batch)
        for key in interleaved(groups, rep):  # rotate the order: no kind always runs first
            kind, precision = keys[key]
            _sync(device)
            t0 = time.perf_counter()
            if precision != "fp32":
                o = others[precision]
                if kind == "bound":
                    o["matmuls"].run()
                elif kind == "recvae bound":
                    o["recvae matmuls"].run(**recvae_decoder_runs)
                elif kind == "recvae":
                    other_recvae_batch_epoch(precision, recvae_batch)
                    _sync(device)
                else:
                    train_step(o["net"], o["optimizer"], x, 0.2, o["generator"], device, precision)
                    _sync(device)
            elif kind == "bound":
                matmuls.run()
            elif kind == "layers":
                layer_matmuls.run()
            elif kind == "recvae layers":
                recvae_layer_matmuls.run(**recvae_encoder_runs)
            elif kind == "recvae bound":
                recvae_matmuls.run(**recvae_decoder_runs)
            elif kind == "recvae":
                recvae_batch_epoch(recvae_batch)
                _sync(device)
            else:
                train_step(nets[kind], optimizers[kind], x, 0.2, generator, device)
                _sync(device)
            if rep >= WARMUP:
                seconds[key].append(time.perf_counter() - t0)
    mean = {k: sum(v) / len(v) for k, v in seconds.items()}
    median = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    steps_per_epoch = math.ceil(len(active) / BATCH)
    del dense_net, optimizers, nets
    others.clear()  # the other precisions' nets and optimizer states

    # (3): evaluation throughput on the test users (scores of the briefly trained sparse net)
    sparse_net.eval()

    def score_fn(rows):
        return sparse_net.scores(sparse_rows(rows, device))

    top_k_for_rows(score_fn, split.test.fold_in[:50], min(100, n_items))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    result = evaluate_heldout(score_fn, split.test, ks=(min(100, n_items),), metrics=("ndcg",), batch_size=1000)
    _sync(device)
    eval_seconds = time.perf_counter() - t0

    figures = {
        "shape": shape,
        "data": description,
        "train users": n_train,
        "items": n_items,
        "train events": int(split.train.nnz),
        "density": split.train.nnz / (n_train * n_items),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data seconds": data_seconds,
        "batch": batch_size,
        "steps timed (per kind)": steps,
        "steps per epoch": steps_per_epoch,
        "sparse s/step": mean["sparse"],
        "dense-input s/step": mean["dense"],
        "decoder bound s/step": mean["bound"],
        "sparse s/step (median)": median["sparse"],
        "dense-input s/step (median)": median["dense"],
        "decoder bound s/step (median)": median["bound"],
        "sparse s/epoch (extrapolated)": mean["sparse"] * steps_per_epoch,
        "dense-input s/epoch (extrapolated)": mean["dense"] * steps_per_epoch,
        "decoder bound s/epoch (extrapolated)": mean["bound"] * steps_per_epoch,
        "sparse / decoder bound": mean["sparse"] / mean["bound"],
        "dense-input / decoder bound": mean["dense"] / mean["bound"],
        "dense-input / sparse": mean["dense"] / mean["sparse"],
        "decoder matmul GFLOP/s": matmuls.flops / mean["bound"] / 1e9,
        "dense layers s/step": mean["layers"],
        "all-matmul bound s/step": mean["bound"] + mean["layers"],
        "sparse / all-matmul bound": mean["sparse"] / (mean["bound"] + mean["layers"]),
        "RecVAE s/batch (3 encoder + 1 decoder steps)": mean["recvae"],
        "RecVAE decoder bound s/batch": mean["recvae bound"],
        "RecVAE s/epoch (extrapolated)": mean["recvae"] * steps_per_epoch,
        "RecVAE decoder bound s/epoch (extrapolated)": mean["recvae bound"] * steps_per_epoch,
        "RecVAE / decoder bound": mean["recvae"] / mean["recvae bound"],
        "RecVAE encoder dense layers s/batch": mean["recvae layers"],
        "RecVAE all-matmul bound s/batch": mean["recvae bound"] + mean["recvae layers"],
        "RecVAE / all-matmul bound": mean["recvae"] / (mean["recvae bound"] + mean["recvae layers"]),
        "precisions": list(precisions),
        "eval users": split.test.n_users,
        "eval seconds": eval_seconds,
        "eval users/s (top-100, seen masked)": split.test.n_users / eval_seconds,
        "eval ndcg (after the timed steps; not a result)": float(result.summary["mean"].iloc[0]),
        "peak RSS bytes after data": peak_after_data,
        "peak RSS bytes": _peak_rss_bytes(),
        "dense users x items float32 bytes": 4 * n_users_all * n_items,
    }
    for precision in precisions:  # each other precision's figures, keys prefixed "<precision> "
        if precision == "fp32":
            continue
        step, bound = mean[f"sparse {precision}"], mean[f"bound {precision}"]
        recvae, recvae_bound = mean[f"recvae {precision}"], mean[f"recvae bound {precision}"]
        figures.update({
            f"{precision} sparse s/step": step,
            f"{precision} decoder bound s/step": bound,
            f"{precision} sparse s/step (median)": median[f"sparse {precision}"],
            f"{precision} decoder bound s/step (median)": median[f"bound {precision}"],
            f"{precision} sparse s/epoch (extrapolated)": step * steps_per_epoch,
            f"{precision} decoder bound s/epoch (extrapolated)": bound * steps_per_epoch,
            f"{precision} sparse / decoder bound": step / bound,
            f"{precision} / fp32 sparse s/step": step / mean["sparse"],
            f"{precision} decoder matmul GFLOP/s": matmuls.flops / bound / 1e9,
            f"{precision} RecVAE s/batch (3 encoder + 1 decoder steps)": recvae,
            f"{precision} RecVAE decoder bound s/batch": recvae_bound,
            f"{precision} RecVAE s/epoch (extrapolated)": recvae * steps_per_epoch,
            f"{precision} RecVAE decoder bound s/epoch (extrapolated)": recvae_bound * steps_per_epoch,
            f"{precision} RecVAE / decoder bound": recvae / recvae_bound,
            f"{precision} / fp32 RecVAE s/batch": recvae / mean["recvae"],
        })
    if device.type == "cuda":
        figures["cuda max_memory_allocated bytes"] = torch.cuda.max_memory_allocated(device)
        figures["gpu"] = torch.cuda.get_device_name(device)
    return figures


def child(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precisions = tuple(args.precisions)
    if "bf16" in precisions and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(f"{args.child}: this GPU has no bf16; its rows are left out", flush=True)
        precisions = tuple(p for p in precisions if p != "bf16")
    # as the trainers do (TrainingConfig.retain_host_memory), unless the run compares glibc's default
    with retained_host_memory(device.type == "cpu" and not args.release_host_memory) as retained:
        figures = measure(args.child, args.steps, device, args.quick, precisions)
    figures["host memory retained"] = retained
    Path(args.result_file).write_text(json.dumps(figures, indent=1))


# =============================================================================== the parent: run, print, write
def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


ROWS = [  # (label, key, format)
    ("data", "data", "{}"),
    ("train users x items (density)", None, None),
    ("device, threads", None, None),
    ("Mult-VAE step, sparse input (s)", "sparse s/step", "{:.4f}"),
    ("Mult-VAE step, dense input (s)", "dense-input s/step", "{:.4f}"),
    ("decoder matmul bound (s/step)", "decoder bound s/step", "{:.4f}"),
    ("sparse / decoder bound", "sparse / decoder bound", "{:.2f}x"),
    ("other dense layers' matmuls (s/step)", "dense layers s/step", "{:.4f}"),
    ("all-matmul bound: decoder + dense layers (s/step)", "all-matmul bound s/step", "{:.4f}"),
    ("sparse / all-matmul bound", "sparse / all-matmul bound", "{:.2f}x"),
    ("dense input / decoder bound", "dense-input / decoder bound", "{:.2f}x"),
    ("dense input / sparse", "dense-input / sparse", "{:.2f}x"),
    ("s/epoch sparse (extrapolated)", "sparse s/epoch (extrapolated)", "{:.3g}"),
    ("s/epoch dense input (extrapolated)", "dense-input s/epoch (extrapolated)", "{:.3g}"),
    ("s/epoch decoder bound (extrapolated)", "decoder bound s/epoch (extrapolated)", "{:.3g}"),
    ("decoder matmul GFLOP/s", "decoder matmul GFLOP/s", "{:.0f}"),
    ("RecVAE, one batch's epoch: 3 encoder + 1 decoder steps (s)", "RecVAE s/batch (3 encoder + 1 decoder steps)", "{:.4f}"),
    ("RecVAE decoder matmul bound (s/batch)", "RecVAE decoder bound s/batch", "{:.4f}"),
    ("RecVAE / its decoder bound", "RecVAE / decoder bound", "{:.2f}x"),
    ("RecVAE encoder dense layers' matmuls (s/batch)", "RecVAE encoder dense layers s/batch", "{:.4f}"),
    ("RecVAE all-matmul bound: decoder + encoder layers (s/batch)", "RecVAE all-matmul bound s/batch", "{:.4f}"),
    ("RecVAE / its all-matmul bound", "RecVAE / all-matmul bound", "{:.2f}x"),
    ("RecVAE s/epoch (extrapolated)", "RecVAE s/epoch (extrapolated)", "{:.3g}"),
    ("RecVAE s/epoch decoder bound (extrapolated)", "RecVAE decoder bound s/epoch (extrapolated)", "{:.3g}"),
    ("evaluation users/s (top-100, seen masked)", "eval users/s (top-100, seen masked)", "{:,.0f}"),
    ("peak RSS of the run", "peak RSS bytes", "bytes"),
    ("peak RSS after building the data", "peak RSS bytes after data", "bytes"),
    ("CUDA max memory allocated", "cuda max_memory_allocated bytes", "bytes"),
    ("dense users x items float32 matrix", "dense users x items float32 bytes", "bytes"),
]


def precision_rows(precision: str) -> tuple[list, list]:
    """The rows of a precision beyond fp32: (Mult-VAE rows, RecVAE rows), as ROWS."""
    p = precision
    return ([
        (f"Mult-VAE step, sparse input, {p} autocast (s)", f"{p} sparse s/step", "{:.4f}"),
        (f"decoder matmul bound, {p} operands (s/step)", f"{p} decoder bound s/step", "{:.4f}"),
        (f"{p} sparse / {p} decoder bound", f"{p} sparse / decoder bound", "{:.2f}x"),
        (f"{p} / fp32 Mult-VAE sparse step", f"{p} / fp32 sparse s/step", "{:.2f}x"),
        (f"s/epoch sparse, {p} (extrapolated)", f"{p} sparse s/epoch (extrapolated)", "{:.3g}"),
        (f"decoder matmul GFLOP/s, {p}", f"{p} decoder matmul GFLOP/s", "{:.0f}"),
    ], [
        (f"RecVAE, one batch's epoch, {p} autocast (s)", f"{p} RecVAE s/batch (3 encoder + 1 decoder steps)",
         "{:.4f}"),
        (f"RecVAE decoder matmul bound, {p} operands (s/batch)", f"{p} RecVAE decoder bound s/batch", "{:.4f}"),
        (f"RecVAE {p} / its {p} decoder bound", f"{p} RecVAE / decoder bound", "{:.2f}x"),
        (f"{p} / fp32 RecVAE", f"{p} / fp32 RecVAE s/batch", "{:.2f}x"),
        (f"RecVAE s/epoch, {p} (extrapolated)", f"{p} RecVAE s/epoch (extrapolated)", "{:.3g}"),
    ])


def table_rows(precisions: tuple[str, ...] = ("fp32",)) -> list:
    """ROWS, with each other precision's Mult-VAE rows after fp32's and its RecVAE rows after fp32's."""
    labels = [label for label, _, _ in ROWS]
    mult_end = labels.index("decoder matmul GFLOP/s") + 1
    recvae_end = labels.index("RecVAE s/epoch decoder bound (extrapolated)") + 1
    mult, recvae = [], []
    for precision in precisions:
        if precision != "fp32":
            m, r = precision_rows(precision)
            mult += m
            recvae += r
    return ROWS[:mult_end] + mult + ROWS[mult_end:recvae_end] + recvae + ROWS[recvae_end:]


def table(results: dict[str, dict], precisions: tuple[str, ...] = ("fp32",)) -> str:
    shapes = list(results)
    lines = ["| | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
    for label, key, fmt in table_rows(precisions):
        cells = []
        for shape in shapes:
            r = results[shape]
            if label.startswith("train users"):
                cells.append(f"{r['train users']:,} x {r['items']:,} ({r['density']:.2%})")
            elif label.startswith("device"):
                cells.append(f"{r.get('gpu', r['device'])}, threads={r['threads']}")
            elif key not in r:
                cells.append("—")
            elif fmt == "bytes":
                cells.append(_gib(r[key]))
            else:
                cells.append(fmt.format(r[key]))
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each kind (default 20; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps: a smoke test")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="precisions of the Mult-VAE sparse step, the RecVAE batch epoch and their decoder "
                             "bounds (default: fp32 bf16); fp32, the baseline, must be one")
    parser.add_argument("--release-host-memory", action="store_true",
                        help="time with glibc's default allocator behaviour (large blocks unmapped when freed) "
                             "instead of the trainers' retain_host_memory; writes speed_released.md")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--child", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 3 if args.quick else 20
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if "fp32" not in args.precisions:
        parser.error("--precisions must include fp32: the baseline of the ratios (and of the dense-input, "
                     "evaluation and memory figures)")
    args.precisions = [p for p in PRECISIONS if p in args.precisions]  # fp32 first, no repeats
    if args.child:
        child(args)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            result_file = Path(tmp) / f"{shape}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", shape, "--steps", str(args.steps),
                       "--device", args.device, "--result-file", str(result_file), "--precisions", *args.precisions]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--quick"] if args.quick else []
            command += ["--release-host-memory"] if args.release_host_memory else []
            started = time.perf_counter()
            subprocess.run(command, check=True, cwd=Path(__file__).resolve().parent)
            results[shape] = json.loads(result_file.read_text())
            results[shape]["subprocess seconds"] = time.perf_counter() - started
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    text = table(results, tuple(args.precisions))  # (a precision no shape measured leaves no rows)
    cpu_capability = torch.backends.cpu.get_cpu_capability()
    native_bf16 = cpu_has_native_bf16()
    bf16_note = "yes" if native_bf16 else "no (torch emulates bf16 on this CPU, much slower than fp32)"
    header = (f"# Mult-VAE speed and memory ({'--quick smoke test, tiny shapes' if args.quick else 'ML-1M and ML-20M shapes'})\n\n"
              f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}, Python "
              f"{platform.python_version()}, {platform.machine()}, CPU capability {cpu_capability}, native CPU bf16 "
              f"(AVX512-BF16 / AMX): {bf16_note}; precisions {', '.join(args.precisions)}; batch {BATCH}, "
              f"{args.steps} timed steps of each kind after {WARMUP} untimed, interleaved with rotating order (each "
              "precision's kinds too, dealt round-robin). Seconds per epoch = mean step time x batches "
              "per epoch (extrapolated, not a timed epoch). Each shape ran in its own subprocess; its peak RSS "
              "includes building the data. Host memory: "
              + ("glibc's default (`--release-host-memory`: large blocks unmapped when freed)" if args.release_host_memory
                 else "freed memory kept for reuse, as the trainers do on the CPU (`retain_host_memory`)")
              + ". Read ratios, not seconds: the machine may be shared.\n")
    notes = ("\n- Sparse: recvae's trainer step (`DeviceCSR` batch, `train_step`, fused Adam). Dense input: the same "
             "step with the batch densified to B x I, normalised and dropped out densely, and a dense first layer "
             "with the same starting weights.\n- Decoder bound: the output layer's forward and two backward matmuls "
             "(B x 600 x I each), the work no Mult-VAE step can avoid. RecVAE's: per batch and epoch, 4 forward "
             "logits, 3 input gradients (encoder phases, decoder frozen) and 1 weight gradient (decoder phase), "
             "B x 200 x I each; RecVAE runs as `train_recvae` does (prior refreshed between the phases, the prior's "
             "posteriors kept per user), on one batch throughout (the cache's steady state).\n"
             "- All-matmul bound: the decoder bound plus the three matmuls of every other dense layer at the net's "
             "own shapes (Mult-VAE: 600 x 400 and 200 x 600; RecVAE: four 600 x 600 layers and two 600 x 200 heads, "
             "3 forward and backward passes and 1 forward per batch and epoch), on random operands. It leaves out "
             "the sparse input layer's gather and scatter, which are not matmuls: a step cannot run faster than "
             "this bound, and its distance from it is the non-matmul work.\n"
             + ("- bf16: the same Mult-VAE sparse step (`train_step(..., precision=\"bf16\")`) and RecVAE batch "
                "epoch (`_train_phase(..., precision=\"bf16\")`) under the trainer's bf16 autocast, each with its "
                "own nets (the fp32 ones' starting weights), optimizers, generator and prior cache; its decoder bounds "
                "are the same matmuls on bf16 operands (what autocast hands the matmuls). bf16 / fp32 is the step's "
                "time over the fp32 step's. With bf16 rows the peak RSS includes the bf16 nets and optimizer "
                "states too.\n" if "bf16" in args.precisions else "")
             + "- Evaluation: all test users, full "
             f"catalogue, fold-in items masked, top-100, batches of 1,000.\n- Max peak RSS over the subprocesses "
             f"(RUSAGE_CHILDREN): {_gib(children_peak)}.\n")
    print("\n" + header + "\n" + text + "\n" + notes)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = ("speed_quick" if args.quick else "speed") + ("_released" if args.release_host_memory else "")
    payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k not in ("child", "result_file")},
               "torch": torch.__version__, "cpu capability": cpu_capability, "cpu native bf16": native_bf16,
               "children peak RSS bytes": children_peak, "shapes": results}
    (args.out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out_dir / f"{stem}.md").write_text(header + "\n" + text + "\n" + notes)
    print(f"wrote {args.out_dir / (stem + '.json')} and {stem}.md")


if __name__ == "__main__":
    main()
