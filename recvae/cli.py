"""Command line entry point: ``recvae`` (or ``python -m recvae``).

Commands (``recvae COMMAND --help`` documents each):

- ``demo`` (the default): trains Mult-VAE and baselines on the embedded
  synthetic dataset (no download), prints the comparison table and a few
  recommendations.
- ``train DATA --output DIR``: load a log (or a MovieLens release), split it,
  fit one model, evaluate it and write a run directory.
- ``evaluate RUN_DIR``: metrics of a saved run on its validation or test users.
- ``recommend RUN_DIR``: top-k items for known users or for a new user's items.
- ``embed RUN_DIR``: export user (mu, sigma) or item embeddings.
- ``datasets``: the MovieLens releases recvae knows, and which are cached.
- ``experiment CONFIG``: run an experiment config (``recvae.experiment``).

A run directory written by ``train`` holds ``model`` (the saved model),
``split/`` (``Split.save``: ``matrices.npz`` + ``split.json``), ``history.csv``
(torch models), ``metrics.json`` and ``config.json``.

User mistakes (a missing file, an unknown model, id or option value) end with a
one-line message naming the argument and the fix, raised as ``SystemExit``.
torch and the models are imported inside the handlers, not at import time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "main",
    "build_parser",
    "parse_params",
    "parse_value",
    "model_params",
    "build_model",
    "load_interactions",
    "make_split",
    "prepare_data",
    "fit_model",
    "evaluate_run",
    "write_run",
    "load_run",
]

#: Examples of ``recvae.models.MODELS`` names for help texts (importing the registry would slow
#: ``--help``; the registry is what validates, and an unknown name lists every model).
MODEL_NAMES = ("popularity", "itemknn", "als", "bpr", "ease", "mult-dae", "mult-vae", "recvae", "blend")
TORCH_MODEL_NAMES = ("mult-dae", "mult-vae", "recvae")

# Files of a run directory.
MODEL_FILE = "model"
SPLIT_DIR = "split"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"

DEFAULT_KS = (20, 50, 100)
#: Held-out users per set when --heldout-users is not given: 10% of users, at most this many
#: (Liang et al. hold out 10,000 of ML-20M's 136,677 users).
MAX_DEFAULT_HELDOUT = 10_000
LIANG_SEED = 98765
EMBED_BATCH = 10_000


# ============================================================================ shared helpers
def _fail(message: str) -> NoReturn:
    """End the command with a one-line error (exit status 1, no traceback)."""
    raise SystemExit(f"recvae: error: {message}")


def _message(err: BaseException) -> str:
    """An exception's message on one line (KeyError's repr quotes removed)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays and paths (config and metrics files)."""
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def parse_value(text: str) -> Any:
    """A ``--param`` value: a TOML literal, else JSON, else a number, else the string itself.

    ``100`` -> int, ``5e-4`` -> float, ``true`` -> bool, ``[600, 200]`` -> list,
    ``{kind = "constant", cap = 0.1}`` (TOML) or ``{"kind": "constant"}`` (JSON)
    -> dict, ``none``/``null`` -> None, ``multinomial`` -> ``"multinomial"``.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if "\n" not in stripped:
        import tomllib

        try:
            value = tomllib.loads(f"v = {stripped}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        else:
            if isinstance(value, (bool, int, float, str, list, dict)):  # not TOML dates
                return value
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    try:
        return float(stripped)
    except ValueError:
        return text


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``["latent_dim=100", "lr=5e-4"]`` -> ``{"latent_dim": 100, "lr": 0.0005}`` (see :func:`parse_value`).

    A pair without ``=``, an empty or non-identifier key, or a key given twice
    ends the command with an error naming the pair.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            _fail(f"--param {pair!r}: expected KEY=VALUE with a parameter name as KEY, e.g. --param latent_dim=100")
        if key in params:
            _fail(f"--param {key} is given twice; give each parameter once")
        params[key] = parse_value(raw)
    return params


def _check_device(device: str, flag: str = "--device") -> None:
    """Refuse a device torch cannot use (e.g. cuda on a machine without CUDA)."""
    from recvae.training import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as err:
        _fail(f"{flag} {device!r}: {_message(err)}")


def _parse_raw_ids(values: list[str], reference, flag: str) -> list:
    """Command-line id strings converted to the type of the ids in ``reference`` (int ids are common)."""
    import numpy as np

    reference = np.asarray(reference)
    if np.issubdtype(reference.dtype, np.integer):
        kind, convert = "integers", int
    elif np.issubdtype(reference.dtype, np.floating):
        kind, convert = "numbers", float
    elif reference.dtype == object and len(reference) and isinstance(reference[0], (int, np.integer)):
        kind, convert = "integers", int
    else:
        return [str(v) for v in values]
    out = []
    for value in values:
        try:
            out.append(convert(value))
        except ValueError:
            _fail(f"{flag} {value!r}: this run's ids are {kind}; give ids like {reference[:1].tolist()[0]!r}")
    return out


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``recvae`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="recvae",
        description="Collaborative filtering with VAEs over sparse user rows.",
        epilog="Without a command, recvae runs 'demo'. 'recvae COMMAND --help' describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_recommend(sub)
    _add_embed(sub)
    _add_datasets(sub)
    _add_experiment(sub)
    return parser


def _version() -> str:
    from recvae import __version__

    return __version__


def _subparser(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_demo(sub) -> None:
    demo = _subparser(sub, "demo", "train and compare models on the embedded synthetic dataset (default)",
                      "Train Mult-VAE, Mult-DAE and baselines on a seeded synthetic MovieLens-style\n"
                      "dataset (no download) and print the comparison on the test users.")
    demo.add_argument("--users", type=int, default=3000, help="synthetic users (default 3000)")
    demo.add_argument("--items", type=int, default=1500, help="synthetic items (default 1500)")
    demo.add_argument("--epochs", type=int, default=40, help="Mult-VAE epochs (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the models (default 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)


def _add_train(sub) -> None:
    p = _subparser(
        sub, "train", "load data, split it, fit one model, evaluate it and write a run directory",
        "Fit one model and write a run directory: model, split/ (matrices.npz + split.json),\n"
        "history.csv (torch models), metrics.json (validation and test summaries) and\n"
        "config.json (the arguments and the model parameters).\n\n"
        "examples:\n"
        "  recvae train data/ml-1m/ratings.dat --output runs/vae\n"
        "  recvae train ml-1m --output runs/vae --epochs 100 --anneal constant --beta-cap 0.2\n"
        "  recvae train log.csv --user-col user_id --item-col item_id --rating-col none \\\n"
        "      --model ease --param l2=500 --output runs/ease",
    )
    p.add_argument("data", metavar="DATA",
                   help="a ratings file (CSV/TSV/Parquet log, or MovieLens u.data / ratings.dat / ratings.csv; "
                        "plain or .gz) or a MovieLens name such as ml-1m (see 'recvae datasets'; downloaded "
                        "into --data-dir when missing)")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="run directory to write (created)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing run in DIR")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default="mult-vae",
                   help=f"a model registry name: {', '.join(MODEL_NAMES)} ... (default mult-vae; "
                        "an unknown name lists them all)")
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
    g.add_argument("--device", metavar="D", help="torch models: auto, cpu, cuda, cuda:1 ... (default auto)")
    g.add_argument("--seed", metavar="S", type=int,
                   help="seeds the model (torch models, als, bpr) and the split's draws "
                        f"(default: the model's own seed, and {LIANG_SEED} for the split as Liang et al.)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--nproc", metavar="N", type=int, default=1,
                   help="data-parallel training processes on this machine (torch.distributed: gloo on CPU, "
                        "nccl on CUDA; default 1). Same as: torchrun --nproc-per-node N -m recvae train ... "
                        "(use torchrun directly for several machines)")
    d = p.add_argument_group("data and split")
    d.add_argument("--split", choices=("strong", "weak", "temporal"), default="strong",
                   help="strong: held-out users never train (Liang et al.); weak: every user trains and "
                        "10%%+10%% of each user's events are validation/test targets; temporal: like weak with "
                        "each user's latest events as targets (default strong)")
    d.add_argument("--heldout-users", metavar="N", type=int,
                   help=f"users in each of validation and test for --split strong (default 10%% of users, "
                        f"at most {MAX_DEFAULT_HELDOUT:,})")
    d.add_argument("--min-rating", metavar="R", type=_rating_threshold, default=3.5,
                   help="keep events rated strictly above R (default 3.5, Liang et al.); 'none' keeps every "
                        "event; files without ratings keep every event")
    d.add_argument("--min-user-events", metavar="N", type=int, default=5,
                   help="drop users with fewer kept events (default 5)")
    d.add_argument("--data-dir", metavar="DIR", default="data",
                   help="download cache for MovieLens names (default ./data)")
    d.add_argument("--user-col", metavar="COL", help="user id column of a generic log (default 'user')")
    d.add_argument("--item-col", metavar="COL", help="item id column of a generic log (default 'item')")
    d.add_argument("--rating-col", metavar="COL",
                   help="rating column of a generic log (default 'rating' when present; 'none' = all positive)")
    d.add_argument("--timestamp-col", metavar="COL",
                   help="time column of a generic log (default 'timestamp' when present; needed by temporal)")
    d.add_argument("--sep", metavar="S", help="field separator of a generic text log (default: sniffed)")
    p.add_argument("--no-test", action="store_true", help="do not evaluate on the test users")
    p.set_defaults(handler=run_train)


def _rating_threshold(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'recvae train'")
    p.add_argument("--device", default="auto", help="device for torch models: auto, cpu, cuda (default auto)")


def _add_evaluate(sub) -> None:
    p = _subparser(sub, "evaluate", "metrics of a saved run on its validation or test users",
                   "Score the held-out users of a run's split (fold-in, seen items excluded,\n"
                   "full-catalogue ranking) and print each metric's mean with its 95% CI.\n\n"
                   "example:\n  recvae evaluate runs/vae --k 10 20 100 --metrics ndcg recall mrr --output users.csv")
    _add_run_dir(p)
    p.add_argument("--which", choices=("test", "validation"), default="test", help="held-out users (default test)")
    p.add_argument("--k", metavar="K", type=int, nargs="+",
                   help="cut-offs (default 20 50 100, those not above the number of items)")
    p.add_argument("--metrics", metavar="M", nargs="+", default=["ndcg", "recall"],
                   help="any of ndcg recall precision hit_rate map mrr coverage (default ndcg recall)")
    p.add_argument("--output", metavar="FILE.csv", help="write the per-user metrics there")
    p.set_defaults(handler=run_evaluate)


def _add_recommend(sub) -> None:
    p = _subparser(sub, "recommend", "top-k items for known users or for a new user's items",
                   "Recommend for users of the run's split (--user: their history is every event\n"
                   "of theirs in the split: training row, fold-in and target) or for a new user\n"
                   "given the items they liked (--items: folded in, no retraining). Items the\n"
                   "user already has are never recommended.\n\n"
                   "examples:\n  recvae recommend runs/vae --user 12 57 -k 10\n"
                   "  recvae recommend runs/vae --items 1 260 1196 --output recs.csv")
    _add_run_dir(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="RAW_USER_ID", nargs="+", help="raw ids of users in the run's split")
    who.add_argument("--items", metavar="RAW_ITEM_ID", nargs="+", help="raw item ids of a new user's history")
    p.add_argument("-k", "--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--output", metavar="FILE.csv", help="also write user_id, rank, item_id, score there")
    p.set_defaults(handler=run_recommend)


def _add_embed(sub) -> None:
    p = _subparser(sub, "embed", "export user embeddings (mu, sigma) or item embeddings",
                   "Export the users' embeddings of a run: VAEs give the posterior mean mu and\n"
                   "standard deviation sigma of each user (from the user's row in the split: the\n"
                   "training row, or the fold-in row of held-out users); ALS/BPR give factors.\n"
                   "With --items, the item embeddings instead.\n\n"
                   "Output by suffix:\n"
                   "  .parquet / .csv  one row per user: user_id, part, mu_0..mu_{d-1}, sigma_0..\n"
                   "                   (factor models: emb_0..; --items: item_id, emb_0..)\n"
                   "  .npy             FILE.npy holds mu (or the factors), FILE_sigma.npy sigma (VAEs),\n"
                   "                   FILE_ids.npy the raw user (or item) id of each row\n\n"
                   "example:\n  recvae embed runs/vae --which test --output test_users.parquet")
    _add_run_dir(p)
    p.add_argument("--which", choices=("train", "validation", "test", "all"), default="all",
                   help="users to embed (default all: each user of the split once)")
    p.add_argument("--items", action="store_true", help="export item embeddings instead of users'")
    p.add_argument("--output", metavar="FILE", required=True, help="FILE.parquet, FILE.csv or FILE.npy")
    p.set_defaults(handler=run_embed)


def _add_datasets(sub) -> None:
    p = _subparser(sub, "datasets", "list the MovieLens releases recvae knows and which are cached",
                   "List every MovieLens release 'recvae train NAME' can load: its size, whether\n"
                   "its ratings file is in the local cache (--data-dir) and its download URL.")
    p.add_argument("--data-dir", metavar="DIR", default="data", help="the download cache (default ./data)")
    p.add_argument("--shared", metavar="DIR", help="also list the data files found under DIR")
    p.set_defaults(handler=run_datasets)


def _add_experiment(sub) -> None:
    p = _subparser(sub, "experiment", "run an experiment config and write its report",
                   "Run the experiment described by CONFIG (see experiments/) with\n"
                   "recvae.experiment.run_experiment and print the path of its report.")
    p.add_argument("config", metavar="CONFIG", help="experiment config file")
    p.add_argument("--output", metavar="DIR", help="where to write results (default: the runner's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run_experiment_command)


# ============================================================================ demo
def run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    import pandas as pd

    from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
    from recvae.evaluation import evaluate, paired_comparison
    from recvae.models import MultDAE, MultVAE
    from recvae.training import TrainingConfig

    if args.users < 50 or args.items < 20:
        raise SystemExit("recvae demo: --users must be >= 50 and --items >= 20")
    data = synthetic_interactions(SyntheticConfig(n_users=args.users, n_items=args.items, seed=args.seed))
    print(f"Synthetic MovieLens-style data: {data.report}")
    split = strong_generalization(data, 0.1)
    print(f"Strong-generalization split (Liang et al.): {split}\n")

    training = TrainingConfig(epochs=args.epochs, seed=args.seed, device=args.device, progress=not args.no_progress)
    models = {
        "Mult-VAE": MultVAE(training=training),
        "Mult-DAE": MultDAE(training=dataclasses.replace(MultDAE.default_training(), epochs=args.epochs,
                                                          seed=args.seed, device=args.device,
                                                          progress=not args.no_progress)),
    }
    models.update(_baselines())
    results, rows = {}, []
    for name, model in models.items():
        started = time.perf_counter()
        model.fit(split)
        fit_seconds = time.perf_counter() - started
        results[name] = evaluate(model, split, "test")
        s = results[name].summary
        rows.append({"model": name, **{m: f"{s.loc[m, 'mean']:.4f} ± {1.96 * s.loc[m, 'std_err']:.4f}"
                                       for m in ("ndcg@100", "recall@20", "recall@50")},
                     "fit s": f"{fit_seconds:.1f}"})
    print("\nTest users (fold-in 80% of their items, predict the other 20%; mean ± 95% CI):")
    print(pd.DataFrame(rows).to_string(index=False))
    best_other = max((n for n in results if n != "Mult-VAE"), key=lambda n: results[n]["ndcg@100"])
    test = paired_comparison(results["Mult-VAE"], results[best_other], "ndcg@100")
    print(f"\nMult-VAE vs {best_other}: NDCG@100 difference {test['mean_diff']:+.4f} "
          f"(paired t-test p = {test['t_pvalue']:.2g}, Wilcoxon p = {test['wilcoxon_pvalue']:.2g})")

    vae = models["Mult-VAE"]
    history = split.item_ids[:5].tolist()
    recs = vae.recommend_for_items(history, k=5)
    print(f"\nA new user who liked items {history} gets (fold-in, no retraining): {recs.item_ids[0].tolist()}")
    mu, sigma = vae.embed_users(split.test.fold_in[:3])
    print(f"User embeddings: mu {mu.shape}, sigma {sigma.shape}; first user's mean sigma {sigma[0].mean():.3f}")
    return 0


def _baselines() -> dict:
    """Baselines available in this installation (popularity, EASE)."""
    try:
        from recvae.models import EASE, Popularity
    except ImportError:
        return {}
    return {"Popularity": Popularity(), "EASE": EASE()}


# ============================================================================ train
def run_train(args: argparse.Namespace) -> int:
    """``recvae train``: model -> data and split -> fit -> evaluate -> write the run directory."""
    if args.nproc < 1:
        _fail(f"--nproc {args.nproc}: give a number of processes >= 1")
    output = _check_output_dir(Path(args.output), args.overwrite)
    name, params = model_params(args)
    model = build_model(name, params)
    if args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from recvae.models.mult_vae import TorchVAERecommender

        if not isinstance(model, TorchVAERecommender):
            _fail(f"--nproc / torchrun: data-parallel training applies to the torch models "
                  f"({', '.join(TORCH_MODEL_NAMES)}), not to {name!r}; run it with one process")
    if args.nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _fail("--nproc under torchrun: torchrun already started the processes; drop --nproc")
        from recvae.distributed import launch_torchrun

        return launch_torchrun(_without_nproc(args.argv), args.nproc)
    from recvae.distributed import setup_from_env, teardown

    ctx = setup_from_env(getattr(model.training, "device", "auto") if hasattr(model, "training") else "auto")
    is_main = ctx is None or ctx.is_main
    try:
        data, split = prepare_data(args, quiet=not is_main)
        fit_seconds = fit_model(model, split)
        results = evaluate_run(model, split, test=not args.no_test)  # sharded over the ranks: all must call it
        if is_main:
            config = run_config(args, name, params, data, split, fit_seconds)
            config["processes"] = 1 if ctx is None else ctx.world_size
            write_run(output, model, split, results, config)
            _print_train_summary(output, name, model, results, fit_seconds)
    finally:
        teardown()
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (the workers must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _check_output_dir(output: Path, overwrite: bool) -> Path:
    """Refuse an output that is a file, or a directory holding a run (unless --overwrite)."""
    if output.exists() and not output.is_dir():
        _fail(f"--output {output}: is a file; give a directory for the run")
    if (output / MODEL_FILE).exists() and not overwrite:
        _fail(f"--output {output}: already holds a run ({MODEL_FILE}); choose another directory or pass --overwrite")
    return output


def model_params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The registry name and the flat parameters: ``--param`` pairs plus the shortcut options.

    Shortcuts (``--epochs``, ``--likelihood``, ``--anneal``/``--beta-cap``, ``--device``,
    ``--seed``, ``--no-progress``) map to the model's parameters; one that does not apply
    to the chosen model, or that repeats a ``--param``, ends with an error naming both.
    """
    from recvae.models import MODELS

    name = str(args.model).strip().lower()
    if name not in MODELS:
        _fail(f"--model {args.model!r}: unknown model; choose one of: {', '.join(MODELS)}")
    params = parse_params(args.param)
    shortcuts = _shortcut_params(args, name, MODELS[name])
    for key in sorted(set(shortcuts) & set(params)):
        _fail(f"--param {key}=... repeats a shortcut option that also sets {key!r}; give it once")
    params = {**params, **shortcuts}
    if isinstance(params.get("device"), str):
        _check_device(params["device"], "--device" if "device" in shortcuts else "--param device")
    return name, params


def _shortcut_params(args: argparse.Namespace, name: str, cls: type) -> dict[str, Any]:
    import dataclasses
    import inspect

    from recvae.models.mult_vae import MultVAE, TorchVAERecommender

    out: dict[str, Any] = {}
    if not issubclass(cls, TorchVAERecommender):
        torch_only = {"--epochs": args.epochs, "--likelihood": args.likelihood, "--anneal": args.anneal,
                      "--beta-cap": args.beta_cap, "--device": args.device}
        for flag, value in torch_only.items():
            if value is not None:
                hint = "; set its iterations with --param iterations=N" if flag == "--epochs" and \
                    "iterations" in inspect.signature(cls).parameters else ""
                _fail(f"{flag} applies to the torch models ({', '.join(TORCH_MODEL_NAMES)}), not to {name!r}{hint}")
        if args.seed is not None and "seed" in inspect.signature(cls).parameters:
            out["seed"] = args.seed
        return out  # --no-progress: baselines show no progress bar
    config_fields = {f.name for f in dataclasses.fields(cls.default_config())}
    if args.epochs is not None:
        out["epochs"] = args.epochs
    if args.device is not None:
        out["device"] = args.device
    if args.seed is not None:
        out["seed"] = args.seed
    if args.no_progress:
        out["progress"] = False
    if args.likelihood is not None:
        if "likelihood" not in config_fields:
            _fail(f"--likelihood does not apply to {name!r}: its config has no likelihood")
        out["likelihood"] = args.likelihood
    if args.anneal is not None or args.beta_cap is not None:
        if not (issubclass(cls, MultVAE) and cls.default_config().variational):
            reason = ("RecVAE weights its KL term per user (beta_u = gamma * |x_u|): set --param gamma=X"
                      if "gamma" in config_fields else "it has no KL term (not variational)")
            _fail(f"--anneal/--beta-cap do not apply to {name!r}: {reason}")
        anneal = dataclasses.asdict(cls.default_training().anneal)
        if args.anneal is not None:
            anneal["kind"] = args.anneal
        if args.beta_cap is not None:
            anneal["cap"] = args.beta_cap
        out["anneal"] = anneal
    return out


def build_model(name: str, params: dict[str, Any]):
    """An unfitted model from the registry; bad parameters end with an error naming them."""
    from recvae.models import make_model

    try:
        return make_model(name, params)
    except (KeyError, TypeError, ValueError) as err:
        _fail(f"--model {name} with parameters {_format_params(params)}: {_message(err)}")


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in params.items()) or "(none)"


def load_interactions(args: argparse.Namespace):
    """DATA -> :class:`recvae.data.Interactions` with the preprocessing options applied.

    A MovieLens name is read from (or downloaded into) ``--data-dir``; a MovieLens
    file (u.data, *.dat, a ratings.csv with userId/movieId) goes through its
    reader; any other CSV/TSV/Parquet log through ``read_interactions_file`` with
    the ``--*-col`` column names.
    """
    from recvae.data import MOVIELENS, DatasetUnavailableError, load_movielens
    from recvae.data.movielens import ChecksumMismatchError

    source = str(args.data)
    path = Path(source).expanduser()
    preprocessing = {"rating_threshold": args.min_rating, "min_user_interactions": args.min_user_events}
    if source.strip().lower() in MOVIELENS and not path.is_file():
        try:
            return load_movielens(source.strip().lower(), data_dir=args.data_dir, **preprocessing)
        except (DatasetUnavailableError, ChecksumMismatchError, ValueError, OSError) as err:
            _fail(f"DATA {source}: {_message(err)}")
    if not path.exists():
        _fail(f"DATA {source!r}: no such file, and not a MovieLens name ({', '.join(MOVIELENS)}); "
              "give the path of a ratings file")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())[:5]
        _fail(f"DATA {source}: is a directory; give the ratings file inside it"
              + (f" (it holds {', '.join(inside)})" if inside else ""))
    try:
        if _is_movielens_file(path):
            return load_movielens(path, **preprocessing)
        return _read_generic_log(path, args, preprocessing)
    except (ValueError, OSError) as err:
        _fail(f"DATA {source}: {_message(err)}")


def _is_movielens_file(path: Path) -> bool:
    """u.data / *.data / *.dat, or a .csv whose header names userId and movieId (plain or .gz)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".data", ".dat")):
        return True
    if not name.endswith(".csv"):
        return False
    import gzip

    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = [h.strip() for h in fh.readline().lstrip("\ufeff").split(",")]
    return "userId" in header and "movieId" in header


def _read_generic_log(path: Path, args: argparse.Namespace, preprocessing: dict):
    """A CSV/TSV/Parquet log with named columns -> Interactions; missing columns name their option."""
    from recvae.data import Interactions, read_interactions_file

    log = read_interactions_file(path, sep=args.sep)
    columns = list(log.columns)
    chosen: dict[str, str | None] = {}
    for key, flag, value, default, required in (
        ("user_col", "--user-col", args.user_col, "user", True),
        ("item_col", "--item-col", args.item_col, "item", True),
        ("rating_col", "--rating-col", args.rating_col, "rating", False),
        ("timestamp_col", "--timestamp-col", args.timestamp_col, "timestamp", False),
    ):
        if value is not None and value.strip().lower() == "none" and not required:
            chosen[key] = None
            continue
        column = default if value is None else value
        if column not in columns and (required or value is not None):
            _fail(f"DATA {path}: no column {column!r} (the columns are {columns}); name it with {flag} COL")
        chosen[key] = column if column in columns else None
    if chosen["rating_col"] is None:
        print(f"{path}: no rating column; every event counts as positive")
    return Interactions.from_dataframe(log, **chosen, **preprocessing)


def default_heldout_users(n_users: int) -> int:
    """Users per held-out set for a strong split: 10% of users, at least 1, at most 10,000."""
    return max(1, min(MAX_DEFAULT_HELDOUT, round(0.1 * n_users)))


def make_split(data, args: argparse.Namespace):
    """Split the interactions as ``--split`` / ``--heldout-users`` / ``--seed`` say."""
    from recvae.data import strong_generalization, temporal_split, weak_generalization

    seed = LIANG_SEED if args.seed is None else args.seed
    if args.split != "strong" and args.heldout_users is not None:
        _fail(f"--heldout-users applies to --split strong; --split {args.split} holds out a share of "
              "every user's events instead")
    if args.split == "temporal" and data.timestamps is None:
        _fail("--split temporal needs event times, and DATA has none; name the time column with "
              "--timestamp-col COL or use --split strong")
    try:
        if args.split == "strong":
            n = default_heldout_users(data.n_users) if args.heldout_users is None else args.heldout_users
            return strong_generalization(data, n, seed=seed)
        if args.split == "weak":
            return weak_generalization(data, seed=seed)
        return temporal_split(data)
    except ValueError as err:
        flag = "--heldout-users" if args.split == "strong" else "--split"
        _fail(f"{flag}: {_message(err)}")


def prepare_data(args: argparse.Namespace, *, quiet: bool = False):
    """Load DATA and split it; prints what preprocessing kept and the split. Returns (data, split)."""
    data = load_interactions(args)
    split = make_split(data, args)
    if not quiet:
        print(f"Data {args.data}: {data.report if data.report is not None else data}")
        print(f"Split: {split}")
    return data, split


def fit_model(model, split) -> float:
    """Fit ``model`` on the split (validation users select the epoch); returns the seconds it took."""
    training = getattr(model, "training", None)
    eval_k = getattr(training, "eval_k", None)
    if eval_k is not None and split.validation is not None and eval_k > split.n_items:
        _fail(f"validation ranks by NDCG@{eval_k} but the split has only {split.n_items} items; "
              f"pass --param eval_k={split.n_items} (or fewer)")
    started = time.perf_counter()
    try:
        model.fit(split)
    except (ValueError, FloatingPointError) as err:
        _fail(f"training {type(model).__name__} failed: {_message(err)}")
    return time.perf_counter() - started


def _default_ks(n_items: int) -> list[int]:
    return [k for k in DEFAULT_KS if k <= n_items] or [n_items]


def evaluate_run(model, split, *, test: bool = True) -> dict:
    """``{"validation": EvaluationResult, "test": ...}`` at the default cut-offs that fit the catalogue."""
    from recvae.evaluation import evaluate

    ks = _default_ks(split.n_items)
    parts = ("validation", "test") if test else ("validation",)
    return {which: evaluate(model, split, which, ks=ks) for which in parts}


def run_config(args: argparse.Namespace, name: str, params: dict, data, split, fit_seconds: float) -> dict:
    """What config.json records: the command line, every argument, the model parameters and the data."""
    import platform

    import torch

    arguments = {k: v for k, v in vars(args).items() if k not in ("handler", "argv")}
    return {
        "command": "train",
        "argv": getattr(args, "argv", None),
        "arguments": arguments,
        "model": name,
        "params": params,
        "data": {"source": str(args.data),
                 "preprocessing": data.report.as_dict() if data.report is not None else None},
        "split": split.info,
        "fit_seconds": round(fit_seconds, 3),
        "versions": {"recvae": _version(), "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _summary_records(result) -> dict:
    """An EvaluationResult's summary as ``{metric: {mean, std_err, ...}}`` with NaN as None."""
    import math

    records = result.summary.to_dict(orient="index")
    return {metric: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for metric, row in records.items()}


def write_run(output: Path, model, split, results: dict, config: dict) -> None:
    """Write the run directory: model, split/, history.csv (torch models), metrics.json, config.json."""
    output.mkdir(parents=True, exist_ok=True)
    model.save(output / MODEL_FILE)
    split.save(output / SPLIT_DIR)
    history = getattr(model, "history_", None)
    if history is not None:
        history.to_csv(output / HISTORY_FILE, index=False)
    else:
        (output / HISTORY_FILE).unlink(missing_ok=True)  # left by an overwritten run
    metrics = {which: {"n_users": len(r.per_user), "seconds": r.seconds, "summary": _summary_records(r)}
               for which, r in results.items()}
    _write_json(output / METRICS_FILE, metrics)
    _write_json(output / CONFIG_FILE, config)


def _format_metric(row) -> str:
    import math

    mean, se = row.get("mean"), row.get("std_err")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {1.96 * se:.4f}"


def _print_train_summary(output: Path, name: str, model, results: dict, fit_seconds: float) -> None:
    import pandas as pd

    table = pd.DataFrame({which: {m: _format_metric(row) for m, row in r.summary.iterrows()}
                          for which, r in results.items()})
    table.index.name = "metric"
    training = getattr(model, "training_", None)
    best = f", best epoch {training.best_epoch}" if getattr(training, "best_epoch", None) is not None else ""
    users = ", ".join(f"{which} {len(r.per_user):,} users" for which, r in results.items())
    print(f"\n{name} ({type(model).__name__}) fitted in {fit_seconds:.1f} s{best}; {users} (mean ± 95% CI):")
    print(table.to_string())
    written = [p.name + ("/" if p.is_dir() else "") for p in sorted(output.iterdir())]
    print(f"\nRun written to {output}: {', '.join(written)}")


# ============================================================================ run directories
def load_run(run_dir: str | Path, *, device: str = "auto", need_split: bool = True):
    """(model, split) of a run directory written by ``recvae train``; split is None unless needed."""
    from recvae.data import Split
    from recvae.models import load_model

    run = Path(run_dir)
    if not run.is_dir():
        _fail(f"RUN_DIR {run}: no such directory; give a directory written by 'recvae train'")
    if not (run / MODEL_FILE).exists():
        _fail(f"RUN_DIR {run}: holds no '{MODEL_FILE}' file; is it a directory written by 'recvae train'?")
    _check_device(device)
    try:
        model = load_model(run / MODEL_FILE, device=device)
    except ValueError as err:
        _fail(f"RUN_DIR {run}: cannot load the model: {_message(err)}")
    split = None
    if need_split:
        try:
            split = Split.load(run / SPLIT_DIR)
        except (FileNotFoundError, ValueError) as err:
            _fail(f"RUN_DIR {run}: cannot load the split: {_message(err)}")
    return model, split


# ============================================================================ evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    """``recvae evaluate``: a table of metrics (mean ± 95% CI), optionally per-user metrics to CSV."""
    import pandas as pd

    from recvae.evaluation import evaluate

    model, split = load_run(args.run_dir, device=args.device)
    n_items = split.n_items
    if args.k is None:
        ks = _default_ks(n_items)
    else:
        for k in args.k:
            if not 1 <= k <= n_items:
                _fail(f"--k {k}: the model ranks {n_items} items; choose cut-offs between 1 and {n_items}")
        ks = args.k
    try:
        result = evaluate(model, split, args.which, ks=ks, metrics=args.metrics)
    except ValueError as err:
        _fail(f"--metrics {' '.join(args.metrics)}: {_message(err)}")
    table = pd.DataFrame(
        {"mean ± 95% CI": {m: _format_metric(row) for m, row in result.summary.iterrows()},
         "users": result.summary.get("n_users"), "excluded": result.summary.get("n_excluded")}
    )
    table.index.name = "metric"
    print(f"{type(model).__name__} on {len(result.per_user):,} {args.which} users of {args.run_dir} "
          f"({result.seconds:.1f} s):")
    print(table.to_string(na_rep="-", float_format=lambda v: f"{v:.0f}"))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        result.per_user.to_csv(output, index=False)
        print(f"Per-user metrics written to {output}")
    return 0


# ============================================================================ recommend
def user_history_rows(split, raw_user_ids: list) -> tuple[Any, list[str]]:
    """Each user's known events as one CSR row: the union of their rows in every part of the split.

    Returns the rows and, per user, the parts that hold them. An id in no part of the
    split, or a user with no event in the model's catalogue, ends with an error.
    """
    import numpy as np
    import scipy.sparse as sp

    parts = [("train", split.train, split.train_user_ids)]
    for which in ("validation", "test"):
        held = getattr(split, which)
        parts += [(which, held.fold_in, held.user_ids), (which, held.target, held.user_ids)]
    rows, where = [], []
    for uid in raw_user_ids:
        row, found = None, []
        for label, matrix, ids in parts:
            hits = np.flatnonzero(np.asarray(ids) == uid)
            if len(hits):
                part = matrix[int(hits[0])]
                row = part if row is None else row.maximum(part)
                if label not in found:
                    found.append(label)
        if row is None:
            sample = ", ".join(map(str, split.train_user_ids[:3].tolist()))
            _fail(f"--user {uid}: unknown user id: it is in no part of the run's split (train, validation, test; "
                  f"known ids look like {sample}); for a new user, pass their items with --items")
        if row.nnz == 0:
            _fail(f"--user {uid}: the user has no event on the model's items; nothing to recommend from")
        rows.append(row)
        where.append("+".join(found))
    return sp.vstack(rows).tocsr(), where


def run_recommend(args: argparse.Namespace) -> int:
    """``recvae recommend``: top-k raw item ids with rank and score, seen items filtered."""
    import numpy as np

    if args.k < 1:
        _fail(f"-k {args.k}: ask for at least one item")
    model, split = load_run(args.run_dir, device=args.device, need_split=args.user is not None)
    if model.item_ids_ is None:
        _fail(f"RUN_DIR {args.run_dir}: the model has no item id map; it cannot name items")
    if args.user is not None:
        users = _parse_raw_ids(args.user, split.train_user_ids, "--user")
        rows, where = user_history_rows(split, users)
        labels = [f"user {u} ({w}, {n} known items)" for u, w, n in zip(users, where, rows.getnnz(axis=1))]
    else:
        items = _parse_raw_ids(args.items, model.item_ids_, "--items")
        try:
            rows = model.rows_from_item_ids(items)
        except (KeyError, ValueError) as err:
            _fail(f"--items: {_message(err)}")
        users, labels = [None], [f"a new user with {rows.nnz} items"]
    candidates = model.n_items_ - int(rows.getnnz(axis=1).max())
    if args.k > candidates:
        _fail(f"-k {args.k}: only {candidates} of the model's {model.n_items_} items are not already in "
              f"every requested user's history; ask for -k {candidates} or fewer")
    try:
        recs = model.recommend(rows, k=args.k)
    except ValueError as err:
        _fail(f"cannot recommend: {_message(err)}")
    frame = recs.to_frame()
    frame.insert(0, "user_id", np.asarray(users, dtype=object)[frame["user_row"].to_numpy()])
    for row, label in enumerate(labels):
        print(f"Top {args.k} for {label}:")
        part = frame[frame["user_row"] == row]
        print(part[["rank", "item_id", "score"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        frame[["user_id", "rank", "item_id", "score"]].to_csv(output, index=False)
        print(f"Recommendations written to {output}")
    return 0


# ============================================================================ embed
_EMBED_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npy": "npy"}


def _embedding_format(output: Path) -> str:
    fmt = _EMBED_FORMATS.get(output.suffix.lower())
    if fmt is None:
        _fail(f"--output {output}: unknown format {output.suffix or '(no suffix)'!r}; "
              "end the name with .parquet, .csv or .npy")
    return fmt


def embedding_rows(split, which: str):
    """(raw user ids, part of each, CSR rows) of the users to embed; ``all`` lists each user once.

    A training user's row is their training row; a held-out user's row is their
    fold-in. Users with an empty row are skipped (and counted on stdout).
    """
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    parts = {"train": (split.train_user_ids, split.train),
             "validation": (split.validation.user_ids, split.validation.fold_in),
             "test": (split.test.user_ids, split.test.fold_in)}
    chosen = list(parts) if which == "all" else [which]
    ids = np.concatenate([np.asarray(parts[p][0]) for p in chosen])
    labels = np.concatenate([np.full(len(parts[p][0]), p, dtype=object) for p in chosen])
    rows = sp.vstack([parts[p][1] for p in chosen]).tocsr()
    first = ~pd.Index(ids).duplicated(keep="first")
    empty = first & (np.diff(rows.indptr) == 0)
    if empty.any():
        print(f"Skipping {int(empty.sum()):,} users with no events")
    keep = np.flatnonzero(first & ~empty)
    return ids[keep], labels[keep], rows[keep]


def _embed_users(model, rows) -> dict:
    """``{"mu": ..., "sigma": ...}`` for VAEs, ``{"emb": ...}`` for factor models, batched."""
    import numpy as np

    outputs = []
    for start in range(0, rows.shape[0], EMBED_BATCH):
        out = model.embed_users(rows[start: start + EMBED_BATCH])
        outputs.append(out if isinstance(out, tuple) else (out,))
    arrays = [np.concatenate(parts) for parts in zip(*outputs)]
    return dict(zip(("mu", "sigma"), arrays)) if len(arrays) == 2 else {"emb": arrays[0]}


def write_embeddings(output: Path, fmt: str, id_column: str, ids, arrays: dict, extra: dict | None = None) -> list[Path]:
    """Write embeddings as a table (parquet/csv) or .npy files; returns the files written."""
    import numpy as np
    import pandas as pd

    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        written = []
        for i, (name, values) in enumerate(arrays.items()):
            path = output if i == 0 else output.with_name(f"{output.stem}_{name}.npy")
            np.save(path, values)
            written.append(path)
        ids_path = output.with_name(f"{output.stem}_ids.npy")
        ids = np.asarray(ids)
        np.save(ids_path, ids.astype(str) if ids.dtype == object else ids)
        return written + [ids_path]
    columns = {id_column: np.asarray(ids), **(extra or {})}
    for name, values in arrays.items():
        columns.update({f"{name}_{j}": values[:, j] for j in range(values.shape[1])})
    frame = pd.DataFrame(columns)
    if fmt == "parquet":
        frame.to_parquet(output, index=False)
    else:
        frame.to_csv(output, index=False)
    return [output]


def run_embed(args: argparse.Namespace) -> int:
    """``recvae embed``: users' (mu, sigma) or factors, or item embeddings, to parquet/csv/npy."""
    output = Path(args.output)
    fmt = _embedding_format(output)
    model, split = load_run(args.run_dir, device=args.device, need_split=not args.items)
    with_embeddings = "mult-vae, mult-dae, recvae, als, bpr"
    try:
        if args.items:
            arrays = {"emb": model.item_embeddings()}
            ids, extra, what = model.item_ids_, None, "items"
            if ids is None:
                ids = list(range(model.n_items_))
        else:
            ids, labels, rows = embedding_rows(split, args.which)
            arrays = _embed_users(model, rows)
            extra, what = {"part": labels}, f"{args.which} users"
    except NotImplementedError as err:
        _fail(f"RUN_DIR {args.run_dir}: {_message(err)}; models with embeddings: {with_embeddings}")
    written = write_embeddings(output, fmt, "item_id" if args.items else "user_id", ids, arrays, extra)
    dims = next(iter(arrays.values())).shape
    print(f"{dims[0]:,} {what} x {dims[1]} dimensions ({', '.join(arrays)}) written to "
          f"{', '.join(str(p) for p in written)}")
    return 0


# ============================================================================ datasets
def run_datasets(args: argparse.Namespace) -> int:
    """``recvae datasets``: the MovieLens registry with cache status, and files under --shared."""
    from recvae.data import MOVIELENS
    from recvae.data.movielens import _candidates

    data_dir = Path(args.data_dir)
    print(f"MovieLens releases ('recvae train NAME' loads one; cache: {data_dir.resolve()}):\n")
    for name, spec in MOVIELENS.items():
        sizes = ", ".join(f"{value:,} {label}" for value, label in
                          ((spec.ratings, "ratings"), (spec.users, "users"), (spec.items, "items"))
                          if value is not None) or "size varies by release"
        cached = next((p for p in _candidates(spec, data_dir) if p.is_file()), None)
        if cached is not None:
            status = f"cached: {cached}"
        elif (data_dir / spec.zip_name).is_file():
            status = f"zip cached: {data_dir / spec.zip_name} (extracted on first use)"
        else:
            status = "not cached (downloaded on first use)"
        print(f"{name:<16} {sizes}")
        print(f"{'':<16} {spec.description}")
        print(f"{'':<16} {status}")
        print(f"{'':<16} {spec.url}")
    if args.shared:
        _list_shared(Path(args.shared))
    return 0


def _list_shared(shared: Path) -> None:
    if not shared.is_dir():
        _fail(f"--shared {shared}: no such directory")
    files = sorted(p for p in shared.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(shared).parts))
    print(f"\nFiles under {shared} ('recvae train FILE' reads ratings files):")
    if not files:
        print("  (none)")
    for p in files:
        print(f"  {str(p.relative_to(shared)):<40} {p.stat().st_size / 1e6:9.1f} MB")


# ============================================================================ experiment
def run_experiment_command(args: argparse.Namespace) -> int:
    """``recvae experiment``: :func:`recvae.experiment.run_experiment` on CONFIG; prints the report path."""
    config = Path(args.config)
    if not config.is_file():
        _fail(f"CONFIG {config}: no such file; give an experiment config (see experiments/)")
    try:
        from recvae.experiment import run_experiment
    except ImportError as err:
        if err.name != "recvae.experiment":
            raise
        if isinstance(err, ModuleNotFoundError):
            _fail("the experiment runner (recvae.experiment) is not part of this installation yet; "
                  "update recvae to run experiment configs")
        _fail(f"recvae.experiment has no run_experiment(): {_message(err)}")
    kwargs: dict[str, Any] = {"progress": not args.no_progress}
    if args.output is not None:
        kwargs["output_dir"] = args.output
    try:
        report = run_experiment(config, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        _fail(f"CONFIG {config}: {_message(err)}")
    print(f"Report written to {report}")
    return 0


# ============================================================================ entry point
def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``; paths are accepted) and run the command; ``demo`` when none is given."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["demo", *argv]  # demo is the default command
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
