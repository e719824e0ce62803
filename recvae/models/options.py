"""Training shortcuts: the few options every torch model shares (epochs, likelihood, KL annealing, device,
seed, progress) turned into a model's flat parameters, refused where a model has no such parameter.

``recvae train --epochs 3 --beta-cap 0.3`` and ``Run.fit(params=training_shortcuts("mult-vae", epochs=3,
beta_cap=0.3))`` give the same parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from recvae.models.mult_vae import MultVAE, TorchVAERecommender
from recvae.models.registry import MODELS
from recvae.nn import hyperparams
from recvae.nn.annealing import ANNEAL_KINDS

__all__ = ["training_shortcuts", "torch_model_names"]

_TORCH_ONLY = ("epochs", "likelihood", "anneal", "beta_cap", "device", "log_file")


def torch_model_names() -> list[str]:
    """The registry names of the torch models (trained by epochs, on a device, data-parallel)."""
    return [name for name, cls in MODELS.items() if issubclass(cls, TorchVAERecommender)]


def training_shortcuts(name: str, *, epochs: int | None = None, likelihood: str | None = None,
                       anneal: str | None = None, beta_cap: float | None = None, device: str | None = None,
                       seed: int | None = None, progress: bool | None = None, log_file: str | None = None,
                       labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The flat parameters of model ``name`` that the given shortcuts set (``None`` = not given).

    ``anneal`` (the KL annealing kind) and ``beta_cap`` (its largest weight) fill the model's
    default annealing schedule; ``progress=False`` hides a torch model's progress bar (the
    baselines have none); ``seed`` applies wherever the model has one; ``log_file`` receives each
    epoch as a JSON line as training goes (``history_jsonl``).

    Raises:
        KeyError: an unknown model name.
        ValueError: a shortcut the model has no parameter for, or a value out of its rule
            (``HyperParameterError``: ``epochs`` an integer >= 1, ``beta_cap`` a finite number >= 0,
            ``anneal`` a schedule kind, ``device`` a device name), in one line that names it
            (``labels`` maps a shortcut to what the caller calls it, e.g. ``{"epochs": "--epochs"}``).
    """
    key = str(name).strip().lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = MODELS[key]
    given = {"epochs": epochs, "likelihood": likelihood, "anneal": anneal, "beta_cap": beta_cap, "device": device,
             "log_file": log_file}
    label = {k: k for k in given} | dict(labels or {})
    accepts = inspect.signature(cls).parameters
    out: dict[str, Any] = {}
    if not issubclass(cls, TorchVAERecommender):
        for option in _TORCH_ONLY:
            if given[option] is not None:
                hint = f"; set its iterations with {label.get('iterations', 'iterations')}=N" \
                    if option == "epochs" and "iterations" in accepts else ""
                raise ValueError(f"{label[option]} applies to the torch models ({', '.join(torch_model_names())}), "
                                 f"not to {key!r}{hint}")
        return {"seed": seed} if seed is not None and "seed" in accepts else {}
    config_fields = {f.name for f in dataclasses.fields(cls.default_config())}
    # Each value checked here, under the caller's name for it (e.g. "--beta-cap=inf: expected ...").
    if epochs is not None:
        epochs = hyperparams.integer(label["epochs"], epochs, minimum=1)
    if anneal is not None:
        anneal = hyperparams.choice(label["anneal"], anneal, ANNEAL_KINDS)
    if beta_cap is not None:
        beta_cap = hyperparams.number(label["beta_cap"], beta_cap, minimum=0.0)
    if device is not None:
        device = hyperparams.device_name(label["device"], device)
    out.update({k: v for k, v in (("epochs", epochs), ("device", device), ("seed", seed)) if v is not None})
    if progress is False:
        out["progress"] = False
    if log_file is not None:
        out["history_jsonl"] = str(log_file)
    if likelihood is not None:
        if "likelihood" not in config_fields:
            raise ValueError(f"{label['likelihood']} does not apply to {key!r}: its config has no likelihood")
        out["likelihood"] = likelihood
    if anneal is not None or beta_cap is not None:
        if not (issubclass(cls, MultVAE) and cls.default_config().variational):
            reason = (f"RecVAE weights its KL term per user (beta_u = gamma * |x_u|): set {label.get('gamma', 'gamma')}=X"
                      if "gamma" in config_fields else "it has no KL term (not variational)")
            raise ValueError(f"{label['anneal']}/{label['beta_cap']} do not apply to {key!r}: {reason}")
        schedule = dataclasses.asdict(cls.default_training().anneal)
        if anneal is not None:
            schedule["kind"] = anneal
        if beta_cap is not None:
            schedule["cap"] = beta_cap
        out["anneal"] = schedule
    return out
