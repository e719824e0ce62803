"""The exact likelihood of a catalogue-sized output layer, computed over blocks of items.

The full path (``likelihood.nll(layer(h), x)``) materialises the batch x items logits,
and the multinomial's softmax and gradient beside them: at a million items and 500
users that is 2 GB per buffer. Here the per-user NLL is computed from the decoder's
last hidden activations ``h`` (B x d), the output layer's weight ``W`` (I x d, the
``nn.Linear`` layout) and bias ``b`` over blocks of ``chunk`` items:

- forward: each block's logits ``h W[blk]^T + b[blk]`` (B x chunk) are formed, their
  dense term accumulated (the multinomial's log-normaliser by an online log-sum-exp:
  a running max and a running sum of exponentials per user; the Bernoulli's softplus
  sum; the Gaussian's sum of squares) and the block's nonzeros gathered, then the
  block is dropped;
- backward: each block's logits are recomputed, turned into the gradient with respect
  to them in place, and multiplied out into ``grad_h``, ``grad_W[blk]`` and
  ``grad_b[blk]``.

So the extra memory is O(B x chunk), not O(B x I), at the price of the forward logits'
matmul done twice (three B x d x I matmuls become four). The result equals the full
path up to float rounding (the summation order differs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recvae.nn.likelihoods import Bernoulli, Gaussian, Likelihood, Multinomial
from recvae.nn.sparse import SparseRows

__all__ = ["CHUNKED_LIKELIHOODS", "chunked_output_nll", "check_output_layer"]

#: likelihoods whose NLL :func:`chunked_output_nll` computes (those with one output per item
#: and a dense term that is a per-item sum, or the multinomial's log-sum-exp).
CHUNKED_LIKELIHOODS = ("multinomial", "bernoulli", "gaussian")

_LOG_2PI = math.log(2.0 * math.pi)


def chunked_output_nll(likelihood: Likelihood, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       x: SparseRows, chunk: int) -> torch.Tensor:
    """-log p(x_u | logits_u = h_u W^T + b) per user, (batch,), over blocks of ``chunk`` items.

    Equals ``likelihood.nll(F.linear(h, weight, bias), x)`` for the multinomial, the
    Bernoulli and the constant-variance Gaussian, while never holding more than one
    batch x ``chunk`` block of logits (see the module docstring). Differentiable with
    respect to ``h``, ``weight`` and ``bias``; gradients are computed only for those
    that require them (RecVAE's phases freeze one side). Under autocast the blocks'
    matmuls run in the autocast dtype and the likelihood in fp32, as on the full path.
    """
    kind = _kind(likelihood)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    check_output_layer(h, weight, bias, x)
    if kind == "gaussian" and likelihood.confidence:
        raise ValueError("the chunked NLL computes the unweighted gaussian; a confidence-weighted one goes "
                         "through recvae.nn.gramian.gramian_gaussian_nll")
    variance = likelihood.variance if kind == "gaussian" else 1.0
    return _ChunkedOutputNLL.apply(h, weight, bias, x.row_of_entry, x.col_indices, x.values, x.row_sums(),
                                   kind, variance, int(chunk))


def check_output_layer(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, x: SparseRows) -> None:
    """Refuses an output layer (h, W, b) whose shapes do not fit each other or the rows' items."""
    if weight.ndim != 2 or h.ndim != 2 or weight.shape[1] != h.shape[1] or bias.shape != weight.shape[:1]:
        raise ValueError(f"shapes do not fit an output layer: h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}")
    if weight.shape[0] != x.n_cols:
        raise ValueError(f"the layer has {weight.shape[0]} outputs but the rows have {x.n_cols} items")


def _kind(likelihood: Likelihood) -> str:
    # Exact types: a subclass may change the NLL (e.g. a learned variance) and must not be chunked as its parent.
    for cls in (Multinomial, Bernoulli, Gaussian):
        if type(likelihood) is cls:
            return cls.name
    raise ValueError(f"the chunked likelihood supports {', '.join(CHUNKED_LIKELIHOODS)}; got {likelihood.name!r}")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision logits (as the full path's ``.float()``); fp64 stays fp64 (gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _ChunkedOutputNLL(torch.autograd.Function):
    """NLL_u = dense(l_u) - sum_i c_ui l_ui + const_u over item blocks, l = h W^T + b.

    ``dense`` is n_u logsumexp (multinomial), sum softplus (Bernoulli) or
    sum l^2 / (2 sigma^2) (Gaussian); c = x (multinomial, Bernoulli) or x / sigma^2
    (Gaussian); const_u = sum x^2 / (2 sigma^2) + I/2 (log 2 pi + log sigma^2) for the
    Gaussian, 0 otherwise. d NLL_u / d l_ui = dense'(l_ui) - c_ui, with dense' =
    n_u softmax, sigmoid, l / sigma^2.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, row_of_entry, col_indices, values, row_sums, kind, variance, chunk):
        n_rows, n_items = h.shape[0], weight.shape[0]
        # The nonzeros sorted by item, so each block's are one contiguous run (bounds read once).
        order = torch.argsort(col_indices)
        rows, cols = row_of_entry[order], col_indices[order]
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        coef = values[order].to(acc)
        if kind == "gaussian":
            coef = coef / variance
        starts = torch.arange(0, n_items + chunk, chunk, device=cols.device).clamp_(max=n_items)
        bounds = torch.searchsorted(cols, starts).tolist()
        data = torch.zeros(n_rows, dtype=acc, device=h.device)
        dense = torch.zeros(n_rows, dtype=acc, device=h.device)
        running_max = torch.full((n_rows,), -math.inf, dtype=acc, device=h.device)
        for block, start in enumerate(range(0, n_items, chunk)):
            stop = min(start + chunk, n_items)
            logits = _wide(F.linear(h, weight[start:stop], bias[start:stop]))
            a, b = bounds[block], bounds[block + 1]
            if b > a:
                data.index_add_(0, rows[a:b], logits[rows[a:b], cols[a:b] - start] * coef[a:b])
            if kind == "multinomial":
                new_max = torch.maximum(running_max, logits.amax(dim=1))
                dense = dense * torch.exp(running_max - new_max) + logits.sub_(new_max[:, None]).exp_().sum(dim=1)
                running_max = new_max
            elif kind == "bernoulli":
                dense += F.softplus(logits).sum(dim=1)
            else:
                dense += logits.square_().sum(dim=1) * (0.5 / variance)
        row_sums = row_sums.to(acc)
        if kind == "multinomial":
            log_norm = running_max + torch.log(dense)
            nll = row_sums * log_norm - data
        else:
            log_norm = dense.new_empty(0)
            nll = dense - data
            if kind == "gaussian":
                squares = torch.zeros_like(nll).index_add_(0, rows, coef * coef * (0.5 * variance))
                nll = nll + squares + 0.5 * n_items * (_LOG_2PI + math.log(variance))
        ctx.save_for_backward(h, weight, bias, log_norm, rows, cols, coef, row_sums)
        ctx.kind, ctx.variance, ctx.chunk, ctx.bounds = kind, variance, chunk, bounds
        ctx.autocast = _autocast_state(h.device.type)
        return nll

    @staticmethod
    def backward(ctx, grad_output):
        h, weight, bias, log_norm, rows, cols, coef, row_sums = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        kind, chunk, bounds = ctx.kind, ctx.chunk, ctx.bounds
        n_items = weight.shape[0]
        grad_output = grad_output.to(coef.dtype)
        if kind == "multinomial":
            row_scale = grad_output * row_sums
        elif kind == "bernoulli":
            row_scale = grad_output
        else:
            row_scale = grad_output / ctx.variance
        entry_grad = -(grad_output[rows] * coef)
        grad_h = torch.zeros(h.shape, dtype=coef.dtype, device=h.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for block, start in enumerate(range(0, n_items, chunk)):
                stop = min(start + chunk, n_items)
                w_block = weight[start:stop]
                grad = _wide(F.linear(h, w_block, bias[start:stop]))
                if kind == "multinomial":
                    grad.sub_(log_norm[:, None]).exp_()
                elif kind == "bernoulli":
                    grad.sigmoid_()
                grad.mul_(row_scale[:, None])
                a, b = bounds[block], bounds[block + 1]
                if b > a:
                    grad.index_put_((rows[a:b], cols[a:b] - start), entry_grad[a:b], accumulate=True)
                if need_h:
                    grad_h += grad @ w_block
                if need_w:
                    grad_w[start:stop] = grad.t() @ h
                if need_b:
                    grad_b[start:stop] = grad.sum(dim=0)
        if grad_h is not None:
            grad_h = grad_h.to(h.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None
