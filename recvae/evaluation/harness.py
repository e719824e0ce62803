"""The evaluation harness: fold-in rows -> scores -> mask seen -> top-k -> metrics.

Works for any model with ``score(user_rows)`` (numpy out); models that can
score on their torch device expose ``score_tensor(user_rows)`` and then masking
and top-k run there too, in batches. Each batch is ranked within a memory budget
(``max_memory``, 1 GiB by default): when its users x items scores would not fit,
the catalogue is scored a block of items at a time (a model's ``item_block_scorer``)
and a running top-k is merged (:mod:`recvae.evaluation.ranking`); ties are broken by
the lower item index either way, so the metrics do not depend on the budget. Every
metric is computed per user; users with an empty target are excluded from the means
and counted. Under a
torch.distributed process group the users are sharded over the ranks and the
per-user metrics gathered (identical to one process).
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

from recvae.evaluation import beyond_accuracy as BA
from recvae.evaluation import metrics as M
from recvae.evaluation.ranking import (
    DEFAULT_MAX_MEMORY,
    SCORE_CELL_BYTES,
    check_max_memory,
    plan_blocks,
    top_k_blocks,
)
from recvae.data.splits import HeldOut, Split
from recvae.runtime.distributed import DistributedContext, all_reduce_sum, batch_aligned_range, gather_rows, parallel_context

__all__ = ["EvaluationResult", "evaluate", "evaluate_model", "evaluate_heldout", "top_k_for_rows", "paired_comparison",
           "average_results", "METRIC_NAMES", "metric_columns", "DIVERSITY_SPACES"]

#: Every metric name the harness takes: accuracy (per user), beyond-accuracy per user, then global.
METRIC_NAMES = (*M.METRICS, *BA.PER_USER, *BA.GLOBAL)
#: Where intra-list diversity measures cosine: ``auto`` (the model's item embeddings when it has
#: them, else co-occurrence), ``embeddings`` (refused for a model without) or ``cooccurrence``.
DIVERSITY_SPACES = ("auto", "embeddings", "cooccurrence")

ScoreFn = Callable[[sp.csr_matrix], "torch.Tensor | np.ndarray"]
#: rows -> ``(start, stop) -> scores`` of item columns [start, stop) for those rows (``Recommender.item_block_scorer``).
BlockScorerFactory = Callable[[sp.csr_matrix], Callable[[int, int], "torch.Tensor | np.ndarray"]]


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

    def table(self) -> pd.DataFrame:
        """One row per metric, for people: ``mean ± 95% CI`` as text (``n/a`` when no user counted),
        the users counted and those excluded (empty targets)."""
        def cell(mean: float, std_err: float) -> str:
            if np.isnan(mean):
                return "n/a"
            return f"{mean:.4f}" if np.isnan(std_err) else f"{mean:.4f} ± {1.96 * std_err:.4f}"

        table = pd.DataFrame({
            "mean ± 95% CI": [cell(float(r["mean"]), float(r["std_err"])) for _, r in self.summary.iterrows()],
            "users": self.summary.get("n_users"), "excluded": self.summary.get("n_excluded"),
        }, index=self.summary.index)
        table.index.name = "metric"
        return table

    def __repr__(self) -> str:
        cells = ", ".join(
            f"{m}={row['mean']:.4f}" + (f"±{row['std_err']:.4f}" if np.isfinite(row.get("std_err", np.nan)) else "")
            for m, row in self.summary.iterrows()
        )
        counted = self.summary["n_users"].dropna() if "n_users" in self.summary else []  # gini, coverage: none
        n = int(counted.max()) if len(counted) else len(self.per_user)
        return f"EvaluationResult({cells}; {n} users)"


def top_k_for_rows(score_fn: ScoreFn, fold_in: sp.csr_matrix, k: int, *, batch_size: int = 1000,
                   progress: bool | None = False, block_scorer: BlockScorerFactory | None = None,
                   block_cell_bytes: Callable[[sp.csr_matrix], float] | None = None,
                   max_memory: int | None = DEFAULT_MAX_MEMORY) -> np.ndarray:
    """(users, k) best items per row, fold-in items excluded, scored in batches.

    ``score_fn`` returns scores for a CSR batch, as a torch tensor (on any
    device: masking and top-k stay there) or a numpy array. ``progress``: a bar
    over the batches (None: on a terminal only).

    Memory: each batch of ``batch_size`` users is ranked within ``max_memory`` bytes
    (None: 1 GiB; see :func:`recvae.evaluation.ranking.plan_blocks`). When a batch's
    scores do not fit, ``block_scorer(rows)`` (a model's ``item_block_scorer``: returns
    ``(start, stop) -> scores`` of item columns ``[start, stop)``) scores the catalogue a
    block at a time and the top-k is merged block by block; without one, the batch is cut
    into smaller user batches instead. ``block_cell_bytes(rows)``: the bytes the block
    scorer allocates per scored cell besides the block (a model's ``block_score_bytes``).
    Ties are broken by the lower item index (as :func:`recvae.evaluation.metrics.top_k`),
    so the blocked and unblocked rankings are the same. A NaN score ranks last.
    """
    n_users, n_items = fold_in.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k must lie in [1, {n_items}] (the number of items); got {k}")
    max_memory = check_max_memory(max_memory)
    out = np.empty((n_users, k), dtype=np.int64)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n_users, batch_size), desc="evaluate", unit="batch", leave=False,
                      disable=True if progress is False else None):
        rows = fold_in[start : start + batch_size]
        extra = float(block_cell_bytes(rows)) if block_scorer is not None and block_cell_bytes is not None else 0.0
        plan = plan_blocks(rows.shape[0], n_items, k, max_memory, blockwise=block_scorer is not None,
                           cell_bytes=SCORE_CELL_BYTES + extra)
        for first in range(0, rows.shape[0], plan.user_batch):
            part = rows[first : first + plan.user_batch] if plan.user_batch < rows.shape[0] else rows
            if plan.item_block < n_items:
                scorer = block_scorer(part)
            else:
                scorer = _whole_catalogue(score_fn, part)
            top, _ = top_k_blocks(scorer, part.shape[0], n_items, k, item_block=plan.item_block, exclude=part,
                                  nan="lowest", pad=False)
            out[start + first : start + first + part.shape[0]] = top
    return out


def _whole_catalogue(score_fn: ScoreFn, rows: sp.csr_matrix):
    """A block scorer over one block, the whole catalogue: ``score_fn(rows)``, its shape checked."""

    def scorer(begin: int, end: int):
        scores = score_fn(rows)
        if tuple(scores.shape) != rows.shape:
            raise ValueError(f"score function returned shape {tuple(scores.shape)} for rows of shape {rows.shape}")
        if isinstance(scores, np.ndarray):
            return torch.from_numpy(np.asarray(scores, dtype=np.float32))  # masked in place, as before
        return scores.float()

    return scorer


def metric_columns(metrics: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int]]:
    """The (name, k) columns that ``metrics`` ask for: ``"name@k"`` is that one cut-off, a bare
    ``"name"`` one column per k of ``ks``; each column once, in the order asked.

    Raises:
        ValueError: an unknown name, a malformed ``@k`` or a cut-off below 1, or a bare name with no ``ks``.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    columns: list[tuple[str, int]] = []
    for metric in metrics:
        name, at, k = str(metric).partition("@")
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {metric!r}; choose from {list(METRIC_NAMES)}, as a name (every k) "
                             f"or name@k, e.g. ndcg@100, novelty@20")
        if at and not (k.isdigit() and int(k) >= 1):
            raise ValueError(f"metric {metric!r}: write name@k with a cut-off k >= 1, e.g. {name}@20")
        if not at and not ks:
            raise ValueError(f"metric {metric!r} has no cut-off: give ks or write {name}@k")
        columns += [(name, int(k))] if at else [(name, int(c)) for c in ks]
    return list(dict.fromkeys(columns))


def evaluate_heldout(
    score_fn: ScoreFn,
    heldout: HeldOut,
    *,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("ndcg", "recall"),
    batch_size: int = 1000,
    distributed: bool | None = None,
    progress: bool | None = False,
    block_scorer: BlockScorerFactory | None = None,
    block_cell_bytes: Callable[[sp.csr_matrix], float] | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    train: sp.csr_matrix | None = None,
    item_embeddings: np.ndarray | None = None,
) -> EvaluationResult:
    """Evaluate a score function on a held-out user set.

    Metrics: names of :data:`METRIC_NAMES`, each bare (at every k of ``ks``) or as ``name@k``
    (see :func:`metric_columns`). Accuracy metrics (:data:`recvae.evaluation.metrics.METRICS`)
    are per user, NaN for users without a target. The beyond-accuracy ones
    (:mod:`recvae.evaluation.beyond_accuracy`) describe each user's list, so every user counts:
    ``novelty``, ``arp`` and ``long_tail`` need the popularity of ``train`` (the training
    users x items matrix); ``diversity`` uses ``item_embeddings`` when given, else the
    co-occurrence of ``train``. ``gini`` and ``coverage`` are one number over every list
    (a ``mean``, no CI).

    Memory: each batch is ranked within ``max_memory`` bytes (None: 1 GiB), scoring the
    catalogue a block of items at a time with ``block_scorer`` when given and needed (see
    :func:`top_k_for_rows`); the metrics are the same as unblocked.

    Sharding: with ``distributed=None`` (default) the users are sharded when a
    torch.distributed process group of more than one rank is initialised; True
    requires one, False evaluates all users here. Sharded, each rank scores a
    contiguous run of whole batches (the batches one process would score, so every
    score is the same), and the per-user metrics are gathered: every rank gets the
    result of single-process evaluation, value for value. It is then a collective:
    every rank must call it; evaluate on one rank alone with ``distributed=False``.
    """
    wanted = metric_columns(metrics, sorted({int(k) for k in ks}))
    if not wanted:
        raise ValueError("give at least one metric")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    popularity = _beyond_accuracy_inputs(wanted, heldout, train, item_embeddings)
    ctx = _sharding_context(distributed)
    started = time.perf_counter()
    start, stop = batch_aligned_range(heldout.n_users, batch_size, ctx)
    fold_in, target = heldout.fold_in, heldout.target
    if ctx is not None:
        fold_in, target = fold_in[start:stop], target[start:stop]
    top = top_k_for_rows(score_fn, fold_in, max(k for _, k in wanted), batch_size=batch_size, progress=progress,
                         block_scorer=block_scorer, block_cell_bytes=block_cell_bytes, max_memory=max_memory)
    per_user = pd.DataFrame(
        {
            "user_id": heldout.user_ids,
            "n_fold_in": np.diff(heldout.fold_in.indptr),
            "n_target": np.diff(heldout.target.indptr),
        }
    )
    columns = [(name, k) for name, k in wanted if name not in BA.GLOBAL]
    if columns:
        local = np.empty((stop - start, len(columns)), dtype=np.float64)
        if stop > start:
            for j, (name, k) in enumerate(columns):
                local[:, j] = (M.METRICS[name](top, target, k) if name in M.METRICS else
                               BA.per_user_values(name, top, k, popularity=popularity,
                                                  item_embeddings=item_embeddings, train=train))
        values = gather_rows(local, ctx)
        for j, (name, k) in enumerate(columns):
            per_user[f"{name}@{k}"] = values[:, j]
    summary = _summary(wanted, per_user, top, heldout.fold_in.shape[1], ctx)
    return EvaluationResult(per_user=per_user, summary=summary, seconds=time.perf_counter() - started)


def _summary(wanted: list[tuple[str, int]], per_user: pd.DataFrame, top: np.ndarray, n_items: int,
             ctx: DistributedContext | None) -> pd.DataFrame:
    """One row per metric: a per-user column's mean and CI (:func:`metrics.summarize`), or the one
    value of a metric over every rank's lists (gini, coverage: a ``mean`` only)."""
    rows = []
    for name, k in wanted:
        column = f"{name}@{k}"
        if name in BA.GLOBAL:
            exposure = _exposure(top, n_items, k, ctx)
            value = float((exposure > 0).mean()) if name == "coverage" else BA.gini_index(exposure)
            rows.append({"metric": column, "mean": value})
        else:
            rows.append({"metric": column, **M.summarize(per_user[column].to_numpy())})
    return pd.DataFrame(rows).set_index("metric")


def _beyond_accuracy_inputs(wanted: list[tuple[str, int]], heldout: HeldOut, train: sp.csr_matrix | None,
                            item_embeddings: np.ndarray | None) -> BA.ItemPopularity | None:
    """Check that the beyond-accuracy metrics asked for have their inputs; the training popularity if needed."""
    n_items = heldout.fold_in.shape[1]
    needs_train = sorted({f"{n}@{k}" for n, k in wanted
                          if n in BA.NEEDS_POPULARITY or (n == "diversity" and item_embeddings is None)})
    if needs_train and train is None:
        raise ValueError(f"{', '.join(needs_train)} need the training matrix: pass train= (the training users x "
                         "items matrix; evaluate(model, split) passes split.train)")
    if train is not None and (not sp.issparse(train) or train.shape[1] != n_items):
        raise ValueError(f"train must be a scipy sparse (training users x {n_items} items) matrix over the "
                         f"held-out users' items; got {getattr(train, 'shape', type(train).__name__)}")
    if item_embeddings is not None and np.shape(item_embeddings)[0] != n_items:
        raise ValueError(f"item_embeddings has {np.shape(item_embeddings)[0]} rows for {n_items} items; "
                         "give one row per item column")
    bad = sorted({f"diversity@{k}" for n, k in wanted if n == "diversity" and k < 2})
    if bad:
        raise ValueError(f"{', '.join(bad)}: intra-list diversity compares pairs of items; choose k >= 2")
    return BA.ItemPopularity.from_train(train) if any(n in BA.NEEDS_POPULARITY for n, _ in wanted) else None


def _sharding_context(distributed: bool | None) -> DistributedContext | None:
    """The context to shard over: see ``evaluate_heldout``'s ``distributed``."""
    if distributed is False:
        return None
    ctx = parallel_context()
    if distributed and ctx is None:
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group of 2+ ranks")
    return ctx


def _exposure(top: np.ndarray, n_items: int, k: int, ctx: DistributedContext | None) -> np.ndarray:
    """(n_items,) int64: in how many top-k lists of every rank each item appears."""
    counts = np.bincount(np.ascontiguousarray(top[:, :k]).ravel(), minlength=n_items).astype(np.int64)
    if ctx is None:
        return counts
    return all_reduce_sum(torch.from_numpy(counts).to(ctx.device), ctx).cpu().numpy()


def evaluate(
    model,
    split: Split,
    which: str = "test",
    *,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("ndcg", "recall"),
    batch_size: int = 1000,
    distributed: bool | None = None,
    progress: bool | None = False,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    diversity_space: str = "auto",
) -> EvaluationResult:
    """Evaluate a fitted model on ``split.validation`` or ``split.test``.

    Each user's fold-in row is scored (the model folds the user in), fold-in
    items are excluded, the full catalogue is ranked (no sampled negatives),
    and NDCG@k / Recall@k ... are computed against the user's target. Under a
    torch.distributed process group the users are sharded over the ranks (every
    rank must call it; see :func:`evaluate_heldout`'s ``distributed``).

    ``max_memory`` (bytes; None: 1 GiB) bounds the ranking of a batch: when
    ``batch_size`` users x items scores do not fit, a model that scores item blocks
    (``Recommender.block_scoring``: the VAEs, EASE/EDLAE, sparse EASE, ALS, BPR, item-KNN,
    popularity) is scored a block of items at a time, others in smaller user batches.
    The metrics do not depend on it.

    ``metrics``: any of :data:`METRIC_NAMES`, bare or as ``name@k`` (see :func:`evaluate_heldout`);
    the beyond-accuracy ones measure popularity over ``split.train``, and ``diversity_space``
    (:data:`DIVERSITY_SPACES`) picks the item vectors of intra-list diversity.
    """
    if which not in ("validation", "test"):
        raise ValueError(f"which must be 'validation' or 'test'; got {which!r}")
    return evaluate_model(model, split.held_out(which), ks=ks, metrics=metrics, batch_size=batch_size,
                          distributed=distributed, progress=progress, max_memory=max_memory, train=split.train,
                          diversity_space=diversity_space)


def evaluate_model(
    model,
    heldout: HeldOut,
    *,
    ks: Sequence[int] = (20, 50, 100),
    metrics: Sequence[str] = ("ndcg", "recall"),
    batch_size: int = 1000,
    distributed: bool | None = None,
    progress: bool | None = False,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    train: sp.csr_matrix | None = None,
    diversity_space: str = "auto",
) -> EvaluationResult:
    """Evaluate ``model`` on a held-out user set, as :func:`evaluate` does on a split's.

    The one path from a model to its metrics: :func:`evaluate` and the training loops'
    validation (``recvae.training``, which hands a model in as it trains) both go
    through it, so the validation score that picks the best epoch is the number
    ``evaluate(model, split, "validation")`` gives afterwards. ``model`` needs
    ``score_tensor`` or ``score``; with ``block_scoring`` its ``item_block_scorer``
    and ``block_score_bytes`` rank big catalogues a block of items at a time.

    ``train`` (training users x items) is what the beyond-accuracy metrics measure popularity
    over. ``diversity_space``: ``auto`` measures intra-list diversity over the model's
    ``item_embeddings()`` when it has them, else over the co-occurrence of ``train``;
    ``embeddings`` or ``cooccurrence`` ask for one (each model's embeddings are its own space:
    compare models by ``cooccurrence``).
    """
    if not hasattr(model, "score"):
        raise TypeError(f"{type(model).__name__} has no score(user_rows) method; it is not a recvae model")
    score_fn = getattr(model, "score_tensor", None) or model.score
    blockwise = bool(getattr(model, "block_scoring", False))
    wanted = metric_columns(metrics, sorted({int(k) for k in ks}))
    embeddings = _diversity_embeddings(model, diversity_space) if any(n == "diversity" for n, _ in wanted) else None
    return evaluate_heldout(score_fn, heldout, ks=ks, metrics=metrics, batch_size=batch_size, distributed=distributed,
                            progress=progress, block_scorer=model.item_block_scorer if blockwise else None,
                            block_cell_bytes=model.block_score_bytes if blockwise else None, max_memory=max_memory,
                            train=train, item_embeddings=embeddings)


def _diversity_embeddings(model, diversity_space: str) -> np.ndarray | None:
    """The item vectors diversity is measured over: the model's embeddings, or None for co-occurrence."""
    if diversity_space not in DIVERSITY_SPACES:
        raise ValueError(f"diversity_space must be one of {list(DIVERSITY_SPACES)}; got {diversity_space!r}")
    if diversity_space == "cooccurrence":
        return None
    try:
        return np.asarray(model.item_embeddings())
    except (NotImplementedError, AttributeError):
        if diversity_space == "embeddings":
            raise ValueError(f"{type(model).__name__} has no item embeddings to measure diversity over; use "
                             "diversity_space='cooccurrence' or 'auto' (--diversity-space)") from None
        return None


def average_results(results: Sequence[EvaluationResult]) -> EvaluationResult:
    """The per-user metrics of several evaluations of the same users, averaged user by user.

    For one model fit with several seeds: each user's value is the mean over the
    results (NaN where the user has no target, as in every result), and the
    summary is recomputed from these averages, so its mean is the mean of the
    results' means and its standard error is over users. Metrics without
    per-user values (coverage) are averaged. ``seconds`` is the sum.

    Raises:
        ValueError: no results, or results over different users or metrics.
    """
    results = list(results)
    if not results:
        raise ValueError("give at least one evaluation result to average")
    first = results[0]
    if len(results) == 1:
        return first
    for r in results[1:]:
        if not np.array_equal(r.per_user["user_id"].to_numpy(), first.per_user["user_id"].to_numpy()):
            raise ValueError("the results cover different users (or orders); evaluate every fit on the same split")
        if (list(r.per_user.columns) != list(first.per_user.columns)
                or list(r.summary.index) != list(first.summary.index)):
            raise ValueError("the results have different metrics; evaluate every fit with the same metrics and ks")
    per_user = first.per_user.copy()
    columns = [c for c in first.summary.index if c in per_user.columns]
    per_user[columns] = np.mean([r.per_user[columns].to_numpy(dtype=np.float64) for r in results], axis=0)
    rows = []
    for metric in first.summary.index:
        if metric in columns:
            rows.append({"metric": metric, **M.summarize(per_user[metric].to_numpy())})
        else:
            rows.append({"metric": metric, "mean": float(np.mean([r.summary.loc[metric, "mean"] for r in results]))})
    summary = pd.DataFrame(rows).set_index("metric")
    return EvaluationResult(per_user=per_user, summary=summary, seconds=float(sum(r.seconds for r in results)))


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
