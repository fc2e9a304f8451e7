"""CLIP zero-shot classification: class names become a classifier through prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.linear import topk_accuracy

# A short ensemble from CLIP's CIFAR prompts: averaging over phrasings makes the class
# embedding less sensitive to any one wording (Radford et al. 2021, sec. 3.1.4).
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)


def load_templates(path: str | Path) -> tuple[str, ...]:
    """Prompt templates from a text file, one per line, each with one ``{}``."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    templates = tuple(line for line in lines if line and not line.startswith("#"))
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise SslZooError(
            f"Prompt templates in {path}: each line needs exactly one '{{}}' for the class "
            f"name ({'no templates found' if not templates else f'bad lines: {bad[:3]}'})."
        )
    return templates


@torch.no_grad()
def zero_shot_classifier(
    encode_text: Callable[[list[str]], Tensor], class_names: list[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES
) -> Tensor:
    """(C, E) unit class embeddings: the mean of each class's prompt embeddings.

    ``encode_text`` maps a list of strings to (n, E) unit vectors in the joint space.
    """
    classes = []
    for name in class_names:
        prompts = encode_text([t.format(name.replace("_", " ")) for t in templates])  # (T, E)
        classes.append(F.normalize(prompts.mean(dim=0), dim=0))
    return torch.stack(classes)


@torch.no_grad()
def zero_shot_hits(image_embeddings: Tensor, labels: Tensor, classifier: Tensor) -> tuple[Tensor, Tensor]:
    """Whether each image's class is the nearest class embedding (top-1) or among the five
    nearest (top-5): two (N,) bool. image_embeddings (N, E) unit, labels (N,), classifier (C, E)."""
    logits = image_embeddings @ classifier.T  # (N, C)
    # Top-1 by argmax, as ``zero_shot_accuracy`` (torchmetrics) ranks it: the same on ties.
    top1 = logits.argmax(dim=1) == labels
    top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(dim=1)
    return top1, top5


@torch.no_grad()
def zero_shot_accuracy(image_embeddings: Tensor, labels: Tensor, classifier: Tensor) -> dict[str, float]:
    """``zero_shot_top1`` and ``zero_shot_top5``: the means of ``zero_shot_hits``' two vectors."""
    logits = image_embeddings @ classifier.T  # (N, C)
    return {"zero_shot_top1": topk_accuracy(logits, labels, 1), "zero_shot_top5": topk_accuracy(logits, labels, 5)}
