"""Sampled softmax for the multinomial likelihood: logits for the batch's items and a sample only.

The multinomial NLL of user u is n_u log Z_u - sum_i x_ui l_ui with
Z_u = sum over all I items of exp(l_uj): the log-normaliser needs every logit. Sampled
softmax estimates Z_u from a few:

    Z_u ~ Z^_u = sum_{j in P} exp(l_uj) + sum_{j in N \\ P} k_j / (S q_j) * exp(l_uj)

- P: every item that is a positive of some user of the batch (their logits are needed
  for the data term anyway), counted exactly for every user of the batch;
- N: S negatives drawn with replacement from the proposal q, shared by the batch;
  k_j is how often item j was drawn, so S q_j is its expected count. Draws that hit an
  item of P ("accidental hits") are dropped: P is already counted exactly.

Written as logits, Z^_u is a log-sum-exp over the candidates P and N \\ P with each
sampled item's logit shifted by log k_j - log(S q_j): the "log-Q correction" (a
positive's expected count is 1, so its shift is 0). E[k_j] = S q_j makes Z^_u an
unbiased estimate of Z_u, for any proposal that gives every item q_j > 0.

**Bias and variance.** The loss uses log Z^_u, and the gradient is a self-normalised
importance-sampling estimate, n_u exp(l'_uj) / Z^_u: a ratio, so it is consistent but
biased (Jensen's inequality), by O(1/S) asymptotically, and the bias shrinks as S grows
or as P covers more of Z's mass. Its constant is set by how heavy-tailed the weights
k_j / (S q_j) are, i.e. by how well q follows the model's softmax exp(l_uj) / Z_u:

- a proposal close to the softmax (popularity when the model ranks by popularity)
  gives a small bias and variance: on a 200-item Zipf toy (tests/test_item_output.py)
  the expected gradient is within about 2% of the full softmax's at S = 50;
- a proposal more peaked than the softmax (popularity ** 1 while the logits follow
  popularity ** 0.5 plus noise) gives the rare items huge weights: measured 24-39%
  relative error of the expected gradient (of h, W and b) at S = 40, 16-28% at
  S = 160, 7-12% at S = 640 on the same toy;
- uniform never over-weights a rare item but rarely draws the items that carry Z's
  mass once the model has learned popularity (high variance), and it wastes few
  draws on accidental hits; popularity draws the heavy items often but loses more
  draws to hits with P.

Without the correction (``log_q_correction=False``: shift log k_j only, i.e. each draw
adds exp(l_uj)), E[Z^_u] weighs item j by S q_j instead of 1: under a popularity
proposal the popular items' logits are pushed down too hard and the rare ones' too
little, a bias that does not vanish with S (28-59% at S = 50 and 100 on the toy above).
Per step the cost is B x (|P| + S) logits instead of B x I, and only those rows of
the output layer get a gradient.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from recvae.nn.sparse import SparseRows

__all__ = ["NEGATIVE_SAMPLERS", "NegativeSampler", "sampled_softmax_nll"]

#: proposals for the negatives: ``uniform`` over the items, or ``popularity`` (count ** power).
NEGATIVE_SAMPLERS = ("uniform", "popularity")


class NegativeSampler(nn.Module):
    """Draws a batch's shared negatives and knows each item's proposal log-probability.

    ``popularity`` draws item j with probability proportional to max(count_j, 1) ** power,
    counts being the item's interactions in the training matrix, set by
    :meth:`set_item_counts` before training (the training loops do, see
    :func:`recvae.nn.item_output.set_item_counts`); an item never seen still counts
    once, so every item keeps q_j > 0 and the estimator stays consistent. The
    cumulative distribution is a non-persistent buffer: it moves with the net's
    device but is not part of its state dict (it is rebuilt from the data).
    """

    def __init__(self, n_items: int, kind: str = "uniform", power: float = 0.75) -> None:
        super().__init__()
        if kind not in NEGATIVE_SAMPLERS:
            raise ValueError(f"negative_sampler must be one of {NEGATIVE_SAMPLERS}; got {kind!r}")
        self.n_items, self.kind, self.power = n_items, kind, float(power)
        self.register_buffer("cdf", torch.empty(0, dtype=torch.float64), persistent=False)
        self.register_buffer("log_prob", torch.empty(0, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def set_item_counts(self, counts: np.ndarray | torch.Tensor) -> None:
        """The training matrix's interactions per item (length n_items); a uniform sampler ignores them."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        if counts.shape != (self.n_items,):
            raise ValueError(f"need one count per item ({self.n_items}); got shape {tuple(counts.shape)}")
        if self.kind == "uniform":
            return
        weights = counts.clamp_min(1.0) ** self.power
        total = weights.sum()
        device = self.cdf.device
        self.cdf = torch.cumsum(weights / total, 0).to(device)
        self.log_prob = torch.log(weights / total).float().to(device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` items drawn with replacement, and log q of each, on the sampler's device."""
        device = self.cdf.device
        if self.kind == "uniform":
            items = torch.randint(self.n_items, (n,), generator=generator, device=device)
            return items, torch.full((n,), -math.log(self.n_items), device=device)
        if self.cdf.numel() == 0:
            raise RuntimeError("the popularity negative sampler has no item counts: call "
                               "recvae.nn.item_output.set_item_counts(net, counts) before training (the loops do)")
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * self.cdf[-1]
        items = torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n_items - 1)
        return items, self.log_prob[items]

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, kind={self.kind!r}, power={self.power}"


def sampled_softmax_nll(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, x: SparseRows,
                        negatives: torch.Tensor, negative_log_prob: torch.Tensor, *,
                        log_q_correction: bool = True, sparse_weight_gradient: bool = False,
                        extra_logits=None) -> torch.Tensor:
    """The sampled-softmax estimate of the multinomial NLL per user, (batch,) (see the module docstring).

    ``negatives`` are S items drawn with replacement from the proposal q, and
    ``negative_log_prob`` their log q. Logits are formed only for the candidates
    (the batch's positives and the distinct non-positive negatives), so the cost is
    B x (|P| + S) instead of B x I. ``sparse_weight_gradient`` gathers the weight's
    rows with a sparse gradient (rows of the candidates only), for
    ``torch.optim.SparseAdam``; the bias gradient stays dense (I floats).
    ``log_q_correction=False`` gives the uncorrected, biased estimator (for comparison).
    ``extra_logits(candidates)``, when given, is added to the candidates' logits, (batch,
    len(candidates)) (the joint model's item-item path, at those items only).
    """
    n_samples = negatives.numel()
    if n_samples < 1:
        raise ValueError("sampled softmax needs at least one negative")
    positives, positive_slot = torch.unique(x.col_indices, return_inverse=True)
    hits = torch.isin(negatives, positives)
    kept, kept_log_prob = negatives[~hits], negative_log_prob[~hits]
    sampled, slot, draws = torch.unique(kept, return_inverse=True, return_counts=True)
    # log q of each distinct sampled item (all its draws share it).
    sampled_log_prob = torch.zeros(sampled.shape, dtype=kept_log_prob.dtype, device=kept.device)
    sampled_log_prob.scatter_(0, slot, kept_log_prob)
    shift = torch.log(draws.float())
    if log_q_correction:
        shift = shift - (math.log(n_samples) + sampled_log_prob.float())
    candidates = torch.cat([positives, sampled])
    rows = F.embedding(candidates, weight, sparse=sparse_weight_gradient)
    logits = F.linear(h, rows, bias[candidates]).float()  # (batch, |P| + |sampled|)
    if extra_logits is not None:
        logits = logits + extra_logits(candidates).float()
    corrected = torch.cat([logits[:, : len(positives)], logits[:, len(positives):] + shift], dim=1)
    log_norm = torch.logsumexp(corrected, dim=1)
    picked = logits[x.row_of_entry, positive_slot] * x.values
    data = torch.zeros_like(log_norm).index_add_(0, x.row_of_entry, picked)
    return x.row_sums() * log_norm - data
