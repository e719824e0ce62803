"""Tuning on a log: read and split it as a run does, then search a model's hyper-parameters on the validation users.

:func:`tune` is the public API behind ``recvae tune``; the search itself (optuna,
pruning, finalists re-scored over seeds) is :mod:`recvae.tuning`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from recvae.data.specs import LogSource, LogSpec, SplitSpec
from recvae.data.splits import Split
from recvae.data.tables import check_table_output, write_table
from recvae.models.base import Recommender
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.registry import MODELS
from recvae.runs.errors import RunError
from recvae.runs.fitting import as_split_spec, legacy_options, lower_eval_k, make_named, read_and_split
from recvae.runs.refit import best_record, tuning_outputs, write_best
from recvae.tuning import (
    SearchResult,
    check_finalist_counts,
    check_optuna,
    optuna_search,
    reselect_over_seeds,
    search_space,
    space_corners,
)

logger = logging.getLogger(__name__)

__all__ = ["tune"]


def tune(
    log: LogSource | LogSpec,
    model: str = "mult-vae",
    *,
    search: Mapping[str, Any],
    n_trials: int,
    params: Mapping[str, Any] | None = None,
    split: str | SplitSpec = "strong",
    sampler: str = "tpe",
    seed: int = 0,
    timeout_s: float | None = None,
    prune: bool = True,
    metric: str = "ndcg@100",
    finalists: int = 1,
    seeds: int = 3,
    output: str | os.PathLike | None = None,
    progress: bool | None = None,
    report: Callable[[str], None] | None = None,
    **deprecated: Any,
) -> SearchResult:
    """Read a log, split it, and search a model's hyper-parameters on the validation users.

    The log is read and split as :meth:`Run.fit` does; each trial fits ``model`` with
    ``params`` plus the sampled values on the training users and is scored by ``metric``
    on the validation users (:func:`recvae.tuning.optuna_search`: TPE or random search,
    torch trials median-pruned on their per-epoch NDCG). The test users are never read.

    Args:
        log, split: as in :meth:`Run.fit`; the split needs validation users (not ``heldout_users=0``).
        model: a registry name; ``search``: its space (:func:`recvae.tuning.search_space`).
        n_trials, sampler, seed, timeout_s, prune, metric: the search's budget and
            settings (``seed`` seeds the sampler).
        params: fixed parameters of every trial (torch models: no progress bar unless set).
        finalists, seeds: with ``finalists > 1`` (seeded models: the torch VAEs, ALS,
            BPR), the best ``finalists`` trials are each fit with ``seeds`` seeds and the
            best validation mean over seeds wins (:func:`recvae.tuning.reselect_over_seeds`);
            the result's ``finalists`` table lists them.
        output: a directory for ``trials.csv`` (every trial) and ``best.json`` (the chosen model,
            parameters, epoch and beta: ``Run.fit(epochs_from=DIR)`` refits exactly that), or a
            table path (``.csv``, ``.parquet``, ``.json``, ``.jsonl``) for the trials with
            ``STEM.best.json`` beside it; checked before any work.
        progress: show the bar over trials (None: on a terminal only).
        report: called with each line worth showing a user (default: logged at INFO).
        deprecated: recvae 0.1's flat keywords (``heldout_users``, ``split_seed``,
            ``rating_col``, ...) still work, with a FutureWarning.

    Returns:
        The :class:`recvae.tuning.SearchResult`; its ``best_model`` is the best trial's fitted model.

    Raises:
        RunError, SearchSpaceError (ValueErrors): bad arguments, space or data, one line each.
        ImportError: optuna is not installed (``pip install "recvae[tune]"``).
    """
    log, split, _, params, _ = legacy_options("tune", deprecated, log=log, split=split, output=None, params=params,
                                              split_seed_name="split_seed")
    say = report or logger.info
    outputs = None if output is None else tuning_outputs(output)
    if outputs is not None:
        check_table_output(outputs[0])
    split_spec = as_split_spec(split)
    if split_spec.every_user:
        raise RunError("tuning scores trials on validation users: heldout_users (--heldout-users) must be above 0")
    name = str(model).strip().lower()
    fixed = _check_search(name, search, params, finalists, seeds)
    _, _, the_split = read_and_split(LogSpec.of(log), split_spec, say)
    metric = _metric_within_catalogue(metric, the_split, say)

    def make(**sampled: Any) -> Recommender:
        estimator = make_named(name, {**fixed, **sampled})
        lower_eval_k(estimator, the_split, _quiet)
        return estimator

    result = optuna_search(make, search_space(search), the_split, n_trials=n_trials, sampler=sampler, seed=seed,
                           metric=metric, ks=(), prune=prune, timeout_s=timeout_s, progress=progress is not False)
    _say_search(result, metric, say)
    if finalists > 1:
        result = _rescore_finalists(result, make, the_split, metric, finalists, seeds, progress, say)
    if outputs is not None:
        _write_outputs(outputs, result, name, fixed, metric, say)
    return result


def _say_search(result: SearchResult, metric: str, say) -> None:
    counts, edge = result.counts, result.edge_note()
    say(f"{len(result.trials)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed) in {result.seconds:.1f}s; best validation {metric} "
        f"{result.best_score:.4f} with {result.best_params}" + (f" ({edge})" if edge else ""))


def _write_outputs(outputs: tuple, result: SearchResult, name: str, fixed: dict, metric: str, say) -> None:
    """The trials table and ``best.json`` (the chosen model, parameters, epoch and beta, for the refit)."""
    trials_path, best_path = outputs
    write_table(result.trials, trials_path)
    write_best(best_path, best_record(name, {**fixed, **result.best_params}, result.best_model, metric=metric,
                                      score=result.best_score))
    say(f"trials written to {trials_path}; the chosen parameters to {best_path} (refit on every user: "
        f"Run.fit(..., split=SplitSpec(heldout_users=0), epochs_from={str(best_path.parent)!r}))")


def _check_search(name: str, search: Mapping[str, Any], params, finalists: int, seeds: int) -> dict:
    """The fixed parameters of every trial, once the model, the space and the finalists are known to fit together
    (before the data is read)."""
    try:
        check_finalist_counts(finalists, seeds)
    except ValueError as err:
        raise RunError(str(err)) from None
    if finalists > 1 and name in MODELS and not MODELS[name].seeded:
        raise RunError(f"finalists re-score trials over seeds, but {name} is deterministic (another seed gives the "
                       "same fit); drop finalists, or tune a seeded model (the torch VAEs, als, bpr)")
    space = search_space(search)
    fixed = dict(params or {})
    both = sorted(set(fixed) & set(space))
    if both:
        raise RunError(f"{both} are both fixed (params / --param) and searched; keep each in one of them")
    for corner in space_corners(space):  # parameter names and types
        make_named(name, {**fixed, **corner})
    check_optuna()
    if issubclass(MODELS[name], TorchVAERecommender):
        fixed.setdefault("progress", False)
    return fixed


def _metric_within_catalogue(metric: str, the_split: Split, say) -> str:
    """``metric`` with its cut-off lowered to the catalogue size on a small catalogue."""
    metric_name, _, k = metric.partition("@") if isinstance(metric, str) else (metric, "", "")
    if k.isdigit() and int(k) > the_split.n_items:
        metric = f"{metric_name}@{the_split.n_items}"
        say(f"validation metric: {metric} (the catalogue has only {the_split.n_items} items)")
    return metric


def _rescore_finalists(result: SearchResult, make, the_split: Split, metric: str, finalists: int, seeds: int,
                       progress: bool | None, say) -> SearchResult:
    result = reselect_over_seeds(result, make, the_split, finalists=finalists, seeds=seeds,
                                 progress=progress is not False)
    for _, row in result.finalists.iterrows():
        say(f"finalist {row['finalist']} (trial {row['trial']}): validation {metric} mean over {seeds} seeds "
            f"{row[f'{metric} mean']:.4f}" + (" <- chosen" if row["chosen"] else ""))
    edge = result.edge_note()
    say(f"chosen over seeds: validation {metric} {result.best_score:.4f} with {result.best_params}"
        + (f" ({edge})" if edge else ""))
    return result


def _quiet(_: str) -> None:
    """Trials fit without saying each step."""
