"""Observation models p(x | z) for a user's item row.

Every likelihood receives the decoder output for a batch of users and the
batch's interactions as sparse triplets (row, column, value). The users x items
data are never densified: each negative log-likelihood splits into one dense
pass over the decoder output (a log-sum-exp, a softplus, a square) plus a
gather at the nonzero entries.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import torch
import torch.nn.functional as F

from recvae.nn.sparse import SparseRows

__all__ = [
    "Likelihood",
    "Multinomial",
    "Bernoulli",
    "Gaussian",
    "GaussianLearnedVariance",
    "LIKELIHOODS",
    "make_likelihood",
]

_LOG_2PI = math.log(2.0 * math.pi)


class Likelihood(ABC):
    """p(x | decoder output). ``outputs_per_item`` decoder outputs per item."""

    name: str = ""
    outputs_per_item: int = 1

    @abstractmethod
    def nll(self, output: torch.Tensor, x: SparseRows) -> torch.Tensor:
        """Negative log-likelihood per user, shape (batch,)."""

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """Ranking scores (monotone in the predicted mean), shape (batch, items)."""
        return output[:, : output.shape[1] // self.outputs_per_item]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Multinomial(Likelihood):
    """Mult-VAE: -sum_i x_ui log softmax(logits_u)_i.

    Equals the multinomial log-likelihood up to the count coefficient, which
    does not depend on the model (as in Liang et al.).
    """

    name = "multinomial"

    def nll(self, output: torch.Tensor, x: SparseRows) -> torch.Tensor:
        return _MultinomialNLL.apply(output.float(), x.row_of_entry, x.col_indices, x.values, x.row_sums())


class _MultinomialNLL(torch.autograd.Function):
    """n_u·logsumexp(l_u) − Σ_i x_ui·l_ui per user, with a hand-written gradient.

    The forward pass computes softmax(l_u) once (one fused kernel) and takes the
    log-normaliser from it, logsumexp(l_u) = max_i l_ui − log max_i softmax(l_u)_i
    (exact: the largest probability is at least 1/I, so it never underflows). The
    backward pass reuses that softmax in place: the gradient is
    g_u·(n_u·softmax(l_u) − x_u), one scaling pass over the B x I matrix and a
    scatter at the nonzeros. Autograd's version of the same formula makes several
    more full passes and B x I buffers (subtract, exp, multiply, a zero-filled
    buffer for the gather, a sum of two gradients); at ML-20M's 20k items they
    were about half of a step's non-matmul time.

    Because the saved softmax becomes the gradient, this node can be
    differentiated once (backward with ``retain_graph=True`` twice is refused).
    """

    @staticmethod
    def forward(ctx, logits, row_of_entry, col_indices, values, row_sums):
        probabilities = torch.softmax(logits, dim=1)
        log_norm = logits.amax(dim=1) - torch.log(probabilities.amax(dim=1))
        picked = logits[row_of_entry, col_indices] * values
        data_term = torch.zeros_like(log_norm).index_add_(0, row_of_entry, picked)
        ctx.save_for_backward(probabilities, row_of_entry, col_indices, values, row_sums)
        ctx.used = False
        return row_sums * log_norm - data_term

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("the multinomial NLL's gradient reuses its saved softmax in place, so it can be "
                               "computed once; recompute the loss instead of retaining the graph")
        ctx.used = True
        probabilities, row_of_entry, col_indices, values, row_sums = ctx.saved_tensors
        grad = probabilities.mul_((grad_output * row_sums).unsqueeze(1))
        grad.index_put_((row_of_entry, col_indices), -(grad_output[row_of_entry] * values), accumulate=True)
        return grad, None, None, None, None


class Bernoulli(Likelihood):
    """Independent Bernoulli per item: binary cross-entropy with logits, summed over all items."""

    name = "bernoulli"

    def nll(self, output: torch.Tensor, x: SparseRows) -> torch.Tensor:
        logits = output.float()
        # BCE(l, x) = softplus(l) - x * l; the first term over every item, the second at nonzeros.
        dense_term = F.softplus(logits).sum(dim=1)
        picked = logits[x.row_of_entry, x.col_indices] * x.values
        return dense_term - torch.zeros_like(dense_term).index_add_(0, x.row_of_entry, picked)


class Gaussian(Likelihood):
    """Gaussian with constant variance sigma^2 (default 1), optionally confidence-weighted.

    With ``confidence`` alpha > 0 an observed entry x_ui counts with precision
    c_ui / sigma^2, c_ui = 1 + alpha x_ui, and an unobserved one with 1 / sigma^2: the
    weighted Gaussian of Liang et al. 2018 (sec. 2.2), with the confidence of Hu et al.
    2008 (implicit ALS's alpha). alpha = 0 is the plain scaled MSE.
    """

    name = "gaussian"

    def __init__(self, variance: float = 1.0, confidence: float = 0.0) -> None:
        if not variance > 0:
            raise ValueError(f"variance must be positive; got {variance}")
        if not confidence >= 0:
            raise ValueError(f"confidence must be >= 0; got {confidence}")
        self.variance = float(variance)
        self.confidence = float(confidence)

    def entry_weights(self, values: torch.Tensor) -> torch.Tensor:
        """c_ui = 1 + alpha x_ui at the observed entries."""
        return 1.0 + self.confidence * values

    def observed_terms(self, values: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """Each observed entry's squared error minus what the all-items sum already counted for it:
        c (x - m)^2 - m^2 (with c = 1: x^2 - 2 x m)."""
        if self.confidence == 0.0:
            return values * values - 2.0 * values * means
        return self.entry_weights(values) * (values - means).square() - means * means

    def constant(self, n_items: int, x: SparseRows) -> torch.Tensor | float:
        """The NLL's part that no parameter moves: I/2 log(2 pi sigma^2) - 1/2 sum_obs log c_ui, per user."""
        const = 0.5 * n_items * (_LOG_2PI + math.log(self.variance))
        if self.confidence == 0.0:
            return const
        logs = torch.log(self.entry_weights(x.values.float()))
        return const - 0.5 * torch.zeros(x.n_rows, dtype=logs.dtype, device=logs.device).index_add_(
            0, x.row_of_entry, logs)

    def nll(self, output: torch.Tensor, x: SparseRows) -> torch.Tensor:
        mean = output if output.dtype == torch.float64 else output.float()  # fp64 stays (gradient checks)
        n_items = mean.shape[1]
        # sum_i w_i (x_i - m_i)^2 = sum_i m_i^2 + sum_{i: x_i != 0} (c_i (x_i - m_i)^2 - m_i^2)
        sq = (mean * mean).sum(dim=1)
        picked = self.observed_terms(x.values.to(mean.dtype), mean[x.row_of_entry, x.col_indices])
        sq = sq.index_add(0, x.row_of_entry, picked)
        return 0.5 * sq / self.variance + self.constant(n_items, x)

    def __repr__(self) -> str:
        extra = f", confidence={self.confidence}" if self.confidence else ""
        return f"Gaussian(variance={self.variance}{extra})"


class GaussianLearnedVariance(Likelihood):
    """Gaussian whose log-variance the decoder predicts per user and item.

    NLL = 0.5 (log 2 pi + log s^2 + (x - m)^2 / s^2) summed over items. The
    log-variance is clamped to [min_log_variance, max_log_variance]: on binary
    data an unbounded variance can shrink towards 0 and the likelihood diverge.
    """

    name = "gaussian_learned"
    outputs_per_item = 2

    def __init__(self, min_log_variance: float = -6.0, max_log_variance: float = 6.0) -> None:
        self.min_log_variance = min_log_variance
        self.max_log_variance = max_log_variance

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance from the decoder output."""
        n_items = output.shape[1] // 2
        mean = output[:, :n_items].float()
        log_var = output[:, n_items:].float().clamp(self.min_log_variance, self.max_log_variance)
        return mean, log_var

    def nll(self, output: torch.Tensor, x: SparseRows) -> torch.Tensor:
        mean, log_var = self.split(output)
        precision = torch.exp(-log_var)
        dense = (log_var + mean * mean * precision).sum(dim=1)
        r, c = x.row_of_entry, x.col_indices
        picked = (x.values * x.values - 2.0 * x.values * mean[r, c]) * precision[r, c]
        dense = dense.index_add(0, r, picked)
        return 0.5 * (dense + mean.shape[1] * _LOG_2PI)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Multinomial, Bernoulli, Gaussian, GaussianLearnedVariance)
}


def make_likelihood(name: str, confidence: float = 0.0) -> Likelihood:
    """The likelihood registered under ``name`` (see :data:`LIKELIHOODS`); ``confidence`` weights the
    Gaussian's observed entries (see :class:`Gaussian`) and must be 0 for the others."""
    try:
        cls = LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
    if confidence:
        if cls is not Gaussian:
            raise ValueError(f"confidence weights the gaussian likelihood only; got likelihood={name!r} with "
                             f"confidence={confidence}: set likelihood='gaussian' or confidence=0")
        return Gaussian(confidence=confidence)
    return cls()
