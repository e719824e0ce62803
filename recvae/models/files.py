"""Saved model files that fail loudly: checked before they are read, refused in one line.

Both formats recvae writes are zip archives that store a CRC-32 per member:
``np.savez`` (the baselines' ``.npz``) and ``torch.save`` (the torch VAEs and the
training checkpoints; torch's writer computes the CRCs unless
``torch.utils.serialization.config.save.compute_crc32`` is switched off). Neither
reader checks them (torch does not), so a file with a few KiB overwritten loads
"fine" and yields NaN scores. :func:`check_model_file` reads every member once and
compares its CRC, recognises the format from the member names, and raises
:class:`ModelFileError` naming the file, the cause and the fix. The readers here
(:func:`read_torch_payload`, :func:`read_npz_arrays`, :func:`read_vae_payload`)
do that check, then load with pickles refused and turn every reader error into a
:class:`ModelFileError` with a one-line message. recvae never executes a pickle:
a file that needs one is refused, and torch's advice to retry with
``weights_only=False`` never reaches the user.

Cost: one sequential read of the file plus a CRC-32 (hundreds of MB/s), small next
to building the model.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping

from recvae.nn.annealing import AnnealConfig
from recvae.runtime.storage import (
    CHECKPOINT_FIX,
    _fail,
    _one_line,
    MODEL_FIX,
    ModelFileError,
    ModelFileNotFoundError,
    check_model_file,
    check_state_dict,
    read_npz_arrays,
    read_torch_payload,
    require_keys,
)
from recvae.training import TrainingConfig

__all__ = [
    "CHECKPOINT_FIX",
    "MODEL_FIX",
    "ModelFileError",
    "ModelFileNotFoundError",
    "check_model_file",
    "check_state_dict",
    "read_npz_arrays",
    "read_torch_payload",
    "require_keys",
    "read_vae_payload",
    "check_vae_payload",
]


def _subclass_names(cls: type) -> set[str]:
    names, todo = set(), [cls]
    while todo:
        c = todo.pop()
        names.add(c.__name__)
        todo.extend(c.__subclasses__())
    return names


def read_vae_payload(path: str | Path, cls: type) -> dict:
    """The checked payload of a torch VAE file written by ``cls.save`` (``cls``: a TorchVAERecommender).

    :func:`read_torch_payload`, then :func:`check_vae_payload`.
    """
    payload = read_torch_payload(path, what=f"{cls.file_kind} file")
    check_vae_payload(payload, path, cls)
    return payload


def check_vae_payload(payload: dict, path: str | Path, cls: type) -> None:
    """Refuse a torch VAE payload that ``cls.load`` could not use, naming what is wrong.

    The format must be ``cls``'s, the class ``cls`` or a subclass, every key
    present; the configs must build and the weights must have the shapes of the
    architecture the configs describe, with finite values.
    """
    import torch


    path = Path(path)
    what = f"{cls.file_kind} file"
    found = payload.get("format")
    if found != cls.save_format:
        family = cls.save_format.rsplit("/", 1)[0]  # "recvae.vae/1" -> "recvae.vae": same family, other version
        if isinstance(found, str) and found.rsplit("/", 1)[0] == family:
            raise _fail(path, f"format {found!r}, but this recvae reads {cls.save_format!r}", MODEL_FIX)
        if isinstance(found, str) and found.startswith("recvae."):
            raise _fail(path, f"holds a {payload.get('class', found)!s} model, not a {cls.__name__}",
                        "load it with recvae.models.load_model(path)")
        raise _fail(path, f"not a recvae {what} (format {_one_line(found, 40)!s})", MODEL_FIX)
    if payload.get("class") not in _subclass_names(cls):
        raise _fail(path, f"holds a {_one_line(payload.get('class'), 40)!s} model, not a {cls.__name__}",
                    "load it with recvae.models.load_model(path)")
    require_keys(payload, ("config", "training", "n_items", "state_dict", "item_ids", "history", "best_epoch"),
                 path, what)
    n_items = payload["n_items"]
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise _fail(path, f"not a complete {what}: n_items is {_one_line(n_items, 40)}", MODEL_FIX)
    try:
        config = cls._config_from_dict(dict(payload["config"]))
        training = dict(payload["training"])
        training["anneal"] = AnnealConfig(**training["anneal"])
        model = cls(config, TrainingConfig(**training))
    except (TypeError, ValueError, KeyError) as err:
        raise _fail(path, f"its configuration does not fit this recvae version ({_one_line(err)})", MODEL_FIX) from None
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: tuple(v.shape) for k, v in model._net_for_payload(payload, path).state_dict().items()}
    check_state_dict(payload["state_dict"], expected, path, what)
    ids = payload["item_ids"]
    if ids is not None:
        values = ids.get("values") if isinstance(ids, Mapping) else None
        if values is None or ids.get("kind") not in ("str", "int", "float") or len(values) != n_items:
            raise _fail(path, f"not a complete {what}: its item id map does not cover its {n_items} items", MODEL_FIX)
    history = payload["history"]
    if history is not None and (not isinstance(history, Mapping) or
                                len({len(v) for v in history.values() if isinstance(v, list)}) > 1 or
                                not all(isinstance(v, list) for v in history.values())):
        raise _fail(path, f"not a complete {what}: its training history is not a table", MODEL_FIX)
