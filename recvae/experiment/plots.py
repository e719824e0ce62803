"""The report's PNG plots: validation NDCG and beta per epoch from the histories, and each model's test
metric with its 95% CI. matplotlib is optional: without it no plot is drawn and the report says so."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from recvae.experiment.config import ExperimentConfig
from recvae.experiment.results import Outcome, _runs

logger = logging.getLogger("recvae.experiment.report")  # the report's logger, as before the split


def _plots(outcomes: list[Outcome], out: Path, name: str) -> tuple[list[tuple[str, str]], str]:
    """PNG plots of the per-epoch histories; returns (alt text, file name) pairs and a note."""
    with_history = [o for o in outcomes if o.history is not None]
    if not with_history:
        return [], "No model of this config records a per-epoch history (only the torch models do)."
    try:
        # imported here, not at the top: matplotlib is slow to import and the report works without it
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return [], "Plots skipped: matplotlib is not installed (`pip install matplotlib`)."

    def figure():
        fig = Figure(figsize=(7, 4.2), dpi=110)
        FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
        ax = fig.subplots()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return fig, ax

    plots, notes = [], []
    val = [(o, _val_column(o.history)) for o in with_history]
    val = [(o, c) for o, c in val if c is not None]
    if val:
        fig, ax = figure()
        columns = sorted({c for _, c in val})
        for o, c in val:
            h = o.history.dropna(subset=[c])
            (line,) = ax.plot(h["epoch"], h[c], label=o.spec.label, linewidth=1.4)
            if o.best_epoch is not None and (h["epoch"] == o.best_epoch).any():
                best = h.loc[h["epoch"] == o.best_epoch, c].iloc[0]
                ax.plot([o.best_epoch], [best], "o", color=line.get_color(), markersize=5)
        metric = columns[0].removeprefix("val_").replace("ndcg", "NDCG") if len(columns) == 1 else "NDCG@k"
        ax.set(xlabel="epoch", ylabel=f"validation {metric}",
               title=f"{name}: validation {metric} per epoch (dot: selected epoch)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = f"{name}_val_ndcg.png"
        fig.savefig(out / file)
        plots.append((f"validation {metric} per epoch", file))
    beta = [o for o in with_history if "beta" in o.history.columns and o.history["beta"].notna().any()]
    if beta:
        fig, ax = figure()
        for o in beta:
            ax.plot(o.history["epoch"], o.history["beta"], label=o.spec.label, linewidth=1.4)
        ax.set(xlabel="epoch", ylabel="β (KL weight) at the end of the epoch", title=f"{name}: β schedule per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = f"{name}_beta.png"
        fig.savefig(out / file)
        plots.append(("β per epoch", file))
        if any(o.spec.name == "recvae" for o in beta):
            notes.append("RecVAE's β is per user (γ·|x_u|); its curve is the mean over training users.")
    without_beta = [o.spec.label for o in with_history if o not in beta]
    if without_beta:
        notes.append(f"No β column in the history of: {', '.join(without_beta)}.")
    return plots, " ".join(notes)


def _test_ci_plot(outcomes: list[Outcome], out: Path, config: ExperimentConfig) -> str | None:
    """``<name>_test_ci.png``: each model's test ``select_by`` with its 95% CI, sorted; returns the file name."""
    sel = config.select_by
    rows = [(o, o.test.summary.loc[sel]) for o in outcomes if sel in o.test.summary.index]
    rows = sorted([(o, r) for o, r in rows if math.isfinite(r["mean"])], key=lambda x: x[1]["mean"])
    if not rows:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no test CI plot (pip install matplotlib)")
        return None
    fig = Figure(figsize=(7, 1.2 + 0.38 * len(rows)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(rows))
    means = np.array([r["mean"] for _, r in rows])
    ax.errorbar(means, y, xerr=1.96 * np.array([r["std_err"] for _, r in rows]), fmt="o", color="black",
                ecolor="tab:blue", elinewidth=2, capsize=3, label="seed-averaged mean, 95% CI over users")
    per_seed = [(i, float(run.test.summary.loc[sel, "mean"])) for i, (o, _) in enumerate(rows)
                for run in _runs(o) if len(_runs(o)) > 1]
    if per_seed:
        ax.plot([v for _, v in per_seed], [i for i, _ in per_seed], "|", color="tab:orange", markersize=10,
                label="each seed's mean")
    ax.set_yticks(y, [o.spec.label for o, _ in rows])
    ax.set(xlabel=f"test {sel}", title=f"{config.name}: test {sel} (95% CI over test users)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    file = f"{config.name}_test_ci.png"
    fig.savefig(out / file)
    return file


def _val_column(history: pd.DataFrame) -> str | None:
    if "val_ndcg@100" in history.columns and history["val_ndcg@100"].notna().any():
        return "val_ndcg@100"
    for c in history.columns:
        if str(c).startswith("val_ndcg@") and history[c].notna().any():
            return c
    return None
