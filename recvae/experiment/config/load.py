"""Loading an experiment config: TOML text, validated by the schema, into the frozen configs."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recvae.tuning import parameter_grid
from recvae.experiment.config.messages import _message
from recvae.experiment.config.schema import _LOG_KEYS, _SOURCES, _ConfigFile, _DatasetTable
from recvae.experiment.config.specs import (DatasetConfig, ExperimentConfig, ModelSpec, PublishedTable,
                                            SearchBudget, SplitConfig, component_list)

__all__ = ["load_config"]


def load_config(path: str | Path) -> ExperimentConfig:
    """Parse and validate an experiment config; reads no data (fast).

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: a key is unknown, missing or malformed; the one-line message names the file,
            the key's path and the fix.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    try:
        table = _ConfigFile.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_message(err, str(path))) from None
    return _experiment_config(table, path, text)


def _experiment_config(table: _ConfigFile, path: Path, text: str) -> ExperimentConfig:
    specs: list[ModelSpec] = []
    for entry in table.models:
        # a blend that reuses a tuned VAE counts as a VAE: is_vae_model only sees { ref } tables
        refers_to_vae = any(
            next(s for s in specs if s.label == c["ref"]).is_vae
            for combo in parameter_grid(entry.grid)
            for c in component_list({**entry.params, **combo}) if isinstance(c, Mapping) and "ref" in c)
        specs.append(ModelSpec(name=entry.name, label=entry.shown_label, params=dict(entry.params),
                               grid=dict(entry.grid), refers_to_vae=refers_to_vae,
                               search=dict(entry.search or {}),
                               budget=None if entry.budget is None else SearchBudget(**entry.budget.model_dump())))
    published = None
    if table.published is not None:
        published = PublishedTable(source=table.published.source,
                                   rows=tuple(r.model_dump(exclude_unset=True) for r in table.published.rows))
    split = table.split
    return ExperimentConfig(
        path=path, text=text, name=table.name, output_dir=table.output_dir, description=table.description,
        dataset=_dataset_config(table.dataset),
        split=SplitConfig(kind=split.kind, heldout_users=split.heldout_users, seed=split.seed,
                          target_fraction=float(split.target_fraction),
                          min_events_for_target=split.min_events_for_target),
        metrics=tuple(dict.fromkeys(table.evaluation.metrics)), select_by=table.evaluation.select_by,
        models=tuple(specs), published=published, seeds=table.evaluation.seeds,
        finalists=table.evaluation.finalists,
        beyond_accuracy=None if table.evaluation.beyond_accuracy is None
        else tuple(dict.fromkeys(table.evaluation.beyond_accuracy)),
        diversity_space=table.evaluation.diversity_space,
    )


def _dataset_config(table: _DatasetTable) -> DatasetConfig:
    given = table.model_fields_set
    source = next(s for s in _SOURCES if s in given)
    log_keys = [k for k in _LOG_KEYS if k in given]
    if source == "path":
        fmt = table.format or ("log" if log_keys else "movielens")
    else:
        fmt = source
    read_options = {k: getattr(table, k) for k in ("sep", "names") if k in given}
    # false (no such column) becomes None, the Interactions.from_dataframe spelling
    columns = {k: getattr(table, k) or None for k in ("user_col", "item_col", "rating_col", "timestamp_col")
               if k in given}
    preprocessing: dict[str, Any] = {}
    if "rating_threshold" in given:
        t = table.rating_threshold
        preprocessing["rating_threshold"] = None if t is False else float(t)
    for key in ("min_user_interactions", "min_item_interactions"):
        if key in given:
            preprocessing[key] = getattr(table, key)
    return DatasetConfig(source=source, value=getattr(table, source), format=fmt, read_options=read_options,
                         columns=columns, preprocessing=preprocessing,
                         data_dir=table.data_dir if table.data_dir is not None else "data",
                         download=table.download if table.download is not None else True)
