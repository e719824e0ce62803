"""RecVAE and an item-item linear model in one network, trained jointly: the network.

For a user row x (sparse) the item logits are

    logits_u = D z_u + b  +  s · (x_u W),      diag(W) = 0,

the first term RecVAE's decoder at the latent code z_u, the second a linear
autoencoder (EASE / EDLAE's form) over the raw input row, scaled by a learned
scalar s. Both feed the same likelihood, so the VAE learns what the linear model
misses and the ranking comes from one score. The zero diagonal keeps the linear
path from copying an item to itself (the trivial solution EASE's constraint
excludes): the diagonal's gradient is zeroed on the way back, so a diagonal that
starts at zero (EDLAE's closed form, or zeros) stays exactly zero.

``W`` is a parameter of the decoder part (trained in RecVAE's decoder passes)
when ``train_linear`` is set, else a frozen buffer: then only ``s`` and the VAE
learn, around a linear model fixed at its closed form. ``paths`` turns either
path off, which gives back RecVAE (``"vae"``) or the linear model (``"linear"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from recvae.nn.hyperparams import DROPOUT, apply_rules, choice, flag, integer, number, rule
from recvae.nn.joint_output import joint_chunked_nll
from recvae.nn.likelihoods import make_likelihood
from recvae.nn.rec_vae import RecVAEConfig, RecVAENet
from recvae.nn.sampled import sampled_softmax_nll
from recvae.nn.sparse import SparseRows
from recvae.nn.sparse_item_item import SparseItemItem
from recvae.nn.vae import dropout_values, l2_normalised_values

__all__ = ["JointVAEConfig", "JointVAENet", "ItemItemLinear", "SparseItemItem", "JointDecoder", "fuse_logits",
           "JOINT_PATHS", "LINEAR_INITS", "LINEAR_FORMS"]

JOINT_PATHS = ("both", "vae", "linear")
LINEAR_INITS = ("edlae", "zeros")
#: how W is held: ``dense`` (items x items), ``sparse`` (CSR, each item's top neighbours), ``auto`` (by memory).
LINEAR_FORMS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class JointVAEConfig(RecVAEConfig):
    """RecVAE's settings (see :class:`RecVAEConfig`) plus the linear path's.

    Attributes:
        paths: ``"both"`` (the joint model), ``"vae"`` (RecVAE alone: the
            linear path is left out) or ``"linear"`` (the linear path alone:
            the decoder's output is left out).
        linear_init: ``"edlae"`` starts W at EDLAE's closed form on the
            training rows (Steck 2020; see :func:`recvae.models.ease.edlae_weights`),
            ``"zeros"`` at zero (then ``train_linear`` must be set for the path to
            learn anything).
        linear_l2, linear_dropout: EDLAE's lambda and dropout p for that start.
        train_linear: train W in the decoder passes (Adam, with the decoder);
            otherwise W stays at its start and only the scale s learns.
        linear_weight_decay: Adam's L2 weight decay on a trained W (its own,
            in place of the training config's), which keeps W from overfitting
            the training rows as EASE's lambda does.
        linear_scale: the starting value of the learned scale s (s = linear_scale ·
            exp(a) with a learned, so Adam's steps move s by a ratio, at any scale).
        calibrate_scale: start s at ``linear_scale`` times the ratio of a reference spread
            (:data:`recvae.models.joint.REFERENCE_SPREAD`, the top-1 minus top-100 score of x W
            of a typical ml-1m-implicit user, ~165 events) to the same spread on the training
            rows: x W sums over a user's items, so on a log of ~10 events per user it is ~30
            times smaller, and an uncalibrated s leaves the linear path drowned under the
            latent logits (measured on yelp2018-test: validation NDCG@100 0.004 after one
            epoch, against 0.038 for sparse EASE alone). False: s starts at ``linear_scale``.
        linear_input_dropout: in training, each input item of the linear path is
            dropped with this probability (the rest scaled by 1 / (1 - p)), drawn
            apart from the encoder's: the path then learns, and the VAE around it,
            to predict items the user's row does not show -- the situation of a
            fold-in user -- rather than items W already saw in that training row.
        vae_loss_weight: adds this times the latent path's own NLL (its logits
            alone) to the loss, so the VAE stays a predictor of its own rather
            than learning only what the linear path misses.
        fusion_gradient: whether the joint logits' NLL trains the VAE (False: the
            VAE learns from its own NLL only -- set ``vae_loss_weight`` -- and the
            joint NLL trains s and W).
        linear_form: ``"dense"`` holds W as an items x items matrix (4 bytes per item
            pair, x4 when trained) started at EDLAE's closed form; ``"sparse"`` as a CSR
            matrix of each item's ``linear_neighbours`` most co-occurring items, started
            at sparse EASE's weights with EDLAE's dropout penalty
            (:func:`recvae.models.sparse_ease.sparse_ease_weights`); ``"auto"`` lets
            :class:`recvae.models.JointVAE` pick dense when it fits comfortably in memory,
            else sparse (a network built directly takes ``"auto"`` as dense). With
            ``linear_neighbours >= items - 1`` both forms hold the same W. A trained
            sparse W learns its stored values only (its sparsity is fixed).
        linear_neighbours: k, the stored weights per item (column) of the sparse form.

    With ``item_chunk`` or ``sampled_softmax`` (large catalogues) the joint NLL adds the
    linear path's logits per block of items, or at the sampled candidates only (see
    :mod:`recvae.nn.joint_output`); ``paths="linear"`` takes neither.
    """

    paths: str = "both"
    linear_init: str = "edlae"
    linear_l2: float = 500.0
    linear_dropout: float = 0.25
    train_linear: bool = False
    linear_weight_decay: float = 0.0
    linear_scale: float = 10.0
    calibrate_scale: bool = True
    linear_input_dropout: float = 0.0
    vae_loss_weight: float = 1.0
    fusion_gradient: bool = False
    linear_form: str = "auto"
    linear_neighbours: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        apply_rules(self, _JOINT_RULES)
        if self.paths == "linear" and (self.item_chunk is not None or self.sampled_softmax is not None):
            raise ValueError("paths='linear' scores the item-item path alone, with full logits: leave item_chunk "
                             "and sampled_softmax unset (or use paths='both')")
        if not self.fusion_gradient and not self.vae_loss_weight and self.paths == "both":
            raise ValueError("fusion_gradient=False with vae_loss_weight=0 leaves the VAE untrained; "
                             "set vae_loss_weight > 0 or fusion_gradient=True")
        if make_likelihood(self.likelihood).outputs_per_item != 1:
            raise ValueError(f"the joint model needs a likelihood with one output per item; {self.likelihood!r} "
                             "has more (choose multinomial, bernoulli or gaussian)")
        if self.paths != "vae" and self.linear_init == "zeros" and not self.train_linear:
            raise ValueError("linear_init='zeros' with train_linear=False leaves the linear path at zero; "
                             "set train_linear=True or linear_init='edlae'")


#: each linear-path field's type and range (see :mod:`recvae.nn.hyperparams`); RecVAE's are RecVAEConfig's.
_JOINT_RULES = {
    "paths": rule(choice, options=JOINT_PATHS),
    "linear_init": rule(choice, options=LINEAR_INITS),
    "linear_l2": rule(number, minimum=0.0),
    "linear_dropout": DROPOUT,
    "train_linear": flag,
    "linear_weight_decay": rule(number, minimum=0.0),
    "linear_scale": rule(number, minimum=0.0, low_open=True),
    "calibrate_scale": flag,
    "linear_input_dropout": DROPOUT,
    "vae_loss_weight": rule(number, minimum=0.0),
    "fusion_gradient": flag,
    "linear_form": rule(choice, options=LINEAR_FORMS),
    "linear_neighbours": rule(integer, minimum=1),
}


def fuse_logits(latent: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """The two paths' logits summed in at least fp32.

    Under bf16 autocast the latent path's logits come out in bf16 (8 bits of mantissa:
    steps of 0.06 at a logit of 10), while the item-item path's sparse product stays fp32;
    rounding their sum to bf16 would blur the ranking and the loss of both paths alike.
    The likelihood computes in fp32 anyway, so the sum costs no more there.
    """
    dtype = torch.promote_types(torch.promote_types(latent.dtype, linear.dtype), torch.float32)
    return latent.to(dtype) + linear.to(dtype)


class _ZeroDiagonalGradient(torch.autograd.Function):
    """Identity forward; the backward zeroes the gradient's diagonal (W's diagonal never moves)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        return weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.diagonal().zero_()
        return grad


class ItemItemLinear(nn.Module):
    """x W for sparse rows x with an (items x items) W of zero diagonal; no bias.

    The product is a sum of W's rows picked by each user's items
    (``F.embedding_bag`` over the CSR arrays, as :class:`recvae.nn.SparseLinear`),
    so its cost is nnz x items, never batch x items x items.
    """

    def __init__(self, n_items: int, trainable: bool, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.n_items = n_items
        self.trainable = trainable
        weight = torch.zeros(n_items, n_items)
        if trainable:
            self.weight = nn.Parameter(weight)
            # Read by recvae.training.make_optimizer: W's own L2 weight decay, not the decoder's.
            self.weight.weight_decay = float(weight_decay)
        else:
            self.register_buffer("weight", weight)

    def _weight(self) -> torch.Tensor:
        return _ZeroDiagonalGradient.apply(self.weight) if self.weight.requires_grad else self.weight

    def forward(self, x: SparseRows, values: torch.Tensor | None = None) -> torch.Tensor:
        """x W, or with ``values`` in place of x's (e.g. after dropout)."""
        weight = self._weight()
        values = x.values if values is None else values
        return F.embedding_bag(x.col_indices, weight, x.crow_indices[:-1], mode="sum",
                               per_sample_weights=values.to(weight.dtype))

    def _gathered(self, x: SparseRows, values: torch.Tensor | None, columns) -> torch.Tensor:
        """x W[:, columns]: the rows of those columns picked by each user's items, summed (nnz x columns)."""
        values = x.values if values is None else values
        rows = self._weight()[:, columns].index_select(0, x.col_indices)
        entries = torch.arange(len(x.col_indices), device=rows.device)
        return F.embedding_bag(entries, rows, x.crow_indices[:-1], mode="sum",
                               per_sample_weights=values.to(rows.dtype))

    def block(self, x: SparseRows, values: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of x W, (batch, stop - start) (a chunk of the loss, a block of scores)."""
        return self._gathered(x, values, slice(start, stop))

    def at(self, x: SparseRows, values: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        """x W at the columns ``items``, (batch, len(items)) (sampled softmax's candidates)."""
        return self._gathered(x, values, items)

    def term_count(self, rows) -> int:
        """Stored weights gathered per item of a block for these rows: one per entry (W is dense)."""
        return int(rows.nnz)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Copy ``weight`` in, its diagonal set to zero."""
        if weight.shape != self.weight.shape:
            raise ValueError(f"item-item weight must be {tuple(self.weight.shape)}; got {tuple(weight.shape)}")
        self.weight.copy_(weight)
        self.weight.diagonal().zero_()


class JointDecoder(nn.Module):
    """RecVAE's linear decoder D z + b, the item-item path x W and its scale s: the decoder part."""

    def __init__(self, latent: nn.Linear, n_items: int, config: JointVAEConfig, form: str = "dense") -> None:
        super().__init__()
        self.latent = latent
        self.paths = config.paths
        self.form = form
        layer = SparseItemItem if form == "sparse" else ItemItemLinear
        self.item_item = layer(n_items, trainable=config.train_linear and config.paths != "vae",
                               weight_decay=config.linear_weight_decay)
        self.base_scale = float(config.linear_scale)
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def weight(self) -> torch.Tensor:
        return self.latent.weight

    @property
    def scale(self) -> torch.Tensor:
        """s, the linear path's weight in the logits."""
        return self.base_scale * torch.exp(self.log_scale)

    def forward(self, z: torch.Tensor, x: SparseRows | None = None,
                linear_values: torch.Tensor | None = None) -> torch.Tensor:
        """Item logits; without ``x`` only the latent path's (what RecVAE's decoder gives).
        ``linear_values`` replace x's values in the linear path (its input dropout)."""
        if self.paths == "linear":
            if x is None:
                raise ValueError("the linear-only path needs the input rows")
            return self.scale * self.item_item(x, linear_values)
        out = self.latent(z)
        if x is None or self.paths == "vae":
            return out
        return fuse_logits(out, self.scale * self.item_item(x, linear_values))


class JointVAENet(RecVAENet):
    """RecVAE's encoder, composite prior and per-user beta, with :class:`JointDecoder` as the decoder."""

    def __init__(self, n_items: int, config: JointVAEConfig = JointVAEConfig(), linear_form: str | None = None) -> None:
        """``linear_form``: ``"dense"`` or ``"sparse"`` (default: the config's, ``"auto"`` taken as dense)."""
        super().__init__(n_items, config)
        form = linear_form or ("dense" if config.linear_form == "auto" else config.linear_form)
        if form not in ("dense", "sparse"):
            raise ValueError(f"linear_form must be 'dense' or 'sparse' for a network; got {form!r}")
        # Wrapping RecVAE's decoder (not a new one) keeps the same random initialisation:
        # with paths="vae" the network is RecVAE's, weight for weight.
        self.decoder = JointDecoder(self.decoder, n_items, config, form)

    def reconstruction_nll(self, z: torch.Tensor, x: SparseRows,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x | joint logits), plus ``vae_loss_weight`` times the latent path's own NLL.

        Under ``item_chunk`` / ``sampled_softmax`` both come from the large-catalogue NLLs
        (:meth:`_item_output_nll`), never from the batch x items logits."""
        c = self.config
        if self.item_output is not None:
            return self._item_output_nll(z, x, generator)
        if c.paths != "both":
            return self.likelihood.nll(self.decoder(z, x, self._linear_values(x, generator)), x)
        latent = self.decoder.latent(z)
        fused = latent if c.fusion_gradient else latent.detach()
        linear = self.decoder.item_item(x, self._linear_values(x, generator))
        nll = self.likelihood.nll(fuse_logits(fused, self.decoder.scale * linear), x)
        if c.vae_loss_weight:
            nll = nll + c.vae_loss_weight * self.likelihood.nll(latent, x)
        return nll

    def _item_output_nll(self, z: torch.Tensor, x: SparseRows, generator: torch.Generator | None) -> torch.Tensor:
        """The joint NLL exact over item blocks (the linear logits added per block) or sampled (the linear
        logits at the candidates only), plus ``vae_loss_weight`` times the latent path's own (chunked or
        sampled) NLL; the latent path's inputs are cut from the joint term unless ``fusion_gradient``."""
        c, output, latent = self.config, self.item_output, self.decoder.latent
        if c.paths == "vae":
            return output(z, latent, x, generator)
        values = self._linear_values(x, generator)
        item_item, scale = self.decoder.item_item, self.decoder.scale
        h, weight, bias = (z, latent.weight, latent.bias) if c.fusion_gradient else \
            (z.detach(), latent.weight.detach(), latent.bias.detach())
        if output.item_chunk is not None:
            nll = joint_chunked_nll(self.likelihood, h, weight, bias, x, output.item_chunk,
                                    lambda start, stop: scale * item_item.block(x, values, start, stop))
        else:
            negatives, log_prob = output.sampler.sample(output.sampled_softmax, generator)
            nll = sampled_softmax_nll(h, weight, bias, x, negatives, log_prob,
                                      sparse_weight_gradient=output.sparse_weight_gradient and c.fusion_gradient,
                                      extra_logits=lambda items: scale * item_item.at(x, values, items))
        if c.vae_loss_weight:
            nll = nll + c.vae_loss_weight * output(z, latent, x, generator)
        return nll

    def _linear_values(self, x: SparseRows, generator: torch.Generator | None) -> torch.Tensor | None:
        # In every training pass, the decoder's included (where RecVAE turns the encoder's dropout
        # off): the scale s and W learn in the decoder passes, and should learn for unseen items.
        p = self.config.linear_input_dropout
        if not (self.training and p and self.config.paths != "vae"):
            return None
        return dropout_values(x.values, p, generator)

    def output(self, z: torch.Tensor, x: SparseRows) -> torch.Tensor:
        """The joint logits (no dropout) for codes z of rows x."""
        return self.decoder(z, x)

    @torch.no_grad()
    def scores(self, x: SparseRows) -> torch.Tensor:
        """The joint logits at the posterior mean (eval mode; the module's mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            mu, _ = self._encode(x, l2_normalised_values(x), None, False)
            return self.likelihood.scores(self.output(mu, x)).float()
        finally:
            self.train(was_training)

    def item_embeddings(self) -> torch.Tensor:
        """Rows of the latent decoder's weight: one latent-sized vector per item."""
        return self.decoder.latent.weight[: self.n_items].detach()
