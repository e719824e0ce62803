"""The training loop for recvae's VAEs: short and visible.

Each epoch: shuffle users, take batches of sparse rows on the device, minimise
the negative ELBO (NLL + beta * KL) with Adam, step the beta schedule; then
score the validation users (NDCG@100), keep the best weights, and stop early
when the score has not improved for ``patience`` epochs.

Under an initialised torch.distributed process group of several ranks
(``torchrun``, :func:`recvae.distributed.spawn`) the same loop runs data-parallel:
every rank draws the same permutation, takes its slice of each global batch of
``batch_size`` users, and DistributedDataParallel all-reduces the gradients, scaled
so that they equal the one-process gradient of the global batch. Validation is
sharded over the ranks; rank 0 alone writes the history, the checkpoint and the
progress bar.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.data.splits import HeldOut
from recvae.distributed import DistributedContext, all_reduce_sum, parallel_context, shard_batch
from recvae.evaluation import evaluate_heldout
from recvae.models.annealing import AnnealConfig, BetaSchedule
from recvae.models.vae import gaussian_kl
from recvae.sparse import DeviceCSR, SparseRows

logger = logging.getLogger(__name__)

__all__ = ["TrainingConfig", "TrainingResult", "resolve_device", "train_step", "parallel_train_step", "train_vae",
           "sparse_rows", "make_optimizer"]

_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Defaults follow Liang et al. (Adam 1e-3, batch 500, 200 epochs).

    Attributes:
        epochs, batch_size, lr: as in the paper. ``batch_size`` is the global batch:
            under data-parallel training each rank takes a slice of it.
        weight_decay: L2 weight decay on weight matrices (not biases); 0 for
            Mult-VAE, 0.01 / batch_size for Mult-DAE.
        anneal: the beta schedule (see :class:`AnnealConfig`).
        patience: stop after this many evaluations without a better validation
            score (None: train all epochs; the best weights are kept either way).
        eval_k: validation metric is NDCG@eval_k.
        eval_every: validate every this many epochs.
        seed: seeds initialisation, shuffling, dropout and noise (data-parallel:
            every rank shuffles alike; dropout and noise streams differ per rank).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"`` or ``"bf16"`` (autocast of matrix products; the
            loss and log-softmax stay in fp32).
        progress: show a tqdm progress bar.
        history_csv: write the per-epoch history there after each epoch.
        checkpoint: a file written (atomically) after each epoch; with
            ``resume=True`` training continues from it when it exists.
    """

    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    patience: int | None = None
    eval_k: int = 100
    eval_every: int = 1
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True
    history_csv: str | None = None
    checkpoint: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.anneal, dict):
            object.__setattr__(self, "anneal", AnnealConfig(**self.anneal))
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.eval_k < 1:
            raise ValueError("epochs, batch_size, eval_every and eval_k must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 or None")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16'; got {self.precision!r}")
        if self.resume and not self.checkpoint:
            raise ValueError("resume=True needs checkpoint=<path>")


@dataclass
class TrainingResult:
    """What a training run did: per-epoch history and the selected epoch."""

    history: pd.DataFrame
    best_epoch: int | None
    best_score: float | None
    best_beta: float | None
    final_beta: float
    steps: int
    stopped_early: bool


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; checks that CUDA exists when asked for."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


def sparse_rows(matrix: sp.csr_matrix, device: torch.device) -> SparseRows:
    """All rows of a scipy CSR matrix as a device batch."""
    return DeviceCSR(matrix, device).rows(torch.arange(matrix.shape[0], device=device))


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(params, config: TrainingConfig) -> torch.optim.Optimizer:
    """Adam with weight decay on weight matrices only (not biases or norms)."""
    params = list(params)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused implementation is several times faster on the large item matrices.
    return torch.optim.Adam(groups, lr=config.lr, fused=True)


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: SparseRows,
    beta: float,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """One gradient step on the negative ELBO of a batch; returns its parts (loss, nll, kl)."""
    with _autocast(device, precision):
        parts = net.loss(x, beta, generator)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return parts


class _PerUserTerms(torch.nn.Module):
    """A VAE's loss terms per user, (NLL_u, KL_u), not their means: the module DDP wraps.

    ``VAE.loss`` is the mean of NLL_u + beta * KL_u over the batch; a data-parallel
    step needs the sums over the rank's slice instead, weighted by the slice's share
    of the global batch (which also makes an empty slice contribute zero).
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: SparseRows, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        output, mu, log_var = self.net(x, generator)
        nll = self.net.likelihood.nll(output, x)
        kl = gaussian_kl(mu.float(), log_var.float()) if log_var is not None else torch.zeros_like(nll)
        return nll, kl


def parallel_train_step(
    model: torch.nn.parallel.DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    x: SparseRows,
    beta: float,
    global_batch_size: int,
    generator: torch.Generator,
    ctx: DistributedContext,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """One data-parallel step on this rank's slice ``x`` of a global batch; returns the slice's sums.

    The rank minimises world_size / global_batch_size * sum over its users of
    (NLL_u + beta * KL_u). DDP averages gradients over the ranks, so every rank
    applies the gradient of the mean over the global batch, the one-process update,
    however unevenly the batch was split. Returns (loss, nll, kl) summed over the slice.
    """
    with _autocast(device, precision):
        nll, kl = model(x, generator)
    nll_sum, kl_sum = nll.sum(), kl.sum()
    loss_sum = nll_sum + beta * kl_sum
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (ctx.world_size / global_batch_size)).backward()
    optimizer.step()
    return torch.stack([loss_sum, nll_sum, kl_sum]).detach()


def rank_noise_generator(seed: int, epoch: int, ctx: DistributedContext, device: torch.device) -> torch.Generator:
    """The dropout / noise generator of a rank for an epoch, seeded from (seed, epoch, rank).

    Data-parallel ranks shuffle with one shared generator but draw dropout masks
    and noise for their own slices from their own streams; seeding per epoch makes
    a resumed run draw what an uninterrupted one would, with no per-rank state saved.
    """
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed % 2**32, epoch, ctx.rank]).generate_state(1)[0]))
    return g


def check_parallel_device(ctx: DistributedContext, device: torch.device) -> None:
    """Refuses a device the process group cannot communicate from (nccl needs CUDA)."""
    if ctx.backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses nccl, which needs CUDA tensors, but training runs on {device}; "
                         "train on device='cuda' (each rank takes its LOCAL_RANK GPU) or use gloo for CPU")


def resume_agreed(config: TrainingConfig, ctx: DistributedContext | None) -> bool:
    """Whether to resume from ``config.checkpoint``; under data parallelism every rank must see the file."""
    found = bool(config.resume and config.checkpoint and Path(config.checkpoint).exists())
    if ctx is None:
        return found
    seen = int(all_reduce_sum(torch.tensor([int(found)], device=ctx.device), ctx).item())
    if seen not in (0, ctx.world_size):
        raise RuntimeError(f"only {seen} of {ctx.world_size} ranks see the checkpoint {config.checkpoint}: "
                           "put it on a file system every node shares")
    return found


def _active_users(train: sp.csr_matrix, validation: HeldOut | None) -> np.ndarray:
    """Rows of ``train`` with interactions; refuses inputs that cannot train or select a model."""
    active = np.flatnonzero(np.diff(train.indptr) > 0)
    if len(active) == 0:
        raise ValueError("the training matrix has no interactions")
    if validation is not None and (np.diff(validation.target.indptr) > 0).sum() == 0:
        raise ValueError(
            "no validation user has a target (all have fewer than 5 events?): model selection would "
            "compare NaNs; pass validation=None or hold out more active users"
        )
    if len(active) < train.shape[0]:
        logger.info("skipping %d training users with no interactions", train.shape[0] - len(active))
    return active


def _validate_epoch(net, score_fn, validation: HeldOut, config: TrainingConfig, epoch: int,
                    state: dict, row: dict, postfix: dict) -> float:
    """Validation NDCG@k of an epoch: recorded in ``row``/``postfix``; best weights and patience in ``state``."""
    started = time.perf_counter()
    result = evaluate_heldout(score_fn, validation, ks=(config.eval_k,), metrics=("ndcg",),
                              batch_size=config.eval_batch_size)
    score = result[f"ndcg@{config.eval_k}"]
    row[f"val_ndcg@{config.eval_k}"] = score
    row["eval_seconds"] = time.perf_counter() - started
    postfix[f"val@{config.eval_k}"] = f"{score:.4f}"
    if state["best_score"] is None or score > state["best_score"]:
        state.update(best_score=score, best_epoch=epoch, best_beta=row["beta"], since_best=0,
                     best_state={k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()})
    else:
        state["since_best"] += 1
        if config.patience is not None and state["since_best"] >= config.patience:
            state["stopped_early"] = True
    return score


def _end_epoch(state: dict, epoch: int, row: dict, postfix: dict, bar, config: TrainingConfig, is_main: bool,
               save_checkpoint) -> bool:
    """Record an epoch: history, progress bar, history CSV and checkpoint (rank 0 only).

    Returns True when early stopping ends training.
    """
    state["history"].append(row)
    state["epoch"] = epoch
    bar.set_postfix(postfix, refresh=False)
    bar.set_description(f"epoch {epoch}/{config.epochs}")
    if config.history_csv and is_main:
        pd.DataFrame(state["history"]).to_csv(config.history_csv, index=False)
    if config.checkpoint and is_main:
        save_checkpoint()
    if state["stopped_early"]:
        logger.info("early stop at epoch %d (best epoch %s)", epoch, state["best_epoch"])
        return True
    return False


def _restore_best(net: torch.nn.Module, state: dict, ctx) -> None:
    """End of training: wait for rank 0's files, load the best validated weights, switch to eval mode."""
    if ctx is not None:
        torch.distributed.barrier()  # rank 0's files are complete when any rank returns
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    net.eval()


def train_vae(
    net: torch.nn.Module,
    train: sp.csr_matrix,
    validation: HeldOut | None,
    config: TrainingConfig,
    device: torch.device,
) -> TrainingResult:
    """Train ``net`` (a :class:`recvae.models.vae.VAE`) in place; loads the best weights at the end.

    Under a torch.distributed process group of several ranks it trains data-parallel
    (see the module docstring); every rank must call it with the same arguments, and
    every rank returns the same result and the same weights.
    """
    ctx = parallel_context()
    if ctx is not None:
        check_parallel_device(ctx, device)
    is_main = ctx is None or ctx.is_main
    active = _active_users(train, validation)
    data = DeviceCSR(train, device)
    active_t = torch.from_numpy(active).to(device)
    steps_per_epoch = math.ceil(len(active) / config.batch_size)
    schedule = BetaSchedule(config.anneal, config.epochs * steps_per_epoch)
    optimizer = make_optimizer(net.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    state = {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_epoch": None,
             "best_score": None, "best_beta": None, "since_best": 0, "stopped_early": False}
    if resume_agreed(config, ctx):
        _load_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state, device)
        logger.info("resumed from %s at epoch %d", config.checkpoint, state["epoch"])
    model = None
    if ctx is not None:
        # Ranks hold identical weights (same seed; DDP also broadcasts rank 0's at construction).
        model = torch.nn.parallel.DistributedDataParallel(_PerUserTerms(net))

    def score_fn(rows: sp.csr_matrix) -> torch.Tensor:
        with _autocast(device, config.precision):
            return net.scores(sparse_rows(rows, device))

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch,
               disable=not (config.progress and is_main), unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stopped_early"]:
                break
            net.train()
            started = time.perf_counter()
            sums = torch.zeros(3, device=device, dtype=torch.float64)
            order = active_t[torch.randperm(len(active_t), generator=generator, device=device)]
            noise = None if ctx is None else rank_noise_generator(config.seed, epoch, ctx, device)
            for batch in order.split(config.batch_size):
                beta = schedule.beta(state["step"])
                if ctx is None:
                    parts = train_step(net, optimizer, data.rows(batch), beta, generator, device, config.precision)
                    detached = torch.stack([parts["loss"].detach(), parts["nll"].detach(), parts["kl"].detach()])
                    sums += detached.double() * len(batch)
                else:
                    sums += parallel_train_step(model, optimizer, data.rows(shard_batch(batch, ctx)), beta, len(batch),
                                                noise, ctx, device, config.precision).double()
                state["step"] += 1
                bar.update(1)
            loss, nll, kl = (all_reduce_sum(sums, ctx) / len(active)).tolist()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss} at epoch {epoch}: training diverged; lower lr (now {config.lr})"
                )
            row = {"epoch": epoch, "step": state["step"], "beta": schedule.beta(state["step"]),
                   "loss": loss, "nll": nll, "kl": kl, "train_seconds": time.perf_counter() - started}
            postfix = {"-elbo": f"{loss:.2f}", "nll": f"{nll:.2f}", "kl": f"{kl:.2f}", "beta": f"{row['beta']:.3f}"}
            if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                score = _validate_epoch(net, score_fn, validation, config, epoch, state, row, postfix)
                schedule.observe(score, row["beta"])
            if _end_epoch(state, epoch, row, postfix, bar, config, is_main,
                          lambda: _save_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state)):
                break
    finally:
        bar.close()
    _restore_best(net, state, ctx)
    return TrainingResult(
        history=pd.DataFrame(state["history"]),
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        best_beta=state["best_beta"],
        final_beta=schedule.beta(state["step"]),
        steps=state["step"],
        stopped_early=state["stopped_early"],
    )


def _save_checkpoint(path, net, optimizer, schedule, generator, state) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "state": {k: v for k, v in state.items() if k != "best_state"},
        "best_state": state["best_state"],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_checkpoint(path, net, optimizer, schedule, generator, state, device) -> None:
    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a recvae training checkpoint of format {_CHECKPOINT_FORMAT}")
    net.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    generator.set_state(payload["generator"].cpu())
    state.update(copy.deepcopy(payload["state"]))
    best = payload["best_state"]
    state["best_state"] = None if best is None else {k: v.to("cpu") for k, v in best.items()}
