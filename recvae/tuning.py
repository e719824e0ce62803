"""Hyper-parameter search on the validation users of a split (the test users are never touched).

Two searches, one result shape: :func:`grid_search` tries every combination of a
grid; :func:`optuna_search` samples a search space (random search or TPE, optuna)
for a budget of trials and prunes torch trials whose per-epoch validation NDCG
falls behind. Both keep only the best fitted model and flag a chosen value on the
edge of what was searched (``result.edges``)::

    from recvae.models import EASE, MultVAE
    from recvae.tuning import grid_search, optuna_search

    result = grid_search(EASE, {"l2": [100.0, 500.0, 1000.0]}, split)
    result.trials            # one row per combination
    result.best_params       # {"l2": 500.0}
    evaluate(result.best_model, split, "test")   # test once, with the chosen model

    space = {"lr": {"low": 1e-4, "high": 3e-3, "log": True},      # a float range (log scale)
             "latent_dim": {"low": 64, "high": 400, "step": 8},   # ints: low and high are ints
             "input_dropout": [0.2, 0.5, 0.7]}                    # a list: categorical choices
    result = optuna_search(MultVAE, space, split, n_trials=20, sampler="tpe", fixed={"epochs": 50})
    result.trials            # every trial: params, state (complete / pruned / failed), score, epochs, seconds
    result.edge_note()       # "edge: lr=high" when the best lr lies in the top 10% of its (log) range

A search scores each trial with one fit (one seed), so among trials within seed noise of
each other it picks the luckiest: a winner's curse that grows with the budget.
:func:`reselect_over_seeds` refits the best few trials with further seeds and picks the
one with the best validation score averaged over its seeds::

    result = reselect_over_seeds(result, MultVAE, split, finalists=3, seeds=3, fixed={"epochs": 50})
    result.finalists         # each finalist's validation score per seed, their mean, the one chosen
    result.seed_fits         # the chosen finalist's fits, seed 0 first (reuse them: no refit needed)

optuna is an optional dependency (``pip install "recvae[tune]"``), imported when a
search starts; the grid search needs nothing beyond recvae.
"""

from __future__ import annotations

import importlib.util
import dataclasses
import itertools
import json
import logging
import math
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recvae.evaluation import metrics as M
from recvae.data.splits import Split
from recvae.evaluation import evaluate
from recvae.models.base import Recommender
from recvae.models.mult_vae import TorchVAERecommender

logger = logging.getLogger(__name__)

__all__ = [
    "GridSearchResult",
    "SearchResult",
    "SeedFit",
    "grid_search",
    "optuna_search",
    "reselect_over_seeds",
    "check_finalist_counts",
    "reseeded",
    "parameter_grid",
    "Range",
    "Choices",
    "SearchSpaceError",
    "search_space",
    "read_search_space",
    "space_corners",
    "grid_edges",
    "space_edges",
    "edge_note",
    "check_optuna",
    "EDGE_FRACTION",
    "SAMPLERS",
    "TRIAL_STATES",
    "INSTALL_HINT",
]

INSTALL_HINT = 'pip install "recvae[tune]"'
#: A chosen value within this share of its range's width from an end (log scale for log ranges) is on the edge.
EDGE_FRACTION = 0.1
SAMPLERS = ("tpe", "random")
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
    search_started = time.perf_counter()

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
        trials=trials, best_params=dict(best_params), best_model=best_model, best_score=best_score, metric=metric,
        edges=grid_edges(grid, best_params), seconds=time.perf_counter() - search_started, searched=dict(grid),
    )


# =============================================================================== search spaces
class SearchSpaceError(ValueError):
    """A malformed search space: ``key`` names the dimension (None: the space as a whole), ``problem`` the fix."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"search space {key!r}: {problem}" if key is not None else f"search space: {problem}")
        self.key = key
        self.problem = problem


_RANGE_KEYS = ("low", "high", "log", "step")
_SPACE_EXAMPLE = 'lr = { low = 1e-4, high = 3e-3, log = true }, input_dropout = [0.2, 0.5]'


@dataclass(frozen=True)
class Range:
    """A numeric range to sample: integers when ``low`` and ``high`` are both ints, floats otherwise.

    ``log`` samples uniformly on a log scale (needs ``low > 0``); ``step`` restricts the
    values to ``low + k * step`` (not with ``log``). Both ends are included.
    """

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @property
    def is_int(self) -> bool:
        """Whether the range holds integers (``low`` and ``high`` given as ints)."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    def position(self, value: float) -> float:
        """Where ``value`` lies: 0 at ``low``, 1 at ``high`` (measured on the log scale for a log range)."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Choices:
    """Categorical choices, tried as given; TPE treats them as unordered."""

    options: tuple


def search_space(spec: Mapping[str, Any]) -> dict[str, Range | Choices]:
    """Validate a search space written as plain data (TOML, JSON or Python) and return its dimensions.

    Each key is a parameter name; its value is either a range table
    ``{"low": 1e-4, "high": 3e-3, "log": True}`` (ints when ``low`` and ``high`` are
    ints; optional ``step``) or a non-empty list of choices ``[0.2, 0.5, 0.7]``.
    Values already parsed (:class:`Range`, :class:`Choices`) pass through.

    Raises:
        SearchSpaceError: (a ValueError) one line naming the key, the problem and the fix.
    """
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(None, f"must be a table of parameter name -> range or list of choices, e.g. "
                                     f"{{ {_SPACE_EXAMPLE} }}; got {type(spec).__name__}")
    if not spec:
        raise SearchSpaceError(None, f"is empty; give at least one parameter, e.g. {{ {_SPACE_EXAMPLE} }}")
    space: dict[str, Range | Choices] = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SearchSpaceError(None, f"keys must be parameter names; got {key!r}")
        space[key] = _dimension(key, value)
    return space


def _dimension(key: str, value: Any) -> Range | Choices:
    if isinstance(value, (Range, Choices)):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        return _range(key, value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise SearchSpaceError(key, f"the list of choices is empty; give at least one value, e.g. {key} = [a, b]")
        return Choices(tuple(value))
    raise SearchSpaceError(key, f"must be a range {{ low = ..., high = ... }} (optional log = true, step = ...) or a "
                                f"list of choices [a, b, c]; got {value!r} (a fixed value goes in params)")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(x)


def _range(key: str, table: Mapping[str, Any]) -> Range:
    example = f"e.g. {key} = {{ low = 1e-4, high = 3e-3, log = true }}"
    unknown = [k for k in table if k not in _RANGE_KEYS]
    if unknown:
        close = {"min": "low", "max": "high", "lower": "low", "upper": "high", "log_scale": "log", "q": "step"}
        hint = f"; did you mean {close[unknown[0]]!r}?" if unknown[0] in close else ""
        raise SearchSpaceError(key, f"unknown key {unknown[0]!r} in the range{hint} (a range takes low, high, log "
                                    f"and step); {example}")
    missing = [k for k in ("low", "high") if k not in table]
    if missing:
        raise SearchSpaceError(key, f"the range needs {' and '.join(missing)}; {example}")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step")
    for name, x in (("low", low), ("high", high)):
        if not _is_number(x):
            raise SearchSpaceError(key, f"{name} must be a finite number; got {x!r}")
    if not isinstance(log, bool):
        raise SearchSpaceError(key, f"log must be true or false; got {log!r}")
    is_int = isinstance(low, (int, np.integer)) and isinstance(high, (int, np.integer))
    low, high = (int(low), int(high)) if is_int else (float(low), float(high))
    if not low < high:
        raise SearchSpaceError(key, f"low ({low}) must be below high ({high}); a single value goes in params")
    if log and low <= 0:
        raise SearchSpaceError(key, f"a log range needs low > 0; got low = {low}")
    if step is not None:
        if not _is_number(step) or step <= 0:
            raise SearchSpaceError(key, f"step must be a positive number; got {step!r}")
        if log:
            raise SearchSpaceError(key, "log and step do not combine; drop one of them")
        if is_int and not isinstance(step, (int, np.integer)):
            raise SearchSpaceError(key, f"the step of an integer range must be an integer; got {step!r} "
                                        f"(or write low and high as floats, e.g. low = {low}.0)")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            fitted = low + math.floor(steps) * step
            raise SearchSpaceError(key, f"high - low ({high - low:g}) must be a multiple of step ({step:g}); "
                                        f"e.g. high = {fitted:g}")
        step = int(step) if is_int else float(step)
    return Range(low, high, log, step)


def read_search_space(path: str | Path) -> dict[str, Any]:
    """A search space from a TOML or JSON file (``.json``: JSON, else TOML), validated.

    The file holds the space at its top level (``lr = { low = 1e-4, high = 3e-3, log = true }``)
    or under a ``[search]`` table. Returns the space as plain data.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not parse, or the space is malformed (one line, naming the file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"search space file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"{path} is not valid {kind}: {' '.join(str(err).split())}") from None
    if isinstance(raw, dict) and set(raw) == {"search"} and isinstance(raw["search"], dict):
        raw = raw["search"]
    try:
        search_space(raw)
    except SearchSpaceError as err:
        raise ValueError(f"{path}: {err}") from None
    return raw


def space_corners(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Two parameter sets of a space: every dimension at its low end / first choice, then at its high end / last
    choice. Building a model from each checks parameter names and types before a search starts."""
    dims = search_space(space)
    low = {k: d.low if isinstance(d, Range) else d.options[0] for k, d in dims.items()}
    high = {k: d.high if isinstance(d, Range) else d.options[-1] for k, d in dims.items()}
    return [low, high]


# =============================================================================== edges
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


# =============================================================================== optuna search
def check_optuna() -> None:
    """Raise ImportError naming the install command when optuna is missing (without importing it)."""
    if importlib.util.find_spec("optuna") is None:
        raise ImportError(f"hyper-parameter search needs optuna: {INSTALL_HINT}")


def _import_optuna():
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ImportError(f"hyper-parameter search needs optuna: {INSTALL_HINT}") from None


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


class _EpochReporter:
    """A torch trial's ``on_epoch``: reports each validated epoch's score to optuna and prunes the trial."""

    def __init__(self, trial, prune: bool, pruned: type[Exception]) -> None:
        self.trial, self.prune, self.pruned = trial, prune, pruned
        self.last_epoch: int | None = None

    def __call__(self, epoch: int, score: float) -> None:
        self.last_epoch = epoch
        if not math.isfinite(score):
            return
        self.trial.report(score, step=epoch)
        if self.prune and self.trial.should_prune():
            raise self.pruned(f"pruned at epoch {epoch} (validation {score:.4f})")


def _defaults_in_space(make_model: Callable[..., Recommender], fixed: Mapping[str, Any],
                       dims: Mapping[str, Range | Choices]) -> dict[str, Any]:
    """The model's default value of each searched parameter that lies in its dimension.

    ``anneal_<field>`` reads the field of the ``anneal`` table (see the torch VAEs' flat parameters).
    """
    try:
        defaults = make_model(**fixed).get_params()
    except (TypeError, ValueError):  # a factory that needs the searched parameters has no defaults to start from
        return {}
    start: dict[str, Any] = {}
    for name, dim in dims.items():
        if name in defaults:
            value = defaults[name]
        elif name.startswith("anneal_") and isinstance(defaults.get("anneal"), Mapping):
            value = defaults["anneal"].get(name[len("anneal_"):])
        else:
            continue
        if isinstance(dim, Choices):
            if _scalar_choices(dim.options):
                if any(value == option for option in dim.options):
                    start[name] = value
            elif _choice_label(value) in {_choice_label(option) for option in dim.options}:
                # optuna holds list choices as their labels, and the default (600,) is the option [600]
                start[name] = _choice_label(value)
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high
              and (dim.step is None or abs((value - dim.low) / dim.step - round((value - dim.low) / dim.step)) < 1e-9)):
            start[name] = value
    return start


def _suggest(trial, name: str, dim: Range | Choices) -> Any:
    if isinstance(dim, Range):
        if dim.is_int:
            return trial.suggest_int(name, dim.low, dim.high, step=dim.step or 1, log=dim.log)
        return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    options = list(dim.options)
    if _scalar_choices(options):
        return trial.suggest_categorical(name, options)
    labels = [_choice_label(o) for o in options]
    return options[labels.index(trial.suggest_categorical(name, labels))]


def _scalar_choices(options: Sequence[Any]) -> bool:
    return all(o is None or isinstance(o, (bool, int, float, str)) for o in options)


def _choice_label(option: Any) -> str:
    """How optuna holds a list or table choice (e.g. hidden_dims), whose choices must be scalars: its JSON text."""
    return json.dumps(option, sort_keys=True, default=str)


def _sampler(optuna, sampler: str, seed: int, n_trials: int):
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE starts from random trials: a third of the budget, between 2 and optuna's default of 10
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n_trials // 3)))


def optuna_search(
    make_model: Callable[..., Recommender],
    space: Mapping[str, Any],
    split: Split,
    *,
    n_trials: int,
    sampler: str = "tpe",
    seed: int = 0,
    metric: str = "ndcg@100",
    ks: Sequence[int] = (100,),
    fixed: Mapping[str, Any] | None = None,
    prune: bool = True,
    prune_warmup_epochs: int = 5,
    prune_startup_trials: int = 3,
    timeout_s: float | None = None,
    start_from_defaults: bool = True,
    progress: bool = True,
) -> SearchResult:
    """Sample ``space`` for ``n_trials`` trials (random search or TPE) and keep the best on the validation users.

    Each trial builds ``make_model(**fixed, **sampled)``, fits it on ``split`` (a torch
    VAE reports its validation NDCG@``eval_k`` after each epoch through ``fit``'s
    ``on_epoch``; the median pruner stops a trial whose score falls below the median of
    earlier trials at the same epoch), then evaluates ``metric`` on the validation users.
    Other models report only their final score. ``split.test`` is never read. Only the
    best fitted model is kept in memory. A trial whose training diverges is recorded as
    ``failed`` and the search goes on; any other error stops it.

    Args:
        make_model: a model class or factory taking the parameters as keyword arguments.
        space: the search space, see :func:`search_space`.
        split: the data; its validation users score the trials.
        n_trials: the budget: trials to run (fewer when ``timeout_s`` ends the search first).
        sampler: ``"tpe"`` (Bayesian; its first ``max(2, min(10, n_trials // 3))`` trials
            are random) or ``"random"``.
        seed: seeds the sampler: the same seed, space and data give the same trials.
        metric: what to maximise, ``"name@k"``.
        ks: cut-offs to evaluate (the metric's own k is added).
        fixed: parameters every trial gets (none of them may be searched).
        prune: prune torch trials on their per-epoch validation score.
        prune_warmup_epochs: epochs before a trial can be pruned.
        prune_startup_trials: complete trials before any trial is pruned.
        timeout_s: start no new trial after this many seconds (the first trial always runs,
            a running trial finishes).
        start_from_defaults: the first trial takes the model's own defaults (its recipe)
            for every searched parameter whose default lies in the space, so that a small
            budget never ends below the recipe by bad luck; the others are sampled.
        progress: show a tqdm bar over trials.

    Returns:
        A :class:`SearchResult`: every trial with its state, the best parameters,
        model and score, the edges of the space the best values sit on, the budget.

    Raises:
        SearchSpaceError: a malformed space. ValueError: bad arguments, or no trial
        completed with a finite score. ImportError: optuna is not installed.
    """
    if not isinstance(split, Split):
        raise TypeError(f"split must be a recvae Split (train/validation/test); got {type(split).__name__}")
    if not callable(make_model):
        raise TypeError(f"make_model must be a model class or a factory function; got {make_model!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1; got {n_trials!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive (or None); got {timeout_s!r}")
    if prune_warmup_epochs < 0 or prune_startup_trials < 0:
        raise ValueError("prune_warmup_epochs and prune_startup_trials must be >= 0")
    name, k = _parse_metric(metric)
    ks = sorted({int(x) for x in ks} | {k})
    dims = search_space(space)
    fixed = dict(fixed or {})
    both = sorted(set(fixed) & set(dims))
    if both:
        raise ValueError(f"{both} are both fixed and searched; keep each parameter in one of them")
    reserved = {"trial", "state", metric, "std_err", "n_users", "epochs", "best_epoch", "fit_seconds",
                "eval_seconds", "error"}
    clash = sorted(reserved & set(dims))
    if clash:
        raise ValueError(f"search parameter name(s) {clash} clash with the trials table's columns; rename them")
    optuna = _import_optuna()
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=prune_startup_trials, n_warmup_steps=prune_warmup_epochs)
              if prune else optuna.pruners.NopPruner())
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # recvae logs each trial itself
    try:
        study = optuna.create_study(direction="maximize", sampler=_sampler(optuna, sampler, seed, n_trials),
                                    pruner=pruner)
        logger.info("%s search: %d trials over %s on %s", sampler, n_trials, list(dims), metric)
        records: list[dict[str, Any]] = []
        best: tuple[float, dict[str, Any], Recommender] | None = None
        started = time.perf_counter()
        stopped_by_timeout = False
        if start_from_defaults:
            start = _defaults_in_space(make_model, fixed, dims)
            if start:
                study.enqueue_trial(start)
        bar = tqdm(total=n_trials, desc=f"{sampler} search", unit="trial", disable=None if progress else True)
        try:
            for _ in range(n_trials):
                if records and timeout_s is not None and time.perf_counter() - started >= timeout_s:
                    stopped_by_timeout = True
                    logger.info("search stopped by its timeout (%gs) after %d trials", timeout_s, len(records))
                    break
                trial = study.ask()
                params = {key: _suggest(trial, key, dim) for key, dim in dims.items()}
                record, model = _run_trial(optuna, trial, make_model, fixed, params, split, metric, name, ks, prune)
                records.append(record)
                score = record[metric]
                if record["state"] == "complete":
                    study.tell(trial, score)
                    if best is None or score > best[0]:
                        best = (score, params, model)  # earlier models are dropped: only the best is kept
                else:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED if record["state"] == "pruned"
                               else optuna.trial.TrialState.FAIL)
                del model
                bar.update(1)
                bar.set_postfix({metric: f"{best[0]:.4f}" if best else "—",
                                 "pruned": sum(r["state"] == "pruned" for r in records)})
        finally:
            bar.close()
    finally:
        optuna.logging.set_verbosity(verbosity)

    trials = pd.DataFrame.from_records(records)
    for column in ("n_users", "epochs", "best_epoch"):  # counts, blank where a trial has none (not 30.0)
        trials[column] = pd.Series([r[column] for r in records], index=trials.index, dtype=object)
    if best is None:
        errors = [r["error"] for r in records if r["error"]]
        raise ValueError(
            f"no trial of {len(records)} completed with a finite validation {metric}"
            + (f" (first error: {errors[0]})" if errors else "")
            + "; narrow the search space (e.g. lower lr) or check that the validation users have targets"
        )
    best_score, best_params, best_model = best
    logger.info("best %s=%.4f with %s", metric, best_score, best_params)
    return SearchResult(
        trials=trials, best_params=dict(best_params), best_model=best_model, best_score=best_score, metric=metric,
        edges=space_edges(dims, best_params), seconds=time.perf_counter() - started, sampler=sampler, seed=seed,
        n_trials=n_trials, timeout_s=timeout_s, prune=prune, stopped_by_timeout=stopped_by_timeout,
        searched=dict(space),
    )


def _run_trial(optuna, trial, make_model, fixed: dict, params: dict, split: Split, metric: str, name: str,
               ks: list[int], prune: bool) -> tuple[dict[str, Any], Recommender | None]:
    """Fit and validate one trial; returns its trials-table row and its model (None unless complete)."""
    model = make_model(**fixed, **params)
    reporter = _EpochReporter(trial, prune, optuna.TrialPruned)
    state, error = "complete", None
    started = time.perf_counter()
    try:
        if isinstance(model, TorchVAERecommender):
            model.fit(split, on_epoch=reporter)
        else:
            model.fit(split)
    except optuna.TrialPruned as err:
        state = "pruned"
        logger.info("trial %d %s: %s", trial.number, params, err)
    except FloatingPointError as err:  # TrainingDivergedError: this corner of the space does not train
        state, error = "failed", " ".join(str(err).split())
        logger.warning("trial %d %s failed: %s", trial.number, params, error)
    fit_seconds = time.perf_counter() - started
    training = getattr(model, "training_", None)
    history = getattr(training, "history", None)
    epochs = (int(history["epoch"].max()) if isinstance(history, pd.DataFrame) and len(history)
              else reporter.last_epoch)
    record: dict[str, Any] = {"trial": trial.number, "state": state, **params, metric: math.nan,
                              "std_err": math.nan, "n_users": None, "epochs": epochs,
                              "best_epoch": getattr(training, "best_epoch", None) if state == "complete" else None,
                              "fit_seconds": fit_seconds, "eval_seconds": math.nan, "error": error}
    if state != "complete":
        return record, None
    started = time.perf_counter()
    result = evaluate(model, split, "validation", ks=ks, metrics=(name,))
    row = result.summary.loc[metric]
    record.update({metric: float(row["mean"]), "std_err": float(row["std_err"]), "n_users": int(row["n_users"]),
                   "eval_seconds": time.perf_counter() - started})
    if math.isnan(record[metric]):
        record.update(state="failed", error=f"no {metric} value: no validation user has a target")
        return record, None
    logger.info("trial %d %s: %s=%.4f (fit %.2fs)", trial.number, params, metric, record[metric], fit_seconds)
    return record, model


# =============================================================================== finalists over seeds
def reseeded(model: Recommender, offset: int) -> Recommender:
    """An unfitted copy of a seeded ``model`` (``type(model).seeded``) with its seed + ``offset``.

    Raises:
        TypeError: the model's ``get_params()`` has no ``seed``.
    """
    params = model.get_params()
    if "seed" not in params:
        raise TypeError(f"{type(model).__name__} sets seeded = True but get_params() has no 'seed'; "
                        "list the seed among its parameters")
    return type(model)(**{**params, "seed": int(params["seed"]) + offset})


def _plain(value: Any) -> Any:
    """A trials-table cell as the Python value a model takes (numpy scalars become int / float / bool)."""
    return value.item() if isinstance(value, np.generic) else value


def _finalist_params(result: GridSearchResult, finalists: int) -> list[tuple[Any, dict[str, Any], float, float]]:
    """The ``finalists`` best distinct parameter sets of ``result``: (trial, params, score, fit seconds), best first.

    Only trials with a finite score count (a pruned or failed trial has none); ties keep the search's order,
    so the search's own pick comes first.
    """
    trials = result.trials
    names = [n for n in result.searched if n in trials.columns] if result.searched else list(result.best_params)
    scored = trials[np.isfinite(pd.to_numeric(trials[result.metric], errors="coerce"))]
    if "state" in scored.columns:
        scored = scored[scored["state"] == "complete"]
    order = scored.sort_values(result.metric, ascending=False, kind="stable")
    picked: list[tuple[Any, dict[str, Any], float, float]] = []
    seen: set[str] = set()
    for position, index in enumerate(order.index):
        # column by column: a row (iterrows) would turn an int column into floats beside a float one
        params = {n: _plain(order[n].iat[position]) for n in names}
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        trial = _plain(order["trial"].iat[position]) if "trial" in order.columns else index
        seconds = float(order["fit_seconds"].iat[position]) if "fit_seconds" in order.columns else math.nan
        picked.append((trial, params, float(order[result.metric].iat[position]), seconds))
        if len(picked) == finalists:
            break
    return picked


def _fit_and_score(model: Recommender, split: Split, metric: str, name: str, ks: Sequence[int]) -> tuple[float, float]:
    """Fit ``model`` and return (validation ``metric``, fit seconds); NaN score when its training diverged."""
    started = time.perf_counter()
    try:
        model.fit(split)
    except FloatingPointError as err:  # TrainingDivergedError: this seed does not train at these parameters
        logger.warning("finalist %s diverged: %s", model.get_params().get("seed"), " ".join(str(err).split()))
        return math.nan, time.perf_counter() - started
    fit_seconds = time.perf_counter() - started
    score = float(evaluate(model, split, "validation", ks=ks, metrics=(name,)).summary.loc[metric, "mean"])
    return score, fit_seconds


def check_finalist_counts(finalists: int, seeds: int) -> None:
    """Raise a one-line ValueError unless ``finalists`` and ``seeds`` are integers >= 1."""
    for label, value in (("finalists", finalists), ("seeds", seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1; got {value!r}")


def reselect_over_seeds(
    result: GridSearchResult,
    make_model: Callable[..., Recommender],
    split: Split,
    *,
    finalists: int = 3,
    seeds: int = 3,
    fixed: Mapping[str, Any] | None = None,
    ks: Sequence[int] = (),
    progress: bool = True,
) -> GridSearchResult:
    """Re-score a search's best trials over several seeds and pick the best mean on the validation users.

    A search scores each trial with one fit. When several trials lie within seed noise
    of each other, the highest of them is partly luck, and the more trials a search
    runs, the luckier (and the more over-stated) its winner: the winner's curse. This
    takes the ``finalists`` best distinct trials of ``result`` (complete trials only),
    fits each again with seed offsets 1 ... ``seeds - 1`` (:func:`reseeded`), and
    chooses the finalist whose validation score averaged over its ``seeds`` fits (the
    search's fit is seed offset 0) is highest; ties keep the search's order. A seed
    whose training diverges rules its finalist out; if every finalist is ruled out,
    the search's pick stands. ``split.test`` is never read.

    Args:
        result: a :func:`grid_search` or :func:`optuna_search` result over a seeded model
            (``type(model).seeded``; its parameters include ``seed``).
        make_model: the factory the search used.
        split: the split the search used.
        finalists: how many of the best trials to re-score (1: keep the search's pick,
            refit it with the further seeds).
        seeds: fits per finalist, the search's own included.
        fixed: the parameters every trial of the search got (optuna_search's ``fixed``).
        ks: cut-offs to evaluate besides the metric's own.
        progress: show a tqdm bar over the finalists' fits.

    Returns:
        A copy of ``result`` whose ``best_params``, ``best_model`` (the chosen finalist's
        seed-0 fit, refit when it was not the search's pick), ``best_score`` (its mean
        over seeds) and ``edges`` are the chosen finalist's; ``finalists`` has one row per
        finalist (trial, parameters, each seed's score, mean, fit seconds, chosen) and
        ``seed_fits`` the chosen finalist's fits, seed offset 0 first.

    Raises:
        ValueError: ``finalists`` or ``seeds`` below 1, or the model is not seeded.
        TypeError: the model's parameters have no ``seed``.
    """
    check_finalist_counts(finalists, seeds)
    if not type(result.best_model).seeded:
        raise ValueError(f"{type(result.best_model).__name__} is deterministic: another seed gives the same fit, "
                         "so there is nothing to re-score; use the search's pick")
    name, k = _parse_metric(result.metric)
    ks = sorted({int(x) for x in ks} | {k})
    fixed = dict(fixed or {})
    candidates = _finalist_params(result, finalists)
    rows: list[dict[str, Any]] = []
    leader: tuple[float, int, list[SeedFit]] | None = None  # (mean, candidate index, its fits)
    bar = tqdm(total=len(candidates) * (seeds - 1), desc="finalists over seeds", unit="fit",
               disable=None if progress else True)
    for index, (trial, params, score, fit_seconds) in enumerate(candidates):
        is_pick = params == {n: result.best_params.get(n) for n in params}
        fits = [SeedFit(0, result.best_model if is_pick else None, score, fit_seconds)]
        for offset in range(1, seeds):
            model = reseeded(make_model(**fixed, **params), offset)
            seed_score, seconds = _fit_and_score(model, split, result.metric, name, ks)
            fits.append(SeedFit(offset, model, seed_score, seconds))
            bar.update(1)
            if not math.isfinite(seed_score):
                break
        scores = [f.score for f in fits]
        mean = float(np.mean(scores)) if len(scores) == seeds and all(map(math.isfinite, scores)) else math.nan
        rows.append({"finalist": index + 1, "trial": trial, **params,
                     **{f"{result.metric} seed {f.offset}": f.score for f in fits},
                     f"{result.metric} mean": mean,
                     "fit_seconds": float(np.nansum([f.fit_seconds for f in fits])), "chosen": False})
        logger.info("finalist %d %s: %s over %d seeds %s, mean %.4f", index + 1, params, result.metric, len(fits),
                    [round(x, 4) for x in scores], mean)
        if math.isfinite(mean) and (leader is None or mean > leader[0]):
            leader = (mean, index, fits)  # others' fits are dropped: at most the leader's and the current's held
        bar.set_postfix({f"best mean {result.metric}": f"{leader[0]:.4f}" if leader else "—"})
    bar.close()
    finalist_table = pd.DataFrame.from_records(rows)
    if leader is None:
        logger.warning("every finalist diverged on a further seed; the search's pick stands")
        return dataclasses.replace(result, finalists=finalist_table, seed_fits=[])
    mean, index, fits = leader
    params = candidates[index][1]
    if fits[0].model is None:  # not the search's pick: its seed-0 model was dropped, fit it again
        model = make_model(**fixed, **params)
        score, seconds = _fit_and_score(model, split, result.metric, name, ks)
        if not math.isfinite(score):
            logger.warning("finalist %d diverged when refit at its search seed; the search's pick stands", index + 1)
            return dataclasses.replace(result, finalists=finalist_table, seed_fits=[])
        logger.info("finalist %d refit at seed offset 0: %s %.4f (search trial: %.4f)", index + 1,
                    result.metric, score, fits[0].score)
        fits[0] = SeedFit(0, model, fits[0].score, seconds)
    finalist_table.loc[index, "chosen"] = True
    return dataclasses.replace(result, best_params=dict(params), best_model=fits[0].model, best_score=mean,
                               edges=result.edges_for(params), finalists=finalist_table, seed_fits=fits)
