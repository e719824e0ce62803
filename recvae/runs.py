"""A run: one model fitted on one interaction log, saved as a directory, served by user id.

This is the public API behind ``recvae train / evaluate / recommend / embed /
similar / info``; everything the command line does can be done from here::

    from recvae.runs import Run

    run = Run.fit("ratings.csv", model="mult-vae", output="runs/tune")       # held-out users pick the epoch
    prod = Run.fit("ratings.csv", model="mult-vae", heldout_users=0,         # every user, every item
                   epochs_from="runs/tune", output="runs/prod")
    prod.recommend(["u1", "u2"], k=10, exclude=["m3"])                       # by raw user id
    prod.recommend_all("recs.parquet", k=100)                                # every user, streamed
    prod.embed_users().head()                                                # user_id, mu_*, sigma_*
    prod.similar_items(["m1"], k=5)

:func:`tune` (``recvae tune``) reads and splits a log the same way and searches a
model's hyper-parameters on the validation users (:func:`recvae.tuning.optuna_search`).

A run directory holds ``model`` (the saved model: a file, or a directory for a
blend), ``split/`` (the split the model was fitted on), ``users.npz`` (the raw
ids of the known users, each user's positive history and every item they
already interacted with in the log, any rating), ``history.csv`` (torch models),
``metrics.json``, ``config.json`` and ``manifest.json`` (the sha256 of every
file, checked on load). It is written into a temporary sibling and renamed into
place, so a directory at the run's path is always a whole run.

"Already seen" for recommendations served to users means every raw
interaction of the user in the log, ratings under the positive threshold and
duplicates included. The evaluation protocol is untouched: :meth:`Run.evaluate`
masks exactly the fold-in positives, as Liang et al. do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae import __version__
from recvae.distributed import setup_from_env, teardown
from recvae.evaluation import evaluate as evaluate_on_split  # Run.evaluate is a method
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.registry import MODELS, load_model, make_model
from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays
from recvae.data.ids import find_ids, lookup_ids
from recvae.data.interactions import Interactions
from recvae.data.logs import InteractionLog, read_log
from recvae.data.splits import Split, all_users_split, strong_generalization, temporal_split, weak_generalization
from recvae.data.tables import TableWriter, check_output_path, check_table_output, write_table
from recvae.models.base import Recommender, UserEmbeddings, item_mask, rank_in_blocks
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

__all__ = ["Run", "RunError", "SkippedUsers", "default_heldout_users", "tune", "LIANG_SEED"]

RUN_FORMAT = "recvae.run/1"
MODEL_FILE = "model"
SPLIT_DIR = "split"
USERS_FILE = "users.npz"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = "lock"

LIANG_SEED = 98765
#: Held-out users per set when not given: 10% of users, at most this many (Liang et al.: 10,000 of ML-20M's).
MAX_DEFAULT_HELDOUT = 10_000
DEFAULT_KS = (20, 50, 100)
SPLITS = ("strong", "weak", "temporal")


class RunError(ValueError):
    """A run cannot be written, read or used as asked; the message names the cause and the fix."""


@dataclass
class SkippedUsers:
    """Requested user ids that got no recommendations, and why."""

    dropped: list
    unknown: list
    min_user_events: int | None = None

    def __bool__(self) -> bool:
        return bool(self.dropped or self.unknown)

    @property
    def count(self) -> int:
        return len(self.dropped) + len(self.unknown)

    def message(self) -> str:
        """One line: how many were skipped, the first few ids of each kind, and why."""
        parts = []
        if self.dropped:
            why = (f"fewer than {self.min_user_events} positive events, or none on the model's items"
                   if self.min_user_events is not None else "no usable events")
            parts.append(f"{len(self.dropped):,} dropped by preprocessing ({why}): {_first(self.dropped)}")
        if self.unknown:
            parts.append(f"{len(self.unknown):,} not in the log: {_first(self.unknown)}")
        return f"skipped {self.count:,} user id(s): " + "; ".join(parts)


def _first(ids: list, n: int = 5) -> str:
    shown = ", ".join(map(repr, ids[:n]))
    return shown + (f" and {len(ids) - n:,} more" if len(ids) > n else "")


def default_heldout_users(n_users: int) -> int:
    """Users per held-out set of a strong split: 10% of users, at least 1, at most 10,000."""
    return max(1, min(MAX_DEFAULT_HELDOUT, round(0.1 * n_users)))


# ============================================================================ helpers
def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """NaN/inf as None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _version() -> str:
    return __version__


def _ids_for_npz(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def _summary_records(result) -> dict:
    records = result.summary.to_dict(orient="index")
    return _finite(records)


def _default_ks(n_items: int) -> list[int]:
    return [k for k in DEFAULT_KS if k <= n_items] or [n_items]


@contextlib.contextmanager
def _exclusive_lock(directory: Path):
    """Hold an exclusive lock on ``directory/lock`` (released by the OS if the process dies)."""
    import fcntl

    handle = open(directory / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"{directory}: another recvae process is writing this run now; wait for it or choose another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


# ============================================================================ the run
class Run:
    """A fitted model with its data, split, known users and metrics; see the module docstring.

    Build one with :meth:`fit` or :meth:`load`. Attributes: ``model`` (a
    :class:`Recommender`), ``split``, ``user_ids`` (raw ids of the users the run
    can recommend to by id), ``history`` (their positive rows, the model's input),
    ``seen`` (every item each already interacted with), ``dropped_user_ids``
    (raw users of the log that preprocessing dropped), ``config``, ``metrics``
    and ``path`` (None until saved).
    """

    def __init__(
        self,
        model: Recommender,
        split: Split,
        *,
        user_ids: np.ndarray,
        history: sp.csr_matrix,
        seen: sp.csr_matrix,
        dropped_user_ids: np.ndarray | None = None,
        config: dict | None = None,
        metrics: dict | None = None,
        path: Path | None = None,
    ) -> None:
        self.model = model
        self.split = split
        self.user_ids = np.asarray(user_ids)
        self.history = history
        self.seen = seen
        self.dropped_user_ids = np.asarray([] if dropped_user_ids is None else dropped_user_ids)
        self.config = config or {}
        self.metrics = metrics or {}
        self.path = path
        self._user_index = pd.Index(self.user_ids)
        self._dropped_index = pd.Index(self.dropped_user_ids)

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (f"Run({self.config.get('model', type(self.model).__name__)}{where}: {len(self.user_ids):,} users x "
                f"{self.n_items:,} items)")

    @property
    def n_items(self) -> int:
        return int(self.split.n_items)

    @property
    def item_ids(self) -> np.ndarray:
        return self.split.item_ids

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        log: str | os.PathLike | pd.DataFrame | InteractionLog,
        model: str | Recommender | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        output: str | os.PathLike | None = None,
        overwrite: bool = False,
        resume: bool = False,
        checkpoint: bool = True,
        split: str = "strong",
        heldout_users: int | float | None = None,
        seed: int | None = None,
        epochs: int | None = None,
        epochs_from: str | os.PathLike | None = None,
        rating_threshold: float | None = 3.5,
        min_user_events: int = 5,
        strict: bool = False,
        user_col: str | None = None,
        item_col: str | None = None,
        rating_col: str | None = None,
        timestamp_col: str | None = None,
        implicit: bool = False,
        weight_col: str | None = None,
        sep: str | None = None,
        data_dir: str | os.PathLike = "data",
        evaluate: bool | str = True,
        report: Callable[[str], None] | None = None,
        command_line: list[str] | None = None,
    ) -> Run:
        """Read a log, split it, fit a model, evaluate it and (with ``output``) write the run directory.

        Args:
            log: a file, a MovieLens name, a DataFrame or an :class:`InteractionLog`.
            model: a registry name (``"mult-vae"``, ``"ease"``, ...) or an unfitted model;
                default ``"mult-vae"``, or the model of ``epochs_from``.
            params: flat hyper-parameters for a registry name.
            output: the run directory to write (checked before any work).
            overwrite: replace an existing run at ``output`` (only at the final rename).
            resume: continue a killed run's checkpoint (torch models).
            checkpoint: checkpoint torch models after each epoch (needs ``output``).
            split: ``strong`` (held-out users, Liang et al.), ``weak`` or ``temporal``.
            heldout_users: users in each of validation and test (strong split; default
                10%, at most 10,000); ``0`` trains on every user and every item (a
                production fit: give ``epochs`` or ``epochs_from``).
            seed: seeds the split and the model (default: 98765 for the split).
            epochs: training epochs of a torch model.
            epochs_from: an earlier run on held-out users: its best epoch becomes
                ``epochs``, and its model and parameters are the default.
            rating_threshold, min_user_events, strict: preprocessing (see
                :meth:`InteractionLog.interactions`).
            user_col, item_col, rating_col, timestamp_col, implicit, weight_col, sep: see :func:`read_log`
                (``weight_col``: interaction weights used as confidence by ALS, the VAEs, EASE ...).
            evaluate: evaluate on the held-out users after fitting (``"validation"``: those only).
            report: called with each line worth showing a user (default: logged at INFO).
            command_line: the command that made the run, recorded in ``config.json``.
        """
        say = report or logger.info
        out_path = check_output_path(output, directory=True) if output is not None else None
        if out_path is not None:
            _check_run_target(out_path, overwrite=overwrite, resume=resume)
        if split not in SPLITS:
            raise RunError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
        production = heldout_users is not None and heldout_users == 0
        if heldout_users is not None and split != "strong" and not production:
            raise RunError(f"heldout_users (--heldout-users) applies to the strong split (--split strong); the {split} "
                           "split holds out a share of every user's events instead")

        model_name, params = _resolve_model(model, params, epochs, epochs_from, say)
        estimator = model if isinstance(model, Recommender) else _make(model_name, params)
        if production and _is_torch(estimator) and epochs is None and epochs_from is None \
                and "epochs" not in (params or {}):
            raise RunError("a fit on every user has no validation users to choose the epoch: give epochs=N "
                           "(--epochs N) or epochs_from=RUN (--epochs-from RUN), an earlier run's best epoch")
        if seed is not None and "seed" in estimator.get_params() and "seed" not in (params or {}):
            estimator.set_params(seed=seed)

        ctx = _distributed_context(estimator) if _is_torch(estimator) else None
        writes = ctx is None or ctx.is_main
        if not writes:
            say = _quiet
        started = time.perf_counter()
        log, data, the_split = _read_and_split(
            log, say, user_col=user_col, item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
            implicit=implicit, weight_col=weight_col, sep=sep, data_dir=data_dir,
            rating_threshold=rating_threshold, min_user_events=min_user_events, strict=strict,
            split=split, heldout_users=heldout_users, seed=seed)
        _fit_eval_k(estimator, the_split, say)

        work = None
        with contextlib.ExitStack() as stack:
            if ctx is not None:
                stack.callback(teardown)
            if out_path is not None and writes:
                work = _work_dir(out_path)
                work.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_exclusive_lock(work))
                if _is_torch(estimator) and checkpoint:
                    estimator.set_params(checkpoint=str(work / CHECKPOINT_FILE), resume=True)
                    if (work / CHECKPOINT_FILE).exists():
                        say(f"resuming from the checkpoint of a killed run in {work}")
            fit_started = time.perf_counter()
            failure = None
            try:
                estimator.fit(the_split)
            except FloatingPointError as err:  # TrainingDivergedError: the net keeps the best weights so far
                failure = _one_line(err)
            finally:
                if _is_torch(estimator):
                    estimator.set_params(checkpoint=None, resume=False)
            fit_seconds = time.perf_counter() - fit_started
            results = {}
            if evaluate and failure is None:
                ks = _default_ks(the_split.n_items)
                for which in ("validation", "test") if evaluate is True else (evaluate,):
                    if getattr(the_split, which) is not None:
                        results[which] = evaluate_on_split(estimator, the_split, which, ks=ks, progress=None)

            user_ids, history = _known_users(the_split)
            seen = (log.seen_rows(user_ids, the_split.item_ids) + history).tocsr()
            seen.data[:] = 1.0
            raw_users = np.unique(log.raw_user_ids)
            dropped = raw_users[~pd.Index(raw_users).isin(user_ids)] if len(raw_users) else raw_users
            config = {
                "format": RUN_FORMAT,
                "command": "train",
                "argv": command_line,
                "model": model_name,
                "model_class": type(estimator).__name__,
                "params": _jsonable(params or {}),
                "model_params": _jsonable(_safe_params(estimator)),
                "data": {"source": log.source, "columns": log.columns, "notes": log.notes,
                         "rating_threshold": rating_threshold if log.has_ratings else None,
                         "min_user_events": min_user_events,
                         "preprocessing": data.report.as_dict() if data.report is not None else None},
                "split": dict(the_split.info, strategy=split if not production else "all_users"),
                "seed": seed,
                "epochs_from": None if epochs_from is None else os.fspath(epochs_from),
                "best_epoch": _best_epoch(estimator),
                "fit_seconds": round(fit_seconds, 3),
                "total_seconds": round(time.perf_counter() - started, 3),
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            metrics = {which: {"n_users": len(r.per_user), "seconds": r.seconds, "summary": _summary_records(r)}
                       for which, r in results.items()}
            metrics["status"] = "success" if failure is None else "failed"
            if failure is not None:
                metrics["error"] = failure
            config["processes"] = 1 if ctx is None else ctx.world_size
            run = cls(estimator, the_split, user_ids=user_ids, history=history, seen=seen, dropped_user_ids=dropped,
                      config=config, metrics=metrics)
            run._results = results
            if out_path is not None and writes:
                run._write(work, out_path, overwrite=overwrite)
        if failure is not None:
            where = (f"; the run was written to {out_path} with status 'failed' in metrics.json"
                     if out_path is not None else "")
            raise RunError(f"{failure}{where}")
        return run

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the run directory at ``path`` (atomically: a whole run or nothing there)."""
        path = check_output_path(path, directory=True)
        _check_run_target(path, overwrite=overwrite, resume=False)
        work = _work_dir(path)
        work.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(work):
            self._write(work, path, overwrite=overwrite)
        return path

    def _write(self, work: Path, path: Path, *, overwrite: bool) -> None:
        """Write every file into ``work`` (under its lock), then rename it to ``path``."""
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=work.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the run private
        try:
            self.model.save(staging / MODEL_FILE)
            self.split.save(staging / SPLIT_DIR)
            arrays = {"user_ids": _ids_for_npz(self.user_ids), "dropped_user_ids": _ids_for_npz(self.dropped_user_ids)}
            arrays.update(csr_to_arrays("history", self.history))
            arrays.update(csr_to_arrays("seen", self.seen))
            with open(staging / USERS_FILE, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            history = getattr(self.model, "history_", None)
            if history is not None:
                history.to_csv(staging / HISTORY_FILE, index=False)
            _write_json(staging / METRICS_FILE, _finite(self.metrics))
            _write_json(staging / CONFIG_FILE, _finite(self.config))
            manifest = {"format": RUN_FORMAT, "recvae": _version(),
                        "files": {p.relative_to(staging).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                                  for p in _files_under(staging)}}
            _write_json(staging / MANIFEST_FILE, manifest)
            _fsync_tree(staging)
            old = None
            if path.exists():
                if not overwrite:
                    raise RunError(f"{path}: already holds a run; choose another directory or pass --overwrite")
                old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
                os.replace(path, old)
            try:
                os.replace(staging, path)
            except BaseException:
                if old is not None:  # put the old run back: a failed replacement leaves it whole, in place
                    os.replace(old, path)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", verify: bool = True) -> Run:
        """Read a run directory, checking every file against its manifest."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory; give a directory written by 'recvae train' (Run.save)")
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            hint = " (written by an older recvae? train it again)" if (path / MODEL_FILE).exists() else ""
            raise RunError(f"{path}: not a recvae run directory: no {MANIFEST_FILE}{hint}")
        manifest = _read_json(manifest_path)
        if manifest.get("format") != RUN_FORMAT or not isinstance(manifest.get("files"), dict):
            raise RunError(f"{manifest_path}: not a recvae run manifest of format {RUN_FORMAT}")
        if verify:
            _verify_manifest(path, manifest)
        config = _read_json(path / CONFIG_FILE)
        metrics = _read_json(path / METRICS_FILE)
        try:
            model = load_model(path / MODEL_FILE, device=device)
        except (ValueError, KeyError, OSError) as err:
            raise RunError(f"{path / MODEL_FILE}: cannot load the model: {_one_line(err)}") from None
        if config.get("model_class") not in (None, type(model).__name__):
            raise RunError(f"{path}: config.json describes a {config.get('model_class')} but the model file holds a "
                           f"{type(model).__name__}; the run directory is inconsistent, train it again")
        try:
            split = Split.load(path / SPLIT_DIR)
            with np.load(path / USERS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            history, seen = csr_from_arrays("history", arrays), csr_from_arrays("seen", arrays)
            user_ids, dropped = arrays["user_ids"], arrays["dropped_user_ids"]
        except (ValueError, KeyError, OSError, EOFError) as err:
            raise RunError(f"{path}: cannot read the split or users file: {_one_line(err)}") from None
        if history.shape != (len(user_ids), model.n_items_) or seen.shape != history.shape \
                or split.n_items != model.n_items_:
            raise RunError(f"{path}: the users file, the split and the model disagree on the number of users or items; "
                           "train the run again")
        return cls(model, split, user_ids=user_ids, history=history, seen=seen, dropped_user_ids=dropped,
                   config=config, metrics=metrics, path=path)

    # ------------------------------------------------------------------ users
    def resolve_users(self, user_ids: Iterable, *, strict: bool = False) -> tuple[np.ndarray, np.ndarray, SkippedUsers]:
        """(rows, raw ids found, skipped) for raw user ids; ``strict`` refuses any skipped id."""
        raw = list(np.atleast_1d(np.asarray(list(user_ids) if not isinstance(user_ids, (str, bytes)) else [user_ids],
                                            dtype=object)).tolist())
        if not raw:
            raise RunError("no user ids given")
        positions, found = find_ids(self._user_index, raw)
        missing = [r for r, f in zip(raw, found) if not f]
        if missing and len(self._dropped_index):
            _, was_dropped = find_ids(self._dropped_index, missing)
        else:
            was_dropped = np.zeros(len(missing), dtype=bool)
        skipped = SkippedUsers(dropped=[m for m, d in zip(missing, was_dropped) if d],
                               unknown=[m for m, d in zip(missing, was_dropped) if not d],
                               min_user_events=self.config.get("data", {}).get("min_user_events"))
        if skipped and strict:
            raise RunError(f"{skipped.message()}; drop them or run without --strict (strict=False) to skip them")
        return positions[found], self.user_ids[positions[found]], skipped

    def _item_filter(self, spec, rows: np.ndarray, what: str, strict: bool) -> tuple[sp.csr_matrix | None, np.ndarray | None]:
        """Raw-id exclusion/candidate lists as (mask over (len(rows), items), rows it applies to).

        ``spec``: one list of raw item ids for every user, a ``{user_id: [item ids]}``
        dict, or a DataFrame with ``item_id`` (and ``user_id`` for per-user lists).
        Per-user lists apply to the users they name only.
        """
        if spec is None:
            return None, None
        n = len(rows)
        if isinstance(spec, pd.DataFrame):
            if "item_id" not in spec.columns:
                raise RunError(f"{what}: a table needs an item_id column (and user_id for per-user lists)")
            spec = list(spec["item_id"]) if "user_id" not in spec.columns else \
                spec.groupby("user_id", sort=False)["item_id"].apply(list).to_dict()
        if not isinstance(spec, Mapping):
            return item_mask(self._item_columns(spec, what, strict), n, self.n_items, what), None
        user_positions, found = find_ids(self._user_index, list(spec))
        order = np.argsort(rows, kind="stable")  # a user asked for twice holds two rows: each gets the list
        ordered = np.asarray(rows)[order]
        ri, ci = [], []
        applies = np.zeros(n, dtype=bool)
        for position, items in zip(user_positions[found], [v for v, f in zip(spec.values(), found) if f]):
            at = order[np.searchsorted(ordered, position, "left"):np.searchsorted(ordered, position, "right")]
            if len(at):
                cols = self._item_columns(items, what, strict)
                applies[at] = True
                ri.extend(np.repeat(at, len(cols)).tolist())
                ci.extend(np.tile(cols, len(at)).tolist())
        mask = sp.csr_matrix((np.ones(len(ri), np.float32), (ri, ci)), shape=(n, self.n_items))
        mask.sum_duplicates()
        return mask, applies

    def _item_columns(self, items, what: str, strict: bool) -> np.ndarray:
        items = [items] if isinstance(items, (str, bytes)) or np.isscalar(items) else list(items)
        positions, found = find_ids(pd.Index(np.asarray(self.item_ids)), items)
        if not found.all():
            unknown = [i for i, f in zip(items, found) if not f]
            message = f"{what}: {len(unknown):,} item id(s) not in the model's catalogue: {_first(unknown)}"
            if strict:
                raise RunError(message)
            logger.warning("%s; ignored", message)
        return positions[found]

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        user_ids: Iterable,
        k: int = 10,
        *,
        filter_seen: bool = True,
        exclude=None,
        candidates=None,
        strict: bool = False,
        batch_size: int = 1000,
        max_memory: int | None = None,
    ) -> pd.DataFrame:
        """Top-k items for known users by raw id: columns ``user_id, rank, item_id, score``.

        Args:
            user_ids: raw user ids of the log (strings or numbers as in the log; text that
                spells a number finds a numeric id).
            k: items per user.
            filter_seen: never recommend what the user already interacted with in the
                log (any rating, duplicates included); False keeps them.
            exclude: raw item ids never to recommend: one list for everyone, or a
                ``{user_id: [item ids]}`` dict / a ``user_id, item_id`` DataFrame per user.
            candidates: the only raw item ids that may be recommended (same forms).
            strict: refuse unknown or dropped user ids (and unknown item ids) instead of
                skipping them.
            max_memory: bytes the ranking of a batch may take (None: 1 GiB); see
                :meth:`recommend_all`.

        Skipped ids are logged as a warning and listed in ``frame.attrs["skipped"]``
        (a :class:`SkippedUsers`).
        """
        rows, found_ids, skipped = self.resolve_users(user_ids, strict=strict)
        if skipped:
            logger.warning("%s", skipped.message())
        frames = [self._recommend_rows(rows[s:s + batch_size], k, filter_seen, exclude, candidates, strict,
                                       max_memory) for s in range(0, len(rows), batch_size)]
        frames = frames or [self._empty_recommendations()]
        frame = pd.concat(frames, ignore_index=True)
        frame.attrs["skipped"] = skipped
        return frame

    def _empty_recommendations(self) -> pd.DataFrame:
        return pd.DataFrame({"user_id": self.user_ids[:0], "rank": np.zeros(0, np.int64),
                             "item_id": self.item_ids[:0], "score": np.zeros(0, np.float32)})

    def _recommend_rows(self, rows: np.ndarray, k: int, filter_seen: bool, exclude, candidates,
                        strict: bool, max_memory: int | None = None) -> pd.DataFrame:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RunError(f"k must be a positive integer; got {k!r}")
        history = self.history[rows]
        excluded = [self.seen[rows] if filter_seen else None, self._item_filter(exclude, rows, "exclude", strict)[0]]
        allowed, restricted = self._item_filter(candidates, rows, "candidates", strict)
        items, top = rank_in_blocks(self.model, history, min(int(k), self.n_items), exclude=excluded,
                                    candidates=allowed, restricted=restricted, max_memory=max_memory)
        n, kk = items.shape
        valid = (items >= 0).ravel()
        return pd.DataFrame({
            "user_id": np.repeat(self.user_ids[rows], kk)[valid],
            "rank": np.tile(np.arange(1, kk + 1), n)[valid],
            "item_id": self.item_ids[np.maximum(items, 0)].ravel()[valid],
            "score": top.ravel()[valid],
        })

    def recommend_for_items(self, item_ids: Iterable, k: int = 10, *, exclude=None, candidates=None,
                            strict: bool = False) -> pd.DataFrame:
        """Top-k for a new user from the raw ids of their items (fold-in, no retraining): ``rank, item_id, score``."""
        items = self._item_columns(list(item_ids), "items", strict)
        if len(items) == 0:
            raise RunError(f"items (--items) {_first(list(item_ids))}: none is in the model's catalogue of "
                           f"{self.n_items:,} items (ids look like {_first(self.item_ids[:3].tolist(), 3)}); "
                           "nothing to fold in")
        items = np.unique(items)
        row = sp.csr_matrix((np.ones(len(items), np.float32), items, [0, len(items)]), shape=(1, self.n_items))
        recs = self.model.recommend(
            row, k=min(int(k), self.n_items),
            exclude=None if exclude is None else self._item_columns(exclude, "exclude", strict),
            candidates=None if candidates is None else self._item_columns(candidates, "candidates", strict))
        return recs.to_frame()[["rank", "item_id", "score"]]

    def recommend_all(
        self,
        path: str | os.PathLike | None = None,
        k: int = 100,
        *,
        filter_seen: bool = True,
        exclude=None,
        candidates=None,
        batch_size: int = 1000,
        progress: bool | None = None,
        max_memory: int | None = None,
    ) -> Path | pd.DataFrame:
        """Top-k for every known user, streamed in user batches.

        With ``path`` (``.parquet``, ``.csv``, ``.json``, ``.jsonl``) the rows
        ``user_id, rank, item_id, score`` are written there atomically and the
        path is returned; without it, one DataFrame (fine for small logs).

        Memory: each batch of ``batch_size`` users is ranked within ``max_memory`` bytes
        (None: 1 GiB). When a batch's users x items scores would not fit, a model with
        block scoring (``Recommender.block_scoring``) scores the catalogue a block of
        items at a time and merges a running top-k; others are ranked in smaller user
        batches (see :func:`recvae.models.base.rank_in_blocks`). The output does not
        depend on it: e.g. ``run.recommend_all("recs.parquet", max_memory=256 * 2**20)``.
        """
        from tqdm.auto import tqdm

        if path is not None:
            check_table_output(path)
        starts = range(0, len(self.user_ids), batch_size)
        bar = tqdm(starts, desc="recommend", unit="batch", disable=None if progress is None else not progress)
        if path is None:
            frames = [self._recommend_rows(np.arange(s, min(s + batch_size, len(self.user_ids))), k, filter_seen,
                                           exclude, candidates, False, max_memory) for s in bar]
            return pd.concat(frames, ignore_index=True) if frames else self._empty_recommendations()
        with TableWriter(path) as writer:
            for s in bar:
                rows = np.arange(s, min(s + batch_size, len(self.user_ids)))
                writer.write(self._recommend_rows(rows, k, filter_seen, exclude, candidates, False, max_memory))
            if writer.rows == 0 and not len(self.user_ids):
                writer.write(self._empty_recommendations())
        return Path(path)

    # ------------------------------------------------------------------ embeddings, similar items
    def embed_users(self, user_ids: Iterable | None = None, *, strict: bool = False,
                    batch_size: int = 10_000) -> pd.DataFrame:
        """User embeddings by raw id (all known users by default): ``user_id, mu_0.., sigma_0..``.

        Each user's embedding comes from their positive history (for held-out
        users of a strong split: fold-in and target together). See
        :class:`recvae.models.UserEmbeddings` for what ``mu``/``sigma`` are per model.
        """
        if user_ids is None:
            rows, ids = np.arange(len(self.user_ids)), self.user_ids
        else:
            rows, ids, skipped = self.resolve_users(user_ids, strict=strict)
            if skipped:
                logger.warning("%s", skipped.message())
        parts = [self.model.embed_users(self.history[rows[s:s + batch_size]]) for s in range(0, len(rows), batch_size)]
        if not parts:
            raise RunError("no users to embed")
        sigma = None if parts[0].sigma is None else np.concatenate([p.sigma for p in parts])
        return UserEmbeddings(np.concatenate([p.mu for p in parts]), sigma).to_frame(ids)

    def item_embeddings(self) -> pd.DataFrame:
        """Item embeddings: ``item_id, emb_0..`` (decoder rows of a VAE, factors of ALS/BPR)."""
        values = np.asarray(self.model.item_embeddings())
        frame = pd.DataFrame({f"emb_{j}": values[:, j] for j in range(values.shape[1])})
        frame.insert(0, "item_id", self.item_ids)
        return frame

    def similar_items(self, item_ids: Iterable, k: int = 10) -> pd.DataFrame:
        """The ``k`` items most similar to each raw item id: ``item_id, rank, similar_item_id, score``.

        The similarity is the model's own (see :meth:`Recommender.item_similarities`):
        EASE's weights B[i, j], item-KNN's neighbour similarities, the cosine of
        ALS/BPR item factors or of the VAE decoder's item rows.
        """
        ids = [item_ids] if isinstance(item_ids, (str, bytes)) or np.isscalar(item_ids) else list(item_ids)
        columns = lookup_ids(pd.Index(np.asarray(self.item_ids)), ids, "item")
        recs = self.model.similar_items(columns, k=k, by_column=True)
        n, kk = recs.items.shape
        valid = recs.valid.ravel()
        return pd.DataFrame({
            "item_id": np.repeat(self.item_ids[columns], kk)[valid],
            "rank": np.tile(np.arange(1, kk + 1), n)[valid],
            "similar_item_id": self.item_ids[np.maximum(recs.items, 0)].ravel()[valid],
            "score": recs.scores.ravel()[valid],
        })

    # ------------------------------------------------------------------ evaluation and summary
    def evaluate(self, which: str = "test", *, ks=None, metrics=("ndcg", "recall"), progress: bool | None = None,
                 max_memory: int | None = None):
        """Metrics on the run's validation or test users (Liang et al.'s protocol: fold-in positives masked).

        ``progress``: a bar over user batches (None: on a terminal only). ``max_memory``:
        bytes the ranking of a batch may take (None: 1 GiB; see :func:`recvae.evaluation.evaluate`).
        """
        self.split.held_out(which)
        ks = _default_ks(self.n_items) if ks is None else list(ks)
        bad = [k for k in ks if not 1 <= int(k) <= self.n_items]
        if bad:
            raise RunError(f"cut-offs (--k) {bad}: the model ranks {self.n_items} items; choose k between 1 and "
                           f"{self.n_items}")
        return evaluate_on_split(self.model, self.split, which, ks=ks, metrics=metrics, progress=progress,
                              max_memory=max_memory)

    def info(self) -> dict:
        """What the run is: model, hyper-parameters, parameter count, data, split, best epoch, metrics."""
        return {
            "path": None if self.path is None else str(self.path),
            "model": self.config.get("model"),
            "model_class": type(self.model).__name__,
            "hyper_parameters": self.config.get("model_params") or _jsonable(_safe_params(self.model)),
            "parameters": _parameter_count(self.model),
            "users": int(len(self.user_ids)),
            "items": int(self.n_items),
            "dropped_users": int(len(self.dropped_user_ids)),
            "data": self.config.get("data"),
            "split": self.config.get("split", self.split.info),
            "best_epoch": self.config.get("best_epoch"),
            "fit_seconds": self.config.get("fit_seconds"),
            "metrics": {w: {m: v.get("mean") for m, v in r.get("summary", {}).items()}
                        for w, r in self.metrics.items() if isinstance(r, dict)},
            "status": self.metrics.get("status"),
            "versions": self.config.get("versions"),
            "created": self.config.get("created"),
        }

    def summary(self) -> str:
        """:meth:`info` as a few readable lines."""
        info = self.info()
        lines = [
            f"run:        {info['path'] or '(not saved)'}",
            f"model:      {info['model']} ({info['model_class']}), {info['parameters']:,} parameters",
            f"params:     {', '.join(f'{k}={v}' for k, v in sorted((info['hyper_parameters'] or {}).items()))}",
            f"data:       {(info['data'] or {}).get('source')}: {info['users']:,} users x {info['items']:,} items "
            f"({info['dropped_users']:,} users dropped by preprocessing)",
            f"split:      {(info['split'] or {}).get('kind')}",
        ]
        if info["best_epoch"] is not None:
            lines.append(f"best epoch: {info['best_epoch']}")
        for which, values in info["metrics"].items():
            shown = ", ".join(f"{m}={v:.4f}" for m, v in values.items() if isinstance(v, (int, float)))
            lines.append(f"{which + ':':<11} {shown}")
        lines.append(f"status:     {info['status']}")
        return "\n".join(lines)


# ============================================================================ fit helpers
# ---------------------------------------------------------------------- hyper-parameter search
def tune(
    log: str | os.PathLike | pd.DataFrame | InteractionLog,
    model: str = "mult-vae",
    *,
    search: Mapping[str, Any],
    n_trials: int,
    params: Mapping[str, Any] | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    timeout_s: float | None = None,
    prune: bool = True,
    metric: str = "ndcg@100",
    finalists: int = 1,
    seeds: int = 3,
    output: str | os.PathLike | None = None,
    split: str = "strong",
    heldout_users: int | float | None = None,
    split_seed: int | None = None,
    rating_threshold: float | None = 3.5,
    min_user_events: int = 5,
    strict: bool = False,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    implicit: bool = False,
    weight_col: str | None = None,
    sep: str | None = None,
    data_dir: str | os.PathLike = "data",
    progress: bool | None = None,
    report: Callable[[str], None] | None = None,
) -> SearchResult:
    """Read a log, split it, and search a model's hyper-parameters on the validation users.

    The log is read, filtered and split as :meth:`Run.fit` does (same arguments);
    each trial fits ``model`` with ``params`` plus the sampled values on the training
    users and is scored by ``metric`` on the validation users
    (:func:`recvae.tuning.optuna_search`: TPE or random search, median pruning of
    torch trials on their per-epoch validation NDCG). The test users are never read.

    Args:
        log: a file, a MovieLens name, a DataFrame or an :class:`InteractionLog`.
        model: a registry name.
        search: the search space (see :func:`recvae.tuning.search_space`).
        n_trials, sampler, seed, timeout_s, prune, metric: the search's budget and
            settings (``seed`` seeds the sampler).
        params: fixed parameters of every trial. Torch models train without their
            per-epoch progress bar unless ``params`` sets ``progress``.
        finalists, seeds: with ``finalists > 1`` (seeded models: the torch VAEs, ALS,
            BPR), the best ``finalists`` trials are each fit with ``seeds`` seeds and the
            best validation mean over seeds wins (:func:`recvae.tuning.reselect_over_seeds`);
            the result's ``finalists`` table lists them.
        output: write the trials table there (``.csv``, ``.parquet``, ``.json``,
            ``.jsonl``; checked before any work).
        split, heldout_users, split_seed: the split (``split_seed`` default 98765); it
            needs validation users, so ``heldout_users=0`` is refused.
        rating_threshold, min_user_events, strict, user_col, item_col, rating_col,
            timestamp_col, implicit, weight_col, sep, data_dir: as in :meth:`Run.fit`.
        progress: show the bar over trials (None: on a terminal only).
        report: called with each line worth showing a user (default: logged at INFO).

    Returns:
        The :class:`recvae.tuning.SearchResult`; its ``best_model`` is the best trial's fitted model.

    Raises:
        RunError, SearchSpaceError (ValueErrors): bad arguments, space or data, one line each.
        ImportError: optuna is not installed (``pip install "recvae[tune]"``).
    """
    say = report or logger.info
    if output is not None:
        check_table_output(output)
    if split not in SPLITS:
        raise RunError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if heldout_users is not None and heldout_users == 0:
        raise RunError("tuning scores trials on validation users: heldout_users (--heldout-users) must be above 0")
    name = str(model).strip().lower()
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
    for corner in space_corners(space):  # parameter names and types, before the data is read
        _make(name, {**fixed, **corner})
    check_optuna()
    if issubclass(MODELS[name], TorchVAERecommender):
        fixed.setdefault("progress", False)

    log, data, the_split = _read_and_split(
        log, say, user_col=user_col, item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
        implicit=implicit, weight_col=weight_col, sep=sep, data_dir=data_dir,
        rating_threshold=rating_threshold, min_user_events=min_user_events, strict=strict,
        split=split, heldout_users=heldout_users, seed=split_seed)

    metric_name, _, k = metric.partition("@") if isinstance(metric, str) else (metric, "", "")
    if k.isdigit() and int(k) > the_split.n_items:
        metric = f"{metric_name}@{the_split.n_items}"
        say(f"validation metric: {metric} (the catalogue has only {the_split.n_items} items)")

    def make(**sampled: Any) -> Recommender:
        estimator = _make(name, {**fixed, **sampled})
        _fit_eval_k(estimator, the_split, _quiet)
        return estimator

    result = optuna_search(make, space, the_split, n_trials=n_trials, sampler=sampler, seed=seed, metric=metric,
                           ks=(), prune=prune, timeout_s=timeout_s, progress=progress is not False)
    counts, edge = result.counts, result.edge_note()
    say(f"{len(result.trials)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed) in {result.seconds:.1f}s; best validation {metric} "
        f"{result.best_score:.4f} with {result.best_params}" + (f" ({edge})" if edge else ""))
    if finalists > 1:
        result = reselect_over_seeds(result, make, the_split, finalists=finalists, seeds=seeds,
                                     progress=progress is not False)
        for _, row in result.finalists.iterrows():
            say(f"finalist {row['finalist']} (trial {row['trial']}): validation {metric} mean over {seeds} seeds "
                f"{row[f'{metric} mean']:.4f}" + (" <- chosen" if row["chosen"] else ""))
        edge = result.edge_note()
        say(f"chosen over seeds: validation {metric} {result.best_score:.4f} with {result.best_params}"
            + (f" ({edge})" if edge else ""))
    if output is not None:
        write_table(result.trials, output)
    return result


def _is_torch(model: Recommender) -> bool:
    return isinstance(model, TorchVAERecommender)


def _quiet(_: str) -> None:
    """Ranks other than 0 print nothing."""


def _distributed_context(model: Recommender):
    """The torch.distributed context when launched by torchrun (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return setup_from_env(getattr(model.training, "device", "auto"))


def _make(name: str, params: Mapping[str, Any] | None) -> Recommender:
    try:
        return make_model(name, dict(params or {}))
    except KeyError as err:
        raise RunError(_one_line(err)) from None
    except (TypeError, ValueError) as err:
        raise RunError(f"model {name} with parameters {dict(params or {})}: {_one_line(err)}") from None


def _resolve_model(model, params, epochs, epochs_from, say) -> tuple[str, dict]:
    """(registry name, flat params) from the arguments, ``epochs`` and an earlier run's best epoch."""
    params = dict(params or {})
    if isinstance(model, Recommender):
        if params:
            raise RunError("params apply to a model given by name; set them on the model instance instead "
                           "(model.set_params(...))")
        if epochs is not None or epochs_from is not None:
            raise RunError("epochs / epochs_from apply to a model given by name; set epochs on the model instead")
        name = next((n for n, c in MODELS.items() if type(model) is c), type(model).__name__.lower())
        return name, params
    if epochs_from is not None:
        earlier = _read_json(Path(epochs_from) / CONFIG_FILE) if Path(epochs_from).is_dir() else None
        if earlier is None:
            raise RunError(f"epochs_from {epochs_from}: not a run directory written by 'recvae train'")
        best = earlier.get("best_epoch")
        if best is None:
            raise RunError(f"epochs_from {epochs_from}: that run has no best epoch (not a torch model, or it had "
                           "no validation users); give epochs=N instead")
        if model is None:
            model = earlier.get("model")
            inherited = {k: v for k, v in (earlier.get("params") or {}).items()
                         if k not in ("epochs", "checkpoint", "resume", "history_csv")}
            params = {**inherited, **params}
        if epochs is not None:
            raise RunError("give epochs or epochs_from, not both")
        epochs = int(best)
        say(f"epochs: {epochs}, the best epoch of {epochs_from}")
    name = str(model or "mult-vae").strip().lower()
    if epochs is not None:
        if "epochs" in params:
            raise RunError("epochs is given twice (epochs= and params['epochs']); give it once")
        params["epochs"] = int(epochs)
    return name, params


def _fit_eval_k(model: Recommender, split: Split, say) -> None:
    """A torch model validates by NDCG@eval_k: lower it to the catalogue size on a small catalogue."""
    if _is_torch(model) and split.validation is not None and model.training.eval_k > split.n_items:
        say(f"validation metric: NDCG@{split.n_items} (the catalogue has only {split.n_items} items)")
        model.set_params(eval_k=split.n_items)


def _read_and_split(log, say, *, user_col, item_col, rating_col, timestamp_col, implicit, weight_col, sep,
                    data_dir, rating_threshold, min_user_events, strict, split, heldout_users, seed):
    """Read ``log`` (unless already an InteractionLog), build its interactions and split them, saying each step;
    returns (log, interactions, split). Shared by :meth:`Run.fit` and :func:`tune`."""
    if not isinstance(log, InteractionLog):
        log = read_log(log, user_col=user_col, item_col=item_col, rating_col=rating_col,
                       timestamp_col=timestamp_col, implicit=implicit, weight_col=weight_col, sep=sep,
                       data_dir=data_dir)
    for note in log.notes:
        say(note)
    try:
        data = log.interactions(rating_threshold=rating_threshold, min_user_interactions=min_user_events,
                                strict=strict)
    except ValueError as err:
        raise RunError(f"{log.source}: {_one_line(err)}") from None
    say(f"data: {data.report if data.report is not None else data}")
    the_split = _make_split(data, split, heldout_users, seed)
    say(f"split: {the_split}")
    return log, data, the_split


def _make_split(data: Interactions, kind: str, heldout_users, seed: int | None) -> Split:
    seed = LIANG_SEED if seed is None else seed
    try:
        if heldout_users is not None and heldout_users == 0:
            return all_users_split(data)
        if kind == "strong":
            n = default_heldout_users(data.n_users) if heldout_users is None else heldout_users
            return strong_generalization(data, n, seed=seed)
        if kind == "weak":
            return weak_generalization(data, seed=seed)
        if data.timestamps is None:
            raise RunError("the temporal split needs event times, and the log has none; name the time column "
                           "(--timestamp-col / timestamp_col=) or use the strong split")
        return temporal_split(data)
    except RunError:
        raise
    except ValueError as err:
        raise RunError(f"cannot split the data (heldout_users / --heldout-users, --split): {_one_line(err)}") from None


def _known_users(split: Split) -> tuple[np.ndarray, sp.csr_matrix]:
    """Every user of the split once (raw ids, in split order) and their positive rows: the union of their parts."""
    ids = [np.asarray(split.train_user_ids)]
    rows = [split.train]
    for which in ("validation", "test"):
        held = getattr(split, which)
        if held is not None:
            ids += [np.asarray(held.user_ids), np.asarray(held.user_ids)]
            rows += [held.fold_in, held.target]
    all_ids = np.concatenate(ids)
    index = pd.Index(all_ids)
    unique = all_ids[~index.duplicated(keep="first")]
    position = pd.Index(unique).get_indexer(all_ids)
    stacked = sp.vstack(rows).tocsr()
    owner = sp.csr_matrix((np.ones(len(all_ids), np.float32), (position, np.arange(len(all_ids)))),
                          shape=(len(unique), len(all_ids)))
    history = (owner @ stacked).tocsr()
    history.data[:] = 1.0
    history.sort_indices()
    return unique, history


def _best_epoch(model: Recommender) -> int | None:
    training = getattr(model, "training_", None)
    best = getattr(training, "best_epoch", None)
    return None if best is None else int(best)


def _safe_params(model: Recommender) -> dict:
    try:
        params = model.get_params()
    except NotImplementedError:
        return {}
    return {k: v for k, v in params.items() if k not in ("checkpoint", "resume", "history_csv")}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Recommender):
        return {"model": type(value).__name__, "params": _jsonable(_safe_params(value))}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return value


def _parameter_count(model: Recommender) -> int:
    net = getattr(model, "net_", None)
    if net is not None:
        return int(sum(p.numel() for p in net.parameters()))
    components = getattr(model, "components_", None)
    if components:
        return int(sum(_parameter_count(c) for c in components))
    total = 0
    for name, value in vars(model).items():
        if name.endswith("_") and isinstance(value, np.ndarray):
            total += value.size
        elif name.endswith("_") and sp.issparse(value):
            total += value.nnz
    return int(total)


def _versions() -> dict:
    import platform

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = None
    return {"recvae": _version(), "torch": torch_version, "python": platform.python_version()}


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run directory is incomplete, train it again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({_one_line(err)}); the run directory is damaged") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: expected a JSON object; the run directory is damaged")
    return value


def _verify_manifest(path: Path, manifest: dict) -> None:
    listed = manifest["files"]
    present = {p.relative_to(path).as_posix() for p in _files_under(path)} - {MANIFEST_FILE}
    missing = sorted(set(listed) - present)
    if missing:
        raise RunError(f"{path}: {missing[0]} is missing ({len(missing)} file(s) of the run); train the run again")
    for name, entry in listed.items():
        file = path / name
        size = file.stat().st_size
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise RunError(f"{path / MANIFEST_FILE}: malformed entry for {name}; the run directory is damaged")
        if entry.get("bytes") is not None and size != entry["bytes"]:
            cause = "truncated" if size < entry["bytes"] else "longer than written"
            raise RunError(f"{file}: {cause} ({size:,} of {entry['bytes']:,} bytes); restore it or train the run again")
        if _sha256(file) != entry["sha256"]:
            raise RunError(f"{file}: checksum mismatch (the file changed since it was written: corrupted or "
                           "replaced); restore it or train the run again")
    extra = sorted(present - set(listed))
    if extra:
        logger.warning("%s: files not written by the run are ignored: %s", path, ", ".join(extra[:5]))


def _fsync_tree(directory: Path) -> None:
    for file in _files_under(directory):
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())


def _work_dir(path: Path) -> Path:
    """The sibling where a run is written and checkpointed until it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def _check_run_target(path: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a target that holds a run (unless overwrite) or a killed run's leftovers."""
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: is a file; give a directory for the run")
    if path.is_dir() and any(path.iterdir()):
        is_run = (path / MANIFEST_FILE).exists() or (path / MODEL_FILE).exists()
        if not is_run:
            # --overwrite replaces runs only: never delete a folder of someone's other files
            raise RunError(f"{path}: holds files that are not a recvae run; choose another (or an empty) directory")
        if not overwrite:
            raise RunError(f"{path}: already holds a run; choose another directory or pass --overwrite (overwrite=True)")
    work = _work_dir(path)
    if work.exists() and not resume:
        if (work / CHECKPOINT_FILE).exists():
            raise RunError(f"{path}: a killed run left a checkpoint in {work}; pass --resume (resume=True) to continue "
                           f"it, or delete {work} to start over")
        if not overwrite:
            _probe_lock(work)


def _probe_lock(work: Path) -> None:
    """Fail when a live process holds ``work``'s lock; a dead writer's leftovers are cleared."""
    import fcntl

    lock = work / LOCK_FILE
    if lock.exists():
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"{work.with_name(work.name.removeprefix('.').removesuffix('.partial'))}: another "
                               "recvae process is writing this run now; wait for it or choose another output") from None
            fcntl.flock(handle, fcntl.LOCK_UN)
    shutil.rmtree(work, ignore_errors=True)
