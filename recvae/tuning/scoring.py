"""How every search scores a fitted model, in one place: the metric it maximises, ``name@k``
(:func:`metric_and_ks`), read from :func:`recvae.evaluation.evaluate` on the split's validation
users (:func:`validation_row`); the test users are never read. Also the inputs every search
checks first (:func:`check_search_inputs`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pandas as pd

from recvae.data.splits import Split
from recvae.evaluation import evaluate
from recvae.evaluation import metrics as M
from recvae.models.base import Recommender

__all__: list[str] = []


def check_search_inputs(make_model: Callable[..., Recommender], split: Split) -> None:
    """Refuse a ``split`` that is not a recvae Split and a ``make_model`` that cannot be called."""
    if not isinstance(split, Split):
        raise TypeError(f"split must be a recvae Split (train/validation/test); got {type(split).__name__}")
    if not callable(make_model):
        raise TypeError(f"make_model must be a model class or a factory function; got {make_model!r}")


def _parse_metric(metric: str) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric) if isinstance(metric, str) else None
    if match is None or match.group(1) not in M.METRICS or int(match.group(2)) < 1:
        raise ValueError(f"metric must look like 'name@k' with name in {sorted(M.METRICS)} and k >= 1; got {metric!r}")
    return match.group(1), int(match.group(2))


def metric_and_ks(metric: str, ks: Sequence[int]) -> tuple[str, list[int]]:
    """The metric's name and the cut-offs to evaluate: ``ks`` and the metric's own k."""
    name, k = _parse_metric(metric)
    return name, sorted({int(x) for x in ks} | {k})


def validation_row(model: Recommender, split: Split, metric: str, name: str, ks: Sequence[int]) -> pd.Series:
    """``metric``'s row of the summary of ``model`` on the validation users: ``mean``, ``std_err``, ``n_users``."""
    return evaluate(model, split, "validation", ks=ks, metrics=(name,)).summary.loc[metric]
