"""One registry of backbones shared by every method.

A name maps to one constructor that returns a ``Backbone``: the network (images or
tokens in, one feature vector per sample out) and the size of that vector. Beside the
registry, ``timm:<name>`` and ``torchvision:<name>`` build any timm or torchvision model
(randomly initialised; weights come in through ``init_weights`` or ``eval --weights``). Methods put
their heads on top; the evaluation stage reads the features.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from ssl_zoo.errors import RecipeError


@dataclass
class PlainArchitecture:
    """How a library builds the same network without ssl_zoo, so that exported weights
    (``ssl_zoo export``) load into it key for key."""

    library: str  # torchvision, timm, open_clip or torch
    constructor: str  # its dotted name
    args: list[Any]
    kwargs: dict[str, Any]
    modifications: list[str] = field(default_factory=list)  # Python lines run on `model` after it
    imports: str = "import torch"
    lines: list[str] | None = None  # the build itself, where no constructor call makes it (convnet4)

    def build(self) -> str:
        """Python lines that define ``model``."""
        call = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        body = self.lines if self.lines is not None else [f"model = {self.constructor}({call})"]
        return "\n".join([self.imports, *body, *self.modifications])


@dataclass
class Backbone:
    network: nn.Module  # (B, 3, S, S) float images -> (B, feature_dim); text: (B, L) int64 -> (B, feature_dim)
    feature_dim: int
    # True when the network's last layer already is CLIP's projection into the joint
    # image-text space (the modified ResNet's attention pool), so none is added after it.
    projects: bool = False
    plain: PlainArchitecture | None = None  # image backbones: the same network without ssl_zoo


def _resnet(name: str, cifar_stem: bool) -> Backbone:
    net = getattr(torchvision.models, name)()
    modifications = []
    if cifar_stem:
        # NOTE: for 32x32 inputs the ImageNet stem (7x7 stride-2 conv + max-pool) throws
        # away 3/4 of the resolution before the first block; SimCLR's CIFAR variant uses a
        # 3x3 stride-1 conv and no max-pool instead.
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        modifications = ["model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                         "model.maxpool = torch.nn.Identity()"]
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # global-average-pooled features, (B, 512) or (B, 2048)
    modifications.append("model.fc = torch.nn.Identity()  # pooled features out, no classifier")
    plain = PlainArchitecture("torchvision", f"torchvision.models.{name}", [], {}, modifications, "import torch\nimport torchvision")
    return Backbone(net, feature_dim, plain=plain)


def _convnet(widths: tuple[int, ...]) -> Backbone:
    """A plain ConvNet sized for a CPU: per stage one 3x3 conv, batch norm and ReLU, then a
    2x2 max-pool (not after the last stage), and global average pooling.

    NOTE: on 2 CPU cores a ResNet-18 (ImageNet stem) trains SimCLR at ~600 pairs/s on 32 px
    images, and the 4x downsampling of its stem leaves a 1x1 map after the last stage. This
    net keeps full resolution in its first stage and, with widths 16-32-64-128 (98 k
    parameters), trains ~1,900 pairs/s: enough steps in 90 s for SimCLR, BYOL and CLIP to
    learn shapes well above random init (docs/what_moved_the_numbers.md).
    """
    layers: list[nn.Module] = []
    channels = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, widths[-1])
    # The same nn.Sequential in plain torch, so its "0.weight", "1.running_mean"... keys line up.
    lines = [
        "layers, channels = [], 3",
        f"for i, width in enumerate({list(widths)}):",
        "    layers += [torch.nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True)]",
        f"    if i < {len(widths) - 1}:",
        "        layers.append(torch.nn.MaxPool2d(2))",
        "    channels = width",
        "model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())",
    ]
    plain = PlainArchitecture("torch", "torch.nn.Sequential", [], {"widths": list(widths)}, lines=lines)
    return Backbone(nn.Sequential(*layers), channels, plain=plain)


def _vit(image_size: int, patch_size: int, width: int, layers: int, heads: int) -> Backbone:
    if image_size % patch_size:
        raise RecipeError(
            f"ViT with patch size {patch_size} needs an image size divisible by it; "
            f"got {image_size}. Set data.image_size to a multiple of {patch_size}."
        )
    kwargs = {"image_size": image_size, "patch_size": patch_size, "num_layers": layers, "num_heads": heads,
              "hidden_dim": width, "mlp_dim": 4 * width}
    net = VisionTransformer(**kwargs)
    net.heads = nn.Identity()  # class-token features, (B, width)
    plain = PlainArchitecture("torchvision", "torchvision.models.vision_transformer.VisionTransformer", [], kwargs,
                              ["model.heads = torch.nn.Identity()  # class-token features out, no classifier"],
                              "import torch\nimport torchvision")
    return Backbone(net, width, plain=plain)


def _clip_modified_resnet(image_size: int, layers: tuple[int, int, int, int], embed_dim: int, heads: int) -> Backbone:
    """CLIP's modified ResNet (Radford et al. 2021, section 2.4), open_clip's implementation.

    NOTE: it differs from torchvision's ResNet in three places: a stem of three 3x3 convs
    with an average pool, anti-aliased strided convolutions (an average pool before each
    stride-1 conv instead of a strided one), and attention pooling (one multi-head
    attention layer queried by the mean feature) instead of global average pooling. The
    attention pool ends in CLIP's image projection, so its output is the embedding.
    """
    if image_size % 32:
        raise RecipeError(
            f"CLIP's modified ResNet downsamples 32x before its attention pool, so it needs an image "
            f"size divisible by 32; got {image_size}. Set augment.size to a multiple of 32 (224 in the paper)."
        )
    from open_clip.modified_resnet import ModifiedResNet

    kwargs = {"layers": list(layers), "output_dim": embed_dim, "heads": heads, "image_size": image_size, "width": 64}
    net = ModifiedResNet(**kwargs)
    plain = PlainArchitecture("open_clip", "open_clip.modified_resnet.ModifiedResNet", [], kwargs, imports="import open_clip.modified_resnet")
    return Backbone(net, embed_dim, projects=True, plain=plain)


TIMM_PREFIX = "timm:"


def _timm(name: str, image_size: int) -> Backbone:
    """Any timm model as a feature extractor: ``num_classes=0`` drops its classifier, so it
    returns its pooled features (a ViT's class token, a convnet's global average)."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise RecipeError(
            f"Unknown timm model '{name}' (backbone: {TIMM_PREFIX}{name}).{hint} List the names with "
            f"`python -c \"import timm; print(timm.list_models('*vit*'))\"` (timm.list_models)."
        )
    # NOTE: pretrained=False always: building a backbone never downloads (a run may have no
    # internet). timm has no way to ask a model whether it takes img_size before building
    # it, so it is offered and, when the constructor refuses it (a TypeError before any
    # weight is made), the model is built without it.
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": image_size}
    try:
        network = timm.create_model(name, **kwargs)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
        del kwargs["img_size"]
        network = timm.create_model(name, **kwargs)
    patch_size = getattr(getattr(network, "patch_embed", None), "patch_size", None)
    if patch_size is not None and any(image_size % side for side in patch_size):
        raise RecipeError(
            f"{TIMM_PREFIX}{name} cuts images into {patch_size[0]}x{patch_size[1]} patches, so it needs an image "
            f"size divisible by {patch_size[0]}; got {image_size}. Set augment.size to a multiple of {patch_size[0]}."
        )
    # NOTE: with num_classes=0 a timm model returns head_hidden_size features where it has a
    # pre-logits layer (ConvNeXt's head MLP, MobileNetV3's conv head), else num_features.
    feature_dim = getattr(network, "head_hidden_size", None) or network.num_features
    return Backbone(network, int(feature_dim), plain=PlainArchitecture("timm", "timm.create_model", [name], kwargs, imports="import timm"))


TORCHVISION_PREFIX = "torchvision:"
CLASSIFIER_ATTRIBUTES = ("fc", "heads", "head", "classifier")  # where torchvision models keep theirs


def drop_torchvision_classifier(network: nn.Module) -> tuple[str, int]:
    """Replace the last linear layer of ``network``'s classifier by an Identity, so it
    returns the features that layer would classify; returns where it was, as Python
    ("fc", "classifier[2]"), and its input size. The parameters of the layers before it (a
    ConvNeXt's LayerNorm) stay, with their names."""
    for attribute in CLASSIFIER_ATTRIBUTES:
        head = getattr(network, attribute, None)
        if isinstance(head, nn.Linear):
            setattr(network, attribute, nn.Identity())
            return attribute, head.in_features
        if isinstance(head, nn.Sequential):
            index = max(i for i, layer in enumerate(head) if isinstance(layer, nn.Linear))
            features = head[index].in_features
            head[index] = nn.Identity()
            return f"{attribute}[{index}]", features
    raise RecipeError(f"{type(network).__name__} has no classifier ssl_zoo knows how to remove ({', '.join(CLASSIFIER_ATTRIBUTES)}).")


def _torchvision(name: str, image_size: int) -> Backbone:
    """Any torchvision classification model (random init, never downloads) as a feature extractor."""
    import torchvision
    from torchvision.models import get_model

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        raise RecipeError(
            f"Unknown torchvision model '{name}' (backbone: {TORCHVISION_PREFIX}{name})."
            + (f" Close names: {', '.join(close)}." if close else "")
            + " See torchvision.models.list_models()."
        )
    kwargs = {"weights": None, **({"image_size": image_size} if name.startswith("vit_") else {})}  # a ViT's positions fit the images
    network = get_model(name, **kwargs)
    head, feature_dim = drop_torchvision_classifier(network)
    plain = PlainArchitecture("torchvision", "torchvision.models.get_model", [name], kwargs,
                              [f"model.{head} = torch.nn.Identity()  # features out, no classifier"], "import torch\nimport torchvision")
    return Backbone(network, feature_dim, plain=plain)


def dense_features(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised images -> (B, D, h, w): the features at every position before
    the backbone pools them, in the space of its pooled (B, D) features.

    A ConvNet's or ResNet's last map; a ViT's patch tokens (after its final norm, as the
    class token it pools) laid out on the patch grid; for CLIP's modified ResNet, MaskCLIP's
    trick (Zhou et al. 2022): the attention pool's value and output projections applied to
    every position, no query-key attention, which lands each one in the joint space.
    """
    from open_clip.modified_resnet import ModifiedResNet

    if isinstance(network, ModifiedResNet):
        x = network.layer4(network.layer3(network.layer2(network.layer1(network.stem(images)))))  # (B, C, h, w)
        pool = network.attnpool
        # NOTE: MaskCLIP leaves out the positional embedding the pool adds before attending.
        x = x.permute(0, 2, 3, 1)  # (B, h, w, C)
        return pool.c_proj(pool.v_proj(x)).permute(0, 3, 1, 2)  # (B, E, h, w)
    if isinstance(network, torchvision.models.ResNet):
        x = network.maxpool(network.relu(network.bn1(network.conv1(images))))
        return network.layer4(network.layer3(network.layer2(network.layer1(x))))  # (B, C, h, w)
    if isinstance(network, VisionTransformer):
        x = network._process_input(images)  # (B, h * w, D) patch embeddings
        x = torch.cat([network.class_token.expand(len(x), -1, -1), x], dim=1)
        tokens = network.encoder(x)[:, 1:]  # (B, h * w, D), the class token dropped
        side = images.shape[-1] // network.patch_size
        return tokens.transpose(1, 2).reshape(len(x), -1, side, side)  # (B, D, h, w)
    if isinstance(network, nn.Sequential) and isinstance(network[-2], nn.AdaptiveAvgPool2d) and isinstance(network[-1], nn.Flatten):
        return network[:-2](images)  # convnet4: (B, C, h, w), what the global average pools
    raise RecipeError(
        f"Dense features of a {type(network).__name__} backbone are not known to ssl_zoo: dense evaluation "
        "takes convnet4, torchvision ResNets and ViTs, and CLIP's modified ResNet (clip_rn50)."
    )


class TextTransformer(nn.Module):
    """CLIP's text tower: causal transformer over BPE tokens, pooled at the EOT token.

    A thin wrapper around open_clip's implementation (the reference one) that returns
    the pooled width-sized features; the CLIP method owns the projection to the joint
    space, as it does for the image tower.
    """

    def __init__(self, context_length: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        from open_clip.transformer import TextTransformer as OpenClipTextTransformer

        self.context_length = context_length
        # NOTE: pool_type="argmax" pools at the highest token id, which is the EOT token
        # (49407) in CLIP's vocabulary: the causal mask means only it has seen the whole
        # caption.
        self.transformer = OpenClipTextTransformer(
            context_length=context_length,
            width=width,
            layers=layers,
            heads=heads,
            output_dim=None,
            pool_type="argmax",
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B, L) int64 with L <= context_length -> (B, width)
        return self.transformer(tokens)


class BagOfWords(nn.Module):
    """A bag-of-words text tower: the mean embedding of a caption's tokens, then a linear layer.

    The CLIP paper's cheaper baseline text encoder (Radford et al. 2021, figure 2): word
    order is thrown away. Every token but padding counts, the <start> and <end> tokens
    too (they are in every caption, so they shift every mean alike).
    """

    def __init__(self, width: int, vocab_size: int = 49408) -> None:  # 49408: CLIP's BPE vocabulary
        super().__init__()
        self.width = width
        self.embedding = nn.Embedding(vocab_size, width)
        self.linear = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B, L) int64, 0 = padding -> (B, width). Any L: padding never changes the mean.
        present = (tokens != 0).unsqueeze(-1).to(self.embedding.weight.dtype)  # (B, L, 1)
        summed = (self.embedding(tokens) * present).sum(dim=1)  # (B, width)
        return self.linear(summed / present.sum(dim=1).clamp_min(1))


IMAGE_BACKBONES: dict[str, Callable[[int], Backbone]] = {
    # name: image_size -> Backbone
    "convnet4": lambda size: _convnet((16, 32, 64, 128)),
    "resnet18": lambda size: _resnet("resnet18", cifar_stem=False),
    "resnet18_cifar": lambda size: _resnet("resnet18", cifar_stem=True),
    "resnet50": lambda size: _resnet("resnet50", cifar_stem=False),
    "resnet50_cifar": lambda size: _resnet("resnet50", cifar_stem=True),
    # CLIP's RN50: embedding 1024, 32 attention-pool heads (width 64 * 32 / 64), as open_clip's RN50.
    "clip_rn50": lambda size: _clip_modified_resnet(size, (3, 4, 6, 3), embed_dim=1024, heads=32),
    # Small ViTs (DeiT-Tiny / -Small widths). Patch 4 suits 32-64 px images, 16 suits 224 px.
    "vit_tiny_p4": lambda size: _vit(size, patch_size=4, width=192, layers=12, heads=3),
    "vit_small_p4": lambda size: _vit(size, patch_size=4, width=384, layers=12, heads=6),
    "vit_small_p16": lambda size: _vit(size, patch_size=16, width=384, layers=12, heads=6),
}

TEXT_BACKBONES: dict[str, Callable[[int], Backbone]] = {
    # name: context_length -> Backbone
    # The CLIP paper's text tower: width 512, 12 layers, 8 heads, context 77.
    "text_transformer": lambda ctx: Backbone(TextTransformer(ctx, 512, 12, 8), 512),
    "text_transformer_small": lambda ctx: Backbone(TextTransformer(ctx, 256, 4, 4), 256),
    "text_transformer_tiny": lambda ctx: Backbone(TextTransformer(ctx, 64, 2, 2), 64),
    # Bag of words at the transformers' widths: the same vocabulary and token embedding, no word order.
    "bag_of_words": lambda ctx: Backbone(BagOfWords(512), 512),
    "bag_of_words_tiny": lambda ctx: Backbone(BagOfWords(64), 64),
}


def build_image_backbone(name: str, image_size: int) -> Backbone:
    """A registry name, or ``timm:<model name>`` for any timm model (random init)."""
    if name.startswith(TIMM_PREFIX):
        return _timm(name.removeprefix(TIMM_PREFIX), image_size)
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision(name.removeprefix(TORCHVISION_PREFIX), image_size)
    if name not in IMAGE_BACKBONES:
        raise RecipeError(
            f"Unknown image backbone '{name}'. Valid: {', '.join(IMAGE_BACKBONES)}, "
            f"or {TIMM_PREFIX}<name> / {TORCHVISION_PREFIX}<name> for any timm or torchvision model."
        )
    return IMAGE_BACKBONES[name](image_size)


def build_text_backbone(name: str, context_length: int) -> Backbone:
    if name not in TEXT_BACKBONES:
        raise RecipeError(
            f"Unknown text backbone '{name}'. Valid: {', '.join(TEXT_BACKBONES)}."
        )
    if not 2 <= context_length <= 77:
        raise RecipeError(
            f"Text context length must be between 2 and 77 tokens; got {context_length}."
        )
    return TEXT_BACKBONES[name](context_length)
