"""The :class:`Run`: one model fitted on one interaction log, saved as a directory, queried by raw id.

Fitting lives in :mod:`recvae.runs.fitting`, the directory on disk in
:mod:`recvae.runs.directory`, and the queries (recommend, embed, similar items)
in :mod:`recvae.runs.queries`; this module ties them into the class users hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.specs import LogSource, LogSpec, SplitSpec
from recvae.data.splits import Split
from recvae.evaluation import evaluate as evaluate_on_split  # Run.evaluate is a method
from recvae.evaluation import metric_columns
from recvae.models.base import Recommender
from recvae.runs.directory import RunOutput, exclusive_lock, read_run, work_dir, write_run
from recvae.runs.errors import RunError
from recvae.runs.fitting import default_ks as _default_ks
from recvae.runs.fitting import fit_run, jsonable as _jsonable, legacy_options, safe_params as _safe_params
from recvae.runs.queries import RunQueries
from recvae.runs.trust import check_status
from recvae.runs.update import update_run

__all__ = ["Run"]


class Run(RunQueries):
    """A fitted model with its data, split, known users and metrics; see :mod:`recvae.runs`.

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

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        log: LogSource | LogSpec,
        model: str | Recommender | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        split: str | SplitSpec = "strong",
        output: str | os.PathLike | RunOutput | None = None,
        epochs_from: str | os.PathLike | None = None,
        evaluate: bool | str = True,
        report: Callable[[str], None] | None = None,
        warm_start: str | os.PathLike | Run | None = None,
        **deprecated: Any,
    ) -> Run:
        """Read a log, split it, fit a model, evaluate it and (with ``output``) write the run directory.

        Args:
            log: a file, a MovieLens name, a DataFrame or an :class:`InteractionLog`, or a
                :class:`~recvae.data.LogSpec` naming one with how to read and preprocess it
                (column roles, rating threshold, minimum events per user).
            model: a registry name (``"mult-vae"``, ``"ease"``, ...) or an unfitted model;
                default ``"mult-vae"``, or the model of ``epochs_from``.
            params: flat hyper-parameters for a registry name, ``epochs`` and ``seed`` included.
            split: ``"strong"`` (held-out users, Liang et al.), ``"weak"``, ``"temporal"``, or a
                :class:`~recvae.data.SplitSpec` with the held-out users and the split's seed;
                ``SplitSpec(heldout_users=0)`` trains on every user and every item (a
                production fit: give ``params={"epochs": N}`` or ``epochs_from``).
            output: the run directory to write (checked before any work), or a
                :class:`~recvae.runs.RunOutput` with ``overwrite``, ``resume`` and ``checkpoint``.
            epochs_from: an earlier run on held-out users: its best epoch becomes
                ``epochs``, and its model and parameters are the default.
            evaluate: evaluate on the held-out users after fitting (``"validation"``: those only).
            report: called with each line worth showing a user (default: logged at INFO).
            warm_start: an earlier run (a directory or a ``Run``) of the same model and architecture
                to start from: its weights initialise this fit, an item keeping its learned rows
                whatever its column now and new items starting fresh (see
                :mod:`recvae.models.warm_start`); the fit is otherwise a full one. Another model or
                architecture is a :class:`RunError`.
            deprecated: the flat keywords of recvae 0.1 (``heldout_users``, ``seed``,
                ``epochs``, ``overwrite``, ``rating_col``, ...) still work, with a FutureWarning.

        Example::

            Run.fit(LogSpec("log.csv", rating_col="stars"), "mult-vae", split=SplitSpec(heldout_users=0),
                    epochs_from="runs/tune", output=RunOutput("runs/prod", overwrite=True))
        """
        log, split, output, params, model_seed = legacy_options("Run.fit", deprecated, log=log, split=split,
                                                                output=output, params=params)
        return fit_run(cls, log, model, params=params, split=split, output=output, epochs_from=epochs_from,
                       evaluate=evaluate, report=report, model_seed=model_seed, warm_start=warm_start)

    # ------------------------------------------------------------------ update
    def update(
        self,
        new_events: LogSource | LogSpec,
        *,
        output: str | os.PathLike | RunOutput | None = None,
        refit: str = "auto",
        epochs: int | None = None,
        evaluate: bool | str = True,
        report: Callable[[str], None] | None = None,
    ) -> Run:
        """A new run: this one with ``new_events`` merged in; this run is never changed.

        Events of known and new users on known items take effect without training (every model
        scores a user from their row: the new run holds the merged rows and the same model; new
        users get rows after the old ones). Positive events on new items trigger a warm-start
        refit (see :mod:`recvae.runs.update`): old items keep their index and learned weights,
        new items are appended, fewer epochs, early stopping on this run's validation users.

        Args:
            new_events: a file or DataFrame with the columns of this run's log (read with its
                column names and rating threshold), or a :class:`LogSpec` / ``InteractionLog``.
            output: the new run's directory (written whole or not at all; never this run's own).
            refit: ``"auto"`` (refit only for new items), ``"always"`` (a warm-start refit even
                without new items) or ``"never"`` (refuse new items).
            epochs: epochs of the warm-start refit (ALS/BPR: iterations); default a quarter of
                this run's best epoch, at least 5 (a third of the iterations).
            evaluate: evaluate a refit model on the held-out users (as :meth:`fit`).
            report: called with each line worth showing a user (default: logged at INFO).

        Raises:
            RunError: one line: events without the run's columns, ids of another type, new
                items with ``refit="never"``, an output that cannot take the run.
        """
        return update_run(self, new_events, output=output, refit=refit, epochs=epochs, evaluate=evaluate,
                          report=report)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the run directory at ``path`` (atomically: a whole run or nothing there)."""
        path = RunOutput(path, overwrite=overwrite).checked_path()
        work = work_dir(path)
        work.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(work):
            write_run(self, work, path, overwrite=overwrite)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", verify: bool = True,
             allow_failed: bool = False) -> Run:
        """Read a run directory, trusting only the files its manifest lists (see :mod:`recvae.runs.trust`).

        Args:
            path: the run directory (it may be reached through a link; links inside it are refused).
            device: where torch models go (``auto``, ``cpu``, ``cuda``).
            verify: compare every listed file's sha256 with the manifest (False skips only the
                hashes: the listing, links, sizes and each file's own checks still apply).
            allow_failed: load a run whose training failed (diverged) anyway; by default it is
                refused, since its model's scores mean nothing. :meth:`info` shows the status.

        Raises:
            RunError: one line naming the file or the run, the cause and the fix.
        """
        parts = read_run(path, device=device, verify=verify, allow_failed=allow_failed)
        return cls(parts.pop("model"), parts.pop("split"), **parts)

    def check_status(self, *, allow_failed: bool = False) -> None:
        """Refuse (a :class:`RunError`) a run whose training failed, unless ``allow_failed``.

        :meth:`load` does this; the server and the ONNX export call it for a run they are given.
        """
        check_status(self.metrics, self.path if self.path is not None else repr(self), allow_failed=allow_failed)

    # ------------------------------------------------------------------ evaluation and summary
    def evaluate(self, which: str = "test", *, ks=None, metrics=("ndcg", "recall"), progress: bool | None = None,
                 max_memory: int | None = None, diversity_space: str = "auto"):
        """Metrics on the run's validation or test users (Liang et al.'s protocol: fold-in positives masked).

        ``metrics``: names of :data:`recvae.evaluation.METRIC_NAMES`, bare (at every k of ``ks``) or
        ``name@k``: accuracy (``ndcg``, ``recall``, ...) and beyond accuracy (``novelty``,
        ``diversity``, ``arp``, ``long_tail``, ``gini``, ``coverage``; popularity over the run's
        training users, see ``docs/metrics.md``). ``diversity_space``: ``auto``, ``embeddings`` or
        ``cooccurrence`` (see :func:`recvae.evaluation.evaluate_model`). ``progress``: a bar over
        user batches (None: on a terminal only). ``max_memory``: bytes the ranking of a batch may
        take (None: 1 GiB; see :func:`recvae.evaluation.evaluate`).
        """
        self.split.held_out(which)
        ks = _default_ks(self.n_items) if ks is None else list(ks)
        bad = [k for k in ks if not 1 <= int(k) <= self.n_items]
        if bad:
            raise RunError(f"cut-offs (--k) {bad}: the model ranks {self.n_items} items; choose k between 1 and "
                           f"{self.n_items}")
        bad = [f"{name}@{k}" for name, k in metric_columns(metrics, ks) if k > self.n_items]
        if bad:
            raise RunError(f"metrics {bad}: the model ranks {self.n_items} items; choose k between 1 and "
                           f"{self.n_items}")
        return evaluate_on_split(self.model, self.split, which, ks=ks, metrics=metrics, progress=progress,
                              max_memory=max_memory, diversity_space=diversity_space)

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
            stopped = self.config.get("stopped")
            trained = self.config.get("epochs_trained")
            lines.append(f"best epoch: {info['best_epoch']}" + (f" of {trained} trained ({stopped})" if stopped else ""))
        for which, values in info["metrics"].items():
            shown = ", ".join(f"{m}={v:.4f}" for m, v in values.items() if isinstance(v, (int, float)))
            lines.append(f"{which + ':':<11} {shown}")
        lines.append(f"status:     {info['status']}")
        return "\n".join(lines)


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
