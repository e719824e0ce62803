"""Warm starts: a model's next ``fit`` starts from an earlier fitted model of the same family.

:func:`prepare_warm_start` checks that the earlier model can initialise this one (same class,
same architecture) and records it on the model; the model's ``fit`` then takes it
(:func:`take_warm_start`) and starts from the earlier weights instead of a random draw:

- torch VAEs (Mult-VAE, Mult-DAE, RecVAE, the joint VAE): every weight is copied; a
  catalogue-sized weight (the input layer, the decoder's output rows and bias, an item x
  item part) is copied row by row through the item map, so that an item keeps what it
  learned whatever its column now. A new item's rows keep the fresh initialisation of a new
  model, and its output bias the mean of the old ones. The optimiser state starts afresh.
- ALS: the item factors are copied through the item map (new items: implicit's own small
  random draw), and the user factors of the training rows are solved from them (the exact
  ALS user step) before implicit's iterations start.
- closed-form and neighbour models (EASE, EDLAE, sparse EASE, item-KNN, popularity) have
  nothing to initialise: they are refit exactly; BPR and blends start from scratch.
  :func:`prepare_warm_start` returns a sentence that says which.

A different model class, a different architecture (``hidden_dims``, ``latent_dim``, the
likelihood's outputs, ALS ``factors``) is a one-line :class:`WarmStartError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["WarmStartError", "WarmStart", "item_positions", "prepare_warm_start", "take_warm_start",
           "copy_grown_state", "grown_rows"]


class WarmStartError(ValueError):
    """The earlier model cannot initialise this one (another class or architecture): one line, with the fix."""


@dataclass
class WarmStart:
    """An earlier fitted model and, for each item column of the new fit, its column there (-1: a new item)."""

    previous: object
    positions: np.ndarray

    @property
    def n_new_items(self) -> int:
        return int((self.positions < 0).sum())


def item_positions(new_item_ids: np.ndarray, old_item_ids: np.ndarray) -> np.ndarray:
    """For each raw id of ``new_item_ids``, its position in ``old_item_ids`` (-1 where it is new)."""
    return pd.Index(np.asarray(old_item_ids)).get_indexer(np.asarray(new_item_ids)).astype(np.int64)


def _is_torch(model) -> bool:
    return hasattr(model, "_build_net") and hasattr(model, "net_")


def _family(model) -> str:
    if _is_torch(model):
        return "torch"
    if type(model).__name__ == "ALS":
        return "als"
    if type(model).__name__ in ("EASE", "EDLAE", "SparseEASE", "ItemKNN", "Popularity"):
        return "exact"
    return "none"


def prepare_warm_start(model, previous, positions: np.ndarray) -> str:
    """Make ``model``'s next ``fit`` start from the fitted ``previous`` (see the module docstring).

    Args:
        model: the unfitted model to initialise.
        previous: an earlier fitted model of the same class.
        positions: for each item column of the coming fit, the column of the same raw item in
            ``previous`` (-1: a new item; :func:`item_positions`).

    Returns:
        One sentence saying what is carried over.

    Raises:
        WarmStartError: another model class, or another architecture.
    """
    if type(model) is not type(previous):
        raise WarmStartError(f"cannot warm-start a {type(model).__name__} from a {type(previous).__name__}: "
                             "warm-start only from a run of the same model (or drop the warm start)")
    positions = np.asarray(positions, dtype=np.int64)
    old_items = int(getattr(previous, "n_items_", 0) or 0)
    if len(positions) and positions.max() >= old_items:
        raise WarmStartError(f"the item map points past the earlier model's {old_items:,} items; "
                             "give the item ids of the run the model came from")
    family = _family(model)
    carried = int((positions >= 0).sum())
    if family == "exact":
        return (f"warm start: {type(model).__name__} is fitted exactly (closed form or counts), so nothing is "
                "carried over; it is refit on the merged data")
    if family == "none":
        return f"warm start: {type(model).__name__} cannot start from earlier weights; it is fit from scratch"
    if family == "torch" and getattr(model, "config", None).__class__ is not previous.config.__class__:
        raise WarmStartError(f"the earlier model's configuration is a {type(previous.config).__name__}, this one's "
                             f"a {type(model.config).__name__}; warm-start only from the same architecture")
    if family == "torch":
        _check_same_net(model, previous)
    if family == "als" and int(model.factors) != int(previous.factors):
        raise WarmStartError(f"ALS factors={model.factors} cannot start from an ALS with factors={previous.factors}: "
                             f"give factors={previous.factors} (--param factors={previous.factors}) or drop the "
                             "warm start")
    model._warm_start = WarmStart(previous, positions)
    new = int((positions < 0).sum())
    return (f"warm start: {carried:,} items keep their learned weights"
            + (f", {new:,} new items start fresh" if new else ""))


def _check_same_net(model, previous) -> None:
    """Build both networks for a four-item catalogue and compare every weight's shape (before any data is read)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        try:
            mine, theirs = model._build_net(4), previous._build_net(4)
        except Exception:  # noqa: BLE001 -- a net that needs its data is checked by the fit itself
            return
    ours, earlier = mine.state_dict(), theirs.state_dict()
    for name in sorted(set(ours) | set(earlier)):
        if name not in ours or name not in earlier:
            raise WarmStartError(f"the earlier model's network differs from this one (weight {name} is on one side "
                                 "only): warm-start only from a run of the same model and architecture")
        if ours[name].shape != earlier[name].shape:
            raise _shape_error(name, earlier[name], ours[name])


def take_warm_start(model) -> WarmStart | None:
    """The warm start :func:`prepare_warm_start` recorded on ``model`` (removed: it serves one fit), or None."""
    return model.__dict__.pop("_warm_start", None)


def grown_rows(old: np.ndarray, positions: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """``fresh`` (new rows x ...) with each row ``j`` whose ``positions[j] >= 0`` replaced by ``old[positions[j]]``."""
    out = np.array(fresh, copy=True)
    keep = positions >= 0
    out[keep] = old[positions[keep]]
    return out


def copy_grown_state(net, previous_net, positions: np.ndarray, n_old: int) -> None:
    """Copy ``previous_net``'s weights (a net of ``n_old`` items) into ``net`` (built for ``len(positions)``
    items), item axes remapped through ``positions``.

    An axis is an item axis where ``net`` has ``len(positions)`` and the earlier net ``n_old``
    entries; a new item keeps ``net``'s fresh rows (in a one-dimensional item weight, an output
    bias, the mean of the old entries). Every other axis must match.

    Raises:
        WarmStartError: a weight missing on either side, or of another shape off the item axes.
    """
    import torch

    old_state, new_state = previous_net.state_dict(), net.state_dict()
    missing = sorted(set(new_state) ^ set(old_state))
    if missing:
        raise WarmStartError(f"the earlier model's network differs from this one (weights {missing[:3]} are on one "
                             "side only): warm-start only from a run of the same model and architecture")
    n_new = len(positions)
    identity = n_old == n_new and bool((positions == np.arange(n_new)).all())
    out = {}
    for name, fresh in new_state.items():
        old = old_state[name].detach().to(fresh.device, fresh.dtype)
        axes = [] if identity else [a for a in range(fresh.ndim) if fresh.shape[a] == n_new and old.shape[a] == n_old]
        if old.ndim != fresh.ndim or any(fresh.shape[a] != old.shape[a] for a in range(fresh.ndim) if a not in axes) \
                or len(axes) > 2 or len(axes) == 2 and fresh.ndim != 2:
            raise _shape_error(name, old, fresh)
        out[name] = old.clone() if not axes else _grown_tensor(old, fresh, positions, axes)
    net.load_state_dict(out)


def _grown_tensor(old, fresh, positions: np.ndarray, axes: list[int]):
    """``fresh`` with the entries of the kept items (along ``axes``, one or both of a matrix) taken from ``old``."""
    import torch

    value = fresh.clone()
    if fresh.ndim == 1 and (positions < 0).any():
        value[:] = old.mean()
    new_at = torch.as_tensor(np.flatnonzero(positions >= 0), device=fresh.device)
    old_at = torch.as_tensor(positions[positions >= 0], device=fresh.device)
    if len(axes) == 1:
        value.index_copy_(axes[0], new_at, old.index_select(axes[0], old_at))
    else:  # an item x item matrix
        value[new_at[:, None], new_at[None, :]] = old[old_at[:, None], old_at[None, :]]
    return value


def _shape_error(name: str, old, fresh) -> WarmStartError:
    return WarmStartError(f"weight {name} is {tuple(old.shape)} in the earlier model and {tuple(fresh.shape)} here: "
                          "another architecture (hidden_dims, latent_dim, likelihood); warm-start only from a run "
                          "of the same model and architecture")
