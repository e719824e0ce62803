"""RecVAE's training loop (Shenbin et al. 2020): each epoch alternates encoder passes (input dropout
on, the prior's frozen encoder refreshed after them) and decoder passes, each part with its own Adam.
Data-parallel like the Mult-VAE loop, with a hand-summed gradient all-reduce per phase.

Nothing a phase holds fixed is computed twice: the prior's posterior of each user is
kept for the epoch (:class:`PriorPosteriors`, one process), and the decoder phase
runs its frozen encoder once per user, without a graph, its posterior doubling as the
just-refreshed prior's.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.data.splits import HeldOut
from recvae.runtime.distributed import DistributedContext, all_reduce_sum, parallel_context, shard_batch
from recvae.nn.rec_vae import RecVAENet
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.runtime.storage import CHECKPOINT_FIX, ModelFileError
from recvae.training.checkpoints import (
    _apply_lr,
    _read_checkpoint,
    _restore_state,
    _write_atomically,
    resume_agreed,
    run_fingerprint,
    warn_if_finished,
)
from recvae.training.config import EpochCallback, TrainingConfig, TrainingResult, warn_degenerate
from recvae.training.device import _autocast, resolve_precision
from recvae.training.divergence import _diverged, divergence, first_batch_loss
from recvae.training.history import _end_epoch, new_state
from recvae.training.loop import _active_users, check_parallel_device, host_memory_for, rank_noise_generator
from recvae.training.optimizers import make_optimizer, prepare_item_training
from recvae.training.validation import NetScorer, _restore_best, _validate_epoch

logger = logging.getLogger(__name__)

__all__ = ["train_recvae", "PriorPosteriors"]

# 2: the checkpoint records the run it belongs to (see recvae.training.run_fingerprint).
_CHECKPOINT_FORMAT = "recvae.recvae-checkpoint/2"


class PriorPosteriors:
    """The prior's frozen-encoder posterior (mu, log_var) of each training user, kept while the prior holds.

    RecVAE's composite prior reads, for each user, the posterior of a frozen copy of
    the encoder, which changes only at ``net.update_prior()`` (``net.prior_version``
    counts them). Rather than running that copy in every encoder pass, its posterior
    of each user is kept here, with the prior version it belongs to: the decoder
    passes, whose frozen encoder *is* the just-refreshed prior's, store the posterior
    they compute anyway (no dropout), and :meth:`fill` computes the rows that belong
    to an older prior (the first epoch, a resumed run). One process only: under data
    parallelism each rank sees other users in each pass.
    """

    def __init__(self, n_users: int) -> None:
        self.n_users = n_users
        self.mu: torch.Tensor | None = None
        self.log_var: torch.Tensor | None = None
        self.version: torch.Tensor | None = None  # per user: the net.prior_version of its row, -1 for none

    def covers(self, net: RecVAENet, users: torch.Tensor) -> bool:
        """Whether the rows of ``users`` are all posteriors of the net's current prior."""
        return self.version is not None and bool((self.version[users] == net.prior_version).all())

    def rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu[users], self.log_var[users]

    def store(self, users: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, version: int) -> None:
        """Keep (mu, log_var) as the rows of ``users``, posteriors of the prior ``version``."""
        if self.mu is None:  # in the dtype the encoder gives (bf16 under autocast), on its device
            self.mu = mu.new_empty((self.n_users, mu.shape[1]))
            self.log_var = log_var.new_empty((self.n_users, log_var.shape[1]))
            self.version = torch.full((self.n_users,), -1, dtype=torch.int64, device=mu.device)
        self.mu[users] = mu
        self.log_var[users] = log_var
        self.version[users] = version

    @torch.no_grad()
    def fill(self, net: RecVAENet, data: DeviceCSR, users: torch.Tensor, batch_size: int,
             precision: str = "fp32") -> None:
        """Compute the rows of ``users`` that are not the current prior's (its encoder's forward pass)."""
        if self.version is not None:
            users = users[self.version[users] != net.prior_version]
        for batch in users.split(batch_size) if len(users) else ():  # (an empty tensor splits into itself)
            with _autocast(users.device, precision):
                mu, log_var = net.prior_posterior(data.rows(batch))
            self.store(batch, mu, log_var, net.prior_version)


def _encoder_is_prior(net: RecVAENet) -> bool:
    """Whether the encoder holds the prior's weights (as right after ``update_prior()``)."""
    prior = net.prior_encoder.state_dict()
    return all(torch.equal(value, prior[name]) for name, value in net.encoder.state_dict().items())


def _known_terms(net: RecVAENet, phase: str, x: SparseRows, users: torch.Tensor, prior: PriorPosteriors | None,
                 encoder_is_prior: bool, reuse: bool = False) -> dict:
    """The ``posterior`` / ``prior`` arguments of ``net.terms`` for the batch ``users`` (rows x):
    what need not be computed again.

    Encoder phase: the prior's posteriors, from ``prior``. Decoder phase: the frozen
    encoder's posterior, without dropout or graph (read back from ``prior`` when
    ``reuse``: a later pass); when that encoder is the prior's, it is the prior's
    posterior too, and is kept in ``prior``.
    """
    if phase == "encoder":
        return {} if prior is None else {"prior": prior.rows(users)}
    if reuse:
        posterior = prior.rows(users)
    else:
        with torch.no_grad():
            posterior = net.encode(x, dropout=False)
        if prior is not None and encoder_is_prior:
            prior.store(users, *posterior, net.prior_version)
    return {"posterior": posterior, "prior": posterior if encoder_is_prior else None}


def _train_phase(
    net: RecVAENet,
    phase: str,
    optimizer: torch.optim.Optimizer,
    data: DeviceCSR,
    users: torch.Tensor,
    generator: torch.Generator,
    *,
    passes: int,
    batch_size: int,
    precision: str = "fp32",
    bar=None,
    ctx: DistributedContext | None = None,
    noise_generator: torch.Generator | None = None,
    first: dict | None = None,
    prior: PriorPosteriors | None = None,
) -> torch.Tensor:
    """``passes`` shuffled passes over ``users`` updating only ``net.<phase>``.

    The other part is frozen (requires_grad off, so no gradient is even computed
    for it); input dropout only in the encoder phase, as in the authors' code.
    Returns the mean (loss, nll, kl) over the passes.

    What a phase need not recompute, it does not: the decoder phase encodes each
    user once, without a graph, and when its frozen encoder is the prior's (the
    epoch refreshed the prior just before) that posterior is also the prior's, so
    the prior's encoder does not run; with ``prior`` (one process), the encoder
    phase reads the prior's posteriors from it (filled first when they belong to an
    older prior) and the decoder phase stores its posteriors there for the next
    epoch. The results are those of computing everything in every pass, up to
    float rounding.

    With ``ctx`` (data parallel) ``generator`` shuffles, alike on every rank; each
    rank takes its slice of each global batch, draws dropout and noise from
    ``noise_generator``, and the phase's gradients are summed over the ranks, each
    rank's loss being its slice's sum over the global batch size (the one-process
    mean). DDP does not fit here: the trained part changes every phase.

    ``first``, when given and without an entry for ``phase`` yet, receives the
    phase's first batch as (summed (loss, nll, kl) of this rank's slice, batch
    size), read later by :func:`recvae.training.first_batch_loss`.
    """
    if phase not in ("encoder", "decoder"):
        raise ValueError(f"phase must be 'encoder' or 'decoder'; got {phase!r}")
    if prior is not None and ctx is not None:
        raise ValueError("PriorPosteriors keeps one process's users: leave prior unset under data parallelism")
    net.train()
    net.encoder.requires_grad_(phase == "encoder")
    net.decoder.requires_grad_(phase == "decoder")
    trained = list(getattr(net, phase).parameters())
    sums = torch.zeros(3, dtype=torch.float64, device=users.device)
    encoder_is_prior = phase == "decoder" and _encoder_is_prior(net)
    if phase == "encoder" and prior is not None:
        prior.fill(net, data, users, batch_size, precision)  # the rows of an older prior, if any
    try:
        for _ in range(passes):
            # A decoder pass after the first reads back the posteriors the first one kept.
            reuse = phase == "decoder" and encoder_is_prior and prior is not None and prior.covers(net, users)
            order = users[torch.randperm(len(users), generator=generator, device=users.device)]
            for batch in order.split(batch_size):
                if ctx is None:
                    batch_sums = _phase_step(net, phase, optimizer, data.rows(batch), batch, generator, precision,
                                             prior, encoder_is_prior, reuse)
                else:
                    batch_sums = _parallel_phase_step(net, phase, optimizer, data.rows(shard_batch(batch, ctx)),
                                                      batch, trained, noise_generator, ctx, precision,
                                                      encoder_is_prior)
                sums += batch_sums
                if first is not None and phase not in first:
                    first[phase] = (batch_sums, len(batch))
                if bar is not None:
                    bar.update(1)
    finally:
        net.encoder.requires_grad_(True)
        net.decoder.requires_grad_(True)
    return all_reduce_sum(sums, ctx) / (passes * len(users))


def _phase_step(net: RecVAENet, phase: str, optimizer: torch.optim.Optimizer, x: SparseRows, users: torch.Tensor,
                generator: torch.Generator, precision: str, prior: PriorPosteriors | None, encoder_is_prior: bool,
                reuse: bool) -> torch.Tensor:
    """One process's gradient step of ``phase`` on the batch ``users`` (rows ``x``); returns the batch's
    summed (loss, nll, kl)."""
    with _autocast(users.device, precision):
        known = _known_terms(net, phase, x, users, prior, encoder_is_prior, reuse)
        parts = net.loss(x, generator, dropout=phase == "encoder", **known)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return torch.stack([parts[k].detach() for k in ("loss", "nll", "kl")]).double() * len(users)


def _parallel_phase_step(net: RecVAENet, phase: str, optimizer: torch.optim.Optimizer, x: SparseRows,
                         users: torch.Tensor, trained: list[torch.Tensor], noise_generator: torch.Generator | None,
                         ctx: DistributedContext, precision: str, encoder_is_prior: bool) -> torch.Tensor:
    """A data-parallel gradient step of ``phase``: ``x`` is this rank's slice of the global batch ``users``.

    The slice's loss sum over the global batch size is backpropagated and the trained part's
    gradients are summed over the ranks (the one-process step); returns the slice's summed (loss, nll, kl).
    """
    with _autocast(users.device, precision):
        known = _known_terms(net, phase, x, users, None, encoder_is_prior)
        nll, kl = net.terms(x, noise_generator, dropout=phase == "encoder", **known)
    loss_sum = (nll + net.kl_weight(x) * kl).sum()
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / len(users)).backward()
    _sum_gradients(trained, ctx)
    optimizer.step()
    return torch.stack([loss_sum, nll.sum(), kl.sum()]).detach().double()


def _sum_gradients(params: list[torch.Tensor], ctx: DistributedContext) -> None:
    """Sum the gradients of ``params`` over the ranks (one all-reduce of a flat buffer)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), ctx)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p)


def train_recvae(
    net: RecVAENet,
    train: sp.csr_matrix,
    validation: HeldOut | None,
    config: TrainingConfig,
    device: torch.device,
    *,
    on_epoch: EpochCallback | None = None,
    scorer=None,
) -> TrainingResult:
    """Train ``net`` in place with alternating encoder / decoder phases; loads the best weights.

    ``on_epoch(epoch, score)`` is called after each validated epoch and ``scorer`` ranks
    the validation users (in fp32, whatever the training precision), as in
    :func:`recvae.training.train_vae` (an exception ``on_epoch`` raises stops training).

    ``config.anneal`` is not used: RecVAE's beta is per user (``RecVAEConfig.gamma``).
    Under a torch.distributed process group of several ranks it trains data-parallel,
    like :func:`recvae.training.train_vae` (gradients summed by hand, see ``_train_phase``).
    History: ``loss``/``nll``/``kl`` are the decoder passes' means (no dropout, refreshed
    prior), ``encoder_loss`` the encoder passes' mean, ``beta`` the mean beta_u.
    """
    with host_memory_for(config, device):
        return _train_recvae(net, train, validation, config, device, on_epoch=on_epoch,
                             scorer=NetScorer(net, device) if scorer is None else scorer)


def _train_recvae(net: RecVAENet, train: sp.csr_matrix, validation: HeldOut | None, config: TrainingConfig,
                  device: torch.device, *, on_epoch: EpochCallback | None, scorer) -> TrainingResult:
    ctx = parallel_context()
    if ctx is not None:
        check_parallel_device(ctx, device)
    is_main = ctx is None or ctx.is_main
    active = _active_users(train, validation)
    rc = net.config
    data = DeviceCSR(train, device)
    users = torch.from_numpy(active).to(device)
    mean_beta = float(rc.beta) if rc.gamma is None else rc.gamma * float(train.sum()) / len(active)
    steps_per_epoch = math.ceil(len(active) / config.batch_size) * (rc.encoder_epochs + rc.decoder_epochs)
    prepare_item_training(net, train, config, ctx)  # sampler counts; sparse item gradients when asked
    optimizers = {part: make_optimizer(getattr(net, part).parameters(), config) for part in ("encoder", "decoder")}
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    state = new_state()
    warn_degenerate(config)
    precision = resolve_precision(config.precision, device)
    logger.info("precision: %s (asked: %s, device %s)", precision, config.precision, device)
    # The run's identity, stored in the checkpoint and compared on resume (hashing the data costs one pass).
    fingerprint = run_fingerprint(net, config, train, validation) if config.checkpoint else None
    if resume_agreed(config, ctx):
        _load_checkpoint(config.checkpoint, net, optimizers, generator, state, device, fingerprint, config)
        logger.info("resumed from %s at epoch %d", config.checkpoint, state["epoch"])
        warn_if_finished(config, state)

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch,
               disable=None if (config.progress and is_main) else True, unit="batch", dynamic_ncols=True)

    first: dict = {}  # each phase's first batch of the run, the divergence reference
    # The prior's posterior of every user, computed once per epoch (by the decoder passes).
    prior = PriorPosteriors(train.shape[0]) if ctx is None else None

    def phase(part: str, passes: int, noise: torch.Generator | None) -> torch.Tensor:
        return _train_phase(net, part, optimizers[part], data, users, generator, passes=passes,
                            batch_size=config.batch_size, precision=precision, bar=bar,
                            ctx=ctx, noise_generator=noise, first=None if "first_loss" in state else first,
                            prior=prior)

    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stopped_early"]:
                break
            started = time.perf_counter()
            noise = None if ctx is None else rank_noise_generator(config.seed, epoch, ctx, device)
            encoder_loss = float(phase("encoder", rc.encoder_epochs, noise)[0])
            net.update_prior()
            loss, nll, kl = phase("decoder", rc.decoder_epochs, noise).tolist()
            state["step"] += steps_per_epoch
            if "first_loss" not in state:
                state["first_loss"] = {part: first_batch_loss(first.get(part), ctx) for part in ("encoder", "decoder")}
            # Before validation and the checkpoint: diverged weights are neither selected nor saved.
            encoder_problem = divergence(encoder_loss, state["first_loss"]["encoder"])
            problem = (f"encoder {encoder_problem}" if encoder_problem
                       else divergence(loss, state["first_loss"]["decoder"]))
            if problem:
                raise _diverged(epoch, problem, config, state, net, ctx,
                                lambda st: _recvae_result(st, mean_beta))
            row = {"epoch": epoch, "step": state["step"], "precision": precision, "beta": mean_beta, "loss": loss, "nll": nll, "kl": kl,
                   "encoder_loss": encoder_loss, "train_seconds": time.perf_counter() - started}
            postfix = {"-elbo": f"{loss:.2f}", "nll": f"{nll:.2f}", "kl": f"{kl:.2f}"}
            if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                _validate_epoch(net, scorer, validation, config, epoch, state, row, postfix)
            if _end_epoch(state, epoch, row, postfix, bar, config, is_main,
                          lambda: _save_checkpoint(config.checkpoint, net, optimizers, generator, state,
                                                   fingerprint), on_epoch):
                break
    finally:
        bar.close()
    _restore_best(net, state, ctx)
    return _recvae_result(state, mean_beta)


def _recvae_result(state: dict, mean_beta: float) -> TrainingResult:
    return TrainingResult(
        history=pd.DataFrame(state["history"]),
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        best_beta=None if state["best_epoch"] is None else mean_beta,
        final_beta=mean_beta,
        steps=state["step"],
        stopped_early=state["stopped_early"],
    )


def _save_checkpoint(path, net, optimizers, generator, state, fingerprint: dict) -> None:
    """Write RecVAE's checkpoint (atomically, see :func:`recvae.training.checkpoints._write_atomically`)."""
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": net.state_dict(),  # includes the prior's frozen encoder
        "optimizers": {part: opt.state_dict() for part, opt in optimizers.items()},
        "generator": generator.get_state(),
        "state": {k: v for k, v in state.items() if k != "best_state"},
        "best_state": state["best_state"],
    }
    _write_atomically(path, payload)


def _load_checkpoint(path, net, optimizers, generator, state, device, fingerprint: dict | None,
                     config: TrainingConfig) -> None:
    """Resume from ``path``: checked (see :func:`recvae.training.checkpoints._read_checkpoint`), the requested
    lr applied."""
    payload, old_lr = _read_checkpoint(path, _CHECKPOINT_FORMAT, ("optimizers",), fingerprint)
    _restore_state(path, payload, net, generator, state)
    try:
        for part, opt in optimizers.items():
            opt.load_state_dict(payload["optimizers"][part])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{path}: the checkpoint's optimizer state does not fit this network "
                             f"({' '.join(str(err).split())[:160]}); {CHECKPOINT_FIX}") from None
    _apply_lr(path, optimizers.values(), old_lr, config.lr)


# ---------------------------------------------------------------------- recommender
