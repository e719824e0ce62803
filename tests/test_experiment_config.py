"""Config validation messages (recvae.experiment.config): one line naming the file, the key's path and the fix.

pydantic validates the schema; these tests pin that its errors come back as the
project's own ``ValueError`` messages, never as a raw ``pydantic.ValidationError``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pydantic
import pytest

from recvae.experiment import load_config

GOOD = """
name = "tiny"
[dataset]
synthetic = { n_users = 300, n_items = 100, seed = 0 }
rating_threshold = 3.5
min_user_interactions = 5
[split]
heldout_users = 30
[evaluation]
metrics = ["ndcg@100", "recall@20"]
select_by = "ndcg@100"
[[models]]
name = "popularity"
[[models]]
name = "ease"
label = "EASE"
grid = { l2 = [10.0, 100.0] }
[[models]]
name = "mult-vae"
params = { epochs = 2 }
"""


def error_of(tmp_path: Path, text: str) -> str:
    """The message load_config raises for ``text``; fails unless it is one line of our own ValueError."""
    path = tmp_path / "bad-config.toml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert not isinstance(info.value, pydantic.ValidationError), message  # converted, not leaked
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message  # the config file comes first
    assert "Input should be" not in message and "pydantic" not in message, message
    return message.removeprefix(f"{path}: ")


def test_the_good_config_loads(tmp_path: Path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert [m.label for m in config.models] == ["popularity", "EASE", "mult-vae"]
    assert config.dataset.preprocessing == {"rating_threshold": 3.5, "min_user_interactions": 5}
    assert config.split.heldout_users == 30 and isinstance(config.split.heldout_users, int)


@pytest.mark.parametrize(("old", "new", "expected"), [
    # an alias people reach for: the suggestion comes from _ALIASES
    ("min_user_interactions = 5", "min_user_events = 5",
     "dataset.min_user_events: unknown key 'min_user_events' in [dataset]; did you mean 'min_user_interactions'?"),
    # a typo: the suggestion comes from difflib
    ("heldout_users = 30", "heldout_user = 30",
     "split.heldout_user: unknown key 'heldout_user' in [split]; did you mean 'heldout_users'?"),
    # inside the third [[models]] table (paths count from 0)
    ("params = { epochs = 2 }", "parms = { epochs = 2 }",
     "models[2].parms: unknown key 'parms' in [[models]]; did you mean 'params'?"),
    # inside an inline table checked against recvae.data.SyntheticConfig's fields
    ("n_items = 100", "n_itemz = 100",
     "dataset.synthetic.n_itemz: unknown key 'n_itemz' in [dataset] synthetic; did you mean 'n_items'?"),
])
def test_unknown_key_names_its_path_and_suggests_the_key(tmp_path: Path, old: str, new: str, expected: str):
    message = error_of(tmp_path, GOOD.replace(old, new))
    assert message.startswith(expected), message
    assert message.endswith("rename or remove it"), message


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path):
    message = error_of(tmp_path, 'colour = "red"\n' + GOOD)
    assert message.startswith("colour: unknown key 'colour' in top level (allowed keys: name, output_dir,"), message
    assert "did you mean" not in message


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("heldout_users = 30", 'heldout_users = "30"',
     "split.heldout_users: must be a positive integer (users in each of validation and test) or a fraction in "
     "(0, 0.5), e.g. heldout_users = 300; got '30'"),
    ("heldout_users = 30", "heldout_users = 0.7", "split.heldout_users: must be a positive integer"),
    ("heldout_users = 30", "heldout_users = 30\nseed = true", "split.seed: must be an integer >= 0 (98765 in the "
                                                              "published code); got True"),
    ("rating_threshold = 3.5", "rating_threshold = true",
     "dataset.rating_threshold: must be a number (or false: keep all); got True"),
    ("l2 = [10.0, 100.0]", "l2 = 10.0", "models[1].grid.l2: must be a table of non-empty lists of values to try"),
    ('label = "EASE"', "label = 3", "models[1].label: must be a non-empty string"),
    ("[split]\nheldout_users = 30\n", "", "split: missing; add it (must be a table"),
])
def test_wrong_type_or_range_names_the_path_the_rule_and_the_value(tmp_path: Path, old: str, new: str,
                                                                    expected: str):
    text = GOOD.replace(old, new)
    assert text != GOOD
    message = error_of(tmp_path, text)
    assert message.startswith(expected), message


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('select_by = "ndcg@100"', 'select_by = "ndcg100"', "evaluation.select_by: select_by 'ndcg100' is not a metric"),
    ('"recall@20"]', '"recall@0"]', "evaluation.metrics[1]: metrics entry 'recall@0' is not a metric"),
    ('"recall@20"]', '"dcg@20"]', "evaluation.metrics[1]: metrics entry 'dcg@20' is not a metric"),
])
def test_bad_metric_names_the_entry_and_the_form(tmp_path: Path, old: str, new: str, expected: str):
    message = error_of(tmp_path, GOOD.replace(old, new))
    assert message.startswith(expected), message
    assert "write name@k with name in ['hit_rate', 'map', 'mrr', 'ndcg', 'precision', 'recall']" in message


def test_published_rows_take_metric_keys_and_numbers(tmp_path: Path):
    published = '[published]\nsource = "paper"\nrows = [{ model = "EASE", %s }]\n'
    assert load_config_text(tmp_path, GOOD + published % '"ndcg@100" = 0.3').published.rows == (
        {"model": "EASE", "ndcg@100": 0.3},)
    message = error_of(tmp_path, GOOD + published % '"ndcg100" = 0.3')
    assert message.startswith("published.rows[0].ndcg100: key 'ndcg100' is not a metric"), message
    message = error_of(tmp_path, GOOD + published % '"ndcg@100" = "high"')
    assert message == "published.rows[0].ndcg@100: must be a number; got 'high'", message


def load_config_text(tmp_path: Path, text: str):
    path = tmp_path / "ok.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize(("extra", "expected"), [
    ('path = "ratings.csv"', "dataset: needs exactly one of path, movielens or synthetic; got ['path', 'synthetic']"),
    ('movielens = "ml-100k"',
     "dataset: needs exactly one of path, movielens or synthetic; got ['movielens', 'synthetic']"),
    ('sep = ","', "dataset.sep: ['sep'] only apply to a log file given by path; remove them"),
    ('format = "log"', "dataset.format: format only applies to a path; remove it"),
    ('data_dir = "data"', "dataset: data_dir and download only apply to movielens = ...; remove them"),
])
def test_bad_source_combinations(tmp_path: Path, extra: str, expected: str):
    message = error_of(tmp_path, GOOD.replace("[dataset]", f"[dataset]\n{extra}"))
    assert message.startswith(expected), message


def test_no_source_and_path_only_rules(tmp_path: Path):
    no_source = GOOD.replace("synthetic = { n_users = 300, n_items = 100, seed = 0 }\n", "")
    assert error_of(tmp_path, no_source).startswith(
        "dataset: needs exactly one of path, movielens or synthetic; got none")
    movielens_with_log_keys = no_source.replace("[dataset]", '[dataset]\npath = "u.data"\nformat = "movielens"\n'
                                                             'sep = "\\t"')
    assert error_of(tmp_path, movielens_with_log_keys).startswith(
        "dataset.format: ['sep'] only apply to format = \"log\"")
    unknown_release = no_source.replace("[dataset]", '[dataset]\nmovielens = "ml-2m"')
    assert error_of(tmp_path, unknown_release).startswith(
        "dataset.movielens: movielens = 'ml-2m' is not a known release; choose one of ml-100k")
