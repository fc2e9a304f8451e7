"""Dense zero-shot segmentation: can image-text training label pixels with no mask labels?

    images -> backbone's map before pooling (``ssl_zoo.backbones.dense_features``), (B, D, h, w)
      -> each position into the joint space (the model's ``embed_image_features``), unit vectors
      -> cosine with each class prompt's embedding (``zero_shot_classifier``), (B, K, h, w)
      -> bilinear upsampling to the masks' side, argmax per pixel
      -> mean IoU and pixel accuracy against the dataset's masks

LSeg, GroupViT and MaskCLIP ask this question; the mapping is MaskCLIP's (Zhou et al. 2022).
Beside the zero-shot score: chance (the training masks' majority class, predicted everywhere)
and a supervised upper bound (a per-position linear probe on the same dense features,
trained on the training masks).

Classes: the dataset's, plus background as one more class (index C), prompted with the
same templates as the others and the name ``BACKGROUND``. A mask marks where the image's
one labelled object is; every other pixel is background.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.backbones import dense_features
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.linear import fit_logistic_regression

# NOTE: shapes' captions end "on a <texture> background"; "background" alone is the word
# they all share, so it is the name the background prompts use ("a photo of a background.").
BACKGROUND = "background"
PROBE_PIXELS_PER_IMAGE = 16  # neighbouring pixels are alike: more images, fewer pixels each
PROBE_WEIGHT_DECAY = 1e-4  # the probe's L2 penalty: fixed, since it fits tens of thousands of positions
GRID_IMAGES = 6  # test images the report shows with their masks and predictions
GRID_SIDE = 96  # at most this many pixels a side in the results (base64 bytes: ~50 kB at 32 px, ~440 kB at 96)


@dataclass
class DenseResult:
    metrics: dict[str, float]  # dense_miou, dense_pixel_acc, dense_chance_*, dense_probe_*
    class_names: list[str]  # index = class in the maps; the last is background
    images: Tensor  # (GRID_IMAGES, 3, S, S) uint8, the first test images
    truth: Tensor  # (GRID_IMAGES, S, S) int64 classes
    predicted: Tensor  # (GRID_IMAGES, S, S) int64, zero-shot
    probe_predicted: Tensor  # (GRID_IMAGES, S, S) int64, the linear probe's

    def describe(self) -> dict:
        """JSON-ready: what was scored, and the grid as base64 bytes (``decode_grid`` reads it)."""
        side = min(self.truth.shape[-1], GRID_SIDE)
        images = F.interpolate(self.images.float(), size=(side, side), mode="area").round().to(torch.uint8)
        maps = {name: F.interpolate(m[:, None].float(), size=(side, side), mode="nearest")[:, 0].to(torch.uint8)
                for name, m in (("truth", self.truth), ("zero_shot", self.predicted), ("probe", self.probe_predicted))}
        return {
            "classes": self.class_names, "background": f"class {len(self.class_names) - 1}, prompted as '{BACKGROUND}'",
            "chance": "the training masks' most frequent class at every pixel",
            "probe": f"logistic regression per position (L2 {PROBE_WEIGHT_DECAY:g}) on the backbone's dense features, "
                     "trained on pixels of the training masks",
            "grid": {"count": len(images), "side": side, "images": _encode(images),
                     **{name: _encode(m) for name, m in maps.items()}},
        }


def _encode(values: Tensor) -> str:
    return base64.b64encode(values.contiguous().numpy().tobytes()).decode("ascii")


def decode_grid(grid: dict) -> dict[str, Tensor]:
    """``DenseResult.describe()["grid"]`` -> uint8 "images" (n, 3, s, s) and class maps
    "truth", "zero_shot", "probe" (n, s, s)."""
    n, side = grid["count"], grid["side"]
    shapes = {"images": (n, 3, side, side), "truth": (n, side, side), "zero_shot": (n, side, side), "probe": (n, side, side)}
    return {name: torch.frombuffer(bytearray(base64.b64decode(grid[name])), dtype=torch.uint8).view(shape)
            for name, shape in shapes.items()}


def mask_classes(masks: Tensor, labels: Tensor, background: int) -> Tensor:
    """bool masks (N, S, S) and image labels (N,) -> int64 (N, S, S): the label on the
    object, ``background`` elsewhere."""
    return torch.where(masks, labels.view(-1, 1, 1), torch.full_like(labels, background).view(-1, 1, 1))


def confusion_matrix(predicted: Tensor, truth: Tensor, num_classes: int) -> Tensor:
    """int64 (K, K): row = true class, column = predicted, counted over every pixel."""
    index = truth.reshape(-1) * num_classes + predicted.reshape(-1)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def segmentation_scores(confusion: Tensor) -> dict[str, float]:
    """``miou``: the mean over classes present in the truth of |pred ∩ true| / |pred ∪ true|,
    pixels of the whole set pooled (as segmentation benchmarks count); ``pixel_acc``: the
    fraction of pixels right."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    present = confusion.sum(dim=1) > 0  # a class predicted but never true lowers the others' IoU only
    union = confusion.sum(dim=1) + confusion.sum(dim=0) - hits
    iou = hits[present] / union[present]
    return {"miou": iou.mean().item(), "pixel_acc": (hits.sum() / confusion.sum()).item()}


def segment(logits: Tensor, side: int) -> Tensor:
    """(B, K, h, w) scores -> (B, side, side) int64 classes: bilinear upsampling, then argmax."""
    return F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False).argmax(dim=1)


class DenseModel:
    """What dense evaluation needs of a model with text: its frozen backbone, its eval
    transform and ``embed_image_features`` (a row of (n, D) features into the joint space)."""

    def __init__(self, model: nn.Module, device: torch.device, batch_size: int) -> None:
        self.model, self.device, self.batch_size = model, device, batch_size

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """uint8 (n, 3, S, S) -> (n, D, h, w) float32 dense backbone features, on the device."""
        was_training = self.model.backbone.training
        self.model.backbone.eval()
        try:
            return torch.cat([
                dense_features(self.model.backbone, self.model.eval_transform(part.to(self.device))).float()
                for part in images.split(self.batch_size)
            ])
        finally:
            self.model.backbone.train(was_training)

    @torch.no_grad()
    def embed(self, features: Tensor) -> Tensor:
        """(n, D, h, w) -> (n, E, h, w) unit vectors in the joint space, position by position."""
        n, d, h, w = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, d)  # (n * h * w, D)
        embedded = self.model.embed_image_features(rows)  # (n * h * w, E)
        return embedded.view(n, h, w, -1).permute(0, 3, 1, 2)


def zero_shot_logits(embeddings: Tensor, classifier: Tensor) -> Tensor:
    """(n, E, h, w) unit embeddings, (K, E) class embeddings -> (n, K, h, w) cosines."""
    return torch.einsum("nehw,ke->nkhw", embeddings, classifier)


def probe_positions(features: Tensor, classes: Tensor, per_image: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``per_image`` random pixels of each image: (n * per_image, D) features bilinearly
    upsampled to the pixel (as the logits are before the argmax), and their (n * per_image,) classes.

    NOTE: a linear classifier commutes with bilinear interpolation (its weights sum to 1), so
    fitting on upsampled features and upsampling the probe's logits agree.
    """
    n, side = len(classes), classes.shape[-1]
    upsampled = F.interpolate(features, size=(side, side), mode="bilinear", align_corners=False)  # (n, D, S, S)
    pixels = torch.randint(side * side, (n, per_image), generator=generator).to(features.device)  # (n, P)
    flat = upsampled.flatten(2)  # (n, D, S * S)
    x = flat.gather(2, pixels.unsqueeze(1).expand(-1, flat.shape[1], -1))  # (n, D, P)
    y = classes.flatten(1).to(features.device).gather(1, pixels)  # (n, P)
    return x.permute(0, 2, 1).reshape(-1, flat.shape[1]), y.reshape(-1)


def check_masks(train: ImageSet | object, test: ImageSet | object) -> None:
    """Raise SslZooError unless both splits are labelled and hold masks (a streamed split holds none)."""
    for split, images in (("training", train), ("test", test)):
        if getattr(images, "masks", None) is None or getattr(images, "labels", None) is None:
            raise SslZooError(
                f"eval --dense: dataset '{getattr(images, 'name', '?')}' has no masks on its {split} split, so there is "
                "nothing to score segmentation against. Use a dataset with masks (shapes: --data shapes)."
            )


def dense_evaluation(
    model: DenseModel, train: ImageSet, test: ImageSet, class_names: list[str],
    classifier: Callable[[list[str]], Tensor], probe_positions_total: int, seed: int,
) -> DenseResult:
    """Zero-shot segmentation, chance and the probe's upper bound on ``test``'s masks.

    ``class_names``: what prompts call each label; ``classifier``: names -> (K, E) class
    embeddings (prompt ensembles). The probe fits on about ``probe_positions_total`` pixels
    drawn from ``train``'s masks.
    """
    check_masks(train, test)
    names = [*class_names, BACKGROUND]
    background, side = len(names) - 1, test.masks.shape[-1]
    test_truth = mask_classes(test.masks, test.labels, background)  # (M, S, S)
    train_truth = mask_classes(train.masks, train.labels, background)  # (N, S, S)
    text = classifier(names)  # (K, E)

    # The probe's training positions: PROBE_PIXELS_PER_IMAGE pixels of each of a seeded
    # subset of training images, so a large training split is not run through whole.
    generator = torch.Generator().manual_seed(seed)
    count = min(len(train), max(probe_positions_total // PROBE_PIXELS_PER_IMAGE, 1))
    per_image = max(probe_positions_total // count, 1)
    xs, ys = [], []
    for rows in torch.randperm(len(train), generator=generator)[:count].split(model.batch_size):
        x, y = probe_positions(model.features(train.images[rows]), train_truth[rows], per_image, generator)
        xs.append(x)
        ys.append(y)
    probe_x, probe_y = torch.cat(xs), torch.cat(ys)
    mean, std = probe_x.mean(dim=0), probe_x.std(dim=0).clamp_min(1e-6)  # standardised, as linear eval's
    weight, bias = fit_logistic_regression((probe_x - mean) / std, probe_y, len(names), PROBE_WEIGHT_DECAY)  # (K, D), (K,)

    zero_shot = torch.zeros(len(names), len(names), dtype=torch.int64)
    probe = torch.zeros_like(zero_shot)
    shown: list[Tensor] = []  # the first GRID_IMAGES test images' zero-shot and probe maps
    for rows in torch.arange(len(test)).split(model.batch_size):
        features = model.features(test.images[rows])  # (b, D, h, w)
        truth = test_truth[rows].to(features.device)
        guess = segment(zero_shot_logits(model.embed(features), text), side)  # (b, S, S)
        standard = (features - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        probe_guess = segment(torch.einsum("ndhw,kd->nkhw", standard, weight) + bias.view(1, -1, 1, 1), side)
        zero_shot += confusion_matrix(guess, truth, len(names))
        probe += confusion_matrix(probe_guess, truth, len(names))
        shown = shown or [guess[:GRID_IMAGES].cpu(), probe_guess[:GRID_IMAGES].cpu()]

    majority = int(torch.bincount(train_truth.reshape(-1), minlength=len(names)).argmax())
    chance = confusion_matrix(torch.full_like(test_truth, majority), test_truth, len(names))
    metrics = {}
    for prefix, confusion in (("dense", zero_shot), ("dense_chance", chance), ("dense_probe", probe)):
        metrics.update({f"{prefix}_{name}": value for name, value in segmentation_scores(confusion).items()})
    first = slice(0, len(shown[0]))
    return DenseResult(metrics, names, test.images[first].cpu(), test_truth[first].cpu(), *shown)
