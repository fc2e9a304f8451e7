"""The papers' linear evaluation: a linear classifier trained by SGD on augmented crops.

The evaluation stage's default (``ssl_zoo.eval.linear``) fits a logistic regression once,
with L-BFGS, on cached features of un-augmented images: fast, and the protocol of SimCLR's
transfer tables. The ImageNet numbers of SimCLR and BYOL come from another protocol: a
linear layer on the frozen backbone, trained by SGD for tens of epochs on random-resized
crops and flips of the training images, scored on resized, centre-cropped test images.
``linear_probe`` runs that protocol; ``ProbeSettings`` holds its hyper-parameters, and each
method class carries its paper's as ``SSLMethod.linear_probe``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.augment import AugmentConfig, EvalTransform, ViewAugment
from ssl_zoo.errors import DataFormatError, SslZooError, TrainingError
from ssl_zoo.eval.features import extraction_settings
from ssl_zoo.eval.linear import topk_accuracy


@dataclass(frozen=True)
class ProbeSettings:
    """How the linear probe is trained: one paper's protocol.

    ``lr`` is the learning rate at ``batch_size`` (the global batch); a run with another
    batch scales it linearly (``lr_at``), as every one of these papers does.
    """

    epochs: int
    batch_size: int  # global batch the paper trained with
    lr: float  # learning rate at batch_size
    source: str  # the paper (or repository) and the section (or file) these numbers come from
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Literal["cosine"] = "cosine"  # cosine decay to 0 over all steps, no warm-up
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area fraction
    # A BatchNorm1d(affine=False) standardises the features before the linear layer (MAE's
    # probe); it folds into the linear layer at test time.
    batchnorm: bool = False

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "nesterov": not self.nesterov or self.momentum > 0,  # torch's SGD refuses it otherwise
            "weight_decay": self.weight_decay >= 0,
            "schedule": self.schedule == "cosine",
            "crop_scale": 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
            "source": bool(self.source.strip()),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name} = {getattr(self, name)!r}" for name in bad)
            raise SslZooError(
                f"Invalid linear-probe settings: {values}. Epochs and batch size are at least 1, "
                "the learning rate is positive, momentum lies in [0, 1) (and is positive with "
                "Nesterov), weight decay is not negative, the schedule is 'cosine', the crop "
                "scale is an area fraction in (0, 1], and the source names where the numbers come from."
            )

    def lr_at(self, batch_size: int) -> float:
        """The learning rate for a global batch of ``batch_size``: scaled linearly from ``lr``."""
        return self.lr * batch_size / self.batch_size


# NOTE: the default for methods without a paper protocol of their own (CLIP, supervised,
# weights made elsewhere) is lightly's ImageNet benchmark linear eval, which says it follows
# SimCLR: 90 epochs, SGD with momentum 0.9 (not Nesterov), lr 0.1 x batch / 256, no weight
# decay, cosine without warm-up, RandomResizedCrop(224) (scale 0.08-1) and flip. lightly's
# cosine ends at 0.001 x lr (CosineWarmupScheduler's end_value), ours at 0. Its script gives
# no global batch: lr_at scales from 0.1 at 256, which is the same rule.
DEFAULT_PROBE = ProbeSettings(
    epochs=90, batch_size=256, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
    source="lightly benchmarks/imagenet/resnet50/linear_eval.py (LinearClassifier: SGD, lr 0.1 x batch/256, cosine)",
)


@dataclass
class ProbeResult:
    top1: float
    top5: float
    correct: Tensor  # (M,) bool, each test image's top-1 right or wrong, in test order
    epochs: int  # epochs actually trained
    settings: ProbeSettings  # what was used
    batch_size: int  # global batch actually used
    lr: float  # peak learning rate actually used (settings.lr_at(batch_size))


def linear_probe(
    backbone: nn.Module, feature_dim: int, eval_transform: EvalTransform,
    train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    test_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    num_classes: int, settings: ProbeSettings, device: torch.device, batch_size: int,
    epochs: int | None = None, seed: int = 0,
) -> ProbeResult:
    """Train a linear classifier on augmented crops through the frozen ``backbone``; score it.

    train_batches(epoch): that epoch's batches, shuffled, on ``device``: uint8 images
    (b, 3, H, W) and int64 labels (b,) in [0, num_classes). test_batches(): the test split
    in order, the same way. ``batch_size``: the global batch those batches have; the
    learning rate is ``settings.lr_at(batch_size)``. ``epochs`` overrides ``settings.epochs``.

    Training views are random-resized crops (``settings.crop_scale``) and flips at
    ``eval_transform.size``, normalised with its mean and std, drawn from ``seed``; test
    images go through ``eval_transform``. The backbone runs in eval mode (batch-norm keeps
    its running statistics), without gradients, under ``extraction_settings(device)`` as
    feature extraction does; its weights are untouched and its mode is restored. On the
    CPU, the same seed and batches give the same result to the bit.
    """
    epochs = settings.epochs if epochs is None else epochs
    given = {"epochs": epochs, "batch_size": batch_size, "feature_dim": feature_dim, "num_classes": num_classes}
    least = {"epochs": 1, "batch_size": 1, "feature_dim": 1, "num_classes": 2}
    bad = [f"{name} = {value}" for name, value in given.items() if value < least[name]]
    if bad:
        raise SslZooError(
            f"Invalid linear probe: {', '.join(bad)}. Epochs, batch size and feature dimension "
            "are at least 1, classes at least 2."
        )
    device = torch.device(device)
    lr = settings.lr_at(batch_size)

    # The usual linear-evaluation views: random-resized crop and flip, no colour changes.
    augment = ViewAugment(
        AugmentConfig(
            size=eval_transform.size, crop_scale=settings.crop_scale, jitter_p=0.0, grayscale_p=0.0,
            blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0),
            mean=tuple(eval_transform.mean.tolist()), std=tuple(eval_transform.std.tolist()),
        ),
        num_views=1, seed=seed,
    ).to(device)
    linear = nn.Linear(feature_dim, num_classes)
    # NOTE: zero-initialised, as SimCLR's code does (run.py --zero_init_logits_layer=True):
    # the objective is convex, and a zero start draws nothing from the global generator,
    # so the seed alone fixes the run.
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    probe = (nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), linear) if settings.batchnorm else linear).to(device)
    optimizer = torch.optim.SGD(
        probe.parameters(), lr=lr, momentum=settings.momentum, nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )

    # Every module's own mode, not just the top one's: a caller may keep parts in eval mode.
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    try:
        _train(backbone, augment, probe, optimizer, train_batches, epochs, lr, device)
        logits, labels = _test_logits(backbone, eval_transform, probe, test_batches, device)  # (M, C), (M,)
    finally:
        for module, training in modes:
            module.training = training
    return ProbeResult(
        top1=topk_accuracy(logits, labels, 1),
        top5=topk_accuracy(logits, labels, 5),
        correct=logits.argmax(dim=1) == labels,
        epochs=epochs, settings=settings, batch_size=batch_size, lr=lr,
    )


def _frozen_features(backbone: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    """(b, D) float32 features of normalised images (b, 3, S, S), as feature extraction makes them."""
    autocast = extraction_settings(device).autocast
    with torch.no_grad(), (torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()):
        return backbone(x).float()


def _train(
    backbone: nn.Module, augment: ViewAugment, probe: nn.Module, optimizer: torch.optim.Optimizer,
    train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]], epochs: int, lr: float, device: torch.device,
) -> None:
    """SGD on the probe, the learning rate on a cosine from ``lr`` to 0 over all steps."""
    probe.train()
    steps_per_epoch: int | None = None
    step = 0
    for epoch in range(epochs):
        batches = train_batches(epoch)
        if steps_per_epoch is None and isinstance(batches, Sized):
            steps_per_epoch = len(batches)
        count = 0
        for images, labels in batches:
            # NOTE: the schedule needs the number of steps. A sized iterable (a list, a
            # DataLoader over a map-style set) says it up front; a stream learns it from its
            # first epoch, which then runs at the peak rate (after 1 of 90 epochs a cosine
            # has fallen by 0.03 %), and later epochs follow the cosine by their global step.
            progress = min(step / (epochs * steps_per_epoch), 1.0) if steps_per_epoch else 0.0
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
            features = _frozen_features(backbone, augment(images)[0], device)  # (b, D)
            loss = F.cross_entropy(probe(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            count += 1
        if count == 0:
            raise DataFormatError(
                f"The linear probe's training batches for epoch {epoch} are empty: the training split has no image."
            )
        steps_per_epoch = steps_per_epoch or count
    # One host sync for the whole run, not one per step: a diverged probe says so.
    if not all(torch.isfinite(p).all() for p in probe.parameters()):
        raise TrainingError(
            f"The linear probe diverged (non-finite weights) at a peak learning rate of {lr:g}. "
            "Try a smaller learning rate (or the probe's batchnorm setting, which standardises the features)."
        )


@torch.no_grad()
def _test_logits(
    backbone: nn.Module, eval_transform: EvalTransform, probe: nn.Module,
    test_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]], device: torch.device,
) -> tuple[Tensor, Tensor]:
    """(M, C) logits and (M,) labels of the test split, in its order."""
    probe.eval()  # a batch-norm layer uses its running statistics from here on
    logits, labels = [], []
    for images, batch_labels in test_batches():
        logits.append(probe(_frozen_features(backbone, eval_transform(images), device)))  # (b, C)
        labels.append(batch_labels)
    if not logits:
        raise DataFormatError("The linear probe's test batches are empty: the test split has no image.")
    return torch.cat(logits), torch.cat(labels)
