"""SimCLR (Chen et al. 2020): two views of an image attract, all other views repel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from ssl_zoo.eval.probe import ProbeSettings
from ssl_zoo.losses import nt_xent_loss
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.ranges import ranged
from ssl_zoo.recipe import Recipe


@dataclass
class SimCLRConfig:
    """simclr: the projection head and the contrastive loss's temperature."""

    hidden_dim: int = ranged(2048, at_least=1)
    """Width of the projection head's hidden layer."""
    output_dim: int = ranged(128, at_least=1)
    """Size of the projections the loss compares."""
    temperature: float = ranged(0.5, above=0)
    """NT-Xent's temperature: lower sharpens the softmax over the batch's other views."""


class SimCLR(SSLMethod, name="simclr", config=SimCLRConfig):
    # NOTE: SimCLR normalises over the global batch (section 2.2: local BN lets positives
    # cheat through batch statistics), so under DDP sync BN is on unless the recipe says no.
    global_batchnorm = True
    # NOTE: appendix B.6: linear evaluation follows the fine-tuning of B.5 (Nesterov momentum
    # 0.9, batch 4096, no weight decay or other regularisation, no warm-up, only random
    # crop + flip), with lr 1.6 = 0.1 x BatchSize/256 and 90 epochs. The schedule is not in
    # the text; google-research/simclr's run.py always decays on a cosine (model_util.py's
    # learning_rate_schedule), its finetune preprocessing crops area (0.08, 1) and flips
    # without colour (data_util.py). Its README's ImageNet linear-eval command sets
    # --weight_decay=1e-6; we follow the paper's text.
    linear_probe = ProbeSettings(
        epochs=90, batch_size=4096, lr=1.6, momentum=0.9, nesterov=True, weight_decay=0.0,
        source="Chen et al. 2020 (SimCLR), arXiv:2002.05709, appendix B.6 with B.5",
    )

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        self.config: SimCLRConfig
        self.projection_head = SimCLRProjectionHead(self.feature_dim, self.config.hidden_dim, self.config.output_dim)
        # NOTE: the loss is computed on the projections, but the features used
        # downstream are the backbone's: the head discards what the augmentations vary.

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        views = batch["views"]  # (2, B, 3, S, S)
        # NOTE: both views go through the backbone as one batch of 2B, as in the paper,
        # so batch-norm statistics mix the views.
        features = self.backbone(views.flatten(0, 1))  # (2B, D)
        z0, z1 = self.projection_head(features).chunk(2)  # (B, P) each
        # Negatives come from every process's batch, with gradients (ssl_zoo.losses).
        loss = nt_xent_loss(z0, z1, self.config.temperature)
        self.log("train/loss", loss)
        return loss + self.probe_step(features[: views.shape[1]], batch)
