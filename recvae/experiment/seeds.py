"""Claims that survive another seed: the chosen configuration of each seeded model, refit with further seeds.

The search (grid or optuna) runs once, with each model's configured seed; it picks
the configuration on the validation users. :func:`refit_seeds` then fits that same
configuration again with seed + 1, ..., seed + n - 1 (``[evaluation] seeds = n``),
evaluates every fit on the test users, and averages the per-user test metrics over
the fits, so the report's means, CIs and paired tests rest on all of them.

Which models: those whose class sets :attr:`recvae.models.Recommender.seeded` (the
torch VAEs; ALS and BPR, whose ``implicit`` training starts from random factors and
BPR also samples), rebuilt scikit-learn style as
``type(model)(**{**model.get_params(), "seed": seed + s})``. Deterministic models
(Popularity, ItemKNN, EASE, EDLAE) are fit once and count once.

A blend is seeded when one of its components is: for seed s it blends the seed-s
fits of the entries it refers to (``{ ref }``; a deterministic entry's single fit)
and fits its own ``{ name, params }`` components with their seed + s. Its weights
are tuned once, on validation with seed 0, and reused for every seed: a blend's
weights are part of its chosen configuration, and reusing them keeps each further
seed to one scoring pass on the test users.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recvae.data import Split
from recvae.evaluation import average_results, evaluate
from recvae.models import MODELS, Blend, Recommender
from recvae.tuning import reseeded
from recvae.experiment.config import ExperimentConfig, ModelSpec
from recvae.experiment.report import Outcome, SeedRun

logger = logging.getLogger(__name__)

__all__ = ["entry_references", "referenced_labels", "is_seeded", "refit_seeds"]


def entry_references(spec: ModelSpec) -> set[str]:
    """The labels of earlier entries that ``spec`` (a blend) reuses: ``{ ref = LABEL }`` in its params or grid."""
    labels = set()
    tried = spec.grid.get("components")
    for components in [spec.params.get("components"), *(tried if isinstance(tried, list) else [])]:
        for c in components if isinstance(components, list) else []:
            if isinstance(c, Mapping) and "ref" in c:
                labels.add(c["ref"])
    return labels


def referenced_labels(config: ExperimentConfig) -> set[str]:
    """The labels a blend of ``config`` reuses (``{ ref = LABEL }`` in its params or grid)."""
    return set().union(*(entry_references(spec) for spec in config.models))


def _earlier_of(component: Any, earlier: Sequence[Outcome]) -> Outcome | None:
    """The earlier entry whose tuned fit ``component`` is (a resolved ``{ ref }``), else None."""
    return next((o for o in earlier if o.search.best_model is component), None)


def _component_seeded(component: Any, earlier: Sequence[Outcome]) -> bool:
    if isinstance(component, Mapping):
        return MODELS[str(component.get("name", "")).strip().lower()].seeded
    source = _earlier_of(component, earlier)
    if source is not None:
        return len(source.seed_runs) > 1
    return isinstance(component, Recommender) and is_seeded(component, earlier)


def is_seeded(model: Recommender, earlier: Sequence[Outcome] = ()) -> bool:
    """Whether another seed gives another ``model``: its class is seeded, or it is a blend with a seeded component."""
    if isinstance(model, Blend):
        return any(_component_seeded(c, earlier) for c in model.components)
    return type(model).seeded


def _fit_for_seed(source: Outcome, offset: int) -> Recommender:
    """An earlier entry's fit for seed ``offset``: its own, or its only one when it is deterministic."""
    run = source.seed_runs[offset] if offset < len(source.seed_runs) else source.seed_runs[0]
    if run.model is None:
        raise RuntimeError(f"the seed-{offset} fit of {source.spec.label!r} was not kept for the blend that reuses it")
    return run.model


def _blend_for_seed(blend: Blend, offset: int, earlier: Sequence[Outcome]) -> Blend:
    """An unfitted copy of a tuned blend for seed ``offset``: the seed's components, the tuned weights."""
    components = []
    for c in blend.components:
        if isinstance(c, Mapping):
            name, params = c["name"], dict(c.get("params") or {})
            if MODELS[str(name).strip().lower()].seeded:
                params["seed"] = int(MODELS[str(name).strip().lower()](**params).get_params()["seed"]) + offset
            components.append({**c, "params": params})
        elif (source := _earlier_of(c, earlier)) is not None:
            components.append(_fit_for_seed(source, offset))
        else:  # a model given as an object: refit it with its own seed + offset when seeded
            components.append(reseeded(c, offset) if is_seeded(c) else c)
    params = blend.get_params()
    return Blend(**{**params, "components": components, "weights": [float(w) for w in blend.weights_]})


def _component_seconds(model: Recommender, earlier: Sequence[Outcome]) -> float | None:
    """A blend's reused entries' mean per-seed fit seconds (their own components included), else None."""
    if not isinstance(model, Blend):
        return None
    sources = {id(o): o for c in model.components if (o := _earlier_of(c, earlier)) is not None}
    if not sources:
        return None
    return float(sum(o.fit_seconds + (o.component_fit_seconds or 0.0) for o in sources.values()))


def refit_seeds(outcome: Outcome, split: Split, n_seeds: int, *, ks: Sequence[int], metrics: Sequence[str],
                earlier: Sequence[Outcome], keep_models: bool, diversity_space: str = "auto") -> Outcome:
    """``outcome`` (the tuned fit, seed 0) with its chosen configuration refit for seeds 1 ... ``n_seeds - 1``.

    A deterministic model keeps its one fit. Returns a copy whose ``seed_runs`` lists
    every fit, ``test`` averages their per-user test metrics and ``fit_seconds`` is their
    mean; ``earlier`` are the outcomes of the entries before (a blend's references).
    ``keep_models`` keeps each fitted model for a later blend (else only seed 0's, which
    the search holds anyway). ``diversity_space``: see :func:`recvae.evaluation.evaluate`.
    """
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1; got {n_seeds}")
    best = outcome.search.best_model
    runs = [SeedRun(seed=0, test=outcome.test, fit_seconds=outcome.fit_seconds, best_epoch=outcome.best_epoch,
                    beta_reached=outcome.beta_reached, model=best)]
    n = n_seeds if is_seeded(best, earlier) else 1
    ready = {f.offset: f for f in outcome.search.seed_fits if f.model is not None}  # fit while picking finalists
    for offset in range(1, n):
        if offset in ready:
            model, fit_seconds = ready[offset].model, ready[offset].fit_seconds
        else:
            model = _blend_for_seed(best, offset, earlier) if isinstance(best, Blend) else reseeded(best, offset)
            started = time.perf_counter()
            model.fit(split)
            fit_seconds = time.perf_counter() - started
        test = evaluate(model, split, "test", ks=ks, metrics=metrics, diversity_space=diversity_space)
        training = getattr(model, "training_", None)
        runs.append(SeedRun(seed=offset, test=test, fit_seconds=fit_seconds,
                            best_epoch=getattr(training, "best_epoch", None),
                            beta_reached=getattr(training, "final_beta", None),
                            model=model if keep_models else None))
        logger.info("%s seed %d: fit %.1fs, test %s", outcome.spec.label, offset, fit_seconds, test)
    # the search keeps its own fit (best_model); the further seeds' models live on only in runs (keep_models)
    search = dataclasses.replace(outcome.search, seed_fits=[
        f if f.offset == 0 else dataclasses.replace(f, model=None) for f in outcome.search.seed_fits])
    return dataclasses.replace(
        outcome, search=search, test=average_results([r.test for r in runs]),
        fit_seconds=float(np.mean([r.fit_seconds for r in runs])), seed_runs=runs,
        component_fit_seconds=_component_seconds(best, earlier))
