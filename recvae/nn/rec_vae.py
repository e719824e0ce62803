"""RecVAE (Shenbin et al., WSDM 2020): Mult-VAE with a stronger encoder, a composite prior,
per-user beta and alternating updates: the network.

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
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from recvae.nn.hyperparams import DROPOUT, apply_rules, choice, integer, number, number_list, optional, rule, shown
from recvae.nn.item_output import ITEM_OUTPUT_RULES, check_item_output, item_output_for, mark_sparse_item_gradients
from recvae.nn.likelihoods import LIKELIHOODS, make_likelihood
from recvae.nn.sparse import SparseRows
from recvae.nn.vae import SparseLinear, dropout_values, l2_normalised_values, posterior_mean_scores

__all__ = ["RecVAEConfig", "RecVAEEncoder", "RecVAENet", "composite_prior_log_prob", "gaussian_log_density"]

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
        likelihood: any name in :data:`recvae.nn.likelihoods.LIKELIHOODS`.
        layer_norm_eps: LayerNorm epsilon (0.1 in the authors' code).
        encoder_epochs, decoder_epochs: passes over the users per epoch for each part.
        item_chunk, sampled_softmax, negative_sampler, negative_power: how the
            training NLL treats a large catalogue, as in :class:`recvae.nn.vae.VAEConfig`
            (exact over item blocks, or sampled softmax; None: the full logits).
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
    item_chunk: int | None = None
    sampled_softmax: int | None = None
    negative_sampler: str = "uniform"
    negative_power: float = 0.75

    def __post_init__(self) -> None:
        apply_rules(self, _RECVAE_RULES)
        w = self.prior_weights
        if abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(f"prior_weights={shown(list(w))}: expected 3 positive numbers summing to 1")
        if (self.gamma is None) == (self.beta is None):
            raise ValueError("set exactly one of gamma (beta_u = gamma * |x_u|) and beta (a constant); "
                             f"got gamma={self.gamma}, beta={self.beta}")
        check_item_output(self.likelihood, self.item_chunk, self.sampled_softmax, self.negative_sampler,
                          self.negative_power)


#: each field's type and range (see :mod:`recvae.nn.hyperparams`).
_RECVAE_RULES = {
    "hidden_dim": rule(integer, minimum=1),
    "n_layers": rule(integer, minimum=1),
    "latent_dim": rule(integer, minimum=1),
    "input_dropout": DROPOUT,
    "prior_weights": rule(number_list, length=3, minimum=0.0, low_open=True,
                          rule="3 positive numbers summing to 1"),
    "wide_prior_log_var": number,
    "prior_mixture": rule(choice, options=_PRIOR_MIXTURES),
    "gamma": optional(rule(number, minimum=0.0, low_open=True)),
    "beta": optional(rule(number, minimum=0.0)),
    "likelihood": rule(choice, options=sorted(LIKELIHOODS)),
    "layer_norm_eps": rule(number, minimum=0.0, low_open=True),
    "encoder_epochs": rule(integer, minimum=1),
    "decoder_epochs": rule(integer, minimum=1),
    **ITEM_OUTPUT_RULES,
}


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

    The three log-densities share z^2 / 2 and carry their constants (log w_k,
    log(2 pi) / 2, the wide log-variance) as Python numbers: no zero, constant or
    weight tensor is built (it runs in every training step).
    """
    if mixture not in _PRIOR_MIXTURES:
        raise ValueError(f"mixture must be one of {_PRIOR_MIXTURES}; got {mixture!r}")
    half_sq = 0.5 * z.square()
    variable = (  # each component's log-density per dimension, less its constant
        -half_sq,
        -0.5 * torch.addcmul(post_log_var, (z - post_mu).square(), torch.exp(-post_log_var)),
        half_sq * -math.exp(-wide_log_var),
    )
    per_dim_constants = (-0.5 * _LOG_2PI, -0.5 * _LOG_2PI, -0.5 * (_LOG_2PI + wide_log_var))
    log_w = [math.log(w) for w in weights]
    if mixture == "per_dim":
        components = [v + (lw + c) for v, lw, c in zip(variable, log_w, per_dim_constants)]
        return torch.logsumexp(torch.stack(components), dim=0).sum(dim=-1)
    n = z.shape[-1]
    components = [v.sum(dim=-1) + (lw + n * c) for v, lw, c in zip(variable, log_w, per_dim_constants)]
    return torch.logsumexp(torch.stack(components), dim=0)


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
        # Counts update_prior() calls: a posterior of the prior's encoder computed at one
        # count holds until the next (recvae.training caches them per user for an epoch).
        self.prior_version = 0
        self.decoder = nn.Linear(config.latent_dim, n_items * self.likelihood.outputs_per_item)
        self.item_output = item_output_for(self.likelihood, n_items, config)

    @torch.no_grad()
    def update_prior(self) -> None:
        """Copy the current encoder into the prior's frozen encoder (``prior_version`` moves on)."""
        self.prior_encoder.load_state_dict(self.encoder.state_dict())
        self.prior_version += 1

    @torch.no_grad()
    def prior_posterior(self, x: SparseRows, normalised: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var) of the prior's frozen encoder for rows x (no dropout), the composite
        prior's second component; ``normalised``: x's L2-normalised values, when at hand."""
        if normalised is None:
            normalised = l2_normalised_values(x)
        return self.prior_encoder(x.to_sparse_csr(normalised))

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

    def reconstruction_nll(self, z: torch.Tensor, x: SparseRows,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x | z) per user, (batch,) (subclasses may also read the rows x, and draw noise).

        From the full logits, or exact over item blocks / sampled softmax when the
        config sets ``item_chunk`` / ``sampled_softmax`` (the decoder is one linear layer,
        so its input is z itself)."""
        if self.item_output is None:
            return self.likelihood.nll(self.decode(z), x)
        return self.item_output(z, self.decoder, x, generator)

    def enable_sparse_item_gradients(self) -> list[nn.Parameter]:
        """Sparse gradients for the encoder's input layer (and the decoder under sampled softmax);
        returns those parameters, marked for :func:`recvae.training.make_optimizer`."""
        return mark_sparse_item_gradients(self.encoder.input_layer, self.decoder, self.item_output)

    def kl_weight(self, x: SparseRows) -> torch.Tensor:
        """beta_u per user: gamma * (sum of the row), or the constant beta."""
        if self.config.gamma is not None:
            return self.config.gamma * x.row_sums()
        return torch.full((x.n_rows,), float(self.config.beta), device=x.values.device)

    def terms(
        self, x: SparseRows, generator: torch.Generator | None = None, *, dropout: bool | None = None,
        posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
        prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user NLL and single-sample KL estimate log q(z|x) - log p(z), each (batch,).

        ``posterior``: the rows' (mu, log_var), when already computed, in place of
        encoding x (a frozen encoder's, without dropout: RecVAE's decoder passes).
        ``prior``: the rows' :meth:`prior_posterior`, when already computed (it changes
        only at :meth:`update_prior`, so the trainer keeps it per user for an epoch).
        """
        normalised = None
        if posterior is None:
            normalised = l2_normalised_values(x)
            mu, log_var = self._encode(x, normalised, generator, dropout)
        else:
            mu, log_var = posterior
        z = self.reparameterize(mu, log_var, generator)
        nll = self.reconstruction_nll(z, x, generator)
        prior_mu, prior_log_var = self.prior_posterior(x, normalised) if prior is None else prior
        z, mu, log_var = z.float(), mu.float(), log_var.float()
        c = self.config
        log_p = composite_prior_log_prob(z, prior_mu.float(), prior_log_var.float(), c.prior_weights,
                                         c.wide_prior_log_var, c.prior_mixture)
        kl = gaussian_log_density(z, mu, log_var).sum(dim=-1) - log_p
        return nll, kl

    def loss(
        self, x: SparseRows, generator: torch.Generator | None = None, *, dropout: bool | None = None,
        posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
        prior: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO: mean over users of NLL_u + beta_u * KL_u (plus the mean NLL and KL);
        ``posterior`` and ``prior`` as in :meth:`terms`."""
        nll, kl = self.terms(x, generator, dropout=dropout, posterior=posterior, prior=prior)
        return {"loss": (nll + self.kl_weight(x) * kl).mean(), "nll": nll.mean(), "kl": kl.mean()}

    def scores(self, x: SparseRows) -> torch.Tensor:
        """Ranking scores: the decoder at the posterior mean (no dropout, no noise)."""
        return posterior_mean_scores(self, x)

    def item_embeddings(self) -> torch.Tensor:
        """Rows of the decoder weight: one latent-sized vector per item."""
        return self.decoder.weight[: self.n_items].detach()


# ---------------------------------------------------------------------- training
