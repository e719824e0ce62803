"""Hyper-parameters as flat keywords over a torch model's two config dataclasses (the model's and
:class:`recvae.training.TrainingConfig`): the signature ``help()`` shows, and how ``MultVAE(latent_dim=100,
lr=1e-3, anneal_cap=0.3)`` lands in them."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import asdict, is_dataclass
from dataclasses import fields as fields_of
from typing import Any

from recvae.nn.annealing import AnnealConfig, anneal_config
from recvae.training import TrainingConfig

__all__ = ["flat_signature", "split_flat_params", "plain"]


def flat_signature(cls) -> inspect.Signature:
    """``(config=None, training=None, *, <every config field>, <every training field>)`` with the class's defaults."""
    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                  for name in ("config", "training")]
    for config in (cls.default_config(), cls.default_training()):
        for f in fields_of(config):
            value = getattr(config, f.name)
            default = asdict(value) if is_dataclass(value) else value
            parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                annotation=f.type))
    return inspect.Signature(parameters)


def split_flat_params(name: str, config, training: TrainingConfig, params: dict[str, Any]):
    """Flat keyword hyper-parameters applied to (model config, training config)."""
    config_fields = {f.name for f in dataclasses.fields(config)}
    training_fields = {f.name for f in dataclasses.fields(training)}
    # ``anneal_cap=0.3`` sets one field of the beta schedule (flat, for searches over it).
    anneal_fields = {f"anneal_{f.name}": f.name for f in dataclasses.fields(AnnealConfig)}
    anneal_values = {anneal_fields[k]: params.pop(k) for k in list(params) if k in anneal_fields}
    unknown = sorted(set(params) - config_fields - training_fields)
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {unknown} for {name}; model parameters: {sorted(config_fields)}; "
            f"training parameters: {sorted(training_fields)}"
        )
    config_values = {k: v for k, v in params.items() if k in config_fields}
    training_values = {k: v for k, v in params.items() if k in training_fields and k not in config_fields}
    if "anneal" in training_values:
        training_values["anneal"] = anneal_config(training_values["anneal"])
    if anneal_values:
        training_values["anneal"] = dataclasses.replace(training_values.get("anneal", training.anneal), **anneal_values)
    return dataclasses.replace(config, **config_values), dataclasses.replace(training, **training_values)


def plain(value):
    """Configs as plain Python containers (tuples -> lists) for weights_only loading."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
