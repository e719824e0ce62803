"""Warm starts at the run level: the earlier run a fit or an update starts from, read and checked.

``Run.fit(warm_start=RUN)`` (``recvae train --warm-start RUN``) and the refit of
``Run.update`` when new items arrive both come here; the models' own part (which weights
are copied, how item rows are remapped) is :mod:`recvae.models.warm_start`.
"""

from __future__ import annotations

import os

import numpy as np

from recvae.models.base import Recommender
from recvae.models.warm_start import WarmStartError, item_positions, prepare_warm_start
from recvae.runs.directory import read_run
from recvae.runs.errors import RunError, one_line

__all__ = ["WarmSource", "warm_source", "check_warm_model", "start_warm"]


class WarmSource:
    """The fitted model of an earlier run and the raw ids of its items (the run's path, when it has one)."""

    def __init__(self, model: Recommender, item_ids: np.ndarray, where: str) -> None:
        self.model, self.item_ids, self.where = model, np.asarray(item_ids), where


def warm_source(warm_start, device: str = "auto") -> WarmSource:
    """The earlier run ``warm_start`` names: a run directory (read and checked as ``Run.load`` does) or a
    ``Run`` already in memory. A missing or damaged run is a one-line :class:`RunError`."""
    if hasattr(warm_start, "model") and hasattr(warm_start, "item_ids"):
        where = str(getattr(warm_start, "path", None) or "the run given")
        return WarmSource(warm_start.model, warm_start.item_ids, where)
    if not isinstance(warm_start, (str, os.PathLike)):
        raise RunError(f"warm_start: give a run directory or a Run, not a {type(warm_start).__name__}")
    try:
        parts = read_run(warm_start, device=device)
    except RunError as err:
        raise RunError(f"warm start (--warm-start): {one_line(err)}") from None
    return WarmSource(parts["model"], parts["split"].item_ids, os.fspath(warm_start))


def check_warm_model(estimator: Recommender, source: WarmSource) -> None:
    """Refuse, before the log is read, a warm start from a run of another model."""
    if type(estimator) is not type(source.model):
        raise RunError(f"warm start from {source.where}: that run holds a {type(source.model).__name__}, this fit a "
                       f"{type(estimator).__name__}; warm-start only from a run of the same model (give its --model, "
                       "or drop --warm-start)")


def start_warm(estimator: Recommender, source: WarmSource, item_ids: np.ndarray) -> str:
    """Make ``estimator``'s next fit (over ``item_ids``) start from ``source``'s weights; the sentence to show.

    Raises RunError (one line) for another model or architecture."""
    check_warm_model(estimator, source)
    try:
        said = prepare_warm_start(estimator, source.model, item_positions(item_ids, source.item_ids))
    except WarmStartError as err:
        raise RunError(f"warm start from {source.where}: {one_line(err)}") from None
    return f"{said} (from {source.where})"
