"""The VAE over sparse user rows (Liang et al. 2018, "Mult-VAE"), in one module.

x (sparse row) -> L2-normalise -> input dropout -> sparse first layer -> tanh
-> ... -> (mu, log sigma^2) -> z = mu + sigma * eps (training) or mu (inference)
-> decoder MLP -> item outputs -> likelihood p(x | z).

Under the Gaussian likelihood the training NLL never needs the batch x items means: it is a
quadratic form in the decoder's last hidden layer (:mod:`recvae.nn.gramian`), used whenever
that layer is narrower than the batch.

The batch stays a torch sparse CSR tensor on the device from end to end; the
first layer multiplies it by the weight through a sparse kernel that reads only
its nonzeros. Nothing of size users x items is ever materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from recvae.nn.gramian import exact_gaussian_posterior, gramian_applies, gramian_gaussian_nll, output_gramian
from recvae.nn.hyperparams import DROPOUT, apply_rules, choice, flag, integer, integer_list, number, optional, rule
from recvae.nn.item_output import ITEM_OUTPUT_RULES, check_item_output, item_output_for, mark_sparse_item_gradients
from recvae.nn.likelihoods import LIKELIHOODS, make_likelihood
from recvae.nn.sparse import SparseRows

__all__ = [
    "VAEConfig", "SparseLinear", "VAE", "decoder_hidden_dims", "gaussian_kl", "l2_normalised_values", "dropout_values", "posterior_mean_scores"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "swish": F.silu, "sigmoid": torch.sigmoid}


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and likelihood. The defaults are Mult-VAE's (I-600-200-600-I).

    Every field is checked when the config is made (see :mod:`recvae.nn.hyperparams`).

    Attributes:
        hidden_dims: encoder hidden widths; the decoder mirrors them unless
            ``decoder_dims`` says otherwise.
        latent_dim: size of z.
        decoder_dims: the decoder's hidden widths from z to the items; None
            mirrors ``hidden_dims``, ``[]`` makes the decoder linear (item
            factors times z, as in RecVAE and matrix factorisation).
        likelihood: ``multinomial``, ``bernoulli``, ``gaussian`` (constant
            variance) or ``gaussian_learned`` (the decoder also outputs a
            log-variance per item).
        confidence: the Gaussian likelihood's confidence slope alpha: an observed
            entry weighs 1 + alpha x_ui, an unobserved one 1 (Liang et al.'s
            weighted Gaussian, with Hu et al.'s confidence as in ALS); 0 for the
            plain Gaussian, and for the other likelihoods.
        posterior: what scores, embeds and folds in a user: ``encoder`` (the
            amortised q(z | x), as in the paper) or ``exact``: the true posterior
            p(z | x), in closed form for a linear decoder (``decoder_dims=[]``)
            under the Gaussian likelihood (:func:`recvae.nn.gramian.exact_gaussian_posterior`,
            the normal equations ALS solves per user). Training always uses the encoder.
        refine_steps: after the amortised training, this many steps of exact
            coordinate ascent on the ELBO of a linear decoder under the Gaussian
            likelihood: each user's exact posterior, then each item's closed-form
            weights (variational EM, :func:`recvae.nn.gramian.exact_decoder_update`);
            0 (the default) keeps the trained decoder.
        refine_l2: the ridge penalty on each item's weights in those steps.
        input_dropout: dropout rate on the normalised input (training only).
        activation: between layers (``tanh`` as in the paper).
        variational: False gives Mult-DAE: a deterministic encoder, no KL,
            and the activation on the code (as in Liang et al.'s DAE).
        normalize_input: L2-normalise each input row (the paper does).
        item_chunk: None computes the training NLL from the full batch x items
            logits; an int computes the same NLL exactly over blocks of that many
            items, never holding more than batch x item_chunk logits (for large
            catalogues; see :mod:`recvae.nn.chunked`). Multinomial, Bernoulli and
            Gaussian only.
        sampled_softmax: None, or the number of negatives S shared by a batch:
            the multinomial NLL is estimated from the batch's positives and S
            sampled items with the log-Q correction (biased by O(1/S); see
            :mod:`recvae.nn.sampled`). Scoring still uses every item.
        negative_sampler: the proposal of the negatives: ``uniform``, or
            ``popularity`` (training counts ** ``negative_power``).
        negative_power: the popularity proposal's exponent.
    """

    hidden_dims: tuple[int, ...] = (600,)
    latent_dim: int = 200
    decoder_dims: tuple[int, ...] | None = None
    likelihood: str = "multinomial"
    confidence: float = 0.0
    posterior: str = "encoder"
    refine_steps: int = 0
    refine_l2: float = 1.0
    input_dropout: float = 0.5
    activation: str = "tanh"
    variational: bool = True
    normalize_input: bool = True
    item_chunk: int | None = None
    sampled_softmax: int | None = None
    negative_sampler: str = "uniform"
    negative_power: float = 0.75

    def __post_init__(self) -> None:
        apply_rules(self, _VAE_RULES)
        if self.confidence and self.likelihood != "gaussian":
            raise ValueError(f"confidence weights the gaussian likelihood only; got likelihood={self.likelihood!r} "
                             f"with confidence={self.confidence}: set likelihood='gaussian' or confidence=0")
        if self.posterior == "exact" and (self.likelihood != "gaussian" or self.decoder_dims != ()
                                          or not self.variational):
            raise ValueError("posterior='exact' needs a linear decoder under the gaussian likelihood: set "
                             "likelihood='gaussian' and decoder_dims=[] (variational), or posterior='encoder'")
        if self.refine_steps and (self.likelihood != "gaussian" or self.decoder_dims != () or not self.variational):
            raise ValueError("refine_steps needs a linear decoder under the gaussian likelihood: set "
                             "likelihood='gaussian' and decoder_dims=[] (variational), or refine_steps=0")
        check_item_output(self.likelihood, self.item_chunk, self.sampled_softmax, self.negative_sampler,
                          self.negative_power)


#: each field's type and range (see :mod:`recvae.nn.hyperparams`).
_VAE_RULES = {
    "hidden_dims": rule(integer_list, minimum=1),
    "latent_dim": rule(integer, minimum=1),
    "decoder_dims": optional(rule(integer_list, minimum=1, example="[] or [600]")),
    "likelihood": rule(choice, options=sorted(LIKELIHOODS)),
    "confidence": rule(number, minimum=0.0),
    "posterior": rule(choice, options=("encoder", "exact")),
    "refine_steps": rule(integer, minimum=0),
    "refine_l2": rule(number, minimum=0.0),
    "input_dropout": DROPOUT,
    "activation": rule(choice, options=sorted(_ACTIVATIONS)),
    "variational": flag,
    "normalize_input": flag,
    **ITEM_OUTPUT_RULES,
}


class SparseLinear(nn.Module):
    """y = x W + b for a sparse CSR batch x (batch x in_features).

    The weight is stored (in_features x out_features), row i being item i's
    input embedding, so the product is a weighted sum of the rows of W picked by
    each user's items. It runs on ``F.embedding_bag``'s sparse-sum kernel over
    the CSR's own arrays (column indices, row offsets, values): forward and
    backward touch only the nonzeros, on CPU and CUDA alike, and measured ~3x
    faster than ``torch.sparse.mm`` for the forward + backward at ML-20M shape.

    ``sparse=True`` makes the weight's gradient a sparse tensor holding the batch's
    items' rows only (``torch.optim.SparseAdam`` then updates those rows alone);
    the default is a dense gradient.
    """

    def __init__(self, in_features: int, out_features: int, sparse: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.sparse = sparse
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout != torch.sparse_csr:
            raise TypeError(f"SparseLinear expects a torch.sparse_csr tensor; got layout {x.layout}")
        crow = x.crow_indices()
        out = F.embedding_bag(
            x.col_indices(), self.weight, crow[:-1], mode="sum", per_sample_weights=x.values(),
            include_last_offset=False, sparse=self.sparse,
        )
        return out + self.bias


def l2_normalised_values(x: SparseRows) -> torch.Tensor:
    """The batch's values with each row divided by its L2 norm."""
    sq = torch.zeros(x.n_rows, dtype=x.values.dtype, device=x.values.device)
    sq.index_add_(0, x.row_of_entry, x.values * x.values)
    return x.values * torch.rsqrt(sq.clamp_min(1e-12))[x.row_of_entry]


def dropout_values(values: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout on sparse values: one uniform draw per nonzero, kept ones scaled by 1 / (1 - p)."""
    if p == 0:
        return values
    keep = torch.rand(values.shape, generator=generator, device=values.device) >= p
    return values * keep / (1.0 - p)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)) per row, in closed form.

    0.5 * sum(-log_var + exp(log_var) + mu^2 - 1).
    """
    return 0.5 * (-log_var + log_var.exp() + mu * mu - 1.0).sum(dim=1)


class VAE(nn.Module):
    """Encoder, reparameterisation, decoder and likelihood for ``n_items`` items."""

    def __init__(self, n_items: int, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        if n_items < 2:
            raise ValueError(f"need at least 2 items; got {n_items}")
        self.n_items = n_items
        self.config = config
        self.likelihood = make_likelihood(config.likelihood, config.confidence)
        self._act = _ACTIVATIONS[config.activation]
        code = config.latent_dim * (2 if config.variational else 1)
        enc_dims = [*config.hidden_dims, code]
        self.input_layer = SparseLinear(n_items, enc_dims[0])
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc_dims[:-1], enc_dims[1:]))
        dec_dims = [config.latent_dim, *decoder_hidden_dims(config), n_items * self.likelihood.outputs_per_item]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec_dims[:-1], dec_dims[1:]))
        self.item_output = item_output_for(self.likelihood, n_items, config)
        self._gramian_cache = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, biases ~ N(0, 0.001^2) truncated at 2 std (the paper's TF init)."""
        for module in [self.input_layer, *self.encoder, *self.decoder]:
            nn.init.xavier_uniform_(module.weight)
            nn.init.trunc_normal_(module.bias, std=0.001, a=-0.002, b=0.002)

    # ------------------------------------------------------------------ encoder
    def encoder_input(self, x: SparseRows, generator: torch.Generator | None = None) -> torch.Tensor:
        """The sparse CSR input of the first layer: normalised, with dropout in training."""
        values = l2_normalised_values(x) if self.config.normalize_input else x.values
        if self.training:
            values = dropout_values(values, self.config.input_dropout, generator)
        return x.to_sparse_csr(values)

    def encode(self, x: SparseRows, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, log_var); log_var is None for the deterministic (DAE) encoder. Out of training, with
        ``posterior="exact"``, the exact posterior's mean and marginal log-variances instead."""
        if self.config.posterior == "exact" and not self.training:
            layer = self.decoder[-1]
            return exact_gaussian_posterior(self.likelihood, layer.weight, layer.bias, x, gramian=self._gramian())
        h = self.input_layer(self.encoder_input(x, generator))
        for layer in self.encoder:
            h = layer(self._act(h))
        if not self.config.variational:
            return self._act(h), None
        d = self.config.latent_dim
        return h[:, :d], h[:, d:]

    def _gramian(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer's Gramian, kept while its weights are unchanged: a served user's exact posterior
        then costs O(n_u d^2 + d^3), not O(I d^2). Dropped whenever the net enters or leaves training
        (:meth:`train`), since torch's fused Adam updates weights without bumping their version counters;
        the key's counters catch in-place changes out of training (load_state_dict, a manual edit)."""
        layer = self.decoder[-1]
        key = (layer.weight.data_ptr(), layer.weight._version, layer.bias.data_ptr(), layer.bias._version,
               layer.weight.dtype, layer.weight.device)
        if self._gramian_cache is None or self._gramian_cache[0] != key:
            with torch.no_grad():
                self._gramian_cache = (key, output_gramian(layer.weight, layer.bias))
        return self._gramian_cache[1]

    def train(self, mode: bool = True) -> VAE:
        self._gramian_cache = None
        return super().train(mode)

    def reparameterize(self, mu: torch.Tensor, log_var: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps in training; mu otherwise (and for the DAE)."""
        if log_var is None or not self.training:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * log_var)

    # ------------------------------------------------------------------ decoder
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for each item (its likelihood's parameters)."""
        return self.decoder[-1](self.decode_hidden(z))

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The output layer's input: the decoder up to its last layer, activation included."""
        h = z
        for i, layer in enumerate(self.decoder[:-1]):
            if i:
                h = self._act(h)
            h = layer(h)
        return self._act(h) if len(self.decoder) > 1 else h

    def reconstruction_nll(self, z: torch.Tensor, x: SparseRows,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x | z) per user, (batch,): from the full logits, or chunked / sampled per the config, or
        (Gaussian) in the Gramian form when the last hidden layer is narrower than the batch or chunks are asked."""
        if gramian_applies(self.likelihood):
            h = self.decode_hidden(z)
            if self.item_output is not None or h.shape[1] < h.shape[0]:
                layer = self.decoder[-1]
                return gramian_gaussian_nll(self.likelihood, h, layer.weight, layer.bias, x)
            return self.likelihood.nll(self.decoder[-1](h), x)
        if self.item_output is None:
            return self.likelihood.nll(self.decode(z), x)
        return self.item_output(self.decode_hidden(z), self.decoder[-1], x, generator)

    def forward(self, x: SparseRows, generator: torch.Generator | None = None):
        """(decoder output, mu, log_var) for a batch."""
        mu, log_var = self.encode(x, generator)
        return self.decode(self.reparameterize(mu, log_var, generator)), mu, log_var

    def terms(self, x: SparseRows, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user NLL and closed-form KL, each (batch,) (KL zeros for the DAE)."""
        mu, log_var = self.encode(x, generator)
        nll = self.reconstruction_nll(self.reparameterize(mu, log_var, generator), x, generator)
        kl = gaussian_kl(mu.float(), log_var.float()) if log_var is not None else torch.zeros_like(nll)
        return nll, kl

    def loss(self, x: SparseRows, beta: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO averaged over the batch: mean NLL + beta * mean KL."""
        nll, kl = self.terms(x, generator)
        nll, kl = nll.mean(), kl.mean()
        return {"loss": nll + beta * kl, "nll": nll, "kl": kl}

    def enable_sparse_item_gradients(self) -> list[nn.Parameter]:
        """Sparse gradients for the input layer (and the output layer under sampled softmax); returns
        those parameters, marked for :func:`recvae.training.make_optimizer` (see ``sparse_item_updates``)."""
        return mark_sparse_item_gradients(self.input_layer, self.decoder[-1], self.item_output)

    def scores(self, x: SparseRows) -> torch.Tensor:
        """Ranking scores from the posterior mean (no dropout, no noise)."""
        return posterior_mean_scores(self, x)

    def item_embeddings(self) -> torch.Tensor:
        """Rows of the decoder's output weight: one vector per item (its mean output)."""
        return self.decoder[-1].weight[: self.n_items].detach()


def decoder_hidden_dims(config: VAEConfig) -> tuple[int, ...]:
    """The decoder's hidden widths from z to the items: ``decoder_dims``, or ``hidden_dims`` mirrored."""
    return tuple(reversed(config.hidden_dims)) if config.decoder_dims is None else tuple(config.decoder_dims)


@torch.no_grad()
def posterior_mean_scores(net: nn.Module, x: SparseRows) -> torch.Tensor:
    """Ranking scores of a VAE with ``encode``/``decode``/``likelihood``: the decoder at the
    posterior mean, in eval mode (no dropout, no noise); the module's mode is restored."""
    was_training = net.training
    net.eval()
    try:
        mu, _ = net.encode(x)
        return net.likelihood.scores(net.decode(mu)).float()
    finally:
        net.train(was_training)
