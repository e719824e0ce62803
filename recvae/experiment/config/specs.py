"""The frozen configs the experiment runner reads, and helpers on their values (metric names, blend
components, the repository root that relative paths start from)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recvae.evaluation import beyond_accuracy as BA
from recvae.evaluation import metrics as M
from recvae.models import is_vae_model

DEFAULT_METRICS = ("ndcg@100", "recall@20", "recall@50")
#: The beyond-accuracy columns of every report unless ``[evaluation] beyond_accuracy`` says otherwise.
DEFAULT_BEYOND_ACCURACY = ("novelty@20", "diversity@20", "arp@20", "long_tail@20", "gini@20", "coverage@20")
#: The report's default space of intra-list diversity: training co-occurrence, the same for every model.
DEFAULT_DIVERSITY_SPACE = "cooccurrence"
DEFAULT_OUTPUT_DIR = "experiments/results"


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
    beyond_accuracy: tuple[str, ...] | None = None  # None: DEFAULT_BEYOND_ACCURACY where the catalogue allows
    diversity_space: str = DEFAULT_DIVERSITY_SPACE

    def beyond_accuracy_for(self, n_items: int) -> tuple[str, ...]:
        """The beyond-accuracy metrics to report: those configured, or the defaults whose k fits ``n_items``
        (a catalogue under 20 items gets none rather than a refusal; configured ones are checked by
        :meth:`check_cutoffs`)."""
        if self.beyond_accuracy is not None:
            return self.beyond_accuracy
        return tuple(m for m in DEFAULT_BEYOND_ACCURACY if parse_beyond_metric(m)[1] <= n_items)

    @property
    def repo_root(self) -> Path | None:
        """The repository holding the config file (relative output and data paths start there)."""
        return repo_root(self.path.parent)

    def check_cutoffs(self, n_items: int) -> None:
        """Refuse a metric whose cut-off k exceeds the catalogue the data gave (called once the data is
        split, before any model is fit), naming the config key that asks for it.

        Raises:
            ValueError: ``<file>: evaluation.select_by = "ndcg@500": k=500 exceeds the 80 items ...``.
        """
        keys = [("evaluation.select_by", self.select_by)]
        keys += [(f"evaluation.metrics[{i}]", metric) for i, metric in enumerate(self.metrics)]
        keys += [(f"evaluation.beyond_accuracy[{i}]", metric) for i, metric in enumerate(self.beyond_accuracy or ())]
        if self.published is not None:
            keys += [(f"published.rows[{i}]", metric) for i, row in enumerate(self.published.rows)
                     for metric in row if metric not in ("model", "note")]
        for key, metric in keys:
            _, k = parse_beyond_metric(metric) if key.startswith("evaluation.beyond") else parse_metric(metric)
            if k > n_items:
                raise ValueError(f"{self.path}: {key} = {metric!r}: k={k} exceeds the {n_items} items of the "
                                 f"dataset's catalogue; choose k <= {n_items}")


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


def parse_beyond_metric(metric: Any) -> tuple[str, int]:
    """``"novelty@20"`` -> ``("novelty", 20)``: a beyond-accuracy metric of the report.

    Raises:
        ValueError: not ``name@k`` with ``name`` a beyond-accuracy metric
            (:data:`recvae.evaluation.beyond_accuracy.PER_USER` or ``GLOBAL``) and ``k >= 1``
            (``k >= 2`` for diversity, which compares pairs).
    """
    names = [*BA.PER_USER, *BA.GLOBAL]
    match = re.fullmatch(r"([a-z_]+)@(\d+)", metric) if isinstance(metric, str) else None
    if match is None or match.group(1) not in names or int(match.group(2)) < 1:
        raise ValueError(f"{metric!r} is not a beyond-accuracy metric; write name@k with name in {names} and "
                         f"k >= 1, e.g. \"novelty@20\"")
    if match.group(1) == "diversity" and int(match.group(2)) < 2:
        raise ValueError(f"{metric!r}: intra-list diversity compares pairs of items; choose k >= 2")
    return match.group(1), int(match.group(2))


def component_list(params: Mapping) -> list:
    """A blend's ``components`` list as given (empty for other models)."""
    components = params.get("components")
    return components if isinstance(components, list) else []


def blend_components(params: Mapping) -> list[dict]:
    """The ``{name, params}`` component tables of a blend's parameters (none for other models)."""
    return [c for c in component_list(params) if isinstance(c, Mapping) and "name" in c]
