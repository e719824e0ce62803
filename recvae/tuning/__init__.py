"""Hyper-parameter search on the validation users of a split (the test users are never touched).

Two searches, one result shape: :func:`grid_search` tries every combination of a
grid; :func:`optuna_search` samples a search space (random search or TPE, optuna)
for a budget of trials and prunes torch trials whose per-epoch validation NDCG
falls behind. Both keep only the best fitted model and flag a chosen value on the
edge of what was searched (``result.edges``)::

    from recvae.models import EASE, MultVAE
    from recvae.tuning import grid_search, optuna_search

    result = grid_search(EASE, {"l2": [100.0, 500.0, 1000.0]}, split)
    result.trials            # one row per combination
    result.best_params       # {"l2": 500.0}
    evaluate(result.best_model, split, "test")   # test once, with the chosen model

    space = {"lr": {"low": 1e-4, "high": 3e-3, "log": True},      # a float range (log scale)
             "latent_dim": {"low": 64, "high": 400, "step": 8},   # ints: low and high are ints
             "input_dropout": [0.2, 0.5, 0.7]}                    # a list: categorical choices
    result = optuna_search(MultVAE, space, split, n_trials=20, sampler="tpe", fixed={"epochs": 50})
    result.trials            # every trial: params, state (complete / pruned / failed), score, epochs, seconds
    result.edge_note()       # "edge: lr=high" when the best lr lies in the top 10% of its (log) range

A search scores each trial with one fit (one seed), so among trials within seed noise of
each other it picks the luckiest: a winner's curse that grows with the budget.
:func:`reselect_over_seeds` refits the best few trials with further seeds and picks the
one with the best validation score averaged over its seeds::

    result = reselect_over_seeds(result, MultVAE, split, finalists=3, seeds=3, fixed={"epochs": 50})
    result.finalists         # each finalist's validation score per seed, their mean, the one chosen
    result.seed_fits         # the chosen finalist's fits, seed 0 first (reuse them: no refit needed)

optuna is an optional dependency (``pip install "recvae[tune]"``), imported when a
search starts; the grid search needs nothing beyond recvae.

One module per concern: ``spaces`` (search spaces), ``grid`` (grid search), ``search`` (the
optuna search and its pruning), ``finalists`` (re-scoring over seeds), ``results`` (what a
search returns, and the edges), ``scoring`` (how every search scores on the validation users).
"""

from recvae.tuning.finalists import check_finalist_counts, reseeded, reselect_over_seeds
from recvae.tuning.grid import grid_search, parameter_grid
from recvae.tuning.results import (
    EDGE_FRACTION,
    TRIAL_STATES,
    GridSearchResult,
    SearchResult,
    SeedFit,
    edge_note,
    grid_edges,
    space_edges,
)
from recvae.tuning.search import INSTALL_HINT, SAMPLERS, check_optuna, optuna_search
from recvae.tuning.spaces import (Choices, Range, SearchSpaceError, parse_search_space, read_search_space, search_space,
                                  space_corners)

__all__ = [
    "GridSearchResult",
    "SearchResult",
    "SeedFit",
    "grid_search",
    "optuna_search",
    "reselect_over_seeds",
    "check_finalist_counts",
    "reseeded",
    "parameter_grid",
    "Range",
    "Choices",
    "SearchSpaceError",
    "search_space",
    "read_search_space",
    "parse_search_space",
    "space_corners",
    "grid_edges",
    "space_edges",
    "edge_note",
    "check_optuna",
    "EDGE_FRACTION",
    "SAMPLERS",
    "TRIAL_STATES",
    "INSTALL_HINT",
]
