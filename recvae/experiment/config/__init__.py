"""Experiment configs: the TOML schema, validated by pydantic, and the frozen configs the runner reads.

:func:`load_config` parses a TOML file, validates it against the pydantic
models of :mod:`~recvae.experiment.config.schema` (``extra="forbid"``: every key
is checked) and returns an :class:`ExperimentConfig` of frozen dataclasses. It
reads no data.

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
    beyond_accuracy = ["novelty@20", "diversity@20", "arp@20", "long_tail@20", "gini@20", "coverage@20"]
                                     # the report's beyond-accuracy table (docs/metrics.md); [] for none;
                                     # by default these six, those whose k fits the catalogue
    diversity_space = "cooccurrence" # diversity's item vectors: training co-occurrence (the same for every
                                     # model), or "auto" / "embeddings" (each model's own item embeddings)

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
``description``; :func:`recvae.experiment.config.messages._message` turns the first
error of a ``pydantic.ValidationError`` into one line ``<file>: <path>: <problem
and fix>``: an unknown key gets a "did you mean ...?" (from
:data:`recvae.experiment.config.schema._ALIASES`, else difflib), a type or range
error the field's rule and the value given, and a rule the schema's validators
enforce (raising :class:`recvae.experiment.config.schema._ConfigError`) its own text.

The package's rooms:

- :mod:`~recvae.experiment.config.specs`: the frozen configs the runner reads
  (:class:`ExperimentConfig`, :class:`ModelSpec` ...) and the helpers on their
  values (:func:`parse_metric`, :func:`component_list`, :func:`repo_root`);
- :mod:`~recvae.experiment.config.schema`: the TOML schema as pydantic models, with
  every rule its validators enforce;
- :mod:`~recvae.experiment.config.messages`: a validation error as one line naming
  the file, the key's path and the fix;
- :mod:`~recvae.experiment.config.load`: :func:`load_config`, from TOML text to the
  frozen configs.
"""

from recvae.experiment.config.load import load_config
from recvae.experiment.config.specs import (
    DEFAULT_BEYOND_ACCURACY,
    DEFAULT_DIVERSITY_SPACE,
    DEFAULT_METRICS,
    DEFAULT_OUTPUT_DIR,
    DatasetConfig,
    ExperimentConfig,
    ModelSpec,
    PublishedTable,
    SearchBudget,
    SplitConfig,
    blend_components,
    component_list,
    parse_beyond_metric,
    parse_metric,
    repo_root,
)

__all__ = [
    "ExperimentConfig",
    "DatasetConfig",
    "SplitConfig",
    "ModelSpec",
    "SearchBudget",
    "PublishedTable",
    "DEFAULT_METRICS",
    "DEFAULT_BEYOND_ACCURACY",
    "DEFAULT_DIVERSITY_SPACE",
    "DEFAULT_OUTPUT_DIR",
    "load_config",
    "parse_metric",
    "parse_beyond_metric",
    "component_list",
    "blend_components",
    "repo_root",
]
