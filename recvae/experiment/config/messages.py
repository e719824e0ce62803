"""A pydantic validation error of a config as one line: ``<file>: <path>: <problem and fix>``.

:func:`_message` picks the first error (a misspelt key first: it usually causes
the others), follows its location through the schema (:func:`_walk`) for the
path to show, the field's rule and the keys its table allows, and words it: an
unknown key with a "did you mean ...?", a missing key or a bad value with the
field's rule, a validator's :class:`~recvae.experiment.config.schema._ConfigError`
with its own text.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from recvae.experiment.config.schema import _ConfigError, _ConfigFile, _unknown_key


def _message(err: ValidationError, where: str) -> str:
    """One line for the first problem of ``err``: ``<file>: <path>: <problem and fix>``."""
    errors = err.errors()
    # a misspelt key usually causes the other errors (the real key is then "missing"): name it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, _ConfigError):
        path, _, _ = _walk(loc + problem.path)
        text = problem.problem
    elif isinstance(problem, Exception):  # a ValueError of code this module calls, already a sentence
        path, _, _ = _walk(loc)
        text = str(problem)
    else:
        path, rule, allowed = _walk(loc)
        if first["type"] == "extra_forbidden":
            parent = _format_path(path[:-1])
            section = "top level" if not parent else (
                f"[[{parent.split('[')[0]}]]" if parent.endswith("]") else f"[{parent}]")
            text = _unknown_key(str(loc[-1]), allowed, section)
        elif first["type"] == "missing":
            text = f"missing; add it ({rule or first['msg']})"
        else:
            text = f"{rule or first['msg']}; got {first['input']!r}"
    shown = _format_path(path)
    return f"{where}: {shown}: {text}" if shown else f"{where}: {text}"


def _walk(loc: tuple[str | int, ...]) -> tuple[list[str | int], str, list[str]]:
    """Follow a pydantic location through the schema.

    Returns the path to show (without pydantic's union tags such as ``int`` or
    ``literal[False]``), the rule of the deepest field on the way, and the keys
    the innermost table allows (for an unknown key's suggestion).
    """
    annotation: Any = _ConfigFile
    shown: list[str | int] = []
    rule, allowed = "", list(_ConfigFile.model_fields)
    for item in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            allowed = list(annotation.model_fields)
            shown.append(item)
            if item in annotation.model_fields:
                info = annotation.model_fields[item]
                rule, annotation = info.description or "", info.annotation
            else:  # a key the table does not declare
                annotation = Any
            continue
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is list and isinstance(item, int):
            shown.append(item)
            annotation = args[0] if args else Any
        elif origin is dict:
            shown.append(item)
            annotation = args[1] if len(args) == 2 else Any
        elif origin in (typing.Union, types.UnionType):
            annotation = Any  # a tag naming the union member that failed, not a key
        else:
            shown.append(item)
            annotation = Any
    return shown, rule, allowed


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X`` (pydantic's locations do not mention them)."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _format_path(path: list[str | int] | tuple[str | int, ...]) -> str:
    """``["models", 2, "grid", "l2"]`` -> ``models[2].grid.l2``."""
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text
