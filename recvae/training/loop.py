"""The training loop for recvae's VAEs: short and visible.

Each epoch: shuffle users, take batches of sparse rows on the device, minimise
the negative ELBO (NLL + beta * KL) with Adam, step the beta schedule; then
score the validation users (NDCG@100), keep the best weights, and stop early
when the score has not improved for ``patience`` epochs.

Under an initialised torch.distributed process group of several ranks
(``torchrun``, :func:`recvae.runtime.distributed.spawn`) the same loop runs data-parallel:
every rank draws the same permutation, takes its slice of each global batch of
``batch_size`` users, and DistributedDataParallel all-reduces the gradients, scaled
so that they equal the one-process gradient of the global batch. Validation is
sharded over the ranks; rank 0 alone writes the history, the checkpoint and the
progress bar.

This module holds the loop, its steps and the data-parallel glue RecVAE's loop shares;
what an epoch calls lives beside it in :mod:`recvae.training`: ``validation`` (scoring,
best weights, patience), ``divergence``, ``history`` (the end of an epoch),
``checkpoints`` (and resume), ``optimizers``, ``device`` (and precision), ``config``.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.data.splits import HeldOut
from recvae.runtime.distributed import DistributedContext, all_reduce_sum, parallel_context, shard_batch
from recvae.nn.annealing import BetaSchedule
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training.checkpoints import (
    _load_checkpoint,
    _save_checkpoint,
    resume_agreed,
    run_fingerprint,
    warn_if_finished,
)
from recvae.training.config import EpochCallback, TrainingConfig, TrainingResult, warn_degenerate
from recvae.training.device import _autocast, resolve_precision
from recvae.training.divergence import _diverged, divergence, first_batch_loss
from recvae.training.history import _end_epoch, new_state
from recvae.training.host_memory import retained_host_memory
from recvae.training.optimizers import make_optimizer, prepare_item_training
from recvae.training.validation import NetScorer, _restore_best, _validate_epoch

logger = logging.getLogger(__name__)

__all__ = ["train_step", "parallel_train_step", "train_vae"]


def train_vae(
    net: torch.nn.Module,
    train: sp.csr_matrix,
    validation: HeldOut | None,
    config: TrainingConfig,
    device: torch.device,
    *,
    on_epoch: EpochCallback | None = None,
    scorer=None,
) -> TrainingResult:
    """Train ``net`` (a :class:`recvae.nn.vae.VAE`) in place; loads the best weights at the end.

    Under a torch.distributed process group of several ranks it trains data-parallel
    (see the module docstring); every rank must call it with the same arguments, and
    every rank returns the same result and the same weights.

    ``on_epoch(epoch, score)``, when given, is called after each validated epoch
    (once the epoch is recorded in the history and the checkpoint) with its validation
    NDCG@``eval_k``. An exception it raises stops training and propagates: the
    progress bar is closed and the net keeps the weights of that epoch (a tuner
    prunes a trial this way). Under data parallelism every rank calls it and must
    decide alike.

    ``scorer``: what validation ranks with -- the model that holds ``net`` (its
    ``score_tensor`` and item blocks, as :func:`recvae.evaluation.evaluate` scores it);
    None: the net's own fp32 scores (:class:`NetScorer`). Training may run in bf16
    (``config.precision``); validation never does.
    """
    with host_memory_for(config, device):
        return _train_vae(net, train, validation, config, device, on_epoch=on_epoch,
                          scorer=NetScorer(net, device) if scorer is None else scorer)


def host_memory_for(config: TrainingConfig, device: torch.device) -> AbstractContextManager[bool]:
    """The trainers' :func:`retained_host_memory`: held on the CPU when ``config.retain_host_memory``."""
    return retained_host_memory(config.retain_host_memory and device.type == "cpu")


def _train_vae(net: torch.nn.Module, train: sp.csr_matrix, validation: HeldOut | None, config: TrainingConfig,
               device: torch.device, *, on_epoch: EpochCallback | None, scorer) -> TrainingResult:
    ctx = parallel_context()
    if ctx is not None:
        check_parallel_device(ctx, device)
    is_main = ctx is None or ctx.is_main
    active = _active_users(train, validation)
    data = DeviceCSR(train, device)
    active_t = torch.from_numpy(active).to(device)
    steps_per_epoch = math.ceil(len(active) / config.batch_size)
    schedule = BetaSchedule(config.anneal, config.epochs * steps_per_epoch)
    prepare_item_training(net, train, config, ctx)
    optimizer = make_optimizer(net.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    state = new_state()
    warn_degenerate(config)
    precision = resolve_precision(config.precision, device)
    logger.info("precision: %s (asked: %s, device %s)", precision, config.precision, device)
    # The run's identity, stored in the checkpoint and compared on resume (hashing the data costs one pass).
    fingerprint = run_fingerprint(net, config, train, validation) if config.checkpoint else None
    if resume_agreed(config, ctx):
        _load_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state, device, fingerprint, config)
        logger.info("resumed from %s at epoch %d", config.checkpoint, state["epoch"])
        warn_if_finished(config, state)
    model = None
    if ctx is not None:
        # Ranks hold identical weights (same seed; DDP also broadcasts rank 0's at construction).
        model = torch.nn.parallel.DistributedDataParallel(_PerUserTerms(net))

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch,
               disable=None if (config.progress and is_main) else True, unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stopped_early"]:
                break
            started = time.perf_counter()
            sums, first = _train_epoch(net, model, optimizer, data, active_t, schedule, generator, state, epoch,
                                       config, ctx, device, precision, bar)
            loss, nll, kl = (all_reduce_sum(sums, ctx) / len(active)).tolist()
            if "first_loss" not in state:
                state["first_loss"] = first_batch_loss(first, ctx)
            # Before validation and the checkpoint: diverged weights are neither selected nor saved.
            problem = divergence(loss, state["first_loss"])
            if problem:
                raise _diverged(epoch, problem, config, state, net, ctx, lambda st: _vae_result(st, schedule))
            row = {"epoch": epoch, "step": state["step"], "precision": precision, "beta": schedule.beta(state["step"]),
                   "loss": loss, "nll": nll, "kl": kl, "train_seconds": time.perf_counter() - started}
            postfix = {"-elbo": f"{loss:.2f}", "nll": f"{nll:.2f}", "kl": f"{kl:.2f}", "beta": f"{row['beta']:.3f}"}
            if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                score = _validate_epoch(net, scorer, validation, config, epoch, state, row, postfix)
                schedule.observe(score, row["beta"])
            if _end_epoch(state, epoch, row, postfix, bar, config, is_main,
                          lambda: _save_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state,
                                                   fingerprint), on_epoch):
                break
    finally:
        bar.close()
    _restore_best(net, state, ctx)
    return _vae_result(state, schedule)


def _train_epoch(net: torch.nn.Module, model, optimizer, data: DeviceCSR, users: torch.Tensor,
                 schedule: BetaSchedule, generator: torch.Generator, state: dict, epoch: int,
                 config: TrainingConfig, ctx: DistributedContext | None, device: torch.device, precision: str,
                 bar) -> tuple[torch.Tensor, tuple[torch.Tensor, int] | None]:
    """One epoch's gradient steps over ``users`` in shuffled batches (``model``: the DDP wrapper, data parallel).

    Returns this rank's summed (loss, nll, kl) and the first batch's, as :func:`first_batch_loss` reads it.
    """
    net.train()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    order = users[torch.randperm(len(users), generator=generator, device=device)]
    noise = None if ctx is None else rank_noise_generator(config.seed, epoch, ctx, device)
    first = None
    for batch in order.split(config.batch_size):
        beta = schedule.beta(state["step"])
        if ctx is None:
            parts = train_step(net, optimizer, data.rows(batch), beta, generator, device, precision)
            detached = torch.stack([parts["loss"].detach(), parts["nll"].detach(), parts["kl"].detach()])
            batch_sums = detached.double() * len(batch)
        else:
            batch_sums = parallel_train_step(model, optimizer, data.rows(shard_batch(batch, ctx)), beta,
                                             len(batch), noise, ctx, device, precision).double()
        sums += batch_sums
        if first is None:
            first = (batch_sums, len(batch))
        state["step"] += 1
        bar.update(1)
    return sums, first


def _vae_result(state: dict, schedule: BetaSchedule) -> TrainingResult:
    return TrainingResult(
        history=pd.DataFrame(state["history"]),
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        best_beta=state["best_beta"],
        final_beta=schedule.beta(state["step"]),
        steps=state["step"],
        stopped_early=state["stopped_early"],
    )


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
        return self.net.terms(x, generator)


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
