"""View layouts: the two-view form draws what it always drew; view groups (multi-crop) draw
each group's count, size and crop scale, deterministically, and bad groups are clear errors."""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import ssl_zoo.methods  # noqa: F401  (registers the methods the recipes name)
from ssl_zoo.augment import AugmentConfig, ViewAugment, ViewGroup
from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.errors import RecipeError
from ssl_zoo.losses import nt_xent_loss
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.recipe import available_recipes, parse_recipe, recipe_from_dict, recipe_to_dict
from ssl_zoo.registry import METHODS

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "views_before_groups.json").read_text())
RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
# Views a recipe changed on purpose after the fixture was taken, undone for the comparison.
SETTINGS_SINCE_THE_FIXTURE = {"byol_shapes": ["--augment.rotation", "0", "--augment.solarize_p", "[0.0, 0.0]"]}
# Three non-square images: crops see the images' aspect, as in training.
IMAGES = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def digest(views: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(views.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(FIXTURE["views"]))
def test_every_bundled_recipe_draws_the_views_it_drew_before_view_groups(name):
    """Bitwise: the hashes were taken from ViewAugment before view groups existed (the
    fixture's "about" says how), two calls in a row, so the generators' streams match too.
    Settings a recipe gained later are undone here (SETTINGS_SINCE_THE_FIXTURE): off,
    they draw nothing, so the views are those of the recipe as the fixture recorded it."""
    undo = SETTINGS_SINCE_THE_FIXTURE.get(name, [])
    recipe = parse_recipe(["--recipe", str(available_recipes()[name]), *undo])
    augment = ViewAugment(recipe.augment, METHODS[recipe.method].num_views, seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        drawn = [augment(IMAGES) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert list(drawn[0].shape) == FIXTURE["shapes"][name]
    assert [digest(views) for views in drawn] == FIXTURE["views"][name]


def test_byol_as_view_groups_draws_what_its_two_view_form_draws():
    two_view = AugmentConfig(size=32, crop_scale=(0.2, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
    groups = AugmentConfig(size=32, views=(
        ViewGroup(count=1, crop_scale=(0.2, 1.0), blur_p=1.0, solarize_p=0.0),
        ViewGroup(count=1, crop_scale=(0.2, 1.0), blur_p=0.1, solarize_p=0.2),
    ))
    assert groups.groups(2) == two_view.groups(2)
    a, b = ViewAugment(two_view, 2, seed=3), ViewAugment(groups, 2, seed=3)
    assert a.sizes == b.sizes == [32]
    for _ in range(2):
        assert torch.equal(a(IMAGES), b(IMAGES))


def ramp_images(n: int = 8, side: int = 64) -> torch.Tensor:
    """uint8 (n, 3, side, side) whose value is the column: a view's span of values is its crop's width."""
    columns = torch.linspace(0, 255, side).round().to(torch.uint8)
    return columns.expand(n, 3, side, side).contiguous()


# Geometry only: square crops, no flip, no colour, no normalisation.
PLAIN = dict(crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def crop_widths(views: torch.Tensor) -> torch.Tensor:
    """(V, B, 3, S, S) views of ramp_images -> (V, B) approximate crop widths (fractions of the image)."""
    row = views[:, :, 0, 0, :]  # (V, B, S): the ramp along one row
    return row.amax(dim=-1) - row.amin(dim=-1)


def test_multi_crop_layout_has_each_groups_count_size_and_crop_scale():
    """DINO-like: 2 global views at 32 px of at least half the image, 4 local at 16 px of at most a quarter."""
    config = AugmentConfig(size=32, views=(
        ViewGroup(count=2, crop_scale=(0.5, 1.0), blur_p=0.0),
        ViewGroup(count=4, size=16, crop_scale=(0.05, 0.25), blur_p=0.0),
    ), **PLAIN)
    augment = ViewAugment(config, num_views=None, seed=0)
    assert augment.num_views == 6 and augment.sizes == [32, 16]
    global_views, local_views = augment.views_by_size(ramp_images())
    assert global_views.shape == (2, 8, 3, 32, 32) and local_views.shape == (4, 8, 3, 16, 16)
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in (*global_views, *local_views))
    # A square crop of area a has width sqrt(a); the ramp's span inside a view is a little
    # less than its crop's width (pixel centres), never more.
    assert crop_widths(global_views).min() > 0.5**0.5 - 0.06
    assert crop_widths(local_views).max() < 0.25**0.5 + 0.01
    with pytest.raises(ValueError, match="views_by_size"):
        augment(ramp_images())  # two sizes are not one tensor


def test_groups_of_one_size_with_their_own_crop_scales_share_one_draw():
    config = AugmentConfig(size=24, views=(
        ViewGroup(count=1, crop_scale=(0.8, 1.0), blur_p=0.0),
        ViewGroup(count=2, crop_scale=(0.05, 0.1), blur_p=0.0),
    ), **PLAIN)
    augment = ViewAugment(config, num_views=3, seed=0)
    assert augment.sizes == [24]
    views = augment(ramp_images(16))  # (3, 16, 3, 24, 24)
    widths = crop_widths(views)
    assert widths[0].min() > 0.8**0.5 - 0.06 and widths[1:].max() < 0.1**0.5 + 0.01


def test_multi_crop_views_are_deterministic_per_seed():
    config = AugmentConfig(size=32, views=(ViewGroup(count=2, crop_scale=(0.4, 1.0)), ViewGroup(count=4, size=16, crop_scale=(0.05, 0.4))))
    images = ramp_images()
    first, again = ViewAugment(config, None, seed=5), ViewAugment(config, None, seed=5)
    other = ViewAugment(config, None, seed=6)
    for _ in range(2):  # the generators' streams go on alike
        a, b, c = first.views_by_size(images), again.views_by_size(images), other.views_by_size(images)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[1], c[1])
    # and the state travels in the state_dict, as for the two-view form (resumed runs)
    resumed = ViewAugment(config, None, seed=99)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(first.views_by_size(images), resumed.views_by_size(images)))


def test_view_groups_in_a_recipe_file_and_on_the_command_line(tmp_path):
    path = tmp_path / "multi_crop.yaml"
    path.write_text(
        "method: simclr\nname: multi_crop\naugment:\n  size: 32\n  views:\n"
        "    - {count: 2, crop_scale: [0.4, 1.0], blur_p: 1.0}\n"
    )
    recipe = parse_recipe(["--recipe", str(path)])
    assert recipe.augment.groups(2) == (ViewGroup(2, 32, (0.4, 1.0), 1.0, 0.0),)
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe  # how checkpoints and run folders keep it
    overridden = parse_recipe(["--recipe", str(path), "--augment.views", "[{count: 2, size: 16}]"])
    assert overridden.augment.groups(2) == (ViewGroup(2, 16, (0.08, 1.0), 0.5, 0.0),)


@pytest.mark.parametrize("views, extra, message", [
    ("[{count: 0}]", [], r"augment.views\[0\].count = 0 \(valid: >= 1\)"),
    ("[{count: 2, size: 4}]", [], r"augment.views\[0\].size = 4 \(valid: >= 8\)"),
    ("[{count: 2, blur_p: 1.5}]", [], r"augment.views\[0\].blur_p = 1.5 \(valid: \[0, 1\]\)"),
    ("[{count: 2, crop_scale: [0.5, 0.2]}]", [], r"augment.views\[0\].crop_scale = \[0.5, 0.2\] \(valid: \[low, high\]"),
    ("[{count: 2}]", ["--augment.solarize_p", "[0.0, 0.2]"], "both views .* and augment.solarize_p"),
    ("[{count: 2, sise: 16}]", [], "Did you mean 'size'"),
])
def test_bad_view_groups_are_clear_recipe_errors(views, extra, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(["--recipe", "simclr_resnet50", "--augment.views", views, "--augment.blur_p", "[0.5, 0.5]", *extra])


def test_view_groups_must_make_the_methods_number_of_views():
    config = AugmentConfig(views=(ViewGroup(count=2), ViewGroup(count=4, size=16)))
    with pytest.raises(RecipeError, match="makes 6 views of every image, but the method trains on 2"):
        ViewAugment(config, num_views=2)
    with pytest.raises(RecipeError, match="two-view form of augment makes 1 or 2 views, not 3"):
        ViewAugment(AugmentConfig(), num_views=3)


def test_recipes_saved_before_view_groups_still_load():
    """A committed bench's recipes (two-view form, no views key) load as they were saved."""
    results = json.loads((RESULTS / "2026-12-06_cpu_default_bench" / "results.json").read_text())
    saved = [run["recipe"] for run in results["runs"] if run.get("recipe")]
    assert saved and all("views" not in recipe["augment"] for recipe in saved)
    for recipe in saved:
        loaded = recipe_from_dict(recipe)
        assert loaded.augment.views == () and loaded.augment.size == recipe["augment"]["size"]
        assert list(loaded.augment.blur_p) == recipe["augment"]["blur_p"]


seen: dict = {}  # what MultiCropSimCLR's training step received


class MultiCropSimCLR(SimCLR):
    """A method with its own view layout, as DINO has: it takes whatever views its recipe's
    augment.views lists (num_views None) and reads them by size. Not registered (no name=):
    it trains from SimCLR's recipe section."""

    num_views = None

    def training_step(self, batch, batch_idx):
        global_views, local_views = batch["views_by_size"]  # (2, B, 3, 32, 32), (2, B, 3, 16, 16)
        seen["shapes"] = [tuple(global_views.shape), tuple(local_views.shape)]
        seen["views_is_the_first_size"] = batch["views"] is global_views
        anchor = self.projection_head(self.backbone(global_views[0]))  # (B, P)
        others = [self.projection_head(self.backbone(view)) for view in (*global_views[1:], *local_views)]
        loss = sum(nt_xent_loss(anchor, other, self.config.temperature) for other in others) / len(others)
        return loss + self.probe_step(self.backbone(global_views[0]).detach(), batch)


def test_a_method_with_its_own_layout_trains_on_its_recipes_view_groups(make_recipe):
    recipe = make_recipe("simclr", **{
        "backbone": "convnet4", "data.num_images": 32, "data.batch_size": 16, "trainer.max_steps": 2,
        "augment.blur_p": "[0.5, 0.5]",  # the two-view form's default: view groups replace it
        "augment.views": "[{count: 2, crop_scale: [0.4, 1.0]}, {count: 2, size: 16, crop_scale: [0.05, 0.4]}]",
    })
    model = MultiCropSimCLR(recipe, num_classes=0)
    assert model.augment.num_views == 4 and model.augment.sizes == [32, 16]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=ImageDataModule.for_recipe(recipe))
    assert seen == {"shapes": [(2, 16, 3, 32, 32), (2, 16, 3, 16, 16)], "views_is_the_first_size": True}


def test_the_view_grid_shows_every_view_of_every_size(monkeypatch):
    """One row per view (local views enlarged to the global size), one column per image."""
    from types import SimpleNamespace

    import ssl_zoo.training.monitor as monitor

    logged = []
    monkeypatch.setattr(monitor, "log_image", lambda logger, key, grid, step: logged.append((key, grid.shape)))
    config = AugmentConfig(size=32, views=(ViewGroup(count=2), ViewGroup(count=3, size=16)))
    by_size = ViewAugment(config, None, seed=0).views_by_size(ramp_images(4))
    trainer = SimpleNamespace(loggers=[object()], is_global_zero=True, global_step=0)
    module = SimpleNamespace(recipe=SimpleNamespace(augment=config))
    monitor.ViewGridLogger(num_images=4).on_train_batch_start(
        trainer, module, {"views": by_size[0], "views_by_size": by_size}, batch_idx=0)
    # make_grid: 1 px padding around 5 rows x 4 columns of 32 px views
    assert logged == [("views", (3, 5 * 33 + 1, 4 * 33 + 1))]
