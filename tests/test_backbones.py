import pytest
import torch

from ssl_zoo.backbones import IMAGE_BACKBONES, build_image_backbone, build_text_backbone
from ssl_zoo.errors import RecipeError


@pytest.mark.parametrize("name", list(IMAGE_BACKBONES))
def test_image_backbones_give_their_feature_size(name):
    backbone = build_image_backbone(name, image_size=32)
    with torch.no_grad():
        features = backbone.network.eval()(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.feature_dim)


def test_cifar_stem_keeps_resolution():
    cifar = build_image_backbone("resnet18_cifar", 32).network
    imagenet = build_image_backbone("resnet18", 32).network
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7)


def test_cpu_convnet_keeps_full_resolution_in_its_first_stage_and_is_small():
    backbone = build_image_backbone("convnet4", 32)
    convs = [m for m in backbone.network if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128] and backbone.feature_dim == 128
    assert all(c.stride == (1, 1) and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in backbone.network) == 3  # 32 -> 4 px before pooling
    assert sum(p.numel() for p in backbone.network.parameters()) < 100_000


def test_methods_keep_backbone_weights_channels_last(make_recipe):
    from ssl_zoo.methods.simclr import SimCLR

    model = SimCLR(make_recipe("simclr"))
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_text_transformer_has_the_paper_size():
    text = build_text_backbone("text_transformer", 77)
    transformer = text.network.transformer
    assert text.feature_dim == 512
    assert transformer.width == 512 and transformer.heads == 8 and transformer.context_length == 77
    assert len(transformer.transformer.resblocks) == 12


def test_text_features_are_pooled_at_the_end_token_under_a_causal_mask():
    text = build_text_backbone("text_transformer_tiny", 12).network.eval()
    tokens = torch.tensor([[49406, 320, 2442, 736, 49407, 0, 0, 0, 0, 0, 0, 0]])
    changed_after_end = tokens.clone()
    changed_after_end[0, 6:] = 1234  # tokens after <end> cannot reach it through the causal mask
    changed_before_end = tokens.clone()
    changed_before_end[0, 2] = 1234
    with torch.no_grad():
        base = text(tokens)
        torch.testing.assert_close(text(changed_after_end), base)
        assert not torch.allclose(text(changed_before_end), base)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(RecipeError, match="Unknown image backbone .resnet19.. Valid: .*resnet18"):
        build_image_backbone("resnet19", 32)
    with pytest.raises(RecipeError, match="divisible"):
        build_image_backbone("vit_small_p16", 40)


def test_clip_rn50_is_clips_modified_resnet():
    from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

    backbone = build_image_backbone("clip_rn50", image_size=64)
    net = backbone.network
    assert isinstance(net, ModifiedResNet) and isinstance(net.attnpool, AttentionPool2d)
    assert net.attnpool.num_heads == 32 and backbone.feature_dim == 1024 and backbone.projects
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 6, 3]
    assert [net.conv1.kernel_size, net.conv2.kernel_size, net.conv3.kernel_size] == [(3, 3)] * 3  # 3-conv stem
    with pytest.raises(RecipeError, match="divisible by 32"):
        build_image_backbone("clip_rn50", image_size=48)


def test_clip_adds_no_projection_after_the_attention_pool(make_recipe):
    from ssl_zoo.methods.clip import CLIP

    recipe = make_recipe("clip", **{"backbone": "clip_rn50", "augment.size": 64, "clip.embed_dim": 1024})
    model = CLIP(recipe)
    assert isinstance(model.image_projection, torch.nn.Identity)
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 1024)


@pytest.mark.parametrize(
    "name, image_size, feature_dim",
    [
        ("timm:vit_small_patch16_224", 224, 384),  # ViT-S/16 at its own size
        ("timm:vit_tiny_patch16_224", 32, 192),  # a ViT rebuilt for 32 px: a 2x2 patch grid
        ("timm:convnext_tiny", 32, 768),
        ("timm:resnet18", 32, 512),
    ],
)
def test_timm_backbones_give_their_feature_size(name, image_size, feature_dim):
    backbone = build_image_backbone(name, image_size)
    with torch.no_grad():
        features = backbone.network.eval()(torch.randn(1, 3, image_size, image_size))
    assert backbone.feature_dim == feature_dim and features.shape == (1, feature_dim)


def test_timm_vit_takes_the_image_size_and_other_models_are_built_without_it():
    vit = build_image_backbone("timm:vit_tiny_patch16_224", 64)
    assert vit.network.patch_embed.grid_size == (4, 4)
    assert vit.plain.kwargs == {"pretrained": False, "num_classes": 0, "img_size": 64}
    # Convnets adapt to any size, and some constructors refuse img_size (RegNet): the kwargs
    # export writes are those the model was really built with.
    for name in ("resnet18", "regnetx_002"):
        assert build_image_backbone(f"timm:{name}", 64).plain.kwargs == {"pretrained": False, "num_classes": 0}


def test_timm_bad_name_and_bad_image_size_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"Unknown timm model 'vit_smal_patch16_224'.*vit_small_patch16_224.*timm.list_models"):
        build_image_backbone("timm:vit_smal_patch16_224", 32)
    with pytest.raises(RecipeError, match="16x16 patches.*divisible by 16; got 40"):
        build_image_backbone("timm:vit_tiny_patch16_224", 40)
