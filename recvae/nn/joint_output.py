"""The joint model's NLL over blocks of items: the linear path's logits added block by block.

:mod:`recvae.nn.chunked` computes a one-layer decoder's exact NLL a block of items at a
time with a hand-written gradient; the joint logits ``h Dᵀ + b + s · x W`` add a second
path whose block ``s · x W[:, start:stop]`` comes from its own module (dense or sparse W).
Here each block's contribution to the NLL -- its log-sum-exp (multinomial), its softplus
sum (Bernoulli) or its squares (Gaussian), and its data term at the batch's positives --
is computed under activation checkpointing: only the block's inputs are kept, and the
backward pass computes the block's logits again. The batch x items logits are never held;
the peak is one batch x block of logits (and its gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from recvae.nn.chunked import CHUNKED_LIKELIHOODS
from recvae.nn.likelihoods import Bernoulli, Gaussian, Likelihood, Multinomial
from recvae.nn.sparse import SparseRows

__all__ = ["joint_chunked_nll"]

_LOG_2PI = math.log(2.0 * math.pi)


def _kind(likelihood: Likelihood) -> str:
    for cls in (Multinomial, Bernoulli, Gaussian):
        if type(likelihood) is cls:
            return cls.name
    raise ValueError(f"item_chunk supports the {', '.join(CHUNKED_LIKELIHOODS)} likelihoods; got {likelihood.name!r}")


def joint_chunked_nll(likelihood: Likelihood, h: torch.Tensor | None, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, x: SparseRows, chunk: int,
                      linear_block: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """-log p(x | h Wᵀ + b + linear) per user, (batch,), a block of ``chunk`` items at a time.

    ``linear_block(start, stop)`` gives the second path's logits for items [start, stop),
    (batch, stop - start); ``h`` None leaves the first path out. Equal to the likelihood's
    ``nll`` of the full logits up to float rounding, gradients included.
    """
    kind = _kind(likelihood)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    n_items = x.n_cols
    variance = likelihood.variance if kind == "gaussian" else 1.0
    order = torch.argsort(x.col_indices)  # the positives by item: each block's are one run
    rows, cols = x.row_of_entry[order], x.col_indices[order]
    coef = x.values[order].float() / variance
    bounds = torch.searchsorted(cols, torch.arange(0, n_items + chunk, chunk, device=cols.device)
                                .clamp_(max=n_items)).tolist()

    def block(start: int, stop: int, a: int, b: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = linear_block(start, stop).float()
        if h is not None:
            logits = logits + F.linear(h, weight[start:stop], bias[start:stop]).float()
        data = torch.zeros(x.n_rows, dtype=logits.dtype, device=logits.device)
        data = data.index_add(0, rows[a:b], logits[rows[a:b], cols[a:b] - start] * coef[a:b])
        if kind == "multinomial":
            return torch.logsumexp(logits, dim=1), data
        if kind == "bernoulli":
            return F.softplus(logits).sum(dim=1), data
        return logits.square().sum(dim=1) * (0.5 / variance), data

    inputs = tuple(t for t in (h, weight, bias) if t is not None)
    dense, data = [], []
    for index, start in enumerate(range(0, n_items, chunk)):
        stop = min(start + chunk, n_items)
        a, b = bounds[index], bounds[index + 1]
        if torch.is_grad_enabled():
            part = checkpoint(block, start, stop, a, b, *inputs, use_reentrant=False, preserve_rng_state=False)
        else:
            part = block(start, stop, a, b)
        dense.append(part[0])
        data.append(part[1])
    data_term = torch.stack(data).sum(dim=0)
    if kind == "multinomial":
        return x.row_sums().float() * torch.logsumexp(torch.stack(dense), dim=0) - data_term
    nll = torch.stack(dense).sum(dim=0) - data_term
    if kind == "gaussian":
        squares = torch.zeros_like(nll).index_add_(0, rows, coef * coef * (0.5 * variance))
        nll = nll + squares + 0.5 * n_items * (_LOG_2PI + math.log(variance))
    return nll
