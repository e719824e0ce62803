"""The TOML experiment runner: a tiny end-to-end run, config validation, shipped configs."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from recvae.experiment import load_config, load_dataset, resolve_dataset_path, run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

SYNTHETIC = """
name = "tiny"
[dataset]
synthetic = { n_users = 300, n_items = 100, seed = 0 }
rating_threshold = 3.5
min_user_interactions = 5
[split]
kind = "strong"
heldout_users = 30
[evaluation]
metrics = ["ndcg@100", "recall@20", "recall@50"]
select_by = "ndcg@100"
seeds = 2
[[models]]
name = "popularity"
label = "Popularity"
[[models]]
name = "ease"
label = "EASE"
grid = { l2 = [10.0, 100.0] }
[[models]]
name = "mult-vae"
label = "Mult-VAE"
params = { epochs = 2 }
"""

BLEND = """
[[models]]
name = "blend"
label = "Mult-VAE + EASE"
params = { components = [ { ref = "EASE" }, { ref = "Mult-VAE" } ], weight_step = 0.5 }
"""

PUBLISHED = """
[published]
source = "Made-up paper, Table 9"
rows = [ { model = "Mult-VAE", "recall@20" = 0.123, "ndcg@100" = 0.456, note = "made up" },
         { model = "SLIM", "ndcg@100" = 0.401 } ]
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """One end-to-end run (seeds = 2): the report, every fit counted by model class, and what the report got."""
    import recvae.experiment.runner as runner
    from recvae.models import EASE, Blend, MultVAE, Popularity

    tmp = tmp_path_factory.mktemp("experiment")
    config = write(tmp, SYNTHETIC + BLEND + PUBLISHED)
    fits: Counter = Counter()
    blends: list = []  # every Blend fitted, in order
    seen: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        for cls in (Popularity, EASE, MultVAE, Blend):
            def counted(self, *args, _fit=cls.fit, _name=cls.__name__, **kwargs):
                fits[_name] += 1
                if _name == "Blend":
                    blends.append(self)
                return _fit(self, *args, **kwargs)

            mp.setattr(cls, "fit", counted)

        def write_report(config, data, split, outcomes, out, seconds, _write=runner.write_report, **how):
            seen.update(split=split, outcomes={o.spec.label: o for o in outcomes})
            return _write(config, data, split, outcomes, out, seconds, **how)

        mp.setattr(runner, "write_report", write_report)
        report = run_experiment(config, output_dir=tmp / "results", progress=False)
    return SimpleNamespace(report=report, config=config, fits=fits, blends=blends, **seen)


@pytest.fixture(scope="module")
def report(run) -> Path:
    return run.report


def test_run_writes_report_tables_and_plots(report: Path):
    out = report.parent
    assert report == out / "tiny.md"
    for file in ("tiny.csv", "tiny_trials.csv", "tiny_history.csv"):
        assert (out / file).stat().st_size > 0, file
    if HAS_MATPLOTLIB:  # matplotlib is optional: without it the report says the plots were skipped
        for file in ("tiny_val_ndcg.png", "tiny_beta.png", "tiny_test_ci.png"):
            assert (out / file).read_bytes()[:4] == b"\x89PNG", file
    else:
        assert "matplotlib is not installed" in report.read_text()
    table = pd.read_csv(out / "tiny.csv")
    assert list(table["model"]) == ["Popularity", "EASE", "Mult-VAE", "Mult-VAE + EASE"]
    for column in ("ndcg@100", "ndcg@100 ci95", "recall@20", "recall@50", "validation ndcg@100", "fit_seconds",
                   "best_params", "t_pvalue", "wilcoxon_pvalue"):
        assert column in table.columns, column
    assert table["ndcg@100"].between(0, 1).all()
    assert (table["ndcg@100"] > 0).all()
    trials = pd.read_csv(out / "tiny_trials.csv")
    assert (trials["model"] == "EASE").sum() == 2  # every grid trial is recorded
    assert sorted(trials.loc[trials["model"] == "EASE", "l2"]) == [10.0, 100.0]
    history = pd.read_csv(out / "tiny_history.csv")
    assert set(history["model"]) == {"Mult-VAE"} and list(history["epoch"]) == [1, 2]


def test_report_numbers_are_the_chosen_models_measured_on_the_test_users(report: Path):
    """The table's test columns equal evaluate(model, split, "test") for a model refitted here,
    on test users whose ids differ from the validation users'; CIs and paired differences follow."""
    from recvae.data import strong_generalization
    from recvae.evaluation import evaluate
    from recvae.models import EASE, Popularity

    config = load_config(report.parent.parent / "config.toml")
    s = config.split
    split = strong_generalization(load_dataset(config), s.heldout_users, target_fraction=s.target_fraction,
                                  min_events_for_target=s.min_events_for_target, seed=s.seed)
    assert not set(split.test.user_ids.tolist()) & set(split.validation.user_ids.tolist())
    table = pd.read_csv(report.with_suffix(".csv")).set_index("model")
    ease_l2 = json.loads(table.loc["EASE", "best_params"])["l2"]
    for label, model in (("Popularity", Popularity()), ("EASE", EASE(l2=ease_l2))):
        model.fit(split)
        test = evaluate(model, split, "test", ks=(20, 50, 100))
        row = table.loc[label]
        for metric in ("ndcg@100", "recall@20", "recall@50"):
            assert row[metric] == pytest.approx(test[metric], abs=1e-6), (label, metric)
            assert row[f"{metric} ci95"] == pytest.approx(1.96 * test.summary.loc[metric, "std_err"], abs=1e-6)
        assert row["validation ndcg@100"] == pytest.approx(evaluate(model, split, "validation", ks=(100,))["ndcg@100"],
                                                           abs=1e-6)
    # Paired differences are against the model with the best validation score, as (row - reference).
    reference = table["validation ndcg@100"].idxmax()
    assert (table["paired_reference"] == reference).all()
    for label in table.index.drop(reference):
        diff = table.loc[label, "ndcg@100"] - table.loc[reference, "ndcg@100"]  # every model: the same users
        assert table.loc[label, "paired_diff"] == pytest.approx(diff, abs=1e-6), label


def test_report_has_config_paired_tests_vae_section_and_published(report: Path):
    md = report.read_text()
    assert 'name = "tiny"' in md  # the config, copied into the header
    assert "paired t-test" in md and "Wilcoxon" in md
    table = pd.read_csv(report.with_suffix(".csv"))
    reference = table.loc[table["validation ndcg@100"].idxmax(), "model"]  # the first best on ties
    assert f"compare each model with **{reference}**" in md
    vaes = table[table["vae"]]
    best_vae = vaes.loc[vaes["validation ndcg@100"].idxmax(), "model"]
    assert "## Best VAE vs best non-VAE" in md and f"**{best_vae}**" in md
    assert "Made-up paper, Table 9" in md
    published = md.split("## Published numbers beside ours")[1]
    assert "| Mult-VAE | 0.123 |" in published and "| SLIM |" in published
    if HAS_MATPLOTLIB:
        assert "![validation NDCG@100 per epoch](tiny_val_ndcg.png)" in md
        assert "](tiny_beta.png)" in md
        assert "![test ndcg@100 with 95% CIs](tiny_test_ci.png)" in md


def test_unknown_key_names_it_and_the_fix(tmp_path: Path):
    bad = SYNTHETIC.replace("min_user_interactions = 5", "min_user_events = 5")
    with pytest.raises(ValueError, match=r"min_user_events.*did you mean 'min_user_interactions'"):
        load_config(write(tmp_path, bad))
    with pytest.raises(ValueError, match=r"unknown key 'colour' in top level"):
        load_config(write(tmp_path, 'colour = "red"\n' + SYNTHETIC))


def test_unknown_model_and_bad_parameters(tmp_path: Path):
    with pytest.raises(ValueError, match=r"unknown model name 'multvae'.*did you mean 'mult-vae'"):
        load_config(write(tmp_path, SYNTHETIC.replace('name = "mult-vae"', 'name = "multvae"')))
    with pytest.raises(ValueError, match=r"'EASE'.*l2"):
        load_config(write(tmp_path, SYNTHETIC.replace("l2 = [10.0, 100.0]", "l2 = [10.0, -1.0]")))
    with pytest.raises(ValueError, match=r"'Mult-VAE'.*epoks"):
        load_config(write(tmp_path, SYNTHETIC.replace("epochs = 2", "epoks = 2")))
    with pytest.raises(ValueError, match=r"select_by 'ndcg100'"):
        load_config(write(tmp_path, SYNTHETIC.replace('select_by = "ndcg@100"', 'select_by = "ndcg100"')))
    with pytest.raises(ValueError, match=r"repeats the label 'EASE'"):
        load_config(write(tmp_path, SYNTHETIC.replace('label = "Popularity"', 'label = "EASE"')))
    blend = SYNTHETIC + """
[[models]]
name = "blend"
params = { components = [ { name = "ease" }, { name = "mult_vae" } ] }
"""
    with pytest.raises(ValueError, match=r"'blend'.*unknown model 'mult_vae'"):
        load_config(write(tmp_path, blend))
    assert load_config(write(tmp_path, blend.replace("mult_vae", "mult-vae"))).models[-1].is_vae
    with pytest.raises(ValueError, match=r"exactly one of path, movielens or synthetic"):
        load_config(write(tmp_path, SYNTHETIC.replace("[dataset]", '[dataset]\nmovielens = "ml-100k"')))


def test_missing_dataset_file_names_the_path_and_how_to_get_it(tmp_path: Path):
    text = SYNTHETIC.replace("synthetic = { n_users = 300, n_items = 100, seed = 0 }", 'path = "nowhere/ratings.dat"')
    config_path = write(tmp_path, text)
    load_config(config_path)  # validation reads no data
    with pytest.raises(FileNotFoundError, match=r"nowhere/ratings\.dat.*recvae datasets.*load_movielens"):
        run_experiment(config_path, output_dir=tmp_path / "out", progress=False)


def test_log_files_with_and_without_header(tmp_path: Path):
    # an MSD-like triplet file: tab-separated, no header, play counts; every row positive
    rows = [f"u{u}\ts{i}\t{1 + (u + i) % 3}" for u in range(8) for i in range(u % 4 + 3)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "triplets.txt").write_text("\n".join(rows) + "\n")
    config = write(tmp_path, """
        name = "log"
        [dataset]
        path = "data/triplets.txt"
        sep = "\\t"
        names = ["user", "item", "plays"]
        rating_col = false
        rating_threshold = false
        min_user_interactions = 4
        min_item_interactions = 2
        [split]
        heldout_users = 1
        [[models]]
        name = "popularity"
    """)
    data = load_dataset(load_config(config))
    assert data.report.raw_events == len(rows) and data.report.below_rating_threshold == 0
    assert data.n_users == 6  # users with 4+ events on items held by 2+ users
    # a Netflix-like CSV with a header and its own column names, rating > 3.5
    (tmp_path / "netflix.csv").write_text("cust,movie,stars\n" + "".join(
        f"{u},{i},{4 if i % 2 else 2}\n" for u in range(6) for i in range(12)))
    config = write(tmp_path, """
        name = "netflix-like"
        [dataset]
        path = "netflix.csv"
        user_col = "cust"
        item_col = "movie"
        rating_col = "stars"
        [split]
        heldout_users = 1
        [[models]]
        name = "popularity"
    """, "netflix.toml")
    data = load_dataset(load_config(config))
    assert data.nnz == 36 and data.report.below_rating_threshold == 36


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path):
    config = load_config(path)
    assert config.models and config.name == path.stem
    if config.dataset.source == "path" and "shared/datasets" in config.dataset.value:
        target = CONFIGS.parents[1].parent / config.dataset.value.removeprefix("../")
        if not target.exists():
            pytest.skip(f"{target} is not present")
        assert resolve_dataset_path(config) == target.resolve()


def test_shared_dataset_paths_resolve_beside_the_repository(tmp_path: Path):
    """Synthetic twin of the shipped-config check above (which skips without ../shared/datasets):
    a config in <repo>/experiments/configs naming ../shared/datasets/... finds the file beside the repo."""
    repo = tmp_path / "repo"
    (repo / "experiments" / "configs").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    data = tmp_path / "shared" / "datasets" / "toy" / "ratings.csv"
    data.parent.mkdir(parents=True)
    data.write_text("userId,movieId,rating\n" + "".join(f"{u},{i},5\n" for u in range(12) for i in range(8)))
    text = SYNTHETIC.replace("synthetic = { n_users = 300, n_items = 100, seed = 0 }",
                             'path = "../shared/datasets/toy/ratings.csv"')
    config = load_config(write(repo / "experiments" / "configs", text.replace('name = "tiny"', 'name = "toy"'),
                               "toy.toml"))
    assert config.dataset.source == "path" and "shared/datasets" in config.dataset.value
    assert resolve_dataset_path(config) == data.resolve()
    assert load_dataset(config).nnz == 96


def test_shipped_configs_cover_the_registry_and_the_protocol():
    from recvae.models import MODELS

    for name in ("ml-100k", "ml-1m-half", "ml-1m-implicit", "ml-latest-small"):
        assert {m.name for m in load_config(CONFIGS / f"{name}.toml").models} == set(MODELS), name
    heldout = {"ml-100k": 90, "ml-1m-half": 300, "ml-1m-implicit": 600, "ml-latest-small": 60,
               "ml-20m": 10_000, "netflix": 40_000, "msd": 50_000}
    for name, n in heldout.items():
        config = load_config(CONFIGS / f"{name}.toml")
        assert config.split.heldout_users == n and config.split.seed == 98765, name
    msd = load_config(CONFIGS / "msd.toml").dataset.preprocessing
    assert msd == {"rating_threshold": None, "min_user_interactions": 20, "min_item_interactions": 200}
    ml20m = load_config(CONFIGS / "ml-20m.toml")
    assert ml20m.dataset.value == "ml-20m" and ml20m.published is not None


def test_blend_reuses_each_seeds_fits_of_the_models_it_refers_to(run):
    """Seed 0 blends the tuned fits; seed 1 the seed-1 fit of the seeded Mult-VAE and EASE's only fit,
    with the weights tuned on validation with seed 0."""
    assert load_config(run.config).models[-1].is_vae  # it refers to a VAE, so it counts as one
    ease, vae, blend = (run.outcomes[k] for k in ("EASE", "Mult-VAE", "Mult-VAE + EASE"))
    assert len(run.blends) == 2  # the search's one trial, then seed 1
    tuned, seed1 = run.blends
    assert tuned is blend.search.best_model
    assert tuned.components_[0] is ease.search.best_model and tuned.components_[1] is vae.search.best_model
    vae_seed1 = vae.seed_runs[1].model  # kept because the blend reuses Mult-VAE
    assert vae_seed1.training.seed == vae.search.best_model.training.seed + 1
    assert seed1.components_[0] is ease.search.best_model and seed1.components_[1] is vae_seed1
    np.testing.assert_array_equal(seed1.weights_, tuned.weights_)
    assert blend.seed_runs[1].model is None  # nothing later reuses the blend: its seed-1 fit is not kept
    assert blend.component_fit_seconds == pytest.approx(ease.fit_seconds + vae.fit_seconds)
    row = pd.read_csv(run.report.with_suffix(".csv")).set_index("model").loc["Mult-VAE + EASE"]
    assert row["component_fit_seconds"] == pytest.approx(blend.component_fit_seconds)
    assert f"{row['fit_seconds']:.1f} + components {blend.component_fit_seconds:.1f}" in run.report.read_text()
    assert "reused for every seed" in run.report.read_text()


def test_seeded_models_are_refit_and_deterministic_ones_fit_once(run):
    # Popularity once; EASE once per grid value (2) and never again; Mult-VAE and the blend once more for seed 1.
    # The blend fits none of its components: it reuses the fitted ones.
    assert run.fits == {"Popularity": 1, "EASE": 2, "MultVAE": 2, "Blend": 2}
    table = pd.read_csv(run.report.with_suffix(".csv")).set_index("model")
    expected_seeds = {"Popularity": [0], "EASE": [0], "Mult-VAE": [0, 1], "Mult-VAE + EASE": [0, 1]}
    for label, seeds in expected_seeds.items():
        row, outcome = table.loc[label], run.outcomes[label]
        assert json.loads(row["seeds"]) == seeds == [r.seed for r in outcome.seed_runs], label
        for metric in ("ndcg@100", "recall@20", "recall@50"):
            per_seed = json.loads(row[f"{metric} per seed"])
            assert per_seed == pytest.approx([r.test[metric] for r in outcome.seed_runs])
            assert row[metric] == pytest.approx(np.mean(per_seed)), (label, metric)
            if len(seeds) > 1:
                assert row[f"{metric} sd"] == pytest.approx(np.std(per_seed, ddof=1)), (label, metric)
            else:
                assert np.isnan(row[f"{metric} sd"]), (label, metric)
        per_seed_seconds = json.loads(row["fit_seconds per seed"])
        assert len(per_seed_seconds) == len(seeds)
        assert row["fit_seconds"] == pytest.approx(np.mean(per_seed_seconds), abs=1e-3)
    # another seed gives another Mult-VAE: the seed-averaged numbers are not seed 0's
    vae = run.outcomes["Mult-VAE"]
    assert not np.allclose(vae.seed_runs[0].test.per_user["ndcg@100"], vae.seed_runs[1].test.per_user["ndcg@100"])
    assert json.loads(table.loc["Mult-VAE", "best_epoch per seed"]) == [r.best_epoch for r in vae.seed_runs]
    md = run.report.read_text()
    assert "| Mult-VAE | 2 | " in md and "| Popularity | 1 | " in md
    cell = f"{table.loc['Mult-VAE', 'ndcg@100']:.4f} ± {table.loc['Mult-VAE', 'ndcg@100 sd']:.4f} "
    assert cell + f"(±{table.loc['Mult-VAE', 'ndcg@100 ci95']:.4f})" in md


def test_paired_tests_use_per_user_metrics_averaged_over_seeds(run):
    """Refit every model here, seed by seed, average each user's NDCG@100 over the seeds by hand, and
    recompute the report's paired t-tests and Wilcoxon tests with scipy."""
    from recvae.evaluation import evaluate
    from recvae.models import EASE, Blend, MultVAE, Popularity

    split, table = run.split, pd.read_csv(run.report.with_suffix(".csv")).set_index("model")
    metric = "ndcg@100"

    def per_user(model):
        return evaluate(model, split, "test", ks=(100,), metrics=("ndcg",)).per_user[metric].to_numpy()

    ease = EASE(l2=json.loads(table.loc["EASE", "best_params"])["l2"]).fit(split)
    vaes = [MultVAE(epochs=2, seed=s, progress=False).fit(split) for s in (0, 1)]
    weights = json.loads(table.loc["Mult-VAE + EASE", "blend_weights"])
    values = {
        "Popularity": [per_user(Popularity().fit(split))],
        "EASE": [per_user(ease)],
        "Mult-VAE": [per_user(v) for v in vaes],
        "Mult-VAE + EASE": [per_user(Blend([ease, v], weights=weights).fit(split)) for v in vaes],
    }
    for label, runs in values.items():  # the runner's fits are these, seed by seed
        for s, mine in enumerate(runs):
            theirs = run.outcomes[label].seed_runs[s].test.per_user[metric].to_numpy()
            np.testing.assert_allclose(theirs, mine, atol=1e-6, err_msg=f"{label} seed {s}")
    averaged = {label: np.mean(runs, axis=0) for label, runs in values.items()}
    reference = table["paired_reference"].iloc[0]
    for label in table.index.drop(reference):
        x, y = averaged[label], averaged[reference]
        keep = ~(np.isnan(x) | np.isnan(y))
        x, y = x[keep], y[keep]
        row = table.loc[label]
        assert row["paired_diff"] == pytest.approx(np.mean(x - y), abs=1e-9), label
        if np.any(x != y):
            assert row["t_pvalue"] == pytest.approx(scipy.stats.ttest_rel(x, y).pvalue, rel=1e-6), label
            assert row["wilcoxon_pvalue"] == pytest.approx(scipy.stats.wilcoxon(x, y).pvalue, rel=1e-6), label
        else:
            assert row["wilcoxon_pvalue"] == 1.0, label
    # the headline: best VAE vs best non-VAE, both chosen on validation, on the seed-averaged values
    by_validation = table.sort_values(f"validation {metric}", ascending=False, kind="stable")
    best_vae = by_validation[by_validation["vae"]].index[0]
    best_other = by_validation[~by_validation["vae"]].index[0]
    x, y = averaged[best_vae], averaged[best_other]
    section = run.report.read_text().split("## Best VAE vs best non-VAE")[1].split("##")[0]
    assert f"Test {metric}: {x.mean():.4f} vs {y.mean():.4f}" in section
    if np.any(x != y):
        assert f"paired t-test p = {scipy.stats.ttest_rel(x, y).pvalue:.3g}" in section
    assert "averaged over 2 and 1 seed(s)" in section
    # every user's seed-averaged value, per model, is written for checks like these
    per_user_csv = pd.read_csv(run.report.with_name("tiny_per_user.csv"))
    for label, values_averaged in averaged.items():
        np.testing.assert_allclose(per_user_csv[label].to_numpy(), values_averaged, atol=1e-9, err_msg=label)
    # the best VAE fit once (not the blend) against each non-VAE model
    fit_once = run.report.read_text().split("## The best VAE fit once vs each non-VAE model")[1].split("##")[0]
    assert "**Mult-VAE**" in fit_once and "Mult-VAE + EASE |" not in fit_once
    for label in ("Popularity", "EASE"):
        x, y = averaged["Mult-VAE"], averaged[label]
        line = next(row for row in fit_once.splitlines() if row.startswith(f"| {label} |"))
        assert f"{np.mean(x - y):+.4f}" in line, line
        assert f"| {scipy.stats.ttest_rel(x, y).pvalue:.2g} |" in line, line


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true", '"2"'])
def test_seeds_must_be_a_positive_integer(tmp_path, value):
    with pytest.raises(ValueError, match=r"evaluation\.seeds: must be an integer >= 1") as err:
        load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", f"seeds = {value}")))
    assert "\n" not in str(err.value)


def test_seeds_default_to_three(tmp_path):
    assert load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2\n", ""))).seeds == 3
    assert load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", "seeds = 1"))).seeds == 1


@pytest.mark.parametrize("component", ['{ ref = "Nope" }', '{ ref = "EASE", name = "ease" }'])
def test_blend_references_must_name_an_earlier_entry(tmp_path, component):
    blend = f"""
    [[models]]
    name = "blend"
    params = {{ components = [ {component} ] }}
    """
    with pytest.raises(ValueError, match="earlier"):
        load_config(write(tmp_path, SYNTHETIC + blend))


@pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")
def test_jobs_run_entries_in_worker_processes_with_the_sequential_results(tmp_path):
    """jobs = 2: Popularity, EASE and Mult-VAE in two worker processes, then the blend that reuses EASE's and
    Mult-VAE's fits in this process; every number equals a sequential run's (one thread each way)."""
    import recvae.experiment.runner as runner

    config = write(tmp_path, SYNTHETIC + BLEND)
    one = run_experiment(config, output_dir=tmp_path / "one", progress=False)
    ran_here: list[str] = []  # entries this process ran itself (the workers do not see this patch)

    def recorded(spec, *args, _run=runner._tune_test_and_refit):
        ran_here.append(spec.label)
        return _run(spec, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_tune_test_and_refit", recorded)
        two = run_experiment(config, output_dir=tmp_path / "two", progress=False, jobs=2)
    assert ran_here == ["Mult-VAE + EASE"]
    # the header says how the models ran: a wall-clock search budget buys fewer trials at fewer threads
    assert "(CPU only, 2 models at a time in worker processes of 1 thread(s) each)" in two.read_text()
    assert "(CPU only, 1 thread(s))" in one.read_text()
    a, b = pd.read_csv(one.with_suffix(".csv")), pd.read_csv(two.with_suffix(".csv"))
    assert list(b["model"]) == ["Popularity", "EASE", "Mult-VAE", "Mult-VAE + EASE"] == list(a["model"])
    for column in ("ndcg@100", "recall@20", "recall@50", "validation ndcg@100", "t_pvalue", "paired_diff"):
        np.testing.assert_allclose(b[column], a[column], rtol=1e-6, err_msg=column)
    assert list(b["best_params"]) == list(a["best_params"]) and list(b["seeds"]) == list(a["seeds"])
    per_user_a = pd.read_csv(one.parent / "tiny_per_user.csv")
    per_user_b = pd.read_csv(two.parent / "tiny_per_user.csv")
    np.testing.assert_allclose(per_user_b.to_numpy(float), per_user_a.to_numpy(float), rtol=1e-6)


def test_workers_take_the_longest_searches_first(tmp_path):
    """A search without a timeout, then the longer-budgeted search, then grids and fixed entries in config order;
    a blend's references are never handed to a worker."""
    from recvae.experiment.runner import submission_order

    searches = """
[[models]]
name = "mult-dae"
label = "DAE short"
search = { lr = { low = 1e-4, high = 1e-2, log = true } }
budget = { trials = 3, timeout_s = 60 }
[[models]]
name = "mult-dae"
label = "DAE long"
search = { lr = { low = 1e-4, high = 1e-2, log = true } }
budget = { trials = 3, timeout_s = 600 }
[[models]]
name = "mult-dae"
label = "DAE untimed"
search = { lr = { low = 1e-4, high = 1e-2, log = true } }
budget = { trials = 3 }
"""
    config = load_config(write(tmp_path, SYNTHETIC + searches))
    labels = [m.label for m in config.models]
    order = submission_order(config.models, range(len(config.models)))
    assert [labels[i] for i in order] == ["DAE untimed", "DAE long", "DAE short", "Popularity", "EASE", "Mult-VAE"]
    assert submission_order(config.models, [1, 4, 0]) == [4, 0, 1]


def test_jobs_must_be_a_positive_integer(tmp_path):
    config = write(tmp_path, SYNTHETIC)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            run_experiment(config, output_dir=tmp_path / "out", progress=False, jobs=bad)
    from recvae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["experiment", str(config), "--jobs", "0"])
    assert "--jobs 0" in str(info.value) and "\n" not in str(info.value)


def test_each_worker_gets_an_equal_share_of_the_threads():
    import torch

    from recvae.experiment.runner import worker_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert [worker_threads(j) for j in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
        torch.set_num_threads(1)
        assert worker_threads(2) == 1
    finally:
        torch.set_num_threads(before)


def test_the_report_says_when_each_torch_model_reached_its_best_epoch(report: Path):
    """Time to quality: the seconds (training and validation) to the chosen epoch, from the history's wall time."""
    table = pd.read_csv(report.with_suffix(".csv"))
    history = pd.read_csv(report.parent / "tiny_history.csv")
    vaes = table[table["best_epoch"].notna()]
    assert len(vaes)
    md = report.read_text()
    for _, row in vaes.iterrows():
        own = history[history["model"] == row["model"]]
        expected = own.loc[own["epoch"] == row["best_epoch"], "elapsed_seconds"].iloc[0]
        assert row["seconds_to_best_epoch"] == pytest.approx(expected)
        assert f"seed 0 reached its best epoch after {expected:.0f} s" in md
    assert table.loc[table["best_epoch"].isna(), "seconds_to_best_epoch"].isna().all()


# ============================================================================ beyond accuracy
BEYOND = ("novelty@20", "diversity@20", "arp@20", "long_tail@20", "gini@20", "coverage@20")


def test_report_shows_beyond_accuracy_beside_accuracy_measured_on_the_test_users(run):
    """The default beyond-accuracy columns (co-occurrence diversity) equal evaluate(...) on the test users of
    each model fit here (EASE, Popularity; Mult-VAE's seeds averaged), and the report's table shows them
    beside test NDCG@100: per-user metrics with a CI, Gini and coverage without."""
    from recvae.evaluation import evaluate
    from recvae.models import EASE, MultVAE, Popularity

    split, table = run.split, pd.read_csv(run.report.with_suffix(".csv")).set_index("model")
    ease = EASE(l2=json.loads(table.loc["EASE", "best_params"])["l2"])
    vaes = [MultVAE(epochs=2, seed=s, progress=False) for s in (0, 1)]
    for label, models in (("Popularity", [Popularity()]), ("EASE", [ease]), ("Mult-VAE", vaes)):
        tests = [evaluate(m.fit(split), split, "test", metrics=BEYOND, diversity_space="cooccurrence")
                 for m in models]
        for metric in BEYOND:
            means = [t[metric] for t in tests]
            assert table.loc[label, metric] == pytest.approx(np.mean(means), abs=1e-6), (label, metric)
            if len(means) > 1:
                assert table.loc[label, f"{metric} sd"] == pytest.approx(np.std(means, ddof=1), abs=1e-6)
        per_user = np.mean([t.per_user["novelty@20"].to_numpy() for t in tests], axis=0)
        assert table.loc[label, "novelty@20 ci95"] == pytest.approx(1.96 * per_user.std() / np.sqrt(len(per_user)))
        assert np.isnan(table.loc[label, "gini@20 ci95"]) and np.isnan(table.loc[label, "coverage@20 ci95"])
    md = run.report.read_text()
    section = md.split("## Beyond accuracy")[1].split("\n## ")[0]
    assert "| model | test ndcg@100 | " + " | ".join(BEYOND) + " |" in section
    assert "co-occurrence, the same for every model" in section
    line = next(row for row in section.splitlines() if row.startswith("| EASE |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    row = table.loc["EASE"]
    assert cells[1] == f"{row['ndcg@100']:.4f} (±{row['ndcg@100 ci95']:.4f})"
    assert cells[2] == f"{row['novelty@20']:.4f} (±{row['novelty@20 ci95']:.4f})"
    assert cells[6] == f"{row['gini@20']:.4f}" and cells[7] == f"{row['coverage@20']:.4f}"
    # the accuracy table is as before: no beyond-accuracy column there
    header = next(r for r in md.split("## Test results")[1].splitlines() if r.startswith("| model |"))
    assert "novelty" not in header and "| ndcg@100 | recall@20 | recall@50 |" in header


def test_beyond_accuracy_config_keys(tmp_path):
    config = load_config(write(tmp_path, SYNTHETIC))
    assert config.beyond_accuracy is None and config.diversity_space == "cooccurrence"
    assert config.beyond_accuracy_for(100) == BEYOND
    assert config.beyond_accuracy_for(19) == ()  # a catalogue too small for the defaults: none, not a refusal
    chosen = SYNTHETIC.replace("seeds = 2", 'seeds = 2\nbeyond_accuracy = ["gini@5", "diversity@2"]\n'
                                            'diversity_space = "auto"')
    config = load_config(write(tmp_path, chosen))
    assert config.beyond_accuracy == ("gini@5", "diversity@2") and config.diversity_space == "auto"
    assert load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", "seeds = 2\nbeyond_accuracy = []"))
                       ).beyond_accuracy_for(100) == ()
    for entry, match in (('["ndcg@20"]', r"beyond_accuracy\[0\].*not a beyond-accuracy metric"),
                         ('["novelty"]', r"beyond_accuracy\[0\].*name@k"),
                         ('["gini@5", "diversity@1"]', r"beyond_accuracy\[1\].*k >= 2")):
        with pytest.raises(ValueError, match=match) as err:
            load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", f"seeds = 2\nbeyond_accuracy = {entry}")))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"diversity_space"):
        load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", 'seeds = 2\ndiversity_space = "euclid"')))
    too_far = load_config(write(tmp_path, SYNTHETIC.replace("seeds = 2", 'seeds = 2\nbeyond_accuracy = ["arp@500"]')))
    with pytest.raises(ValueError, match=r"evaluation\.beyond_accuracy\[0\] = 'arp@500': k=500 exceeds the 100 items"):
        too_far.check_cutoffs(100)
