"""The embedded "shapes" dataset: coloured geometric shapes drawn by code, no files needed.

Each image shows one shape (the class label) plus nuisance factors sampled independently:
colour, size, position, rotation, background texture and clutter. The nuisances carry no
information about the class, so a network has to learn shape to classify well, which is
what makes a random-init encoder clearly worse than a trained one on this set.

Everything is drawn with whole-batch torch ops from one ``torch.Generator`` (the same seed
gives bit-identical tensors). Python loops run over chunks of 256 images, classes,
background kinds and clutter slots, never over single images. Coordinates are in units of
the image side: (0, 0) is the top-left corner, (1, 1) the bottom-right one; x runs right,
y runs down.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.data.spec import DatasetSpec
from ssl_zoo.environment import one_torch_thread
from ssl_zoo.errors import RecipeError
from ssl_zoo.ranges import ranged

if TYPE_CHECKING:
    from ssl_zoo.recipe import DataConfig

SHAPE_CLASSES = ("circle", "square", "triangle", "hexagon", "star", "cross", "ring", "heart")

# Saturated, mutually distinct colours; backgrounds are then drawn to contrast with them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 220, 30),
    "purple": (150, 40, 190),
    "orange": (250, 130, 10),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SIZES = ("small", "medium", "large")
SIZE_RADII = (0.18, 0.26, 0.34)  # circumradius of the shape, as a fraction of the image side
RADIUS_JITTER = 0.02  # +- uniform, so that the three bins stay apart

BACKGROUNDS = ("plain", "striped", "checkered", "dotted", "noise")
MAX_CLUTTER = 3

# A colour closer than this (Euclidean RGB distance, channels in [0, 1]) to the shape's colour
# would make the shape hard to see; backgrounds and clutter are resampled until they are not.
MIN_CONTRAST = 0.5


# ----------------------------------------------------------------------------------------
# Shapes: inside tests in the shape's own frame, where the shape fits the unit disc.


def _folded_polar(u: torch.Tensor, v: torch.Tensor, sector: float) -> tuple[torch.Tensor, ...]:
    """Radius and angle folded into [0, sector / 2]: shapes with that mirror symmetry only
    need testing against one edge."""
    phi = torch.remainder(torch.atan2(v, u), sector)
    return torch.hypot(u, v), torch.minimum(phi, sector - phi)


def _polygon(u: torch.Tensor, v: torch.Tensor, sides: int) -> torch.Tensor:
    """Regular polygon of circumradius 1, an edge's midpoint at angle 0."""
    r, phi = _folded_polar(u, v, 2 * math.pi / sides)
    return r * torch.cos(phi) <= math.cos(math.pi / sides)  # within the apothem of that edge


def _star(u: torch.Tensor, v: torch.Tensor, points: int = 5, inner: float = 0.45) -> torch.Tensor:
    """Star with tips at radius 1 and notches at radius ``inner``."""
    sector = 2 * math.pi / points
    r, phi = _folded_polar(u, v, sector)  # phi = 0: a tip, phi = sector / 2: a notch
    # The edge from tip (1, 0) to notch (bx, by) lies on the line p . n = cos(beta), where n is
    # its outward unit normal, at angle beta.
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    beta = math.atan2(1 - bx, by)
    return r * torch.cos(phi - beta) <= math.cos(beta)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.6**2)


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The quartic heart (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled and centred into the unit disc."""
    # Flip so the lobes point up before rotation; 1.25 and 0.25 map the heart's smallest
    # enclosing circle (centre (0, 0.25), radius 1.25) onto the unit disc.
    x = 1.25 * u
    y = -1.25 * v + 0.25
    return (x * x + y * y - 1) ** 3 <= x * x * y**3


_INSIDE: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    lambda u, v: u * u + v * v <= 1.0,  # circle
    lambda u, v: _polygon(u, v, 4),  # square
    lambda u, v: _polygon(u, v, 3),  # triangle
    lambda u, v: _polygon(u, v, 6),  # hexagon
    _star,
    _cross,
    _ring,
    _heart,
)


def _shape_coverage(
    labels: torch.Tensor,  # int64 (N,)
    cx: torch.Tensor,  # float (N,)
    cy: torch.Tensor,  # float (N,)
    radius: torch.Tensor,  # float (N,)
    rotation: torch.Tensor,  # float (N,), radians
    size: int,
) -> torch.Tensor:
    """Fraction of each pixel the shape covers, float (N, size, size), from 2x2 supersampling."""
    fine = 2 * size
    grid = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine  # (2S,) pixel centres
    coverage = torch.zeros(len(labels), size, size)
    for k, inside_fn in enumerate(_INSIDE):
        idx = torch.nonzero(labels == k).squeeze(1)
        if len(idx) == 0:
            continue
        r = radius[idx].view(-1, 1, 1)
        dx = (grid.view(1, 1, -1) - cx[idx].view(-1, 1, 1)) / r  # (n, 1, 2S)
        dy = (grid.view(1, -1, 1) - cy[idx].view(-1, 1, 1)) / r  # (n, 2S, 1)
        cos, sin = torch.cos(rotation[idx]).view(-1, 1, 1), torch.sin(rotation[idx]).view(-1, 1, 1)
        u = dx * cos + dy * sin  # (n, 2S, 2S), rotated into the shape's frame
        v = dy * cos - dx * sin
        fine_mask = inside_fn(u, v).float().unsqueeze(1)  # (n, 1, 2S, 2S)
        coverage[idx] = F.avg_pool2d(fine_mask, 2).squeeze(1)
    return coverage


# ----------------------------------------------------------------------------------------
# Colours, backgrounds and clutter.


def _rgb_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=-1)


def _sample_colours(
    n: int, ok: Callable[[torch.Tensor], torch.Tensor], g: torch.Generator
) -> torch.Tensor:
    """Uniform RGB colours (n, 3) in [0, 1], redrawn (vectorised) where ``ok`` says False."""
    colours = torch.rand(n, 3, generator=g)
    for _ in range(50):  # most draws pass, so 50 rounds leave none to redraw in practice
        bad = ~ok(colours)
        if not bad.any():
            break
        colours[bad] = torch.rand(int(bad.sum()), 3, generator=g)
    return colours


def _background_weight(kind: int, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Mixing weight between the two background colours, float (n, size, size) in [0, 1].

    Edges are made about one pixel wide (a clamped, scaled sine or distance), so textures
    are antialiased without supersampling.
    """
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = pix.view(1, -1, 1), pix.view(1, 1, -1)  # (1, S, 1), (1, 1, S)
    name = BACKGROUNDS[kind]
    if name == "plain":
        return torch.zeros(n, size, size)
    if name in ("striped", "checkered"):
        freq = (3 + 5 * torch.rand(n, generator=g)).view(-1, 1, 1)  # cycles per image side
        angle = (math.pi * torch.rand(n, generator=g)).view(-1, 1, 1)
        phase = 2 * math.pi * torch.rand(n, 2, generator=g)
        along = x * torch.cos(angle) + y * torch.sin(angle)  # (n, S, S)
        wave = torch.sin(2 * math.pi * freq * along + phase[:, 0].view(-1, 1, 1))
        if name == "checkered":
            across = y * torch.cos(angle) - x * torch.sin(angle)
            wave = wave * torch.sin(2 * math.pi * freq * across + phase[:, 1].view(-1, 1, 1))
        sharpness = size / (2 * math.pi * freq)  # slope of the sine at a crossing -> ~1 px edge
        return (0.5 + wave * sharpness).clamp(0, 1)
    if name == "dotted":
        freq = (4 + 4 * torch.rand(n, generator=g)).view(-1, 1, 1)  # dots per image side
        dot_radius = (0.15 + 0.15 * torch.rand(n, generator=g)).view(-1, 1, 1)  # in cells
        phase = torch.rand(n, 2, generator=g)
        fx = torch.remainder(x * freq + phase[:, 0].view(-1, 1, 1), 1) - 0.5
        fy = torch.remainder(y * freq + phase[:, 1].view(-1, 1, 1), 1) - 0.5
        dist = torch.sqrt(fx * fx + fy * fy)  # (n, S, S), to the nearest dot centre, in cells
        return ((dot_radius - dist) * size / freq + 0.5).clamp(0, 1)
    # noise: smooth random blobs (a bilinearly upsampled 6x6 grid) plus fine grain
    coarse = torch.rand(n, 1, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    grain = 0.1 * torch.randn(n, 1, size, size, generator=g)
    return (smooth + grain).squeeze(1).clamp(0, 1)


def _draw_background(
    background: torch.Tensor, fg: torch.Tensor, size: int, g: torch.Generator
) -> torch.Tensor:
    """Textured backgrounds float (N, 3, S, S) whose colours all contrast with ``fg`` (N, 3)."""
    n = len(background)
    c1 = _sample_colours(n, lambda c: _rgb_distance(c, fg) >= MIN_CONTRAST, g)
    # The second colour must also differ from the first (or the texture vanishes), and so must
    # their blend from the shape colour (textures mix the two at edges and in the noise).
    c2 = _sample_colours(
        n,
        lambda c: (_rgb_distance(c, fg) >= MIN_CONTRAST)
        & (_rgb_distance(c, c1) >= 0.3)
        & (_rgb_distance((c + c1) / 2, fg) >= 0.4),
        g,
    )
    weight = torch.zeros(n, size, size)
    for kind in range(len(BACKGROUNDS)):
        idx = torch.nonzero(background == kind).squeeze(1)
        if len(idx):
            weight[idx] = _background_weight(kind, len(idx), size, g)
    c1, c2 = c1.view(n, 3, 1, 1), c2.view(n, 3, 1, 1)
    return c1 + weight.unsqueeze(1) * (c2 - c1)  # (N, 3, S, S)


def _draw_clutter(
    images: torch.Tensor,  # float (N, 3, S, S), modified in place
    count: torch.Tensor,  # int64 (N,)
    fg: torch.Tensor,  # float (N, 3)
    cx: torch.Tensor,
    cy: torch.Tensor,
    radius: torch.Tensor,
    g: torch.Generator,
) -> None:
    """Up to MAX_CLUTTER small blobs or short lines, kept off the shape and unlike its colour.

    Drawn before the shape, so even a distractor that could not be placed clear of the shape
    ends up underneath it and never hides it.
    """
    n, _, size, _ = images.shape
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = pix.view(1, -1, 1), pix.view(1, 1, -1)
    for slot in range(MAX_CLUTTER):
        # Parameters are drawn for every image, so the draws do not depend on the counts.
        # A distractor is a thick segment: a short line, or (length 0) a round blob.
        is_line = torch.rand(n, generator=g) < 0.5
        half_length = torch.where(is_line, 0.07 + 0.05 * torch.rand(n, generator=g), 0.0)
        half_width = torch.where(  # lines >= ~1.2 px wide; blobs of radius 0.04..0.07
            is_line,
            0.6 / size + 0.01 * torch.rand(n, generator=g),
            0.04 + 0.03 * torch.rand(n, generator=g),
        )
        angle = math.pi * torch.rand(n, generator=g)
        colour = _sample_colours(n, lambda c: _rgb_distance(c, fg) >= MIN_CONTRAST, g)
        # Centres anywhere inside the image but clear of the shape's disc (resample a few times).
        reach = radius + half_length + half_width + 0.02
        px, py = torch.rand(n, generator=g), torch.rand(n, generator=g)
        for _ in range(20):
            bad = torch.hypot(px - cx, py - cy) < reach
            if not bad.any():
                break
            k = int(bad.sum())
            px[bad], py[bad] = torch.rand(k, generator=g), torch.rand(k, generator=g)

        idx = torch.nonzero(count > slot).squeeze(1)  # images with more than `slot` of them
        col = lambda t: t[idx].view(-1, 1, 1)  # noqa: E731  (N,) -> (m, 1, 1)
        dx, dy = x - col(px), y - col(py)  # (m, 1, S), (m, S, 1)
        cos, sin, half = col(torch.cos(angle)), col(torch.sin(angle)), col(half_length)
        along = (dx * cos + dy * sin).clamp_(-half, half)  # (m, S, S), nearest point on segment
        dist = torch.hypot(dx - along * cos, dy - along * sin) - col(half_width)  # image sides
        alpha = torch.zeros(n, 1, size, size)
        alpha[idx] = (0.5 - dist * size).clamp_(0, 1).unsqueeze(1)  # ~1 px soft edge
        images.lerp_(colour.view(n, 3, 1, 1), alpha)


# Images are rendered this many at a time. Every temporary then stays under ~16 MB at 64 px
# (the float image chunk), memory the allocator reuses; whole-dataset temporaries of hundreds
# of MB are mmapped afresh for every op, and their page faults cost more than the maths.
_CHUNK = 256


def _render(
    labels: torch.Tensor,  # int64 (n,)
    f: dict[str, torch.Tensor],  # the factors of these n images
    size: int,
    g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, 3, S, S) and bool shape masks (n, S, S) of a chunk of images."""
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255  # (8, 3)
    fg = palette[f["colour"]]  # (n, 3)
    images = _draw_background(f["background"], fg, size, g)  # (n, 3, S, S) float in [0, 1]
    _draw_clutter(images, f["clutter"], fg, f["cx"], f["cy"], f["radius"], g)
    coverage = _shape_coverage(labels, f["cx"], f["cy"], f["radius"], f["rotation"], size)
    images.lerp_(fg.view(-1, 3, 1, 1), coverage.unsqueeze(1))  # the shape goes on top
    return images.mul_(255).round_().clamp_(0, 255).to(torch.uint8), coverage >= 0.5


def make_shapes_with_factors(
    num_images: int = 4000, image_size: int = 32, seed: int = 0, radii: tuple[float, ...] = SIZE_RADII
) -> tuple[ImageSet, dict[str, torch.Tensor]]:
    """The shapes dataset and the factors each image was drawn from.

    ``radii``: the shape sizes drawn from (circumradii, fractions of the image side, each
    +- RADIUS_JITTER); other than ``SIZE_RADII`` only for a test set shifted in scale
    (``ssl_zoo.data.shapes_shift``), whose "size" then indexes ``radii``, not ``SIZES``.

    Factors (all of length N): int64 indices "colour" (into ``COLOURS``), "size" (into
    ``SIZES``), "background" (into ``BACKGROUNDS``), "clutter" (number of distractors,
    0..3); float "rotation" (radians), "cx", "cy" (shape centre) and "radius" (shape
    circumradius), the last three as fractions of the image side.
    """
    if num_images < 1 or image_size < 8:
        raise ValueError(
            f"make_shapes needs num_images >= 1 and image_size >= 8; "
            f"got num_images={num_images}, image_size={image_size}."
        )
    g = torch.Generator().manual_seed(seed)
    n = num_images
    # Balanced classes: label i % 8, shuffled.
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]
    size = torch.randint(len(radii), (n,), generator=g)
    radius = torch.tensor(radii)[size] + RADIUS_JITTER * (2 * torch.rand(n, generator=g) - 1)
    factors = {
        "colour": torch.randint(len(COLOURS), (n,), generator=g),
        "size": size,
        "background": torch.randint(len(BACKGROUNDS), (n,), generator=g),
        "clutter": torch.randint(MAX_CLUTTER + 1, (n,), generator=g),
        "rotation": 2 * math.pi * torch.rand(n, generator=g),
        # The shape fits its circumscribed disc, so a centre in [r, 1 - r] keeps it inside.
        "cx": radius + (1 - 2 * radius) * torch.rand(n, generator=g),
        "cy": radius + (1 - 2 * radius) * torch.rand(n, generator=g),
        "radius": radius,
    }

    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    with one_torch_thread():
        for start in range(0, n, _CHUNK):
            part = slice(start, start + _CHUNK)
            chunk = {k: v[part] for k, v in factors.items()}
            images[part], masks[part] = _render(labels[part], chunk, image_size, g)

    colour_names = list(COLOURS)
    captions = [
        [f"a {SIZES[s]} {colour_names[c]} {SHAPE_CLASSES[k]} on a {BACKGROUNDS[b]} background"]
        for k, c, s, b in zip(
            labels.tolist(),
            factors["colour"].tolist(),
            size.tolist(),
            factors["background"].tolist(),
        )
    ]
    dataset = ImageSet(
        images=images,
        labels=labels,
        classes=list(SHAPE_CLASSES),
        captions=captions,
        masks=masks,
        name="shapes",
    )
    return dataset, factors


def make_shapes(num_images: int = 4000, image_size: int = 32, seed: int = 0) -> ImageSet:
    """``num_images`` shapes images of ``image_size`` px, the same for the same seed."""
    return make_shapes_with_factors(num_images, image_size, seed)[0]


@functools.lru_cache(maxsize=4)
def _drawn_once(num_images: int, image_size: int, seed: int) -> ImageSet:
    # bench loads the same splits for every run, its evaluation and its report: drawing
    # 20,000 images takes seconds a time on one core, keeping them ~80 MB.
    return make_shapes(num_images, image_size, seed)


@dataclasses.dataclass
class ShapesConfig:
    """shapes: how many images are drawn (the recipe's `shapes:` section)."""

    num_images: int = ranged(4000, at_least=1)
    """Training images (validation: a quarter as many)."""


def _load_shapes_split(config: DataConfig, split: str, seed: int) -> ImageSet:
    """The recipe's shapes split: ``shapes.num_images`` for training, a quarter as many for val."""
    if split not in ("train", "val"):
        raise RecipeError(f"The shapes dataset has splits train and val, not '{split}'.")
    options: ShapesConfig = config.options
    count = options.num_images if split == "train" else max(options.num_images // 4, 1)
    drawn = _drawn_once(count, config.image_size, seed if split == "train" else seed + 1)
    return dataclasses.replace(drawn)  # its own ImageSet (a caller may set its fields), the same tensors


# Labelled (the shape) and captioned; retrieval scores on the validation images.
DatasetSpec("shapes", load=_load_shapes_split, splits=("train", "val"), retrieval_split="val", config=ShapesConfig).register()
