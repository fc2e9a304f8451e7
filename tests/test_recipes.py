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


# A dataset's own options live in the section named after it, as a method's do.


def test_a_datasets_section_is_parsed_checked_and_saved_like_a_methods(tmp_path):
    recipe = parse_recipe(["--recipe", "quickstart", "--shapes.num_images", "640"])
    assert recipe.data.options.num_images == 640 and recipe.sections()["shapes"] is recipe.data.options
    saved = recipe_to_dict(recipe)
    assert saved["shapes"] == {"num_images": 640} and "num_images" not in saved["data"] and "options" not in saved["data"]
    assert recipe_from_dict(saved) == recipe
    with pytest.raises(RecipeError) as error:
        parse_recipe(["--recipe", "quickstart", "--shapes.num_image", "64"])
    assert "num_image" in str(error.value) and "Did you mean 'num_images'?" in str(error.value)
    with pytest.raises(RecipeError, match=r"shapes.num_images = 0 \(valid: >= 1\)"):
        parse_recipe(["--recipe", "quickstart", "--shapes.num_images", "0"])
    with pytest.raises(RecipeError, match="trains on dataset 'shapes' but sets the 'shards:' section"):
        parse_recipe(["--recipe", "quickstart", "--shards.decode", "worker"])
    path = tmp_path / "mine.yaml"
    path.write_text("method: simclr\ndata: {name: cifar10}\nshapes: {num_images: 64}\n")
    with pytest.raises(RecipeError, match="trains on dataset 'cifar10' but sets the 'shapes:' section"):
        parse_recipe(["--recipe", str(path)])


def test_a_recipe_pointed_at_another_dataset_leaves_its_own_datasets_section_behind():
    recipe = parse_recipe(["--recipe", "quickstart", "--data.name", "shards", "--data.root", "x", "--shards.decode", "worker"])
    assert recipe.data.name == "shards" and recipe.data.options.decode == "worker" and "shapes" not in recipe.sections()
    assert parse_recipe(["--recipe", "quickstart", "--data.name=folder"]).data.options is None  # folder has no options


def test_keys_that_left_data_still_load_where_they_were_given(tmp_path):
    """data.num_images and data.decode moved to the shapes: and shards: sections. The old
    spelling, on the command line or in a recipe written before, goes to the section of the
    recipe's dataset, and is dropped where the dataset never read it."""
    assert parse_recipe(["--recipe", "quickstart", "--data.num_images", "96"]).data.options.num_images == 96
    assert parse_recipe(["--recipe", "quickstart", "--data.num_images=96"]).data.options.num_images == 96
    on_shards = parse_recipe(["--recipe", "simclr_resnet50", "--data.decode", "device", "--data.num_images", "96"])
    assert on_shards.data.options.decode == "device" and "shapes" not in on_shards.sections()
    run_folder = tmp_path / "recipe.yaml"  # what a run folder kept (resume reads it with --recipe)
    run_folder.write_text("method: simclr\ndata: {name: shapes, num_images: 80, decode: auto, batch_size: 16}\n")
    recipe = parse_recipe(["--recipe", str(run_folder), "--data.batch_size", "8"])
    assert recipe.data.options.num_images == 80 and recipe.data.batch_size == 8
    # data.context_length went to the text method's own section (CLIP's), and is dropped elsewhere.
    assert parse_recipe(["--recipe", "clip_shapes", "--data.context_length", "24"]).method_config.context_length == 24
    assert parse_recipe(["--data.context_length=24", "--recipe", "clip_shapes"]).method_config.context_length == 24
    assert "context_length" not in recipe_to_dict(parse_recipe(["--recipe", "quickstart", "--data.context_length", "24"]))["data"]
    run_folder.write_text("method: clip\ndata: {name: shapes, context_length: 12}\n")
    assert parse_recipe(["--recipe", str(run_folder)]).method_config.context_length == 12


def test_results_committed_before_the_move_still_load():
    """The committed default bench saved data.num_images (20,000) and data.decode in data:."""
    import json
    from pathlib import Path

    results = Path(__file__).parent.parent / "benchmarks" / "results" / "2026-12-06_cpu_default_bench" / "results.json"
    runs = json.loads(results.read_text())["runs"]
    saved = [run["recipe"] for run in runs if run.get("recipe")]
    assert saved and all("num_images" in recipe["data"] and "decode" in recipe["data"] for recipe in saved)
    for values in saved:
        recipe = recipe_from_dict(values)
        assert recipe.data.name == "shapes" and recipe.data.options.num_images == values["data"]["num_images"] == 20000
        assert "decode" not in recipe_to_dict(recipe)["data"]  # shapes never decoded anything: dropped
        if recipe.method == "clip":  # its tokens per caption, now in clip:
            assert recipe.method_config.context_length == values["data"]["context_length"] == 16
    old_file = recipe_to_dict(parse_recipe(["--recipe", "quickstart"]))
    old_file["data"]["num_images"] = old_file.pop("shapes")["num_images"] // 2
    assert recipe_from_dict(old_file).data.options.num_images == 10000
