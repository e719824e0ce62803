"""recvae: collaborative filtering with variational autoencoders over sparse user rows."""

from recvae.data.interactions import Interactions, PreprocessingReport
from recvae.data.splits import HeldOut, Split, strong_generalization, temporal_split, weak_generalization

__version__ = "0.1.0"

__all__ = [
    "Interactions",
    "PreprocessingReport",
    "HeldOut",
    "Split",
    "strong_generalization",
    "weak_generalization",
    "temporal_split",
    "__version__",
]
