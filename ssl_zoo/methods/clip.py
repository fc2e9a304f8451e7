"""CLIP (Radford et al. 2021): images and their captions meet in one embedding space."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.backbones import build_text_backbone
from ssl_zoo.losses import clip_loss
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.recipe import Recipe
from ssl_zoo.text import tokenize


@dataclass
class CLIPConfig:
    text_backbone: str = "text_transformer"
    embed_dim: int = 512
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0  # the learned 1/temperature never exceeds this


class CLIP(SSLMethod, name="clip", config=CLIPConfig):
    num_views = 1  # NOTE: CLIP's only augmentation is a random square crop
    uses_text = True

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        cfg: CLIPConfig = self.config
        text = build_text_backbone(cfg.text_backbone, self.recipe.data.context_length)
        self.text_backbone = text.network
        # Linear maps (no bias) from each tower's features to the joint space. NOTE: CLIP's
        # modified ResNet ends in its own projection (the attention pool's), so nothing
        # is added after it when it already lands in a space of the right size.
        if self.backbone_projects and self.feature_dim == cfg.embed_dim:
            self.image_projection = nn.Identity()
        else:
            self.image_projection = nn.Linear(self.feature_dim, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(text.feature_dim, cfg.embed_dim, bias=False)
        # NOTE: the temperature is learned as a log inverse temperature, initialised to
        # 1 / 0.07, and clipped so that the logits are never scaled by more than 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    def tokenize(self, texts: list[str]) -> Tensor:
        """Strings -> (n, L) BPE token ids, L the recipe's context length."""
        return tokenize(texts, self.recipe.data.context_length)

    def embed_image_features(self, features: Tensor) -> Tensor:
        """(B, D) backbone features -> (B, E) unit vectors in the joint space."""
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, E) unit vectors in the joint space."""
        return F.normalize(self.text_projection(self.text_backbone(tokens)), dim=-1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        features = self.backbone(batch["views"][0])  # (B, D)
        image_embeddings = self.embed_image_features(features)  # (B, E)
        text_embeddings = self.encode_text(batch["tokens"])  # (B, E)
        loss = clip_loss(image_embeddings, text_embeddings, self.logit_scale.exp())
        self.log_dict({"train/loss": loss, "train/logit_scale": self.logit_scale.exp()})
        return loss + self.probe_step(features, batch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimiser step, as open_clip does: keep exp(logit_scale) <= max.
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))
