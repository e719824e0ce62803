"""Every model's hyper-parameters, found without reading the source: name, type, default and one line each.

``recvae models`` prints these tables; :func:`model_parameters` gives one as a DataFrame. The
torch models take their config's and their training config's fields as flat keywords, so both
are listed (with the model's own defaults, e.g. Mult-DAE's weight decay). The one-line help
comes from the ``Args:`` / ``Attributes:`` section of the class or config docstring.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import pandas as pd

from recvae.models.hybrid import BLEND_EXAMPLE
from recvae.models.mult_vae import TorchVAERecommender
from recvae.models.registry import MODELS

__all__ = ["model_parameters", "model_summary", "BLEND_EXAMPLE"]

_SECTION = re.compile(r"^\s*(Args|Arguments|Attributes|Parameters):\s*$")
_ENTRY = re.compile(r"^(\s*)([A-Za-z_][\w, ]*?):\s*(.*)$")


def _first_sentence(text: str) -> str:
    """The text up to its first full stop (not one of "et al.", "e.g.", "i.e."), rst markup removed."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(text.split())).replace("``", "")
    match = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z(])", text)
    return (text[:match.start()] if match else text).rstrip(".")


def docstring_entries(doc: str | None) -> dict[str, str]:
    """``name -> first sentence`` from the ``Args:``/``Attributes:`` sections of a Google-style docstring
    (``a, b: text`` documents both names)."""
    entries: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        if not _SECTION.match(lines[i]):
            i += 1
            continue
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
            match = _ENTRY.match(lines[i])
            if not match or not lines[i].strip():
                i += 1
                continue
            indent, names, text = len(match.group(1)), match.group(2), [match.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > indent:
                text.append(lines[i].strip())
                i += 1
            for name in (n.strip() for n in names.split(",")):
                entries.setdefault(name, _first_sentence(" ".join(text)))
    return entries


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return list(value) if isinstance(value, tuple) else value


def _registry_class(name: str) -> tuple[str, type]:
    key = str(name).strip().lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return key, MODELS[key]


def model_parameters(name: str) -> pd.DataFrame:
    """The hyper-parameters of registry model ``name``: ``parameter, type, default, help`` (one row each)."""
    key, cls = _registry_class(name)
    rows = []
    if issubclass(cls, TorchVAERecommender):
        defaults = cls().get_params()
        for config in (cls.default_config(), cls.default_training()):
            docs = {k: v for c in reversed(type(config).__mro__) for k, v in docstring_entries(c.__doc__).items()}
            for f in dataclasses.fields(config):
                rows.append((f.name, _type_name(f.type), _plain(defaults.get(f.name, getattr(config, f.name))),
                             docs.get(f.name, "")))
    else:
        docs = {**docstring_entries(cls.__init__.__doc__), **docstring_entries(cls.__doc__)}
        for p in inspect.signature(cls).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = "(required)" if p.default is p.empty else _plain(p.default)
            help_text = docs.get(p.name, "")
            if key == "blend" and p.name == "components":
                help_text = f"{help_text}; e.g. {BLEND_EXAMPLE}".lstrip("; ")
            rows.append((p.name, _type_name(p.annotation), default, help_text))
    return pd.DataFrame(rows, columns=["parameter", "type", "default", "help"], dtype=object)


def model_summary() -> pd.DataFrame:
    """Every registry model: ``model, class, parameters`` (how many) and ``about`` (its docstring's first line)."""
    rows = []
    for key, cls in MODELS.items():
        about = _first_sentence((inspect.getdoc(cls) or "").split("\n\n")[0])
        rows.append((key, cls.__name__, len(model_parameters(key)), about))
    return pd.DataFrame(rows, columns=["model", "class", "parameters", "about"])
