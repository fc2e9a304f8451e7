"""The GPU view pipeline: shapes, ranges, per-sample randomness, seeds and distributions."""

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from kornia.enhance import adjust_hue, normalize
from torchvision.transforms.v2.functional import adjust_hue as tv_adjust_hue

from ssl_zoo.augment import (
    JITTER_OPS, JITTER_ORDERS, AugmentConfig, EvalTransform, ViewAugment, crop_flip_grid, sample_crop_boxes, shift_hue,
)
from ssl_zoo.errors import RecipeError

IDENTITY = dict(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
    blur_p=(0.0, 0.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
)


def random_images(n=64, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_views_have_shape_dtype_and_range():
    config = AugmentConfig(size=24, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
    views = ViewAugment(config, num_views=2)(random_images(16, 32))
    assert views.shape == (2, 16, 3, 24, 24) and views.dtype == torch.float32
    mean = torch.tensor(config.mean)[:, None, None]
    std = torch.tensor(config.std)[:, None, None]
    pixels = views * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.isfinite(views).all()


def test_identity_config_returns_the_image():
    images = random_images(8)
    views = ViewAugment(AugmentConfig(size=32, **IDENTITY), num_views=2)(images)
    expected = images.float() / 255
    assert torch.allclose(views[0], expected, atol=1e-5) and torch.allclose(views[1], expected, atol=1e-5)


def test_views_are_channels_last_like_the_backbone():
    """The backbone's weights are channels-last (methods/base.py); views in that layout reach
    its first convolution as they are, per view (BYOL) and as one batch of 2B (SimCLR)."""
    views = ViewAugment(AugmentConfig(size=24, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)), num_views=2)(random_images(16))
    assert all(view.is_contiguous(memory_format=torch.channels_last) for view in views)
    assert views.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert not views[0].is_contiguous()  # a real layout change: (B, 3, S, S) is not also NCHW-contiguous


def test_views_are_normalised_exactly_as_kornia_normalises():
    """The channels-last normalisation is Kornia's (x - mean) / std to the last bit."""
    mean, std = (0.4913, 0.4821, 0.4465), (0.2470, 0.2435, 0.2616)
    images = random_images(8)
    views = ViewAugment(AugmentConfig(size=32, **{**IDENTITY, "mean": mean, "std": std}), num_views=2)(images)
    unnormalised = ViewAugment(AugmentConfig(size=32, **IDENTITY), num_views=2)(images)
    expected = normalize(unnormalised.flatten(0, 1), torch.tensor(mean), torch.tensor(std))
    assert torch.equal(views.flatten(0, 1), expected)


def test_each_sample_and_each_view_gets_its_own_parameters():
    same = random_images(1).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    views = ViewAugment(AugmentConfig(size=32), num_views=2, seed=0)(same)
    flat = views.flatten(0, 1).flatten(1)  # (64, pixels)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(64, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()  # no two views of the 64 are equal


def test_a_seed_reproduces_the_views_and_another_seed_does_not():
    images = random_images(16)
    config = AugmentConfig(size=32, blur_p=(0.5, 0.5))
    a = ViewAugment(config, seed=7)(images)
    b = ViewAugment(config, seed=7)(images)
    c = ViewAugment(config, seed=8)(images)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_generator_state_travels_in_the_state_dict():
    images = random_images(8)
    first = ViewAugment(AugmentConfig(size=32), seed=3)
    first(images)  # advance the generators
    resumed = ViewAugment(AugmentConfig(size=32), seed=999)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(first(images), resumed(images))


def test_crop_areas_and_ratios_follow_torchvision():
    n, size = 20_000, 32
    boxes = sample_crop_boxes(n, (0.08, 1.0), (3 / 4, 4 / 3), 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    ours_area = boxes[:, 2] * boxes[:, 3]
    torch.manual_seed(0)
    image = torch.zeros(3, size * 8, size * 8)  # a larger image, so torchvision's rounding is small
    theirs = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])[2:] for _ in range(5000)], dtype=torch.float)
    theirs_area = theirs[:, 0] * theirs[:, 1] / (size * 8) ** 2
    assert abs(ours_area.mean() - theirs_area.mean()) < 0.01
    assert abs(ours_area.quantile(0.1) - theirs_area.quantile(0.1)) < 0.02
    assert abs(ours_area.quantile(0.9) - theirs_area.quantile(0.9)) < 0.02
    log_ratio = (boxes[:, 2] / boxes[:, 3]).log()
    assert log_ratio.min() >= math.log(3 / 4) - 1e-4 and log_ratio.max() <= math.log(4 / 3) + 1e-4
    # every box lies inside the image
    assert ((boxes[:, 0] - boxes[:, 2] / 2) >= -1e-6).all() and ((boxes[:, 0] + boxes[:, 2] / 2) <= 1 + 1e-6).all()


def test_flip_and_grayscale_rates():
    n = 4000
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[..., 4:] = 255  # right half white: a flip moves it left
    images[:, 0] = 128  # red channel differs, so only grayscale makes r == g == b
    config = AugmentConfig(size=8, **{**IDENTITY, "flip_p": 0.5, "grayscale_p": 0.2})
    views = ViewAugment(config, num_views=1)(images)[0]
    flipped = views[:, 1, 0, 0] > 0.5  # green channel of the left column is white
    gray = (views[:, 0] - views[:, 1]).abs().amax(dim=(1, 2)) < 1e-4
    assert abs(flipped.float().mean() - 0.5) < 0.03
    assert abs(gray.float().mean() - 0.2) < 0.03


def test_rotation_turns_views_within_its_range_and_zero_leaves_them_alone():
    images = random_images(64)
    # +-90 degrees with the identity crop: a quarter turn of a square view loses no pixel, so
    # views at exactly 90 degrees are rot90 of the image; the angles drawn spread over the range.
    config = AugmentConfig(size=32, **{**IDENTITY, "rotation": 90.0})
    views = ViewAugment(config, num_views=1)(images)[0]
    quarter = torch.full((1,), math.pi / 2)
    grid = crop_flip_grid(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.zeros(1, dtype=torch.bool), 32, quarter)
    turned = torch.nn.functional.grid_sample(images[:1].float() / 255, grid, align_corners=False)
    torch.testing.assert_close(turned, torch.rot90(images[:1].float() / 255, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    unchanged = (views - images.float() / 255).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert unchanged.float().mean() < 0.1  # nearly every view turned
    # rotation 0 draws nothing: the views are those of a config without the key.
    plain = ViewAugment(AugmentConfig(size=32, **IDENTITY), num_views=1)(images)
    torch.testing.assert_close(ViewAugment(AugmentConfig(size=32, **{**IDENTITY, "rotation": 0.0}), num_views=1)(images), plain)
    with pytest.raises(RecipeError, match="augment.rotation"):
        AugmentConfig(rotation=200.0)


def test_byol_asymmetric_solarize_probabilities():
    n = 4000
    images = torch.full((n, 3, 8, 8), 230, dtype=torch.uint8)  # bright: solarize makes it dark
    config = AugmentConfig(size=8, **{**IDENTITY, "solarize_p": (0.0, 0.2)})
    views = ViewAugment(config, num_views=2)(images)
    solarized = views.mean(dim=(2, 3, 4)) < 0.5  # (2, n)
    assert solarized[0].sum() == 0
    assert abs(solarized[1].float().mean() - 0.2) < 0.03


def test_color_jitter_changes_colours_only_with_its_probability():
    n = 2000
    images = random_images(n, 8)
    base = ViewAugment(AugmentConfig(size=8, **IDENTITY), num_views=1)(images)[0]
    config = AugmentConfig(size=8, **{**IDENTITY, "jitter_p": 0.8})
    jittered = ViewAugment(config, num_views=1)(images)[0]
    changed = (jittered - base).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert abs(changed.float().mean() - 0.8) < 0.04


def test_brightness_factors_are_uniform_over_the_jitter_range():
    # A mid-grey image, brightness jitter only: each view's value is 0.5 * factor, with the
    # factor uniform in [1 - b, 1 + b] when jitter applies (probability 0.8), else 1.
    n, b = 4000, 0.4
    images = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    config = AugmentConfig(size=8, **{**IDENTITY, "jitter_p": 0.8, "jitter": (b, 0.0, 0.0, 0.0)})
    factors = ViewAugment(config, num_views=1)(images)[0].mean(dim=(1, 2, 3)) / (128 / 255)
    jittered = factors[(factors - 1).abs() > 1e-4]
    assert abs(len(jittered) / n - 0.8) < 0.03
    assert jittered.min() >= 1 - b - 1e-4 and jittered.max() <= 1 + b + 1e-4
    # Uniform: each fifth of the range holds a fifth of the factors.
    counts = torch.histc(jittered, bins=5, min=1 - b, max=1 + b) / len(jittered)
    assert (counts - 0.2).abs().max() < 0.03


def jitter_all(x, jitter=(0.4, 0.4, 0.4, 0.1), seed=0):
    """ViewAugment's colour jitter applied to every sample of x, and the (n, 4) factors it used."""
    augment = ViewAugment(AugmentConfig(size=x.shape[-1], jitter=jitter), num_views=1, seed=seed)
    generator, draws = torch.Generator().manual_seed(seed), []

    def uniform(low, high):
        draws.append(torch.empty(len(x)).uniform_(low, high, generator=generator))
        return draws[-1]

    out = augment._color_jitter(x, torch.ones(len(x), dtype=torch.bool), uniform)
    return out, torch.stack(draws, dim=1)


def orders_that_explain(x, out, factors):
    """(n, 24) bool: which of the 24 orders of the ops, with these factors, give each output."""
    explains = []
    for order in JITTER_ORDERS:
        y = x
        for op in order:
            y = JITTER_OPS[op](y, factors[:, op]).clamp(0, 1)
        explains.append((y - out).abs().amax(dim=(1, 2, 3)) < 1e-5)
    return torch.stack(explains, dim=1)


def test_color_jitter_draws_an_order_per_group_of_samples():
    # Strong factors on random pixels clip often, so different orders give different
    # outputs. One order per batch would explain every sample; here JITTER_GROUPS orders
    # (8) share the batch.
    x = torch.rand(240, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out, factors = jitter_all(x)
    explains = orders_that_explain(x, out, factors)
    assert explains.any(dim=1).all()  # each sample went through the ops in some order
    assert explains.sum(dim=0).max() <= 240 // 2  # no order explains half of them
    only = explains.sum(dim=1) == 1
    assert explains[only].float().argmax(dim=1).unique().numel() >= 5  # several orders in one batch


def test_color_jitter_orders_do_not_follow_the_position_in_the_batch():
    # Over seeds, the first sample takes many orders, and its neighbour mostly another one:
    # the groups are random, not slices of the batch.
    x = torch.rand(48, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    first_orders, neighbours_differ = set(), 0
    for seed in range(30):
        out, factors = jitter_all(x, seed=seed)
        explains = orders_that_explain(x[:2], out[:2], factors[:2])  # (2, 24)
        if explains[0].sum() == 1:
            first_orders.add(int(explains[0].float().argmax()))
        neighbours_differ += not (explains[0] & explains[1]).any()
    assert len(first_orders) >= 5
    assert neighbours_differ >= 15


@pytest.mark.parametrize("op", range(4))
def test_color_jitter_of_one_op_is_that_op(op):
    # With the other strengths 0 the order does not matter: the result is the op alone,
    # as when one order was drawn per batch.
    x = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    jitter = tuple(strength if i == op else 0.0 for i, strength in enumerate((0.4, 0.4, 0.4, 0.1)))
    out, factors = jitter_all(x, jitter)
    assert (factors[:, op] != (0.0 if op == 3 else 1.0)).all()
    assert torch.allclose(out, JITTER_OPS[op](x, factors[:, op]).clamp(0, 1), atol=1e-5)


def test_shift_hue_equals_kornia_and_torchvision():
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0] = 0.5  # grey: no hue
    x[1, :, :4] = x[1, :1, :4]  # grey rows inside a coloured image
    shift = torch.rand(32, generator=torch.Generator().manual_seed(1)) - 0.5
    ours = shift_hue(x, shift)
    assert torch.allclose(ours, adjust_hue(x, shift * 2 * math.pi), atol=1e-5)
    reference = torch.stack([tv_adjust_hue(image, float(s)) for image, s in zip(x, shift)])
    assert torch.allclose(ours, reference, atol=1e-5)


def test_invalid_config_is_a_clear_error():
    with pytest.raises(RecipeError, match="augment.crop_scale"):
        AugmentConfig(crop_scale=(0.5, 2.0))
    with pytest.raises(RecipeError, match="augment.flip_p"):
        AugmentConfig(flip_p=1.5)


def test_eval_transform_resizes_and_normalises():
    images = random_images(4, 48)
    out = EvalTransform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(images)
    assert out.shape == (4, 3, 32, 32)
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5


def test_eval_transform_takes_the_centre_crop_of_imagenet_style_images():
    """256 px stored images at 224: shorter side to 256 (224 / 0.875), then the centre 224,
    as torchvision's ImageNet presets; a 320 x 256 image is resized to 320 x 256 (unchanged)
    and cropped in its centre."""
    images = random_images(2, 256)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out = EvalTransform(224, mean=mean, std=std)(images)
    expected = images[:, :, 16:240, 16:240].float() / 255  # no resize: the shorter side is already 256
    assert torch.equal(out, expected)
    wide = torch.randint(0, 256, (1, 3, 256, 320), dtype=torch.uint8)
    assert torch.equal(EvalTransform(224, mean=mean, std=std)(wide), wide[:, :, 16:240, 48:272].float() / 255)
    # Larger still: resized so the shorter side is 256, then the same crop of the resized image.
    large = torch.nn.functional.interpolate(images.float(), size=(512, 512), mode="nearest").to(torch.uint8)
    resized = torch.nn.functional.interpolate(large.float() / 255, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(EvalTransform(224, mean=mean, std=std)(large), resized[:, :, 16:240, 16:240])


def test_eval_transform_leaves_images_at_the_eval_size_unchanged_and_never_crops_small_ones():
    images = random_images(3, 32)
    identity = EvalTransform(32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert torch.equal(identity(images), images.float() / 255)
    # CIFAR into a 64 px model: the whole image, resized (a crop would lose 12.5 % of it).
    up = EvalTransform(64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(images)
    whole = torch.nn.functional.interpolate(images.float() / 255, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(up, whole)
