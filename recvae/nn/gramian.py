"""The Gaussian NLL of a whole catalogue without its batch x items means: the Gramian form.

Under a Gaussian likelihood (constant variance, optionally confidence-weighted, see
:class:`recvae.nn.likelihoods.Gaussian`) the output layer's means are m_u = W h_u + b, and
the sum over *every* item that the NLL needs is a quadratic form in h_u:

    sum_i m_ui^2 = h_u^T (W^T W) h_u + 2 h_u . (W^T b) + b . b

so a step costs O(I d^2) for the d x d Gramian W^T W plus O(nnz d) for the observed
entries, instead of O(B I d) and a B x I block for the means -- the same trick that lets
implicit's ALS weigh every unobserved item (Hu et al. 2008) at the price of a Gramian.
The result is the exact NLL (tests pin it against ``likelihood.nll`` of the full means),
and autograd gives its exact gradients. It pays when d is smaller than the batch, and it
never holds more than I x d: on a 300k-item catalogue the full means of a 500-user batch
are 600 MB, the Gramian 64 KB.

For a *linear* decoder (z straight to the items) the same Gramian gives each user's exact
posterior p(z | x) in closed form (:func:`exact_gaussian_posterior`): what the encoder's
q(z | x) approximates, solved as ALS solves a user, and what ``posterior="exact"`` scores with.

The form runs in fp32 (or fp64 for fp64 inputs) whatever the autocast: the all-items
sum and the observed corrections cancel, and a bf16 Gramian would lose what is left.
"""

from __future__ import annotations

import numpy as np
import torch

from recvae.nn.chunked import check_output_layer
from recvae.nn.likelihoods import Gaussian, Likelihood
from recvae.nn.sparse import SparseRows

__all__ = ["gramian_applies", "gramian_gaussian_nll", "exact_gaussian_posterior", "output_gramian"]


def _wide(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision inputs, fp64 kept (gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


def gramian_applies(likelihood: Likelihood) -> bool:
    """Whether :func:`gramian_gaussian_nll` computes ``likelihood``'s NLL (the constant-variance Gaussian,
    exact type: a subclass may change the NLL)."""
    return type(likelihood) is Gaussian


def gramian_gaussian_nll(likelihood: Gaussian, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         x: SparseRows) -> torch.Tensor:
    """-log p(x_u | m_u = h_u W^T + b) per user, (batch,), exactly, without the batch x items means.

    Equals ``likelihood.nll(F.linear(h, weight, bias), x)``; differentiable in ``h``, ``weight``
    and ``bias``.
    """
    if not gramian_applies(likelihood):
        raise ValueError(f"the Gramian form computes the constant-variance gaussian likelihood; got {likelihood!r}")
    check_output_layer(h, weight, bias, x)
    wide = _wide(weight.dtype)
    with torch.autocast(h.device.type, enabled=False):
        h, weight, bias = h.to(wide), weight.to(wide), bias.to(wide)
        gram, base = output_gramian(weight, bias)
        all_items = ((h @ gram) * h).sum(dim=1) - 2.0 * (h @ base) + bias.square().sum()
        rows, cols = x.row_of_entry, x.col_indices
        means = (h[rows] * weight[cols]).sum(dim=1) + bias[cols]
        observed = likelihood.observed_terms(x.values.to(wide), means)
        squares = all_items.index_add(0, rows, observed)
        return 0.5 * squares / likelihood.variance + likelihood.constant(weight.shape[0], x)


def output_gramian(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T W, -W^T b) of an output layer, in fp32 (fp64 for fp64 weights): the all-items part of the
    NLL, and what every user's exact posterior shares (a net may keep it while its weights do not
    change). Differentiable; call it under ``torch.no_grad()`` to keep it."""
    wide = _wide(weight.dtype)
    with torch.autocast(weight.device.type, enabled=False):
        weight, bias = weight.to(wide), bias.to(wide)
        return weight.t() @ weight, -(weight.t() @ bias)


def exact_gaussian_posterior(likelihood: Gaussian, weight: torch.Tensor, bias: torch.Tensor, x: SparseRows,
                             budget: int = 1 << 24,
                             gramian: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact posterior p(z | x_u) of a linear-Gaussian decoder under the prior N(0, I): (mu, log_var) per user.

    With means m = W z + b and the (confidence-weighted) Gaussian likelihood, log p(x_u | z) is
    quadratic in z, so the posterior is Gaussian with precision P_u = I + M_u / sigma^2 and mean
    P_u^-1 r_u / sigma^2, where M_u = sum_i w_ui w_i w_i^T = W^T W + sum_{observed} (c_ui - 1) w_i w_i^T
    and r_u = sum_i w_ui (x_ui - b_i) w_i (w_ui = c_ui on observed entries, 1 elsewhere): the same
    normal equations as ALS's user solve, from the Gramian. ``log_var`` is the log of diag(P_u^-1),
    each dimension's marginal. Users are solved in blocks of at most ``budget`` floats of outer
    products; fp32 (fp64 for fp64 weights) whatever the autocast. ``gramian``: the layer's
    :func:`output_gramian`, when the caller keeps it.
    """
    if not gramian_applies(likelihood):
        raise ValueError(f"the exact posterior needs the constant-variance gaussian likelihood; got {likelihood!r}")
    if weight.shape[0] != x.n_cols:
        raise ValueError(f"the layer has {weight.shape[0]} outputs but the rows have {x.n_cols} items")
    wide = _wide(weight.dtype)
    d = weight.shape[1]
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        weight, bias = weight.to(wide), bias.to(wide)
        gram, base = output_gramian(weight, bias) if gramian is None else gramian
        eye = torch.eye(d, dtype=wide, device=weight.device)
        rows, cols, values = x.row_of_entry, x.col_indices, x.values.to(wide)
        confidence = likelihood.entry_weights(values)
        extra = confidence - 1.0  # c - 1 >= 0
        # r_u = -W^T b + sum_obs (c (x - b) + b) w_i
        target = confidence * (values - bias[cols]) + bias[cols]
        mu = torch.empty(x.n_rows, d, dtype=wide, device=weight.device)
        log_var = torch.empty_like(mu)
        # Entries up to and including each user; a block takes users while their entries fit the budget.
        ends = np.cumsum(torch.bincount(rows, minlength=x.n_rows).cpu().numpy())
        per_block = budget // (d * d)
        start_user, start_entry = 0, 0
        while start_user < x.n_rows:
            stop_user = max(start_user + 1, int(np.searchsorted(ends, start_entry + per_block, side="right")))
            stop_entry = int(ends[stop_user - 1])
            local = rows[start_entry:stop_entry] - start_user
            picked = weight[cols[start_entry:stop_entry]]
            scaled = picked * extra[start_entry:stop_entry, None].sqrt()
            n = stop_user - start_user
            m = gram.expand(n, d, d).clone()
            m.index_add_(0, local, scaled[:, :, None] * scaled[:, None, :])
            r = base.expand(n, d).clone().index_add_(0, local, picked * target[start_entry:stop_entry, None])
            precision = eye + m / likelihood.variance
            chol = torch.linalg.cholesky(precision)
            mu[start_user:stop_user] = torch.cholesky_solve((r / likelihood.variance)[:, :, None], chol)[:, :, 0]
            log_var[start_user:stop_user] = torch.log(torch.cholesky_inverse(chol).diagonal(dim1=1, dim2=2))
            start_user, start_entry = stop_user, stop_entry
    return mu, log_var
