"""Supervised baseline: the same backbone, data, views and budget, trained with labels.

Not a self-supervised method: it is the frame every self-supervised number is read
against (``bench`` trains one beside the methods it compares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ssl_zoo.errors import RecipeError
from ssl_zoo.methods.base import SSLMethod, labelled_cross_entropy
from ssl_zoo.ranges import ranged
from ssl_zoo.recipe import Recipe


@dataclass
class SupervisedConfig:
    """supervised: the baseline every self-supervised number is read against: the same
    backbone, data, augmentation and budget, trained with labels (cross-entropy on one view)."""

    label_smoothing: float = ranged(0.0, at_least=0, below=1)
    """Cross-entropy's label smoothing: the probability spread over the other classes."""


class Supervised(SSLMethod, name="supervised", config=SupervisedConfig):
    num_views = 1  # one augmented view per image, as in standard supervised training

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        if num_classes < 2:
            raise RecipeError(
                "The supervised baseline needs labelled training data; dataset "
                f"'{recipe.data.name if isinstance(recipe, Recipe) else recipe['data']['name']}' has none."
            )
        super().__init__(recipe, num_classes)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        features = self.backbone(batch["views"][0])  # (B, D)
        logits = self.classifier(features)  # (B, C)
        # Images labelled -1 (STL-10's unlabelled part) add nothing to the loss.
        loss, _ = labelled_cross_entropy(logits, batch["label"], self.config.label_smoothing)
        self.log("train/loss", loss)
        return loss + self.probe_step(features, batch)
