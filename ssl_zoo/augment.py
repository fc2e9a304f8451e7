"""Batched augmentation on the device: uint8 images in, normalised views out.

The view layout. A recipe's ``augment:`` section describes the views in one of two forms:

- the two-view form (SimCLR, BYOL, CLIP, supervised; every recipe before multi-crop):
  ``size`` and ``crop_scale`` for every view, ``blur_p`` and ``solarize_p`` as pairs, one
  value per view; the method's ``num_views`` (1 or 2) says how many views it uses::

      augment: {size: 224, crop_scale: [0.08, 1.0], blur_p: [1.0, 0.1], solarize_p: [0.0, 0.2]}

- view groups (multi-crop: DINO, SwAV, iBOT): ``views`` lists groups, each ``count`` views
  with their own ``size`` (default: ``augment.size``), ``crop_scale``, ``blur_p`` and
  ``solarize_p``. Then the pairs are not read, and must stay at their defaults::

      augment:
        size: 224                     # the global views' side: the backbone's input, evaluation's size
        views:
          - {count: 1, crop_scale: [0.4, 1.0], blur_p: 1.0}
          - {count: 1, crop_scale: [0.4, 1.0], blur_p: 0.1, solarize_p: 0.2}
          - {count: 6, size: 96, crop_scale: [0.05, 0.4], blur_p: 0.5}

  BYOL's two views in this form are two groups of count 1 (the two-view form above is
  exactly ``[{count: 1, blur_p: 1.0}, {count: 1, blur_p: 0.1, solarize_p: 0.2}]``).
  The bundled recipes of two-view methods keep the two-view form: saved recipes, the
  README's commands and the tests override its keys (``--augment.blur_p [0.0, 0.0]``).

Every other key (crop ratio, flip, colour jitter, grayscale, blur sigma, normalisation)
applies to every view. ``AugmentConfig.groups(num_views)`` resolves either form into the
list of groups. Views of one size are drawn together, as one batch (one ``grid_sample``,
one pass of each colour op), in the order the groups list them; each size's draws come
from the same generator, one size after another in order of first appearance, so a
single-size layout draws exactly what the two-view form always drew.

What a method receives: ``ViewAugment.views_by_size`` returns one tensor per size, in
order of first appearance, each (V_s, B, 3, S_s, S_s); the training batch holds it as
``batch["views_by_size"]``, and its first tensor as ``batch["views"]`` (V, B, 3, S, S),
which is every view for single-size layouts. A method declares the views it needs with its
``num_views`` ClassVar: 1 or 2 for the methods above, None for a method that takes its
layout from its recipe's ``views`` (DINO: ``views_by_size[0]`` its global crops,
``views_by_size[1]`` its local ones).

Loaders hand uint8 batches to the device; ``ViewAugment`` makes every view there in a
handful of batched kernels. All random parameters are drawn per sample, on the images'
device, from the module's own seeded generators, so there is no Python loop over
samples and no host synchronisation, and a seed reproduces the views exactly.

The semantics are torchvision's (and Kornia's), which SimCLR and BYOL were defined with:
RandomResizedCrop -> horizontal flip -> ColorJitter (random order) with probability p ->
grayscale -> Gaussian blur -> solarize -> normalise. The colour ops are Kornia's.
ColorJitter's order of its four ops is drawn per group of an 8th of the batch (random
samples), where torchvision draws one per image and Kornia one per batch; one per image
would cost ~18 % of the view pipeline (see ``ViewAugment._color_jitter``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction,
    normalize,
    solarize,
)
from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from ssl_zoo.data.decode import resize_geometry
from ssl_zoo.ranges import range_errors, ranged

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewGroup:
    """One group of views of every image: ``count`` views drawn alike (see the module's docstring)."""

    count: int = ranged(2, at_least=1)
    """Views of every image in this group."""
    size: int | None = ranged(None, at_least=8)
    """Side of these views, in pixels (null: augment.size)."""
    crop_scale: tuple[float, float] = ranged((0.08, 1.0), above=0, at_most=1)
    """Random resized crop: the range of the crop's area, as a fraction of the image's."""
    blur_p: float = ranged(0.5, at_least=0, at_most=1)
    """Probability of a Gaussian blur."""
    solarize_p: float = ranged(0.0, at_least=0, at_most=1)
    """Probability of solarizing."""


def blur_kernel_size(size: int) -> int:
    """The Gaussian blur's kernel side for views of ``size`` pixels."""
    # NOTE: SimCLR blurs with a kernel of 10% of the image side (23 px at 224).
    return max(3, int(0.1 * size) // 2 * 2 + 1)


@dataclass
class AugmentConfig:
    """augment: how every view is made (defaults: SimCLR's ImageNet recipe).

    Either the two-view form (``size``, ``crop_scale``, and ``blur_p`` / ``solarize_p``
    pairs, one value per view: BYOL's views differ there) or view groups (``views``), as
    the module's docstring describes. The other fields apply to every view.
    """

    size: int = ranged(32, at_least=8)
    """Side of the output views, in pixels: the backbone's input and evaluation's size.
    With view groups, the side of those that set none."""
    crop_scale: tuple[float, float] = ranged((0.08, 1.0), above=0, at_most=1)
    """Random resized crop: the range of the crop's area, as a fraction of the image's."""
    crop_ratio: tuple[float, float] = ranged((3 / 4, 4 / 3), above=0)
    """Random resized crop: the range of the crop's aspect ratio (width / height)."""
    flip_p: float = ranged(0.5, at_least=0, at_most=1)
    """Probability of a horizontal flip."""
    rotation: float = ranged(0.0, at_least=0, at_most=180)
    """Random rotation of each view, uniform within +-rotation degrees, made by the crop's own
    sampling (no extra pass; corners beyond the image are reflected); 0: none, as the papers."""
    jitter_p: float = ranged(0.8, at_least=0, at_most=1)
    """Probability of colour jitter."""
    jitter: tuple[float, float, float, float] = ranged((0.4, 0.4, 0.4, 0.1), at_least=0)
    """Colour jitter's brightness, contrast, saturation and hue strengths, as torchvision's
    ColorJitter (hue at most 0.5)."""
    grayscale_p: float = ranged(0.2, at_least=0, at_most=1)
    """Probability of turning a view grey."""
    blur_p: tuple[float, float] = ranged((0.5, 0.5), at_least=0, at_most=1)
    """Probability of a Gaussian blur, for the first and the second view."""
    blur_sigma: tuple[float, float] = ranged((0.1, 2.0), above=0)
    """The range the blur's sigma is drawn from, in pixels of the view."""
    solarize_p: tuple[float, float] = ranged((0.0, 0.0), at_least=0, at_most=1)
    """Probability of solarizing, for the first and the second view."""
    mean: tuple[float, float, float] = ranged(IMAGENET_MEAN, at_least=0, at_most=1)
    """Per-channel mean subtracted from views in [0, 1] (ImageNet's by default)."""
    std: tuple[float, float, float] = ranged(IMAGENET_STD, above=0)
    """Per-channel standard deviation views are divided by (ImageNet's by default)."""
    views: tuple[ViewGroup, ...] = ()
    """View groups, each {count, size, crop_scale, blur_p, solarize_p}, for layouts of more
    than two views or sizes (multi-crop); empty: the two-view form (size, crop_scale,
    blur_p, solarize_p)."""

    def __post_init__(self) -> None:
        from ssl_zoo.errors import RecipeError

        # YAML and jsonargparse hand groups over as dicts or lists; a group is a ViewGroup from here on.
        self.views = tuple(group if isinstance(group, ViewGroup) else ViewGroup(**group) for group in self.views)
        # Checked here too, not only when a recipe loads: views are also made from a bare AugmentConfig.
        errors = range_errors(self, "augment")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if low > high:
                errors.append(f"augment.{name} = {[low, high]} (valid: [low, high] with low <= high)")
        if self.jitter[3] > 0.5:
            errors.append(f"augment.jitter = {list(self.jitter)} (valid: the hue strength, the last, in [0, 0.5])")
        for i, group in enumerate(self.views):
            errors += range_errors(group, f"augment.views[{i}]")
            low, high = group.crop_scale
            if low > high:
                errors.append(f"augment.views[{i}].crop_scale = {[low, high]} (valid: [low, high] with low <= high)")
        if errors:
            raise RecipeError(
                f"Invalid recipe value{'s' if len(errors) > 1 else ''}, out of range: {'; '.join(errors)}. "
                f"Set {'each' if len(errors) > 1 else 'it'} within its range, in the recipe or with --augment.KEY VALUE."
            )
        # With view groups, the two-view form's keys would be silently unused: refuse them.
        defaults = AugmentConfig.__dataclass_fields__
        unused = [name for name in TWO_VIEW_KEYS if self.views and getattr(self, name) != defaults[name].default]
        if unused:
            raise RecipeError(
                f"augment sets both views (view groups) and {', '.join(f'augment.{name}' for name in unused)} "
                "(the two-view form, not read with view groups). Leave them out of augment (at their defaults) "
                "and set them in each group, e.g. views: [{count: 2, crop_scale: [0.2, 1.0], blur_p: 0.5, solarize_p: 0.0}]."
            )

    @property
    def blur_kernel_size(self) -> int:
        """The blur's kernel side for views of ``size`` pixels."""
        return blur_kernel_size(self.size)

    def groups(self, num_views: int | None = None) -> tuple[ViewGroup, ...]:
        """The view layout as groups, every size resolved: ``views`` as given, or the two-view
        form's first ``num_views`` views (default 2) as groups of one view each.

        ``num_views``: the method's (its ``num_views`` ClassVar); with view groups their
        views must add up to it, unless it is None (a method that takes any layout).
        """
        from ssl_zoo.errors import RecipeError

        if not self.views:
            count = 2 if num_views is None else num_views
            if not 1 <= count <= len(self.blur_p):
                raise RecipeError(f"The two-view form of augment makes 1 or 2 views, not {count}; list view groups in augment.views.")
            return tuple(ViewGroup(1, self.size, self.crop_scale, self.blur_p[v], self.solarize_p[v]) for v in range(count))
        total = sum(group.count for group in self.views)
        if num_views is not None and total != num_views:
            raise RecipeError(
                f"augment.views makes {total} view{'s' if total > 1 else ''} of every image, but the method "
                f"trains on {num_views}. Give its groups counts that add up to {num_views}."
            )
        return tuple(replace(group, size=group.size or self.size) for group in self.views)


# The two-view form's keys, which view groups replace.
TWO_VIEW_KEYS = ("crop_scale", "blur_p", "solarize_p")


def sample_crop_boxes(
    n: int, scale: tuple[float, float] | Tensor, ratio: tuple[float, float], aspect: float,
    generator: torch.Generator, device: torch.device, attempts: int = 10,
) -> Tensor:
    """RandomResizedCrop's boxes for n images, as (n, 4) fractions: centre x, y, width, height.

    Vectorised version of torchvision's sampler: draw ``attempts`` (area, log-ratio)
    candidates per image, keep the first that fits, else fall back to the whole image.
    ``aspect`` is the images' height / width. ``scale``: one (low, high) range of the crop's
    area for all, or (n, 2) ranges, one per image.
    """
    shape = (n, attempts)
    if isinstance(scale, Tensor):  # (n, 2): low + (high - low) * U[0, 1)
        low, high = scale[:, :1], scale[:, 1:]  # (n, 1) each
        area = torch.rand(shape, device=device, generator=generator).mul_(high - low).add_(low)
    else:
        area = torch.empty(shape, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(shape, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    width = torch.sqrt(area * log_ratio.exp() * aspect)  # fraction of the image width
    height = torch.sqrt(area / log_ratio.exp() / aspect)  # fraction of the image height
    fits = (width <= 1) & (height <= 1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (n, 1), 0 when none fits
    any_fits = fits.any(dim=1)
    width = torch.where(any_fits, width.gather(1, first).squeeze(1), 1.0)
    height = torch.where(any_fits, height.gather(1, first).squeeze(1), 1.0)
    corner = torch.rand((n, 2), device=device, generator=generator)
    cx = width / 2 + corner[:, 0] * (1 - width)
    cy = height / 2 + corner[:, 1] * (1 - height)
    return torch.stack([cx, cy, width, height], dim=1)


def crop_flip_grid(boxes: Tensor, flip: Tensor, size: int, angle: Tensor | None = None) -> Tensor:
    """Sampling grids that crop each box, resize it to size x size and maybe flip it.

    boxes: (n, 4) centre x, y, width, height as fractions; flip: (n,) bool; angle: (n,)
    radians to turn each view by, about the box's centre (None: no rotation).
    Returns (n, size, size, 2) for ``grid_sample`` (align_corners=False).
    """
    cx, cy, w, h = (column[:, None, None] for column in boxes.unbind(dim=1))  # (n, 1, 1) each
    sign = 1.0 - 2.0 * flip.to(boxes.dtype)[:, None, None]  # -1 mirrors the x axis
    # Pixel centres of the output in [-1, 1] (align_corners=False).
    u = torch.arange(size, device=boxes.device, dtype=boxes.dtype).mul_(2 / size).add_(1 / size - 1)
    # Output coordinate u reads input coordinate (2 cx - 1) + w * sign * u (and alike in y).
    # Written out rather than F.affine_grid, whose batched matmul is most of its cost.
    if angle is None:
        x = (2 * cx - 1) + (w * sign) * u[None, None, :]  # (n, 1, size)
        y = (2 * cy - 1) + h * u[None, :, None]  # (n, size, 1)
        return torch.stack(torch.broadcast_tensors(x, y), dim=-1)  # (n, size, size, 2)
    # Rotated: the output's coordinates turn by the angle before they are scaled into the box.
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]  # (n, 1, 1) each
    ux, uy = u[None, None, :], u[None, :, None]
    x = (2 * cx - 1) + (w * sign) * (cos * ux - sin * uy)  # (n, size, size)
    y = (2 * cy - 1) + h * (sin * ux + cos * uy)  # (n, size, size)
    return torch.stack([x, y], dim=-1)  # (n, size, size, 2)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision's ``adjust_hue``, one shift per image: rotate each pixel's HSV hue.

    x: (N, 3, H, W) RGB in [0, 1]; shift: (N,) fractions of the colour circle in
    [-0.5, 0.5]. Returns (N, 3, H, W).

    NOTE: the same function as Kornia's ``adjust_hue`` (tested equal), written in its
    closed form: value and chroma are kept, only the hue moves, so RGB -> HSV needs just
    the hue and HSV -> RGB is one formula for all three channels. On 1,024 views of 32 px
    and 2 CPU cores, Kornia's takes 39-47 ms (most of the whole pipeline), this 11-25 ms.
    """
    red, green, blue = x.unbind(dim=1)  # (N, H, W) each
    value, chroma = x.amax(dim=1), x.amin(dim=1).neg_().add_(x.amax(dim=1))  # (N, H, W)
    # Grey pixels (chroma 0) have any hue; the clamp only keeps their 0 / 0 finite.
    safe = chroma.clamp_min(1e-12)
    sextant = torch.where(  # hue in sextants, in [-1, 5): which channel is the largest
        value == red, (green - blue).div_(safe),
        torch.where(value == green, (blue - red).div_(safe).add_(2), (red - green).div_(safe).add_(4)),
    )
    hue = sextant.add_(6 * shift[:, None, None])  # (N, H, W)
    # HSV -> RGB: channel = value - chroma * clamp(min(k, 4 - k), 0, 1), where
    # k = (hue + offset) mod 6 and the offsets of R, G, B are 5, 3, 1 sextants. One plane
    # at a time, written in place: fresh (N, 3, H, W) buffers cost more than the arithmetic.
    out = torch.empty_like(x)
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(hue + offset, 6)
        weight = torch.minimum(k, 4 - k, out=k).clamp_(0, 1)
        torch.addcmul(value, weight, chroma, value=-1, out=out[:, channel])
    return out


# ColorJitter's ops, and their 24 orders.
JITTER_OPS = (
    adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
    adjust_saturation_with_gray_subtraction, shift_hue,
)
JITTER_ORDERS = list(itertools.permutations(range(len(JITTER_OPS))))
JITTER_GROUPS = 8  # random groups of samples per batch, each with its own order (see _color_jitter)


class ViewAugment(nn.Module):
    """Makes the recipe's views of every image of a uint8 batch, on its device.

    ``views_by_size``: uint8 (B, 3, H, W) -> one float tensor per view size, in order of
    first appearance in the layout (``AugmentConfig.groups``), each (V_s, B, 3, S_s, S_s):
    normalised, in channels-last layout like the backbone's weights: every view ``[v]``
    (and the flattened ``(V_s * B, 3, S_s, S_s)``) is ``channels_last``-contiguous, so the
    first convolution reads it as is instead of converting it at every step.
    ``forward``: the same for single-size layouts, as the one tensor (V, B, 3, S, S).
    """

    def __init__(self, config: AugmentConfig, num_views: int | None = 2, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        groups = config.groups(num_views)
        self.num_views = sum(group.count for group in groups)
        # Views of one size are made together: (size, per-view groups) in order of first appearance.
        by_size: dict[int, list[ViewGroup]] = {}
        for group in groups:
            by_size.setdefault(group.size, []).extend([group] * group.count)
        self.sizes = list(by_size)
        self._size_views = list(by_size.values())  # per size: one ViewGroup per view
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self._pending_state: dict[str, Tensor] = {}
        # Constants live on the device with the module: a tensor made from Python numbers
        # in forward would be a blocking host -> GPU copy at every step.
        self.register_buffer("mean", torch.tensor(config.mean), persistent=False)
        self.register_buffer("std", torch.tensor(config.std), persistent=False)
        for i, views in enumerate(self._size_views):  # per view of size i: (V_i,) and (V_i, 2)
            self.register_buffer(f"blur_p_{i}", torch.tensor([g.blur_p for g in views]), persistent=False)
            self.register_buffer(f"solarize_p_{i}", torch.tensor([g.solarize_p for g in views]), persistent=False)
            self.register_buffer(f"crop_scale_{i}", torch.tensor([g.crop_scale for g in views]), persistent=False)
        self.register_buffer("solarize_threshold", torch.tensor(0.5), persistent=False)

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator for ``device``, made on first use from the seed (and the rank)."""
        key = str(device) if device.type == "cpu" else device.type
        if key not in self._generators:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + 1_000_003 * rank)  # other views on other ranks
            if key in self._pending_state:
                gen.set_state(self._pending_state.pop(key))
            self._generators[key] = gen
        return self._generators[key]

    # Generator states travel in the module's state_dict, so a resumed run draws the
    # same views as an unbroken one.
    def get_extra_state(self) -> dict[str, Tensor]:
        return {key: gen.get_state() for key, gen in self._generators.items()} | self._pending_state

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._generators.clear()
        self._pending_state = dict(state)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> (V, B, 3, S, S): every view, for layouts of one size."""
        if len(self.sizes) > 1:
            raise ValueError(f"views of {len(self.sizes)} sizes ({self.sizes}) are not one tensor: use views_by_size")
        return self.views_by_size(images)[0]

    @torch.no_grad()
    def views_by_size(self, images: Tensor) -> list[Tensor]:
        """uint8 (B, 3, H, W) -> [(V_s, B, 3, S_s, S_s) for each view size, in order of first appearance]."""
        return [self._views_of_size(images, i) for i in range(len(self.sizes))]

    def _views_of_size(self, images: Tensor, index: int) -> Tensor:
        """The views of the layout's ``index``-th size: uint8 (B, 3, H, W) -> (V, B, 3, S, S)."""
        cfg, size, groups = self.config, self.sizes[index], self._size_views[index]
        views = len(groups)
        batch, _, height, width = images.shape
        n = views * batch  # every view of every image is one sample below
        device = images.device
        gen = self.generator(device)

        def coin(p: float | Tensor) -> Tensor:  # (n,) bool, True with probability p
            return torch.rand(n, device=device, generator=gen) < p

        def uniform(low: float, high: float) -> Tensor:  # (n,)
            return torch.empty(n, device=device).uniform_(low, high, generator=gen)

        def per_view(values: Tensor) -> Tensor:  # (V, ...) -> (n, ...), view-major like the output
            return values.to(device).repeat_interleave(batch, dim=0)

        # Crop + resize + flip of every view in one grid_sample: the grids of the views
        # are stacked along the output height, so the input is read once and not copied.
        # One crop scale for all views draws as the two-view form always did; several, per sample.
        scales = {group.crop_scale for group in groups}
        scale = next(iter(scales)) if len(scales) == 1 else per_view(getattr(self, f"crop_scale_{index}"))
        boxes = sample_crop_boxes(n, scale, cfg.crop_ratio, height / width, gen, device)
        flip = coin(cfg.flip_p)
        angle = uniform(-cfg.rotation, cfg.rotation).deg2rad_() if cfg.rotation > 0 else None  # drawn only if used
        grid = crop_flip_grid(boxes, flip, size, angle)  # (n, S, S, 2), view-major
        grid = grid.view(views, batch, size, size, 2).transpose(0, 1)
        grid = grid.reshape(batch, views * size, size, 2)
        x = images.float().div_(255)  # (B, 3, H, W) in [0, 1]
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = x.view(batch, 3, views, size, size).transpose(0, 2).transpose(1, 2)
        x = x.reshape(n, 3, size, size)  # (V*B, 3, S, S), view-major

        if cfg.jitter_p > 0:
            x = self._color_jitter(x, coin(cfg.jitter_p), uniform)
        if cfg.grayscale_p > 0:
            gray = rgb_to_grayscale(x).expand_as(x)
            x = torch.where(coin(cfg.grayscale_p)[:, None, None, None], gray, x)
        if any(group.blur_p > 0 for group in groups):
            # NOTE: the sigmas come from the CPU generator: Kornia checks them on the host
            # (sigma > 0), which would wait for the GPU if they lived there.
            cpu = self.generator(torch.device("cpu"))
            sigma = torch.empty(n).uniform_(*cfg.blur_sigma, generator=cpu)[:, None].expand(n, 2)
            blurred = gaussian_blur2d(x, blur_kernel_size(size), sigma, border_type="reflect")
            x = torch.where(coin(per_view(getattr(self, f"blur_p_{index}")))[:, None, None, None], blurred, x)
        if any(group.solarize_p > 0 for group in groups):
            solarized = solarize(x, thresholds=self.solarize_threshold.to(device))
            x = torch.where(coin(per_view(getattr(self, f"solarize_p_{index}")))[:, None, None, None], solarized, x)

        # (x - mean) / std as Kornia's normalize (the same values), then channels-last. NOTE:
        # on the CPU this order is the cheapest found: 1.6 ms for 1,024 views of 32 px against
        # 0.9 ms for NCHW output, while normalising into a channels-last buffer took 2.9 ms and
        # in place after the layout change 13.6 ms (min of 100 calls, 2 shared CPU cores).
        x = x.sub(self.mean.to(device)[:, None, None]).div_(self.std.to(device)[:, None, None])
        return x.contiguous(memory_format=torch.channels_last).view(views, batch, 3, size, size)

    def _color_jitter(self, x: Tensor, apply: Tensor, uniform) -> Tensor:
        """torchvision's ColorJitter with per-sample factors; identity where ``apply`` is False."""
        b, c, s, h = self.config.jitter
        one = torch.ones_like(apply, dtype=x.dtype)
        factors = torch.stack([  # (n, 4), in the order of JITTER_OPS
            torch.where(apply, uniform(max(0.0, 1 - b), 1 + b), one),
            torch.where(apply, uniform(max(0.0, 1 - c), 1 + c), one),
            torch.where(apply, uniform(max(0.0, 1 - s), 1 + s), one),
            torch.where(apply, uniform(-h, h), 0 * one),  # fraction of the colour circle
        ], dim=1)
        # NOTE: torchvision draws one of the 24 orders of the ops per image; we draw one per
        # group: the samples are shuffled into JITTER_GROUPS equal groups, whose orders are
        # drawn without replacement on the CPU generator. Each sample gets each order with
        # probability 1/24 and shares it with an 8th of the batch; the device only learns
        # slice bounds, so nothing waits for it. Per image would be 24 groups, but each
        # group costs ~0.18 ms of op dispatch (host time a GPU step pays too): ~18 % of the
        # view pipeline, against ~6 % for 8 groups. Measured end to end (512 images x 2 views
        # of 32 px, 2 CPU cores, median of 40 calls, three runs each), one order per batch
        # took 43-50 ms and 8 groups 37-44 ms: no cost beyond the noise.
        n, out = len(x), torch.empty_like(x)
        shuffle = torch.rand(n, device=x.device, generator=self.generator(x.device)).argsort()
        orders = torch.randperm(24, generator=self.generator(torch.device("cpu")))[:JITTER_GROUPS].tolist()
        for j, order in enumerate(orders):
            group = shuffle[n * j // len(orders):n * (j + 1) // len(orders)]
            y, f = x[group], factors[group]
            for op in JITTER_ORDERS[order]:
                y = JITTER_OPS[op](y, f[:, op]).clamp_(0, 1)
            out.index_copy_(0, group, y)
        return out


# Evaluation crops the centre 87.5 % of a larger image, as torchvision's ImageNet presets
# (and every SSL paper's ImageNet evaluation) do: 256 -> 224.
EVAL_CROP_FRACTION = 0.875


class EvalTransform(nn.Module):
    """The deterministic transform used for evaluation, then normalisation.

    - Images larger than ``size`` (ImageNet shards stored at 256 px): the shorter side is
      resized to ``round(size / 0.875)`` (256 for 224), then the centre ``size`` crop is
      taken, as torchvision's ImageNet presets do.
    - Images at ``size`` (CIFAR, shapes) are unchanged; smaller ones (CIFAR into a 224 px
      model) are resized whole to ``size``, as transfer evaluations do, never cropped.

    forward: uint8 (B, 3, H, W) -> float (B, 3, size, size).
    """

    def __init__(self, size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.size = size
        self.resize_size = round(size / EVAL_CROP_FRACTION)
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float().div_(255)
        h, w = x.shape[-2:]
        size = self.size
        if min(h, w) > size:
            h, w, _, _ = resize_geometry(h, w, self.resize_size)  # the shorter side to resize_size, as every path resizes
            if (h, w) != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            top, left = (h - size) // 2, (w - size) // 2
            x = x[:, :, top : top + size, left : left + size]
        elif (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return normalize(x, self.mean.to(x.device), self.std.to(x.device))
