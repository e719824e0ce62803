"""Finalists re-scored over seeds: a search scores each trial with one fit, so its pick is partly
luck (the winner's curse); :func:`reselect_over_seeds` refits the best few trials with further
seeds (:func:`reseeded`) and picks the best validation mean.
"""

from __future__ import annotations

import dataclasses
import json
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
from recvae.tuning.results import GridSearchResult, SeedFit
from recvae.tuning.scoring import metric_and_ks, validation_row

logger = logging.getLogger(__name__)

__all__ = ["reselect_over_seeds", "check_finalist_counts", "reseeded"]


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
    score = float(validation_row(model, split, metric, name, ks)["mean"])
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
    name, ks = metric_and_ks(result.metric, ks)
    fixed = dict(fixed or {})
    candidates = _finalist_params(result, finalists)
    rows: list[dict[str, Any]] = []
    leader: tuple[float, int, list[SeedFit]] | None = None  # (mean, candidate index, its fits)
    bar = tqdm(total=len(candidates) * (seeds - 1), desc="finalists over seeds", unit="fit",
               disable=None if progress else True)
    for index, candidate in enumerate(candidates):
        fits = _fits_over_seeds(result, candidate, make_model, fixed, split, name, ks, seeds, bar)
        scores = [f.score for f in fits]
        mean = float(np.mean(scores)) if len(scores) == seeds and all(map(math.isfinite, scores)) else math.nan
        rows.append(_finalist_row(index, candidate, fits, mean, result.metric))
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
        refit = _refit_at_search_seed(make_model, fixed, params, split, result.metric, name, ks, index, fits[0])
        if refit is None:
            return dataclasses.replace(result, finalists=finalist_table, seed_fits=[])
        fits[0] = refit
    finalist_table.loc[index, "chosen"] = True
    return dataclasses.replace(result, best_params=dict(params), best_model=fits[0].model, best_score=mean,
                               edges=result.edges_for(params), finalists=finalist_table, seed_fits=fits)


def _fits_over_seeds(result: GridSearchResult, candidate: tuple[Any, dict[str, Any], float, float],
                     make_model: Callable[..., Recommender], fixed: dict[str, Any], split: Split, name: str,
                     ks: list[int], seeds: int, bar) -> list[SeedFit]:
    """A finalist's fits, seed offset 0 (the search's: its model kept only for the search's pick) first, then
    one per further seed, stopping at the first whose training diverges."""
    trial, params, score, fit_seconds = candidate
    is_pick = params == {n: result.best_params.get(n) for n in params}
    fits = [SeedFit(0, result.best_model if is_pick else None, score, fit_seconds)]
    for offset in range(1, seeds):
        model = reseeded(make_model(**fixed, **params), offset)
        seed_score, seconds = _fit_and_score(model, split, result.metric, name, ks)
        fits.append(SeedFit(offset, model, seed_score, seconds))
        bar.update(1)
        if not math.isfinite(seed_score):
            break
    return fits


def _finalist_row(index: int, candidate: tuple[Any, dict[str, Any], float, float], fits: list[SeedFit], mean: float,
                  metric: str) -> dict[str, Any]:
    """A finalist's row of the finalists table (trial, parameters, each seed's score, mean, fit seconds), logged."""
    trial, params = candidate[:2]
    scores = [f.score for f in fits]
    logger.info("finalist %d %s: %s over %d seeds %s, mean %.4f", index + 1, params, metric, len(fits),
                [round(x, 4) for x in scores], mean)
    return {"finalist": index + 1, "trial": trial, **params,
            **{f"{metric} seed {f.offset}": f.score for f in fits},
            f"{metric} mean": mean,
            "fit_seconds": float(np.nansum([f.fit_seconds for f in fits])), "chosen": False}


def _refit_at_search_seed(make_model: Callable[..., Recommender], fixed: dict[str, Any], params: dict[str, Any],
                          split: Split, metric: str, name: str, ks: list[int], index: int,
                          search_fit: SeedFit) -> SeedFit | None:
    """The chosen finalist's seed-0 fit again (a finalist other than the search's pick had its model dropped),
    scored as in the search (``search_fit``'s score); None when the refit diverges: the search's pick stands."""
    model = make_model(**fixed, **params)
    score, seconds = _fit_and_score(model, split, metric, name, ks)
    if not math.isfinite(score):
        logger.warning("finalist %d diverged when refit at its search seed; the search's pick stands", index + 1)
        return None
    logger.info("finalist %d refit at seed offset 0: %s %.4f (search trial: %.4f)", index + 1,
                metric, score, search_fit.score)
    return SeedFit(0, model, search_fit.score, seconds)
