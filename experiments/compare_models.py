"""Every model of the library under one harness, each tuned on validation users only.

For each dataset (Liang et al.'s protocol, strong generalization, seed 98765): grid
search on validation NDCG@100 per model (every trial written to
results/<dataset>_trials.csv), then test NDCG@100, Recall@20, Recall@50 (mean ±
95% CI) and fit seconds of each model's best configuration, and the paired test
(t-test and Wilcoxon) of Mult-VAE against the best other model. Test users are
touched once per model, after tuning.

    python experiments/compare_models.py                          # all datasets found
    python experiments/compare_models.py --datasets ml-100k --vae-epochs 50

Prints the table and writes results/<dataset>_models.md / .csv. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import pandas as pd

from recvae.evaluation import evaluate, paired_comparison
from recvae.models import MultDAE, MultVAE, RecVAE
from recvae.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity
from recvae.training import TrainingConfig
from recvae.tuning import grid_search

from protocol_datasets import DATASETS, RESULTS, load_protocol_split


def model_grids(vae_epochs: int) -> dict[str, tuple]:
    """name -> (factory, grid). The grids are the ones reported in the results."""
    vae_training = TrainingConfig(epochs=vae_epochs, progress=False)
    dae_training = TrainingConfig(epochs=vae_epochs, progress=False, weight_decay=0.01 / 500,
                                  anneal=MultDAE.default_training().anneal)
    return {
        "Popularity": (Popularity, {}),
        "ItemKNN": (ItemKNN, {"similarity": ["cosine", "bm25"], "k": [50, 100, 200, 400]}),
        "ALS": (ALS, {"factors": [64, 128, 256], "regularization": [1.0, 10.0, 50.0, 200.0], "alpha": [1.0, 3.0]}),
        "BPR": (BPR, {"factors": [64, 128], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01]}),
        "EASE": (EASE, {"l2": [100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0]}),
        "Mult-DAE": (lambda: MultDAE(training=dae_training), {}),
        "Mult-VAE": (lambda: MultVAE(training=vae_training), {}),
        # The authors' settings (50 epochs of 3 encoder + 1 decoder passes, lr 5e-4, gamma 0.005).
        "RecVAE": (lambda: RecVAE(training=replace(RecVAE.default_training(), progress=False)), {}),
    }


def run_dataset(name: str, vae_epochs: int, models: list[str], tag: str = "") -> pd.DataFrame | None:
    loaded = load_protocol_split(name)
    if loaded is None:
        return None
    data, split = loaded
    print(f"\n== {name}: {data.report}\n{split}")
    rows, trials, results = [], [], {}
    for model_name, (factory, grid) in model_grids(vae_epochs).items():
        if models and model_name not in models:
            continue
        search = grid_search(factory, grid, split, progress=False)
        t = search.trials.assign(model=model_name)
        trials.append(t)
        started = time.perf_counter()
        result = evaluate(search.best_model, split, "test")
        results[model_name] = result
        s = result.summary
        fit_seconds = float(t.loc[t["ndcg@100"].idxmax(), "fit_seconds"])
        rows.append({
            "model": model_name,
            **{m: s.loc[m, "mean"] for m in ("ndcg@100", "recall@20", "recall@50")},
            **{f"{m} ci95": 1.96 * s.loc[m, "std_err"] for m in ("ndcg@100", "recall@20", "recall@50")},
            "validation ndcg@100": search.best_score,
            "fit s": fit_seconds,
            "trials": len(t),
            "best params": json.dumps(search.best_params),
        })
        print(f"{model_name:10s} test ndcg@100 {rows[-1]['ndcg@100']:.4f} ± {rows[-1]['ndcg@100 ci95']:.4f} "
              f"(validation {search.best_score:.4f}, {len(t)} trials, best {search.best_params}, "
              f"test eval {time.perf_counter() - started:.1f}s)")
    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pd.concat(trials).to_csv(RESULTS / f"{name}{tag}_trials.csv", index=False)
    table.to_csv(RESULTS / f"{name}{tag}_models.csv", index=False)
    lines = [f"# {name}: test users, Liang et al. protocol ({split.test.n_users} test users, seed 98765)\n",
             table.to_markdown(index=False, floatfmt=".4f"), ""]
    vaes = [m for m in ("Mult-VAE", "RecVAE") if m in results]
    others = [m for m in results if m not in ("Mult-VAE", "RecVAE", "Mult-DAE")]
    if others:
        best_other = max(others, key=lambda m: results[m]["ndcg@100"])
        for vae in vaes:
            test = paired_comparison(results[vae], results[best_other], "ndcg@100")
            lines.append(f"- {vae} vs {best_other} (best non-VAE model) on test NDCG@100: difference "
                         f"{test['mean_diff']:+.4f} [{test['diff_ci95_low']:+.4f}, {test['diff_ci95_high']:+.4f}], "
                         f"paired t-test p = {test['t_pvalue']:.3g}, Wilcoxon p = {test['wilcoxon_pvalue']:.3g}, "
                         f"n = {test['n_users']}")
    (RESULTS / f"{name}{tag}_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="*", default=[], help="subset of models (default all)")
    parser.add_argument("--vae-epochs", type=int, default=200)
    parser.add_argument("--tag", default="", help="suffix of the results files (e.g. for a subset of models)")
    args = parser.parse_args()
    for name in args.datasets:
        run_dataset(name, args.vae_epochs, args.models, args.tag)


if __name__ == "__main__":
    main()
