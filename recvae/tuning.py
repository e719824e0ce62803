"""Hyper-parameter search on the validation users of a split (the test users are never touched).

Example::

    from recvae.models.baselines import EASE
    from recvae.tuning import grid_search

    result = grid_search(EASE, {"l2": [100.0, 500.0, 1000.0]}, split)
    result.trials            # one row per combination
    result.best_params       # {"l2": 500.0}
    evaluate(result.best_model, split, "test")   # test once, with the chosen model
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recvae.evaluation import metrics as M
from recvae.data.splits import Split
from recvae.evaluation import evaluate
from recvae.models.base import Recommender

logger = logging.getLogger(__name__)

__all__ = ["GridSearchResult", "grid_search", "parameter_grid"]


@dataclass
class GridSearchResult:
    """What :func:`grid_search` found.

    Attributes:
        trials: one row per combination, in search order: a column per
            hyper-parameter, then the metric's validation mean in a column
            named after it (e.g. ``ndcg@100``; NaN when no user had a target),
            ``std_err``, ``n_users``, ``fit_seconds`` and ``eval_seconds``.
        best_params: the combination with the highest validation metric (the
            first one on ties).
        best_model: that combination's fitted model.
        best_score: its validation metric.
        metric: the metric searched on, e.g. ``"ndcg@100"``.
    """

    trials: pd.DataFrame
    best_params: dict[str, Any]
    best_model: Recommender
    best_score: float
    metric: str

    def __repr__(self) -> str:
        return (
            f"GridSearchResult({len(self.trials)} trials; best {self.metric}={self.best_score:.4f} "
            f"with {self.best_params})"
        )


def parameter_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, in a deterministic order.

    Keys vary in the order given, the last one fastest (``itertools.product``).
    An empty grid has one combination, ``{}``: the model's defaults.
    """
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of parameter name -> list of values; got {type(grid).__name__}")
    grid = {n: v.tolist() if isinstance(v, np.ndarray) else v for n, v in grid.items()}
    for name, values in grid.items():
        if not isinstance(name, str):
            raise TypeError(f"grid keys must be parameter names (str); got {name!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(
                f"grid[{name!r}] must be a list of values to try; got {values!r}. Wrap a single value: [{values!r}]"
            )
        if len(values) == 0:
            raise ValueError(f"grid[{name!r}] is empty; give at least one value")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _parse_metric(metric: str) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric) if isinstance(metric, str) else None
    if match is None or match.group(1) not in M.METRICS or int(match.group(2)) < 1:
        raise ValueError(f"metric must look like 'name@k' with name in {sorted(M.METRICS)} and k >= 1; got {metric!r}")
    return match.group(1), int(match.group(2))


def grid_search(
    make_model: Callable[..., Recommender],
    grid: Mapping[str, Sequence[Any]],
    split: Split,
    *,
    metric: str = "ndcg@100",
    ks: Sequence[int] = (100,),
    progress: bool = True,
) -> GridSearchResult:
    """Fit one model per combination of ``grid`` and keep the best on the validation users.

    Each trial calls ``make_model(**params).fit(split)`` (the training matrix,
    with ``split.validation`` available for models that select epochs on it),
    then ``evaluate(model, split, "validation")``. ``split.test`` is never read.

    Args:
        make_model: a model class or factory taking the grid's keys as keyword arguments.
        grid: parameter name -> list of values; every combination is tried.
        split: the data; its validation users score the trials.
        metric: what to maximise, ``"name@k"`` (e.g. ``"ndcg@100"``, ``"recall@20"``).
        ks: cut-offs to evaluate (the metric's own k is added).
        progress: show a tqdm bar over trials.

    Returns:
        A :class:`GridSearchResult` with every trial and the best fitted model.

    Raises:
        ValueError: a malformed grid or metric, or no trial produced a finite score.
    """
    if not isinstance(split, Split):
        raise TypeError(f"split must be a recvae Split (train/validation/test); got {type(split).__name__}")
    if not callable(make_model):
        raise TypeError(f"make_model must be a model class or a factory function; got {make_model!r}")
    name, k = _parse_metric(metric)
    ks = sorted({int(x) for x in ks} | {k})
    combos = parameter_grid(grid)
    reserved = {metric, "std_err", "n_users", "fit_seconds", "eval_seconds"}
    clash = sorted(reserved & set(combos[0]))
    if clash:
        raise ValueError(f"grid parameter name(s) {clash} clash with the trials table's columns; rename them")
    logger.info("grid search over %d combinations of %s on %s", len(combos), list(grid), metric)

    records: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Recommender] | None = None
    bar = tqdm(combos, desc="grid search", unit="trial", disable=None if progress else True)  # None: terminals only
    for params in bar:
        model = make_model(**params)
        started = time.perf_counter()
        model.fit(split)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = evaluate(model, split, "validation", ks=ks, metrics=(name,))
        eval_seconds = time.perf_counter() - started
        row = result.summary.loc[metric]
        score = float(row["mean"])
        records.append(
            {
                **params,
                metric: score,
                "std_err": float(row["std_err"]),
                "n_users": int(row["n_users"]),
                "fit_seconds": fit_seconds,
                "eval_seconds": eval_seconds,
            }
        )
        logger.info("trial %s: %s=%.4f (fit %.2fs, eval %.2fs)", params, metric, score, fit_seconds, eval_seconds)
        if math.isnan(score):
            logger.warning("trial %s has no %s value (no validation user has a target); skipped", params, metric)
        elif best is None or score > best[0]:
            best = (score, params, model)  # earlier models are dropped: only the best is kept in memory
        if best is not None:
            bar.set_postfix({metric: f"{best[0]:.4f}"})
    bar.close()

    trials = pd.DataFrame.from_records(records)
    if best is None:
        raise ValueError(
            f"no trial gave a finite validation {metric}: the validation users have no targets; "
            "re-split with held-out users that have >= 5 events"
        )
    best_score, best_params, best_model = best
    logger.info("best %s=%.4f with %s", metric, best_score, best_params)
    return GridSearchResult(
        trials=trials, best_params=dict(best_params), best_model=best_model, best_score=best_score, metric=metric
    )
