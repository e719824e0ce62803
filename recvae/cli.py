"""Command line entry point: ``recvae`` (or ``python -m recvae``). It parses arguments and calls the public API.

Commands (``recvae COMMAND --help`` documents each):

- ``demo`` (the default): the embedded synthetic benchmark (:func:`recvae.demo.run_demo`).
- ``train DATA -o RUN``: :meth:`recvae.runs.Run.fit` -- read a log, split, fit, evaluate, write a run.
- ``evaluate RUN``: :meth:`Run.evaluate` on the run's validation or test users.
- ``recommend RUN``: :meth:`Run.recommend` by raw user id, :meth:`Run.recommend_all` for every
  user, or :meth:`Run.recommend_for_items` for a new user.
- ``embed RUN``: :meth:`Run.embed_users` / :meth:`Run.item_embeddings`.
- ``similar RUN --item ID``: :meth:`Run.similar_items`.
- ``info RUN``: :meth:`Run.summary`.
- ``export RUN --format onnx -o FILE``: :func:`recvae.export.export_onnx`, the fold-in scorer as ONNX.
- ``datasets``: the MovieLens releases recvae knows, and which are cached.
- ``experiment CONFIG``: :func:`recvae.experiment.run_experiment`.
- ``tune DATA --search SPACE --trials N -o OUT``: :func:`recvae.runs.tune`, a hyper-parameter search (the ``tune`` extra).
- ``serve RUN``: :func:`recvae.serve.serve` -- an HTTP recommendation server (the ``serve`` extra).

Every failure ends with one line naming the problem and the fix (exit status 1);
``--debug`` shows the traceback instead. ``-v`` shows the library's log, ``-q``
only errors. Progress bars show on a terminal and hide when stderr is redirected.
torch and the models are imported inside the handlers, not at import time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "build_parser", "parse_params", "parse_value", "model_params"]

#: Examples of ``recvae.models.MODELS`` names for help texts (importing the registry would slow
#: ``--help``; the registry is what validates, and an unknown name lists every model).
MODEL_NAMES = ("popularity", "itemknn", "als", "bpr", "ease", "edlae", "sparse-ease", "mult-dae", "mult-vae", "recvae",
               "joint-vae", "blend")
TORCH_MODEL_NAMES = ("mult-dae", "mult-vae", "recvae", "joint-vae")
LIANG_SEED = 98765


class CommandError(Exception):
    """A user mistake found by the command line itself; ``main`` prints it as one line."""


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


def _message(err: BaseException) -> str:
    """An exception's message on one line (KeyError's repr quotes removed)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


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


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``recvae`` argument parser with every subcommand."""
    common = _output_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="recvae",
        description="Collaborative filtering with VAEs over sparse user rows.",
        epilog="Without a command, recvae runs 'demo'. 'recvae COMMAND --help' describes each command.",
        parents=[_output_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_evaluate, _add_recommend, _add_embed, _add_similar, _add_info,
                _add_export, _add_datasets, _add_experiment, _add_serve, _add_tune):
        add(sub, common)
    return parser


def _output_options(*, defaults: bool) -> argparse.ArgumentParser:
    """-v, -q and --debug, before the command or after it. The commands' copy has no defaults
    (argparse.SUPPRESS): a command's parser sets every default it has, which would reset the
    options given before the command (``recvae -q train ...``)."""
    unset = argparse.SUPPRESS
    common = argparse.ArgumentParser(add_help=False)
    log = common.add_argument_group("output")
    log.add_argument("-v", "--verbose", action="count", default=0 if defaults else unset,
                     help="show the library's log (-vv: debug)")
    log.add_argument("-q", "--quiet", action="store_true", default=False if defaults else unset,
                     help="show errors only")
    log.add_argument("--debug", action="store_true", default=False if defaults else unset,
                     help="show the Python traceback of a failure")
    return common


def _version() -> str:
    from recvae import __version__

    return __version__


def _subparser(sub, common, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, parents=[common],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_demo(sub, common) -> None:
    demo = _subparser(sub, common, "demo", "train and compare models on the embedded synthetic dataset (default)",
                      "Train Mult-VAE, Mult-DAE and baselines on a seeded synthetic MovieLens-style\n"
                      "dataset (no download) and print the comparison on the test users.")
    demo.add_argument("--users", type=int, default=3000, help="synthetic users (default 3000)")
    demo.add_argument("--items", type=int, default=1500, help="synthetic items (default 1500)")
    demo.add_argument("--epochs", type=int, default=40, help="Mult-VAE epochs (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the models (default 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)


def _add_train(sub, common) -> None:
    p = _subparser(
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
    g.add_argument("--epochs-from", metavar="RUN",
                   help="an earlier run on held-out users: train for its best epoch, with its model and "
                        "parameters unless given (the refit on every user after tuning)")
    g.add_argument("--device", metavar="D", help="torch models: auto, cpu, cuda, cuda:1 ... (default auto)")
    g.add_argument("--seed", metavar="S", type=int,
                   help=f"seeds the model and the split (default: the model's own seed, {LIANG_SEED} for the split)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--nproc", metavar="N", type=int, default=1,
                   help="data-parallel training processes on this machine (torch.distributed: gloo on CPU, "
                        "nccl on CUDA; default 1). Same as: torchrun --nproc-per-node N -m recvae train ...")
    d = p.add_argument_group("data and split")
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


def _add_evaluate(sub, common) -> None:
    p = _subparser(sub, common, "evaluate", "metrics of a saved run on its validation or test users",
                   "Score the held-out users of a run's split (fold-in, seen items excluded,\n"
                   "full-catalogue ranking) and print each metric's mean with its 95% CI.\n\n"
                   "example:\n  recvae evaluate runs/vae --k 10 20 100 --metrics ndcg recall mrr --output users.csv")
    _add_run_dir(p)
    p.add_argument("--which", choices=("test", "validation"), default="test", help="held-out users (default test)")
    p.add_argument("--k", metavar="K", type=int, nargs="+",
                   help="cut-offs (default 20 50 100, those not above the number of items)")
    p.add_argument("--metrics", metavar="M", nargs="+", default=["ndcg", "recall"],
                   help="any of ndcg recall precision hit_rate map mrr coverage (default ndcg recall)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the per-user metrics there (.csv, .parquet, .json, .jsonl)")
    p.set_defaults(handler=run_evaluate)


def _add_recommend(sub, common) -> None:
    p = _subparser(sub, common, "recommend", "top-k items for users by id, for every user, or for a new user",
                   "Recommend for users of the log by raw id (--user), for every user the run knows\n"
                   "(--all-users, streamed in batches to --output), or for a new user given the\n"
                   "items they liked (--items: folded in, no retraining). Items a user already\n"
                   "interacted with in the log (any rating) are never recommended unless --keep-seen.\n"
                   "Ids that preprocessing dropped, or that are not in the log, are counted, named\n"
                   "and skipped (--strict: refused).\n\n"
                   "examples:\n  recvae recommend runs/prod --user u12 u57 -k 10 --exclude m3 m9\n"
                   "  recvae recommend runs/prod --all-users -k 100 -o recs.parquet\n"
                   "  recvae recommend runs/prod --items m1 m260 -k 10")
    _add_run_dir(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="USER_ID", nargs="+", help="raw user ids of the log")
    who.add_argument("--users-file", metavar="FILE", help="a table (.csv/.parquet/.json) with a user_id column")
    who.add_argument("--all-users", action="store_true", help="every user the run knows (needs --output)")
    who.add_argument("--items", metavar="ITEM_ID", nargs="+", help="raw item ids of a new user's history")
    p.add_argument("-k", "--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--exclude", metavar="ITEM_ID", nargs="+", help="items never to recommend (to anyone)")
    p.add_argument("--exclude-file", metavar="FILE",
                   help="a table with item_id (for everyone) or user_id, item_id (per user) never to recommend")
    p.add_argument("--candidates", metavar="ITEM_ID", nargs="+", help="the only items that may be recommended")
    p.add_argument("--candidates-file", metavar="FILE",
                   help="a table with item_id (for everyone) or user_id, item_id (per user) of allowed items")
    p.add_argument("--keep-seen", action="store_true", help="allow items the user already interacted with")
    p.add_argument("--strict", action="store_true", help="refuse unknown or dropped user ids and unknown item ids")
    p.add_argument("--batch-size", type=int, default=1000, help="users scored at once (default 1000)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write user_id, rank, item_id, score there (.parquet, .csv, .json, .jsonl)")
    p.set_defaults(handler=run_recommend)


def _add_embed(sub, common) -> None:
    p = _subparser(sub, common, "embed", "export user embeddings (mu, sigma) or item embeddings",
                   "Export the users' embeddings of a run (recvae.runs.Run.embed_users): VAEs give the\n"
                   "posterior mean mu and standard deviation sigma of each user's history; ALS/BPR give\n"
                   "factors (mu only). With --items, the item embeddings instead.\n\n"
                   "Output by suffix:\n"
                   "  .parquet / .csv / .json / .jsonl  one row per user: user_id, mu_0.., sigma_0..\n"
                   "                   (--items: item_id, emb_0..)\n"
                   "  .npy             FILE.npy holds mu (or the item embeddings), FILE_sigma.npy sigma,\n"
                   "                   FILE_ids.npy the raw user (or item) id of each row\n\n"
                   "example:\n  recvae embed runs/vae --output users.parquet\n"
                   "  recvae embed runs/vae --user u1 u2 --output two.csv")
    _add_run_dir(p)
    p.add_argument("--user", metavar="USER_ID", nargs="+", help="only these raw user ids (default: every user)")
    p.add_argument("--items", action="store_true", help="export item embeddings instead of users'")
    p.add_argument("--strict", action="store_true", help="refuse unknown or dropped user ids")
    p.add_argument("--output", "-o", metavar="FILE", required=True, help="FILE.parquet, .csv, .json, .jsonl or .npy")
    p.set_defaults(handler=run_embed)


def _add_similar(sub, common) -> None:
    p = _subparser(sub, common, "similar", "the items most similar to given items",
                   "Items most similar to each given item in the model's own item space\n"
                   "(recvae.runs.Run.similar_items): EASE's weights, item-KNN's similarities, the\n"
                   "cosine of ALS/BPR item factors or of a VAE's decoder rows.\n\n"
                   "example:\n  recvae similar runs/ease --item m1 m50 -k 5")
    _add_run_dir(p)
    p.add_argument("--item", metavar="ITEM_ID", nargs="+", required=True, help="raw item ids")
    p.add_argument("-k", "--k", type=int, default=10, help="similar items per item (default 10)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write them there (.parquet, .csv, .json, .jsonl)")
    p.set_defaults(handler=run_similar)


def _add_info(sub, common) -> None:
    p = _subparser(sub, common, "info", "what a run is: model, parameters, data, split, best epoch, metrics",
                   "Summarise a run directory (recvae.runs.Run.summary); --json prints Run.info().")
    _add_run_dir(p)
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(handler=run_info)


def _add_export(sub, common) -> None:
    p = _subparser(sub, common, "export", "write a run's fold-in scorer as an ONNX file (onnxruntime serving)",
                   "Export the fold-in scorer of a run (recvae.export.export_onnx): a user's item\n"
                   "indices (int64, CSR-style with int64 offsets) and weights (float32) in, the\n"
                   "score of every item out (float32, users x items), at the posterior mean.\n"
                   "Mult-VAE, Mult-DAE, RecVAE and EASE export; needs pip install recvae[onnx].\n\n"
                   "example:\n  recvae export runs/vae --format onnx -o vae.onnx")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'recvae train'")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the file format (default onnx)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the file to write (replaced if present)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: recvae.export.DEFAULT_OPSET)")
    p.add_argument("--unweighted", action="store_true",
                   help="a graph without the values input: every item of a user counts 1")
    p.set_defaults(handler=run_export, device="cpu")


def _add_datasets(sub, common) -> None:
    p = _subparser(sub, common, "datasets", "list the MovieLens releases recvae knows and which are cached",
                   "List every MovieLens release 'recvae train NAME' can load: its size, whether\n"
                   "its ratings file is in the local cache (--data-dir) and its download URL.")
    p.add_argument("--data-dir", metavar="DIR", default="data", help="the download cache (default ./data)")
    p.add_argument("--shared", metavar="DIR", help="also list the data files found under DIR")
    p.set_defaults(handler=run_datasets)


def _add_experiment(sub, common) -> None:
    p = _subparser(sub, common, "experiment", "run an experiment config and write its report",
                   "Run the experiment described by CONFIG (see experiments/) with\n"
                   "recvae.experiment.run_experiment and print the path of its report.")
    p.add_argument("config", metavar="CONFIG", help="experiment config file")
    p.add_argument("--output", metavar="DIR", help="where to write results (default: the runner's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--jobs", metavar="N", type=int, default=1,
                   help="models run at a time, each in its own process with a share of the threads (default 1)")
    p.set_defaults(handler=run_experiment_command)


def _add_serve(sub, common) -> None:
    p = _subparser(sub, common, "serve", "serve a run's recommendations over HTTP (FastAPI + uvicorn)",
                   "Serve a run directory over HTTP (recvae.serve; needs pip install recvae[serve]):\n"
                   "POST /recommend, /recommend/new-user, /similar; GET /health, /info (JSON).\n"
                   "Concurrent /recommend requests are scored together in micro-batches (each waits\n"
                   "at most --max-wait-ms for others); --no-batching scores each request alone.\n\n"
                   "example:\n  recvae serve runs/prod --port 8000\n"
                   "  curl -s localhost:8000/recommend -H 'content-type: application/json' "
                   "-d '{\"user_id\": \"u17\", \"k\": 10}'")
    _add_run_dir(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each loading the run (default 1)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--max-batch", type=int, default=256, help="most requests scored in one batch (default 256)")
    p.add_argument("--no-batching", action="store_true", help="score each /recommend request alone")
    p.set_defaults(handler=run_serve)


# ============================================================================ handlers
def run_demo(args: argparse.Namespace) -> int:
    """``recvae demo``: :func:`recvae.demo.run_demo`."""
    from recvae.demo import run_demo as demo

    return demo(args.users, args.items, args.epochs, args.seed, args.device,
                progress=False if args.no_progress else None)


def _progress(args: argparse.Namespace) -> bool | None:
    """False with --no-progress or -q; None (auto: on a terminal only) otherwise."""
    return False if getattr(args, "no_progress", False) or getattr(args, "quiet", False) else None


def _say(args: argparse.Namespace):
    return (lambda line: None) if args.quiet else print


def log_spec(args: argparse.Namespace):
    """The log and how to read it, from the data options."""
    from recvae.data import LogSpec

    return LogSpec(args.data, user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
                   timestamp_col=args.timestamp_col, implicit=args.implicit, weight_col=args.weight_col, sep=args.sep,
                   data_dir=args.data_dir, rating_threshold=args.min_rating, min_user_events=args.min_user_events,
                   strict=getattr(args, "strict", False))


def split_spec(args: argparse.Namespace, seed: int | None):
    """The split, from --split, --heldout-users and the split's seed."""
    from recvae.data import SplitSpec

    return SplitSpec(args.split, args.heldout_users, seed)


def run_train(args: argparse.Namespace) -> int:
    """``recvae train``: :meth:`recvae.runs.Run.fit`."""
    from recvae.runs import Run, RunOutput

    if args.nproc < 1:
        _fail(f"--nproc {args.nproc}: give a number of processes >= 1")
    name, params = model_params(args)
    if args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if name not in TORCH_MODEL_NAMES:
            _fail(f"--nproc / torchrun: data-parallel training applies to the torch models "
                  f"({', '.join(TORCH_MODEL_NAMES)}), not to {name!r}; run it with one process")
    if args.nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _fail("--nproc under torchrun: torchrun already started the processes; drop --nproc")
        from recvae.data.tables import check_output_path

        check_output_path(args.output, directory=True)
        from recvae.distributed import launch_torchrun

        return launch_torchrun(_without_nproc(args.argv), args.nproc)
    say = _say(args)
    run = Run.fit(
        log_spec(args), model=args.model and name, params=params, split=split_spec(args, args.seed),
        output=args.output and RunOutput(args.output, overwrite=args.overwrite, resume=args.resume,
                                         checkpoint=not args.no_checkpoint, command_line=args.argv),
        epochs_from=args.epochs_from, evaluate="validation" if args.no_test else True, report=say,
    )
    if run.path is not None:  # rank 0 of a data-parallel run, or the only process
        say("")
        say(run.summary())
        say(f"Run written to {run.path}: {', '.join(sorted(p.name for p in run.path.iterdir()))}")
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


def model_params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The registry name and the flat parameters: ``--param`` pairs plus the shortcut options.

    A shortcut that does not apply to the chosen model, or that repeats a
    ``--param``, ends with an error naming both.
    """
    from recvae.models import MODELS

    name = str(args.model or _earlier_model(args) or "mult-vae").strip().lower()
    if name not in MODELS:
        _fail(f"--model {args.model!r}: unknown model; choose one of: {', '.join(MODELS)}")
    params = parse_params(args.param)
    shortcuts = _shortcut_params(args, name, MODELS[name])
    for key in sorted(set(shortcuts) & set(params)):
        _fail(f"--param {key}=... repeats a shortcut option that also sets {key!r}; give it once")
    return name, {**params, **shortcuts}


def _earlier_model(args: argparse.Namespace) -> str | None:
    if not getattr(args, "epochs_from", None):
        return None
    try:
        return json.loads((Path(args.epochs_from) / "config.json").read_text()).get("model")
    except (OSError, ValueError):
        return None  # Run.fit names the problem


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
    for key, value in (("epochs", args.epochs), ("device", args.device), ("seed", args.seed)):
        if value is not None:
            out[key] = value
    if _progress(args) is False:
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


def _load(args: argparse.Namespace):
    from recvae.runs import Run

    return Run.load(args.run_dir, device=args.device)


def _format_metric(row) -> str:
    import math

    mean, se = row.get("mean"), row.get("std_err")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {1.96 * se:.4f}"


def _check_output(path: str | None, allowed: dict[str, str] | None = None) -> None:
    """Refuse an output with an unknown suffix or an unwritable place before any work."""
    if path is None:
        return
    from recvae.data.tables import check_table_output

    check_table_output(path, allowed)


def run_evaluate(args: argparse.Namespace) -> int:
    """``recvae evaluate``: :meth:`Run.evaluate`, a table of metrics (mean ± 95% CI)."""
    import pandas as pd

    _check_output(args.output)
    run = _load(args)
    result = run.evaluate(args.which, ks=args.k, metrics=args.metrics)
    table = pd.DataFrame({"mean ± 95% CI": {m: _format_metric(row) for m, row in result.summary.iterrows()},
                          "users": result.summary.get("n_users"), "excluded": result.summary.get("n_excluded")})
    table.index.name = "metric"
    print(f"{type(run.model).__name__} on {len(result.per_user):,} {args.which} users of {args.run_dir} "
          f"({result.seconds:.1f} s):")
    print(table.to_string(na_rep="-", float_format=lambda v: f"{v:.0f}"))
    if args.output:
        from recvae.data.tables import write_table

        write_table(result.per_user, args.output)
        print(f"Per-user metrics written to {args.output}")
    return 0


def _read_ids_table(path: str, flag: str):
    from recvae.data.tables import read_table

    frame = read_table(path)
    if "item_id" not in frame.columns and "user_id" not in frame.columns:
        _fail(f"{flag} {path}: expected a user_id and/or item_id column; the columns are {list(frame.columns)}")
    return frame


def run_recommend(args: argparse.Namespace) -> int:
    """``recvae recommend``: :meth:`Run.recommend`, :meth:`Run.recommend_all` or :meth:`Run.recommend_for_items`."""
    if args.k < 1:
        _fail(f"-k {args.k}: ask for at least one item")
    if args.all_users and not args.output:
        _fail("--all-users writes every user's recommendations to a file: give --output recs.parquet (or .csv)")
    _check_output(args.output)
    exclude = args.exclude if args.exclude_file is None else _read_ids_table(args.exclude_file, "--exclude-file")
    candidates = args.candidates if args.candidates_file is None else \
        _read_ids_table(args.candidates_file, "--candidates-file")
    if args.exclude and args.exclude_file or args.candidates and args.candidates_file:
        _fail("give items with --exclude/--candidates or with the -file option, not both")
    run = _load(args)
    if args.all_users:
        path = run.recommend_all(args.output, k=args.k, filter_seen=not args.keep_seen, exclude=exclude,
                                 candidates=candidates, batch_size=args.batch_size, progress=_progress(args))
        print(f"Top {args.k} for {len(run.user_ids):,} users written to {path}")
        return 0
    if args.items is not None:
        frame = run.recommend_for_items(args.items, k=args.k, exclude=exclude, candidates=candidates,
                                        strict=args.strict)
        print(f"Top {args.k} for a new user with {len(args.items)} items:")
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        frame.insert(0, "user_id", "")
    else:
        users = args.user
        if args.users_file is not None:
            users = list(dict.fromkeys(_read_ids_table(args.users_file, "--users-file").get("user_id", [])))
            if not users:
                _fail(f"--users-file {args.users_file}: no user_id column, or no rows")
        frame = run.recommend(users, k=args.k, filter_seen=not args.keep_seen, exclude=exclude,
                              candidates=candidates, strict=args.strict, batch_size=args.batch_size)
        if frame.empty:
            sample = ", ".join(map(repr, run.user_ids[:3].tolist()))
            _fail(f"--user: no recommendations, {frame.attrs['skipped'].message()}; the run's user ids look like "
                  f"{sample}; for a new user, pass their items with --items")
        if args.output is None or len(users) <= 20:
            for user, part in frame.groupby("user_id", sort=False):
                print(f"Top {args.k} for user {user}:")
                print(part[["rank", "item_id", "score"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.output:
        from recvae.data.tables import write_table

        write_table(frame[["user_id", "rank", "item_id", "score"]], args.output)
        print(f"Recommendations written to {args.output}")
    return 0


_EMBED_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "jsonl",
                  ".npy": "npy"}


def run_embed(args: argparse.Namespace) -> int:
    """``recvae embed``: :meth:`Run.embed_users` or :meth:`Run.item_embeddings` to a file."""
    import numpy as np

    from recvae.data.tables import check_table_output, write_table

    fmt = check_table_output(args.output, _EMBED_FORMATS)
    run = _load(args)
    try:
        frame = run.item_embeddings() if args.items else run.embed_users(args.user, strict=args.strict)
    except NotImplementedError as err:
        _fail(f"RUN_DIR {args.run_dir}: {_message(err)}; models with embeddings: mult-vae, mult-dae, recvae, als, bpr")
    id_column = "item_id" if args.items else "user_id"
    output = Path(args.output)
    if fmt == "npy":
        written = []
        for prefix, path in (("emb_" if args.items else "mu_", output),
                             ("sigma_", output.with_name(f"{output.stem}_sigma.npy"))):
            values = frame.filter(regex=f"^{prefix}").to_numpy(np.float32)
            if values.shape[1]:
                np.save(path, values)
                written.append(path)
        ids = frame[id_column].to_numpy()
        ids_path = output.with_name(f"{output.stem}_ids.npy")
        np.save(ids_path, ids.astype(str) if ids.dtype == object else ids)
        written.append(ids_path)
    else:
        written = [write_table(frame, output, _EMBED_FORMATS)]
    dims = frame.shape[1] - 1
    print(f"{len(frame):,} {'items' if args.items else 'users'} x {dims} columns written to "
          f"{', '.join(str(p) for p in written)}")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    """``recvae similar``: :meth:`Run.similar_items`."""
    if args.k < 1:
        _fail(f"-k {args.k}: ask for at least one item")
    _check_output(args.output)
    run = _load(args)
    try:
        frame = run.similar_items(args.item, k=args.k)
    except NotImplementedError as err:
        _fail(f"RUN_DIR {args.run_dir}: {_message(err)}")
    for item, part in frame.groupby("item_id", sort=False):
        print(f"Most similar to item {item}:")
        print(part[["rank", "similar_item_id", "score"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.output:
        from recvae.data.tables import write_table

        write_table(frame, args.output)
        print(f"Similar items written to {args.output}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """``recvae info``: :meth:`Run.summary` (or :meth:`Run.info` as JSON)."""
    run = _load(args)
    print(json.dumps(run.info(), indent=2, default=str) if args.json else run.summary())
    return 0



def run_serve(args: argparse.Namespace) -> int:
    """``recvae serve``: :func:`recvae.serve.serve` until interrupted (uvicorn logs the address; -v each request)."""
    from recvae.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, workers=args.workers, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, micro_batching=not args.no_batching, device=args.device,
          log_level="warning" if args.quiet else "info", access_log=args.verbose > 0)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``recvae export``: :func:`recvae.export.export_onnx` on the run's model."""
    from recvae.export import DEFAULT_OPSET, export_onnx

    run = _load(args)
    try:
        path = export_onnx(run, args.output, opset=DEFAULT_OPSET if args.opset is None else args.opset,
                           weighted=not args.unweighted)
    except ImportError as err:  # onnx / onnxscript missing: the message says what to install
        _fail(_message(err))
    print(f"{type(run.model).__name__} fold-in scorer ({run.n_items:,} items) written to {path}")
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

# ============================================================================ tune
def _add_tune(sub, common) -> None:
    p = _subparser(
        sub, common, "tune", "search a model's hyper-parameters on the validation users (optuna)",
        "Read and split a log as 'recvae train' does, then search hyper-parameters on the\n"
        "validation users (recvae.runs.tune; needs pip install \"recvae[tune]\"): TPE or random\n"
        "search for --trials trials; a torch trial whose per-epoch validation NDCG falls below\n"
        "the median of earlier trials at that epoch is pruned. Prints the best parameters and\n"
        "writes every trial (parameters, state, validation score, epochs, seconds) to -o FILE.\n\n"
        "A search space maps parameter names to a range {low, high} (ints when both are ints;\n"
        "optional log = true, or step = N) or to a list of choices, in TOML or JSON.\n\n"
        "examples:\n"
        "  recvae tune ratings.csv --model ease --search '{l2 = {low = 10.0, high = 1e4, log = true}}' \\\n"
        "      --trials 20 -o ease_trials.csv\n"
        "  recvae tune ratings.csv --model mult-vae --search-file space.toml --trials 30 --param epochs=50 \\\n"
        "      --sampler random --timeout 3600 -o vae_trials.csv",
    )
    p.add_argument("data", metavar="DATA",
                   help="a log (CSV/TSV/Parquet, plain or .gz; MovieLens files) or a MovieLens name such as ml-1m")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="the trials table to write (.csv, .parquet, .json, .jsonl)")
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
    d = p.add_argument_group("data and split (as in 'recvae train')")
    d.add_argument("--split", choices=("strong", "weak", "temporal"), default="strong",
                   help="strong (held-out users), weak or temporal (default strong)")
    d.add_argument("--heldout-users", metavar="N", type=int,
                   help="users in each of validation and test for --split strong (default 10%%, at most 10,000)")
    d.add_argument("--min-rating", metavar="R", type=_rating_threshold, default=3.5,
                   help="keep events rated strictly above R (default 3.5); 'none' keeps every rating")
    d.add_argument("--min-user-events", metavar="N", type=int, default=5, help="drop users with fewer kept events")
    d.add_argument("--data-dir", metavar="DIR", default="data", help="download cache for MovieLens names")
    d.add_argument("--user-col", metavar="COL", help="user id column (default: found by name)")
    d.add_argument("--item-col", metavar="COL", help="item id column (default: found by name)")
    d.add_argument("--rating-col", metavar="COL", help="rating column ('none' = every row positive)")
    d.add_argument("--implicit", action="store_true", help="every row is a positive event; no rating is read")
    d.add_argument("--weight-col", metavar="COL", help="positive interaction weights used as confidence")
    d.add_argument("--timestamp-col", metavar="COL", help="time column (needed by --split temporal)")
    d.add_argument("--sep", metavar="S", help="field separator of a text log (default: sniffed)")
    p.set_defaults(handler=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """``recvae tune``: :func:`recvae.runs.tune`; prints the best parameters, writes the trials table."""
    from recvae.runs import tune
    from recvae.tuning import read_search_space

    if args.trials < 1:
        _fail(f"--trials {args.trials}: give a number of trials >= 1")
    if args.search is not None:
        space = parse_value(args.search)
        if not isinstance(space, dict):
            _fail(f"--search {args.search!r}: expected a table of parameter -> range or list of choices, e.g. "
                  "--search '{lr = {low = 1e-4, high = 3e-3, log = true}, input_dropout = [0.2, 0.5]}'")
    else:
        space = read_search_space(args.search_file)
    try:
        result = tune(
            log_spec(args), args.model, search=space, n_trials=args.trials, params=parse_params(args.param),
            sampler=args.sampler, seed=args.seed, timeout_s=args.timeout, prune=not args.no_prune,
            metric=args.metric, finalists=args.finalists, seeds=args.seeds, output=args.output,
            split=split_spec(args, None), progress=_progress(args), report=_say(args),
        )
    except ImportError as err:  # optuna missing: the message names the extra to install
        _fail(_message(err))
    edge = result.edge_note()
    over = f", mean over {args.seeds} seeds of {args.finalists} finalists" if args.finalists > 1 else ""
    print(f"Best parameters (validation {result.metric} {result.best_score:.4f}{over}): "
          f"{json.dumps(result.best_params, default=str)}" + (f" [{edge}]" if edge else ""))
    print(f"Trials written to {args.output}")
    return 0


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
    if args.jobs < 1:
        _fail(f"--jobs {args.jobs}: give a number of processes >= 1")
    kwargs: dict[str, Any] = {"progress": not args.no_progress}
    if args.jobs > 1:
        kwargs["jobs"] = args.jobs
    if args.output is not None:
        kwargs["output_dir"] = args.output
    try:
        report = run_experiment(config, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        _fail(f"CONFIG {config}: {_message(err)}")
    print(f"Report written to {report}")
    return 0
# ============================================================================ entry point
def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else
                                              logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``; paths are accepted) and run the command; ``demo`` when none is given.

    Failures end with ``SystemExit("recvae: error: <one line>")``; with ``--debug`` the
    exception propagates with its traceback.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version", "-v", "--verbose",
                                                                  "-q", "--quiet", "--debug")):
        argv = ["demo", *argv]  # demo is the default command
    args = parser.parse_args(argv)
    args.argv = argv
    _configure_logging(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if args.debug:
        return handler(args)
    try:
        return handler(args)
    except CommandError as err:
        raise SystemExit(f"recvae: error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit("recvae: interrupted") from None
    except MemoryError as err:
        raise SystemExit(f"recvae: error: out of memory: {_message(err) or 'a buffer did not fit'}; use a "
                         "smaller model, batch size or catalogue") from None
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, NotImplementedError, EOFError) as err:
        # The boundary to the user: every library error becomes one line (--debug shows the traceback).
        raise SystemExit(f"recvae: error: {_describe(err)}") from None


def _describe(err: BaseException) -> str:
    text = _message(err)
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: no such file"
    elif isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)) and err.filename:
        text = f"{err.filename}: {err.strerror or type(err).__name__}"
    if isinstance(err, (TypeError, RuntimeError)) and not text:
        text = type(err).__name__
    return text or f"{type(err).__name__} (run again with --debug for details)"


if __name__ == "__main__":
    sys.exit(main())
