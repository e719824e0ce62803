"""Blends: a weighted sum of several models' per-user normalised scores.

Two uses, both judged on validation users only:

* a hybrid of a VAE with a closed-form linear model (RecVAE + EASE): the VAE's
  non-linear user model and EASE's item-item weights make different errors, so
  their standardised scores add up to a better ranking than either;
* an ensemble of seeds of one model (equal weights).

Scores of different models live on different scales (log-probabilities,
regression outputs, dot products), so each model's scores are first put on one
scale per user, over the items the user has not seen (the only ones ranked):

* ``"zscore"``: subtract the mean and divide by the standard deviation;
* ``"rank"``: the item's rank divided by the number of items (ties share);
* ``"none"``: raw scores (for seeds of one model).

Example::

    hybrid = Blend([{"name": "ease", "params": {"l2": 1000.0}}, {"name": "recvae"}]).fit(split)
    hybrid.weights_            # tuned on split.validation
    hybrid.recommend(split.test.fold_in, k=10)
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.evaluation import metrics as M

from recvae.data.splits import HeldOut, Split
from recvae.models.base import NotFittedError, Recommender, as_user_rows
from recvae.models.catalog import load_model_file, make_single_model
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.files import MODEL_FIX, ModelFileError, ModelFileNotFoundError
from recvae.nn import hyperparams
from recvae.nn.hyperparams import HyperParameterError, shown

logger = logging.getLogger(__name__)

__all__ = ["Blend", "normalise_scores", "NORMALISATIONS"]

#: How a blend's components are written (a config file's TOML, or ``--param components=...``).
BLEND_EXAMPLE = ("components=[{name = \"ease\", params = {l2 = 500.0}}, "
                 "{name = \"mult-vae\", params = {epochs = 50}}]")

NORMALISATIONS = ("zscore", "rank", "none")
_SAVE_FORMAT = "recvae.blend/1"
_META_FILE = "blend.json"


def normalise_scores(scores: np.ndarray, rows: sp.csr_matrix, how: str) -> np.ndarray:
    """Per-user scores on a common scale, computed over each user's unseen items.

    Seen items keep a value (they are masked before ranking anyway) but do not
    enter the statistics.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return scores
    n_users, n_items = scores.shape
    user_of_seen = np.repeat(np.arange(n_users), np.diff(rows.indptr))
    n_unseen = n_items - np.diff(rows.indptr)
    if how == "zscore":
        seen = scores[user_of_seen, rows.indices]
        total = scores.sum(axis=1) - np.bincount(user_of_seen, seen, minlength=n_users)
        squares = (scores**2).sum(axis=1) - np.bincount(user_of_seen, seen**2, minlength=n_users)
        mean = total / np.maximum(n_unseen, 1)
        var = np.maximum(squares / np.maximum(n_unseen, 1) - mean**2, 0.0)
        std = np.sqrt(var)
        std[std == 0] = 1.0
        return (scores - mean[:, None]) / std[:, None]
    if how == "rank":
        masked = scores.copy()
        masked[user_of_seen, rows.indices] = -np.inf
        order = np.argsort(masked, axis=1, kind="stable")
        ranks = np.empty_like(order, dtype=np.float64)
        np.put_along_axis(ranks, order, np.arange(n_items, dtype=np.float64)[None, :], axis=1)
        return ranks / n_items
    raise ValueError(f"unknown normalisation {how!r}; choose one of {NORMALISATIONS}")


def _build_components(components: Sequence) -> list[Recommender]:
    """The models of a blend's components: models as they are, ``{name, params}`` dicts made afresh."""
    built = []
    for i, component in enumerate(components):
        if isinstance(component, Recommender):
            built.append(component)
        elif isinstance(component, Mapping) and "name" in component:
            extra = set(component) - {"name", "params"}
            if extra:
                raise ValueError(f"component {i} has unknown key(s) {sorted(extra)}; use 'name' and 'params'")
            params = component.get("params") or {}
            if not isinstance(params, Mapping):
                raise HyperParameterError(f"component {i}: params={shown(params)}: expected a table of parameters")
            built.append(make_single_model(component["name"], dict(params)))
        else:
            raise TypeError(
                f"component {i} must be a recvae model or a {{'name': ..., 'params': ...}} dict; got {component!r}"
            )
    return built


def _simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector with entries in multiples of ``step`` summing to 1 (all of them > 0 not required)."""
    parts = round(1 / step)
    grid = []
    for cuts in itertools.product(range(parts + 1), repeat=n - 1):
        if sum(cuts) <= parts:
            grid.append(tuple(c / parts for c in cuts) + ((parts - sum(cuts)) / parts,))
    return grid


class Blend(Recommender):
    """A weighted sum of several recvae models' normalised scores.

    Args:
        components: models to combine: fitted or unfitted :class:`Recommender`
            objects, or ``{"name": ..., "params": {...}}`` dicts for
            :func:`recvae.models.make_model` (the form config files use).
        normalization: ``"zscore"`` (default), ``"rank"`` or ``"none"``; see the
            module docstring.
        weights: one non-negative weight per component; None (default) tunes
            them on the validation users: a grid over the simplex in steps of
            ``weight_step``, keeping the best validation NDCG@``eval_k``.
        weight_step: the tuning grid's step (0.05: 21 candidates for two models).
        eval_k: the validation metric is NDCG@eval_k.
        refit: fit components that are already fitted again (default False:
            fitted components are kept, so tuned models can be blended cheaply).

    Attributes set by ``fit``: ``components_`` (the fitted models),
    ``weights_``, ``validation_trials_`` (weights -> validation NDCG, when tuned).
    """

    def __init__(
        self,
        components: Sequence[Recommender | Mapping[str, Any]],
        normalization: str = "zscore",
        weights: Sequence[float] | None = None,
        weight_step: float = 0.05,
        eval_k: int = 100,
        refit: bool = False,
    ) -> None:
        if isinstance(components, (str, bytes)) or not isinstance(components, Sequence) or len(components) < 1:
            raise HyperParameterError(f"components={shown(components)}: expected a non-empty list of models or "
                                      "{'name': ..., 'params': ...} dicts")
        normalization = hyperparams.choice("normalization", normalization, NORMALISATIONS)
        if weights is not None:
            weights = list(hyperparams.number_list("weights", weights, minimum=0.0, rule="a list of numbers >= 0"))
            if len(weights) != len(components):
                raise ValueError(f"{len(weights)} weights for {len(components)} components; give one per component")
            if sum(weights) <= 0:
                raise ValueError(f"weights={weights}: expected numbers >= 0 with a positive sum")
        weight_step = hyperparams.number("weight_step", weight_step, minimum=0.0, maximum=1.0, low_open=True)
        if abs(round(1 / weight_step) * weight_step - 1) > 1e-9:
            raise ValueError(f"weight_step={weight_step!r}: expected a step that divides 1 (e.g. 0.05, 0.1)")
        eval_k = hyperparams.integer("eval_k", eval_k, minimum=1)
        refit = hyperparams.flag("refit", refit)
        _build_components(components)  # every component's name and parameters checked now, before any data
        self.components = list(components)
        self.normalization = normalization
        self.weights = weights
        self.weight_step = weight_step
        self.eval_k = eval_k
        self.refit = refit
        self.components_: list[Recommender] | None = None
        self.weights_: np.ndarray | None = None
        self.validation_trials_ = None

    def __repr__(self) -> str:
        names = [c.get("name") if isinstance(c, Mapping) else type(c).__name__ for c in self.components]
        return f"Blend({names}, normalization={self.normalization!r}, weights={self.weights})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments (components as given)."""
        return {"components": self.components, "normalization": self.normalization, "weights": self.weights,
                "weight_step": self.weight_step, "eval_k": self.eval_k, "refit": self.refit}

    # ------------------------------------------------------------------ fitting
    def _built_components(self) -> list[Recommender]:
        return _build_components(self.components)

    def fit(self, train, validation: HeldOut | None = None) -> Blend:
        """Fit every component on ``train``, then tune the weights on the validation users.

        ``train`` is a Split (its validation users are used), an Interactions or
        a CSR matrix with ``validation`` given. With fixed ``weights`` no
        validation is needed.
        """
        if isinstance(train, Split) and validation is None:
            validation = train.validation
        models = self._built_components()
        for model in models:
            if self.refit or model.n_items_ is None:
                model.fit(train, validation)
        n_items = {m.n_items_ for m in models}
        if len(n_items) != 1:
            raise ValueError(f"components were fitted on different item counts {sorted(n_items)}; fit them on one split")
        self.components_ = models
        self.n_items_ = n_items.pop()
        self.item_ids_ = next((m.item_ids_ for m in models if m.item_ids_ is not None), None)
        if self.weights is not None:
            self.weights_ = np.asarray(self.weights, dtype=np.float64) / sum(self.weights)
        elif len(models) == 1:
            self.weights_ = np.ones(1)
        elif validation is None:
            raise ValueError("Blend needs validation users to tune its weights: fit it on a Split, "
                             "pass validation=..., or give fixed weights=[...]")
        else:
            self._tune_weights(validation)
        return self

    def _tune_weights(self, validation: HeldOut) -> None:
        fold_in = as_user_rows(validation.fold_in, self.n_items_, allow_empty_rows=True)
        normalised = [normalise_scores(m.score(fold_in), fold_in, self.normalization) for m in self.components_]
        rows = []
        for weights in _simplex_grid(len(normalised), self.weight_step):
            blended = sum(w * s for w, s in zip(weights, normalised) if w > 0).astype(np.float32)
            M.mask_seen(blended, fold_in)
            top = M.top_k(blended, self.eval_k)
            ndcg = M.summarize(M.ndcg_at_k(top, validation.target, self.eval_k))["mean"]
            rows.append({**{f"w{i}": w for i, w in enumerate(weights)}, f"ndcg@{self.eval_k}": ndcg})
        trials = pd.DataFrame(rows)
        best = trials[f"ndcg@{self.eval_k}"].idxmax()
        self.weights_ = trials.loc[best, [f"w{i}" for i in range(len(normalised))]].to_numpy(np.float64)
        self.validation_trials_ = trials
        logger.info("blend weights %s (validation ndcg@%d %.4f)", self.weights_.round(3), self.eval_k,
                    trials.loc[best, f"ndcg@{self.eval_k}"])

    # ------------------------------------------------------------------ scoring
    def score(self, user_rows) -> np.ndarray:
        """(users, items) blended normalised scores."""
        if self.components_ is None:
            raise NotFittedError("this Blend is not fitted yet: call fit(train) first")
        rows = as_user_rows(user_rows, self.n_items_)
        total = np.zeros(rows.shape, dtype=np.float64)
        for weight, model in zip(self.weights_, self.components_):
            if weight > 0:
                total += weight * normalise_scores(model.score(rows), rows, self.normalization)
        return total.astype(np.float32)

    def _vae(self) -> Recommender:
        if self.components_ is None:
            raise NotFittedError("this Blend is not fitted yet: call fit(train) first")
        for model in self.components_:
            if isinstance(model, TorchVAERecommender):
                return model
        raise NotImplementedError("this Blend has no VAE component, so it has no user embeddings")

    def embed_users(self, user_rows):
        """The embeddings (mu, sigma) of the blend's first VAE component."""
        return self._vae().embed_users(user_rows)

    def item_embeddings(self) -> np.ndarray:
        """The item embeddings of the blend's first VAE component."""
        return self._vae().item_embeddings()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write a directory: ``blend.json`` plus one file per component (each in its own format)."""
        if self.components_ is None:
            raise NotFittedError("this Blend is not fitted yet: call fit(train) first")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory; a Blend saves to a directory")
        path.mkdir(parents=True, exist_ok=True)
        files = []
        for i, model in enumerate(self.components_):
            name = f"component_{i}_{type(model).__name__.lower()}"
            model.save(path / name)
            files.append(name)
        meta = {"format": _SAVE_FORMAT, "class": "Blend", "normalization": self.normalization,
                "weights": self.weights_.tolist(), "components": files, "eval_k": self.eval_k,
                "weight_step": self.weight_step}
        (path / _META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Blend:
        """Read a Blend written by :meth:`save`; each component file is checked as it is loaded.

        Raises:
            ModelFileError: ``blend.json`` or a component file is missing, damaged,
                foreign, or holds another model than the one ``blend.json`` lists.
        """
        path = Path(path)
        meta_file = path / _META_FILE
        if not path.is_dir():
            raise ModelFileNotFoundError(f"{path}: no saved Blend directory there; check the path")
        if not meta_file.is_file():
            raise ModelFileError(f"{path}: not a saved Blend (no {_META_FILE} in it); give a directory written by "
                                 "Blend.save")
        meta = _read_blend_meta(meta_file)
        components = []
        for i, name in enumerate(meta["components"]):
            component = (cls.load(path / name, device=device) if is_blend_dir(path / name)
                         else load_model_file(path / name, device=device))
            # save() names each file after its model class: a swapped file shows here.
            expected = name.rsplit("_", 1)[-1]
            if expected != type(component).__name__.lower():
                raise ModelFileError(f"{path / name}: holds a {type(component).__name__} model, but {_META_FILE} "
                                     f"lists component {i} as a {expected}; {MODEL_FIX}")
            components.append(component)
        n_items = {m.n_items_ for m in components}
        if len(n_items) != 1:
            raise ModelFileError(f"{path}: its components have different item counts {sorted(n_items)}; "
                                 "a component file was replaced; re-save the Blend")
        if len(meta["weights"]) != len(components):
            raise ModelFileError(f"{meta_file}: {len(meta['weights'])} weights for {len(components)} components; "
                                 "re-save the Blend")
        try:
            blend = cls(components, normalization=meta["normalization"], weights=meta["weights"],
                        weight_step=meta["weight_step"], eval_k=meta["eval_k"])
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{meta_file}: its settings are invalid ({err}); re-save the Blend") from None
        blend.components_ = components
        blend.weights_ = np.asarray(meta["weights"], dtype=np.float64)
        blend.n_items_ = components[0].n_items_
        blend.item_ids_ = next((m.item_ids_ for m in components if m.item_ids_ is not None), None)
        return blend


def _read_blend_meta(meta_file: Path) -> dict:
    """``blend.json``, checked: recvae's format, every key, component files named inside the directory."""
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        meta = None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{meta_file}: not valid JSON (damaged or truncated); re-save the Blend")
    if meta.get("format") != _SAVE_FORMAT:
        raise ModelFileError(f"{meta_file}: format {meta.get('format')!r}, but this recvae reads {_SAVE_FORMAT!r}; "
                             "re-save the Blend")
    missing = [k for k in ("normalization", "weights", "components", "eval_k", "weight_step") if k not in meta]
    if missing:
        raise ModelFileError(f"{meta_file}: lacks {', '.join(missing)}; re-save the Blend")
    names = meta["components"]
    if (not isinstance(names, list) or not names or
            not all(isinstance(n, str) and n and Path(n).name == n and n not in (".", "..") for n in names)):
        raise ModelFileError(f"{meta_file}: 'components' must list file names inside the Blend directory; "
                             "re-save the Blend")
    if not isinstance(meta["weights"], list) or not all(isinstance(w, (int, float)) for w in meta["weights"]):
        raise ModelFileError(f"{meta_file}: 'weights' must be a list of numbers; re-save the Blend")
    return meta


def is_blend_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :meth:`Blend.save`."""
    return (Path(path) / _META_FILE).is_file()
