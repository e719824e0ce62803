"""Raw logs -> :class:`Interactions` -> :class:`Split`."""

from recvae.data.movielens import (
    MOVIELENS,
    DatasetUnavailableError,
    download_movielens,
    load_movielens,
    read_movielens,
    read_movielens_file,
)
from recvae.data.files import read_interactions_file
from recvae.data.interactions import Interactions, PreprocessingReport
from recvae.data.specs import LogSpec, SplitSpec
from recvae.data.splits import HeldOut, Split, all_users_split, strong_generalization, temporal_split, weak_generalization
from recvae.data.synthetic import (
    CATALOGUE_1M,
    CATALOGUE_100K,
    ML1M_SHAPE,
    ML20M_SHAPE,
    CatalogueConfig,
    SyntheticConfig,
    catalogue_interactions,
    synthetic_interactions,
    synthetic_log,
)

__all__ = [
    "MOVIELENS",
    "DatasetUnavailableError",
    "download_movielens",
    "load_movielens",
    "read_movielens",
    "read_movielens_file",
    "Interactions",
    "PreprocessingReport",
    "read_interactions_file",
    "LogSpec",
    "SplitSpec",
    "HeldOut",
    "Split",
    "strong_generalization",
    "all_users_split",
    "weak_generalization",
    "temporal_split",
    "SyntheticConfig",
    "ML1M_SHAPE",
    "ML20M_SHAPE",
    "synthetic_log",
    "synthetic_interactions",
    "CatalogueConfig",
    "CATALOGUE_100K",
    "CATALOGUE_1M",
    "catalogue_interactions",
]
