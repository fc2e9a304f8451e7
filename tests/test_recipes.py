"""Recipes load, validate, override and round-trip; bad ones give clear errors."""

import pytest

from ssl_zoo.errors import RecipeError
from ssl_zoo.recipe import available_recipes, parse_recipe, recipe_from_dict, recipe_to_dict

REQUIRED = {
    "quickstart", "simclr_shapes", "byol_shapes", "clip_shapes", "simclr_resnet18_cifar10",
    "byol_resnet18_cifar10", "clip_resnet18_flickr8k", "simclr_resnet50", "byol_resnet50", "clip_rn50",
    "simclr_resnet50_stl10", "byol_resnet50_stl10",
}


def test_the_required_recipes_exist():
    assert REQUIRED <= set(available_recipes())


@pytest.mark.parametrize("name", sorted(available_recipes()))
def test_every_recipe_loads_and_builds_its_method(name):
    from ssl_zoo.methods import build_method

    recipe = parse_recipe(["--recipe", name])
    assert recipe.name == name and recipe.description
    assert recipe.method_config is not None
    model = build_method(recipe, num_classes=10)
    assert model.hparams["recipe"] == recipe_to_dict(recipe)


def test_overrides_win_wherever_they_stand():
    after = parse_recipe(["--recipe", "byol_shapes", "--optim.lr", "0.3", "--byol.base_momentum", "0.996"])
    before = parse_recipe(["--optim.lr", "0.3", "--recipe", "byol_shapes"])
    assert after.optim.lr == before.optim.lr == 0.3
    assert after.method_config.base_momentum == 0.996
    assert after.data.name == "shapes"


def test_tuple_override_and_round_trip():
    recipe = parse_recipe(["--recipe", "byol_shapes", "--augment.solarize_p", "[0.1, 0.3]"])
    assert recipe.augment.solarize_p == (0.1, 0.3)
    again = recipe_from_dict(recipe_to_dict(recipe))
    assert again == recipe


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--recipe", "byol_resnet5O"])
    assert "Unknown recipe 'byol_resnet5O'" in str(error.value) and "byol_resnet50" in str(error.value)


def test_unknown_key_names_the_section_and_suggests(tmp_path):
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--recipe", "quickstart", "--data.batchsize", "64"])
    message = str(error.value)
    assert "batchsize" in message and "Did you mean 'batch_size'" in message and "Valid keys of 'data'" in message
    path = tmp_path / "mine.yaml"
    path.write_text("method: simclr\ntrainer: {epochs: 3}\n")
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--recipe", str(path)])
    assert str(path) in str(error.value) and "max_epochs" in str(error.value)


def test_wrong_type_is_named():
    with pytest.raises(RecipeError, match="data.batch_size"):
        parse_recipe(["--recipe", "quickstart", "--data.batch_size", "many"])
    with pytest.raises(RecipeError, match="method"):
        parse_recipe(["--recipe", "quickstart", "--method", "moco"])


def test_section_of_another_method_is_an_error():
    with pytest.raises(RecipeError, match="sets the 'byol:' section"):
        parse_recipe(["--recipe", "quickstart", "--byol.base_momentum", "0.9"])


def test_a_linear_reference_names_its_protocol(tmp_path):
    """A published linear top-1 is comparable only with a number made the same way, so the
    recipe must say how it was made; other metrics have no protocol to name."""
    path = tmp_path / "mine.yaml"
    linear = "reference: {metric: linear_top1, value: 70.0, epochs: 100, source: a paper"
    path.write_text(f"method: simclr\n{linear}}}\n")
    with pytest.raises(RecipeError, match=r"reference\.protocol is required with metric linear_top1"):
        parse_recipe(["--recipe", str(path)])
    path.write_text(f"method: simclr\n{linear}, protocol: features}}\n")
    assert parse_recipe(["--recipe", str(path)]).reference.protocol == "features"
    path.write_text("method: simclr\nreference: {metric: knn_top1, value: 80.0, epochs: 100, source: a paper, protocol: probe}\n")
    with pytest.raises(RecipeError, match=r"reference\.protocol \(probe\) applies to metric linear_top1 only"):
        parse_recipe(["--recipe", str(path)])
    with pytest.raises(RecipeError, match="reference.protocol"):
        parse_recipe(["--recipe", "byol_resnet50", "--reference.protocol", "sgd"])  # neither probe nor features


@pytest.mark.parametrize("name", sorted(available_recipes()))
def test_every_linear_reference_says_which_protocol_made_it(name):
    reference = parse_recipe(["--recipe", name]).reference
    assert (reference.protocol is not None) == (reference.metric == "linear_top1")
    if reference.protocol == "probe":  # the note no longer says ssl_zoo cannot run the paper's protocol
        assert "L-BFGS" not in reference.note


def test_a_recipe_saved_before_reference_protocol_existed_still_loads():
    """Checkpoints and results saved before reference.protocol: their linear references were
    all papers' SGD probes, and they load as such."""
    saved = recipe_to_dict(parse_recipe(["--recipe", "byol_resnet50"]))
    del saved["reference"]["protocol"]
    assert recipe_from_dict(saved).reference.protocol == "probe"
