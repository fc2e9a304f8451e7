"""BYOL (Grill et al. 2020): predict a slow-moving target's projection of the other view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn

from ssl_zoo.eval.probe import ProbeSettings
from ssl_zoo.losses import byol_loss
from ssl_zoo.methods.momentum import MomentumMethod, frozen_copy
from ssl_zoo.ranges import ranged
from ssl_zoo.recipe import Recipe


@dataclass
class BYOLConfig:
    """byol: the projection and prediction heads and the target network's momentum."""

    hidden_dim: int = ranged(4096, at_least=1)
    """Width of the projection and prediction heads' hidden layers."""
    output_dim: int = ranged(256, at_least=1)
    """Size of the projections and predictions the loss compares."""
    base_momentum: float = ranged(0.99, at_least=0, at_most=1)
    """The target network's EMA momentum at the start, raised to 1 on a cosine schedule over training."""


class BYOL(MomentumMethod, name="byol", config=BYOLConfig):
    # NOTE: BYOL's code computes batch-norm statistics across all devices, as SimCLR's
    # does; under DDP sync BN is on unless the recipe says no.
    global_batchnorm = True
    # NOTE: appendix C.1: SGD with Nesterov momentum 0.9, 80 epochs, batch 1024, no weight
    # decay or other regularisation, random crop + flip; the learning rate is the best of
    # {0.4, 0.3, 0.2, 0.1, 0.05} on a held-out part of train, so the paper fixes none. We
    # take 0.2, the one deepmind-research byol/configs/eval.py ships (base_learning_rate
    # 0.2, no warm-up), and scale it as that code does: byol/utils/schedules.py multiplies
    # by batch/256 and decays on a cosine to 0, so 0.8 at 1024. Crop area (0.08, 1) as its
    # byol/utils/dataset.py LINEAR_TRAIN preprocessing.
    linear_probe = ProbeSettings(
        epochs=80, batch_size=1024, lr=0.8, momentum=0.9, nesterov=True, weight_decay=0.0,
        source="Grill et al. 2020 (BYOL), arXiv:2006.07733, appendix C.1; lr 0.2 x batch/256 as deepmind-research byol/",
    )

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        cfg: BYOLConfig = self.config
        # Online network: backbone -> projector -> predictor.
        self.projection_head = BYOLProjectionHead(self.feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.prediction_head = BYOLPredictionHead(cfg.output_dim, cfg.hidden_dim, cfg.output_dim)
        # Target network: an exponential moving average of backbone + projector, never
        # trained by gradients.
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projection_head = frozen_copy(self.projection_head)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projection_head, self.target_projection_head)]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # The targets have followed the online network already (MomentumMethod, before the step).
        # NOTE: each view goes through both networks on its own, as in BYOL's code, lightly
        # and solo-learn: batch-norm statistics never mix the blurred view with the
        # solarised one (SimCLR, by contrast, normalises both views as one batch).
        views = batch["views"]  # (2, B, 3, S, S)
        features = [self.backbone(view) for view in views]  # 2 x (B, D)
        p0, p1 = (self.prediction_head(self.projection_head(f)) for f in features)  # (B, P) each
        with torch.no_grad():
            t0, t1 = (self.target_projection_head(self.target_backbone(view)) for view in views)
        # Each view's prediction regresses the other view's target; both directions summed.
        loss = byol_loss(p0, t1) + byol_loss(p1, t0)
        self.log("train/loss", loss)
        return loss + self.probe_step(features[0], batch)
