"""The training loops, side by side: :func:`train_vae` (Mult-VAE and Mult-DAE: one ELBO step per
batch, KL annealing, validation, early stopping) in :mod:`recvae.training.loop`, and
:func:`train_recvae` (RecVAE's alternating encoder and decoder passes) in
:mod:`recvae.training.rec_vae`; checkpoints, divergence checks and the data-parallel glue
they share live with the first.
"""

from recvae.training.loop import (
    TrainingConfig,
    TrainingResult,
    EpochCallback,
    resolve_device,
    train_step,
    parallel_train_step,
    train_vae,
    sparse_rows,
    make_optimizer,
    ItemSparseAdam,
    LazyAdam,
    ITEM_MOMENTS,
    prepare_item_training,
    resolve_precision,
    cpu_has_native_bf16,
    full_precision,
    NetScorer,
    AUTO_PRECISION_ENV,
    PRECISIONS,
    RecvaeWarning,
    TrainingDivergedError,
    CheckpointMismatchError,
    DIVERGENCE_FACTOR,
    divergence,
    run_fingerprint,
    data_fingerprint,
)
from recvae.training.rec_vae import train_recvae
from recvae.training.host_memory import retained_host_memory

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
