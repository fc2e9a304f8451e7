"""Weights that ``fit`` did not make, as the evaluation stage sees a model.

    --weights torchvision:resnet50=FILE      a torchvision architecture's weights
    --weights timm:convnext_tiny=FILE        a timm model's weights
    --weights open_clip:RN50=FILE            an open_clip model: zero-shot and retrieval too

The file is read locally (nothing downloads); torchvision's and timm's files are in their
own key layout (``ssl_zoo.weights``), open_clip's as ``open_clip.create_model`` loads them.
Each is evaluated at its own input size and normalisation, as its library describes it,
unless ``--input-size`` says otherwise (small images on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.augment import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from ssl_zoo.backbones import build_image_backbone
from ssl_zoo.errors import RecipeError
from ssl_zoo.eval.cache import hash_file
from ssl_zoo.weights import load_backbone_weights

LIBRARIES = ("torchvision", "timm", "open_clip")


@dataclass(frozen=True)
class WeightsSource:
    library: str  # one of LIBRARIES
    name: str  # the architecture, as the library names it
    path: Path

    @classmethod
    def parse(cls, text: str) -> WeightsSource:
        """'LIBRARY:NAME=FILE' -> WeightsSource."""
        source, equals, path = text.partition("=")
        library, colon, name = source.partition(":")
        if not (equals and colon and name and path) or library not in LIBRARIES:
            raise RecipeError(
                f"--weights '{text}' is not LIBRARY:NAME=FILE with LIBRARY one of {', '.join(LIBRARIES)} "
                "(e.g. torchvision:resnet50=resnet50.pth, timm:convnext_tiny=model.safetensors, open_clip:RN50=RN50.pt)."
            )
        return cls(library, name, Path(path).expanduser())

    @property
    def source(self) -> str:
        return f"{self.library}:{self.name}"

    def describe(self) -> dict[str, str]:
        return {"source": self.source, "path": str(self.path), "sha256": hash_file(self.path)}


class ImportedModel(nn.Module):
    """A backbone with its eval transform; no recipe, no training, no text."""

    recipe = None
    uses_text = False

    def __init__(self, weights: WeightsSource, backbone: nn.Module, eval_transform: EvalTransform) -> None:
        super().__init__()
        self.weights = weights
        self.backbone = backbone  # (B, 3, S, S) normalised images -> (B, D)
        self.eval_transform = eval_transform


class ImportedCLIP(ImportedModel):
    """An open_clip model: its visual tower is the backbone (its output already is the
    image embedding), its text tower and tokenizer serve zero-shot and retrieval."""

    uses_text = True

    def __init__(self, weights: WeightsSource, model: nn.Module, tokenizer, eval_transform: EvalTransform) -> None:
        super().__init__(weights, model.visual, eval_transform)
        self.clip = model
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> Tensor:
        return self.tokenizer(texts)  # (n, L)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)  # (n, E)

    def embed_image_features(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=-1)  # the visual tower ends in CLIP's projection

    def encode_image(self, images: Tensor) -> Tensor:
        return self.embed_image_features(self.backbone(images))


def load_imported(weights: WeightsSource, input_size: int | None = None) -> ImportedModel:
    """The model ``weights`` names, its file loaded, in eval mode."""
    if not weights.path.is_file():
        raise RecipeError(f"--weights {weights.source}: the file '{weights.path}' does not exist.")
    if weights.library == "open_clip":
        return _open_clip(weights, input_size).eval()
    size, mean, std = (_timm_input if weights.library == "timm" else _torchvision_input)(weights.name)
    size = input_size or size
    backbone = build_image_backbone(weights.source, size)
    load_backbone_weights(backbone.network, weights.path, f"backbone {weights.source}")
    return ImportedModel(weights, backbone.network, EvalTransform(size, mean, std)).eval()


def _torchvision_input(name: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """The input side, mean and std of torchvision's own weights for ``name`` (from the
    weights' metadata, which needs no download); 224 px and ImageNet's otherwise."""
    from torchvision.models import get_model_weights

    try:
        preset = get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError):  # an architecture without published weights
        return 224, IMAGENET_MEAN, IMAGENET_STD
    return preset.crop_size[0], tuple(preset.mean), tuple(preset.std)


def _timm_input(name: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """The input side, mean and std timm's pretrained config gives ``name``."""
    import timm
    from timm.data import resolve_data_config

    model = timm.create_model(name, pretrained=False, num_classes=0)
    config = resolve_data_config({}, model=model)
    return config["input_size"][-1], tuple(config["mean"]), tuple(config["std"])


def _open_clip(weights: WeightsSource, input_size: int | None) -> ImportedCLIP:
    import open_clip

    if weights.name not in open_clip.list_models():
        raise RecipeError(f"--weights {weights.source}: open_clip has no model '{weights.name}'; see open_clip.list_models().")
    # NOTE: a local file as `pretrained` is loaded as is; nothing is fetched.
    model = open_clip.create_model(weights.name, pretrained=str(weights.path), force_image_size=input_size)
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    config = getattr(visual, "preprocess_cfg", {})
    transform = EvalTransform(size, tuple(config.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                              tuple(config.get("std", open_clip.OPENAI_DATASET_STD)))
    return ImportedCLIP(weights, model, open_clip.get_tokenizer(weights.name), transform)
