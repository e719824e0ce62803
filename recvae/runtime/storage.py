"""Files recvae writes, checked before they are read: zip CRCs, torch payloads without pickles, npz arrays.

Every failure is a :class:`ModelFileError` (a ``ValueError``) whose message is one line naming
the file, the cause and the fix. Used for model files and training checkpoints alike.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recvae.data.sniff import one_line as _one_line

__all__ = [
    "ModelFileError",
    "ModelFileNotFoundError",
    "check_model_file",
    "read_torch_payload",
    "read_npz_arrays",
    "check_state_dict",
    "require_keys",
    "MODEL_FIX",
    "CHECKPOINT_FIX",
]

#: the fix for a damaged model file.
MODEL_FIX = "re-save the model from a fitted copy, or re-train it"
#: the fix for a damaged training checkpoint.
CHECKPOINT_FIX = "delete the checkpoint to train from scratch"

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_CHUNK = 1 << 20

# What torch.load(weights_only=True) raises on damaged or foreign content: its own
# RuntimeErrors (zip reader, storage sizes), the restricted unpickler's UnpicklingError,
# and what a damaged pickle stream makes the unpickler stumble over.
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
    IndexError, OverflowError, struct.error, UnicodeDecodeError, zipfile.BadZipFile, zlib.error,
)
# What np.load(allow_pickle=False) and reading its members raise on damaged or foreign content.
_NPZ_LOAD_ERRORS = (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile, zlib.error, struct.error,
                    UnicodeDecodeError)


class ModelFileError(ValueError):
    """A saved model or checkpoint file that cannot be used: damaged, foreign or of another model.

    The message is one line: the file, what is wrong with it and what to do.
    """


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """No file at the given path (also a :class:`FileNotFoundError`)."""


def _fail(path: Path, cause: str, fix: str) -> ModelFileError:
    return ModelFileError(f"{path}: {cause}; {fix}")


def _describe_non_zip(head: bytes) -> str:
    """What a file that is not a zip archive seems to be, from its first bytes."""
    if head.startswith(b"\x80"):
        return "not a recvae model file: it is a raw pickle, and recvae never loads pickles"
    if head.startswith(b"\x1f\x8b"):
        return "not a recvae model file: it is a gzip file, not a zip archive"
    if head.startswith(b"\x93NUMPY"):
        return "not a recvae model file: it is a single .npy array, not an .npz archive"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "not a recvae model file: it looks like JSON text, not a zip archive"
    if b"\x00" not in head:
        return "not a recvae model file: it is text, not a zip archive"
    return "not a recvae model file: it is not a zip archive"


def _check_members(zf: zipfile.ZipFile, path: Path, fix: str) -> list[str]:
    """Read every member once, comparing its CRC-32; returns the member names."""
    names = zf.namelist()
    for info in zf.infolist():
        try:
            with zf.open(info) as member:
                # ZipExtFile compares the CRC when the member's last byte is read.
                while member.read(_CHUNK):
                    pass
        except zipfile.BadZipFile as err:
            cause = "CRC mismatch" if "CRC" in str(err) else _one_line(err)
            raise _fail(path, f"corrupted: {cause} in member {info.filename!r}", fix) from None
        except (EOFError, zlib.error, struct.error, OSError, NotImplementedError) as err:
            raise _fail(path, f"corrupted: member {info.filename!r} cannot be read ({_one_line(err)})", fix) from None
    return names


def _kind_of(names: list[str]) -> str | None:
    """"npz" (every member an .npy), "torch" (one folder holding data.pkl), else None."""
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        return "torch"
    return None


def check_model_file(path: str | Path, *, fix: str = MODEL_FIX) -> str:
    """Check that ``path`` is an intact recvae model file and return its kind, "npz" or "torch".

    Refuses a missing path (:class:`ModelFileNotFoundError`), a directory, an empty
    file, anything that is not a zip archive, a truncated archive, a member whose
    CRC-32 does not match its content, and a zip archive that is neither an npz nor
    a torch file. ``fix`` ends every message (e.g. :data:`CHECKPOINT_FIX`).

    Raises:
        ModelFileError: with a one-line message naming the file, the cause and ``fix``.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"{path}: no such file; check the path (a model is saved with model.save(path))")
    if path.is_dir():
        raise _fail(path, "is a directory, not a model file", "give the model file inside it")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        raise _fail(path, f"cannot be read ({_one_line(err.strerror or err)})", "check its permissions") from None
    if not head:
        raise _fail(path, "is empty (0 bytes): it was never written completely", fix)
    if head.startswith(_EMPTY_ZIP_MAGIC):
        raise _fail(path, "not a recvae model file: an empty zip archive", fix)
    if not head.startswith(_ZIP_MAGIC):
        raise _fail(path, _describe_non_zip(head), fix)
    try:
        with zipfile.ZipFile(path) as zf:
            names = _check_members(zf, path, fix)
    except ModelFileError:
        raise  # a member's own diagnosis, already one line
    except zipfile.BadZipFile as err:
        # A zip's directory sits at its end: a file that starts like a zip but has no
        # directory was cut short (an interrupted copy or write).
        if "not a zip file" in str(err):
            raise _fail(path, "truncated: the zip directory at its end is missing", fix) from None
        raise _fail(path, f"corrupted: the zip directory is damaged ({_one_line(err)})", fix) from None
    except (EOFError, OSError, ValueError, struct.error) as err:
        raise _fail(path, f"corrupted: the zip directory is damaged ({_one_line(err)})", fix) from None
    kind = _kind_of(names)
    if kind is None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise _fail(path, f"not a recvae model file: a zip archive of other files ({shown})", fix)
    return kind


def read_torch_payload(path: str | Path, *, fix: str = MODEL_FIX, what: str = "model file") -> dict:
    """Check ``path`` (:func:`check_model_file`), then ``torch.load`` it with pickles refused.

    Returns the payload, which must be a dict. Every load error becomes a
    :class:`ModelFileError`; a file that needs a pickled Python object to load says so.
    """
    import torch

    path = Path(path)
    if check_model_file(path, fix=fix) != "torch":
        raise _fail(path, f"a baseline .npz file, not a torch {what}", "load it with recvae.models.load_model")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f" ({found.group(1)})" if found else ""
        raise _fail(path, f"contains pickled Python objects{detail}, which recvae never loads", fix) from None
    except _TORCH_LOAD_ERRORS as err:
        raise _fail(path, f"corrupted: torch cannot read it ({_one_line(err)})", fix) from None
    if not isinstance(payload, dict):
        raise _fail(path, f"not a recvae {what}: it holds a {type(payload).__name__}, not recvae's dict", fix)
    return payload


def read_npz_arrays(path: str | Path, *, fix: str = MODEL_FIX) -> dict[str, np.ndarray]:
    """Check ``path`` (:func:`check_model_file`), then read every array of the ``.npz``, pickles refused."""
    path = Path(path)
    if check_model_file(path, fix=fix) != "npz":
        raise _fail(path, "a torch model file, not a baseline .npz", "load it with recvae.models.load_model")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise _fail(path, "contains pickled Python objects, which recvae never loads", fix) from None
        raise _fail(path, f"corrupted: numpy cannot read it ({_one_line(err)})", fix) from None
    except _NPZ_LOAD_ERRORS as err:
        raise _fail(path, f"corrupted: numpy cannot read it ({_one_line(err)})", fix) from None


def require_keys(payload: Mapping, keys: Iterable[str], path: str | Path, what: str, fix: str = MODEL_FIX) -> None:
    """Refuse a payload that lacks any of ``keys`` (a file of another format or version)."""
    missing = [k for k in keys if k not in payload]
    if missing:
        raise _fail(Path(path), f"not a complete {what}: it lacks {', '.join(map(repr, missing))}", fix)


def check_state_dict(state_dict: Any, expected: Mapping[str, tuple[int, ...]], path: str | Path, what: str,
                     fix: str = MODEL_FIX) -> None:
    """Refuse weights whose names or shapes differ from ``expected``, or that are not finite."""
    import torch

    path = Path(path)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise _fail(path, f"not a recvae {what}: its weights are not a dict of tensors", fix)
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [f"{k} is {tuple(state_dict[k].shape)}, expected {expected[k]}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + wrong[:3]
        raise _fail(path, f"its weights do not fit its own architecture ({'; '.join(parts)})", fix)
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _fail(path, f"holds non-finite weights (NaN or inf) in {name}", "re-train the model (lower lr)")


