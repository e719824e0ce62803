"""The evaluation harness: fold-in rows -> scores -> mask seen -> top-k -> metrics.

Works for any model with ``score(user_rows)`` (numpy out); models that can
score on their torch device expose ``score_tensor(user_rows)`` and then masking
and top-k run there too, in batches. Every metric is computed per user; users
with an empty target are excluded from the means and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.stats
import torch

from recvae import metrics as M
from recvae.data.splits import HeldOut, Split

__all__ = ["EvaluationResult", "evaluate", "evaluate_heldout", "top_k_for_rows", "paired_comparison"]

ScoreFn = Callable[[sp.csr_matrix], "torch.Tensor | np.ndarray"]


@dataclass
class EvaluationResult:
    """Per-user metric values and their summary.

    Attributes:
        per_user: one row per evaluated user: ``user_id``, ``n_fold_in``,
            ``n_target`` and one column per metric (``ndcg@100`` ...); NaN where
            the user's target is empty.
        summary: one row per metric: mean, std_err (std / sqrt(n), as Liang et
            al.), 95% CI, n_users counted and n_excluded (empty targets).
        seconds: wall time of scoring, ranking and metrics.
    """

    per_user: pd.DataFrame
    summary: pd.DataFrame
    seconds: float

    def __getitem__(self, metric: str) -> float:
        """Mean of a metric, e.g. ``result["ndcg@100"]``."""
        return float(self.summary.loc[metric, "mean"])

    def __repr__(self) -> str:
        cells = ", ".join(
            f"{m}={row['mean']:.4f}±{row['std_err']:.4f}" for m, row in self.summary.iterrows()
        )
        n = int(self.summary["n_users"].iloc[0]) if len(self.summary) else 0
        return f"EvaluationResult({cells}; {n} users)"


def top_k_for_rows(score_fn: ScoreFn, fold_in: sp.csr_matrix, k: int, *, batch_size: int = 1000) -> np.ndarray:
    """(users, k) best items per row, fold-in items excluded, scored in batches.

    ``score_fn`` returns scores for a CSR batch, as a torch tensor (on any
    device: masking and top-k stay there) or a numpy array.
    """
    n_users, n_items = fold_in.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k must lie in [1, {n_items}] (the number of items); got {k}")
    out = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, batch_size):
        rows = fold_in[start : start + batch_size]
        scores = score_fn(rows)
        scores = torch.from_numpy(np.asarray(scores, dtype=np.float32)) if isinstance(scores, np.ndarray) else scores
        if scores.shape != rows.shape:
            raise ValueError(f"score function returned shape {tuple(scores.shape)} for rows of shape {rows.shape}")
        scores = scores.float()  # fresh scores are masked in place below
        r = torch.from_numpy(np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))).to(scores.device)
        c = torch.from_numpy(rows.indices.astype(np.int64)).to(scores.device)
        scores[r, c] = float("-inf")
        out[start : start + rows.shape[0]] = torch.topk(scores, k, dim=1).indices.cpu().numpy()
    return out


def evaluate_heldout(
    score_fn: ScoreFn,
    heldout: HeldOut,
    *,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("ndcg", "recall"),
    batch_size: int = 1000,
) -> EvaluationResult:
    """Evaluate a score function on a held-out user set."""
    unknown = [m for m in metrics if m not in M.METRICS and m != "coverage"]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(M.METRICS) + ['coverage']}")
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ValueError("give at least one cut-off k")
    started = time.perf_counter()
    top = top_k_for_rows(score_fn, heldout.fold_in, max(ks), batch_size=batch_size)
    per_user = pd.DataFrame(
        {
            "user_id": heldout.user_ids,
            "n_fold_in": np.diff(heldout.fold_in.indptr),
            "n_target": np.diff(heldout.target.indptr),
        }
    )
    rows = []
    for name in metrics:
        for k in ks:
            column = f"{name}@{k}"
            if name == "coverage":
                rows.append({"metric": column, "mean": M.coverage_at_k(top, heldout.fold_in.shape[1], k)})
                continue
            per_user[column] = M.METRICS[name](top, heldout.target, k)
            rows.append({"metric": column, **M.summarize(per_user[column].to_numpy())})
    summary = pd.DataFrame(rows).set_index("metric")
    return EvaluationResult(per_user=per_user, summary=summary, seconds=time.perf_counter() - started)


def evaluate(
    model,
    split: Split,
    which: str = "test",
    *,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("ndcg", "recall"),
    batch_size: int = 1000,
) -> EvaluationResult:
    """Evaluate a fitted model on ``split.validation`` or ``split.test``.

    Each user's fold-in row is scored (the model folds the user in), fold-in
    items are excluded, the full catalogue is ranked (no sampled negatives),
    and NDCG@k / Recall@k ... are computed against the user's target.
    """
    if which not in ("validation", "test"):
        raise ValueError(f"which must be 'validation' or 'test'; got {which!r}")
    if not hasattr(model, "score"):
        raise TypeError(f"{type(model).__name__} has no score(user_rows) method; it is not a recvae model")
    heldout: HeldOut = getattr(split, which)
    score_fn = getattr(model, "score_tensor", None) or model.score
    return evaluate_heldout(score_fn, heldout, ks=ks, metrics=metrics, batch_size=batch_size)


def paired_comparison(a: EvaluationResult, b: EvaluationResult, metric: str = "ndcg@100") -> dict:
    """Paired tests of two models evaluated on the same users.

    Returns the means, the mean difference (a - b) with its 95% CI, the paired
    t-test and the Wilcoxon signed-rank test (scipy.stats), over users that
    have a value under both models.
    """
    for name, r in (("a", a), ("b", b)):
        if metric not in r.per_user.columns:
            raise KeyError(f"result {name} has no per-user column {metric!r}; it has {list(r.per_user.columns)}")
    joined = a.per_user[["user_id", metric]].merge(
        b.per_user[["user_id", metric]], on="user_id", suffixes=("_a", "_b"), validate="one_to_one"
    )
    if len(joined) != len(a.per_user) or len(joined) != len(b.per_user):
        raise ValueError("the two results cover different users; evaluate both models on the same split")
    joined = joined.dropna()
    x, y = joined[f"{metric}_a"].to_numpy(), joined[f"{metric}_b"].to_numpy()
    diff = x - y
    n = len(diff)
    if n < 2:
        raise ValueError(f"need at least 2 users with a {metric} value under both models; got {n}")
    se = diff.std(ddof=1) / np.sqrt(n)
    t = scipy.stats.ttest_rel(x, y)
    nonzero = diff[diff != 0]
    w = scipy.stats.wilcoxon(x, y) if len(nonzero) else None
    return {
        "metric": metric,
        "n_users": n,
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_diff": float(diff.mean()),
        "diff_ci95_low": float(diff.mean() - 1.96 * se),
        "diff_ci95_high": float(diff.mean() + 1.96 * se),
        "t_statistic": float(t.statistic),
        "t_pvalue": float(t.pvalue),
        "wilcoxon_statistic": float(w.statistic) if w is not None else float("nan"),
        "wilcoxon_pvalue": float(w.pvalue) if w is not None else 1.0,
    }
