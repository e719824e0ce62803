"""The embedded default job: Mult-VAE and baselines on a seeded synthetic MovieLens-style log (no download)."""

from __future__ import annotations

import time

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate, paired_comparison
from recvae.models import EASE, MultDAE, MultVAE, Popularity
from recvae.training import TrainingConfig

__all__ = ["run_demo"]


def run_demo(users: int = 3000, items: int = 1500, epochs: int = 40, seed: int = 0, device: str = "auto",
             progress: bool | None = None) -> int:
    """Train Mult-VAE, Mult-DAE, popularity and EASE on seeded synthetic data; print the comparison."""
    import dataclasses

    import pandas as pd


    if users < 50 or items < 20:
        raise ValueError("the demo needs users >= 50 and items >= 20 (--users, --items)")
    data = synthetic_interactions(SyntheticConfig(n_users=users, n_items=items, seed=seed))
    print(f"Synthetic MovieLens-style data: {data.report}")
    split = strong_generalization(data, 0.1)
    print(f"Strong-generalization split (Liang et al.): {split}\n")

    training = TrainingConfig(epochs=epochs, seed=seed, device=device, progress=progress is not False)
    models = {
        "Mult-VAE": MultVAE(training=training),
        "Mult-DAE": MultDAE(training=dataclasses.replace(MultDAE.default_training(), epochs=epochs,
                                                          seed=seed, device=device,
                                                          progress=progress is not False)),
    }
    models.update(_baselines())
    results, rows = {}, []
    for name, model in models.items():
        started = time.perf_counter()
        model.fit(split)
        fit_seconds = time.perf_counter() - started
        results[name] = evaluate(model, split, "test")
        s = results[name].summary
        rows.append({"model": name, **{m: f"{s.loc[m, 'mean']:.4f} ± {1.96 * s.loc[m, 'std_err']:.4f}"
                                       for m in ("ndcg@100", "recall@20", "recall@50")},
                     "fit s": f"{fit_seconds:.1f}"})
    print("\nTest users (fold-in 80% of their items, predict the other 20%; mean ± 95% CI):")
    print(pd.DataFrame(rows).to_string(index=False))
    best_other = max((n for n in results if n != "Mult-VAE"), key=lambda n: results[n]["ndcg@100"])
    test = paired_comparison(results["Mult-VAE"], results[best_other], "ndcg@100")
    print(f"\nMult-VAE vs {best_other}: NDCG@100 difference {test['mean_diff']:+.4f} "
          f"(paired t-test p = {test['t_pvalue']:.2g}, Wilcoxon p = {test['wilcoxon_pvalue']:.2g})")

    vae = models["Mult-VAE"]
    history = split.item_ids[:5].tolist()
    recs = vae.recommend_for_items(history, k=5)
    print(f"\nA new user who liked items {history} gets (fold-in, no retraining): {recs.item_ids[0].tolist()}")
    mu, sigma = vae.embed_users(split.test.fold_in[:3])
    print(f"User embeddings: mu {mu.shape}, sigma {sigma.shape}; first user's mean sigma {sigma[0].mean():.3f}")
    return 0


def _baselines() -> dict:
    """Baselines available in this installation (popularity, EASE)."""
    return {"Popularity": Popularity(), "EASE": EASE()}
