"""``recvae models``: every model's hyper-parameters found without reading the source."""

from __future__ import annotations

import pytest

from recvae.cli import main
from recvae.models.describe import BLEND_EXAMPLE, docstring_entries, model_parameters, model_summary
from recvae.models.registry import MODELS, make_model


@pytest.mark.parametrize("name", [n for n in MODELS if n != "blend"])
def test_listed_parameters_are_the_models_own_with_their_defaults(name):
    table = model_parameters(name)
    params = make_model(name).get_params()
    assert set(table.parameter) == set(params)  # nothing missing, nothing invented
    for row in table.itertuples(index=False):
        expected = params[row.parameter]
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert row.default == expected, row.parameter
        assert row.help, f"{name}.{row.parameter} has no one-line help"


def test_blend_shows_its_components_syntax():
    table = model_parameters("blend").set_index("parameter")
    assert table.loc["components", "default"] == "(required)"
    assert BLEND_EXAMPLE in table.loc["components", "help"]
    assert set(table.index) == set(make_model("blend", {"components": [{"name": "ease"}]}).get_params())


def test_summary_lists_every_model_once():
    summary = model_summary()
    assert summary.model.tolist() == list(MODELS)
    assert (summary.parameters == [len(model_parameters(n)) for n in MODELS]).all()
    assert summary.about.str.len().gt(10).all()


def test_docstring_entries_by_hand():
    doc = """Title.

    Args:
        a, b: the first sentence (e.g. this one, et al. too). Not this.
        c: wraps
            onto the next line.

    Returns:
        d: not an argument.
    """
    assert docstring_entries(doc) == {"a": "the first sentence (e.g. this one, et al. too)",
                                      "b": "the first sentence (e.g. this one, et al. too)",
                                      "c": "wraps onto the next line"}


def test_models_command(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in MODELS)
    assert main(["models", "EASE"]) == 0
    out = capsys.readouterr().out
    assert "l2 (float; default 500.0)" in out and "ridge penalty" in out
    with pytest.raises(SystemExit) as info:
        main(["models", "nope"])
    assert "unknown model 'nope'" in str(info.value) and "mult-vae" in str(info.value)


def test_readme_names_every_model_and_no_old_parameter_names():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = readme[readme.index("On the command line the models are"):].split(";")[0]
    assert re.findall(r"`([\w-]+)`", sentence) == list(MODELS)
    assert "lambda =" not in readme  # EASE's parameter is l2
