"""The generated shapes dataset: determinism, layout, captions, masks, speed, learnability."""

import time

import pytest
import torch

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    SHAPE_CLASSES,
    SIZES,
    make_shapes,
    make_shapes_with_factors,
)

PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (8, 3), 0..255


@pytest.fixture(scope="module")
def shapes64():
    """800 images at 64 px with their factors, shared by the content checks."""
    return make_shapes_with_factors(800, 64, seed=7)


def test_same_seed_is_bit_identical_and_other_seed_differs():
    a, b, c = make_shapes(96, 32, seed=0), make_shapes(96, 32, seed=0), make_shapes(96, 32, seed=1)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.masks, b.masks)
    assert torch.equal(a.labels, b.labels)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.labels, c.labels)
    assert (a.images != c.images).float().mean() > 0.5  # not a near copy either


def test_layout_dtypes_and_metadata():
    ds, factors = make_shapes_with_factors(40, 48, seed=3)
    assert isinstance(ds, ImageSet)
    assert ds.images.shape == (40, 3, 48, 48) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (40,) and ds.labels.dtype == torch.int64
    assert ds.masks.shape == (40, 48, 48) and ds.masks.dtype == torch.bool
    assert ds.classes == list(SHAPE_CLASSES) == [
        "circle", "square", "triangle", "hexagon", "star", "cross", "ring", "heart"
    ]
    assert ds.name == "shapes"
    assert len(ds.captions) == 40 and all(len(c) == 1 for c in ds.captions)
    for key in ("colour", "size", "background", "clutter"):
        assert factors[key].dtype == torch.int64 and factors[key].shape == (40,)
    for key in ("rotation", "cx", "cy", "radius"):
        assert factors[key].dtype == torch.float32 and factors[key].shape == (40,)
    assert int(factors["colour"].max()) < len(COLOURS)
    assert int(factors["background"].max()) < len(BACKGROUNDS)
    assert 0 <= int(factors["clutter"].min()) and int(factors["clutter"].max()) <= 3
    # Images use the whole range: not blank, not saturated.
    assert 30 < ds.images.float().mean() < 225 and ds.images.float().std() > 30


def test_factors_follow_their_ranges(shapes64):
    _, f = shapes64
    radius_bins = torch.tensor([0.18, 0.26, 0.34])[f["size"]]
    assert (f["radius"] - radius_bins).abs().max() <= 0.02 + 1e-6
    # The whole circumscribed disc is inside the image.
    assert (f["cx"] - f["radius"]).min() >= 0 and (f["cx"] + f["radius"]).max() <= 1
    assert (f["cy"] - f["radius"]).min() >= 0 and (f["cy"] + f["radius"]).max() <= 1
    assert 0 <= f["rotation"].min() and f["rotation"].max() < 2 * torch.pi
    # Every factor value occurs (independent uniform draws over 800 images).
    assert set(f["colour"].tolist()) == set(range(len(COLOURS)))
    assert set(f["size"].tolist()) == {0, 1, 2}
    assert set(f["background"].tolist()) == set(range(len(BACKGROUNDS)))
    assert set(f["clutter"].tolist()) == {0, 1, 2, 3}


def test_balanced_labels_and_4000_images_at_64px_are_fast():
    before = torch.get_num_threads()
    start = time.perf_counter()
    ds = make_shapes(4000, 64, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"make_shapes(4000, 64) took {elapsed:.1f} s (target: well under 5 s)"
    assert torch.get_num_threads() == before  # the single-thread section restores the count
    assert ds.images.shape == (4000, 3, 64, 64)
    assert ds.labels.bincount(minlength=8).tolist() == [500] * 8
    # Not divisible by 8: counts differ by at most one.
    counts = make_shapes(100, 32, seed=0).labels.bincount(minlength=8)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 100


def test_captions_name_the_class_colour_size_and_background(shapes64):
    ds, f = shapes64
    colour_names = list(COLOURS)
    for i in range(0, 800, 37):
        label, colour = int(ds.labels[i]), int(f["colour"][i])
        size, background = int(f["size"][i]), int(f["background"][i])
        expected = (
            f"a {SIZES[size]} {colour_names[colour]} {SHAPE_CLASSES[label]} "
            f"on a {BACKGROUNDS[background]} background"
        )
        assert ds.captions[i] == [expected]
    assert ds.captions[0][0].split()[3] in SHAPE_CLASSES


def test_masks_are_plausible_and_grow_with_the_size_bin(shapes64):
    ds, f = shapes64
    area = ds.masks.float().mean((1, 2))  # fraction of the image
    assert area.min() > 0.01  # every image has its shape
    mean_area = [area[f["size"] == s].mean().item() for s in range(3)]
    assert mean_area[0] < mean_area[1] < mean_area[2]
    # Roughly (r_large / r_small)^2 = 3.6 times more pixels.
    assert 2.5 < mean_area[2] / mean_area[0] < 5.0
    # The mask's centroid sits near the drawn centre (the heart's is a little off-centre).
    h = ds.image_size
    grid = (torch.arange(h).float() + 0.5) / h
    m = ds.masks.float()
    cy = (m.sum(2) * grid).sum(1) / m.sum((1, 2))
    cx = (m.sum(1) * grid).sum(1) / m.sum((1, 2))
    assert (cx - f["cx"]).abs().max() < 0.03 and (cy - f["cy"]).abs().max() < 0.03


def test_shape_pixels_have_the_palette_colour_and_contrast_with_the_rest(shapes64):
    ds, f = shapes64
    images = ds.images.float()  # (N, 3, H, W)
    fg = PALETTE[f["colour"]]  # (N, 3)
    plain = torch.nonzero(f["background"] == BACKGROUNDS.index("plain")).squeeze(1)
    assert len(plain) > 100
    for i in plain[:40].tolist():
        under = images[i][:, ds.masks[i]]  # (3, P) pixels under the mask
        # Interior pixels are exactly the palette colour; edge pixels blend with the background.
        assert (under.median(dim=1).values - fg[i]).abs().max() <= 1
        assert (under.mean(dim=1) - fg[i]).abs().max() < 30
    # Everywhere else the image is far from the shape's colour, so the shape stays visible.
    outside = ~ds.masks.unsqueeze(1)  # (N, 1, H, W)
    dist = (images - fg.view(-1, 3, 1, 1)).norm(dim=1, keepdim=True) / 255  # (N, 1, H, W)
    mean_dist = (dist * outside).sum((1, 2, 3)) / outside.sum((1, 2, 3))
    assert mean_dist.min() > 0.3


def _radial_profile(masks: torch.Tensor, bins: int = 12) -> torch.Tensor:
    """Per mask, the share of its pixels at each distance from its centroid, in units of
    sqrt(area): invariant to position, rotation and size, so only the shape is left."""
    m = masks.float()
    n, h, w = m.shape
    area = m.sum((1, 2))
    ys, xs = torch.arange(h).float().view(1, -1, 1), torch.arange(w).float().view(1, 1, -1)
    cy, cx = (m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area
    dist = torch.hypot(ys - cy.view(-1, 1, 1), xs - cx.view(-1, 1, 1)) / area.sqrt().view(-1, 1, 1)
    bin_index = (dist / 1.2 * bins).long().clamp(max=bins - 1)
    hist = torch.zeros(n, bins).scatter_add_(1, bin_index.view(n, -1), m.view(n, -1))
    return hist / area.view(-1, 1)


def _nearest_centroid_accuracy(x: torch.Tensor, y: torch.Tensor, n_train: int) -> float:
    centroids = torch.stack([x[:n_train][y[:n_train] == k].mean(0) for k in range(8)])
    pred = torch.cdist(x[n_train:], centroids).argmin(1)
    return (pred == y[n_train:]).float().mean().item()


def test_class_is_in_the_shape_not_in_the_nuisances():
    ds = make_shapes(1600, 32, seed=11)
    # Radial profiles of the masks separate the classes well above chance (1/8)...
    shape_acc = _nearest_centroid_accuracy(_radial_profile(ds.masks), ds.labels, 1200)
    assert shape_acc > 0.6
    # ...while the mean colour of the image (colour, background, clutter) says nothing.
    colour_acc = _nearest_centroid_accuracy(ds.images.float().mean((2, 3)), ds.labels, 1200)
    assert colour_acc < 0.22


def test_rejects_empty_requests():
    with pytest.raises(ValueError, match="num_images"):
        make_shapes(0)
    with pytest.raises(ValueError, match="image_size"):
        make_shapes(10, image_size=4)
