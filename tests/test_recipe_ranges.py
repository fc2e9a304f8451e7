"""Every numeric recipe key has a valid range, checked when a recipe loads.

The keys are discovered from the section dataclasses (and each method's ``Config``), so a
key added later without a range fails here, and every one is given a value just outside
its range to check that the error names the key, the value and the range.
"""

import dataclasses
import json
import re
import typing

import pytest

from ssl_zoo.errors import RecipeError
from ssl_zoo.ranges import Range, field_ranges
from ssl_zoo.recipe import parse_recipe, recipe_parser, sections
from ssl_zoo.registry import METHODS


def _is_numeric(hint) -> bool:
    """int or float anywhere in a type hint (int | None, tuple[float, float], int | str); not bool."""
    return hint in (int, float) or any(_is_numeric(arg) for arg in typing.get_args(hint))


def bundled_sections() -> dict[str, type]:
    """ssl_zoo's own sections; not those of methods defined elsewhere (tests/test_new_method.py's)."""
    return {key: config_type for key, config_type in sections().items() if config_type.__module__.startswith("ssl_zoo.")}


def numeric_keys() -> list[tuple[str, dataclasses.Field, type]]:
    keys = []
    for section, config_type in bundled_sections().items():
        hints = typing.get_type_hints(config_type)
        keys += [(section, f, hints[f.name]) for f in dataclasses.fields(config_type) if _is_numeric(hints[f.name])]
    return keys


def outside(valid: Range) -> float:
    """A value just outside ``valid``: below its lower bound, else above its upper one."""
    candidates = [b for b in (
        valid.at_least - 1 if valid.at_least is not None else None,
        valid.above,
        valid.at_most + 1 if valid.at_most is not None else None,
        valid.below,
    ) if b is not None]
    bad = next(b for b in candidates if b not in valid)
    return bad


NUMERIC_KEYS = numeric_keys()


def test_the_walk_finds_every_section_and_its_numbers():
    walked = {section for section, _, _ in NUMERIC_KEYS}
    assert walked >= {"data", "augment", "optim", "trainer", "reference", "simclr", "byol", "clip", "supervised"}
    # Every section has numbers, but the shards' (and ImageNet-100's): their one option, decode, is a choice.
    assert set(bundled_sections()) - {"shards", "imagenet100"} == walked
    assert len(NUMERIC_KEYS) >= 40  # today 45; fewer means the walk missed some


@pytest.mark.parametrize("section, field, hint", NUMERIC_KEYS, ids=[f"{s}.{f.name}" for s, f, _ in NUMERIC_KEYS])
def test_an_out_of_range_value_is_refused_naming_key_value_and_range(section, field, hint):
    valid = field_ranges(sections()[section]).get(field.name)
    assert valid is not None, f"{section}.{field.name} is numeric but declares no range (use ranged(...))"
    bad = outside(valid)
    is_int = int in typing.get_args(hint) or hint is int
    if isinstance(field.default, tuple):  # one bad item among the defaults
        value = [float(bad), *(float(v) for v in field.default[1:])]
        shown = f"{section}.{field.name} = {value}"
    else:
        value = int(bad) if is_int else float(bad)
        shown = f"{section}.{field.name} = {value}"
    method = section if section in METHODS.names() else "simclr"
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--method", method, f"--{section}.{field.name}", json.dumps(value)])
    message = str(error.value)
    assert shown in message and f"valid: {'each item ' if isinstance(value, list) else ''}{valid})" in message, message
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize("argv, shown", [
    (["--data.batch_size", "-4"], "data.batch_size = -4 (valid: >= 1)"),
    (["--data.image_size", "0"], "data.image_size = 0 (valid: >= 8)"),
    (["--optim.lr", "-1"], "optim.lr = -1.0 (valid: >= 0)"),
])
def test_the_issues_three_inputs(argv, shown):
    with pytest.raises(RecipeError, match=re.escape(f"out of range: {shown}")):
        parse_recipe(["--recipe", "quickstart", *argv])


def test_every_bad_value_is_named_at_once():
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--recipe", "quickstart", "--data.batch_size", "0", "--trainer.num_nodes", "0"])
    assert "data.batch_size = 0" in str(error.value) and "trainer.num_nodes = 0" in str(error.value)


def test_values_at_the_bounds_and_the_special_ones_load():
    recipe = parse_recipe(["--recipe", "quickstart", "--data.batch_size", "1", "--optim.lr", "0", "--trainer.max_epochs", "-1",
                           "--trainer.max_steps", "5", "--trainer.devices", "-1", "--augment.crop_scale", "[1.0, 1.0]"])
    assert (recipe.data.batch_size, recipe.optim.lr, recipe.trainer.devices) == (1, 0.0, -1)


def test_ranges_read_as_a_user_writes_them():
    assert [str(r) for r in (Range(at_least=1), Range(above=0), Range(at_least=0, at_most=1), Range(above=0, at_most=1),
                             Range(at_least=0, below=1), Range(at_least=1, also=(-1,)))] == \
        [">= 1", "> 0", "[0, 1]", "(0, 1]", "[0, 1)", "-1 or >= 1"]
    assert float("nan") not in Range(above=0) and float("inf") not in Range(above=0)


def test_fit_help_says_what_each_key_means():
    text = recipe_parser().format_help()

    def help_of(key: str) -> str:  # the option's entry (not its mention in the usage lines), on one line
        start = text.index(f"\n  --{key} ")
        end = text.find("\n  --", start + 1)
        return " ".join(text[start:end if end > 0 else None].split())

    assert "per 256 images" in help_of("optim.lr") and "lr_scaling" in help_of("optim.lr"), help_of("optim.lr")
    assert "Valid: >= 0." in help_of("optim.lr")
    assert "\ndata: which images a run trains on" in text
    assert "DataConfig(" not in text and "OptimConfig(" not in text  # section headers are not raw signatures
    # Every key of the fixed sections has a meaning, not only its type.
    for section in ("data", "augment", "optim", "trainer", "reference"):
        for f in dataclasses.fields(sections()[section]):
            if (section, f.name) == ("data", "options"):  # the dataset's own section, not a data. key
                continue
            entry = help_of(f"{section}.{f.name}")
            assert not entry.split(" ", 2)[2].startswith("(type:"), entry
