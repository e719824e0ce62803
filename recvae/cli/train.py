"""``recvae train`` (:meth:`recvae.runs.Run.fit`) and ``recvae tune`` (:func:`recvae.runs.tune`)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from recvae.cli.common import fail, one_line, parse_params, progress, reporter, subparser

#: Examples of ``recvae.models.MODELS`` names for help texts (importing the registry would slow
#: ``--help``; the registry is what validates, and an unknown name lists every model).
MODEL_NAMES = ("popularity", "itemknn", "als", "bpr", "ease", "edlae", "sparse-ease", "mult-dae", "mult-vae", "recvae",
               "joint-vae", "weighted-vae", "blend")
SHORTCUT_FLAGS = {"epochs": "--epochs", "likelihood": "--likelihood", "anneal": "--anneal", "beta_cap": "--beta-cap",
                  "device": "--device", "iterations": "--param iterations", "gamma": "--param gamma",
                  "log_file": "--log-file"}
LIANG_SEED = 98765


# ============================================================================ train
def add_train(sub, common) -> None:
    p = subparser(
        sub, common, "train", "read a log, split it, fit one model, evaluate it and write a run directory",
        "Fit one model and write a run directory (recvae.runs.Run.fit): model, split/,\n"
        "users.npz (known users, their histories and every item they already interacted\n"
        "with), history.csv (torch models), metrics.json, config.json and manifest.json.\n"
        "The directory appears whole when the run finishes; torch models checkpoint each\n"
        "epoch, and --resume continues a killed run.\n\n"
        "examples:\n"
        "  recvae train ratings.csv -o runs/tune                        # 10%+10% held-out users pick the epoch\n"
        "  recvae train ratings.csv -o runs/prod --heldout-users 0 --epochs-from runs/tune   # every user\n"
        "  recvae train log.parquet -o runs/ease --model ease --param l2=500 --implicit\n"
        "  recvae train log.csv -o runs/vae --user-col customer --item-col sku --rating-col stars",
    )
    p.add_argument("data", metavar="DATA",
                   help="a log (CSV/TSV/Parquet, plain or .gz; MovieLens u.data / ratings.dat / ratings.csv) "
                        "or a MovieLens name such as ml-1m (see 'recvae datasets')")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in DIR (at the very end)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint")
    p.add_argument("--no-checkpoint", action="store_true", help="do not checkpoint torch models each epoch")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME",
                   help=f"a model registry name: {', '.join(MODEL_NAMES)} (default mult-vae, or the model of "
                        "--epochs-from)")
    g.add_argument("--help-params", action="store_true",
                   help="list the model's hyper-parameters (what 'recvae models NAME' prints) and exit; "
                        "DATA and -o are not needed and nothing is read")
    g.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="a model or training parameter, repeatable, e.g. --param latent_dim=100 "
                        "--param lr=5e-4 --param hidden_dims=[600] --param anneal='{kind=\"constant\", cap=0.2}'. "
                        "VALUE is read as a TOML/JSON literal (int, float, bool, list, table; none = null), "
                        "else as a string")
    g.add_argument("--likelihood", metavar="L",
                   help="VAE likelihood: multinomial, bernoulli, gaussian or gaussian_learned (torch models)")
    g.add_argument("--anneal", metavar="KIND",
                   help="KL annealing of mult-vae: linear (default), constant, cyclical or auto")
    g.add_argument("--beta-cap", metavar="X", type=float, help="largest KL weight beta of mult-vae (default 0.2)")
    g.add_argument("--epochs", metavar="N", type=int,
                   help="training epochs of the torch models (baselines: --param iterations=N for als/bpr)")
    g.add_argument("--epochs-from", metavar="DIR",
                   help="an earlier run or tuning ('recvae tune -o DIR') on held-out users: train for its best "
                        "epoch, with its model and parameters unless given and its KL schedule up to that epoch "
                        "(the refit on every user after tuning)")
    g.add_argument("--params-from", metavar="DIR",
                   help="take the model and parameters (not the epochs) of a tuning directory or a run; "
                        "--model and --param override them")
    g.add_argument("--warm-start", metavar="RUN",
                   help="start from the weights of an earlier run of the same model and architecture (items "
                        "matched by id, new items start fresh); otherwise a full fit")
    g.add_argument("--device", metavar="D", help="torch models: auto, cpu, cuda, cuda:1 ... (default auto)")
    g.add_argument("--seed", metavar="S", type=int,
                   help=f"seeds the model and the split (default: the model's own seed, {LIANG_SEED} for the split)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--log-file", metavar="PATH",
                   help="torch models: append each epoch (loss, beta, validation metric, seconds) to PATH as one "
                        "JSON line as training goes, for a scheduler, tail -f or a dashboard")
    g.add_argument("--nproc", metavar="N", type=int, default=1,
                   help="data-parallel training processes on this machine (torch.distributed: gloo on CPU, "
                        "nccl on CUDA; default 1). Same as: torchrun --nproc-per-node N -m recvae train ...")
    add_data_options(p.add_argument_group("data and split"))
    p.add_argument("--no-test", action="store_true", help="do not evaluate on the test users")
    p.set_defaults(handler=run_train)


def add_data_options(d) -> None:
    """The options of :class:`recvae.data.LogSpec` and :class:`recvae.data.SplitSpec` (train and tune)."""
    d.add_argument("--split", choices=("strong", "weak", "temporal"), default="strong",
                   help="strong: held-out users never train (Liang et al.); weak: every user trains and "
                        "10%%+10%% of each user's events are validation/test targets; temporal: like weak with "
                        "each user's latest events as targets (default strong)")
    d.add_argument("--heldout-users", metavar="N", type=int,
                   help="users in each of validation and test for --split strong (default 10%% of users, "
                        "at most 10,000); 0 trains on every user and every item (give --epochs or --epochs-from)")
    d.add_argument("--min-rating", metavar="R", type=_rating_threshold, default=3.5,
                   help="keep events rated strictly above R (default 3.5, Liang et al.); 'none' keeps every "
                        "rating; a log without ratings keeps every event")
    d.add_argument("--min-user-events", metavar="N", type=int, default=5,
                   help="drop users with fewer kept events (default 5)")
    d.add_argument("--strict", action="store_true",
                   help="refuse negative or out-of-scale ratings instead of dropping (and counting) them")
    d.add_argument("--data-dir", metavar="DIR", default="data",
                   help="download cache for MovieLens names (default ./data)")
    d.add_argument("--user-col", metavar="COL", help="user id column (default: found by name: user, user_id, ...)")
    d.add_argument("--item-col", metavar="COL", help="item id column (default: found by name: item, movieId, ...)")
    d.add_argument("--rating-col", metavar="COL",
                   help="rating column (default 'rating' when present; 'none' = every row positive)")
    d.add_argument("--implicit", action="store_true", help="every row is a positive event; no rating is read")
    d.add_argument("--weight-col", metavar="COL",
                   help="positive interaction weights (counts, or the rating column) used as confidence: ALS "
                        "(1 + alpha*w), the VAEs' input and multinomial/Gaussian likelihoods, EASE, item-KNN, "
                        "popularity; BPR ignores them (default: every kept pair weighs 1)")
    d.add_argument("--timestamp-col", metavar="COL",
                   help="time column (default: found by name: timestamp, time, ...; needed by --split temporal)")
    d.add_argument("--sep", metavar="S", help="field separator of a text log (default: sniffed)")


def _rating_threshold(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def log_spec(args: argparse.Namespace):
    """The log and how to read it, from the data options."""
    from recvae.data import LogSpec

    return LogSpec(args.data, user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
                   timestamp_col=args.timestamp_col, implicit=args.implicit, weight_col=args.weight_col, sep=args.sep,
                   data_dir=args.data_dir, rating_threshold=args.min_rating, min_user_events=args.min_user_events,
                   strict=args.strict)


def split_spec(args: argparse.Namespace, seed: int | None):
    """The split, from --split, --heldout-users and the split's seed."""
    from recvae.data import SplitSpec

    return SplitSpec(args.split, args.heldout_users, seed)


def run_train(args: argparse.Namespace) -> int:
    """``recvae train``: :meth:`recvae.runs.Run.fit`."""
    from recvae.data.tables import check_output_path
    from recvae.models.options import torch_model_names
    from recvae.runs import Run, RunOutput
    from recvae.runtime.distributed import launch_torchrun

    if args.nproc < 1:
        fail(f"--nproc {args.nproc}: give a number of processes >= 1")
    name, params = model_params(args)
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if (args.nproc > 1 or under_torchrun) and name not in torch_model_names():
        fail(f"--nproc / torchrun: data-parallel training applies to the torch models "
             f"({', '.join(torch_model_names())}), not to {name!r}; run it with one process")
    if args.nproc > 1:
        if under_torchrun:
            fail("--nproc under torchrun: torchrun already started the processes; drop --nproc")
        check_output_path(args.output, directory=True)
        return launch_torchrun(args.argv, args.nproc)
    say = reporter(args)
    run = Run.fit(
        log_spec(args), model=(args.model or args.params_from) and name, params=params,
        split=split_spec(args, args.seed),
        output=args.output and RunOutput(args.output, overwrite=args.overwrite, resume=args.resume,
                                         checkpoint=not args.no_checkpoint, command_line=args.argv),
        epochs_from=args.epochs_from, evaluate="validation" if args.no_test else True, report=say,
        warm_start=args.warm_start,
    )
    if run.path is not None:  # rank 0 of a data-parallel run, or the only process
        say("")
        say(run.summary())
        say(f"Run written to {run.path}: {', '.join(sorted(p.name for p in run.path.iterdir()))}")
    return 0


# ============================================================================ update
def add_update(sub, common) -> None:
    p = subparser(
        sub, common, "update", "merge new events into a run: fold them in at once, or warm-start a refit",
        "Write a new run: RUN_DIR with the events of LOG merged in (recvae.runs.Run.update);\n"
        "RUN_DIR itself is never changed. LOG has the columns of the run's log and is read\n"
        "with its column names and rating threshold. Events of known and new users on known\n"
        "items take effect without training (the model scores each user from their row: the\n"
        "VAEs' encoder, EASE's x B, ALS's exact user step). Positive events on new items refit\n"
        "the model warm-started from its weights (old items keep their index), with fewer\n"
        "epochs and early stopping on the run's validation users.\n\n"
        "examples:\n"
        "  recvae update runs/prod today.csv -o runs/prod-2          # fold in; refit only for new items\n"
        "  recvae update runs/prod week.csv -o runs/prod-3 --refit always --epochs 10",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run to update (read only)")
    p.add_argument("log", metavar="LOG", help="the new events: a log with the columns of the run's log")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="the new run's directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in DIR (never RUN_DIR)")
    p.add_argument("--refit", choices=("auto", "always", "never"), default="auto",
                   help="auto: a warm-start refit only when new items arrive; always: refit anyway; never: "
                        "refuse new items (default auto)")
    p.add_argument("--epochs", metavar="N", type=int,
                   help="epochs of the warm-start refit (ALS/BPR: iterations; default a quarter of the run's "
                        "best epoch, at least 5; a third of the iterations)")
    p.add_argument("--device", default="auto", help="device for torch models: auto, cpu, cuda (default auto)")
    p.add_argument("--no-test", action="store_true", help="do not evaluate a refit model on the test users")
    p.set_defaults(handler=run_update)


def run_update(args: argparse.Namespace) -> int:
    """``recvae update``: :meth:`recvae.runs.Run.update` of ``Run.load(RUN_DIR)``."""
    from recvae.runs import Run, RunOutput

    say = reporter(args)
    old = Run.load(args.run_dir, device=args.device)
    new = old.update(args.log, output=RunOutput(args.output, overwrite=args.overwrite, command_line=args.argv),
                     refit=args.refit, epochs=args.epochs, evaluate="validation" if args.no_test else True,
                     report=say)
    say("")
    say(new.summary())
    say(f"Run written to {new.path} ({args.run_dir} unchanged)")
    return 0


def help_params_model(argv: list[str]) -> str | None:
    """The model whose hyper-parameters ``recvae train ... --help-params`` asks for (``--model``, else the model of
    ``--params-from`` / ``--epochs-from``, else mult-vae), found before the full parse since DATA and -o are not
    needed; None for any other command line."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "train" or "--help-params" not in argv:
        return None
    from recvae.runs.fitting import earlier_model

    pre = argparse.ArgumentParser(add_help=False)
    for option in ("--model", "--params-from", "--epochs-from"):
        pre.add_argument(option)
    known, _ = pre.parse_known_args(argv[argv.index("train") + 1:])
    return str(known.model or earlier_model(known.params_from or known.epochs_from) or "mult-vae").strip().lower()


def model_params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The registry name and the flat parameters: ``--param`` pairs plus the shortcut options
    (:func:`recvae.models.options.training_shortcuts`); a shortcut that repeats a ``--param`` is refused."""
    from recvae.models.options import training_shortcuts
    from recvae.runs.fitting import earlier_model
    from recvae.runs.refit import tuned_params

    tuned_model, params = tuned_params(args.params_from) if getattr(args, "params_from", None) else (None, {})
    name = str(args.model or tuned_model or earlier_model(getattr(args, "epochs_from", None)) or "mult-vae")
    name = name.strip().lower()
    params = {**params, **parse_params(args.param)}
    try:
        shortcuts = training_shortcuts(
            name, epochs=args.epochs, likelihood=args.likelihood, anneal=args.anneal, beta_cap=args.beta_cap,
            device=args.device, seed=args.seed, progress=progress(args), log_file=args.log_file,
            labels=SHORTCUT_FLAGS)
    except KeyError as err:
        fail(f"--model {args.model!r}: {one_line(err)}")
    except ValueError as err:
        fail(one_line(err))
    for key in sorted(set(shortcuts) & set(params)):
        fail(f"--param {key}=... repeats a shortcut option that also sets {key!r}; give it once")
    return name, {**params, **shortcuts}


# ============================================================================ tune
def add_tune(sub, common) -> None:
    p = subparser(
        sub, common, "tune", "search a model's hyper-parameters on the validation users (optuna)",
        "Read and split a log as 'recvae train' does, then search hyper-parameters on the\n"
        "validation users (recvae.runs.tune; needs pip install \"recvae[tune]\"): TPE or random\n"
        "search for --trials trials; a torch trial whose per-epoch validation NDCG falls below\n"
        "the median of earlier trials at that epoch is pruned. Prints the best parameters and\n"
        "writes every trial (parameters, state, validation score, epochs, seconds) and the chosen\n"
        "parameters to -o DIR ('recvae train --epochs-from DIR' refits them on every user).\n\n"
        "A search space maps parameter names to a range {low, high} (ints when both are ints;\n"
        "optional log = true, or step = N) or to a list of choices, in TOML or JSON.\n\n"
        "examples:\n"
        "  recvae tune ratings.csv --model ease --search '{l2 = {low = 10.0, high = 1e4, log = true}}' \\\n"
        "      --trials 20 -o runs/ease-tune\n"
        "  recvae tune ratings.csv --model mult-vae --search-file space.toml --trials 30 --param epochs=50 \\\n"
        "      --sampler random --timeout 3600 -o runs/vae-tune",
    )
    p.add_argument("data", metavar="DATA",
                   help="a log (CSV/TSV/Parquet, plain or .gz; MovieLens files) or a MovieLens name such as ml-1m")
    p.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="a directory for trials.csv (every trial) and best.json (the chosen model, parameters, "
                        "epoch and beta: 'recvae train --epochs-from DIR' refits it); a .csv/.parquet/.json/.jsonl "
                        "path writes the trials there and STEM.best.json beside it")
    g = p.add_argument_group("search")
    g.add_argument("--model", metavar="NAME", default="mult-vae",
                   help=f"a model registry name: {', '.join(MODEL_NAMES)} (default mult-vae)")
    space = g.add_mutually_exclusive_group(required=True)
    space.add_argument("--search", metavar="SPACE",
                       help="the search space, TOML or JSON, e.g. '{lr = {low = 1e-4, high = 3e-3, log = true}, "
                            "input_dropout = [0.2, 0.5]}'")
    space.add_argument("--search-file", metavar="FILE",
                       help="a TOML or JSON (.json) file with the search space at its top level or under [search]")
    g.add_argument("--trials", metavar="N", type=int, required=True, help="trials to run: the budget")
    g.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="tpe (Bayesian; its first trials are random) or random (default tpe)")
    g.add_argument("--timeout", metavar="S", type=float, help="start no new trial after S seconds")
    g.add_argument("--seed", metavar="S", type=int, default=0, help="seed of the sampler (default 0)")
    g.add_argument("--metric", metavar="M", default="ndcg@100", help="validation metric to maximise (default ndcg@100)")
    g.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="a fixed parameter of every trial, repeatable (as in 'recvae train'), e.g. --param epochs=50")
    g.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    g.add_argument("--finalists", metavar="N", type=int, default=1,
                   help="refit the N best trials with --seeds seeds each and choose the best validation mean "
                        "(seeded models: torch VAEs, als, bpr; default 1: the search's best trial)")
    g.add_argument("--seeds", metavar="N", type=int, default=3, help="fits per finalist (default 3)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_data_options(p.add_argument_group("data and split (as in 'recvae train')"))
    p.set_defaults(handler=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """``recvae tune``: :func:`recvae.runs.tune`; prints the best parameters, writes the trials table."""
    from recvae.runs import tune
    from recvae.tuning import parse_search_space, read_search_space

    if args.trials < 1:
        fail(f"--trials {args.trials}: give a number of trials >= 1")
    try:
        space = read_search_space(args.search_file) if args.search is None else parse_search_space(args.search)
    except ValueError as err:
        fail(f"{'--search-file' if args.search is None else '--search'} {one_line(err)}")
    try:
        result = tune(
            log_spec(args), args.model, search=space, n_trials=args.trials, params=parse_params(args.param),
            sampler=args.sampler, seed=args.seed, timeout_s=args.timeout, prune=not args.no_prune,
            metric=args.metric, finalists=args.finalists, seeds=args.seeds, output=args.output,
            split=split_spec(args, None), progress=progress(args), report=reporter(args),
        )
    except ImportError as err:  # optuna missing: the message names the extra to install
        fail(one_line(err))
    edge = result.edge_note()
    over = f", mean over {args.seeds} seeds of {args.finalists} finalists" if args.finalists > 1 else ""
    print(f"Best parameters (validation {result.metric} {result.best_score:.4f}{over}): "
          f"{json.dumps(result.best_params, default=str)}" + (f" [{edge}]" if edge else ""))
    print(f"Trials and the chosen parameters written to {args.output}; refit on every user with: recvae train "
          f"{args.data} -o RUN --heldout-users 0 --epochs-from {args.output}")
    return 0
