"""Grid search: every combination of a grid (:func:`parameter_grid`), each fitted once and scored
on the validation users; the best is kept (:func:`grid_search`).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recvae.data.splits import Split
from recvae.models.base import Recommender
from recvae.tuning.results import GridSearchResult, grid_edges
from recvae.tuning.scoring import check_search_inputs, metric_and_ks, validation_row

logger = logging.getLogger(__name__)

__all__ = ["parameter_grid", "grid_search"]


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
    check_search_inputs(make_model, split)
    name, ks = metric_and_ks(metric, ks)
    combos = parameter_grid(grid)
    reserved = {metric, "std_err", "n_users", "fit_seconds", "eval_seconds"}
    clash = sorted(reserved & set(combos[0]))
    if clash:
        raise ValueError(f"grid parameter name(s) {clash} clash with the trials table's columns; rename them")
    logger.info("grid search over %d combinations of %s on %s", len(combos), list(grid), metric)
    search_started = time.perf_counter()

    records: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Recommender] | None = None
    bar = tqdm(combos, desc="grid search", unit="trial", disable=None if progress else True)  # None: terminals only
    for params in bar:
        record, model = _grid_trial(make_model, params, split, metric, name, ks)
        records.append(record)
        score = record[metric]
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
        trials=trials, best_params=dict(best_params), best_model=best_model, best_score=best_score, metric=metric,
        edges=grid_edges(grid, best_params), seconds=time.perf_counter() - search_started, searched=dict(grid),
    )


def _grid_trial(make_model: Callable[..., Recommender], params: dict[str, Any], split: Split, metric: str, name: str,
                ks: list[int]) -> tuple[dict[str, Any], Recommender]:
    """Fit and validate one combination; returns its trials-table row and its model."""
    model = make_model(**params)
    started = time.perf_counter()
    model.fit(split)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    row = validation_row(model, split, metric, name, ks)
    eval_seconds = time.perf_counter() - started
    score = float(row["mean"])
    record = {
        **params,
        metric: score,
        "std_err": float(row["std_err"]),
        "n_users": int(row["n_users"]),
        "fit_seconds": fit_seconds,
        "eval_seconds": eval_seconds,
    }
    logger.info("trial %s: %s=%.4f (fit %.2fs, eval %.2fs)", params, metric, score, fit_seconds, eval_seconds)
    return record, model
