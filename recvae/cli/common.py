"""What the commands share: one-line errors, ``--param`` values, the run directory options, output."""

from __future__ import annotations

import argparse
import json
from typing import Any, NoReturn


class CommandError(Exception):
    """A user mistake found by the command line itself; ``main`` prints it as one line."""


def fail(text: str) -> NoReturn:
    raise CommandError(text)


def one_line(err: BaseException) -> str:
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
            fail(f"--param {pair!r}: expected KEY=VALUE with a parameter name as KEY, e.g. --param latent_dim=100")
        if key in params:
            fail(f"--param {key} is given twice; give each parameter once")
        params[key] = parse_value(raw)
    return params


def subparser(sub, common, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, parents=[common],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'recvae train'")
    p.add_argument("--device", default="auto", help="device for torch models: auto, cpu, cuda (default auto)")


def progress(args: argparse.Namespace) -> bool | None:
    """False with --no-progress or -q; None (auto: on a terminal only) otherwise."""
    return False if getattr(args, "no_progress", False) or getattr(args, "quiet", False) else None


def reporter(args: argparse.Namespace):
    return (lambda line: None) if args.quiet else print


def load_run(args: argparse.Namespace):
    from recvae.runs import Run

    return Run.load(args.run_dir, device=args.device)


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
