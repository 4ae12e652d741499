"""Recipes: every preset expands to real `mygpt train` flags, lists, and fails clearly when unknown."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mygpt.errors import MygptError
from mygpt.recipes import RECIPES, apply_recipe, get_recipe, recipes


def _train_params() -> dict[str, object]:
    from mygpt.cli import cli

    return {p.name: p for p in cli.commands["train"].params}


def test_every_recipe_flag_is_a_train_parameter_with_a_valid_value():
    params = _train_params()
    for recipe in RECIPES.values():
        for key, value in recipe.flags.items():
            assert key in params, f"{recipe.name}: --{key} is not a train flag"
            # click converts the recipe's value as if it came from the command line
            params[key].type.convert(value, params[key], None)


def test_chapters_and_key_recipes():
    assert [r.chapter for r in RECIPES.values()] == [17, 19, 20, 21, 22, 24, 25, 26, 27, 27, 27, 28]
    assert get_recipe("ch17-baseline").flags == {}
    modern = get_recipe("ch27-modern").flags
    assert modern["norm"] == "rms" and modern["position"] == "rope"
    assert modern["num_kv_heads"] == 2 and modern["schedule"] == "cosine"
    assert modern["warmup"] == 100 and modern["max_grad_norm"] == 1.0
    assert get_recipe("ch26-gqa").flags == {"num_kv_heads": 2}
    assert get_recipe("ch28-wikipedia").flags["seq_len"] == 256
    assert get_recipe("llama").flags == {**modern, "mlp": "swiglu"}
    fast = get_recipe("fast").flags  # issue 21: ch27-modern's model, trained faster
    assert {k: fast[k] for k in ("norm", "position", "num_kv_heads")} == {
        k: modern[k] for k in ("norm", "position", "num_kv_heads")
    }
    assert fast["optimizer"] == "muon" and fast["init"] == "scaled" and fast["steps"] == 400
    assert get_recipe("27").name == "ch27-modern"  # the chapter number still means the book's


def test_expands_to_command_line_text():
    args = get_recipe("ch27-modern").args()
    assert args[args.index("--num-kv-heads") + 1] == "2"
    assert args[args.index("--max-grad-norm") + 1] == "1.0"
    assert get_recipe("ch24-rmsnorm").args() == ["--norm", "rms"]


def test_chapter_shorthand():
    assert get_recipe("ch27").name == "ch27-modern"
    assert get_recipe("25").name == "ch25-rope"
    assert get_recipe(" CH17-Baseline ").name == "ch17-baseline"


def test_unknown_recipe_lists_the_names():
    with pytest.raises(MygptError, match="unknown recipe 'ch99'.*ch17-baseline.*ch27-modern"):
        get_recipe("ch99")


def test_explicit_values_override_the_recipe():
    merged, given = apply_recipe("ch27-modern", {"norm": "layer"}, {"norm": "layer", "steps": 2000})
    assert merged["norm"] == "layer"  # explicit wins
    assert merged["position"] == "rope"  # from the recipe
    assert merged["steps"] == 2000  # default kept
    # what the user asked for: the typed flags and the recipe's, not the defaults
    assert "norm" in given and "position" in given and "steps" not in given


def test_recipes_command_lists_all_with_flags():
    result = CliRunner().invoke(recipes, [])
    assert result.exit_code == 0, result.output
    for name in RECIPES:
        assert name in result.output
    assert "--norm rms --position rope --num-kv-heads 2" in result.output
    one = CliRunner().invoke(recipes, ["ch25"])
    assert one.exit_code == 0 and "ch25-rope" in one.output and "ch24" not in one.output


def test_every_recipe_flag_is_a_run_setting():
    """Recipes, the train command and bench share TrainConfig's fields: a recipe cannot name a
    setting that does not exist (it would be dropped silently)."""

    from mygpt.recipes import RECIPES
    from mygpt.settings import cli_fields
    from mygpt.train import TrainConfig

    fields = {f.name for f in cli_fields(TrainConfig)}
    assert {"steps", "embed_dim", "norm", "num_kv_heads"} <= fields  # run and model settings
    for recipe in RECIPES.values():
        assert set(recipe.flags) <= fields, recipe.name
        TrainConfig.from_flags(recipe.flags).validate()


def test_train_and_bench_options_come_from_train_config():

    from mygpt.bench import SHAPE, bench
    from mygpt.cli import cli
    from mygpt.settings import cli_fields
    from mygpt.train import TrainConfig

    train_opts = {p.name: p for p in cli.commands["train"].params}
    for f in cli_fields(TrainConfig):  # the run's fields and the nested ModelConfig's
        assert train_opts[f.name].default == f.default, f.name
        assert train_opts[f.name].help == f.metadata["help"], f.name
    bench_opts = {p.name: p for p in bench.params}
    assert all(bench_opts[name].default is None for name in SHAPE)  # recipes can then apply
