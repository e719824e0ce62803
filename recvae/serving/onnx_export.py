"""ONNX export of a fitted model's fold-in scorer: a user's items in, a score per item out.

``export_onnx(model_or_run, "model.onnx")`` writes one ONNX file that reproduces
``model.score(rows)`` (Mult-VAE, Mult-DAE, RecVAE: the decoder at the posterior mean,
in eval mode: no input dropout, no sampling, the input row L2-normalised as in
training; EASE and EDLAE: ``x B``) for any number of users and items per user, so that
onnxruntime (or any ONNX runtime) can serve it without torch or recvae.

The graph's form (documented for the serving side):

inputs
    ``indices``  int64 ``(nnz,)``: the item columns (0 .. n_items - 1, the model's item
    index: ``Run.item_ids`` / ``Split.item_ids`` maps them to raw ids) of every user,
    user after user; an item at most once per user (sum duplicate weights first).
    ``offsets``  int64 ``(users + 1,)``: CSR row pointers, ``offsets[0] == 0``,
    non-decreasing, ``offsets[-1] == nnz``; user u's items are
    ``indices[offsets[u]:offsets[u + 1]]`` (scipy's ``csr.indptr``). A user with no
    items gets the scores of an empty history.
    ``values``   float32 ``(nnz,)``: the interaction weights (1.0 for binary data;
    must be >= 0, as the models require). Absent from graphs exported with
    ``weighted=False``, which treat every item as 1.0.
output
    ``scores``   float32 ``(users, n_items)``: the model's ranking scores (logits for
    the multinomial likelihood; seen items are not masked).

For a scipy CSR batch ``x``: ``session.run(["scores"], {"indices": x.indices.astype("int64"),
"offsets": x.indptr.astype("int64"), "values": x.data.astype("float32")})``.

How the graph scores: the VAEs' sparse first layer becomes a gather of the weight rows
of the given items, scaled by their (L2-normalised) values, summed per user with an
``index_add`` over the segment id of each entry (computed from ``offsets`` with a
scatter and a cumulative sum): it touches only the nonzeros, ``nnz x hidden`` floats,
and nothing of size users x items is built before the decoder's output. EASE's output
is ``x B`` with ``B`` items x items: the graph scatters the rows into a users x items
buffer (the size of the output it returns anyway) and multiplies once by ``B``; a
gather of ``B``'s rows would need ``nnz x items``. Batch users so that the output fits.

The graph is traced by the dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
which needs ``onnxscript``) with ``users`` and ``nnz`` dynamic, at ONNX opset
:data:`DEFAULT_OPSET` by default. Models that do not export (Popularity, item-KNN, ALS,
BPR, a blend) are refused with a ``ValueError`` naming those that do.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from recvae.data.writing import written_by_name
from recvae.models.base import Recommender
from recvae.models.ease import EASE
from recvae.models.mult_vae import MultVAE
from recvae.models.rec_vae import RecVAE
from recvae.nn.rec_vae import RecVAENet
from recvae.nn.vae import VAE

__all__ = ["export_onnx", "scorer_module", "EXPORTABLE", "DEFAULT_OPSET", "INSTALL_HINT", "ONNX_FORMAT"]

#: The ONNX (ai.onnx) opset the graph targets unless told otherwise (the dynamo exporter's own).
DEFAULT_OPSET = 18
#: Display names of the models :func:`export_onnx` accepts (Mult-DAE is a :class:`MultVAE`).
EXPORTABLE = ("Mult-VAE", "Mult-DAE", "RecVAE", "EASE", "EDLAE")
INSTALL_HINT = "pip install recvae[onnx]"
#: Written into the file's metadata (``recvae.format``) so a server can check what it loads.
ONNX_FORMAT = "recvae.onnx-scorer/1"
#: ONNX protobuf files stop at 2 GiB; the weights must fit in one file.
_MAX_WEIGHT_BYTES = 2**31 - (64 << 20)


# ---------------------------------------------------------------------- graph pieces
def _segment_ids(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """The user of each entry from CSR row pointers: a 1 at each inner row start, then a running sum.

    Empty users put several marks at one position (``index_add`` accumulates them), so
    the entries after it skip straight to the right user.
    """
    starts = offsets[1:-1]
    marks = torch.zeros(nnz + 1, dtype=offsets.dtype).index_add(0, starts, torch.ones_like(starts))
    return torch.cumsum(marks, 0)[:nnz]


def _l2_normalised(values: torch.Tensor, rows: torch.Tensor, n_users: int) -> torch.Tensor:
    """``recvae.nn.vae.l2_normalised_values`` on flat arrays."""
    sq = torch.zeros(n_users, dtype=values.dtype).index_add(0, rows, values * values)
    return values * torch.rsqrt(sq.clamp_min(1e-12)).index_select(0, rows)


def _sparse_linear(layer: nn.Module, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                   n_users: int) -> torch.Tensor:
    """``SparseLinear`` as gather + per-user segment sum: only the given items' weight rows are read."""
    picked = layer.weight.index_select(0, indices) * values.unsqueeze(1)
    out = torch.zeros(n_users, layer.out_features, dtype=picked.dtype).index_add(0, rows, picked)
    return out + layer.bias


class _Scorer(nn.Module):
    """Common front: (indices, offsets[, values]) -> per-entry user ids and values."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor | None = None):
        if values is None:
            values = torch.ones(indices.shape[0], dtype=torch.float32)
        n_users = offsets.shape[0] - 1
        rows = _segment_ids(offsets, indices.shape[0])
        return self.score(indices, values, rows, n_users)

    def score(self, indices, values, rows, n_users) -> torch.Tensor:
        raise NotImplementedError


class _VAEScorer(_Scorer):
    """:class:`recvae.nn.vae.VAE` at the posterior mean (Mult-VAE, Mult-DAE)."""

    def __init__(self, net: VAE) -> None:
        super().__init__(net.n_items)
        self.net = net
        self.act = net._act

    def score(self, indices, values, rows, n_users):
        net, config = self.net, self.net.config
        if config.normalize_input:
            values = _l2_normalised(values, rows, n_users)
        h = _sparse_linear(net.input_layer, indices, values, rows, n_users)
        for layer in net.encoder:
            h = layer(self.act(h))
        z = self.act(h) if not config.variational else h[:, : config.latent_dim]
        return net.decode(z)[:, : self.n_items].float()


class _RecVAEScorer(_Scorer):
    """:class:`recvae.nn.rec_vae.RecVAENet` at the posterior mean (the prior's encoder is not needed)."""

    def __init__(self, net: RecVAENet) -> None:
        super().__init__(net.n_items)
        self.encoder = net.encoder
        self.decoder = net.decoder

    def score(self, indices, values, rows, n_users):
        enc = self.encoder
        values = _l2_normalised(values, rows, n_users)
        h = enc.norms[0](F.silu(_sparse_linear(enc.input_layer, indices, values, rows, n_users)))
        total = h
        for layer, norm in zip(enc.layers, enc.norms[1:]):
            h = norm(F.silu(layer(h) + total))
            total = total + h
        return self.decoder(enc.mu(h))[:, : self.n_items].float()


class _EASEScorer(_Scorer):
    """EASE's (and EDLAE's) ``x B``: the rows scattered into a users x items buffer, one product with ``B``."""

    def __init__(self, weights) -> None:
        super().__init__(int(weights.shape[0]))
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32).clone())

    def score(self, indices, values, rows, n_users):
        x = torch.zeros(n_users * self.n_items, dtype=values.dtype)
        x = x.index_add(0, rows * self.n_items + indices, values).reshape(n_users, self.n_items)
        return x @ self.weights


def _model_of(model_or_run) -> Recommender:
    """The Recommender itself, or a run's model (``Run.model``)."""
    model = model_or_run if isinstance(model_or_run, Recommender) else getattr(model_or_run, "model", None)
    if not isinstance(model, Recommender):
        raise ValueError(f"export_onnx expects a fitted recvae model or a Run; got {type(model_or_run).__name__}")
    return model


def scorer_module(model_or_run) -> nn.Module:
    """The eval-mode CPU ``nn.Module`` that the ONNX graph is traced from (a copy of the weights).

    ``module(indices, offsets, values)`` equals ``model.score(rows)`` for the CSR rows
    ``(values, indices, offsets)``; useful to check the graph's arithmetic without ONNX.
    """
    model = _model_of(model_or_run)
    name = type(model).__name__
    exportable = f"the models that export are {', '.join(EXPORTABLE)}"
    if isinstance(model, (MultVAE, RecVAE)):
        if model.net_ is None:
            raise ValueError(f"cannot export {name} to ONNX: it is not fitted; call fit() first")
        net = copy.deepcopy(model.net_).cpu().eval()
        if isinstance(net, VAE) and net.config.posterior == "exact":
            raise ValueError(f"cannot export {name} to ONNX: it scores with each user's exact posterior "
                             "(posterior='exact'), a per-user solve the graph does not hold; refit with "
                             "posterior='encoder' to export")
        if isinstance(net, VAE):
            scorer = _VAEScorer(net)
        elif isinstance(net, RecVAENet):
            scorer = _RecVAEScorer(net)
        else:
            raise ValueError(f"cannot export {name} to ONNX: unknown network {type(net).__name__}; {exportable}")
    elif isinstance(model, EASE):  # EDLAE included (a subclass)
        if model.weights_ is None:
            raise ValueError(f"cannot export {name} to ONNX: it is not fitted; call fit() first")
        scorer = _EASEScorer(model.weights_)
    else:
        raise ValueError(f"cannot export {name} to ONNX: its scores are not a fold-in network; {exportable}")
    for p in scorer.parameters():
        p.requires_grad_(False)
    return scorer.eval()


def _weight_bytes(module: nn.Module) -> int:
    tensors = {t.data_ptr(): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _require_exporter() -> None:
    """The dynamo exporter needs onnx and onnxscript; say how to install them."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: {INSTALL_HINT}")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines, warnings and notices (missing torchvision ...) stay out of the output."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------- the export
def export_onnx(model_or_run, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, weighted: bool = True,
                allow_failed: bool = False) -> Path:
    """Write the fold-in scorer of a fitted model (or of a :class:`recvae.runs.Run`) as ONNX.

    The graph's inputs and output are described in the module docstring. The file is
    written in a private temporary folder next to ``path`` and renamed into place
    (:func:`recvae.data.writing.written_by_name`), so ``path`` is either the old file or
    the whole new one, with the mode ``open()`` gives (``0o666 & ~umask``); a full disk
    is a one-line :class:`~recvae.data.writing.DiskFullError`.

    Args:
        model_or_run: a fitted Mult-VAE, Mult-DAE, RecVAE, EASE or EDLAE, or a run holding one.
        path: the ``.onnx`` file to write (replaced if it exists).
        opset: the ai.onnx opset version to target (default :data:`DEFAULT_OPSET`).
        weighted: True adds the ``values`` input (interaction weights); False
            exports a graph of ``indices`` and ``offsets`` only, every item counting 1.
        allow_failed: export a run whose training failed anyway (refused by default).

    Returns:
        The path written.

    Raises:
        ValueError: the model cannot be exported (its kind, not fitted, or weights
            over ONNX's 2 GiB single-file limit), or ``opset`` is out of range.
        ImportError: onnx / onnxscript are not installed (``pip install recvae[onnx]``).
        recvae.runs.RunError: a run whose training failed (unless ``allow_failed``).
    """
    check_status = getattr(model_or_run, "check_status", None)  # a Run: its recorded training outcome
    if callable(check_status):
        check_status(allow_failed=allow_failed)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 23:
        raise ValueError(f"opset must be an integer from 18 to 23 (the dynamo exporter's range); got {opset!r}")
    scorer = scorer_module(model_or_run)
    size = _weight_bytes(scorer)
    if size > _MAX_WEIGHT_BYTES:
        raise ValueError(f"cannot export {type(_model_of(model_or_run)).__name__} to ONNX: its weights take "
                         f"{size / 2**30:.2f} GiB, over ONNX's 2 GiB single-file limit; use a smaller catalogue")
    _require_exporter()
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give a file name such as model.onnx")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such directory for the ONNX file")

    # Example batch: 3 users with 3, 0 and 4 items (an empty user is traced too); users and nnz stay dynamic.
    n_items = scorer.n_items
    indices = torch.tensor([0, 1, n_items - 1, 0, 1, 2 % n_items, n_items - 1], dtype=torch.int64)
    offsets = torch.tensor([0, 3, 3, 7], dtype=torch.int64)
    values = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0])
    nnz, users = torch.export.Dim("nnz"), torch.export.Dim("users")
    if weighted:
        args = (indices, offsets, values)
        dynamic = {"indices": {0: nnz}, "offsets": {0: users + 1}, "values": {0: nnz}}
        names = ["indices", "offsets", "values"]
    else:
        args = (indices, offsets)
        dynamic = {"indices": {0: nnz}, "offsets": {0: users + 1}}
        names = ["indices", "offsets"]

    with written_by_name(path) as tmp, torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            scorer, args, dynamo=True, opset_version=opset, input_names=names, output_names=["scores"],
            dynamic_shapes=dynamic, external_data=False, verbose=False, report=False,
        )
        from onnxscript import ir  # an optional dependency, checked by _require_exporter

        scores = program.model.graph.outputs[0]
        scores.shape = ir.Shape([ir.SymbolicDim("users"), n_items])  # the tracer calls it "s40"
        program.model.metadata_props.update({
            "recvae.format": ONNX_FORMAT, "recvae.model": type(_model_of(model_or_run)).__name__,
            "recvae.n_items": str(n_items), "recvae.inputs": ",".join(names),
        })
        program.save(tmp, external_data=False)
    return path
