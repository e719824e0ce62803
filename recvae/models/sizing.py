"""Defaults chosen from the log's shape: how a torch model trains on a large, sparse catalogue.

The VAE family's defaults are the papers', set on MovieLens (3.7k-20k items, 70-150 events per
user). On a practitioner's log -- 35k-300k items, 5-15 events per user -- the same defaults spend
nearly every step on the full softmax over batch x items logits and on a dense Adam step over every
item's row, most of which no user of the batch touched. :func:`sizing_choices` picks, for the
parameters a user did not set:

- ``sampled_softmax`` (with ``negative_sampler="popularity"``) from :data:`SAMPLED_FROM_ITEMS` items:
  the multinomial NLL from the batch's positives and S shared popularity negatives with the
  log-Q correction (:mod:`recvae.nn.sampled`); on ml-1m-implicit 200 such negatives matched the
  exact softmax (experiments/results/ml-1m-implicit-sampled.md); scoring still ranks every item;
- ``sparse_item_updates`` with it: only the item rows a batch touches move (lazy Adam);
- ``patience`` lowered to :data:`SPARSE_LOG_PATIENCE` evaluations when users have few events, since
  the validation score of a sparse log is noisy and flat once learnt.

Every choice comes with its reason, said in the log and kept in the run (``catalogue_choices``).
A multinomial VAE on such a log is also told which model measured ahead there
(:func:`model_advice`): the choices make it fit, not win.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from recvae.models.base import Recommender

__all__ = ["LogShape", "SizingChoice", "sizing_choices", "apply_sizing", "SAMPLED_FROM_ITEMS",
           "SAMPLED_NEGATIVES", "SPARSE_LOG_EVENTS", "SPARSE_LOG_PATIENCE", "model_advice"]

#: From this many items the softmax is sampled by default (ML-20M, 20,108 items, keeps the exact one).
SAMPLED_FROM_ITEMS = 25_000
#: Negatives a batch shares under the sampled softmax: per step about batch x (S + the batch's
#: positives) logits instead of batch x items.
SAMPLED_NEGATIVES = 4096
#: Below this many training events per user on average a log counts as sparse.
SPARSE_LOG_EVENTS = 20.0
#: Evaluations without a better validation score before a sparse log's fit stops.
SPARSE_LOG_PATIENCE = 10


@dataclass(frozen=True)
class LogShape:
    """What the defaults look at: the training matrix's users, items and events."""

    n_users: int
    n_items: int
    n_events: int

    @property
    def events_per_user(self) -> float:
        return self.n_events / max(1, self.n_users)

    @classmethod
    def of(cls, matrix) -> LogShape:
        """The shape of a users x items training matrix (scipy sparse)."""
        return cls(int(matrix.shape[0]), int(matrix.shape[1]), int(matrix.nnz))

    def __str__(self) -> str:
        return (f"{self.n_users:,} users x {self.n_items:,} items, {self.n_events:,} events "
                f"({self.events_per_user:.1f} per user)")


@dataclass(frozen=True)
class SizingChoice:
    """One parameter set from the log's shape, and why."""

    parameter: str
    value: Any
    reason: str


def sizing_choices(model: Recommender, shape: LogShape, given: Collection[str] = ()) -> list[SizingChoice]:
    """The parameters the log's shape sets on ``model``, leaving alone the ``given`` ones (the user's).

    Only for models that have the parameter and accept the value (a choice the model's own
    checks refuse, e.g. sampled softmax under a Bernoulli likelihood, is left out); nothing for
    the closed-form and factor models. The model is not changed (see :func:`apply_sizing`).
    """
    params = model.get_params()
    given = set(given)
    groups: list[list[SizingChoice]] = []

    def offer(group: list[SizingChoice], parameter: str, value: Any, reason: str) -> None:
        if parameter in params and parameter not in given and params[parameter] != value:
            group.append(SizingChoice(parameter, value, reason))

    sampled: list[SizingChoice] = []
    if shape.n_items >= SAMPLED_FROM_ITEMS and params.get("sampled_softmax", 0) is None \
            and params.get("item_chunk") is None and params.get("likelihood") == "multinomial" \
            and not {"sampled_softmax", "item_chunk"} & given:
        negatives = min(SAMPLED_NEGATIVES, shape.n_items // 2)
        why = (f"{shape.n_items:,} items (from {SAMPLED_FROM_ITEMS:,}): the full softmax's batch x items logits "
               f"would dominate every step; {negatives:,} popularity negatives per batch with the log-Q correction")
        offer(sampled, "sampled_softmax", negatives, why)
        if sampled:
            offer(sampled, "negative_sampler", "popularity", "the sampled softmax's proposal: items by training popularity")
            offer(sampled, "sparse_item_updates", True, "only the item rows a batch touches move (lazy Adam)")
    groups.append(sampled)
    stopping: list[SizingChoice] = []
    if shape.events_per_user < SPARSE_LOG_EVENTS and isinstance(params.get("patience"), int) \
            and params["patience"] > SPARSE_LOG_PATIENCE:
        offer(stopping, "patience", SPARSE_LOG_PATIENCE,
              f"{shape.events_per_user:.1f} events per user (under {SPARSE_LOG_EVENTS:g}): a sparse log's validation "
              f"score is flat once learnt; stop after {SPARSE_LOG_PATIENCE} evaluations without a better one")
    groups.append(stopping)
    # each group on its own: a model that refuses one (e.g. no sampled softmax) still gets the others
    return [choice for group in groups if group and _accepted(model, group) for choice in group]


def model_advice(model: Recommender, shape: LogShape) -> str | None:
    """One line for a multinomial VAE on a large sparse log: the model that measured ahead on one; else None."""
    params = model.get_params()
    if shape.n_items < SAMPLED_FROM_ITEMS or shape.events_per_user >= SPARSE_LOG_EVENTS \
            or params.get("likelihood") != "multinomial":
        return None
    return ("on a log of this shape (yelp2018-test: 36k items, ~10 events per user) the weighted Gaussian VAE "
            "(--model weighted-vae, recvae.models.WeightedGaussianVAE) reached test NDCG@100 0.0570 against 0.0424 "
            "for Mult-VAE with these choices, in about a third of the fit time (experiments/results/yelp2018-test.md)")


def _accepted(model: Recommender, choices: list[SizingChoice]) -> bool:
    """Whether the model accepts the choices (checked on a copy, so the model itself is untouched)."""
    trial = copy.deepcopy(model)
    try:
        trial.set_params(**{c.parameter: c.value for c in choices})
    except (TypeError, ValueError):
        return False
    return True


def apply_sizing(model: Recommender, shape: LogShape, given: Collection[str] = (), say=None) -> dict[str, Any]:
    """Set :func:`sizing_choices` on ``model`` (unfitted); returns ``{parameter: value}``.

    ``say`` (e.g. ``print`` or a logger's ``info``) gets one line per choice with its reason.
    """
    choices = sizing_choices(model, shape, given)
    if choices:
        model.set_params(**{c.parameter: c.value for c in choices})
        if say is not None:
            say(f"defaults for {shape}:")
            for c in choices:
                say(f"  {c.parameter}={c.value!r}: {c.reason} (set {c.parameter} to override)")
    advice = model_advice(model, shape)
    if advice and say is not None:
        say(f"note: {advice}")
    return {c.parameter: c.value for c in choices}
