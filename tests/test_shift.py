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
    # Texture: every pixel fully inside a shape has one of the unseen colours.
    pixels = texture.images.permute(0, 2, 3, 1)[inside].float() / 255  # (P, 3)
    nearest = torch.cdist(pixels, UNSEEN_COLOURS).min(dim=1).values
    assert len(pixels) > 1000 and (nearest < 0.01).all()


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
    test, test_labels = draw(800)
    centroids = torch.stack([features(train[train_labels == c]).mean(dim=0) for c in range(4)])

    def accuracy(images: torch.Tensor) -> float:
        return (torch.cdist(features(images), centroids).argmin(dim=1) == test_labels).float().mean().item()

    clean = accuracy(test)
    assert clean > 0.99
    for name in CORRUPTIONS:
        scores = [clean] + [accuracy(corrupt(test, name, severity)) for severity in SEVERITIES]
        assert all(a >= b for a, b in zip(scores, scores[1:])), (name, scores)
        assert scores[-1] < clean - 0.2, (name, scores)
