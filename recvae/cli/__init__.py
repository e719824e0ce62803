"""Command line entry point: ``recvae`` (or ``python -m recvae``). It parses arguments and calls the public API.

One module per command group, each documenting its commands (``recvae COMMAND --help`` documents each
option): :mod:`.train` (train, update, tune), :mod:`.recommend` (recommend, embed, similar), :mod:`.evaluate`
(evaluate, experiment), :mod:`.serve` (serve, export) and :mod:`.info` (demo, the default; info, datasets);
:mod:`.common` holds what they share. This module builds the parser and runs a command (:func:`main`).

Every failure ends with one line naming the problem and the fix (exit status 1);
``--debug`` shows the traceback instead. ``-v`` shows the library's log, ``-q``
only errors. Progress bars show on a terminal and hide when stderr is redirected.
torch and the models are imported inside the handlers, not at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from recvae import __version__
from recvae.cli import evaluate, info, recommend, serve, train
from recvae.cli.common import CommandError, one_line, parse_params, parse_value
from recvae.runtime.memory import InsufficientMemoryError
from recvae.cli.train import MODEL_NAMES, model_params  # noqa: F401 (help-text model names)

__all__ = ["main", "build_parser", "parse_params", "parse_value", "model_params"]


def build_parser() -> argparse.ArgumentParser:
    """The ``recvae`` argument parser with every subcommand."""
    common = _output_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="recvae",
        description="Collaborative filtering with VAEs over sparse user rows.",
        epilog="Without a command, recvae runs 'demo'. 'recvae COMMAND --help' describes each command.",
        parents=[_output_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (info.add_demo, train.add_train, train.add_update, evaluate.add_evaluate, recommend.add_recommend, recommend.add_embed,
                recommend.add_similar, info.add_info, serve.add_export, info.add_datasets, evaluate.add_experiment,
                serve.add_serve, train.add_tune, info.add_models):
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


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else
                                              logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if level == logging.WARNING and not getattr(args, "no_progress", False) and not sys.stderr.isatty():
        # No progress bar off a terminal (a scheduler, nohup, a pipe): each epoch's line stands in for it.
        logging.getLogger("recvae.training.history").setLevel(logging.INFO)


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
    help_params = train.help_params_model(argv)
    if help_params is not None:  # 'recvae train --model NAME --help-params' is 'recvae models NAME'
        kept = ("-v", "-vv", "--verbose", "-q", "--quiet", "--debug")
        argv = ["models", help_params, *[a for a in argv if a in kept]]
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
    except InsufficientMemoryError as err:  # refused before allocating: its own line names the fix
        raise SystemExit(f"recvae: error: out of memory: {one_line(err)}") from None
    except MemoryError as err:
        raise SystemExit(f"recvae: error: out of memory: {one_line(err) or 'a buffer did not fit'}; use a "
                         "smaller model, batch size or catalogue") from None
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, NotImplementedError, EOFError) as err:
        # The boundary to the user: every library error becomes one line (--debug shows the traceback).
        raise SystemExit(f"recvae: error: {_describe(err)}") from None


def _describe(err: BaseException) -> str:
    text = one_line(err)
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: no such file"
    elif isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)) and err.filename:
        text = f"{err.filename}: {err.strerror or type(err).__name__}"
    if isinstance(err, (TypeError, RuntimeError)) and not text:
        text = type(err).__name__
    return text or f"{type(err).__name__} (run again with --debug for details)"
