"""One source per training option: a recipe declares its parameters once, and the run configuration, the
`armor train` options, their help text and the validation come from that declaration. Every recipe (the
library's and the domains') trains through the CLI with non-default options that must reach it.
Runtime: ~20 s on 2 busy cores."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from armor.app.cli import app
from armor.app.config import FIELDS, TrainConfig, read_config_file, recipe_options, resolve_config
from armor.training.recipes import all_recipes

runner = CliRunner()

# Per recipe: non-default values of its options (recipe parameters only). Every recipe in all_recipes() needs
# an entry, and together they use every recipe option.
CASES = {
    "standard": [],  # declares no parameter
    "pgd-at": ["--adv-ratio", "0.25", "--steps", "2", "--step-size", "0.5", "--no-random-start"],
    "trades": ["--beta", "3", "--steps", "2"],
    "mart": ["--beta", "2", "--steps", "2", "--no-random-start"],
    "fast-at": ["--fast-variant", "n-fgsm", "--noise", "1.5", "--step-size", "0.75"],
    "free-at": ["--replays", "2", "--step-size", "0.5"],
    "awp": ["--awp-base", "trades", "--awp-gamma", "0.01", "--awp-warmup", "0", "--steps", "2", "--beta", "3"],
    "multi": ["--multi-threats", "linf:0.1,l2:0.5", "--multi-mode", "avg", "--steps", "2", "--adv-ratio", "1"],
    "cpgd-at": ["--steps", "3", "--adv-ratio", "1", "--step-size", "0.5"],
    "ibp": ["--certified-bound", "ibp", "--kappa-end", "0.25", "--crown-beta-end", "0.5"],
    "gaussian": ["--sigma", "0.5"],
    "smoothadv": ["--sigma", "0.5", "--smooth-samples", "2", "--steps", "1", "--step-size", "0.5"],
}
DATASET = {"cpgd-at": "breast-cancer"}  # the others train on digits


def given_options(args: list[str]) -> dict[str, object]:
    """``["--steps", "2", "--no-random-start"]`` -> ``{"steps": 2, "random_start": False}``, typed as declared."""
    options = recipe_options()
    out, i = {}, 0
    while i < len(args):
        flag = args[i][2:].replace("-", "_")
        if flag.startswith("no_") and flag[3:] in options and options[flag[3:]].type is bool:
            out[flag[3:]], i = False, i + 1
        elif options[flag].type is bool:
            out[flag], i = True, i + 1
        else:
            out[flag], i = options[flag].type(args[i + 1]), i + 2
    return out


def test_every_recipe_and_every_recipe_option_has_a_case():
    assert set(CASES) == set(all_recipes())
    used = {k for args in CASES.values() for k in given_options(args)}
    assert used == set(recipe_options())
    for name, cls in all_recipes().items():
        assert CASES[name] or not cls.declared_params(), f"{name}: give it a non-default option"


@pytest.mark.parametrize("recipe", sorted(all_recipes()))
def test_every_recipe_trains_through_the_cli_with_its_options(recipe, tmp_path):
    out = tmp_path / recipe
    args = CASES[recipe]
    r = runner.invoke(app, ["train", "--dataset", DATASET.get(recipe, "digits"), "--recipe", recipe,
                            "--n-train", "64", "--epochs", "1", "--val-steps", "1", "--quiet", "--out", str(out),
                            *args])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["recipe"]["name"] == recipe
    params = meta["recipe"]["params"]
    options = recipe_options()
    expected = {}
    for key, value in given_options(args).items():
        declared = options[key].params[recipe]
        assert value != declared.default, f"{key}: the case must differ from the default to prove anything"
        got = params[declared.name]
        assert (",".join(got) if isinstance(got, list) else got) == value, key
        expected[declared.name] = value
    if not args:
        assert params == {}
    # the run's config.toml carries the same options under the same keys, and rebuilds the same parameters
    saved = read_config_file(out / "config.toml")
    assert {k: saved[k] for k in given_options(args)} == given_options(args)
    assert TrainConfig(**saved).recipe_params() == expected


def test_cpgd_at_takes_options_from_a_config():
    assert TrainConfig(recipe="cpgd-at", steps=20).recipe_params() == {"steps": 20}
    assert resolve_config({"recipe": "cpgd-at", "adv-ratio": 1, "random_start": False}).recipe_params() == \
        {"adv_ratio": 1.0, "random_start": False}


def test_config_keys_that_differ_from_the_parameter_names_still_work():
    cfg = resolve_config({"recipe": "awp", "awp_base": "mart", "awp_gamma": 0.02, "awp_warmup": 0, "beta": 1})
    assert cfg.recipe_params() == {"base": "mart", "gamma": 0.02, "warmup": 0, "beta": 1.0}
    assert TrainConfig(recipe="fast-at", fast_variant="n-fgsm").recipe_params() == {"variant": "n-fgsm"}
    multi = resolve_config({"recipe": "multi", "multi_threats": ["linf:0.1", "l2:1"], "multi_mode": "random"})
    assert multi.recipe_params() == {"threats": "linf:0.1,l2:1", "mode": "random"}


def test_an_option_for_another_recipe_names_the_recipes_that_take_it(tmp_path):
    with pytest.raises(ValueError, match=r"option beta does not apply to recipe 'pgd-at' \(it is for trades, mart, "
                                         r"awp\)"):
        TrainConfig(recipe="pgd-at", beta=3.0).recipe_params()
    with pytest.raises(ValueError, match=r"option replays does not apply to recipe 'cpgd-at' \(it is for free-at\)"):
        TrainConfig(recipe="cpgd-at", replays=2).recipe_params()
    r = runner.invoke(app, ["train", "--recipe", "standard", "--steps", "2", "--out", str(tmp_path / "x"), "--quiet"])
    assert r.exit_code == 2 and "option steps does not apply to recipe 'standard'" in " ".join(r.output.split())
    assert not (tmp_path / "x").exists()


def test_config_fields_are_generated_from_the_declarations():
    options = recipe_options()
    assert set(options) <= set(FIELDS)
    for key, option in options.items():
        assert FIELDS[key].default is None  # None: the recipe's own default
        for recipe, p in option.params.items():
            assert any(q.name == p.name and q.config_key == key for q in all_recipes()[recipe].declared_params())
    assert options["steps"].recipes == ("pgd-at", "trades", "mart", "awp", "multi", "smoothadv", "cpgd-at")
    assert options["fast_variant"].params["fast-at"].name == "variant"
    assert options["adv_ratio"].params["awp"].default == 1.0  # awp's own default for its pgd-at base


def test_help_lists_every_option_with_its_declared_help_and_default():
    r = runner.invoke(app, ["train", "--help"], terminal_width=120)
    assert r.exit_code == 0
    text = " ".join(r.output.replace("│", " ").split())
    for key in FIELDS:
        assert f"--{key.replace('_', '-')}" in text, key
    for key, option in recipe_options().items():
        assert " ".join(option.help().split()) in text, key
        for p in option.params.values():
            assert p.help and ("(default" in p.describe() or p.default is None), key
    assert "pgd-at, multi, cpgd-at: share of each batch's loss" in text and "(default 0.5)" in text
    assert "[default: digits]" in text and "[default: 0.1]" in text  # not eaten by the rich markup
