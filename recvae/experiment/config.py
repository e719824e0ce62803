"""Experiment configs: the TOML schema, validated by pydantic, and the frozen configs the runner reads.

:func:`load_config` parses a TOML file, validates it against the pydantic
models below (``extra="forbid"``: every key is checked) and returns an
:class:`ExperimentConfig` of frozen dataclasses. It reads no data.

Schema (an unknown or malformed key raises ``ValueError`` naming the file, the
key's path such as ``models[2].grid.l2`` (indexes count from 0) and the fix)::

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
    # sep = "\\t"                     # log: field separator (sniffed from the header otherwise)
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
    seeds = 3                        # fits per seeded model (torch VAEs, ALS, BPR: Recommender.seeded):
                                     # tuned once with its seed, then refit with seed + 1, ... on the
                                     # chosen parameters; test metrics averaged per user over the fits
    finalists = 1                    # > 1: the best N trials of a seeded model are each fit with every
                                     # seed and the best validation mean over seeds wins (resists the
                                     # winner's curse of a one-seed search; recvae.tuning.reselect_over_seeds)

    [[models]]                       # one table per model, in report order
    name = "ease"                    # a name of recvae.models.MODELS
    label = "EASE"                   # optional display name (default: name); unique
    params = { }                     # optional fixed parameters, flat (see recvae.models.make_model)
    grid = { l2 = [100.0, 500.0] }   # optional: every combination is tried on validation
    # search = { lr = { low = 1e-4, high = 3e-3, log = true }, latent_dim = { low = 64, high = 400, step = 8 },
    #            input_dropout = [0.2, 0.5, 0.7] }
    #                                # optional, instead of grid: sampled on validation by optuna
    #                                # (pip install "recvae[tune]"); a range { low, high } (ints when both
    #                                # are ints; optional log = true or step = ...) or a list of choices
    # budget = { trials = 20, sampler = "tpe", timeout_s = 1800 }
    #                                # required with search: trials to run; optional sampler ("tpe", the
    #                                # default, or "random"), seed = 0 (of the sampler), timeout_s (no new
    #                                # trial after it), prune = true (torch trials stop when their per-epoch
    #                                # validation NDCG is below the median of earlier trials' at that epoch),
    #                                # prune_warmup_epochs = 5, prune_startup_trials = 3

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

How errors are reported: the pydantic models carry each field's rule in its
``description``; :func:`_message` turns the first error of a
``pydantic.ValidationError`` into one line ``<file>: <path>: <problem and fix>``:
an unknown key gets a "did you mean ...?" (from :data:`_ALIASES`, else
difflib), a type or range error the field's rule and the value given, and a
rule the validators below enforce (raising :class:`_ConfigError`) its own text.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recvae.data import MOVIELENS, SyntheticConfig
from recvae.evaluation import metrics as M
from recvae.models import MODELS, is_vae_model, make_model
from recvae.tuning import SearchSpaceError, check_optuna, parameter_grid, search_space, space_corners

__all__ = [
    "ExperimentConfig",
    "DatasetConfig",
    "SplitConfig",
    "ModelSpec",
    "SearchBudget",
    "PublishedTable",
    "DEFAULT_METRICS",
    "DEFAULT_OUTPUT_DIR",
    "load_config",
    "parse_metric",
    "component_list",
    "blend_components",
    "repo_root",
]

DEFAULT_METRICS = ("ndcg@100", "recall@20", "recall@50")
DEFAULT_OUTPUT_DIR = "experiments/results"

_SOURCES = ("path", "movielens", "synthetic")
_LOG_KEYS = ("sep", "names", "user_col", "item_col", "rating_col", "timestamp_col")
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


# =============================================================================== the configs the runner reads
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
        """One line for the report: the release, the file or the synthetic parameters."""
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
class SearchBudget:
    """A ``[[models]]`` entry's ``budget``: the arguments of :func:`recvae.tuning.optuna_search` for its search."""

    trials: int
    sampler: str = "tpe"
    seed: int = 0
    timeout_s: float | None = None
    prune: bool = True
    prune_warmup_epochs: int = 5
    prune_startup_trials: int = 3


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[models]]`` entry: registry name, display label, fixed params, and a grid or a search with its budget."""

    name: str
    label: str
    params: dict
    grid: dict
    refers_to_vae: bool = False
    search: dict = field(default_factory=dict)
    budget: SearchBudget | None = None

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
    """A validated experiment config (see this module's docstring for the TOML schema).

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
    seeds: int = 3  # fits of each seeded model: the tuned one, then seed + 1 ... (see the runner)
    finalists: int = 1  # trials of a seeded model re-scored over the seeds before one is chosen

    @property
    def repo_root(self) -> Path | None:
        """The repository holding the config file (relative output and data paths start there)."""
        return repo_root(self.path.parent)


def repo_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding pyproject.toml or .git."""
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file() or (directory / ".git").exists():
            return directory
    return None


def parse_metric(metric: Any) -> tuple[str, int]:
    """``"ndcg@100"`` -> ``("ndcg", 100)``.

    Raises:
        ValueError: not ``name@k`` with ``name`` in :data:`recvae.evaluation.metrics.METRICS` and ``k >= 1``.
    """
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric) if isinstance(metric, str) else None
    if match is None or match.group(1) not in M.METRICS or int(match.group(2)) < 1:
        raise ValueError(
            f"{metric!r} is not a metric; write name@k with name in {sorted(M.METRICS)} and k >= 1, e.g. \"ndcg@100\""
        )
    return match.group(1), int(match.group(2))


def component_list(params: Mapping) -> list:
    """A blend's ``components`` list as given (empty for other models)."""
    components = params.get("components")
    return components if isinstance(components, list) else []


def blend_components(params: Mapping) -> list[dict]:
    """The ``{name, params}`` component tables of a blend's parameters (none for other models)."""
    return [c for c in component_list(params) if isinstance(c, Mapping) and "name" in c]


# =============================================================================== the TOML schema
class _ConfigError(ValueError):
    """A rule a validator enforces; ``path`` continues pydantic's location (e.g. ``(2, "label")``)."""

    def __init__(self, problem: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


class _Table(BaseModel):
    # strict: TOML already gives typed values, so "5" for an integer or true for a number is a mistake,
    # not something to coerce; frozen: a validated section is never edited afterwards.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_NonEmpty = Annotated[str, Field(min_length=1)]
_ColumnOrFalse = Annotated[str, Field(min_length=1)] | Literal[False]


class _DatasetTable(_Table):
    path: _NonEmpty | None = Field(None, description="must be a file path string")
    movielens: str | None = Field(None, description=f"must name a MovieLens release, one of {', '.join(MOVIELENS)}")
    synthetic: dict[str, Any] | None = Field(
        None, description="must be a table of recvae.data.SyntheticConfig fields, e.g. synthetic = { n_users = 300 }")
    format: Literal["movielens", "log"] | None = Field(None, description='must be "movielens" or "log"')
    sep: _NonEmpty | None = Field(None, description='must be a non-empty string, e.g. sep = "\\t"')
    names: Annotated[list[_NonEmpty], Field(min_length=1)] | None = Field(
        None, description='must be a list of column names, e.g. names = ["user", "item"]')
    user_col: _NonEmpty | None = Field(None, description="must be a column name")
    item_col: _NonEmpty | None = Field(None, description="must be a column name")
    rating_col: _ColumnOrFalse | None = Field(None, description="must be a column name (or false: no such column)")
    timestamp_col: _ColumnOrFalse | None = Field(None, description="must be a column name (or false: no such column)")
    rating_threshold: float | Literal[False] | None = Field(None, description="must be a number (or false: keep all)")
    min_user_interactions: int | None = Field(None, ge=0, description="must be an integer >= 0")
    min_item_interactions: int | None = Field(None, ge=0, description="must be an integer >= 0")
    data_dir: str | None = Field(None, description="must be a path string")
    download: bool | None = Field(None, description="must be true or false")

    @field_validator("movielens")
    @classmethod
    def _known_release(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in MOVIELENS:
            raise _ConfigError(f"movielens = {value!r} is not a known release; choose one of "
                               f"{', '.join(MOVIELENS)}, or give a file with path = ...")
        return None if value is None else value.strip().lower()

    @field_validator("synthetic")
    @classmethod
    def _synthetic_fields(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        # SyntheticConfig is a plain dataclass of recvae.data: its fields are the allowed keys,
        # and its own __post_init__ checks the values, so the two never drift apart.
        allowed = [f.name for f in dataclasses.fields(SyntheticConfig)]
        for key in value:
            if key not in allowed:
                raise _ConfigError(_unknown_key(key, allowed, "[dataset] synthetic"), (key,))
        try:
            SyntheticConfig(**value)
        except (TypeError, ValueError) as err:
            raise _ConfigError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _one_source_and_its_keys(self) -> _DatasetTable:
        given = self.model_fields_set
        sources = [s for s in _SOURCES if s in given]
        if len(sources) != 1:
            raise _ConfigError(
                f"needs exactly one of path, movielens or synthetic; got {sources or 'none'}. E.g. "
                "path = \"../shared/datasets/ml-100k/u.data\", movielens = \"ml-20m\" or "
                "synthetic = { n_users = 300, n_items = 100 }")
        log_keys = [k for k in _LOG_KEYS if k in given]
        if sources[0] == "path":
            if self.format == "movielens" and log_keys:
                raise _ConfigError(f"{log_keys} only apply to format = \"log\" (a MovieLens file has "
                                   "fixed columns); remove them or set format = \"log\"", ("format",))
        elif "format" in given:
            raise _ConfigError("format only applies to a path; remove it", ("format",))
        elif log_keys:
            raise _ConfigError(f"{log_keys} only apply to a log file given by path; remove them",
                               (log_keys[0],))
        if sources[0] != "movielens" and {"data_dir", "download"} & given:
            raise _ConfigError("data_dir and download only apply to movielens = ...; remove them")
        if self.names is not None:
            wanted = {"user_col": self.user_col or "user", "item_col": self.item_col or "item"}
            missing = {k: v for k, v in wanted.items() if v not in self.names}
            if missing:
                raise _ConfigError(f"names {self.names} lack the id column(s) {missing}; set "
                                   "user_col / item_col to the names you gave", ("names",))
        return self


class _SplitTable(_Table):
    kind: Literal["strong"] = Field(
        "strong", description="must be \"strong\" (strong generalization, Liang et al.'s protocol; the only kind)")
    heldout_users: Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0, lt=0.5)] = Field(
        description="must be a positive integer (users in each of validation and test) or a fraction in (0, 0.5), "
                    "e.g. heldout_users = 300")
    seed: int = Field(98765, ge=0, description="must be an integer >= 0 (98765 in the published code)")
    target_fraction: float = Field(0.2, gt=0, lt=1, description="must lie in (0, 1)")
    min_events_for_target: int = Field(5, ge=1, description="must be an integer >= 1")


_METRIC_RULE = 'must be a metric name@k, e.g. "ndcg@100"'


class _EvaluationTable(_Table):
    metrics: Annotated[list[str], Field(min_length=1)] = Field(
        list(DEFAULT_METRICS), description='must be a non-empty list of metrics, e.g. ["ndcg@100", "recall@20"]')
    select_by: str = Field("ndcg@100", description=_METRIC_RULE)
    seeds: int = Field(3, ge=1, description="must be an integer >= 1 (fits per seeded model), e.g. seeds = 3")
    finalists: int = Field(1, ge=1, description="must be an integer >= 1 (best trials of a seeded model "
                                                "re-scored over the seeds), e.g. finalists = 3")

    @field_validator("select_by")
    @classmethod
    def _a_metric(cls, select_by: str) -> str:
        try:
            parse_metric(select_by)
        except ValueError as err:
            raise _ConfigError(f"select_by {err}") from None
        return select_by

    @field_validator("metrics")
    @classmethod
    def _every_metric(cls, metrics: list[str]) -> list[str]:
        for i, metric in enumerate(metrics):
            try:
                parse_metric(metric)
            except ValueError as err:
                raise _ConfigError(f"metrics entry {err}", (i,)) from None
        return metrics


class _BudgetTable(_Table):
    trials: int = Field(ge=1, description="must be an integer >= 1 (trials to run), e.g. budget = { trials = 20 }")
    sampler: Literal["tpe", "random"] = Field("tpe", description='must be "tpe" (Bayesian) or "random"')
    seed: int = Field(0, description="must be an integer (it seeds the sampler)")
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="must be a positive number of seconds (no new trial starts after it)")
    prune: bool = Field(True, description="must be true or false")
    prune_warmup_epochs: int = Field(5, ge=0, description="must be an integer >= 0 (epochs before a trial "
                                                          "can be pruned)")
    prune_startup_trials: int = Field(3, ge=0, description="must be an integer >= 0 (complete trials before "
                                                           "any trial is pruned)")


class _ModelTable(_Table):
    name: str = Field(description=f"must be a model name, one of: {', '.join(MODELS)}")
    label: str | None = Field(None, description="must be a non-empty string (the model's name in the report)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="must be a table, e.g. params = { l2 = 500.0 }")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="must be a table of non-empty lists of values to try (wrap a "
                                          "single value: [value]), e.g. grid = { l2 = [100.0, 500.0] }")
    search: dict[str, Any] | None = Field(
        None, description="must be a table of parameter -> range or list of choices, e.g. "
                          "search = { lr = { low = 1e-4, high = 3e-3, log = true }, input_dropout = [0.2, 0.5] }")
    budget: _BudgetTable | None = Field(
        None, description='must be a table, e.g. budget = { trials = 20, sampler = "tpe", timeout_s = 1800 }')

    @field_validator("search")
    @classmethod
    def _a_search_space(cls, search: dict[str, Any] | None) -> dict[str, Any] | None:
        if search is None:
            return None
        try:
            search_space(search)
        except SearchSpaceError as err:
            raise _ConfigError(err.problem, (err.key,) if err.key is not None else ()) from None
        try:
            check_optuna()
        except ImportError as err:
            raise _ConfigError(str(err)) from None
        return search

    @model_validator(mode="after")
    def _search_and_budget(self) -> _ModelTable:
        label = self.shown_label
        if self.search is not None and self.grid:
            raise _ConfigError(f"[[models]] {label!r} has both grid and search; keep one (grid tries every "
                               "combination, search samples budget.trials of them)")
        if self.search is not None and self.budget is None:
            raise _ConfigError(f"[[models]] {label!r} has a search but no budget; add e.g. budget = {{ trials = 20 }}")
        if self.budget is not None and self.search is None:
            raise _ConfigError(f"[[models]] {label!r} has a budget but no search; add search = {{ ... }} or drop "
                               "the budget")
        both = sorted(set(self.params) & set(self.search or {}))
        if both:
            raise _ConfigError(f"[[models]] {label!r} sets {both} in both params and search; keep each in one of them")
        return self

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        key = name.strip().lower()
        if key not in MODELS:
            close = difflib.get_close_matches(key, list(MODELS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _ConfigError(f"unknown model name {name!r}{hint} (choose one of: {', '.join(MODELS)})")
        return key

    @field_validator("label")
    @classmethod
    def _not_blank(cls, label: str | None) -> str | None:
        if label is not None and not label.strip():
            raise _ConfigError("label must be a non-empty string")
        return label

    @model_validator(mode="after")
    def _params_xor_grid(self) -> _ModelTable:
        both = sorted(set(self.params) & set(self.grid))
        if both:
            raise _ConfigError(f"[[models]] {self.shown_label!r} sets {both} in both params and grid; "
                               "keep each in one of them")
        return self

    @property
    def shown_label(self) -> str:
        """The label, by default the registry name."""
        return self.label if self.label is not None else self.name


class _PublishedRow(_Table):
    # the other keys are metrics (name@k = number), so they cannot be listed as fields
    model_config = ConfigDict(extra="allow")

    model: _NonEmpty = Field(description='must be a model name, e.g. model = "EASE"')
    note: Any = None

    @model_validator(mode="after")
    def _metric_numbers(self) -> _PublishedRow:
        for key, value in (self.model_extra or {}).items():
            try:
                parse_metric(key)
            except ValueError as err:
                raise _ConfigError(f"key {err}", (key,)) from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _ConfigError(f"must be a number; got {value!r}", (key,))
        return self


class _PublishedTable(_Table):
    source: _NonEmpty = Field(
        description='must name where the numbers come from, e.g. source = "paper, table (dataset)"')
    rows: Annotated[list[_PublishedRow], Field(min_length=1)] = Field(
        description='must be a list of tables, e.g. rows = [{ model = "EASE", "ndcg@100" = 0.420 }]')


class _ConfigFile(_Table):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="must be a file-name-safe string (letters, digits, '.', '_', '-'), e.g. "
                                  'name = "ml-1m-half"; it names the report files')
    output_dir: _NonEmpty = Field(DEFAULT_OUTPUT_DIR,
                                  description=f'must be a path string, e.g. output_dir = "{DEFAULT_OUTPUT_DIR}"')
    description: str = Field("", description="must be a string")
    dataset: _DatasetTable = Field(description="must be a table ([dataset] with keys under it; see "
                                               "recvae.experiment.config's docstring)")
    split: _SplitTable = Field(description="must be a table ([split] with heldout_users under it)")
    evaluation: _EvaluationTable = Field(default_factory=_EvaluationTable,
                                         description="must be a table ([evaluation] with metrics and select_by)")
    models: Annotated[list[_ModelTable], Field(min_length=1)] = Field(
        description='must be one or more [[models]] tables, e.g. [[models]] name = "ease"')
    published: _PublishedTable | None = Field(None, description="must be a table ([published] with source and rows)")

    @field_validator("models")
    @classmethod
    def _labels_references_and_parameters(cls, models: list[_ModelTable]) -> list[_ModelTable]:
        labels: set[str] = set()
        for i, entry in enumerate(models):
            label = entry.shown_label
            if label in labels:
                raise _ConfigError(f"repeats the label {label!r}; give each model a unique label", (i, "label"))
            # References are checked before the parameters: make_model cannot tell a bad { ref } from a bad model.
            # a search is checked at the two corners of its space (every dimension at its low / high end)
            combos = space_corners(entry.search) if entry.search is not None else parameter_grid(entry.grid)
            for combo in combos:
                for component in component_list({**entry.params, **combo}):
                    if isinstance(component, Mapping) and "ref" in component and (
                            set(component) != {"ref"} or component["ref"] not in labels):
                        raise _ConfigError(
                            f"[[models]] {label!r} component {dict(component)} must be {{ ref = \"LABEL\" }} naming "
                            f"an earlier [[models]] label (earlier: {sorted(labels)})", (i, "params"))
            for combo in combos:
                params = {**entry.params, **combo}
                try:
                    make_model(entry.name, params)
                    for component in blend_components(params):  # a blend builds these only in fit
                        make_model(component["name"], dict(component.get("params") or {}))
                except (TypeError, ValueError, KeyError) as err:
                    raise _ConfigError(f"[[models]] {label!r} with params {params}: {err}", (i,)) from None
            labels.add(label)
        return models


# =============================================================================== loading
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


# =============================================================================== messages
def _unknown_key(key: str, allowed: list[str], section: str) -> str:
    suggestion = _ALIASES.get(key) if _ALIASES.get(key) in allowed else None
    if suggestion is None:
        close = difflib.get_close_matches(key, allowed, n=1)
        suggestion = close[0] if close else None
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"unknown key {key!r} in {section}{hint} (allowed keys: {', '.join(allowed)}); rename or remove it"


def _message(err: ValidationError, where: str) -> str:
    """One line for the first problem of ``err``: ``<file>: <path>: <problem and fix>``."""
    errors = err.errors()
    # a misspelt key usually causes the other errors (the real key is then "missing"): name it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, _ConfigError):
        path, _, _ = _walk(loc + problem.path)
        text = problem.problem
    elif isinstance(problem, Exception):  # a ValueError of code this module calls, already a sentence
        path, _, _ = _walk(loc)
        text = str(problem)
    else:
        path, rule, allowed = _walk(loc)
        if first["type"] == "extra_forbidden":
            parent = _format_path(path[:-1])
            section = "top level" if not parent else (
                f"[[{parent.split('[')[0]}]]" if parent.endswith("]") else f"[{parent}]")
            text = _unknown_key(str(loc[-1]), allowed, section)
        elif first["type"] == "missing":
            text = f"missing; add it ({rule or first['msg']})"
        else:
            text = f"{rule or first['msg']}; got {first['input']!r}"
    shown = _format_path(path)
    return f"{where}: {shown}: {text}" if shown else f"{where}: {text}"


def _walk(loc: tuple[str | int, ...]) -> tuple[list[str | int], str, list[str]]:
    """Follow a pydantic location through the schema.

    Returns the path to show (without pydantic's union tags such as ``int`` or
    ``literal[False]``), the rule of the deepest field on the way, and the keys
    the innermost table allows (for an unknown key's suggestion).
    """
    annotation: Any = _ConfigFile
    shown: list[str | int] = []
    rule, allowed = "", list(_ConfigFile.model_fields)
    for item in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            allowed = list(annotation.model_fields)
            shown.append(item)
            if item in annotation.model_fields:
                info = annotation.model_fields[item]
                rule, annotation = info.description or "", info.annotation
            else:  # a key the table does not declare
                annotation = Any
            continue
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is list and isinstance(item, int):
            shown.append(item)
            annotation = args[0] if args else Any
        elif origin is dict:
            shown.append(item)
            annotation = args[1] if len(args) == 2 else Any
        elif origin in (typing.Union, types.UnionType):
            annotation = Any  # a tag naming the union member that failed, not a key
        else:
            shown.append(item)
            annotation = Any
    return shown, rule, allowed


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X`` (pydantic's locations do not mention them)."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _format_path(path: list[str | int] | tuple[str | int, ...]) -> str:
    """``["models", 2, "grid", "l2"]`` -> ``models[2].grid.l2``."""
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text
