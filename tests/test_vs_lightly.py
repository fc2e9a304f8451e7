"""benchmarks/vs_lightly.py: lightly's views come from the recipe's distribution, the
lightly-fed method sees views laid out as ssl_zoo's, and the curves are read right.
(The measurement itself needs idle cores and minutes; it is not run here.)"""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from conftest import load_benchmark
from ssl_zoo.recipe import parse_recipe


@pytest.fixture(scope="module")
def vs_lightly():
    return load_benchmark("vs_lightly")


@pytest.fixture(scope="module")
def recipe():
    return parse_recipe(["--recipe", "simclr_convnet4_cifar10", "--data.name", "shapes"])


def test_lightly_views_follow_the_recipe(vs_lightly, recipe):
    augment = recipe.augment
    steps = {type(t).__name__: t for t in vs_lightly.lightly_transform(augment).transforms[0].transform.transforms}
    assert steps["RandomResizedCrop"].size == (32, 32)
    assert steps["RandomResizedCrop"].scale == tuple(augment.crop_scale)
    assert steps["RandomHorizontalFlip"].p == augment.flip_p
    jitter = steps["RandomApply"]
    assert jitter.p == augment.jitter_p
    brightness, contrast, saturation, hue = augment.jitter
    assert jitter.transforms[0].brightness == pytest.approx((1 - brightness, 1 + brightness))
    assert jitter.transforms[0].saturation == pytest.approx((1 - saturation, 1 + saturation))
    assert jitter.transforms[0].hue == pytest.approx((-hue, hue))
    assert steps["RandomGrayscale"].p == augment.grayscale_p
    assert steps["GaussianBlur"].prob == 0.0  # the recipe's blur_p at 32 px
    assert list(steps["Normalize"].mean) == list(augment.mean)


def test_lightly_transform_refuses_views_it_cannot_draw(vs_lightly, recipe):
    with pytest.raises(ValueError, match="crop scale up to 1"):
        vs_lightly.lightly_transform(replace(recipe.augment, crop_scale=(0.2, 0.9)))
    with pytest.raises(ValueError, match="blurs both views alike"):
        vs_lightly.lightly_transform(replace(recipe.augment, blur_p=(1.0, 0.1)))


def test_lightly_fed_views_have_ssl_zoos_layout(vs_lightly, recipe):
    model = vs_lightly.LightlyFedSimCLR(recipe)
    views = torch.randn(4, 2, 3, 32, 32)  # (B, V, 3, S, S) as the loader collates them
    batch = model.on_after_batch_transfer({"views": views.clone()}, 0)
    assert batch["views"].shape == (2, 4, 3, 32, 32)
    assert torch.equal(batch["views"], views.transpose(0, 1))
    assert batch["views"][0].is_contiguous(memory_format=torch.channels_last)
    assert batch["views"].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_time_to_reach_interpolates_and_says_when_never(vs_lightly):
    Point = vs_lightly.Point
    curve = [Point(0.0, 0, 0.10), Point(30.0, 100, 0.30), Point(60.0, 200, 0.50)]
    assert math.isclose(vs_lightly.time_to_reach(curve, 0.40), 45.0)
    assert vs_lightly.time_to_reach(curve, 0.30) == 30.0
    assert vs_lightly.time_to_reach(curve, 0.05) == 0.0
    assert vs_lightly.time_to_reach(curve, 0.60) is None


def test_the_clock_pauses_for_knn_and_stops_at_the_budget(vs_lightly, monkeypatch):
    now = [100.0]  # a fake perf_counter: each training step takes 4 s, each kNN measurement 50 s
    monkeypatch.setattr(vs_lightly.time, "perf_counter", lambda: now[0])
    clock = vs_lightly.KNNOnTheClock(bank=None, query=None, budget=30.0, every=10.0, label="test")

    def measure(model):
        now[0] += 50.0
        return 0.5

    monkeypatch.setattr(clock, "top1", measure)
    trainer = SimpleNamespace(global_step=0, should_stop=False)
    clock.on_train_start(trainer, None)
    while not trainer.should_stop:
        now[0] += 4.0
        trainer.global_step += 1
        clock.on_train_batch_end(trainer, None, None, None, trainer.global_step - 1)
    # kNN time never counts; a point at 0, at the first step past each 10 s, and past the budget.
    assert [(p.seconds, p.steps) for p in clock.points] == [(0.0, 0), (12.0, 3), (20.0, 5), (32.0, 8)]
