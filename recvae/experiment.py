"""One-command experiments: a TOML config in, a Markdown report with tables and plots out.

``run_experiment("experiments/configs/ml-1m-half.toml")`` loads and splits the
data, tunes every model of the config on the validation users only
(:func:`recvae.tuning.grid_search`), evaluates each chosen model once on the
test users, and writes ``<output_dir>/<name>.md`` (returned), ``<name>.csv``
(one row per model), ``<name>_trials.csv`` (every grid trial),
``<name>_history.csv`` (per-epoch histories) and PNG plots beside the report.
:func:`load_config` parses and validates a config without loading any data.

From the shell: ``recvae experiment CONFIG`` or ``python -m recvae.experiment
CONFIG [--output-dir DIR] [--no-progress] [--check]`` (``--check`` validates the
config and looks for its dataset file, without running anything).

Config schema (every key is checked; an unknown or malformed key raises
``ValueError`` naming it and the fix)::

    name = "ml-1m-half"              # required; report files <name>.md / .csv / _trials.csv
    output_dir = "experiments/results"   # optional (this default); a relative path is taken
                                     # from the repository root holding the config file
                                     # (the nearest parent with pyproject.toml or .git),
                                     # else from the working directory.
                                     # run_experiment(output_dir=...) overrides it.
    description = "..."              # optional, printed under the report's title

    [dataset]                        # exactly one of path / movielens / synthetic:
    path = "../shared/datasets/ml-1m-half/ratings.dat.gz"
        # a file, looked up relative to the config file's directory, then the
        # repository root, then the working directory
    # movielens = "ml-20m"           # an official release by name (recvae.data.MOVIELENS),
    # data_dir = "data"              #   read from data_dir (relative like output_dir),
    # download = true                #   downloaded with checksum checks when missing
    # synthetic = { n_users = 300, n_items = 100, seed = 0 }   # recvae.data.SyntheticConfig fields
    # format = "movielens" | "log"   # for path: a MovieLens file (u.data, *.dat, ratings.csv;
    #                                # the default) or any interaction log (CSV/TSV/Parquet,
    #                                # plain or .gz; the default as soon as a key below is set)
    # sep = "\t"                     # log: field separator (sniffed from the header otherwise)
    # names = ["user", "item", "plays"]  # log: column names of a file WITHOUT a header line
    # user_col = "user"; item_col = "item"; rating_col = "rating"; timestamp_col = "timestamp"
    #                                # log: column names (rating_col = false: every row positive)
    rating_threshold = 3.5           # keep events rated strictly above (false: keep all);
    min_user_interactions = 5        # Liang et al.: rating > 3.5, users >= 5,
    min_item_interactions = 0        # no item filter (applied before the user filter)

    [split]
    kind = "strong"                  # strong generalization (Liang et al.), the only kind
    heldout_users = 300              # users in each of validation and test (or a fraction < 0.5)
    seed = 98765                     # optional, the published seed
    target_fraction = 0.2            # optional: share of a held-out user's events to predict
    min_events_for_target = 5        # optional: fewer events -> no target (counted, not scored)

    [evaluation]                     # optional; these are the defaults
    metrics = ["ndcg@100", "recall@20", "recall@50"]   # name@k, name in recvae.evaluation.metrics.METRICS
    select_by = "ndcg@100"           # the validation metric each grid is tuned on

    [[models]]                       # one table per model, in report order
    name = "ease"                    # a name of recvae.models.MODELS
    label = "EASE"                   # optional display name (default: name); unique
    params = { }                     # optional fixed parameters, flat (see recvae.models.make_model)
    grid = { l2 = [100.0, 500.0] }   # optional: every combination is tried on validation

    [[models]]                       # a blend (recvae.models.Blend) of earlier entries:
    name = "blend"                   # { ref = LABEL } reuses that entry's tuned, fitted model
    label = "RecVAE + EASE"          # (its fit seconds then exclude the components'), and
    params = { components = [ { ref = "EASE" }, { ref = "RecVAE" } ] }   # { name, params } trains one afresh

    [published]                      # optional: published numbers printed beside ours
    source = "Liang et al. 2018, Table 2 (ML-20M)"
    rows = [ { model = "Mult-VAE", "recall@20" = 0.395, "recall@50" = 0.537, "ndcg@100" = 0.426,
               note = "optional text" } ]
    # a row is matched to our model whose label or registry name equals its model
    # (ignoring case and punctuation: "Mult-VAE" matches "mult-vae")

The torch VAEs pick their best epoch on validation NDCG@``eval_k`` (a
training parameter, 100 by default) whatever ``select_by`` is; ``select_by``
ranks the grid's trials. The paired tests compare every model with the one
whose validation ``select_by`` is best (chosen without looking at the test
users), and the best VAE with the best non-VAE, both chosen on validation
(VAEs: :data:`recvae.models.VAE_MODELS` and blends with a VAE component, as
:func:`recvae.models.is_vae_model` says).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import platform
import re
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recvae import __version__
from recvae.evaluation import metrics as M
from recvae.data import (
    MOVIELENS,
    Interactions,
    Split,
    SyntheticConfig,
    load_movielens,
    strong_generalization,
    synthetic_interactions,
)
from recvae.data.files import read_interactions_file
from recvae.evaluation import EvaluationResult, evaluate, paired_comparison
from recvae.models import MODELS, VAE_MODELS, Blend, is_vae_model, make_model
from recvae.models.mult_vae import TorchVAERecommender
from recvae.tuning import GridSearchResult, grid_search, parameter_grid

logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentConfig",
    "DatasetConfig",
    "SplitConfig",
    "ModelSpec",
    "PublishedTable",
    "load_config",
    "load_dataset",
    "resolve_dataset_path",
    "run_experiment",
]

DEFAULT_METRICS = ("ndcg@100", "recall@20", "recall@50")
DEFAULT_OUTPUT_DIR = "experiments/results"

_TOP_KEYS = ("name", "output_dir", "description", "dataset", "split", "evaluation", "models", "published")
_SOURCES = ("path", "movielens", "synthetic")
_LOG_KEYS = ("sep", "names", "user_col", "item_col", "rating_col", "timestamp_col")
_PREPROCESSING_KEYS = ("rating_threshold", "min_user_interactions", "min_item_interactions")
_DATASET_KEYS = (*_SOURCES, "format", *_LOG_KEYS, *_PREPROCESSING_KEYS, "data_dir", "download")
_SPLIT_KEYS = ("kind", "heldout_users", "seed", "target_fraction", "min_events_for_target")
_EVALUATION_KEYS = ("metrics", "select_by")
_MODEL_KEYS = ("name", "label", "params", "grid")
_PUBLISHED_KEYS = ("source", "rows")
#: Names people reach for, and the key recvae uses for them.
_ALIASES = {
    "min_rating": "rating_threshold",
    "rating_min": "rating_threshold",
    "threshold": "rating_threshold",
    "min_user_events": "min_user_interactions",
    "min_users_events": "min_user_interactions",
    "min_uc": "min_user_interactions",
    "min_item_users": "min_item_interactions",
    "min_item_events": "min_item_interactions",
    "min_sc": "min_item_interactions",
    "heldout": "heldout_users",
    "n_heldout_users": "heldout_users",
    "n_heldout": "heldout_users",
    "model": "name",
    "metric": "select_by",
}


# =============================================================================== config
@dataclass(frozen=True)
class DatasetConfig:
    """Where the interactions come from and how they are preprocessed.

    ``source`` is ``"path"``, ``"movielens"`` or ``"synthetic"``; ``value`` the
    file path as written, the release name, or the SyntheticConfig fields.
    """

    source: str
    value: Any
    format: str = "movielens"
    read_options: dict = field(default_factory=dict)  # sep, names
    columns: dict = field(default_factory=dict)  # user_col, item_col, rating_col, timestamp_col
    preprocessing: dict = field(default_factory=dict)  # Interactions.from_dataframe keywords
    data_dir: str = "data"
    download: bool = True

    def describe(self) -> str:
        if self.source == "synthetic":
            return f"synthetic data ({', '.join(f'{k}={v}' for k, v in self.value.items()) or 'defaults'})"
        if self.source == "movielens":
            return f"MovieLens {self.value}"
        return f"{self.value}"


@dataclass(frozen=True)
class SplitConfig:
    """Strong generalization (Liang et al.) arguments."""

    kind: str = "strong"
    heldout_users: int | float = 0.1
    seed: int = 98765
    target_fraction: float = 0.2
    min_events_for_target: int = 5


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[models]]`` entry: registry name, display label, fixed params and grid."""

    name: str
    label: str
    params: dict
    grid: dict
    refers_to_vae: bool = False

    @property
    def is_vae(self) -> bool:
        """A VAE of :data:`recvae.models.VAE_MODELS`, or a blend with a VAE component (named or referenced)."""
        return self.refers_to_vae or is_vae_model(self.name, self.params)


@dataclass(frozen=True)
class PublishedTable:
    """Published numbers to print beside ours."""

    source: str
    rows: tuple[dict, ...]


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config (see the module docstring for the TOML schema).

    ``path`` is the config file (absolute), ``text`` its content, copied into the report.
    """

    path: Path
    text: str
    name: str
    output_dir: str
    description: str
    dataset: DatasetConfig
    split: SplitConfig
    metrics: tuple[str, ...]
    select_by: str
    models: tuple[ModelSpec, ...]
    published: PublishedTable | None = None

    @property
    def repo_root(self) -> Path | None:
        return _repo_root(self.path.parent)


def load_config(path: str | Path) -> ExperimentConfig:
    """Parse and validate an experiment config; reads no data (fast).

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: a key is unknown, missing or malformed; the message names it and the fix.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    return _validate(raw, path, text)


def _validate(raw: dict, path: Path, text: str) -> ExperimentConfig:
    where = str(path)
    _check_keys(raw, _TOP_KEYS, "top level", where)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(
            f"{where}: 'name' must be a file-name-safe string (letters, digits, '.', '_', '-'), e.g. "
            f'name = "ml-1m-half"; it names the report files; got {name!r}'
        )
    output_dir = raw.get("output_dir", DEFAULT_OUTPUT_DIR)
    if not isinstance(output_dir, str) or not output_dir:
        raise ValueError(f'{where}: output_dir must be a path string, e.g. output_dir = "{DEFAULT_OUTPUT_DIR}"')
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{where}: description must be a string")

    dataset = _validate_dataset(_table(raw, "dataset", where, required=True), where)
    split = _validate_split(_table(raw, "split", where, required=True), where)
    metrics, select_by = _validate_evaluation(_table(raw, "evaluation", where, required=False), where)
    models = _validate_models(raw.get("models"), where)
    published = _validate_published(raw["published"], where) if "published" in raw else None
    return ExperimentConfig(
        path=path, text=text, name=name, output_dir=output_dir, description=description, dataset=dataset,
        split=split, metrics=metrics, select_by=select_by, models=models, published=published,
    )


def _check_keys(table: Mapping, allowed: Sequence[str], section: str, where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        suggestion = _ALIASES.get(key) if _ALIASES.get(key) in allowed else None
        if suggestion is None:
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = close[0] if close else None
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise ValueError(
            f"{where}: unknown key {key!r} in {section}{hint} (allowed keys: {', '.join(allowed)}); "
            "rename or remove it"
        )


def _table(raw: Mapping, key: str, where: str, *, required: bool) -> dict:
    if key not in raw:
        if required:
            raise ValueError(f"{where}: missing the [{key}] table; add it (see recvae.experiment's docstring)")
        return {}
    value = raw[key]
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key} must be a table ([{key}] with keys under it); got {type(value).__name__}")
    return value


def _validate_dataset(table: dict, where: str) -> DatasetConfig:
    _check_keys(table, _DATASET_KEYS, "[dataset]", where)
    sources = [s for s in _SOURCES if s in table]
    if len(sources) != 1:
        raise ValueError(
            f"{where}: [dataset] needs exactly one of path, movielens or synthetic; got "
            f"{sources or 'none'}. E.g. path = \"../shared/datasets/ml-100k/u.data\", movielens = \"ml-20m\" "
            "or synthetic = { n_users = 300, n_items = 100 }"
        )
    source = sources[0]
    value = table[source]
    log_keys = [k for k in _LOG_KEYS if k in table]
    if source == "path":
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: [dataset] path must be a file path string; got {value!r}")
        fmt = table.get("format", "log" if log_keys else "movielens")
        if fmt not in ("movielens", "log"):
            raise ValueError(f"{where}: [dataset] format must be \"movielens\" or \"log\"; got {fmt!r}")
        if fmt == "movielens" and log_keys:
            raise ValueError(
                f"{where}: [dataset] {log_keys} only apply to format = \"log\" (a MovieLens file has fixed "
                "columns); remove them or set format = \"log\""
            )
    else:
        if "format" in table:
            raise ValueError(f"{where}: [dataset] format only applies to a path; remove it")
        if log_keys:
            raise ValueError(f"{where}: [dataset] {log_keys} only apply to a log file given by path; remove them")
        fmt = source
    if source == "movielens":
        if not isinstance(value, str) or value.strip().lower() not in MOVIELENS:
            raise ValueError(
                f"{where}: [dataset] movielens = {value!r} is not a known release; choose one of "
                f"{', '.join(MOVIELENS)}, or give a file with path = ..."
            )
        value = value.strip().lower()
    elif "data_dir" in table or "download" in table:
        raise ValueError(f"{where}: [dataset] data_dir and download only apply to movielens = ...; remove them")
    if source == "synthetic":
        if not isinstance(value, dict):
            raise ValueError(f"{where}: [dataset] synthetic must be a table, e.g. synthetic = {{ n_users = 300 }}")
        fields = [f.name for f in dataclasses.fields(SyntheticConfig)]
        _check_keys(value, fields, "[dataset] synthetic", where)
        try:
            SyntheticConfig(**value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: [dataset] synthetic: {err}") from None

    read_options = {}
    if "sep" in table:
        if not isinstance(table["sep"], str) or not table["sep"]:
            raise ValueError(f'{where}: [dataset] sep must be a non-empty string, e.g. sep = "\\t"')
        read_options["sep"] = table["sep"]
    if "names" in table:
        names = table["names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f'{where}: [dataset] names must be a list of column names, e.g. ["user", "item"]')
        read_options["names"] = names
    columns = {}
    for key in ("user_col", "item_col", "rating_col", "timestamp_col"):
        if key not in table:
            continue
        col = table[key]
        if col is False and key in ("rating_col", "timestamp_col"):
            columns[key] = None
        elif isinstance(col, str) and col:
            columns[key] = col
        else:
            raise ValueError(
                f"{where}: [dataset] {key} must be a column name"
                + (" (or false: no such column)" if key in ("rating_col", "timestamp_col") else "")
                + f"; got {col!r}"
            )
    if "names" in read_options:
        named = set(read_options["names"])
        wanted = {k: columns.get(k, d) for k, d in (("user_col", "user"), ("item_col", "item"))}
        missing = {k: v for k, v in wanted.items() if v not in named}
        if missing:
            raise ValueError(
                f"{where}: [dataset] names {read_options['names']} lack the id column(s) {missing}; "
                "set user_col / item_col to the names you gave"
            )

    preprocessing: dict[str, Any] = {}
    if "rating_threshold" in table:
        t = table["rating_threshold"]
        if t is False:
            preprocessing["rating_threshold"] = None
        elif isinstance(t, (int, float)) and not isinstance(t, bool):
            preprocessing["rating_threshold"] = float(t)
        else:
            raise ValueError(f"{where}: [dataset] rating_threshold must be a number (or false: keep all); got {t!r}")
    for key in ("min_user_interactions", "min_item_interactions"):
        if key in table:
            v = table[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{where}: [dataset] {key} must be an integer >= 0; got {v!r}")
            preprocessing[key] = v
    data_dir = table.get("data_dir", "data")
    download = table.get("download", True)
    if not isinstance(data_dir, str) or not isinstance(download, bool):
        raise ValueError(f"{where}: [dataset] data_dir must be a path string and download true or false")
    return DatasetConfig(source=source, value=value, format=fmt, read_options=read_options, columns=columns,
                         preprocessing=preprocessing, data_dir=data_dir, download=download)


def _validate_split(table: dict, where: str) -> SplitConfig:
    _check_keys(table, _SPLIT_KEYS, "[split]", where)
    kind = table.get("kind", "strong")
    if kind != "strong":
        raise ValueError(
            f"{where}: [split] kind = {kind!r} is not supported; use kind = \"strong\" (strong generalization, "
            "Liang et al.'s protocol)"
        )
    if "heldout_users" not in table:
        raise ValueError(f"{where}: [split] needs heldout_users (users in each of validation and test), e.g. 300")
    n = table["heldout_users"]
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n <= 0 or (isinstance(n, float) and n >= 0.5):
        raise ValueError(
            f"{where}: [split] heldout_users must be a positive integer (users per held-out set) or a fraction "
            f"in (0, 0.5); got {n!r}"
        )
    seed = table.get("seed", 98765)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{where}: [split] seed must be an integer >= 0 (98765 in the published code); got {seed!r}")
    fraction = table.get("target_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"{where}: [split] target_fraction must lie in (0, 1); got {fraction!r}")
    min_events = table.get("min_events_for_target", 5)
    if not isinstance(min_events, int) or isinstance(min_events, bool) or min_events < 1:
        raise ValueError(f"{where}: [split] min_events_for_target must be an integer >= 1; got {min_events!r}")
    return SplitConfig(kind=kind, heldout_users=n, seed=seed, target_fraction=float(fraction),
                       min_events_for_target=min_events)


def _parse_metric(metric: Any, where: str, key: str) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric) if isinstance(metric, str) else None
    if match is None or match.group(1) not in M.METRICS or int(match.group(2)) < 1:
        raise ValueError(
            f"{where}: {key} {metric!r} is not a metric; write name@k with name in {sorted(M.METRICS)} "
            "and k >= 1, e.g. \"ndcg@100\""
        )
    return match.group(1), int(match.group(2))


def _validate_evaluation(table: dict, where: str) -> tuple[tuple[str, ...], str]:
    _check_keys(table, _EVALUATION_KEYS, "[evaluation]", where)
    metrics = table.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(metrics, list) or not metrics:
        raise ValueError(f'{where}: [evaluation] metrics must be a non-empty list, e.g. ["ndcg@100", "recall@20"]')
    for m in metrics:
        _parse_metric(m, where, "[evaluation] metrics entry")
    select_by = table.get("select_by", "ndcg@100")
    _parse_metric(select_by, where, "[evaluation] select_by")
    return tuple(dict.fromkeys(metrics)), select_by


def _validate_models(models: Any, where: str) -> tuple[ModelSpec, ...]:
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise ValueError(
            f"{where}: add at least one [[models]] table, e.g.\n[[models]]\nname = \"ease\"\ngrid = {{ l2 = [100.0, 500.0] }}"
        )
    specs, labels = [], set()
    for i, table in enumerate(models, start=1):
        section = f"[[models]] #{i}"
        _check_keys(table, _MODEL_KEYS, section, where)
        name = table.get("name")
        key = str(name).strip().lower() if isinstance(name, str) else None
        if key not in MODELS:
            close = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: {section} has unknown model name {name!r}{hint} (choose one of: {', '.join(MODELS)})")
        label = table.get("label", key)
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: {section} label must be a non-empty string")
        if label in labels:
            raise ValueError(f"{where}: {section} repeats the label {label!r}; give each model a unique label")
        labels.add(label)
        section = f"[[models]] {label!r}"
        params = table.get("params", {})
        grid = table.get("grid", {})
        for what, value in (("params", params), ("grid", grid)):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {section} {what} must be a table, e.g. {what} = {{ l2 = 500.0 }}")
        try:
            combos = parameter_grid(grid)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {section} grid: {err}") from None
        refers_to_vae = False
        for combo in combos:
            for component in _component_list({**params, **combo}):
                if isinstance(component, Mapping) and "ref" in component:
                    if set(component) != {"ref"} or component["ref"] not in labels - {label}:
                        raise ValueError(
                            f"{where}: {section} component {dict(component)} must be {{ ref = \"LABEL\" }} naming "
                            f"an earlier [[models]] label (earlier: {sorted(labels - {label})})"
                        )
                    refers_to_vae |= next(s for s in specs if s.label == component["ref"]).is_vae
        both = sorted(set(params) & set(grid))
        if both:
            raise ValueError(f"{where}: {section} sets {both} in both params and grid; keep each in one of them")
        for combo in combos:
            try:
                make_model(key, {**params, **combo})
                for component in _components({**params, **combo}):  # a blend builds these only in fit
                    make_model(component["name"], dict(component.get("params") or {}))
            except (TypeError, ValueError, KeyError) as err:
                raise ValueError(f"{where}: {section} with params {dict(params, **combo)}: {err}") from None
        specs.append(ModelSpec(name=key, label=label, params=dict(params), grid=dict(grid),
                               refers_to_vae=refers_to_vae))
    return tuple(specs)


def _validate_published(table: Any, where: str) -> PublishedTable:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: published must be a table ([published] with source and rows)")
    _check_keys(table, _PUBLISHED_KEYS, "[published]", where)
    source = table.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError(f'{where}: [published] needs source = "paper, table (dataset)" naming where the numbers come from')
    rows = table.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f'{where}: [published] rows must be a list of tables, e.g. [{{ model = "EASE", "ndcg@100" = 0.420 }}]')
    for i, row in enumerate(rows, start=1):
        if not isinstance(row.get("model"), str) or not row["model"]:
            raise ValueError(f"{where}: [published] row {i} needs model = \"<name>\"")
        for key, value in row.items():
            if key in ("model", "note"):
                continue
            _parse_metric(key, where, f"[published] row {i} key")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: [published] row {i} {key} must be a number; got {value!r}")
    return PublishedTable(source=source, rows=tuple(dict(r) for r in rows))


# =============================================================================== data
def _repo_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding pyproject.toml or .git."""
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file() or (directory / ".git").exists():
            return directory
    return None


def _relative_to_repo(config: ExperimentConfig, value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    root = config.repo_root
    return (root if root is not None else Path.cwd()) / path


def resolve_dataset_path(config: ExperimentConfig) -> Path:
    """The dataset file of a ``path`` config: relative to the config's directory, the repo root, then cwd.

    Raises:
        FileNotFoundError: naming every place looked at and how to get the data.
    """
    if config.dataset.source != "path":
        raise ValueError(f"{config.path}: the dataset is {config.dataset.source} = ..., not a file path")
    raw = Path(config.dataset.value).expanduser()
    candidates = [raw] if raw.is_absolute() else [config.path.parent / raw]
    if not raw.is_absolute():
        if config.repo_root is not None:
            candidates.append(config.repo_root / raw)
        candidates.append(Path.cwd() / raw)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(dict.fromkeys(str(c.resolve()) for c in candidates))
    raise FileNotFoundError(
        f"{config.path}: dataset file {config.dataset.value!r} not found (looked at {tried}). "
        "Benchmark files live in ../shared/datasets beside the repository (see its README; `recvae datasets` "
        "lists them); for an official MovieLens release use movielens = \"<name>\" in [dataset] "
        "(recvae.data.load_movielens downloads it); or set path to your own copy"
    )


def load_dataset(config: ExperimentConfig) -> Interactions:
    """The config's interactions, preprocessed (see :class:`DatasetConfig`)."""
    ds = config.dataset
    if ds.source == "synthetic":
        return synthetic_interactions(SyntheticConfig(**ds.value), **ds.preprocessing)
    if ds.source == "movielens":
        data_dir = _relative_to_repo(config, ds.data_dir)
        return load_movielens(ds.value, data_dir=data_dir, download=ds.download, **ds.preprocessing)
    path = resolve_dataset_path(config)
    if ds.format == "movielens":
        return load_movielens(path, **ds.preprocessing)
    if "names" in ds.read_options:
        if any(s in (".parquet", ".pq") for s in path.suffixes):
            raise ValueError(f"{config.path}: [dataset] names applies to text files; a Parquet file names its columns")
        log = pd.read_csv(path, sep=ds.read_options.get("sep", ","), header=None, names=ds.read_options["names"])
    else:
        log = read_interactions_file(path, sep=ds.read_options.get("sep"))
    return Interactions.from_dataframe(log, **ds.columns, **ds.preprocessing)


def _make_split(data: Interactions, config: SplitConfig) -> Split:
    return strong_generalization(
        data, config.heldout_users, target_fraction=config.target_fraction,
        min_events_for_target=config.min_events_for_target, seed=config.seed,
    )


# =============================================================================== running
@dataclass
class _Outcome:
    spec: ModelSpec
    search: GridSearchResult
    test: EvaluationResult
    history: pd.DataFrame | None
    fit_seconds: float
    best_epoch: int | None
    beta_reached: float | None
    blend_weights: list[float] | None = None


def _component_list(params: Mapping) -> list:
    """A blend's ``components`` list as given (empty for other models)."""
    components = params.get("components")
    return components if isinstance(components, list) else []


def _components(params: Mapping) -> list[dict]:
    """The ``{name, params}`` component tables of a blend's parameters (none for other models)."""
    return [c for c in _component_list(params) if isinstance(c, Mapping) and "name" in c]


def _resolve_references(params: Mapping, fitted: Mapping[str, Any]) -> dict:
    """``params`` with each ``{ ref = LABEL }`` component replaced by that entry's tuned, fitted model."""
    if not _component_list(params):
        return dict(params)
    return {**params, "components": [fitted[c["ref"]] if isinstance(c, Mapping) and "ref" in c else c
                                     for c in params["components"]]}


def _with_progress(name: str, params: Mapping, progress: bool) -> dict:
    """``params`` with ``progress`` set for models that take it (TrainingConfig.progress), blend components too."""
    params = dict(params)
    if issubclass(MODELS[str(name).strip().lower()], TorchVAERecommender):
        params.setdefault("progress", progress)
    if isinstance(params.get("components"), list):
        params["components"] = [
            {**c, "params": _with_progress(c["name"], c.get("params") or {}, progress)}
            if isinstance(c, Mapping) and str(c.get("name", "")).strip().lower() in MODELS else c
            for c in params["components"]
        ]
    return params


def _model_factory(spec: ModelSpec, progress: bool, fitted: Mapping[str, Any]):
    def factory(**grid_values):
        params = _resolve_references({**spec.params, **grid_values}, fitted)
        return make_model(spec.name, _with_progress(spec.name, params, progress))

    return factory


def _run_model(spec: ModelSpec, split: Split, config: ExperimentConfig, ks: list[int], names: list[str],
               progress: bool, fitted: Mapping[str, Any]) -> _Outcome:
    _, select_k = _parse_metric(config.select_by, str(config.path), "select_by")
    search = grid_search(_model_factory(spec, progress, fitted), spec.grid, split, metric=config.select_by,
                         ks=(select_k,), progress=progress)
    test = evaluate(search.best_model, split, "test", ks=ks, metrics=names)
    trials = search.trials
    best_row = trials[config.select_by].idxmax()
    history = getattr(search.best_model, "history_", None)
    if not isinstance(history, pd.DataFrame) or "epoch" not in history.columns or history.empty:
        history = None
    training = getattr(search.best_model, "training_", None)
    return _Outcome(
        spec=spec, search=search, test=test, history=history,
        fit_seconds=float(trials.loc[best_row, "fit_seconds"]),
        best_epoch=getattr(training, "best_epoch", None),
        beta_reached=getattr(training, "final_beta", None),
        blend_weights=[round(float(w), 4) for w in search.best_model.weights_]
        if isinstance(search.best_model, Blend) else None,
    )


def run_experiment(config_path: str | Path, *, output_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Run the experiment a TOML config describes; returns the Markdown report's path.

    Loads and splits the data, grid-searches every model on the validation
    users, evaluates each chosen model once on the test users, and writes the
    report, CSV tables and plots to ``output_dir`` (default: the config's
    ``output_dir``). ``progress`` shows progress bars (over models, trials and
    epochs) and prints the data summary.
    """
    started = time.perf_counter()
    config = load_config(config_path)
    out = Path(output_dir).expanduser() if output_dir is not None else _relative_to_repo(config, config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        logger.info(message)
        if progress:
            tqdm.write(message)

    data = load_dataset(config)
    split = _make_split(data, config.split)
    say(f"{config.name}: {config.dataset.describe()}\n{data.report or data}\n{split}")

    wanted = [*config.metrics, config.select_by]
    if config.published is not None:
        wanted += [k for row in config.published.rows for k in row if k not in ("model", "note")]
    parsed = [_parse_metric(m, str(config.path), "metric") for m in wanted]
    names = list(dict.fromkeys(n for n, _ in parsed))
    ks = sorted({k for _, k in parsed})

    outcomes: list[_Outcome] = []
    bar = tqdm(config.models, desc="models", unit="model", disable=None if progress else True, dynamic_ncols=True)
    for spec in bar:
        bar.set_description(f"model {spec.label}")
        outcome = _run_model(spec, split, config, ks, names, progress,
                             {o.spec.label: o.search.best_model for o in outcomes})
        outcomes.append(outcome)
        s = outcome.test.summary
        say(f"{spec.label}: test {config.select_by} {s.loc[config.select_by, 'mean']:.4f} ± "
            f"{1.96 * s.loc[config.select_by, 'std_err']:.4f} (validation {outcome.search.best_score:.4f}, "
            f"{len(outcome.search.trials)} trial(s), best {outcome.search.best_params}, fit {outcome.fit_seconds:.1f}s)")
    bar.close()

    table = _results_table(outcomes, config)
    trials = pd.concat([o.search.trials.assign(model=o.spec.label, registry_name=o.spec.name) for o in outcomes],
                       ignore_index=True)
    trials = trials[["model", "registry_name", *[c for c in trials.columns if c not in ("model", "registry_name")]]]
    histories = [o.history.assign(model=o.spec.label) for o in outcomes if o.history is not None]

    stem = out / config.name
    table.to_csv(stem.with_suffix(".csv"), index=False)
    trials.to_csv(out / f"{config.name}_trials.csv", index=False)
    if histories:
        pd.concat(histories, ignore_index=True).to_csv(out / f"{config.name}_history.csv", index=False)
    plots, plot_note = _plots(outcomes, out, config.name)
    report = _markdown(config, data, split, outcomes, table, plots, plot_note, time.perf_counter() - started)
    md_path = out / f"{config.name}.md"
    md_path.write_text(report, encoding="utf-8")
    say(f"wrote {md_path}")
    return md_path


# =============================================================================== tables
def _reference(outcomes: list[_Outcome], pool: list[_Outcome] | None = None) -> _Outcome | None:
    """The outcome with the best validation score (first on ties)."""
    pool = outcomes if pool is None else pool
    scored = [o for o in pool if math.isfinite(o.search.best_score)]
    return max(scored, key=lambda o: o.search.best_score) if scored else None


def _paired(a: _Outcome, b: _Outcome, metric: str) -> dict | None:
    try:
        return paired_comparison(a.test, b.test, metric)
    except ValueError as err:  # fewer than 2 users with a value under both
        logger.warning("no paired test of %s vs %s: %s", a.spec.label, b.spec.label, err)
        return None


def _results_table(outcomes: list[_Outcome], config: ExperimentConfig) -> pd.DataFrame:
    ref = _reference(outcomes)
    rows = []
    for o in outcomes:
        s = o.test.summary
        row: dict[str, Any] = {"model": o.spec.label, "registry_name": o.spec.name, "vae": o.spec.is_vae}
        for m in config.metrics:
            row[m] = float(s.loc[m, "mean"])
            row[f"{m} ci95"] = 1.96 * float(s.loc[m, "std_err"])
        row["test_users"] = int(s.loc[config.select_by, "n_users"])
        row["test_users_without_target"] = int(s.loc[config.select_by, "n_excluded"]) if "n_excluded" in s.columns else None
        row[f"validation {config.select_by}"] = o.search.best_score
        row["fit_seconds"] = o.fit_seconds
        row["trials"] = len(o.search.trials)
        row["best_params"] = json.dumps(o.search.best_params, default=str)
        row["best_epoch"] = o.best_epoch
        row["beta_reached"] = o.beta_reached
        row["blend_weights"] = json.dumps(o.blend_weights) if o.blend_weights is not None else None
        row["paired_reference"] = ref.spec.label if ref is not None else None
        test = _paired(o, ref, config.select_by) if ref is not None and o is not ref else None
        row["paired_diff"] = test["mean_diff"] if test else np.nan
        row["paired_diff_ci95_low"] = test["diff_ci95_low"] if test else np.nan
        row["paired_diff_ci95_high"] = test["diff_ci95_high"] if test else np.nan
        row["t_pvalue"] = test["t_pvalue"] if test else np.nan
        row["wilcoxon_pvalue"] = test["wilcoxon_pvalue"] if test else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _p(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2g}"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _markdown(config: ExperimentConfig, data: Interactions, split: Split, outcomes: list[_Outcome],
              table: pd.DataFrame, plots: list[tuple[str, str]], plot_note: str, seconds: float) -> str:
    import torch

    sel = config.select_by
    ref = _reference(outcomes)
    lines = [f"# {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    threads = torch.get_num_threads()
    device = "CUDA available" if torch.cuda.is_available() else "CPU only"
    lines += [
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} in {seconds / 60:.1f} min with recvae "
        f"{__version__}, torch {torch.__version__} ({device}, {threads} threads), Python {platform.python_version()}. "
        f"Config `{_display_path(config.path)}`, as run:",
        "",
        "```toml",
        config.text.rstrip("\n"),
        "```",
        "",
        "## Data",
        "",
        f"- Source: {config.dataset.describe()}",
        f"- Preprocessing: {data.report}" if data.report is not None else f"- Data: {data!r}",
        f"- Split: {split!r}",
        "",
        f"## Test results ({split.test.n_users:,} test users)",
        "",
        f"Each model's grid was searched on the {split.validation.n_users:,} validation users by {sel}; the chosen "
        "configuration was evaluated once on the test users. Mean ± 95% CI (1.96 × standard error over test users "
        "with a target). Paired tests (per-user test " + sel + ", paired t-test and Wilcoxon signed-rank) compare "
        f"each model with **{ref.spec.label if ref else '—'}**, the model with the best validation {sel}.",
        "",
    ]
    header = ["model", *config.metrics, f"validation {sel}", "fit s", "best params",
              f"Δ {sel} vs {ref.spec.label if ref else '—'}", "t-test p", "Wilcoxon p"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in table.iterrows():
        cells = [f"**{row['model']}**" if ref is not None and row["model"] == ref.spec.label else row["model"]]
        cells += [f"{row[m]:.4f} ± {row[f'{m} ci95']:.4f}" for m in config.metrics]
        params = json.loads(row["best_params"])
        extra = []
        if row["best_epoch"] is not None and not pd.isna(row["best_epoch"]):
            extra.append(f"best epoch {int(row['best_epoch'])}")
        if row["beta_reached"] is not None and not pd.isna(row["beta_reached"]):
            extra.append(f"β reached {row['beta_reached']:.3g}")
        if isinstance(row["blend_weights"], str):
            extra.append(f"blend weights {row['blend_weights']} (tuned on validation)")
        shown = ", ".join([*(f"{k}={v}" for k, v in params.items()), *extra]) or "defaults"
        diff = "reference" if ref is not None and row["model"] == ref.spec.label else (
            f"{_fmt(row['paired_diff'], '+.4f')} [{_fmt(row['paired_diff_ci95_low'], '+.4f')}, "
            f"{_fmt(row['paired_diff_ci95_high'], '+.4f')}]" if math.isfinite(row["paired_diff"]) else "—")
        cells += [_fmt(row[f"validation {sel}"]), f"{row['fit_seconds']:.1f}", shown, diff,
                  _p(row["t_pvalue"]), _p(row["wilcoxon_pvalue"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    n_excluded = table["test_users_without_target"].dropna()
    if len(n_excluded) and int(n_excluded.iloc[0]):
        lines += ["", f"{int(n_excluded.iloc[0])} test user(s) have no target (fewer than "
                      f"{config.split.min_events_for_target} events) and are excluded from the means."]
    lines += ["", "Fit seconds: the chosen configuration's training time (including its per-epoch validation "
                  "for the torch models). Full trials: " f"`{config.name}_trials.csv`.", ""]
    lines += _vae_section(outcomes, sel)
    if config.published is not None:
        lines += _published_section(config, outcomes)
    lines += ["## Training curves", ""]
    if plots:
        lines += [f"![{alt}]({file})" for alt, file in plots]
        lines += ["", "Curves of each model's chosen configuration; per-epoch values in "
                      f"`{config.name}_history.csv`."]
    if plot_note:
        lines += [plot_note]
    lines.append("")
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    root = _repo_root(path.parent)
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _vae_section(outcomes: list[_Outcome], sel: str) -> list[str]:
    lines = ["## Best VAE vs best non-VAE", ""]
    vaes = [o for o in outcomes if o.spec.is_vae]
    others = [o for o in outcomes if not o.spec.is_vae]
    if not vaes or not others:
        missing = "VAE" if not vaes else "non-VAE"
        return lines + [f"Not compared: the config has no {missing} model "
                        f"(VAEs: {', '.join(sorted(VAE_MODELS))} and blends with a VAE component).", ""]
    best_vae, best_other = _reference(outcomes, vaes), _reference(outcomes, others)
    if best_vae is None or best_other is None:
        return lines + ["Not compared: no finite validation score.", ""]
    test = _paired(best_vae, best_other, sel)
    lines.append(f"Each side's best chosen on validation {sel}: **{best_vae.spec.label}** (validation "
                 f"{best_vae.search.best_score:.4f}) vs **{best_other.spec.label}** (validation "
                 f"{best_other.search.best_score:.4f}).")
    if test is None:
        return lines + ["", "Too few test users with a value under both models for a paired test.", ""]
    lines += [
        "",
        f"- Test {sel}: {test['mean_a']:.4f} vs {test['mean_b']:.4f}, difference {test['mean_diff']:+.4f} "
        f"(95% CI [{test['diff_ci95_low']:+.4f}, {test['diff_ci95_high']:+.4f}]), paired t-test p = "
        f"{test['t_pvalue']:.3g}, Wilcoxon p = {test['wilcoxon_pvalue']:.3g}, n = {test['n_users']} users.",
        "",
    ]
    return lines


def _published_section(config: ExperimentConfig, outcomes: list[_Outcome]) -> list[str]:
    pub = config.published
    keys = list(dict.fromkeys(k for row in pub.rows for k in row if k not in ("model", "note")))
    by_name: dict[str, _Outcome] = {}
    for o in outcomes:
        by_name.setdefault(_norm(o.spec.label), o)
        by_name.setdefault(_norm(o.spec.name), o)
    header = ["model", *(c for k in keys for c in (f"{k} published", f"{k} ours")), "note"]
    lines = ["## Published numbers beside ours", "", f"Published: {pub.source}. Ours: the test results above "
             "(mean ± 95% CI); — where the config has no such model. Compare only numbers from the same protocol "
             "and metric definitions (Recall@k here divides by min(k, |target|)).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in pub.rows:
        ours = by_name.get(_norm(row["model"]))
        cells = [row["model"]]
        for k in keys:
            cells.append(_fmt(row.get(k), ".3f") if k in row else "—")
            if ours is not None and k in ours.test.summary.index:
                s = ours.test.summary.loc[k]
                cells.append(f"{s['mean']:.4f} ± {1.96 * s['std_err']:.4f}")
            else:
                cells.append("—")
        cells.append(str(row.get("note", "")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# =============================================================================== plots
def _plots(outcomes: list[_Outcome], out: Path, name: str) -> tuple[list[tuple[str, str]], str]:
    """PNG plots of the per-epoch histories; returns (alt text, file name) pairs and a note."""
    with_history = [o for o in outcomes if o.history is not None]
    if not with_history:
        return [], "No model of this config records a per-epoch history (only the torch models do)."
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return [], "Plots skipped: matplotlib is not installed (`pip install matplotlib`)."

    def figure():
        fig = Figure(figsize=(7, 4.2), dpi=110)
        FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
        ax = fig.subplots()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return fig, ax

    plots, notes = [], []
    val = [(o, _val_column(o.history)) for o in with_history]
    val = [(o, c) for o, c in val if c is not None]
    if val:
        fig, ax = figure()
        columns = sorted({c for _, c in val})
        for o, c in val:
            h = o.history.dropna(subset=[c])
            (line,) = ax.plot(h["epoch"], h[c], label=o.spec.label, linewidth=1.4)
            if o.best_epoch is not None and (h["epoch"] == o.best_epoch).any():
                best = h.loc[h["epoch"] == o.best_epoch, c].iloc[0]
                ax.plot([o.best_epoch], [best], "o", color=line.get_color(), markersize=5)
        metric = columns[0].removeprefix("val_").replace("ndcg", "NDCG") if len(columns) == 1 else "NDCG@k"
        ax.set(xlabel="epoch", ylabel=f"validation {metric}",
               title=f"{name}: validation {metric} per epoch (dot: selected epoch)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = f"{name}_val_ndcg.png"
        fig.savefig(out / file)
        plots.append((f"validation {metric} per epoch", file))
    beta = [o for o in with_history if "beta" in o.history.columns and o.history["beta"].notna().any()]
    if beta:
        fig, ax = figure()
        for o in beta:
            ax.plot(o.history["epoch"], o.history["beta"], label=o.spec.label, linewidth=1.4)
        ax.set(xlabel="epoch", ylabel="β (KL weight) at the end of the epoch", title=f"{name}: β schedule per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = f"{name}_beta.png"
        fig.savefig(out / file)
        plots.append(("β per epoch", file))
        if any(o.spec.name == "recvae" for o in beta):
            notes.append("RecVAE's β is per user (γ·|x_u|); its curve is the mean over training users.")
    without_beta = [o.spec.label for o in with_history if o not in beta]
    if without_beta:
        notes.append(f"No β column in the history of: {', '.join(without_beta)}.")
    return plots, " ".join(notes)


def _val_column(history: pd.DataFrame) -> str | None:
    if "val_ndcg@100" in history.columns and history["val_ndcg@100"].notna().any():
        return "val_ndcg@100"
    for c in history.columns:
        if str(c).startswith("val_ndcg@") and history[c].notna().any():
            return c
    return None


# =============================================================================== command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recvae.experiment CONFIG [--output-dir DIR] [--no-progress]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recvae.experiment", description=run_experiment.__doc__)
    parser.add_argument("config", help="TOML experiment config (see experiments/configs/)")
    parser.add_argument("--output-dir", default=None, help="where to write the report (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--check", action="store_true", help="validate the config and exit (loads no data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.check:
        config = load_config(args.config)
        print(f"{config.path}: OK ({len(config.models)} models: {', '.join(m.label for m in config.models)})")
        if config.dataset.source == "path":
            try:
                print(f"dataset file: {resolve_dataset_path(config)}")
            except FileNotFoundError as err:
                print(f"dataset file missing: {err}")
                return 1
        return 0
    print(run_experiment(args.config, output_dir=args.output_dir, progress=not args.no_progress))
    return 0


if __name__ == "__main__":
    sys.exit(main())
