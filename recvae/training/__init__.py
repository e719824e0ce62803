"""The training loops, side by side: :func:`train_vae` (Mult-VAE and Mult-DAE: one ELBO step per
batch, KL annealing, validation, early stopping) in :mod:`recvae.training.loop`, and
:func:`train_recvae` (RecVAE's alternating encoder and decoder passes) in
:mod:`recvae.training.rec_vae`. What both loops share has a module of its own: ``config``
(TrainingConfig, TrainingResult), ``device`` (device and precision), ``optimizers``,
``validation`` (scoring an epoch, best weights, patience), ``divergence``, ``history``
(the end of an epoch) and ``checkpoints`` (and resume); the data-parallel glue is the
first loop's.
"""

from recvae.training.checkpoints import CheckpointMismatchError, data_fingerprint, run_fingerprint
from recvae.training.config import (
    ITEM_MOMENTS,
    PRECISIONS,
    EpochCallback,
    RecvaeWarning,
    TrainingConfig,
    TrainingResult,
)
from recvae.training.device import (
    AUTO_PRECISION_ENV,
    cpu_has_native_bf16,
    full_precision,
    resolve_device,
    resolve_precision,
    sparse_rows,
)
from recvae.training.divergence import DIVERGENCE_FACTOR, TrainingDivergedError, divergence
from recvae.training.host_memory import retained_host_memory
from recvae.training.loop import parallel_train_step, train_step, train_vae
from recvae.training.optimizers import ItemSparseAdam, LazyAdam, make_optimizer, prepare_item_training
from recvae.training.rec_vae import train_recvae
from recvae.training.validation import NetScorer

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "EpochCallback",
    "resolve_device",
    "train_step",
    "parallel_train_step",
    "train_vae",
    "sparse_rows",
    "make_optimizer",
    "ItemSparseAdam",
    "LazyAdam",
    "ITEM_MOMENTS",
    "prepare_item_training",
    "resolve_precision",
    "cpu_has_native_bf16",
    "full_precision",
    "NetScorer",
    "AUTO_PRECISION_ENV",
    "PRECISIONS",
    "RecvaeWarning",
    "TrainingDivergedError",
    "CheckpointMismatchError",
    "DIVERGENCE_FACTOR",
    "divergence",
    "run_fingerprint",
    "data_fingerprint",
    "train_recvae",
    "retained_host_memory",
]
