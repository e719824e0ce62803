"""``recvae demo`` (the default command; :func:`recvae.experiment.demo.run_demo`), ``recvae info``
(:meth:`recvae.runs.Run.summary`) and ``recvae datasets`` (the MovieLens releases and which are cached)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recvae.cli.common import add_run_dir, fail, load_run, one_line, subparser


def add_demo(sub, common) -> None:
    demo = subparser(sub, common, "demo", "train and compare models on the embedded synthetic dataset (default)",
                     "Train Mult-VAE, Mult-DAE and baselines on a seeded synthetic MovieLens-style\n"
                     "dataset (no download) and print the comparison on the test users.")
    demo.add_argument("--users", type=int, default=3000, help="synthetic users (default 3000)")
    demo.add_argument("--items", type=int, default=1500, help="synthetic items (default 1500)")
    demo.add_argument("--epochs", type=int, default=40, help="Mult-VAE epochs (default 40)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the models (default 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)


def add_info(sub, common) -> None:
    p = subparser(sub, common, "info", "what a run is: model, parameters, data, split, best epoch, metrics",
                  "Summarise a run directory (recvae.runs.Run.summary); --json prints Run.info().\n"
                  "A run whose training failed is shown too (its status says so).")
    add_run_dir(p, allow_failed=False)
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(handler=run_info)


def add_datasets(sub, common) -> None:
    p = subparser(sub, common, "datasets", "list the MovieLens releases recvae knows and which are cached",
                  "List every MovieLens release 'recvae train NAME' can load: its size, whether\n"
                  "its ratings file is in the local cache (--data-dir) and its download URL.")
    p.add_argument("--data-dir", metavar="DIR", default="data", help="the download cache (default ./data)")
    p.add_argument("--shared", metavar="DIR", help="also list the data files found under DIR")
    p.set_defaults(handler=run_datasets)


def add_models(sub, common) -> None:
    p = subparser(sub, common, "models", "list the models, or one model's hyper-parameters",
                  "Without NAME: every model 'recvae train --model' accepts. With NAME: its hyper-parameters\n"
                  "(recvae.models.describe.model_parameters), each with its type, default and one line; set\n"
                  "them with --param KEY=VALUE.\n\nexample:\n  recvae models mult-vae")
    p.add_argument("name", metavar="NAME", nargs="?", help="a model name, e.g. mult-vae, ease, als")
    p.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    """``recvae models [NAME]``: :func:`~recvae.models.describe.model_summary` or :func:`model_parameters`."""
    import textwrap

    from recvae.models.describe import model_parameters, model_summary

    if args.name is None:
        for row in model_summary().itertuples(index=False):
            print(f"{row.model:<12} {row.parameters:>3} parameters  {row.about}")
        print("\n'recvae models NAME' lists a model's hyper-parameters.")
        return 0
    try:
        table = model_parameters(args.name)
    except KeyError as err:
        fail(f"NAME {args.name!r}: {one_line(err)}")
    print(f"{args.name.strip().lower()}: {len(table)} hyper-parameters (--param KEY=VALUE)")
    for row in table.itertuples(index=False):
        print(f"\n  {row.parameter} ({row.type or 'any'}; default {row.default})")
        if row.help:
            print(textwrap.fill(row.help, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``recvae demo``: :func:`recvae.experiment.demo.run_demo`."""
    from recvae.experiment.demo import run_demo as demo

    return demo(args.users, args.items, args.epochs, args.seed, args.device,
                progress=False if args.no_progress else None)


def run_info(args: argparse.Namespace) -> int:
    """``recvae info``: :meth:`Run.summary` (or :meth:`Run.info` as JSON)."""
    run = load_run(args, allow_failed=True)  # info shows a failed run's status; it is not used
    print(json.dumps(run.info(), indent=2, default=str) if args.json else run.summary())
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    """``recvae datasets``: the MovieLens registry with cache status, and files under --shared."""
    from recvae.data.movielens import MOVIELENS, cache_status
    from recvae.data.tables import list_data_files

    print(f"MovieLens releases ('recvae train NAME' loads one; cache: {Path(args.data_dir).resolve()}):\n")
    for name, spec in MOVIELENS.items():
        sizes = ", ".join(f"{value:,} {label}" for value, label in
                          ((spec.ratings, "ratings"), (spec.users, "users"), (spec.items, "items"))
                          if value is not None) or "size varies by release"
        for line in (sizes, spec.description, cache_status(spec, args.data_dir), spec.url):
            print(f"{name:<16} {line}")
            name = ""
    if args.shared:
        if not Path(args.shared).is_dir():
            fail(f"--shared {args.shared}: no such directory")
        files = list_data_files(args.shared)
        print(f"\nFiles under {args.shared} ('recvae train FILE' reads ratings files):")
        for path, size in files or [("(none)", None)]:
            print(f"  {str(path):<40} {size / 1e6:9.1f} MB" if size is not None else f"  {path}")
    return 0
