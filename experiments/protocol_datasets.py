"""The benchmark datasets of ../shared/datasets and the held-out sizes their README prescribes."""

from __future__ import annotations

from pathlib import Path

from recvae.data import Interactions, Split, load_movielens, strong_generalization

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "experiments" / "results"

#: name -> (file under ../shared/datasets, held-out users per set). Liang et al.'s protocol:
#: rating > 3.5 where the file has ratings, users with >= 5 events, seed 98765.
DATASETS = {
    "ml-1m-half": ("ml-1m-half/ratings.dat.gz", 300),
    "ml-1m-implicit": ("ml-1m-implicit/ratings.csv.gz", 600),
    "ml-100k": ("ml-100k/u.data", 90),
}


def load_protocol_split(name: str) -> tuple[Interactions, Split] | None:
    """The preprocessed data and strong-generalization split of a dataset; None when its file is absent."""
    file, n_heldout = DATASETS[name]
    path = SHARED / file
    if not path.exists():
        print(f"skip {name}: {path} not found")
        return None
    data = load_movielens(path)
    return data, strong_generalization(data, n_heldout)
