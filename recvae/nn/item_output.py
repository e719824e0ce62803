"""The training NLL of a VAE's item output layer for large catalogues: full, chunked or sampled.

A net with ``item_chunk`` or ``sampled_softmax`` set in its config holds an
:class:`ItemOutput` and hands it its last hidden activations and its output layer in
place of the full logits:

- ``item_chunk``: the exact NLL over blocks of items (:mod:`recvae.nn.chunked`), never
  holding the batch x items logits; same loss and gradients as the full path.
- ``sampled_softmax``: the sampled-softmax estimate (:mod:`recvae.nn.sampled`), logits
  for the batch's positives and S shared negatives only; multinomial only. Biased by
  O(1/S); see that module for the trade-off.

Scoring (validation, test, serving) always uses the full catalogue. The helpers below
are what the training loops call: :func:`set_item_counts` gives a popularity sampler
its counts, and :func:`mark_sparse_item_gradients` switches the item matrices to sparse
gradients for ``TrainingConfig.sparse_item_updates``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from recvae.nn.chunked import CHUNKED_LIKELIHOODS, chunked_output_nll
from recvae.nn.hyperparams import choice, integer, number, optional, rule
from recvae.nn.likelihoods import Likelihood
from recvae.nn.sampled import NEGATIVE_SAMPLERS, NegativeSampler, sampled_softmax_nll
from recvae.nn.sparse import SparseRows

__all__ = ["ItemOutput", "item_output_for", "check_item_output", "ITEM_OUTPUT_RULES", "set_item_counts",
           "mark_sparse_item_gradients"]

#: the type and range of the output-layer settings every VAE config shares (see :mod:`recvae.nn.hyperparams`);
#: :func:`check_item_output` then checks how they combine.
ITEM_OUTPUT_RULES = {
    "item_chunk": optional(rule(integer, minimum=1)),
    "sampled_softmax": optional(rule(integer, minimum=1)),
    "negative_sampler": rule(choice, options=NEGATIVE_SAMPLERS),
    "negative_power": rule(number, minimum=0.0),
}


def check_item_output(likelihood: str, item_chunk: int | None, sampled_softmax: int | None,
                      negative_sampler: str, negative_power: float) -> None:
    """Refuses settings of the output-layer NLL that cannot run (one-line ValueErrors, for the configs)."""
    if item_chunk is not None:
        if isinstance(item_chunk, bool) or int(item_chunk) != item_chunk or item_chunk < 1:
            raise ValueError(f"item_chunk must be a positive integer or None; got {item_chunk!r}")
        if likelihood not in CHUNKED_LIKELIHOODS:
            raise ValueError(f"item_chunk supports the {', '.join(CHUNKED_LIKELIHOODS)} likelihoods; "
                             f"got {likelihood!r}")
    if sampled_softmax is not None:
        if isinstance(sampled_softmax, bool) or int(sampled_softmax) != sampled_softmax or sampled_softmax < 1:
            raise ValueError(f"sampled_softmax must be a positive number of negatives or None; got {sampled_softmax!r}")
        if likelihood != "multinomial":
            raise ValueError(f"sampled_softmax needs the multinomial likelihood; got {likelihood!r}")
        if item_chunk is not None:
            raise ValueError("item_chunk and sampled_softmax are alternatives (exact or sampled); set one")
    if negative_sampler not in NEGATIVE_SAMPLERS:
        raise ValueError(f"negative_sampler must be one of {NEGATIVE_SAMPLERS}; got {negative_sampler!r}")
    if not negative_power >= 0:
        raise ValueError(f"negative_power must be >= 0; got {negative_power}")


class ItemOutput(nn.Module):
    """The chunked or sampled NLL of an output layer (built by a net whose config asks for one).

    Holds no parameters and no persistent state: a net's state dict is the same with
    or without it, so a model trained chunked or sampled loads and scores like any other.
    """

    def __init__(self, likelihood: Likelihood, n_items: int, *, item_chunk: int | None = None,
                 sampled_softmax: int | None = None, negative_sampler: str = "uniform",
                 negative_power: float = 0.75) -> None:
        super().__init__()
        check_item_output(likelihood.name, item_chunk, sampled_softmax, negative_sampler, negative_power)
        if (item_chunk is None) == (sampled_softmax is None):
            raise ValueError("ItemOutput needs exactly one of item_chunk and sampled_softmax")
        self.likelihood = likelihood
        self.item_chunk = None if item_chunk is None else int(item_chunk)
        self.sampled_softmax = None if sampled_softmax is None else int(sampled_softmax)
        self.sampler = None if sampled_softmax is None else NegativeSampler(n_items, negative_sampler, negative_power)
        #: gather the output rows with a sparse gradient (sampled softmax under sparse_item_updates).
        self.sparse_weight_gradient = False

    def forward(self, h: torch.Tensor, layer: nn.Linear, x: SparseRows,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x | layer(h)) per user, (batch,): exact over item blocks, or the sampled estimate."""
        if self.item_chunk is not None:
            return chunked_output_nll(self.likelihood, h, layer.weight, layer.bias, x, self.item_chunk)
        negatives, log_prob = self.sampler.sample(self.sampled_softmax, generator)
        return sampled_softmax_nll(h, layer.weight, layer.bias, x, negatives, log_prob,
                                   sparse_weight_gradient=self.sparse_weight_gradient)

    def extra_repr(self) -> str:
        return f"item_chunk={self.item_chunk}, sampled_softmax={self.sampled_softmax}"


def item_output_for(likelihood: Likelihood, n_items: int, config) -> ItemOutput | None:
    """The :class:`ItemOutput` a net's config asks for (``item_chunk`` or ``sampled_softmax``), or None."""
    if config.item_chunk is None and config.sampled_softmax is None:
        return None
    return ItemOutput(likelihood, n_items, item_chunk=config.item_chunk, sampled_softmax=config.sampled_softmax,
                      negative_sampler=config.negative_sampler, negative_power=config.negative_power)


def set_item_counts(net: nn.Module, counts: np.ndarray | torch.Tensor) -> None:
    """Give every negative sampler in ``net`` the training matrix's interactions per item (no-op without one)."""
    for module in net.modules():
        if isinstance(module, NegativeSampler):
            module.set_item_counts(counts)


def mark_sparse_item_gradients(input_layer: nn.Module, output_layer: nn.Linear,
                               item_output: ItemOutput | None) -> list[nn.Parameter]:
    """Switch a net's item matrices to sparse gradients; returns the parameters that now get them.

    The sparse input layer (a :class:`recvae.nn.vae.SparseLinear`, its ``sparse`` flag)
    always; the output layer's weight only under sampled softmax, where a step touches
    the candidates' rows alone (a chunked or full softmax touches every row). Each
    returned parameter carries ``sparse_grad = True``, which
    :func:`recvae.training.make_optimizer` reads to give it a sparse Adam.
    """
    input_layer.sparse = True
    params = [input_layer.weight]
    if item_output is not None and item_output.sampled_softmax is not None:
        item_output.sparse_weight_gradient = True
        params.append(output_layer.weight)
    for param in params:
        param.sparse_grad = True
    return params
