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

The package's rooms:

- :mod:`recvae.experiment.config`: the TOML schema (its docstring lists every
  key), validated by pydantic; :func:`load_config` returns an :class:`ExperimentConfig`
  (a package: specs, schema, messages, load).
- :mod:`recvae.experiment.runner`: dataset loading, splitting, the per-model
  tuning and testing loop, :func:`run_experiment` and :func:`main`.
- :mod:`recvae.experiment.seeds`: each seeded model's chosen configuration refit
  with further seeds (``[evaluation] seeds``, 3 by default), its per-user test
  metrics averaged over the seeds.
- :mod:`recvae.experiment.results`: each model's :class:`~recvae.experiment.results.Outcome` and the
  tables built from them (results, finalists, per-user).
- :mod:`recvae.experiment.report`: the CSV files and the Markdown report.
- :mod:`recvae.experiment.plots`: the PNG plots (training curves, test CIs).

The paired tests, on per-user test metrics averaged over each model's seeds,
compare every model with the one whose validation ``select_by`` is best (chosen
without looking at the test users), and the best VAE with the best non-VAE, both
chosen on validation (VAEs:
:data:`recvae.models.VAE_MODELS` and blends with a VAE component, as
:func:`recvae.models.is_vae_model` says).
"""

from recvae.experiment.config import (
    DatasetConfig,
    ExperimentConfig,
    ModelSpec,
    PublishedTable,
    SplitConfig,
    load_config,
)
from recvae.experiment.runner import load_dataset, main, resolve_dataset_path, run_experiment

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
    "main",
]
