"""Room "tuning": the searches of recvae/tuning/ -- grid and optuna searches, the direction they optimise,
how ranges are sampled, the default trial, pruning, edges and finalists. Caught by
tests/test_tuning_wiring.py, whose models' validation scores are known functions of their parameters (the
best trial, each sampled value and each pruning decision computed by hand) and whose enqueued default
trial is never the best one."""

GRID = "recvae/tuning/grid.py"
SEARCH = "recvae/tuning/search.py"
FINALISTS = "recvae/tuning/finalists.py"
T_WIRING = "tests/test_tuning_wiring.py"
T_TUNE = (T_WIRING, "tests/test_tuning.py", "tests/test_tuning_search.py")
T_FINAL = (T_WIRING, "tests/test_finalists.py", "tests/test_tuning.py")

MUTATIONS = [
    dict(name="tuning-direction-study-minimises", file=SEARCH,
         old='direction="maximize"',
         new='direction="minimize"',
         tests=T_TUNE,
         why="the optuna study minimises the validation score: TPE samples (and the pruner keeps) the worst "
             "region; recvae still keeps the best trial it saw, so a search whose enqueued default is already "
             "good looks fine"),
    dict(name="tuning-wiring-log-scale-dropped", file=SEARCH,
         old="return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)",
         new="return trial.suggest_float(name, dim.low, dim.high, step=dim.step)",
         tests=T_TUNE,
         why="log = true is ignored for float ranges: lr in [1e-4, 1] is sampled uniformly and almost never "
             "below 1e-2 (the default trial, in the good region, hid it)"),
    dict(name="tuning-wiring-prune-warmup-dropped", file=SEARCH,
         old="optuna.pruners.MedianPruner(n_startup_trials=prune_startup_trials, n_warmup_steps=prune_warmup_epochs)",
         new="optuna.pruners.MedianPruner(n_startup_trials=prune_startup_trials)",
         tests=T_TUNE,
         why="prune_warmup_epochs never reaches the pruner: trials are cut at their first epoch"),
    dict(name="tuning-wiring-prune-startup-dropped", file=SEARCH,
         old="optuna.pruners.MedianPruner(n_startup_trials=prune_startup_trials, n_warmup_steps=prune_warmup_epochs)",
         new="optuna.pruners.MedianPruner(n_warmup_steps=prune_warmup_epochs)",
         tests=T_TUNE,
         why="prune_startup_trials never reaches the pruner: optuna's default of 5 complete trials applies"),
    dict(name="tuning-boundary-reported-epoch-off-by-one", file=SEARCH,
         old="self.trial.report(score, step=epoch)",
         new="self.trial.report(score, step=epoch - 1)",
         tests=T_TUNE,
         why="epochs are reported to optuna as 0-based steps: the warmup lasts one epoch longer than asked"),
    dict(name="tuning-rows-grid-keys-in-sorted-order", file=GRID,
         old="return [dict(zip(names, combo)) for combo in",
         new="return [dict(zip(sorted(names), combo)) for combo in",
         tests=T_TUNE,
         why="grid values are labelled with the keys in alphabetical order, not the grid's: a grid whose keys are "
             "not sorted fits models with swapped parameters and reports the wrong best_params (every old test "
             "grid had sorted or single keys)"),
    dict(name="tuning-rows-grid-edges-of-the-last-combination", file=GRID,
         old="edges=grid_edges(grid, best_params)",
         new="edges=grid_edges(grid, params)",
         tests=T_TUNE,
         why="the loop's leftover params (the last combination) decide the edge note, not the chosen one's; "
             "right whenever the best is the last combination, as in the old test"),
    dict(name="tuning-rows-search-edges-of-the-last-trial", file=SEARCH,
         old="edges=space_edges(dims, best_params)",
         new="edges=space_edges(dims, {k: records[-1][k] for k in dims})",
         tests=T_TUNE,
         why="the optuna search reports the last trial's edges as the chosen one's"),
    dict(name="tuning-all-to-any-default-off-the-step-grid-enqueued", file=SEARCH,
         old="and (dim.step is None or abs((value - dim.low) / dim.step - round((value - dim.low) / dim.step)) < 1e-9)",
         new="",
         tests=T_TUNE,
         why="a default inside a stepped range but off its grid is enqueued: the first trial runs a value the "
             "space does not hold"),
    dict(name="tuning-stale-cache-finalist-takes-the-searchs-model", file=FINALISTS,
         old="fits = [SeedFit(0, result.best_model if is_pick else None, score, fit_seconds)]",
         new="fits = [SeedFit(0, result.best_model, score, fit_seconds)]",
         tests=T_FINAL,
         why="every finalist's seed-0 fit is the search's model: a finalist other than the search's pick is "
             "returned with the pick's fitted model under its own parameters"),
]
