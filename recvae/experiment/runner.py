"""Running an experiment: load and split the data, tune and test every model, hand the outcomes to the report.

``run_experiment("experiments/configs/ml-1m-half.toml")`` tunes every model of
the config on the validation users only (:func:`recvae.tuning.grid_search`, or
:func:`recvae.tuning.optuna_search` for an entry with a ``search`` and its ``budget``),
evaluates each chosen model once on the test users and writes the report
(:func:`recvae.experiment.report.write_report`). :func:`main` is
``python -m recvae.experiment``.

The torch VAEs pick their best epoch on validation NDCG@``eval_k`` (a
training parameter, 100 by default) whatever ``select_by`` is; ``select_by``
ranks the grid's trials.

Seeds: the search runs once; each seeded model's chosen configuration is then
refit with ``[evaluation] seeds - 1`` further seeds and every fit tested
(:func:`recvae.experiment.seeds.refit_seeds`); deterministic models are fit once.
With ``[evaluation] finalists = N > 1``, a seeded model's N best trials are first
each fit with every seed and the best validation mean over seeds is chosen
(:func:`recvae.tuning.reselect_over_seeds`); the chosen one's fits are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from recvae.data import (
    Interactions,
    Split,
    SyntheticConfig,
    load_movielens,
    strong_generalization,
    synthetic_interactions,
)
from recvae.data.files import read_interactions_file
from recvae.evaluation import evaluate
from recvae.models import MODELS, Blend, Recommender, TorchVAERecommender, make_model
from recvae.tuning import GridSearchResult, grid_search, optuna_search, reselect_over_seeds
from recvae.experiment.config import (
    ExperimentConfig,
    ModelSpec,
    SplitConfig,
    component_list,
    load_config,
    parse_metric,
)
from recvae.experiment.report import Outcome, write_report
from recvae.experiment.seeds import entry_references, referenced_labels, refit_seeds

logger = logging.getLogger(__name__)

__all__ = ["load_dataset", "resolve_dataset_path", "run_experiment", "main"]


# =============================================================================== data
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
    """The config's interactions, preprocessed (see :class:`recvae.experiment.config.DatasetConfig`)."""
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


def make_split(data: Interactions, config: SplitConfig) -> Split:
    """The config's strong-generalization split of ``data`` (what every model of the run sees)."""
    return strong_generalization(
        data, config.heldout_users, target_fraction=config.target_fraction,
        min_events_for_target=config.min_events_for_target, seed=config.seed,
    )


# =============================================================================== models
def _resolve_references(params: Mapping, fitted: Mapping[str, Any]) -> dict:
    """``params`` with each ``{ ref = LABEL }`` component replaced by that entry's tuned, fitted model."""
    if not component_list(params):
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


def _model_factory(spec: ModelSpec, progress: bool, fitted: Mapping[str, Any]) -> Callable[..., Recommender]:
    def factory(**grid_values: Any) -> Recommender:
        params = _resolve_references({**spec.params, **grid_values}, fitted)
        return make_model(spec.name, _with_progress(spec.name, params, progress))

    return factory


def _tune(spec: ModelSpec, split: Split, select_by: str, progress: bool,
          fitted: Mapping[str, Any]) -> GridSearchResult:
    """``spec``'s grid search, or its optuna search within its budget, on the validation users by ``select_by``."""
    _, select_k = parse_metric(select_by)
    factory = _model_factory(spec, progress, fitted)
    if spec.budget is None:
        return grid_search(factory, spec.grid, split, metric=select_by, ks=(select_k,), progress=progress)
    b = spec.budget
    return optuna_search(factory, spec.search, split, n_trials=b.trials, sampler=b.sampler, seed=b.seed,
                         metric=select_by, ks=(select_k,), prune=b.prune, prune_warmup_epochs=b.prune_warmup_epochs,
                         prune_startup_trials=b.prune_startup_trials, timeout_s=b.timeout_s, progress=progress)


def _run_model(spec: ModelSpec, split: Split, config: ExperimentConfig, ks: list[int], names: list[str],
               progress: bool, fitted: Mapping[str, Any]) -> Outcome:
    """Tune ``spec`` (grid or search) on the validation users, then evaluate the chosen model once on the test users.

    ``fitted`` maps the labels of the entries run so far to their tuned models (for ``{ ref }`` components).
    """
    search = _tune(spec, split, config.select_by, progress, fitted)
    if config.finalists > 1 and config.seeds > 1 and type(search.best_model).seeded:  # not a blend: its weights
        search = reselect_over_seeds(search, _model_factory(spec, progress, fitted), split,
                                     finalists=config.finalists, seeds=config.seeds, progress=progress)
    test = evaluate(search.best_model, split, "test", ks=ks, metrics=names, diversity_space=config.diversity_space)
    trials = search.trials
    history = getattr(search.best_model, "history_", None)
    if not isinstance(history, pd.DataFrame) or "epoch" not in history.columns or history.empty:
        history = None
    training = getattr(search.best_model, "training_", None)
    return Outcome(
        spec=spec, search=search, test=test, history=history,
        fit_seconds=search.seed_fits[0].fit_seconds if search.seed_fits
        else float(trials.loc[trials[config.select_by].idxmax(), "fit_seconds"]),
        best_epoch=getattr(training, "best_epoch", None),
        beta_reached=getattr(training, "final_beta", None),
        blend_weights=[round(float(w), 4) for w in search.best_model.weights_]
        if isinstance(search.best_model, Blend) else None,
    )


def _tune_test_and_refit(spec: ModelSpec, split: Split, config: ExperimentConfig, ks: list[int], names: list[str],
                         progress: bool, earlier: list[Outcome]) -> Outcome:
    """One entry, whole: tuned on validation, tested, refit with the further seeds (``earlier``: the entries before)."""
    outcome = _run_model(spec, split, config, ks, names, progress, {o.spec.label: o.search.best_model for o in earlier})
    return refit_seeds(outcome, split, config.seeds, ks=ks, metrics=names, earlier=earlier,
                       keep_models=spec.label in referenced_labels(config), diversity_space=config.diversity_space)


#: What a worker process of :func:`_run_in_parallel` holds: the config, the split, the metrics, one per process.
_WORKER: dict[str, Any] = {}


def _start_worker(config: ExperimentConfig, split: Split, ks: list[int], names: list[str], threads: int) -> None:
    torch.set_num_threads(threads)
    try:  # BLAS too (EASE's solves, implicit's ALS), so that the workers share the cores instead of oversubscribing
        from threadpoolctl import threadpool_limits
        _WORKER["blas_limit"] = threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with implicit
        pass
    _WORKER.update(config=config, split=split, ks=ks, names=names)


def _run_entry_in_worker(index: int) -> Outcome:
    w = _WORKER
    return _tune_test_and_refit(w["config"].models[index], w["split"], w["config"], w["ks"], w["names"], False, [])


def worker_threads(jobs: int) -> int:
    """Torch (and BLAS) threads for each of ``jobs`` worker processes: an equal share of this process's, at least 1."""
    return max(1, torch.get_num_threads() // jobs)


def submission_order(specs: Sequence[ModelSpec], indices: Sequence[int]) -> list[int]:
    """``indices`` of ``specs`` in the order worker processes should take them: the searches with the longest
    wall-clock budget first (one without a timeout counts as longest), then the grids, each group in config order.

    The pool hands entries out first come, first served; a long search submitted last would run alone at the end
    while the other workers sit idle (longest-first is the classic greedy for balancing such a schedule).
    """
    def cost(index: int) -> tuple[int, float, int]:
        budget = specs[index].budget
        if budget is None:
            return (1, 0.0, index)
        return (0, -(budget.timeout_s if budget.timeout_s is not None else float("inf")), index)

    return sorted(indices, key=cost)


def _run_in_parallel(config: ExperimentConfig, split: Split, ks: list[int], names: list[str], jobs: int,
                     finished: Callable[[int, Outcome], None]) -> None:
    """Run every entry that reuses no other entry's fit in ``jobs`` worker processes, calling ``finished`` as each
    ends. Each worker gets an equal share of this process's torch threads (at least one)."""
    independent = submission_order(config.models, [i for i, spec in enumerate(config.models)
                                                   if not entry_references(spec)])
    if not independent:
        return
    threads = worker_threads(jobs)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's and BLAS's thread pools mid-state
    with ProcessPoolExecutor(max_workers=min(jobs, len(independent)), mp_context=context,
                             initializer=_start_worker, initargs=(config, split, ks, names, threads)) as pool:
        futures = {pool.submit(_run_entry_in_worker, index): index for index in independent}
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_experiment(config_path: str | Path, *, output_dir: str | Path | None = None, progress: bool = True,
                   jobs: int = 1) -> Path:
    """Run the experiment a TOML config describes; returns the Markdown report's path.

    Loads and splits the data, grid-searches every model on the validation
    users, evaluates each chosen model once on the test users, and writes the
    report, CSV tables and plots to ``output_dir`` (default: the config's
    ``output_dir``). ``progress`` shows progress bars (over models, trials and
    epochs) and prints the data summary.

    ``jobs > 1`` runs that many entries at a time, each in its own process with an
    equal share of the torch threads (blends that reuse other entries' fits run after
    those). Every entry does the same work as in a sequential run; search timeouts are
    wall-clock, so a contended machine completes fewer trials in them.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1 (entries run at a time); got {jobs!r}")
    started = time.perf_counter()
    config = load_config(config_path)
    out = Path(output_dir).expanduser() if output_dir is not None else _relative_to_repo(config, config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        logger.info(message)
        if progress:
            tqdm.write(message)

    data = load_dataset(config)
    split = make_split(data, config.split)
    say(f"{config.name}: {config.dataset.describe()}\n{data.report or data}\n{split}")
    config.check_cutoffs(split.n_items)
    config = dataclasses.replace(config, beyond_accuracy=config.beyond_accuracy_for(split.n_items))

    wanted = [*config.metrics, config.select_by]
    if config.published is not None:
        wanted += [k for row in config.published.rows for k in row if k not in ("model", "note")]
    parsed = [parse_metric(m) for m in wanted]  # validated by load_config: cannot raise here
    # accuracy names at every k asked for; beyond-accuracy ones at their own k only (name@k)
    names = [*dict.fromkeys(n for n, _ in parsed), *config.beyond_accuracy]
    ks = sorted({k for _, k in parsed})

    done: dict[int, Outcome] = {}
    bar = tqdm(total=len(config.models), desc="models", unit="model", disable=None if progress else True,
               dynamic_ncols=True)

    def finished(index: int, outcome: Outcome) -> None:
        done[index] = outcome
        bar.update(1)
        s = outcome.test.summary
        say(f"{outcome.spec.label}: test {config.select_by} {s.loc[config.select_by, 'mean']:.4f} ± "
            f"{1.96 * s.loc[config.select_by, 'std_err']:.4f} (validation {outcome.search.best_score:.4f}, "
            f"{len(outcome.search.trials)} trial(s), best {outcome.search.best_params}, fit {outcome.fit_seconds:.1f}s"
            f" per seed, {len(outcome.seed_runs)} seed(s))")

    if jobs > 1:  # the entries that reuse no other run side by side; the blends that do, after them
        _run_in_parallel(config, split, ks, names, jobs, finished)
    for index, spec in enumerate(config.models):
        if index not in done:
            bar.set_description(f"model {spec.label}")
            finished(index, _tune_test_and_refit(spec, split, config, ks, names, progress,
                                                 [done[i] for i in range(index)]))
    bar.close()
    outcomes = [done[i] for i in range(len(config.models))]

    md_path = write_report(config, data, split, outcomes, out, time.perf_counter() - started, jobs=jobs,
                           threads=worker_threads(jobs))  # jobs = 1: this process's threads
    say(f"wrote {md_path}")
    return md_path


# =============================================================================== command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recvae.experiment CONFIG [--output-dir DIR] [--no-progress] [--check]``."""
    parser = argparse.ArgumentParser(prog="python -m recvae.experiment", description=run_experiment.__doc__)
    parser.add_argument("config", help="TOML experiment config (see experiments/configs/)")
    parser.add_argument("--output-dir", default=None, help="where to write the report (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--check", action="store_true", help="validate the config and exit (loads no data)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="models run at a time, each in its own process (default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give a number of processes >= 1")
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
    print(run_experiment(args.config, output_dir=args.output_dir, progress=not args.no_progress, jobs=args.jobs))
    return 0
