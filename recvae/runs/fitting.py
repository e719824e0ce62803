"""Fitting a run: read the log, split it, fit the model, evaluate it on the held-out users, describe it, write it.

:func:`fit_run` is the body of :meth:`recvae.runs.Run.fit`, one step per function
below it; :func:`read_and_split` is shared with :func:`recvae.runs.tune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae import __version__
from recvae.data.interactions import Interactions
from recvae.data.logs import InteractionLog, LogColumnError
from recvae.data.specs import LogSpec, SplitSpec
from recvae.data.splits import Split
from recvae.runtime.distributed import setup_from_env, teardown
from recvae.evaluation import evaluate as evaluate_on_split
from recvae.models.base import Recommender
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.registry import MODELS, make_model
from recvae.models.sizing import LogShape, apply_sizing
from recvae.runs.directory import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RUN_FORMAT,
    RunOutput,
    check_run_target,
    exclusive_lock,
    finite,
    read_json,
    work_dir,
    write_run,
)
from recvae.runs.errors import RunError, one_line
from recvae.runs.id_columns import log_id_columns
from recvae.runs.refit import best_record, carried_anneal, earlier_record
from recvae.runs.warm import check_warm_model, start_warm, warm_source
from recvae.runs.workdir import discard_work_dir

logger = logging.getLogger(__name__)

DEFAULT_KS = (20, 50, 100)
#: Parameters that say where a torch model checkpoints: the run sets them, they are not hyper-parameters.
_BOOKKEEPING = ("checkpoint", "resume", "history_csv", "history_jsonl")


def fit_run(cls, log, model, *, params, split, output, epochs_from, evaluate, report, model_seed=None,
            warm_start=None):
    """Read, split, fit, evaluate and (with ``output``) write a run of class ``cls``; see :meth:`Run.fit`."""
    say = report or logger.info
    log_spec, split_spec, out = LogSpec.of(log), as_split_spec(split), RunOutput.of(output)
    out_path = out.checked_path() if out is not None else None
    model_name, params = resolve_model(model, params, epochs_from, say)
    estimator = model if isinstance(model, Recommender) else make_named(model_name, params)
    earlier = None if warm_start is None else warm_source(warm_start, getattr(getattr(estimator, "training", None),
                                                                               "device", "auto"))
    if earlier is not None:
        check_warm_model(estimator, earlier)  # before the log is read
    if split_spec.every_user and _is_torch(estimator) and not isinstance(model, Recommender) \
            and epochs_from is None and "epochs" not in params:
        raise RunError("a fit on every user has no validation users to choose the epoch: give params={'epochs': N} "
                       "(--epochs N) or epochs_from=RUN (--epochs-from RUN), an earlier run's best epoch")
    if model_seed is not None and "seed" in estimator.get_params() and "seed" not in params:
        estimator.set_params(seed=model_seed)

    ctx = _distributed_context(estimator) if _is_torch(estimator) else None
    writes = out_path is not None and (ctx is None or ctx.is_main)
    if ctx is not None and not ctx.is_main:
        say = _quiet
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if ctx is not None:
            stack.callback(teardown)
        # the output is claimed before the log is read: a place that cannot take the run fails at once
        work = _claim_work_dir(stack, estimator, out, out_path, say) if writes else None
        raw_log, data, the_split = read_and_split(log_spec, split_spec, say)
        lower_eval_k(estimator, the_split, say)
        choices = {} if isinstance(model, Recommender) else \
            apply_sizing(estimator, LogShape.of(the_split.train), given=params, say=say)
        warm_said = None if earlier is None else start_warm(estimator, earlier, the_split.item_ids)
        if warm_said:
            say(warm_said)
        fit_seconds, failure = _fit(estimator, the_split)
        results = {} if failure is not None else _evaluate(estimator, the_split, evaluate)
        config = describe(estimator, model_name, params, raw_log, data, the_split, log_spec, split_spec,
                          epochs_from=epochs_from, command_line=None if out is None else out.command_line)
        config.update(catalogue_choices=jsonable(choices), fit_seconds=round(fit_seconds, 3), total_seconds=round(time.perf_counter() - started, 3),
                      processes=1 if ctx is None else ctx.world_size)
        if earlier is not None:
            config["warm_start"] = {"from": earlier.where, "carried": warm_said}
        run = cls(estimator, the_split, **known_users(the_split, raw_log), config=config,
                  metrics=run_metrics(results, failure))
        run._results = results
        if writes:
            write_run(run, work, out_path, overwrite=out.overwrite)
            run.path = out_path
    if failure is not None:
        where = (f"; the run was written to {out_path} with status 'failed' in metrics.json"
                 if out_path is not None else "")
        raise RunError(f"{failure}{where}")
    return run


def _claim_work_dir(stack: contextlib.ExitStack, estimator: Recommender, out: RunOutput, out_path: Path,
                    say) -> Path:
    """Create (or take back) and lock the run's work sibling; a torch model checkpoints there (and
    resumes a killed run's). It is never followed through a link nor taken from another user
    (:func:`recvae.runs.workdir.exclusive_lock`, which also clears a killed write's leftovers);
    a failure before the run is written removes it unless it keeps a checkpoint."""
    work = work_dir(out_path)
    stack.enter_context(exclusive_lock(work))
    stack.callback(discard_work_dir, work)
    # again under the lock: a run moved back from a killed overwrite is at the path now
    check_run_target(out_path, overwrite=out.overwrite, resume=True)
    if _is_torch(estimator) and out.checkpoint:
        estimator.set_params(checkpoint=str(work / CHECKPOINT_FILE), resume=True)
        if (work / CHECKPOINT_FILE).exists():
            say(f"resuming from the checkpoint of a killed run in {work}")
    return work


def _fit(estimator: Recommender, the_split: Split) -> tuple[float, str | None]:
    """Fit; (seconds, None) or, when training diverged, (seconds, the one-line reason)."""
    started = time.perf_counter()
    failure = None
    try:
        estimator.fit(the_split)
    except FloatingPointError as err:  # TrainingDivergedError: the net keeps the best weights so far
        failure = one_line(err)
    finally:
        if _is_torch(estimator):
            estimator.set_params(checkpoint=None, resume=False)
    return time.perf_counter() - started, failure


def _evaluate(estimator: Recommender, the_split: Split, evaluate: bool | str) -> dict:
    """The held-out results asked for: both sets (True), one (``"validation"``/``"test"``) or none (False)."""
    if not evaluate:
        return {}
    ks = default_ks(the_split.n_items)
    return {which: evaluate_on_split(estimator, the_split, which, ks=ks, progress=None)
            for which in (("validation", "test") if evaluate is True else (evaluate,))
            if getattr(the_split, which) is not None}


def describe(estimator: Recommender, model_name: str, params: dict, raw_log: InteractionLog, data: Interactions,
             the_split: Split, log_spec: LogSpec, split_spec: SplitSpec, *, epochs_from, command_line) -> dict:
    """The run's ``config.json``: what was fitted on what, how, and with which versions."""
    id_columns, clash = log_id_columns(raw_log.columns)  # the names its outputs give the ids
    if clash:
        logger.warning("%s", clash)
    return {
        "format": RUN_FORMAT,
        "command": "train",
        "argv": command_line,
        "model": model_name,
        "model_class": type(estimator).__name__,
        "params": jsonable(params or {}),
        "model_params": jsonable(safe_params(estimator)),
        "data": {"source": raw_log.source, "columns": raw_log.columns, "id_columns": id_columns,
                 "notes": raw_log.notes,
                 "rating_threshold": log_spec.rating_threshold if raw_log.has_ratings else None,
                 "min_user_events": log_spec.min_user_events,
                 "preprocessing": data.report.as_dict() if data.report is not None else None},
        "split": dict(the_split.info, strategy=split_spec.strategy),
        "seed": split_spec.seed,
        "epochs_from": None if epochs_from is None else os.fspath(epochs_from),
        "best_epoch": _best_epoch(estimator),
        **_stopping(estimator),
        **{k: v for k, v in best_record(model_name, params, estimator, metric="", score=0.0).items()
           if k in ("best_beta", "steps_per_epoch")},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_metrics(results: dict, failure: str | None) -> dict:
    """The run's ``metrics.json``: a summary per held-out set, and the status."""
    metrics = {which: {"n_users": len(r.per_user), "seconds": r.seconds, "summary": _summary_records(r)}
               for which, r in results.items()}
    metrics["status"] = "success" if failure is None else "failed"
    if failure is not None:
        metrics["error"] = failure
    return metrics


# ---------------------------------------------------------------------- the data
def read_and_split(log_spec: LogSpec, split_spec: SplitSpec, say) -> tuple[InteractionLog, Interactions, Split]:
    """Read the log, preprocess and split it, saying each step: (raw log, interactions, split)."""
    raw_log = log_spec.read()
    for note in raw_log.notes:
        say(note)
    try:
        data = log_spec.interactions(raw_log)
    except ValueError as err:
        raise RunError(f"{raw_log.source}: {one_line(err)}") from None
    say(f"data: {data.report if data.report is not None else data}")
    try:
        the_split = split_spec.make(data)
    except LogColumnError as err:
        raise RunError(one_line(err)) from None
    except ValueError as err:
        raise RunError(f"cannot split the data (heldout_users / --heldout-users, --split): {one_line(err)}") from None
    say(f"split: {the_split}")
    return raw_log, data, the_split


def as_split_spec(split: str | SplitSpec) -> SplitSpec:
    """``split`` as a SplitSpec; a bad kind or combination is a :class:`RunError`."""
    try:
        return SplitSpec.of(split)
    except ValueError as err:
        raise RunError(one_line(err)) from None


def known_users(the_split: Split, raw_log: InteractionLog) -> dict:
    """Every user of the split once (raw ids, in split order), their positive rows, every item each has seen,
    and the raw users preprocessing dropped: the keyword arguments of ``Run``."""
    ids = [np.asarray(the_split.train_user_ids)]
    rows = [the_split.train]
    for which in ("validation", "test"):
        held = getattr(the_split, which)
        if held is not None:
            ids += [np.asarray(held.user_ids), np.asarray(held.user_ids)]
            rows += [held.fold_in, held.target]
    all_ids = np.concatenate(ids)
    unique = all_ids[~pd.Index(all_ids).duplicated(keep="first")]
    position = pd.Index(unique).get_indexer(all_ids)
    owner = sp.csr_matrix((np.ones(len(all_ids), np.float32), (position, np.arange(len(all_ids)))),
                          shape=(len(unique), len(all_ids)))
    history = (owner @ sp.vstack(rows).tocsr()).tocsr()
    history.data[:] = 1.0
    history.sort_indices()
    seen = (raw_log.seen_rows(unique, the_split.item_ids) + history).tocsr()
    seen.data[:] = 1.0
    raw_users = np.unique(raw_log.raw_user_ids)
    dropped = raw_users[~pd.Index(raw_users).isin(unique)] if len(raw_users) else raw_users
    return dict(user_ids=unique, history=history, seen=seen, dropped_user_ids=dropped)


def default_ks(n_items: int) -> list[int]:
    return [k for k in DEFAULT_KS if k <= n_items] or [n_items]


# ---------------------------------------------------------------------- the model
def resolve_model(model, params, epochs_from, say) -> tuple[str, dict]:
    """(registry name, flat params) from the arguments and an earlier run's best epoch, model and params."""
    params = dict(params or {})
    if isinstance(model, Recommender):
        if params:
            raise RunError("params apply to a model given by name; set them on the model instance instead "
                           "(model.set_params(...))")
        if epochs_from is not None:
            raise RunError("epochs_from applies to a model given by name; set epochs on the model instead")
        name = next((n for n, c in MODELS.items() if type(model) is c), type(model).__name__.lower())
        return name, params
    if epochs_from is not None:
        earlier = earlier_record(epochs_from)
        given_anneal = "anneal" in params
        best = earlier.get("best_epoch")
        if best is None:
            raise RunError(f"epochs_from {epochs_from}: that run has no best epoch (not a torch model, or it had "
                           "no validation users); give params={'epochs': N} instead")
        if model is None:
            model = earlier.get("model")
            inherited = {k: v for k, v in (earlier.get("params") or {}).items() if k not in ("epochs", *_BOOKKEEPING)}
            params = {**inherited, **params}
        if "epochs" in params:
            raise RunError("give epochs (params['epochs'], --epochs) or epochs_from, not both")
        params["epochs"] = int(best)
        say(f"epochs: {params['epochs']}, the best epoch of {epochs_from}")
        if not given_anneal and str(model).strip().lower() == earlier.get("model"):
            anneal, carried = carried_anneal(earlier, params["epochs"])
            if anneal is not None:
                params["anneal"] = anneal
            if carried:
                say(carried)
    return str(model or "mult-vae").strip().lower(), params


def earlier_model(epochs_from: str | os.PathLike | None) -> str | None:
    """The registry name of the model an earlier run fitted, which ``Run.fit(epochs_from=...)`` refits
    when no model is given; None when there is no such run or it cannot be read (fitting names why)."""
    try:
        return earlier_record(epochs_from).get("model") if epochs_from else None
    except (RunError, OSError):
        return None


def make_named(name: str, params: Mapping[str, Any] | None) -> Recommender:
    """The registry's model ``name`` with ``params``; a bad name or parameter is one :class:`RunError` line."""
    try:
        return make_model(name, dict(params or {}))
    except KeyError as err:
        raise RunError(one_line(err)) from None
    except (TypeError, ValueError) as err:
        text = one_line(err)  # a message that names the model (or the parameter and value) needs no prefix
        named = f"model {name!r}" in text or f"'{name}'" in text or "=" in text.split(":")[0]
        raise RunError(text if named else f"model {name} with parameters {dict(params or {})}: {text}") from None


def lower_eval_k(model: Recommender, the_split: Split, say) -> None:
    """A torch model validates by NDCG@eval_k: lower it to the catalogue size on a small catalogue."""
    if _is_torch(model) and the_split.validation is not None and model.training.eval_k > the_split.n_items:
        say(f"validation metric: NDCG@{the_split.n_items} (the catalogue has only {the_split.n_items} items)")
        model.set_params(eval_k=the_split.n_items)


def _is_torch(model: Recommender) -> bool:
    return isinstance(model, TorchVAERecommender)


def _quiet(_: str) -> None:
    """Ranks other than 0 print nothing."""


def _distributed_context(model: Recommender):
    """The torch.distributed context when launched by torchrun (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return setup_from_env(getattr(model.training, "device", "auto"))


def _stopping(model: Recommender) -> dict:
    """How training ended: the epochs trained and why it stopped there (torch models)."""
    training = getattr(model, "training_", None)
    history = getattr(training, "history", None)
    if training is None or history is None:
        return {}
    trained, planned = len(history), model.training.epochs
    if training.stopped_early:
        reason = (f"early stop: no better validation score in {model.training.patience} evaluations after epoch "
                  f"{training.best_epoch}")
    else:
        reason = "all planned epochs" if trained >= planned else "stopped"
    return {"epochs_trained": trained, "stopped": reason}


def _best_epoch(model: Recommender) -> int | None:
    best = getattr(getattr(model, "training_", None), "best_epoch", None)
    return None if best is None else int(best)


def safe_params(model: Recommender) -> dict:
    """The model's hyper-parameters without the run's bookkeeping (checkpoint paths)."""
    try:
        params = model.get_params()
    except NotImplementedError:
        return {}
    return {k: v for k, v in params.items() if k not in _BOOKKEEPING}


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars, dataclasses and models made JSON-writable."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Recommender):
        return {"model": type(value).__name__, "params": jsonable(safe_params(value))}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if dataclasses.is_dataclass(value):
        return jsonable(dataclasses.asdict(value))
    return value


def _summary_records(result) -> dict:
    return finite(result.summary.to_dict(orient="index"))


def _versions() -> dict:
    import platform

    import torch

    return {"recvae": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------- the keywords before LogSpec / SplitSpec
_LOG_KEYWORDS = {"user_col", "item_col", "rating_col", "timestamp_col", "implicit", "weight_col", "sep", "data_dir",
                 "rating_threshold", "min_user_events", "strict"}
_OUTPUT_KEYWORDS = {"overwrite", "resume", "checkpoint", "command_line"}


def legacy_options(where: str, old: dict, *, log, split, output, params, split_seed_name: str = "seed"):
    """Map the flat keywords of recvae <= 0.1 onto (log, split, output, params, model seed), with a FutureWarning.

    ``split_seed_name``: the keyword that seeded the split (``seed`` for fit, ``split_seed`` for tune).
    """
    unknown = sorted(set(old) - _LOG_KEYWORDS - _OUTPUT_KEYWORDS - {"heldout_users", split_seed_name, "epochs"})
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")
    if not old:
        return log, split, output, params, None
    warnings.warn(f"{where}({', '.join(sorted(old))}=...) is deprecated: give the log as LogSpec(...), the split as "
                  "SplitSpec(...), the output as RunOutput(...) and epochs in params", FutureWarning, stacklevel=3)
    reading = {k: v for k, v in old.items() if k in _LOG_KEYWORDS}
    if reading:
        if isinstance(log, LogSpec):
            raise RunError(f"{where}: give the reading options either on the LogSpec or as keywords, not both")
        log = LogSpec(log, **reading)
    split_seed = old.get(split_seed_name)
    if "heldout_users" in old or split_seed is not None:
        spec = as_split_spec(split)
        try:
            split = dataclasses.replace(spec, heldout_users=old.get("heldout_users", spec.heldout_users),
                                        seed=spec.seed if split_seed is None else split_seed)
        except ValueError as err:
            raise RunError(one_line(err)) from None
    writing = {k: v for k, v in old.items() if k in _OUTPUT_KEYWORDS}
    if writing and output is not None:
        output = dataclasses.replace(RunOutput.of(output), **writing)
    if old.get("epochs") is not None:
        params = dict(params or {})
        if "epochs" in params:
            raise RunError("epochs is given twice (epochs= and params['epochs']); give it once")
        params["epochs"] = int(old["epochs"])
    return log, split, output, params, split_seed
