"""Are the scores of this tree bit-for-bit those of another commit? (A check for refactors.)

Trains Mult-VAE, Mult-DAE, RecVAE, EASE, ALS, item-KNN and popularity with fixed
seeds on a small synthetic split, once with the package of ``--ref`` (extracted
with ``git archive`` into a temporary folder) and once with the working tree, each
in its own process, and compares every score array exactly.

    python tools/compare_scores.py --ref 452e14d      # exit 0 when identical

Only public names that exist in both versions are used (``recvae.data``, ``recvae.models``,
``recvae.training`` and the model constructors with config dataclasses).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SCORER = r'''
import sys
import numpy as np
import torch
torch.set_num_threads(1)
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import ALS, EASE, ItemKNN, MultDAE, MultVAE, Popularity, RecVAE, RecVAEConfig, VAEConfig
from recvae.training import TrainingConfig

data = synthetic_interactions(SyntheticConfig(n_users=400, n_items=120, seed=11))
split = strong_generalization(data, 40, seed=7)
rows = split.test.fold_in
train = TrainingConfig(epochs=4, batch_size=64, seed=3, device="cpu", progress=False, eval_k=50, precision="fp32")
models = {
    "mult-vae": MultVAE(VAEConfig(hidden_dims=(32,), latent_dim=8), train),
    "mult-dae": MultDAE(VAEConfig(hidden_dims=(), latent_dim=16, variational=False), train),
    "recvae": RecVAE(RecVAEConfig(hidden_dim=32, latent_dim=8), TrainingConfig(
        epochs=3, batch_size=64, seed=3, device="cpu", progress=False, eval_k=50, lr=5e-4, precision="fp32")),
    "ease": EASE(l2=50.0),
    "als": ALS(factors=8, iterations=3, seed=1),
    "itemknn": ItemKNN(k=20),
    "popularity": Popularity(),
}
out = {}
for name, model in models.items():
    out[name] = np.asarray(model.fit(split).score(rows), dtype=np.float64)
np.savez(sys.argv[1], **out)
'''


def _scores(package_root: Path, target: Path) -> dict[str, np.ndarray]:
    env = {"PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", SCORER, str(target)], check=True, env=env, cwd=package_root)
    with np.load(target) as z:
        return {k: z[k] for k in z.files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with (e.g. a commit before a refactor)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old_root = Path(tmp) / "old"
        old_root.mkdir()
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "archive", "-o", str(archive), args.ref, "recvae"], check=True, cwd=ROOT)
        with tarfile.open(archive) as tar:
            tar.extractall(old_root, filter="data")
        old = _scores(old_root, Path(tmp) / "old.npz")
        new = _scores(ROOT, Path(tmp) / "new.npz")
    same = True
    for name in old:
        identical = old[name].shape == new[name].shape and np.array_equal(old[name], new[name])
        diff = float(np.abs(old[name] - new[name]).max()) if old[name].shape == new[name].shape else float("nan")
        print(f"{name:<12} {'identical' if identical else f'DIFFERENT (max |diff| {diff:.3g})'}")
        same &= identical
    print("bit-for-bit identical" if same else "scores differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
