"""The TOML schema of an experiment config as pydantic models (``extra="forbid"``, strict, frozen).

Each field carries its rule in its ``description`` (the error messages quote
it); validators enforce the rules a type cannot say (one data source, a known
release or model, parameters a model accepts, references to earlier labels)
by raising :class:`_ConfigError`, whose text the message keeps. The schema
itself is documented in :mod:`recvae.experiment.config`'s docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recvae.data import MOVIELENS, SyntheticConfig
from recvae.models import MODELS, make_model
from recvae.tuning import SearchSpaceError, check_optuna, parameter_grid, search_space, space_corners
from recvae.experiment.config.specs import (
    DEFAULT_DIVERSITY_SPACE,
    DEFAULT_METRICS,
    DEFAULT_OUTPUT_DIR,
    blend_components,
    component_list,
    parse_beyond_metric,
    parse_metric,
)

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


def _unknown_key(key: str, allowed: list[str], section: str) -> str:
    suggestion = _ALIASES.get(key) if _ALIASES.get(key) in allowed else None
    if suggestion is None:
        close = difflib.get_close_matches(key, allowed, n=1)
        suggestion = close[0] if close else None
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"unknown key {key!r} in {section}{hint} (allowed keys: {', '.join(allowed)}); rename or remove it"


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
    beyond_accuracy: list[str] | None = Field(
        None, description='must be a list of beyond-accuracy metrics (empty: none), e.g. ["novelty@20", "gini@20"]')
    diversity_space: Literal["auto", "embeddings", "cooccurrence"] = Field(
        DEFAULT_DIVERSITY_SPACE, description='must be "cooccurrence" (the same item vectors for every model), '
                                             '"auto" or "embeddings" (each model\'s own item embeddings)')

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

    @field_validator("beyond_accuracy")
    @classmethod
    def _every_beyond_metric(cls, metrics: list[str] | None) -> list[str] | None:
        for i, metric in enumerate(metrics or ()):
            try:
                parse_beyond_metric(metric)
            except ValueError as err:
                raise _ConfigError(f"beyond_accuracy entry {err}", (i,)) from None
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


def _referenced(params: dict[str, Any]) -> dict[str, Any]:
    """A blend's parameters with each ``{ ref = LABEL }`` component (checked above) replaced by a
    placeholder model: a blend checks its components when it is made, and the runner passes the
    referenced entry's fitted model there (that entry's own parameters were checked as it)."""
    components = component_list(params)
    if not any(isinstance(c, Mapping) and "ref" in c for c in components):
        return params
    return {**params, "components": [MODELS["popularity"]() if isinstance(c, Mapping) and "ref" in c else c
                                     for c in components]}


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
                    make_model(entry.name, _referenced(params))
                    for component in blend_components(params):  # a blend builds these only in fit
                        make_model(component["name"], dict(component.get("params") or {}))
                except (TypeError, ValueError, KeyError) as err:
                    raise _ConfigError(f"[[models]] {label!r} with params {params}: {err}", (i,)) from None
            labels.add(label)
        return models
