"""CLIP (Radford et al. 2021): images and their captions meet in one embedding space."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.backbones import build_text_backbone
from ssl_zoo.losses import clip_loss
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.ranges import ranged
from ssl_zoo.recipe import Recipe
from ssl_zoo.text import tokenize


@dataclass
class CLIPConfig:
    """clip: the text tower, the joint embedding and the learned temperature."""

    text_backbone: str = "text_transformer"
    """The text tower: a name from ssl_zoo.backbones.TEXT_BACKBONES."""
    embed_dim: int = ranged(512, at_least=1)
    """Size of the joint image-text embedding."""
    init_temperature: float = ranged(0.07, above=0)
    """The learned softmax temperature's start."""
    max_logit_scale: float = ranged(100.0, at_least=1)
    """The learned 1/temperature never exceeds this."""
    context_length: int = ranged(77, at_least=2, at_most=77)
    """Tokens per caption, <start> and <end> included (CLIP's 77 at most)."""


TEXT_TOWER, PROJECTIONS = "text_tower.safetensors", "projections.safetensors"  # export's files


class CLIP(SSLMethod, name="clip", config=CLIPConfig):
    num_views = 1  # NOTE: CLIP's only augmentation is a random square crop
    uses_text = True

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        cfg: CLIPConfig = self.config
        text = build_text_backbone(cfg.text_backbone, cfg.context_length)
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

    @classmethod
    def caption_tokenizer(cls, config: CLIPConfig) -> Callable[[list[str]], Tensor]:
        """CLIP's BPE (open_clip's SimpleTokenizer), ``clip.context_length`` tokens a caption."""
        return partial(tokenize, context_length=config.context_length)

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

    def export_text(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """What ``export`` writes beside the backbone: open_clip's text tower (its own keys)
        and the projections, with config.json's "text" section saying how to use them."""
        text = self.text_backbone.transformer  # open_clip's TextTransformer inside ssl_zoo's thin wrapper
        projections = {"text_projection.weight": self.text_projection.weight, "logit_scale": self.logit_scale}
        projects_itself = not isinstance(self.image_projection, nn.Linear)  # CLIP's RN: its attention pool
        if not projects_itself:
            projections["image_projection.weight"] = self.image_projection.weight
        kwargs = {
            "context_length": text.context_length, "vocab_size": text.vocab_size, "width": text.width, "heads": text.heads,
            "layers": len(text.transformer.resblocks), "output_dim": None, "pool_type": text.pool_type,
        }
        build = f"import open_clip.transformer\ntext = open_clip.transformer.TextTransformer({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        config = {
            "embed_dim": self.config.embed_dim,
            "text_tower": {
                "file": TEXT_TOWER, "library": "open_clip", "constructor": "open_clip.transformer.TextTransformer",
                "kwargs": kwargs, "build": build,
                "output": "(B, width) features pooled at the end-of-text token (the highest id), before the projection",
            },
            "projections": {
                "file": PROJECTIONS,
                "image_projection.weight": None if projects_itself else "(embed_dim, feature_dim): image embedding = normalize(features @ W.T)",
                "text_projection.weight": "(embed_dim, width): text embedding = normalize(text_features @ W.T)",
                "logit_scale": "log of 1 / temperature: logits = logit_scale.exp() * image_embeddings @ text_embeddings.T",
            },
            "tokenizer": {
                "library": "open_clip", "class": "open_clip.tokenizer.SimpleTokenizer", "context_length": text.context_length,
                "call": f"open_clip.tokenizer.SimpleTokenizer()(texts, context_length={text.context_length})",
                "note": "<start> tokens <end> then 0-padding; longer texts are cut, keeping <end> last",
            },
            "how_to_load": [
                build, f"text.load_state_dict(load_file('{TEXT_TOWER}'))", "text.eval()", f"projections = load_file('{PROJECTIONS}')",
                "# embeddings: normalize(model(images) @ projections['image_projection.weight'].T) (the weight is absent",
                "# when the backbone projects itself), normalize(text(tokens) @ projections['text_projection.weight'].T)",
            ],
        }
        return {TEXT_TOWER: text.state_dict(), PROJECTIONS: projections}, config

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimiser step, as open_clip does: keep exp(logit_scale) <= max.
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))
