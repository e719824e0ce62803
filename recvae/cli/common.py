"""What the commands share: one-line errors, ``--param`` values, the run directory options, output."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from recvae.models.params import parse_param_pairs, parse_param_value as parse_value  # noqa: F401


class CommandError(Exception):
    """A user mistake found by the command line itself; ``main`` prints it as one line."""


def fail(text: str) -> NoReturn:
    raise CommandError(text)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (KeyError's repr quotes removed)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``--param`` pairs (:func:`recvae.models.options.parse_param_pairs`); a bad pair ends the command."""
    try:
        return parse_param_pairs(pairs)
    except ValueError as err:
        fail(f"--param {err}")


def subparser(sub, common, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, parents=[common],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_dir(p: argparse.ArgumentParser, *, device: bool = True, allow_failed: bool = True) -> None:
    """RUN_DIR, --device and --allow-failed (``Run.load``'s ``device`` and ``allow_failed``)."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'recvae train'")
    if device:
        p.add_argument("--device", default="auto", help="device for torch models: auto, cpu, cuda (default auto)")
    if allow_failed:
        p.add_argument("--allow-failed", action="store_true",
                       help="use a run whose training failed (diverged) anyway; refused by default")


def progress(args: argparse.Namespace) -> bool | None:
    """False with --no-progress or -q; None (auto: on a terminal only) otherwise."""
    return False if getattr(args, "no_progress", False) or getattr(args, "quiet", False) else None


def reporter(args: argparse.Namespace):
    return (lambda line: None) if args.quiet else print


def load_run(args: argparse.Namespace, *, allow_failed: bool | None = None):
    """``Run.load`` of RUN_DIR with --device and --allow-failed (``allow_failed`` overrides the option)."""
    from recvae.runs import Run

    if allow_failed is None:
        allow_failed = getattr(args, "allow_failed", False)
    return Run.load(args.run_dir, device=args.device, allow_failed=allow_failed)


def check_output(path: str | None) -> None:
    """Refuse an output with an unknown suffix or an unwritable place before any work."""
    if path is None:
        return
    from recvae.data.tables import check_table_output

    check_table_output(path)


def print_table(frame) -> None:
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def write_output(frame, path: str | None, what: str) -> None:
    """Write ``frame`` to ``path`` when one is given (the format by its suffix) and say so."""
    if path:
        from recvae.data.tables import write_table

        write_table(frame, path)
        print(f"{what} written to {path}")
