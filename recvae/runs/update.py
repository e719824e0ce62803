"""Updating a run with new events: fold them in at once, or warm-start a refit when new items arrive.

:func:`update_run` is the body of :meth:`recvae.runs.Run.update` (``recvae update RUN LOG -o NEW``).
The new events are read with the run's own reading options (its column names, rating
threshold) and merged with what the run holds:

- events of known users and of new users on known items take effect without training: every
  model scores a user from their row (the VAEs through the encoder, EASE/EDLAE through ``x B``,
  ALS by its exact user step on the fixed item factors, see :class:`recvae.models.ALS`), so
  the new run holds the merged rows and the same model. New users get rows after the old ones;
  no user's or item's index moves.
- positive events on items the catalogue lacks need the model to learn those items: the
  model is refit, warm-started from the old weights (:mod:`recvae.models.warm_start`: old
  items keep their rows, new items are appended), with fewer epochs and early stopping on the
  run's own validation users. The split keeps its users where they were (training users
  train, held-out users stay held out, their new events join their fold-in); new users train.

The old run is only read. The new one is written as any run is (a staging folder renamed
into place): whole or absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.ids import coerce_ids, normalise_ids
from recvae.data.logs import InteractionLog, LogColumnError
from recvae.data.specs import LogSpec
from recvae.data.splits import HeldOut, Split
from recvae.models.mult_vae import TorchVAERecommender
from recvae.runs.directory import RunOutput, exclusive_lock, finite, work_dir, write_run
from recvae.runs.errors import RunError, first_ids, one_line
from recvae.runs.fitting import _evaluate, _fit, _stopping, jsonable, lower_eval_k, run_metrics, safe_params
from recvae.runs.warm import WarmSource, start_warm
from recvae.runs.workdir import discard_work_dir

logger = logging.getLogger(__name__)

__all__ = ["update_run", "read_new_events", "REFIT_CHOICES"]

REFIT_CHOICES = ("auto", "always", "never")


@dataclasses.dataclass
class _Events:
    """The new events as raw ids: positives (after the run's threshold) and every event (for "already seen")."""

    log: InteractionLog
    users: np.ndarray
    items: np.ndarray
    all_users: np.ndarray


def update_run(run, new_events, *, output=None, refit: str = "auto", epochs: int | None = None,
               evaluate: bool | str = True, report=None):
    """Merge ``new_events`` into ``run`` and return the new run (written to ``output`` when given);
    see :meth:`recvae.runs.Run.update`."""
    say = report or logger.info
    if refit not in REFIT_CHOICES:
        raise RunError(f"refit={refit!r}: choose one of {', '.join(REFIT_CHOICES)}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1):
        raise RunError(f"epochs={epochs!r}: give a positive number of epochs (--epochs N) or leave it unset")
    out = RunOutput.of(output)
    if out is not None and run.path is not None and _same_place(Path(out.path), run.path):
        raise RunError(f"{out.path}: is the run being updated; the old run is never changed: give a new directory")
    out_path = out.checked_path() if out is not None else None
    started = time.perf_counter()
    events = _positive_events(run, read_new_events(run, new_events))
    new_items = _new_ids(events.items, run.item_ids)
    if len(new_items) and refit == "never":
        raise RunError(f"{len(new_items):,} new item(s) in the events ({first_ids(new_items.tolist())}): the model "
                       "must learn them; allow a warm-start refit (refit='auto', --refit auto) or drop those events")
    item_ids = np.concatenate([run.item_ids, new_items]) if len(new_items) else run.item_ids
    parts = _merged_users(run, events, item_ids)
    record = {"from": None if run.path is None else os.fspath(run.path), "source": events.log.source,
              "events": int(events.log.n_events), "positive_events": int(len(events.users)),
              "known_users_updated": int(len(pd.Index(events.users).unique().intersection(pd.Index(run.user_ids)))),
              "new_users": int(len(parts["user_ids"]) - len(run.user_ids)), "new_items": int(len(new_items)),
              "refit": bool(len(new_items) or refit == "always")}
    say(f"update: {record['positive_events']:,} positive events of {record['events']:,}; "
        f"{record['known_users_updated']:,} known users, {record['new_users']:,} new users, "
        f"{record['new_items']:,} new items")
    if record["refit"]:
        model, split, metrics, fitted = _warm_refit(run, events, item_ids, parts["user_ids"], epochs, evaluate, say)
        record["warm_start"] = fitted.pop("warm_start")
    else:
        model, split, metrics, fitted = run.model, run.split, dict(run.metrics), {}
        say("update: no new items; the model is unchanged and scores the merged rows (fold-in)")
    record["seconds"] = round(time.perf_counter() - started, 3)
    config = {**run.config, **fitted, "command": "update", "argv": None if out is None else out.command_line,
              "updates": [*run.config.get("updates", []), jsonable(record)],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    new = type(run)(model, split, config=finite(config), metrics=metrics, **parts)
    if out_path is not None:
        _write(new, out, out_path)
    return new


def _same_place(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _write(run, out: RunOutput, out_path: Path) -> None:
    """Write the run through the work sibling's lock, as a fit does: whole or absent."""
    work = work_dir(out_path)
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive_lock(work))
        stack.callback(discard_work_dir, work)
        write_run(run, work, out_path, overwrite=out.overwrite)
    run.path = out_path


# ---------------------------------------------------------------------- reading the new events
def read_new_events(run, new_events) -> InteractionLog:
    """The new events as a log whose columns have the run's roles: a file or DataFrame is read with the run's
    column names (those the run's config records), a :class:`LogSpec` or :class:`InteractionLog` as given.

    Raises RunError (one line) when the events lack a column the run was read with."""
    columns = (run.config.get("data") or {}).get("columns") or {}
    if isinstance(new_events, InteractionLog):
        log = new_events
    elif isinstance(new_events, LogSpec):
        log = _read(new_events, columns)
    else:
        named = LogSpec(new_events, user_col=columns.get("user"), item_col=columns.get("item"),
                        rating_col=columns.get("rating") or "none", timestamp_col="none")
        try:
            log = named.read()
        except LogColumnError as err:  # a MovieLens file without a header: its own reader names the columns
            try:
                log = LogSpec(new_events).read()
            except (LogColumnError, ValueError, OSError):
                log = None
            if log is None or any(log.columns.get(r) != columns.get(r) for r in ("user", "item")):
                raise RunError(_column_message(err, columns)) from None
        except (ValueError, OSError) as err:
            raise RunError(f"new events: {one_line(err)}") from None
    if columns.get("rating") and not log.has_ratings:
        raise RunError(f"new events {log.source}: no rating column, but the run keeps events rated above "
                       f"{(run.config.get('data') or {}).get('rating_threshold')} in column {columns['rating']!r}; "
                       "give the events with their ratings")
    if not log.n_events:
        raise RunError(f"new events {log.source}: no events; nothing to update")
    return log


def _read(spec: LogSpec, columns: dict) -> InteractionLog:
    try:
        return spec.read()
    except LogColumnError as err:
        raise RunError(_column_message(err, columns)) from None
    except (ValueError, OSError) as err:
        raise RunError(f"new events: {one_line(err)}") from None


def _column_message(err: Exception, columns: dict) -> str:
    roles = ", ".join(f"{role} {name!r}" for role, name in columns.items() if name and role != "timestamp")
    return (f"new events: {one_line(err)}; they must have the columns of the run's log ({roles or 'as trained'}): "
            "write them with the same header")


def _positive_events(run, log: InteractionLog) -> _Events:
    """The positives (above the run's rating threshold, duplicates merged) and every event's user, as raw ids."""
    data = run.config.get("data") or {}
    threshold = data.get("rating_threshold") if log.has_ratings else None
    spec = LogSpec(log, rating_threshold=3.5 if threshold is None and not log.has_ratings else threshold,
                   min_user_events=1)
    try:
        positives = spec.interactions(log)
    except ValueError as err:
        if "no " not in str(err).lower() and "empty" not in str(err).lower():
            raise RunError(f"new events {log.source}: {one_line(err)}") from None
        users = items = np.zeros(0, dtype=np.asarray(run.user_ids).dtype)
    else:
        coo = positives.matrix.tocoo()
        users, items = positives.user_ids[coo.row], positives.item_ids[coo.col]
    return _Events(log, _run_ids(users, run.user_ids, "user"), _run_ids(items, run.item_ids, "item"),
                   _run_ids(log.raw_user_ids, run.user_ids, "user"))


def _run_ids(raw: np.ndarray, reference: np.ndarray, what: str) -> np.ndarray:
    """Raw ids of the new events in the type of the run's ids (text that spells a number finds a numeric id)."""
    if not len(raw):
        return np.asarray(reference)[:0]
    ids = normalise_ids(coerce_ids(raw, np.asarray(reference)), what)
    ref_kind, kind = np.asarray(reference).dtype.kind, ids.dtype.kind
    if (ref_kind in "iu") != (kind in "iu") and len(reference):
        raise RunError(f"new events: {what} ids such as {first_ids(ids[:3].tolist(), 3)} are "
                       f"{'text' if kind == 'U' else 'numbers'}, the run's are "
                       f"{'numbers' if ref_kind in 'iu' else 'text'} (e.g. {first_ids(reference[:3].tolist(), 3)}); "
                       "give the ids as the run's log wrote them")
    return ids


def _new_ids(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The distinct ids of ``ids`` not in ``known``, sorted (the order they are appended in)."""
    distinct = pd.Index(ids).unique()
    new = distinct[~distinct.isin(pd.Index(known))].to_numpy()
    # a pandas Index holds text as objects; the run saves its ids as a numpy str array only
    return np.sort(new.astype(str) if new.dtype == object else new)


# ---------------------------------------------------------------------- merging
def _pairs(users: np.ndarray, items: np.ndarray, user_index: pd.Index, item_index: pd.Index) -> sp.csr_matrix:
    """A 0/1 (len(user_index), len(item_index)) CSR of the (user, item) pairs whose ids both are in the indexes."""
    rows, cols = user_index.get_indexer(users), item_index.get_indexer(items)
    keep = (rows >= 0) & (cols >= 0)
    out = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
                        shape=(len(user_index), len(item_index)))
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def _grown(matrix: sp.csr_matrix, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """``matrix`` with empty rows and columns appended (its entries keep their places)."""
    matrix = sp.csr_matrix(matrix)
    indptr = np.concatenate([matrix.indptr, np.full(n_rows - matrix.shape[0], matrix.indptr[-1])])
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n_rows, n_cols))


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def _merged_users(run, events: _Events, item_ids: np.ndarray) -> dict:
    """The new run's users: the old ones in place, then the new users with a positive event on the catalogue;
    their merged positive rows and "already seen" rows, and the users preprocessing or the update dropped."""
    item_index = pd.Index(item_ids)
    usable = item_index.get_indexer(events.items) >= 0
    new_users = _new_ids(events.users[usable], run.user_ids)
    user_ids = np.concatenate([run.user_ids, new_users]) if len(new_users) else run.user_ids
    user_index = pd.Index(user_ids)
    shape = (len(user_ids), len(item_ids))
    history = _binary(_grown(run.history, *shape) + _pairs(events.users, events.items, user_index, item_index))
    seen = _binary(_grown(run.seen, *shape) + events.log.seen_rows(user_ids, item_ids) + history)
    dropped = pd.Index(run.dropped_user_ids)
    dropped = dropped[~dropped.isin(user_index)]
    without = _new_ids(events.all_users, np.concatenate([user_ids, np.asarray(dropped)]))
    if len(without):
        logger.warning("%s new user(s) have no positive event on the model's items (%s): listed as dropped users; "
                       "recommend for them once they have one", f"{len(without):,}", first_ids(without.tolist()))
    dropped_ids = np.concatenate([np.asarray(dropped), without]) if len(without) else np.asarray(dropped)
    return dict(user_ids=user_ids, history=history, seen=seen, dropped_user_ids=dropped_ids)


def _grown_split(split: Split, events: _Events, item_ids: np.ndarray, new_users: np.ndarray) -> Split:
    """The run's split over the grown catalogue: its users stay where they were, new users train; new events
    join the training rows of training users and the fold-in of held-out users (never a target item)."""
    n_items, item_index = len(item_ids), pd.Index(item_ids)
    train_ids = np.concatenate([split.train_user_ids, new_users]) if len(new_users) else split.train_user_ids
    train_index = pd.Index(train_ids)
    train = _grown(split.train, len(train_ids), n_items)
    train = train.maximum(_pairs(events.users, events.items, train_index, item_index)).tocsr()
    held = {}
    for which in ("validation", "test"):
        part = getattr(split, which)
        if part is None:
            held[which] = None
            continue
        target = _grown(part.target, part.n_users, n_items)
        added = _pairs(events.users, events.items, pd.Index(part.user_ids), item_index)
        added = (added - added.multiply(target > 0)).tocsr()
        added.eliminate_zeros()
        fold_in = _grown(part.fold_in, part.n_users, n_items).maximum(added).tocsr()
        held[which] = HeldOut(fold_in, target, part.user_ids, part.train_rows)
    info = dict(split.info, updated_items=int(n_items - split.n_items), updated_new_users=int(len(new_users)))
    return Split(train=train, validation=held["validation"], test=held["test"], item_ids=np.asarray(item_ids),
                 train_user_ids=train_ids, info=info)


# ---------------------------------------------------------------------- the warm-start refit
def refit_estimator(run, epochs: int | None):
    """An unfitted copy of the run's model for a warm-start refit, with fewer epochs: ``epochs``, or a quarter of the
    earlier best epoch (at least 5) for the torch models, a third of the ALS/BPR iterations; the KL weight held at
    the value the earlier run had reached (a constant schedule), early stopping on the validation users."""
    estimator = run.model.__sklearn_clone__()
    if isinstance(estimator, TorchVAERecommender):
        training = estimator.training
        best = run.config.get("best_epoch") or training.epochs
        planned = int(epochs or max(5, int(best) // 4))
        changes = {"epochs": planned, "min_epochs": min(training.min_epochs, planned), "checkpoint": None,
                   "resume": False}
        if training.patience is not None:
            changes["patience"] = max(2, min(training.patience, planned // 3))
        beta = run.config.get("best_beta")
        if beta is not None and training.anneal.kind != "constant":
            changes["anneal"] = {"kind": "constant", "cap": float(beta)}
        estimator.set_params(**changes)
    elif "iterations" in estimator.get_params():
        iterations = estimator.get_params()["iterations"]
        estimator.set_params(iterations=int(epochs or max(1, iterations // 3)))
    return estimator


def _warm_refit(run, events: _Events, item_ids: np.ndarray, user_ids: np.ndarray, epochs, evaluate, say):
    """Refit the run's model on the merged data, warm-started from its weights: (model, split, metrics, config)."""
    new_users = np.asarray(user_ids[len(run.user_ids):])
    split = _grown_split(run.split, events, item_ids, new_users)
    estimator = refit_estimator(run, epochs)
    lower_eval_k(estimator, split, say)
    said = start_warm(estimator, WarmSource(run.model, run.item_ids, str(run.path or "the run")), split.item_ids)
    say(said)
    seconds, failure = _fit(estimator, split)
    if failure is not None:
        raise RunError(f"the warm-start refit failed: {failure}; the old run is unchanged (try fewer epochs, "
                       "a lower learning rate, or a full refit)")
    results = _evaluate(estimator, split, evaluate)
    config = {"model_params": jsonable(safe_params(estimator)), "best_epoch": _best(estimator), **_stopping(estimator),
              "fit_seconds": round(seconds, 3), "split": dict(run.config.get("split") or {}, **split.info),
              "warm_start": said}
    say(f"warm-start refit: {seconds:.1f}s" + (f", best epoch {config['best_epoch']}" if config["best_epoch"] else ""))
    return estimator, split, run_metrics(results, None), config


def _best(estimator) -> int | None:
    best = getattr(getattr(estimator, "training_", None), "best_epoch", None)
    return None if best is None else int(best)
