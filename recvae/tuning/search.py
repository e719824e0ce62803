"""The optuna search: a search space sampled for a budget of trials (random search or TPE), each
trial the objective (:class:`_Objective`: build, fit, score on the validation users), torch
trials reporting each validated epoch to the median pruner (:class:`_EpochReporter`), the first
trial at the model's own defaults (:func:`_defaults_in_space`). optuna is imported when a search
starts (:func:`check_optuna` says whether it can).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from recvae.data.splits import Split
from recvae.models.base import Recommender
from recvae.models.mult_vae import TorchVAERecommender
from recvae.tuning.results import SearchResult, space_edges
from recvae.tuning.scoring import check_search_inputs, metric_and_ks, validation_row
from recvae.tuning.spaces import Choices, Range, search_space

logger = logging.getLogger(__name__)

__all__ = ["optuna_search", "check_optuna", "SAMPLERS", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "recvae[tune]"'
SAMPLERS = ("tpe", "random")


def check_optuna() -> None:
    """Raise ImportError naming the install command when optuna is missing (without importing it)."""
    if importlib.util.find_spec("optuna") is None:
        raise ImportError(f"hyper-parameter search needs optuna: {INSTALL_HINT}")


def _import_optuna():
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise ImportError(f"hyper-parameter search needs optuna: {INSTALL_HINT}") from None


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
    check_search_inputs(make_model, split)
    _check_budget(n_trials, sampler, timeout_s, prune_warmup_epochs, prune_startup_trials)
    name, ks = metric_and_ks(metric, ks)
    dims, fixed = _checked_space(space, fixed, metric)
    optuna = _import_optuna()
    with _quiet(optuna):
        study = _study(optuna, sampler, seed, n_trials, prune, prune_startup_trials, prune_warmup_epochs)
        logger.info("%s search: %d trials over %s on %s", sampler, n_trials, list(dims), metric)
        started = time.perf_counter()
        start = _defaults_in_space(make_model, fixed, dims) if start_from_defaults else {}
        if start:
            study.enqueue_trial(start)
        objective = _Objective(optuna, make_model, fixed, dims, split, metric, name, ks, prune)
        records, best, timed_out = _run_trials(study, objective, n_trials, timeout_s, started, sampler, progress)
    trials = _trials_table(records, metric, best)
    best_score, best_params, best_model = best
    logger.info("best %s=%.4f with %s", metric, best_score, best_params)
    return SearchResult(
        trials=trials, best_params=dict(best_params), best_model=best_model, best_score=best_score, metric=metric,
        edges=space_edges(dims, best_params), seconds=time.perf_counter() - started, sampler=sampler, seed=seed,
        n_trials=n_trials, timeout_s=timeout_s, prune=prune, stopped_by_timeout=timed_out,
        searched=dict(space),
    )


@contextmanager
def _quiet(optuna) -> Iterator[None]:
    """optuna's own logging held at warnings while a search runs (recvae logs each trial itself)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _study(optuna, sampler: str, seed: int, n_trials: int, prune: bool, prune_startup_trials: int,
           prune_warmup_epochs: int):
    """The study of a search: it maximises the metric, samples with ``sampler``, prunes with the median pruner."""
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=prune_startup_trials, n_warmup_steps=prune_warmup_epochs)
              if prune else optuna.pruners.NopPruner())
    return optuna.create_study(direction="maximize", sampler=_sampler(optuna, sampler, seed, n_trials), pruner=pruner)


def _check_budget(n_trials: int, sampler: str, timeout_s: float | None, prune_warmup_epochs: int,
                  prune_startup_trials: int) -> None:
    """Refuse a budget, sampler or pruning setting :func:`optuna_search` cannot run."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1; got {n_trials!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive (or None); got {timeout_s!r}")
    if prune_warmup_epochs < 0 or prune_startup_trials < 0:
        raise ValueError("prune_warmup_epochs and prune_startup_trials must be >= 0")


def _checked_space(space: Mapping[str, Any], fixed: Mapping[str, Any] | None,
                   metric: str) -> tuple[dict[str, Range | Choices], dict[str, Any]]:
    """The space's dimensions and the fixed parameters, refused when they overlap or clash with the trials table."""
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
    return dims, fixed


@dataclass(frozen=True)
class _Objective:
    """One trial of a search: sample the space, then fit and validate ``make_model(**fixed, **params)``."""

    optuna: Any
    make_model: Callable[..., Recommender]
    fixed: dict[str, Any]
    dims: dict[str, Range | Choices]
    split: Split
    metric: str
    name: str
    ks: list[int]
    prune: bool

    def __call__(self, trial) -> tuple[dict[str, Any], dict[str, Any], Recommender | None]:
        """The trial's sampled parameters, its trials-table row and its model (None unless complete)."""
        params = {key: _suggest(trial, key, dim) for key, dim in self.dims.items()}
        record, model = _run_trial(self.optuna, trial, self.make_model, self.fixed, params, self.split, self.metric,
                                   self.name, self.ks, self.prune)
        return params, record, model


def _run_trials(study, objective: _Objective, n_trials: int, timeout_s: float | None, started: float, sampler: str,
                progress: bool) -> tuple[list[dict[str, Any]], tuple[float, dict[str, Any], Recommender] | None, bool]:
    """Ask, run and tell up to ``n_trials`` trials: (their rows, (score, params, model) of the best complete
    one or None, whether ``timeout_s`` ended the search)."""
    optuna, metric = objective.optuna, objective.metric
    records: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Recommender] | None = None
    stopped_by_timeout = False
    bar = tqdm(total=n_trials, desc=f"{sampler} search", unit="trial", disable=None if progress else True)
    try:
        for _ in range(n_trials):
            if records and timeout_s is not None and time.perf_counter() - started >= timeout_s:
                stopped_by_timeout = True
                logger.info("search stopped by its timeout (%gs) after %d trials", timeout_s, len(records))
                break
            trial = study.ask()
            params, record, model = objective(trial)
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
    return records, best, stopped_by_timeout


def _trials_table(records: list[dict[str, Any]], metric: str, best) -> pd.DataFrame:
    """The trials table of a search's rows; refuses a search in which no trial completed (``best`` None)."""
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
    return trials


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
    row = validation_row(model, split, metric, name, ks)
    record.update({metric: float(row["mean"]), "std_err": float(row["std_err"]), "n_users": int(row["n_users"]),
                   "eval_seconds": time.perf_counter() - started})
    if math.isnan(record[metric]):
        record.update(state="failed", error=f"no {metric} value: no validation user has a target")
        return record, None
    logger.info("trial %d %s: %s=%.4f (fit %.2fs)", trial.number, params, metric, record[metric], fit_seconds)
    return record, model
