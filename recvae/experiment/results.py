"""The experiment's results per model and the tables built from them.

:class:`Outcome` is what the runner hands the report for one model (its tuning,
its test metrics averaged over seeds, every seed's fit as a :class:`SeedRun`).
:func:`results_table` makes the one-row-per-model table (test means and CIs, the
per-seed spread, validation score, fit time, tuning columns, the paired test
against the model best on validation), :func:`finalists_table` and
:func:`per_user_table` the finalists' and the per-user tables; the report writes
each as CSV and words them in Markdown.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recvae.evaluation import EvaluationResult, paired_comparison
from recvae.tuning import GridSearchResult, SearchResult
from recvae.experiment.config import DEFAULT_BEYOND_ACCURACY, ExperimentConfig, ModelSpec

logger = logging.getLogger("recvae.experiment.report")  # the report's logger, as before the split

__all__ = ["Outcome", "SeedRun", "beyond_metrics", "finalists_table", "per_user_table", "results_table"]


@dataclass
class SeedRun:
    """One fit of a model's chosen configuration: seed ``seed`` is the model's configured seed + ``seed``.

    ``model`` is kept only while a later blend refers to it (None otherwise).
    """

    seed: int
    test: EvaluationResult
    fit_seconds: float
    best_epoch: int | None = None
    beta_reached: float | None = None
    model: Any = None


@dataclass
class Outcome:
    """One model's results, as the runner hands them to the report.

    ``search``, ``history``, ``best_epoch`` and ``beta_reached`` are the tuned fit's (seed 0).
    ``seed_runs`` holds every fit (seed 0 first; one for a deterministic model), ``test``
    their per-user test metrics averaged over the seeds (see
    :func:`recvae.evaluation.average_results`) and ``fit_seconds`` their mean. A blend's
    ``component_fit_seconds`` is the mean per-seed fit time of the earlier entries it
    reuses (``{ ref }``), which its own ``fit_seconds`` excludes.
    """

    spec: ModelSpec
    search: GridSearchResult
    test: EvaluationResult
    history: pd.DataFrame | None
    fit_seconds: float
    best_epoch: int | None
    beta_reached: float | None
    blend_weights: list[float] | None = None
    seed_runs: list[SeedRun] = field(default_factory=list)
    component_fit_seconds: float | None = None


def _reference(outcomes: list[Outcome], pool: list[Outcome] | None = None) -> Outcome | None:
    """The outcome with the best validation score (first on ties)."""
    pool = outcomes if pool is None else pool
    scored = [o for o in pool if math.isfinite(o.search.best_score)]
    return max(scored, key=lambda o: o.search.best_score) if scored else None


def _paired(a: Outcome, b: Outcome, metric: str) -> dict | None:
    try:
        return paired_comparison(a.test, b.test, metric)
    except ValueError as err:  # fewer than 2 users with a value under both
        logger.warning("no paired test of %s vs %s: %s", a.spec.label, b.spec.label, err)
        return None


def beyond_metrics(config: ExperimentConfig, outcomes: list[Outcome]) -> list[str]:
    """The beyond-accuracy metrics of the report: the config's (by default
    :data:`~recvae.experiment.config.DEFAULT_BEYOND_ACCURACY`) that every model's test evaluation has."""
    wanted = DEFAULT_BEYOND_ACCURACY if config.beyond_accuracy is None else config.beyond_accuracy
    return [m for m in wanted if all(m in o.test.summary.index for o in outcomes)]


def results_table(outcomes: list[Outcome], config: ExperimentConfig) -> pd.DataFrame:
    """One row per model: test means and CIs, validation score, fit time, chosen parameters, paired test;
    then the beyond-accuracy metrics (:func:`beyond_metrics`; ``ci95`` NaN for the global ones)."""
    ref = _reference(outcomes)
    beyond = beyond_metrics(config, outcomes)
    rows = []
    for o in outcomes:
        s = o.test.summary
        row: dict[str, Any] = {"model": o.spec.label, "registry_name": o.spec.name, "vae": o.spec.is_vae}
        for m in config.metrics:
            row[m] = float(s.loc[m, "mean"])
            row[f"{m} ci95"] = 1.96 * float(s.loc[m, "std_err"])
        row.update(_seed_columns(o, config.metrics))
        row["test_users"] = int(s.loc[config.select_by, "n_users"])
        row["test_users_without_target"] = int(s.loc[config.select_by, "n_excluded"]) if "n_excluded" in s.columns else None
        row[f"validation {config.select_by}"] = o.search.best_score
        row["fit_seconds"] = o.fit_seconds
        row["trials"] = len(o.search.trials)
        row.update(_search_columns(o))
        row["best_params"] = json.dumps(o.search.best_params, default=str)
        row["best_epoch"] = o.best_epoch
        row["seconds_to_best_epoch"] = seconds_to_epoch(o.history, o.best_epoch)
        row["beta_reached"] = o.beta_reached
        row["blend_weights"] = json.dumps(o.blend_weights) if o.blend_weights is not None else None
        row["paired_reference"] = ref.spec.label if ref is not None else None
        test = _paired(o, ref, config.select_by) if ref is not None and o is not ref else None
        row["paired_diff"] = test["mean_diff"] if test else np.nan
        row["paired_diff_ci95_low"] = test["diff_ci95_low"] if test else np.nan
        row["paired_diff_ci95_high"] = test["diff_ci95_high"] if test else np.nan
        row["t_pvalue"] = test["t_pvalue"] if test else np.nan
        row["wilcoxon_pvalue"] = test["wilcoxon_pvalue"] if test else np.nan
        for m in beyond:
            row[m] = float(s.loc[m, "mean"])
            half = 1.96 * s.loc[m, "std_err"] if "std_err" in s.columns else np.nan  # global: no CI
            row[f"{m} ci95"] = float(half)
        row.update(_seed_columns(o, beyond, times=False))
        rows.append(row)
    return pd.DataFrame(rows)


def seconds_to_epoch(history: pd.DataFrame | None, epoch: int | None) -> float | None:
    """Training and validation seconds up to the end of ``epoch`` (the history's ``elapsed_seconds``):
    the time a fit needed to reach the score it is reported with. None without a history."""
    if history is None or epoch is None or "elapsed_seconds" not in history.columns:
        return None
    at = history.loc[history["epoch"] == epoch, "elapsed_seconds"]
    return float(at.iloc[0]) if len(at) else None


def _runs(o: Outcome) -> list[SeedRun]:
    """The outcome's fits, seed 0 first (an outcome built without ``seed_runs`` is its one fit)."""
    return o.seed_runs or [SeedRun(seed=0, test=o.test, fit_seconds=o.fit_seconds, best_epoch=o.best_epoch,
                                   beta_reached=o.beta_reached)]


def _seed_columns(o: Outcome, metrics: tuple[str, ...] | list[str], *, times: bool = True) -> dict[str, Any]:
    """The per-seed columns of a results row: seeds, each metric's sd across seeds and per-seed values, and
    (``times``) the per-seed fit times, best epochs and β."""
    runs = _runs(o)
    row: dict[str, Any] = {"seeds": json.dumps([r.seed for r in runs])} if times else {}
    for m in metrics:
        values = [float(r.test.summary.loc[m, "mean"]) for r in runs]
        row[f"{m} sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
        row[f"{m} per seed"] = json.dumps(values)
    if not times:
        return row
    row["fit_seconds per seed"] = json.dumps([round(r.fit_seconds, 3) for r in runs])
    row["component_fit_seconds"] = o.component_fit_seconds
    row["best_epoch per seed"] = json.dumps([r.best_epoch for r in runs])
    row["beta_reached per seed"] = json.dumps([None if r.beta_reached is None else round(float(r.beta_reached), 4)
                                               for r in runs])
    return row


def _search_columns(o: Outcome) -> dict[str, Any]:
    """The tuning columns of a results row: grid or sampler, trials per state, budget, wall time, edge flag."""
    s = o.search
    if isinstance(s, SearchResult):
        counts, kind, budget = s.counts, s.sampler, s.n_trials
    else:
        counts, kind, budget = {"complete": len(s.trials), "pruned": 0, "failed": 0}, "grid", len(s.trials)
    return {"search": kind, "trial_budget": budget, "trials_complete": counts["complete"],
            "trials_pruned": counts["pruned"], "trials_failed": counts["failed"],
            "search_timeout_s": s.timeout_s if isinstance(s, SearchResult) else None,
            "search_seconds": s.seconds, "edge": s.edge_note() or None}


def finalists_table(outcomes: list[Outcome]) -> pd.DataFrame | None:
    """Every model's finalists re-scored over seeds (:func:`recvae.tuning.reselect_over_seeds`), one row each;
    None when no model was re-scored."""
    frames = [o.search.finalists.assign(model=o.spec.label) for o in outcomes if o.search.finalists is not None]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    return table[["model", *[c for c in table.columns if c != "model"]]]


def per_user_table(outcomes: list[Outcome], metric: str) -> pd.DataFrame:
    """Each test user's ``metric`` per model (averaged over the model's seeds): the data of every paired test."""
    table = None
    for o in outcomes:
        column = o.test.per_user[["user_id", metric]].rename(columns={metric: o.spec.label})
        table = column if table is None else table.merge(column, on="user_id", how="outer")
    return table
