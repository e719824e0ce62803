"""Non-VAE baselines behind the same :class:`Recommender` interface.

- :class:`Popularity`: every user gets the training item counts.
- :class:`EASE`: Steck's (2019) closed-form item-item linear model.
- :class:`EDLAE`: Steck's (2020) full-rank emphasised-denoising linear autoencoder, EASE with
  dropout-emphasised, popularity-scaled regularisation (closed form).
- :class:`SparseEASE`: EASE with each item's weights restricted to its most co-occurring
  items: a sparse ``B`` fitted without any items x items matrix (large catalogues).
- :class:`ALS`: implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008),
  trained by ``implicit``; held-out users are solved exactly from their fold-in rows.
- :class:`BPR`: Bayesian personalised ranking (Rendle et al. 2009), trained by
  ``implicit``; held-out users are folded in by a ridge projection.
- :class:`ItemKNN`: ``implicit``'s item-item nearest neighbours (cosine, BM25, TF-IDF).

Every model scores any user from their interaction row without retraining
(held-out users of a strong-generalization split included), saves to one
``.npz`` file (hyper-parameters as JSON text, learned arrays, item ids) and
loads it back with ``allow_pickle=False``.

Example::

    from recvae.models.baselines import EASE
    model = EASE(l2=500.0).fit(split)
    evaluate(model, split, "validation")
    model.recommend_for_items([1, 50, 260], k=10)
"""

from __future__ import annotations

from pathlib import Path

from recvae.models.array_model import ArrayRecommender, read_npz
from recvae.models.ease import EASE, EDLAE, available_memory_bytes, ease_memory_bytes, edlae_weights
from recvae.models.files import ModelFileError
from recvae.models.implicit_models import ALS, BPR, ItemKNN
from recvae.models.popularity import Popularity
from recvae.models.sparse_ease import SparseEASE, sparse_ease_memory_bytes

__all__ = [
    "Popularity",
    "EASE",
    "EDLAE",
    "SparseEASE",
    "ALS",
    "BPR",
    "ItemKNN",
    "BASELINES",
    "load_baseline",
    "available_memory_bytes",
    "ease_memory_bytes",
    "edlae_weights",
    "sparse_ease_memory_bytes",
]


def load_baseline(path: str | Path) -> ArrayRecommender:
    """Load any baseline written by ``save``, whatever its class.

    Raises:
        ModelFileError: the file is damaged, foreign or of an unknown class.
    """
    meta, arrays = read_npz(path)
    cls = {c.__name__: c for c in BASELINES.values()}.get(meta["class"])
    if cls is None:
        raise ModelFileError(f"{path}: holds an unknown model class {str(meta['class'])[:40]!r}; "
                             "give a file written by a recvae baseline's save")
    return cls._from_saved(meta, arrays, path)



#: The baselines by short name (for command lines and experiment configs).
BASELINES: dict[str, type[ArrayRecommender]] = {
    "popularity": Popularity,
    "ease": EASE,
    "edlae": EDLAE,
    "sparse-ease": SparseEASE,
    "als": ALS,
    "bpr": BPR,
    "itemknn": ItemKNN,
}
