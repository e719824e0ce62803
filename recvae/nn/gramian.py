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

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from recvae.nn.chunked import check_output_layer
from recvae.nn.likelihoods import Gaussian, Likelihood
from recvae.nn.sparse import SparseRows, csr_tensor

__all__ = ["gramian_applies", "gramian_gaussian_nll", "exact_gaussian_posterior", "exact_decoder_update",
           "EXACT_BLOCK_FLOATS", "output_gramian"]


#: floats of outer products (entries x d^2) an exact-posterior block holds at most.
EXACT_BLOCK_FLOATS = 1 << 24


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
                             budget: int = EXACT_BLOCK_FLOATS,
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
    _check_exact(likelihood, weight, x)
    d = weight.shape[1]
    wide = _wide(weight.dtype)
    mu = torch.empty(x.n_rows, d, dtype=wide, device=weight.device)
    log_var = torch.empty_like(mu)
    for block in _posterior_blocks(likelihood, weight, bias, x, budget, gramian):
        mu[block.users] = block.mu
        log_var[block.users] = torch.log(torch.cholesky_inverse(block.chol).diagonal(dim1=1, dim2=2))
    return mu, log_var


def exact_decoder_update(likelihood: Gaussian, weight: torch.Tensor, bias: torch.Tensor, x: SparseRows,
                         l2: float = 1.0, budget: int = EXACT_BLOCK_FLOATS) -> torch.Tensor:
    """One step of exact coordinate ascent on the ELBO of a linear-Gaussian decoder: the new W (items x d).

    With q(z_u) the exact posterior N(mu_u, S_u) of every user under the current W (the E-step,
    as :func:`exact_gaussian_posterior`), the expected log-likelihood is quadratic in each item's
    row w_i, and its maximiser under the penalty ``l2/2 ||w_i||^2`` is the weighted ridge solution

        w_i = (sum_u w_ui E[z_u z_u^T] + sigma^2 l2 I)^-1  sum_u w_ui (x_ui - b_i) mu_u,
        E[z_u z_u^T] = S_u + mu_u mu_u^T,

    with w_ui = c_ui on observed entries and 1 elsewhere: ALS's item solve with each user's
    posterior second moment in place of its point estimate (variational EM). As in the E-step,
    the sum over every user is one d x d matrix plus the observed users' (c_ui - 1) corrections,
    so a step costs O(nnz d^2 + (users + items) d^3) and holds every user's second moment
    (users x d^2 floats); the ELBO (the marginal likelihood, the E-step being exact) never
    decreases (a test checks it). The bias b is kept. fp32 (fp64 for fp64 weights) whatever
    the autocast.
    """
    _check_exact(likelihood, weight, x)
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0; got {l2}")
    n_items, d = weight.shape
    wide = _wide(weight.dtype)
    device = weight.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        moments = torch.empty(x.n_rows, d * d, dtype=wide, device=device)  # E[z_u z_u^T], flattened
        mu = torch.empty(x.n_rows, d, dtype=wide, device=device)
        for block in _posterior_blocks(likelihood, weight, bias, x, budget, None):
            mu[block.users] = block.mu
            moments[block.users] = (torch.cholesky_inverse(block.chol)
                                    + block.mu[:, :, None] * block.mu[:, None, :]).reshape(-1, d * d)
        ridge = moments.sum(dim=0).reshape(d, d) + likelihood.variance * l2 * torch.eye(d, dtype=wide, device=device)
        offset = bias.to(wide)[:, None] * mu.sum(dim=0)  # the unobserved cells' share of each item's target
        # The observed entries by item: rows of an items x users matrix, one for each weighting.
        order = torch.argsort(x.col_indices, stable=True)
        crow = torch.zeros(n_items + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.cumsum(torch.bincount(x.col_indices, minlength=n_items), dim=0)
        users = x.row_of_entry[order]
        extra, target = (terms[order] for terms in _entry_terms(likelihood, bias.to(wide), x))
        new = torch.empty(n_items, d, dtype=wide, device=device)
        step = max(1, budget // (d * d))
        for start in range(0, n_items, step):
            stop = min(n_items, start + step)
            first, last = int(crow[start]), int(crow[stop])
            local_crow = crow[start:stop + 1] - first

            def by_item(per_entry: torch.Tensor) -> torch.Tensor:
                return csr_tensor(local_crow, users[first:last], per_entry[first:last], (stop - start, x.n_rows))

            system = (by_item(extra) @ moments).reshape(-1, d, d) + ridge
            rhs = by_item(target) @ mu - offset[start:stop]
            new[start:stop] = torch.linalg.solve(system, rhs[:, :, None])[:, :, 0]
    return new.to(weight.dtype)


class _PosteriorBlock(NamedTuple):
    users: slice
    chol: torch.Tensor  # Cholesky factors of the posterior precisions
    mu: torch.Tensor  # posterior means


def _check_exact(likelihood: Likelihood, weight: torch.Tensor, x: SparseRows) -> None:
    if not gramian_applies(likelihood):
        raise ValueError(f"the exact posterior needs the constant-variance gaussian likelihood; got {likelihood!r}")
    if weight.shape[0] != x.n_cols:
        raise ValueError(f"the layer has {weight.shape[0]} outputs but the rows have {x.n_cols} items")


def _entry_terms(likelihood: Gaussian, bias: torch.Tensor, x: SparseRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per observed entry, in ``bias``'s dtype: c - 1 (its extra weight, >= 0) and c (x - b) + b (its term of
    sum_i w_ui (x_ui - b_i) beside the all-items -b_i), c its confidence weight."""
    values = x.values.to(bias.dtype)
    confidence = likelihood.entry_weights(values)
    item_bias = bias[x.col_indices]
    return confidence - 1.0, confidence * (values - item_bias) + item_bias


def _posterior_blocks(likelihood: Gaussian, weight: torch.Tensor, bias: torch.Tensor, x: SparseRows,
                      budget: int, gramian: tuple[torch.Tensor, torch.Tensor] | None) -> Iterator[_PosteriorBlock]:
    """The exact posteriors of consecutive blocks of users, each block's outer products within ``budget`` floats."""
    wide = _wide(weight.dtype)
    d = weight.shape[1]
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        weight, bias = weight.to(wide), bias.to(wide)
        gram, base = output_gramian(weight, bias) if gramian is None else gramian
        eye = torch.eye(d, dtype=wide, device=weight.device)
        rows, cols = x.row_of_entry, x.col_indices
        extra, target = _entry_terms(likelihood, bias, x)
        # Entries up to and including each user; a block takes users while their entries fit the budget.
        crow = x.crow_indices
        ends = crow[1:].cpu().numpy()
        per_block = budget // (d * d)
        start_user, start_entry = 0, 0
        while start_user < x.n_rows:
            stop_user = max(start_user + 1, int(np.searchsorted(ends, start_entry + per_block, side="right")))
            stop_entry = int(ends[stop_user - 1])
            entries = slice(start_entry, stop_entry)
            local = rows[entries] - start_user
            picked = weight[cols[entries]]
            scaled = picked * extra[entries, None].sqrt()
            n = stop_user - start_user
            # Each user's sum of its entries' outer products: a users x entries segment-sum matrix times
            # the outer products (an index_add of d^2-wide slices runs ~20x slower).
            segments = csr_tensor(crow[start_user:stop_user + 1] - start_entry,
                                  torch.arange(stop_entry - start_entry, device=weight.device),
                                  torch.ones(stop_entry - start_entry, dtype=wide, device=weight.device),
                                  (n, stop_entry - start_entry))
            m = (segments @ (scaled[:, :, None] * scaled[:, None, :]).reshape(-1, d * d)).reshape(n, d, d) + gram
            r = base.expand(n, d).clone().index_add_(0, local, picked * target[entries, None])
            chol = torch.linalg.cholesky(eye + m / likelihood.variance)
            mu = torch.cholesky_solve((r / likelihood.variance)[:, :, None], chol)[:, :, 0]
            yield _PosteriorBlock(slice(start_user, stop_user), chol, mu)
            start_user, start_entry = stop_user, stop_entry
