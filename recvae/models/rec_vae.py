"""RecVAE (Shenbin et al., WSDM 2020): Mult-VAE with a stronger encoder, a composite prior,
per-user beta and alternating updates, in one module.

x (sparse row) -> L2-normalise -> input dropout -> sparse first layer -> 5 densely
connected layers (swish, LayerNorm) -> (mu, log sigma^2) -> z -> one linear layer ->
likelihood p(x | z).

The prior mixes N(0, I), the posterior of a frozen copy of the encoder (refreshed
after each epoch's encoder passes) and a wide N(0, e^10 I). The KL is estimated with
the single sample z, and weighted per user by beta_u = gamma * |x_u|. Each epoch
trains the encoder for ``encoder_epochs`` passes (input dropout on), refreshes the
prior, then trains the decoder for ``decoder_epochs`` passes (no dropout), each part
with its own Adam. As in the authors' code, the decoder is a single linear layer and
scores come from the decoder at the posterior mean.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from recvae.data.splits import HeldOut
from recvae.distributed import DistributedContext, all_reduce_sum, parallel_context, shard_batch
from recvae.models.files import CHECKPOINT_FIX, ModelFileError
from recvae.models.likelihoods import LIKELIHOODS, make_likelihood
from recvae.models.base import UserEmbeddings
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.vae import SparseLinear, dropout_values, l2_normalised_values, posterior_mean_scores
from recvae.sparse import DeviceCSR, SparseRows
from recvae.training import (
    TrainingConfig,
    TrainingResult,
    _active_users,
    _apply_lr,
    _autocast,
    _diverged,
    _end_epoch,
    _read_checkpoint,
    _restore_best,
    _restore_state,
    _validate_epoch,
    check_parallel_device,
    divergence,
    first_batch_loss,
    make_optimizer,
    rank_noise_generator,
    resume_agreed,
    run_fingerprint,
    sparse_rows,
    warn_degenerate,
    warn_if_finished,
)

logger = logging.getLogger(__name__)

__all__ = ["RecVAEConfig", "RecVAENet", "RecVAE", "composite_prior_log_prob", "gaussian_log_density", "train_recvae"]

_SAVE_FORMAT = "recvae.recvae/1"
# 2: the checkpoint records the run it belongs to (see recvae.training.run_fingerprint).
_CHECKPOINT_FORMAT = "recvae.recvae-checkpoint/2"
_LOG_2PI = math.log(2.0 * math.pi)
_PRIOR_MIXTURES = ("per_dim", "joint")


@dataclass(frozen=True)
class RecVAEConfig:
    """Architecture, prior and schedule. The defaults are the authors' (ML-20M).

    Attributes:
        hidden_dim, n_layers: the encoder's densely connected layers (the first is
            the sparse input layer).
        latent_dim: size of z.
        input_dropout: dropout rate on the normalised input (encoder passes only).
        prior_weights: mixture weights of N(0, I), the frozen previous posterior
            and the wide N(0, e^wide_prior_log_var I); positive, summing to 1.
        wide_prior_log_var: log-variance of the wide component.
        prior_mixture: ``per_dim`` mixes the three components in each latent
            dimension and sums the log-densities over dimensions, as the authors'
            code does (``logsumexp`` over components of per-dimension densities);
            ``joint`` mixes whole latent vectors (the paper's formula).
        gamma: beta_u = gamma * (sum of user u's row); None to use ``beta``.
        beta: a constant KL weight, used when ``gamma`` is None.
        likelihood: any name in :data:`recvae.models.likelihoods.LIKELIHOODS`.
        layer_norm_eps: LayerNorm epsilon (0.1 in the authors' code).
        encoder_epochs, decoder_epochs: passes over the users per epoch for each part.
    """

    hidden_dim: int = 600
    n_layers: int = 5
    latent_dim: int = 200
    input_dropout: float = 0.5
    prior_weights: tuple[float, float, float] = (3 / 20, 3 / 4, 1 / 10)
    wide_prior_log_var: float = 10.0
    prior_mixture: str = "per_dim"
    gamma: float | None = 0.005
    beta: float | None = None
    likelihood: str = "multinomial"
    layer_norm_eps: float = 0.1
    encoder_epochs: int = 3
    decoder_epochs: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior_weights", tuple(float(w) for w in self.prior_weights))
        if self.hidden_dim < 1 or self.n_layers < 1 or self.latent_dim < 1:
            raise ValueError("hidden_dim, n_layers and latent_dim must be positive")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must lie in [0, 1); got {self.input_dropout}")
        w = self.prior_weights
        if len(w) != 3 or min(w) <= 0 or abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(f"prior_weights must be 3 positive numbers summing to 1; got {w}")
        if not math.isfinite(self.wide_prior_log_var):
            raise ValueError("wide_prior_log_var must be finite")
        if self.prior_mixture not in _PRIOR_MIXTURES:
            raise ValueError(f"prior_mixture must be one of {_PRIOR_MIXTURES}; got {self.prior_mixture!r}")
        if (self.gamma is None) == (self.beta is None):
            raise ValueError("set exactly one of gamma (beta_u = gamma * |x_u|) and beta (a constant); "
                             f"got gamma={self.gamma}, beta={self.beta}")
        if self.gamma is not None and not self.gamma > 0:
            raise ValueError(f"gamma must be positive; got {self.gamma}")
        if self.beta is not None and not self.beta >= 0:
            raise ValueError(f"beta must be >= 0; got {self.beta}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {sorted(LIKELIHOODS)}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive; got {self.layer_norm_eps}")
        if self.encoder_epochs < 1 or self.decoder_epochs < 1:
            raise ValueError("encoder_epochs and decoder_epochs must be >= 1")


# ---------------------------------------------------------------------- densities
def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(log_var)) per element (not summed)."""
    return -0.5 * (log_var + _LOG_2PI + (z - mu) ** 2 * torch.exp(-log_var))


def composite_prior_log_prob(
    z: torch.Tensor,
    post_mu: torch.Tensor,
    post_log_var: torch.Tensor,
    weights: tuple[float, float, float] = (3 / 20, 3 / 4, 1 / 10),
    wide_log_var: float = 10.0,
    mixture: str = "per_dim",
) -> torch.Tensor:
    """log p(z) per row under w1 N(0, I) + w2 N(post_mu, e^post_log_var) + w3 N(0, e^wide_log_var I).

    ``per_dim``: each dimension is a three-component mixture, the log-densities are
    summed over dimensions (the authors' code). ``joint``: the mixture is over whole
    vectors, each component's log-density summed over dimensions first.
    """
    zeros = torch.zeros_like(z)
    components = torch.stack([
        gaussian_log_density(z, zeros, zeros),
        gaussian_log_density(z, post_mu, post_log_var),
        gaussian_log_density(z, zeros, torch.full_like(z, wide_log_var)),
    ])  # (3, batch, latent)
    log_w = torch.log(torch.tensor(weights, dtype=z.dtype, device=z.device))
    if mixture == "per_dim":
        return torch.logsumexp(components + log_w[:, None, None], dim=0).sum(dim=-1)
    if mixture == "joint":
        return torch.logsumexp(components.sum(dim=-1) + log_w[:, None], dim=0)
    raise ValueError(f"mixture must be one of {_PRIOR_MIXTURES}; got {mixture!r}")


# ---------------------------------------------------------------------- modules
class RecVAEEncoder(nn.Module):
    """Sparse input layer, then layers whose input is the sum of all earlier outputs.

    h1 = LN(swish(W1 x)); h_k = LN(swish(W_k h_{k-1} + h_1 + ... + h_{k-1})); heads on h_n.
    """

    def __init__(self, n_items: int, config: RecVAEConfig) -> None:
        super().__init__()
        h, eps = config.hidden_dim, config.layer_norm_eps
        self.input_layer = SparseLinear(n_items, h)
        self.layers = nn.ModuleList(nn.Linear(h, h) for _ in range(config.n_layers - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(h, eps=eps) for _ in range(config.n_layers))
        self.mu = nn.Linear(h, config.latent_dim)
        self.log_var = nn.Linear(h, config.latent_dim)
        # nn.Linear's default initialisation (as the authors use), for the (items x h) sparse layer.
        bound = 1.0 / math.sqrt(n_items)
        nn.init.uniform_(self.input_layer.weight, -bound, bound)
        nn.init.uniform_(self.input_layer.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var) for a sparse CSR input batch (already normalised / dropped out)."""
        h = self.norms[0](F.silu(self.input_layer(x)))
        total = h
        for layer, norm in zip(self.layers, self.norms[1:]):
            h = norm(F.silu(layer(h) + total))
            total = total + h
        return self.mu(h), self.log_var(h)


class RecVAENet(nn.Module):
    """Encoder, composite prior (with its frozen encoder copy), linear decoder and likelihood."""

    def __init__(self, n_items: int, config: RecVAEConfig = RecVAEConfig()) -> None:
        super().__init__()
        if n_items < 2:
            raise ValueError(f"need at least 2 items; got {n_items}")
        self.n_items = n_items
        self.config = config
        self.likelihood = make_likelihood(config.likelihood)
        self.encoder = RecVAEEncoder(n_items, config)
        # The prior's encoder starts as a copy of the initial encoder (the authors' starts
        # from an independent initialisation); it is refreshed by update_prior().
        self.prior_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.decoder = nn.Linear(config.latent_dim, n_items * self.likelihood.outputs_per_item)

    @torch.no_grad()
    def update_prior(self) -> None:
        """Copy the current encoder into the prior's frozen encoder."""
        self.prior_encoder.load_state_dict(self.encoder.state_dict())

    def encode(
        self, x: SparseRows, generator: torch.Generator | None = None, *, dropout: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var). Input dropout when ``dropout`` (default: in training mode)."""
        return self._encode(x, l2_normalised_values(x), generator, dropout)

    def _encode(self, x, normalised, generator, dropout):
        if dropout is None:
            dropout = self.training
        values = dropout_values(normalised, self.config.input_dropout, generator) if dropout else normalised
        return self.encoder(x.to_sparse_csr(values))

    def reparameterize(
        self, mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps in training; mu otherwise."""
        if not self.training:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * log_var)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def kl_weight(self, x: SparseRows) -> torch.Tensor:
        """beta_u per user: gamma * (sum of the row), or the constant beta."""
        if self.config.gamma is not None:
            return self.config.gamma * x.row_sums()
        return torch.full((x.n_rows,), float(self.config.beta), device=x.values.device)

    def terms(
        self, x: SparseRows, generator: torch.Generator | None = None, *, dropout: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user NLL and single-sample KL estimate log q(z|x) - log p(z), each (batch,)."""
        normalised = l2_normalised_values(x)
        mu, log_var = self._encode(x, normalised, generator, dropout)
        z = self.reparameterize(mu, log_var, generator)
        nll = self.likelihood.nll(self.decode(z), x)
        with torch.no_grad():
            prior_mu, prior_log_var = self.prior_encoder(x.to_sparse_csr(normalised))
        z, mu, log_var = z.float(), mu.float(), log_var.float()
        c = self.config
        log_p = composite_prior_log_prob(z, prior_mu.float(), prior_log_var.float(), c.prior_weights,
                                         c.wide_prior_log_var, c.prior_mixture)
        kl = gaussian_log_density(z, mu, log_var).sum(dim=-1) - log_p
        return nll, kl

    def loss(
        self, x: SparseRows, generator: torch.Generator | None = None, *, dropout: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO: mean over users of NLL_u + beta_u * KL_u (plus the mean NLL and KL)."""
        nll, kl = self.terms(x, generator, dropout=dropout)
        return {"loss": (nll + self.kl_weight(x) * kl).mean(), "nll": nll.mean(), "kl": kl.mean()}

    def scores(self, x: SparseRows) -> torch.Tensor:
        """Ranking scores: the decoder at the posterior mean (no dropout, no noise)."""
        return posterior_mean_scores(self, x)

    def item_embeddings(self) -> torch.Tensor:
        """Rows of the decoder weight: one latent-sized vector per item."""
        return self.decoder.weight[: self.n_items].detach()


# ---------------------------------------------------------------------- training
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
) -> torch.Tensor:
    """``passes`` shuffled passes over ``users`` updating only ``net.<phase>``.

    The other part is frozen (requires_grad off, so no gradient is even computed
    for it); input dropout only in the encoder phase, as in the authors' code.
    Returns the mean (loss, nll, kl) over the passes.

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
    net.train()
    net.encoder.requires_grad_(phase == "encoder")
    net.decoder.requires_grad_(phase == "decoder")
    trained = list(getattr(net, phase).parameters())
    sums = torch.zeros(3, dtype=torch.float64, device=users.device)
    try:
        for _ in range(passes):
            order = users[torch.randperm(len(users), generator=generator, device=users.device)]
            for batch in order.split(batch_size):
                if ctx is None:
                    with _autocast(users.device, precision):
                        parts = net.loss(data.rows(batch), generator, dropout=phase == "encoder")
                    optimizer.zero_grad(set_to_none=True)
                    parts["loss"].backward()
                    optimizer.step()
                    batch_sums = torch.stack([parts[k].detach() for k in ("loss", "nll", "kl")]).double() * len(batch)
                else:
                    x = data.rows(shard_batch(batch, ctx))
                    with _autocast(users.device, precision):
                        nll, kl = net.terms(x, noise_generator, dropout=phase == "encoder")
                    loss_sum = (nll + net.kl_weight(x) * kl).sum()
                    optimizer.zero_grad(set_to_none=True)
                    (loss_sum / len(batch)).backward()
                    _sum_gradients(trained, ctx)
                    optimizer.step()
                    batch_sums = torch.stack([loss_sum, nll.sum(), kl.sum()]).detach().double()
                sums += batch_sums
                if first is not None and phase not in first:
                    first[phase] = (batch_sums, len(batch))
                if bar is not None:
                    bar.update(1)
    finally:
        net.encoder.requires_grad_(True)
        net.decoder.requires_grad_(True)
    return all_reduce_sum(sums, ctx) / (passes * len(users))


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
) -> TrainingResult:
    """Train ``net`` in place with alternating encoder / decoder phases; loads the best weights.

    ``config.anneal`` is not used: RecVAE's beta is per user (``RecVAEConfig.gamma``).
    Under a torch.distributed process group of several ranks it trains data-parallel,
    like :func:`recvae.training.train_vae` (gradients summed by hand, see ``_train_phase``).
    History: ``loss``/``nll``/``kl`` are the decoder passes' means (no dropout, refreshed
    prior), ``encoder_loss`` the encoder passes' mean, ``beta`` the mean beta_u.
    """
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
    optimizers = {part: make_optimizer(getattr(net, part).parameters(), config) for part in ("encoder", "decoder")}
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    state = {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_epoch": None,
             "best_score": None, "best_beta": None, "since_best": 0, "stopped_early": False}
    warn_degenerate(config)
    # The run's identity, stored in the checkpoint and compared on resume (hashing the data costs one pass).
    fingerprint = run_fingerprint(net, config, train, validation) if config.checkpoint else None
    if resume_agreed(config, ctx):
        _load_checkpoint(config.checkpoint, net, optimizers, generator, state, device, fingerprint, config)
        logger.info("resumed from %s at epoch %d", config.checkpoint, state["epoch"])
        warn_if_finished(config, state)

    def score_fn(rows: sp.csr_matrix) -> torch.Tensor:
        with _autocast(device, config.precision):
            return net.scores(sparse_rows(rows, device))

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch,
               disable=None if (config.progress and is_main) else True, unit="batch", dynamic_ncols=True)

    first: dict = {}  # each phase's first batch of the run, the divergence reference

    def phase(part: str, passes: int, noise: torch.Generator | None) -> torch.Tensor:
        return _train_phase(net, part, optimizers[part], data, users, generator, passes=passes,
                            batch_size=config.batch_size, precision=config.precision, bar=bar,
                            ctx=ctx, noise_generator=noise, first=None if "first_loss" in state else first)

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
            row = {"epoch": epoch, "step": state["step"], "beta": mean_beta, "loss": loss, "nll": nll, "kl": kl,
                   "encoder_loss": encoder_loss, "train_seconds": time.perf_counter() - started}
            postfix = {"-elbo": f"{loss:.2f}", "nll": f"{nll:.2f}", "kl": f"{kl:.2f}"}
            if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                _validate_epoch(net, score_fn, validation, config, epoch, state, row, postfix)
            if _end_epoch(state, epoch, row, postfix, bar, config, is_main,
                          lambda: _save_checkpoint(config.checkpoint, net, optimizers, generator, state,
                                                   fingerprint)):
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
    """Write the checkpoint atomically: a temp file beside it, then ``os.replace`` (``Path.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": net.state_dict(),  # includes the prior's frozen encoder
        "optimizers": {part: opt.state_dict() for part, opt in optimizers.items()},
        "generator": generator.get_state(),
        "state": {k: v for k, v in state.items() if k != "best_state"},
        "best_state": state["best_state"],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_checkpoint(path, net, optimizers, generator, state, device, fingerprint: dict | None,
                     config: TrainingConfig) -> None:
    """Resume from ``path``: checked (see :func:`recvae.training._read_checkpoint`), the requested lr applied."""
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
class RecVAE(TorchVAERecommender):
    """RecVAE (Shenbin et al. 2020) as a recommender.

    Example::

        model = RecVAE().fit(split)                      # 50 epochs, batch 500, Adam 5e-4
        recs = model.recommend(split.test.fold_in, k=10)
        mu, sigma = model.embed_users(split.test.fold_in)

    Attributes set by ``fit``: ``net_`` (a :class:`RecVAENet`), ``history_``,
    ``training_`` (a :class:`TrainingResult`), ``item_ids_``, ``n_items_``, ``device_``.
    """

    save_format = _SAVE_FORMAT
    file_kind = "RecVAE"

    @staticmethod
    def default_config() -> RecVAEConfig:
        return RecVAEConfig()

    @classmethod
    def _config_from_dict(cls, values: dict) -> RecVAEConfig:
        return RecVAEConfig(**values)

    @staticmethod
    def default_training() -> TrainingConfig:
        """The authors' schedule: 50 epochs, batch 500, Adam lr 5e-4."""
        return TrainingConfig(epochs=50, batch_size=500, lr=5e-4)

    def _build_net(self, n_items: int) -> RecVAENet:
        return RecVAENet(n_items, self.config)

    def _train(self, matrix, validation: HeldOut | None) -> TrainingResult:
        return train_recvae(self.net_, matrix, validation, self.training, self.device_)

    @torch.no_grad()
    def embed_users(self, user_rows) -> UserEmbeddings:
        """Posterior mean and standard deviation of z for each user row (``mu, sigma = ...`` unpacks)."""
        x = self._rows(user_rows)
        mu, log_var = self.net_.encode(x, dropout=False)
        return UserEmbeddings(mu.cpu().numpy(), torch.exp(0.5 * log_var).cpu().numpy())
