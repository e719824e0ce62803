"""The experiment report: the CSV files, the plots and the Markdown page.

:func:`write_report` takes the runner's :class:`Outcome` list (one per model,
in config order) and writes ``<name>.csv`` (one row per model),
``<name>_trials.csv`` (every trial of a grid or a search, a search's with its
state: complete, pruned or failed), ``<name>_finalists.csv`` (the finalists
re-scored over seeds, with ``[evaluation] finalists`` > 1), ``<name>_history.csv``
(per-epoch histories), PNG plots and ``<name>.md``, whose path it returns. The Markdown
tables are built with ``DataFrame.to_markdown`` (tabulate). This module words the
Markdown page; the outcomes and the tables built from them live in
:mod:`recvae.experiment.results`, the plots in :mod:`recvae.experiment.plots`.

The paired tests compare every model with the one whose validation
``select_by`` is best (chosen without looking at the test users), and the best
VAE with the best non-VAE, both chosen on validation. They use each user's test
metric averaged over the model's seeds (:attr:`Outcome.test`); the table gives
mean ± sd across seeds beside the 95% CI over users, and ``<name>_test_ci.png``
plots the ``select_by`` CIs.
"""

from __future__ import annotations

import json
import math
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from recvae import __version__
from recvae.data import Interactions, Split
from recvae.models import VAE_MODELS
from recvae.tuning import EDGE_FRACTION, SearchResult
from recvae.experiment.config import ExperimentConfig, repo_root
from recvae.experiment.plots import _plots, _test_ci_plot
from recvae.experiment.results import (
    Outcome,
    SeedRun,
    _paired,
    _reference,
    _runs,
    _search_columns,
    beyond_metrics,
    finalists_table,
    per_user_table,
    results_table,
)

__all__ = ["Outcome", "SeedRun", "finalists_table", "results_table", "write_report"]


def write_report(config: ExperimentConfig, data: Interactions, split: Split, outcomes: list[Outcome], out: Path,
                 seconds: float, *, jobs: int = 1, threads: int | None = None) -> Path:
    """Write the CSV tables, the plots and the Markdown report into ``out``; returns the report's path.

    ``seconds`` is the run's duration so far, printed in the report's header with how the models ran:
    ``jobs`` processes side by side with ``threads`` torch threads each (default: this process's).
    """
    table = results_table(outcomes, config)
    trials = pd.concat([o.search.trials.assign(model=o.spec.label, registry_name=o.spec.name) for o in outcomes],
                       ignore_index=True)
    trials = trials[["model", "registry_name", *[c for c in trials.columns if c not in ("model", "registry_name")]]]
    histories = [o.history.assign(model=o.spec.label) for o in outcomes if o.history is not None]

    table.to_csv(out / f"{config.name}.csv", index=False)
    trials.to_csv(out / f"{config.name}_trials.csv", index=False)
    finalists = finalists_table(outcomes)
    if finalists is not None:
        finalists.to_csv(out / f"{config.name}_finalists.csv", index=False)
    else:  # an earlier run's table would pass for this run's
        (out / f"{config.name}_finalists.csv").unlink(missing_ok=True)
    if outcomes:
        per_user_table(outcomes, config.select_by).to_csv(out / f"{config.name}_per_user.csv", index=False)
    if histories:
        pd.concat(histories, ignore_index=True).to_csv(out / f"{config.name}_history.csv", index=False)
    plots, plot_note = _plots(outcomes, out, config.name)
    ci_plot = _test_ci_plot(outcomes, out, config)
    report = _markdown(config, data, split, outcomes, table, plots, plot_note, seconds, ci_plot=ci_plot,
                       jobs=jobs, threads=torch.get_num_threads() if threads is None else threads)
    md_path = out / f"{config.name}.md"
    md_path.write_text(report, encoding="utf-8")
    return md_path


# =============================================================================== cells
def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _p(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2g}"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _markdown_table(cells: list[list[str]], header: list[str]) -> list[str]:
    """A Markdown table of preformatted cells, one line per row.

    disable_numparse keeps "0.4000" from becoming "0.4"; no alignment keeps cells unpadded
    ("| EASE | 0.123 |"), so a report diffs and greps cell by cell.
    """
    frame = pd.DataFrame(cells, columns=header, dtype=object)
    return frame.to_markdown(index=False, disable_numparse=True, stralign=None, numalign=None).splitlines()


# =============================================================================== Markdown
def _markdown(config: ExperimentConfig, data: Interactions, split: Split, outcomes: list[Outcome],
              table: pd.DataFrame, plots: list[tuple[str, str]], plot_note: str, seconds: float,
              *, ci_plot: str | None, jobs: int, threads: int) -> str:
    sel = config.select_by
    ref = _reference(outcomes)
    lines = [f"# {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    device = "CUDA available" if torch.cuda.is_available() else "CPU only"
    # A wall-clock search budget buys fewer trials at fewer threads: say how the models ran.
    how = (f"{threads} thread(s)" if jobs == 1
           else f"{jobs} models at a time in worker processes of {threads} thread(s) each")
    lines += [
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} in {seconds / 60:.1f} min with recvae "
        f"{__version__}, torch {torch.__version__} ({device}, {how}), Python {platform.python_version()}. "
        f"Config `{_display_path(config.path)}`, as run:",
        "",
        "```toml",
        config.text.rstrip("\n"),
        "```",
        "",
        "## Data",
        "",
        f"- Source: {config.dataset.describe()}",
        f"- Preprocessing: {data.report}" if data.report is not None else f"- Data: {data!r}",
        f"- Split: {split!r}",
        "",
        f"## Test results ({split.test.n_users:,} test users)",
        "",
        f"Each model's grid (or search space) was searched on the {split.validation.n_users:,} validation users by {sel}; the chosen "
        f"configuration was evaluated once on the test users. {_seeds_sentence(outcomes, config)} Paired tests "
        f"(per-user test {sel} averaged over the model's seeds, paired t-test and Wilcoxon signed-rank) compare "
        f"each model with **{ref.spec.label if ref else '—'}**, the model with the best validation {sel}.",
        "",
    ]
    header = ["model", "seeds", *config.metrics, f"validation {sel}", "fit s (mean per seed)", "best params",
              f"Δ {sel} vs {ref.spec.label if ref else '—'}", "t-test p", "Wilcoxon p"]
    cells = [_result_cells(row, config, ref) for _, row in table.iterrows()]
    lines += _markdown_table(cells, header)
    n_excluded = table["test_users_without_target"].dropna()
    if len(n_excluded) and int(n_excluded.iloc[0]):
        lines += ["", f"{int(n_excluded.iloc[0])} test user(s) have no target (fewer than "
                      f"{config.split.min_events_for_target} events) and are excluded from the means."]
    lines += ["", "Fit seconds: the chosen configuration's training time (including its per-epoch validation "
                  "for the torch models), mean per seed; a blend's own time (tuning its weights on validation, "
                  "seed 0 only) + the mean per-seed time of the fitted models it reuses. Per-seed values: "
                  f"`{config.name}.csv`. Full trials: " f"`{config.name}_trials.csv`.", ""]
    if ci_plot is not None:
        lines += [f"![test {sel} with 95% CIs]({ci_plot})", "",
                  f"Test {sel} per model (seed-averaged mean, bar: 95% CI over test users; ticks: each seed's mean).",
                  ""]
    lines += _beyond_section(config, outcomes, table)
    lines += _budget_section(outcomes)
    lines += _finalists_section(outcomes, config)
    lines += _vae_section(outcomes, sel)
    if config.published is not None:
        lines += _published_section(config, outcomes)
    lines += ["## Training curves", ""]
    if plots:
        lines += [f"![{alt}]({file})" for alt, file in plots]
        lines += ["", "Curves of each model's chosen configuration (its seed-0 fit); per-epoch values in "
                      f"`{config.name}_history.csv`."]
    if plot_note:
        lines += [plot_note]
    lines.append("")
    return "\n".join(lines)


def _result_cells(row: pd.Series, config: ExperimentConfig, ref: Outcome | None) -> list[str]:
    """One row of the test-results table: means ± CI, validation score, chosen parameters, paired test."""
    is_ref = ref is not None and row["model"] == ref.spec.label
    cells = [f"**{row['model']}**" if is_ref else str(row["model"]), str(len(json.loads(row["seeds"])))]
    cells += [_metric_cell(row, m) for m in config.metrics]
    params = _sampled_values(json.loads(row["best_params"]), row)
    extra = []
    extra += _per_seed_notes(row)
    if isinstance(row["blend_weights"], str):
        reused = ", reused for every seed" if len(json.loads(row["seeds"])) > 1 else ""
        extra.append(f"blend weights {row['blend_weights']} (tuned on validation with seed 0{reused})")
    shown = ", ".join([*(f"{k}={v}" for k, v in params.items()), *extra]) or "defaults"
    if isinstance(row.get("edge"), str) and row["edge"]:
        shown += f" (**{row['edge']}**)"
    diff = "reference" if is_ref else (
        f"{_fmt(row['paired_diff'], '+.4f')} [{_fmt(row['paired_diff_ci95_low'], '+.4f')}, "
        f"{_fmt(row['paired_diff_ci95_high'], '+.4f')}]" if math.isfinite(row["paired_diff"]) else "—")
    return [*cells, _fmt(row[f"validation {config.select_by}"]), _fit_cell(row), shown, diff,
            _p(row["t_pvalue"]), _p(row["wilcoxon_pvalue"])]


def _metric_cell(row: pd.Series, metric: str) -> str:
    """``mean ± sd across seeds (±CI over users)``; without ``± sd`` for a model fit once, without the CI
    for a metric of all lists at once (gini, coverage)."""
    sd, ci = row[f"{metric} sd"], row[f"{metric} ci95"]
    spread = f" ± {sd:.4f}" if sd is not None and math.isfinite(sd) else ""
    return f"{row[metric]:.4f}{spread}" + (f" (±{ci:.4f})" if ci is not None and math.isfinite(ci) else "")


def _beyond_section(config: ExperimentConfig, outcomes: list[Outcome], table: pd.DataFrame) -> list[str]:
    """Accuracy beside beyond accuracy: each model's test ``select_by`` and its beyond-accuracy metrics."""
    beyond = beyond_metrics(config, outcomes)
    lines = ["## Beyond accuracy", ""]
    if not beyond:
        return lines + ["None computed (`[evaluation] beyond_accuracy = []`, or a catalogue too small for the "
                        "defaults' k = 20).", ""]
    space = {"cooccurrence": "the cosine of the items' training columns (co-occurrence, the same for every model)",
             "auto": "each model's own item embeddings where it has them, else training co-occurrence",
             "embeddings": "each model's own item embeddings"}[config.diversity_space]
    lines += [f"The same test users' lists, beside the accuracy they buy (definitions: `docs/metrics.md`). "
              "Novelty: mean self-information -log2 p(i) in bits, p(i) the share of training users who had "
              "item i; diversity: mean pairwise cosine distance within a list, over "
              f"{space}; ARP: mean p(i) of the listed items; long tail: share of listed items outside the head "
              "holding 80% of training interactions; Gini: inequality of item exposure over the catalogue "
              "(0 equal, 1 one item); coverage: share of the catalogue listed at all. Cells as above, the CI over "
              "every test user (a list needs no target); Gini and coverage are one number over all lists (no CI). "
              "Higher novelty, diversity, long tail and coverage and lower ARP and Gini mean less popularity-bound lists.", ""]
    sel = config.select_by
    cells = []
    for o, (_, row) in zip(outcomes, table.iterrows()):
        if sel in config.metrics:
            accuracy = _metric_cell(row, sel)
        else:  # tested too, but not a column of the results table
            s = o.test.summary.loc[sel]
            accuracy = f"{s['mean']:.4f} (±{1.96 * s['std_err']:.4f})"
        cells.append([str(row["model"]), accuracy, *(_metric_cell(row, m) for m in beyond)])
    return lines + _markdown_table(cells, ["model", f"test {sel}", *beyond]) + [""]


def _fit_cell(row: pd.Series) -> str:
    """Mean fit seconds per seed; a blend that reuses fitted models: ``own + components``."""
    components = row["component_fit_seconds"]
    if components is None or not math.isfinite(components):
        return f"{row['fit_seconds']:.1f}"
    return f"{row['fit_seconds']:.1f} + components {components:.1f}"


def _per_seed_notes(row: pd.Series) -> list[str]:
    """``best epoch 181`` and ``β reached 0.2``, one value per seed (``181/175/190``) when refit."""
    notes = []
    for column, label, spec in (("best_epoch per seed", "best epoch", "d"),
                                ("beta_reached per seed", "β reached", ".3g")):
        values = [v for v in json.loads(row[column]) if v is not None]
        if values:
            notes.append(f"{label}{'s' if len(values) > 1 and spec == 'd' else ''} "
                         + "/".join(format(v, spec) for v in values))
    reached = row.get("seconds_to_best_epoch")
    if reached is not None and math.isfinite(reached):
        notes.append(f"seed 0 reached its best epoch after {reached:.0f} s")
    return notes


def _seeds_sentence(outcomes: list[Outcome], config: ExperimentConfig) -> str:
    """How the seeds enter the table's cells."""
    refit = [o.spec.label for o in outcomes if len(_runs(o)) > 1]
    if not refit:
        return ("Each model was fit once (deterministic, or [evaluation] seeds = 1). Mean (± 95% CI: 1.96 × "
                "standard error over test users with a target).")
    return (f"Seeded models ({', '.join(refit)}) were then refit with {config.seeds - 1} further seed(s) (seed + 1, "
            "...), each fit evaluated once on the test users; the others are deterministic and were fit once. "
            "Cells: mean over seeds ± standard deviation across seeds (none for a model fit once), then (± 95% CI: "
            "1.96 × standard error over test users with a target of each user's metric averaged over the seeds).")


def _sampled_values(params: dict, row: pd.Series) -> dict:
    """A search's chosen floats to 4 significant digits for the table (full values in ``best_params``)."""
    if row.get("search") in (None, "grid"):
        return params
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}


def _budget_section(outcomes: list[Outcome]) -> list[str]:
    """The tuning budget of each model: grid size or sampler and budget, trials per state, wall time; edge flags."""
    cells = []
    for o in outcomes:
        s, c = o.search, _search_columns(o)
        if isinstance(s, SearchResult):
            # only the torch models (those with a per-epoch history) report scores to prune on
            pruning = "median pruning" if s.prune and o.history is not None else "no pruning"
            how = f"{'TPE' if s.sampler == 'tpe' else 'random'} search, seed {s.seed}, {pruning}"
            budget = f"{s.n_trials} trials" + (f", timeout {s.timeout_s:g} s" if s.timeout_s is not None else "")
            if s.stopped_by_timeout:
                budget += " (timeout reached)"
        else:
            how, budget = "grid", "every combination"
        run = f"{len(s.trials)} ({c['trials_complete']} / {c['trials_pruned']} / {c['trials_failed']})"
        seconds = f"{s.seconds:.1f}" if math.isfinite(s.seconds) else "—"
        cells.append([o.spec.label, how, budget, run, seconds, c["edge"] or "—"])
    lines = ["## Tuning budget", "",
             "Every model was tuned on the validation users only. Trials: run (complete / pruned / failed); a "
             "pruned torch trial stopped when its per-epoch validation NDCG fell below the median of earlier trials "
             "at that epoch; a failed one diverged. Every trial is in the trials CSV with its state.", ""]
    lines += _markdown_table(cells, ["model", "search", "budget", "trials", "wall s", "edge"])
    if any(c[-1] != "—" for c in cells):
        lines += ["", f"Edge: the chosen value lies within {EDGE_FRACTION:.0%} of its range's width from an end "
                      "(on the log scale for a log range), or is the smallest / largest numeric value tried; the "
                      "optimum may lie outside what was searched: widen the grid or search space there."]
    return lines + [""]


def _finalists_section(outcomes: list[Outcome], config: ExperimentConfig) -> list[str]:
    """Each re-scored model's finalists: parameters, validation score per seed and their mean, the one chosen."""
    rescored = [o for o in outcomes if o.search.finalists is not None]
    if not rescored:
        return []
    sel = config.select_by
    lines = ["## Finalists over seeds", "",
             f"A search scores each trial with one seed, so among trials within seed noise of each other it picks "
             f"the luckiest (the winner's curse). With `finalists = {config.finalists}`, each seeded model's "
             f"{config.finalists} best trials were each fit with all {config.seeds} seeds and the one with the best "
             f"validation {sel} averaged over its seeds was chosen (seed 0 is the search's own fit); its fits are "
             f"the ones tested above, and its validation {sel} above is that mean. Full table: "
             f"`{config.name}_finalists.csv`.", ""]
    cells = []
    for o in rescored:
        f = o.search.finalists
        names = [c for c in f.columns if c not in ("finalist", "trial", "fit_seconds", "chosen")
                 and not c.startswith(f"{sel} ")]
        per_seed = [c for c in f.columns if c.startswith(f"{sel} seed ")]
        for _, row in f.iterrows():
            params = ", ".join(f"{n}={float(f'{row[n]:.4g}') if isinstance(row[n], float) else row[n]}"
                               for n in names) or "defaults"
            seeds = " / ".join(_fmt(row[c]) for c in per_seed if row[c] == row[c]) or "—"  # NaN: not fit
            mean = _fmt(row[f"{sel} mean"])
            cells.append([f"**{o.spec.label}**" if row["chosen"] else o.spec.label, str(row["trial"]), params,
                          seeds, f"**{mean}**" if row["chosen"] else mean])
    lines += _markdown_table(cells, ["model", "trial", "parameters", f"validation {sel} per seed",
                                     "mean (chosen in bold)"])
    return lines + [""]


def _display_path(path: Path) -> str:
    root = repo_root(path.parent)
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _vae_section(outcomes: list[Outcome], sel: str) -> list[str]:
    lines = ["## Best VAE vs best non-VAE", ""]
    vaes = [o for o in outcomes if o.spec.is_vae]
    others = [o for o in outcomes if not o.spec.is_vae]
    if not vaes or not others:
        missing = "VAE" if not vaes else "non-VAE"
        return lines + [f"Not compared: the config has no {missing} model "
                        f"(VAEs: {', '.join(sorted(VAE_MODELS))} and blends with a VAE component).", ""]
    best_vae, best_other = _reference(outcomes, vaes), _reference(outcomes, others)
    if best_vae is None or best_other is None:
        return lines + ["Not compared: no finite validation score.", ""]
    test = _paired(best_vae, best_other, sel)
    lines.append(f"Each side's best chosen on validation {sel}: **{best_vae.spec.label}** (validation "
                 f"{best_vae.search.best_score:.4f}) vs **{best_other.spec.label}** (validation "
                 f"{best_other.search.best_score:.4f}).")
    if test is None:
        return lines + ["", "Too few test users with a value under both models for a paired test.", ""]
    lines += [
        "",
        f"- Test {sel}: {test['mean_a']:.4f} vs {test['mean_b']:.4f}, difference {test['mean_diff']:+.4f} "
        f"(95% CI [{test['diff_ci95_low']:+.4f}, {test['diff_ci95_high']:+.4f}]), paired t-test p = "
        f"{test['t_pvalue']:.3g}, Wilcoxon p = {test['wilcoxon_pvalue']:.3g}, n = {test['n_users']} users; each "
        f"user's {sel} averaged over {len(_runs(best_vae))} and {len(_runs(best_other))} seed(s).",
        "",
    ]
    return lines + _fit_once_section(outcomes, others, sel)


def _fit_once_section(outcomes: list[Outcome], others: list[Outcome], sel: str) -> list[str]:
    """The best VAE-family model a user fits once (no blend of separately fitted models) against every
    non-VAE model, each paired test on the per-user metric averaged over the seeds."""
    single = [o for o in outcomes if o.spec.is_vae and o.spec.name != "blend"]
    best = _reference(outcomes, single)
    if best is None:
        return []
    lines = ["## The best VAE fit once vs each non-VAE model", "",
             f"**{best.spec.label}** has the best validation {sel} ({best.search.best_score:.4f}) of the VAE-family "
             "models fit once (blends of separately fitted models excluded). Paired tests on the test users:", "",
             f"| model | its test {sel} | {best.spec.label} | difference [95% CI] | t-test p | Wilcoxon p |",
             "|---|---|---|---|---|---|"]
    for other in others:
        test = _paired(best, other, sel)
        if test is None:
            continue
        lines.append(f"| {other.spec.label} | {test['mean_b']:.4f} | {test['mean_a']:.4f} | "
                     f"{test['mean_diff']:+.4f} [{test['diff_ci95_low']:+.4f}, {test['diff_ci95_high']:+.4f}] | "
                     f"{_p(test['t_pvalue'])} | {_p(test['wilcoxon_pvalue'])} |")
    return lines + [""]


def _published_section(config: ExperimentConfig, outcomes: list[Outcome]) -> list[str]:
    pub = config.published
    keys = list(dict.fromkeys(k for row in pub.rows for k in row if k not in ("model", "note")))
    by_name: dict[str, Outcome] = {}
    for o in outcomes:
        by_name.setdefault(_norm(o.spec.label), o)
        by_name.setdefault(_norm(o.spec.name), o)
    header = ["model", *(c for k in keys for c in (f"{k} published", f"{k} ours")), "note"]
    cells = []
    for row in pub.rows:
        ours = by_name.get(_norm(row["model"]))
        line = [row["model"]]
        for k in keys:
            line.append(_fmt(row.get(k), ".3f") if k in row else "—")
            if ours is not None and k in ours.test.summary.index:
                s = ours.test.summary.loc[k]
                line.append(f"{s['mean']:.4f} ± {1.96 * s['std_err']:.4f}")
            else:
                line.append("—")
        line.append(str(row.get("note", "")))
        cells.append(line)
    lines = ["## Published numbers beside ours", "", f"Published: {pub.source}. Ours: the test results above "
             "(mean ± 95% CI); — where the config has no such model. Compare only numbers from the same protocol "
             "and metric definitions (Recall@k here divides by min(k, |target|)).", ""]
    return lines + _markdown_table(cells, header) + [""]
