"""Distribution shift: the shifted shapes sets and the corruptions are deterministic, keep
the labels, and hurt more at higher severity."""

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shapes import SIZE_RADII, RADIUS_JITTER, make_shapes, make_shapes_with_factors
from ssl_zoo.data.shapes_shift import SHAPE_SHIFTS, SHIFTED_RADII, UNSEEN_COLOURS, make_shifted_shapes
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ssl_zoo.eval.shift import shifted_test_sets


@pytest.mark.parametrize("shift", SHAPE_SHIFTS)
def test_each_shapes_shift_is_deterministic_and_balanced(shift):
    first, again = make_shifted_shapes(shift, 64, 32, seed=3), make_shifted_shapes(shift, 64, 32, seed=3)
    other = make_shifted_shapes(shift, 64, 32, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (64, 3, 32, 32) and first.classes == make_shapes(8, 32).classes
    assert torch.bincount(first.labels, minlength=8).tolist() == [8] * 8


def test_sketches_and_textures_draw_the_shapes_of_the_training_renderer_with_their_labels():
    # Their labels and shape masks are those of the training renderer's draw at twice the side.
    drawn = make_shapes(32, 64, seed=5)
    coverage = F.avg_pool2d(drawn.masks.float().unsqueeze(1), 2).squeeze(1)  # (32, 32, 32)
    sketch, texture = make_shifted_shapes("sketch", 32, 32, seed=5), make_shifted_shapes("texture", 32, 32, seed=5)
    assert torch.equal(sketch.labels, drawn.labels) and torch.equal(texture.labels, drawn.labels)
    # Sketch: ink (dark pixels) only on the shape's outline, nowhere deep inside or far outside it.
    dark = sketch.images.float().mean(dim=1) < 128  # (32, 32, 32)
    inside, outside = coverage == 1, coverage == 0
    deep_inside = -F.max_pool2d(-inside.float().unsqueeze(1), 5, stride=1, padding=2).squeeze(1) > 0
    far_outside = -F.max_pool2d(-outside.float().unsqueeze(1), 5, stride=1, padding=2).squeeze(1) > 0
    assert dark.any() and not (dark & deep_inside).any() and not (dark & far_outside).any()
    # Texture: every pixel fully inside a shape is a blend of two unseen colours (on the
    # segment between them), none of the training palette's.
    pixels = texture.images.permute(0, 2, 3, 1)[inside].float() / 255  # (P, 3)
    a, b = UNSEEN_COLOURS[:, None], UNSEEN_COLOURS[None]  # (8, 1, 3), (1, 8, 3): every pair
    along = ((pixels[:, None, None] - a) * (b - a)).sum(dim=-1) / (b - a).square().sum(dim=-1).clamp_min(1e-9)
    nearest = pixels[:, None, None] - (a + along.clamp(0, 1)[..., None] * (b - a))  # (P, 8, 8, 3)
    assert len(pixels) > 1000 and (nearest.norm(dim=-1).amin(dim=(1, 2)) < 0.01).all()


def test_the_scale_shift_keeps_the_labels_and_leaves_the_trained_range():
    shifted, factors = make_shapes_with_factors(200, 32, seed=6, radii=SHIFTED_RADII)
    assert torch.equal(make_shifted_shapes("scale", 200, 32, seed=6).images, shifted.images)
    assert torch.equal(shifted.labels, make_shapes(200, 32, seed=6).labels)  # labels are drawn before sizes
    trained = (min(SIZE_RADII) - RADIUS_JITTER, max(SIZE_RADII) + RADIUS_JITTER)
    assert ((factors["radius"] < trained[0]) | (factors["radius"] > trained[1])).all()
    assert ((factors["radius"] < 0.5) & (factors["radius"] > 0.05)).all()
    # The default renderer is unchanged by the hook.
    assert torch.equal(make_shapes_with_factors(50, 32, seed=6)[0].images, make_shapes(50, 32, seed=6).images)


def test_corruptions_are_deterministic_batch_independent_and_validated():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            whole = corrupt(images, name, severity, first_seed=9)
            halves = torch.cat([corrupt(images[:2], name, severity, first_seed=9), corrupt(images[2:], name, severity, first_seed=11)])
            assert whole.dtype == torch.uint8 and whole.shape == images.shape
            assert torch.equal(whole, halves), (name, severity)
            assert not torch.equal(whole, images), (name, severity)
    with pytest.raises(SslZooError, match="severity 4"):
        corrupt(images, "blur", 4)
    with pytest.raises(SslZooError, match="Unknown corruption 'fog'"):
        corrupt(images, "fog", 1)


def test_shifted_test_sets_keep_every_label_in_order():
    test = make_shapes(24, 32, seed=1)
    sets = list(shifted_test_sets(test, seed=0, batch_size=10))
    assert [d["name"] for d, _ in sets[:3]] == list(SHAPE_SHIFTS)
    assert len(sets) == 3 + len(CORRUPTIONS) * len(SEVERITIES)
    for described, images in sets[3:]:
        assert torch.equal(images.labels, test.labels) and images.images.shape == test.images.shape, described
    # Another dataset gets only the corrupted copies.
    other = ImageSet(images=test.images, labels=test.labels, classes=test.classes, name="cifar10")
    assert [d["family"] for d, _ in shifted_test_sets(other, seed=0)] == ["corruption"] * 12


def test_higher_severity_hurts_a_fixed_model_more():
    # The fixed model: nearest class centroid on mean-centred pixels, fitted on clean images.
    # Classes: fine +-1 sign patterns of four amplitudes under pixel noise: blur and JPEG
    # remove the patterns, noise drowns them, and low contrast pulls every image towards
    # the centroid nearest the mean.
    g = torch.Generator().manual_seed(0)
    amplitude = 0.01 * torch.tensor([0.7, 0.9, 1.1, 1.3]).view(4, 1, 1, 1)
    templates = amplitude * torch.randn(4, 3, 8, 8, generator=g).sign()

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % 4
        pixels = 0.5 + templates[labels] + 0.02 * torch.randn(count, 3, 8, 8, generator=g)
        return pixels.clamp(0, 1).mul(255).round().to(torch.uint8), labels

    def features(images: torch.Tensor) -> torch.Tensor:
        x = images.float().flatten(1) / 255
        return x - x.mean(dim=1, keepdim=True)

    train, train_labels = draw(400)
    test, test_labels = draw(400)
    centroids = torch.stack([features(train[train_labels == c]).mean(dim=0) for c in range(4)])

    def accuracy(images: torch.Tensor) -> float:
        return (torch.cdist(features(images), centroids).argmin(dim=1) == test_labels).float().mean().item()

    clean = accuracy(test)
    assert clean > 0.99
    for name in CORRUPTIONS:
        scores = [clean] + [accuracy(corrupt(test, name, severity)) for severity in SEVERITIES]
        assert all(a >= b for a, b in zip(scores, scores[1:])), (name, scores)
        assert scores[-1] < clean - 0.2, (name, scores)


def test_the_report_gets_the_few_shot_and_shift_tables_and_plots(tmp_path):
    from ssl_zoo.eval.few_shot import shots_matching
    from ssl_zoo.report_robustness import robustness_plots, robustness_tables

    def shift(top1: float, text: bool) -> dict:
        protocols = ("linear_top1", "knn_top1") + (("zero_shot_top1",) if text else ())
        sets = {name: {"name": name, "family": "shapes", "severity": None, **{p: top1 / 2 for p in protocols}}
                for name in ("sketch", "texture", "scale")}
        sets.update({f"{c}_s{s}": {"name": f"{c}_s{s}", "family": "corruption", "corruption": c, "severity": s,
                                   **{p: top1 - 0.1 * s for p in protocols}} for c in CORRUPTIONS for s in SEVERITIES})
        return {"in_distribution": {p: top1 for p in protocols}, "sets": sets,
                "corruption_mean": {p: top1 - 0.2 for p in protocols}}

    def few_shot(means: list[float], zero_shot: float | None) -> dict:
        result = {"shots": [1, 4], "draws": 3, "weight_decay": 0.01,
                  "top1": {str(k): {"mean": m, "interval": [m - 0.05, m + 0.05], "draws": [m] * 3} for k, m in zip((1, 4), means)}}
        if zero_shot is not None:
            result.update(zero_shot_top1=zero_shot, matches_zero_shot=shots_matching({1: means[0], 4: means[1]}, zero_shot))
        return result

    data = {"classes": ["a", "b", "c", "d"]}  # chance: 25 %
    runs = [
        {"label": "clip_shapes", "evaluation": {"data": data, "metrics": {"linear_top1": 0.6, "zero_shot_top1": 0.4},
                                                 "few_shot": few_shot([0.3, 0.5], 0.4), "shift": shift(0.6, True)}},
        {"label": "supervised", "evaluation": {"data": data, "metrics": {"linear_top1": 0.9},
                                                "few_shot": few_shot([0.6, 0.8], None), "shift": shift(0.9, False)}},
        {"label": "imported", "evaluation": {"metrics": {"linear_top1": 0.5}}},  # scored without either
    ]
    tables, plots = robustness_tables(runs), robustness_plots(runs, tmp_path)
    (few_header, few_rows), (shift_header, shift_rows), _ = tables.values()
    assert few_header[1:3] == ["k=1", "k=4"] and few_rows[0][1] == "30.0 [25.0–35.0]"
    assert few_rows[0][-1] == "2.0 (first k at or above: 4)" and few_rows[1][-1] == "–"
    assert "sketch" in shift_header and "corruptions (mean)" in shift_header
    # Supervised linear: test 90 %, shapes shifts 45 %, corruptions 70 % (their mean), chance 25 %.
    assert shift_rows[3][-2:] == [f"{(0.45 - 0.25) / 0.65:.2f}", f"{(0.70 - 0.25) / 0.65:.2f}"]
    assert [row[:2] for row in shift_rows] == [["clip_shapes", "linear"], ["clip_shapes", "kNN"], ["clip_shapes", "zero-shot"],
                                                ["supervised", "linear"], ["supervised", "kNN"]]
    assert all(path.is_file() and path.stat().st_size > 1000 for path, _ in plots.values())
    assert robustness_tables(runs[2:]) == {} and robustness_plots(runs[2:], tmp_path) == {}


def test_corrupted_copies_are_made_once_per_test_split():
    test = make_shapes(16, 32, seed=2)
    first = {d["name"]: images.images for d, images in shifted_test_sets(test, seed=0)}
    again = {d["name"]: images.images for d, images in shifted_test_sets(test, seed=0)}
    assert all(again[name] is first[name] for name in first if name not in SHAPE_SHIFTS)  # the same tensors
    other = make_shapes(16, 32, seed=3)
    fresh = {d["name"]: images.images for d, images in shifted_test_sets(other, seed=0)}
    assert not torch.equal(fresh["blur_s1"], first["blur_s1"])
