"""The TOML experiment runner: a tiny end-to-end run, config validation, shipped configs."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

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
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("experiment")
    config = write(tmp, SYNTHETIC + PUBLISHED)
    return run_experiment(config, output_dir=tmp / "results", progress=False)


def test_run_writes_report_tables_and_plots(report: Path):
    out = report.parent
    assert report == out / "tiny.md"
    for file in ("tiny.csv", "tiny_trials.csv", "tiny_history.csv"):
        assert (out / file).stat().st_size > 0, file
    if HAS_MATPLOTLIB:  # matplotlib is optional: without it the report says the plots were skipped
        for file in ("tiny_val_ndcg.png", "tiny_beta.png"):
            assert (out / file).read_bytes()[:4] == b"\x89PNG", file
    else:
        assert "matplotlib is not installed" in report.read_text()
    table = pd.read_csv(out / "tiny.csv")
    assert list(table["model"]) == ["Popularity", "EASE", "Mult-VAE"]
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
    reference = pd.read_csv(report.with_suffix(".csv")).sort_values("validation ndcg@100").iloc[-1]["model"]
    assert f"compare each model with **{reference}**" in md
    assert "## Best VAE vs best non-VAE" in md and "**Mult-VAE**" in md
    assert "Made-up paper, Table 9" in md
    published = md.split("## Published numbers beside ours")[1]
    assert "| Mult-VAE | 0.123 |" in published and "| SLIM |" in published
    if HAS_MATPLOTLIB:
        assert "![validation NDCG@100 per epoch](tiny_val_ndcg.png)" in md
        assert "](tiny_beta.png)" in md


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


def test_blend_reuses_the_tuned_models_it_refers_to(tmp_path, monkeypatch):
    import recvae.experiment as experiment

    blend = """
    [[models]]
    name = "blend"
    label = "Mult-VAE + EASE"
    params = { components = [ { ref = "EASE" }, { ref = "Mult-VAE" } ], weight_step = 0.5 }
    """
    config = write(tmp_path, SYNTHETIC + blend)
    assert load_config(config).models[-1].is_vae  # it refers to a VAE, so it counts as one
    seen = {}
    real = experiment.runner._run_model

    def spy(spec, split, cfg, ks, names, progress, fitted):
        outcome = real(spec, split, cfg, ks, names, progress, fitted)
        seen[spec.label] = outcome.search.best_model
        return outcome

    monkeypatch.setattr("recvae.experiment.runner._run_model", spy)
    report = run_experiment(config, output_dir=tmp_path / "results", progress=False)
    parts = seen["Mult-VAE + EASE"].components_
    assert parts[0] is seen["EASE"] and parts[1] is seen["Mult-VAE"]
    assert "Mult-VAE + EASE" in report.read_text()


@pytest.mark.parametrize("component", ['{ ref = "Nope" }', '{ ref = "EASE", name = "ease" }'])
def test_blend_references_must_name_an_earlier_entry(tmp_path, component):
    blend = f"""
    [[models]]
    name = "blend"
    params = {{ components = [ {component} ] }}
    """
    with pytest.raises(ValueError, match="earlier"):
        load_config(write(tmp_path, SYNTHETIC + blend))
