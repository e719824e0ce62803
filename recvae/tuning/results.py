"""What a search returns: :class:`GridSearchResult` (a grid search's trials, the chosen parameters,
their fitted model and score), :class:`SearchResult` (an optuna search's, with each trial's state
and the budget), :class:`SeedFit` (a finalist's fit at one seed), and the edges of the searched
values a chosen value sits on (:func:`grid_edges`, :func:`space_edges`, :func:`edge_note`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recvae.models.base import Recommender
from recvae.tuning.spaces import Range, _is_number, search_space

__all__ = [
    "SeedFit",
    "GridSearchResult",
    "SearchResult",
    "grid_edges",
    "space_edges",
    "edge_note",
    "EDGE_FRACTION",
    "TRIAL_STATES",
]

#: A chosen value within this share of its range's width from an end (log scale for log ranges) is on the edge.
EDGE_FRACTION = 0.1
TRIAL_STATES = ("complete", "pruned", "failed")


@dataclass
class SeedFit:
    """One fit of a chosen configuration: ``offset`` is added to the model's own seed (0: the search's fit)."""

    offset: int
    model: Recommender | None  # None only while a finalist other than the search's pick is being re-scored
    score: float
    fit_seconds: float


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
        edges: each numeric dimension searched -> ``"low"`` or ``"high"`` when the
            chosen value sits on that edge of the searched values, else None (see
            :func:`grid_edges` and :func:`space_edges`).
        seconds: the search's wall time.
        searched: the grid (or search space) as given, which :meth:`edges_for` reads.
        finalists: after :func:`reselect_over_seeds`, one row per finalist re-scored
            over seeds (None before).
        seed_fits: after :func:`reselect_over_seeds`, the chosen finalist's fits, seed
            offset 0 first (``best_model`` is the first); empty before.
    """

    trials: pd.DataFrame
    best_params: dict[str, Any]
    best_model: Recommender
    best_score: float
    metric: str
    edges: dict[str, str | None] = field(default_factory=dict)
    seconds: float = math.nan
    searched: dict[str, Any] = field(default_factory=dict)
    finalists: pd.DataFrame | None = None
    seed_fits: list[SeedFit] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.trials)} trials; best {self.metric}={self.best_score:.4f} "
            f"with {self.best_params})"
        )

    def edge_note(self) -> str:
        """``"edge: lr=high, l2=low"`` for the chosen values on the edge of the searched values, else ``""``."""
        return edge_note(self.edges)

    def edges_for(self, params: Mapping[str, Any]) -> dict[str, str | None]:
        """The edges of the grid ``params`` sit on (see :func:`grid_edges`); empty when nothing was recorded."""
        return grid_edges(self.searched, params) if self.searched else {}


@dataclass(repr=False)
class SearchResult(GridSearchResult):
    """What :func:`optuna_search` found: a :class:`GridSearchResult` with every trial's state and the budget.

    ``trials`` has one row per trial, in order: ``trial`` (its number), ``state``
    (``complete``, ``pruned`` or ``failed``), a column per searched parameter, the
    metric (NaN unless complete), ``std_err``, ``n_users``, ``epochs`` (epochs trained,
    torch models), ``best_epoch``, ``fit_seconds`` (the training of a pruned trial up to
    its pruning), ``eval_seconds`` and ``error`` (why a trial failed).
    """

    sampler: str = "tpe"
    seed: int = 0
    n_trials: int = 0
    timeout_s: float | None = None
    prune: bool = True
    stopped_by_timeout: bool = False

    @property
    def counts(self) -> dict[str, int]:
        """Trials per state: ``{"complete": ..., "pruned": ..., "failed": ...}``."""
        return {state: int((self.trials["state"] == state).sum()) for state in TRIAL_STATES}

    def edges_for(self, params: Mapping[str, Any]) -> dict[str, str | None]:
        """The edges of the search space ``params`` sit on (see :func:`space_edges`)."""
        return space_edges(self.searched, params) if self.searched else {}


def _value_edge(values: Sequence[Any], chosen: Any) -> str | None:
    """``"low"`` / ``"high"`` when ``chosen`` is the smallest / largest of several numeric values, else None."""
    if not _is_number(chosen):
        return None
    if chosen == min(values):
        return "low"
    if chosen == max(values):
        return "high"
    return None


def _numeric_values(values: Sequence[Any]) -> bool:
    return len(values) >= 2 and all(_is_number(v) for v in values) and len(set(values)) >= 2


def grid_edges(grid: Mapping[str, Sequence[Any]], best_params: Mapping[str, Any]) -> dict[str, str | None]:
    """For each numeric grid dimension with two or more values: ``"low"`` / ``"high"`` when the chosen value is the
    smallest / largest tried, else None. Other dimensions (strings, booleans, a single value) have no edge and are
    left out."""
    edges: dict[str, str | None] = {}
    for name, values in grid.items():
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        if name in best_params and _numeric_values(values):
            edges[name] = _value_edge(values, best_params[name])
    return edges


def space_edges(space: Mapping[str, Any], best_params: Mapping[str, Any],
                fraction: float = EDGE_FRACTION) -> dict[str, str | None]:
    """For each numeric dimension of a search space: ``"low"`` / ``"high"`` when the chosen value lies within
    ``fraction`` of the range's width from that end (on the log scale for a log range), or is the smallest /
    largest of numeric choices; else None. Non-numeric choices have no edge and are left out."""
    edges: dict[str, str | None] = {}
    for name, dim in search_space(space).items():
        if name not in best_params:
            continue
        chosen = best_params[name]
        if isinstance(dim, Range):
            where = dim.position(chosen)
            edges[name] = "low" if where <= fraction else "high" if where >= 1 - fraction else None
        elif _numeric_values(list(dim.options)):
            edges[name] = _value_edge(list(dim.options), chosen)
    return edges


def edge_note(edges: Mapping[str, str | None]) -> str:
    """``{"lr": "high", "l2": None}`` -> ``"edge: lr=high"``; ``""`` when no value is on an edge."""
    flagged = [f"{name}={where}" for name, where in edges.items() if where]
    return f"edge: {', '.join(flagged)}" if flagged else ""
