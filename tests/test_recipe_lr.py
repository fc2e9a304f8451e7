"""Every bundled recipe trains at the learning rate its source states, on 1 GPU or 8.

``optim.lr`` is per 256 images and scaled to the global batch (per-process batch x
processes) by ``optim.lr_scaling``, so a number copied from a source that gives its rate
as is (CLIP, open_clip) is silently multiplied on several GPUs unless the recipe says
``lr_scaling: none``. Each recipe whose settings follow a source states that source's rate
at its global batch (``reference.lr``, ``reference.batch_size``), and the recipe's own
rate, scaled by the function the methods use (``effective_lr``), must come to it there.

Recipes without a source rate (the CPU ones, tuned by hand on shapes, CIFAR-10 and
Flickr8k) are checked only for sanity: a rate given as is stays the same on 1 and 8
processes, and the rate is positive and finite at both.
"""

import math

import pytest

from ssl_zoo.recipe import Recipe, available_recipes, effective_lr, parse_recipe

RECIPES = sorted(available_recipes())
DEVICES = (1, 8)


def load(name: str) -> Recipe:
    return parse_recipe(["--recipe", name])


def lr_on(recipe: Recipe, devices: int) -> float:
    return effective_lr(recipe.optim, recipe.data.batch_size * devices)


@pytest.mark.parametrize("name", RECIPES)
def test_the_rate_at_the_sources_batch_is_the_sources(name):
    recipe = load(name)
    reference = recipe.reference
    if reference.lr is None:
        assert reference.metric == "none", f"{name}: a recipe with a published result states its source's lr"
        return
    assert reference.batch_size, f"{name}: reference.lr needs the global batch_size it is at"
    # The global batch of the source is reached on batch_size / data.batch_size processes
    # (for these recipes a whole number: 8 GPUs for ImageNet, 1 for lightly's CIFAR-10).
    devices, left = divmod(reference.batch_size, recipe.data.batch_size)
    assert left == 0, f"{name}: data.batch_size {recipe.data.batch_size} does not divide {reference.batch_size}"
    assert lr_on(recipe, devices) == pytest.approx(reference.lr, rel=1e-9), (
        f"{name}: {devices} process(es) of batch {recipe.data.batch_size} train at "
        f"{lr_on(recipe, devices):.4g}, the source at {reference.lr:.4g} "
        f"(optim.lr {recipe.optim.lr}, lr_scaling {recipe.optim.lr_scaling})"
    )


@pytest.mark.parametrize("name", RECIPES)
def test_a_rate_given_as_is_does_not_grow_with_the_devices(name):
    recipe = load(name)
    rates = [lr_on(recipe, devices) for devices in DEVICES]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates), f"{name}: {rates}"
    if recipe.optim.lr_scaling == "none":
        assert rates == [recipe.optim.lr] * len(DEVICES)
    else:  # scaled: 8 processes see 8x the images per step, so a larger rate
        assert rates[1] > rates[0]


def test_effective_lr_follows_each_scaling_rule():
    recipe = load("simclr_resnet50")  # LARS 0.3 per 256 images, 512 per process
    assert effective_lr(recipe.optim, 4096) == pytest.approx(4.8)
    recipe.optim.lr_scaling = "sqrt"
    assert effective_lr(recipe.optim, 1024) == pytest.approx(0.3 * 2)
    recipe.optim.lr_scaling = "none"
    assert effective_lr(recipe.optim, 4096) == 0.3


@pytest.mark.parametrize("name", ["byol_shapes", "clip_shapes"])  # linear at batch 64; as is
def test_the_optimiser_is_built_with_the_effective_lr(name):
    """The methods scale with effective_lr itself, so the checks above hold for training."""
    from ssl_zoo.methods import build_method

    recipe = load(name)
    model = build_method(recipe, num_classes=10)
    [optimizer], _ = model.configure_optimizers()
    rates = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert rates["ssl"] == rates["ssl_no_weight_decay"] == pytest.approx(lr_on(recipe, 1))
    assert rates["online_probe"] == recipe.optim.probe_lr
