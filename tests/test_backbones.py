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


# ---- Text towers: the bag of words beside the transformer ----


def test_bag_of_words_gives_one_vector_a_caption_that_padding_does_not_change():
    bag = build_text_backbone("bag_of_words_tiny", 16)
    assert bag.feature_dim == 64 and build_text_backbone("bag_of_words", 77).feature_dim == 512
    tokens = torch.tensor([[49406, 320, 1746, 3482, 49407, 0, 0, 0], [49406, 320, 49407, 0, 0, 0, 0, 0]])
    features = bag.network(tokens)
    assert features.shape == (2, 64)
    longer = torch.cat([tokens, torch.zeros(2, 8, dtype=torch.int64)], dim=1)  # 8 more pad tokens
    torch.testing.assert_close(bag.network(longer), features, rtol=0, atol=1e-6)
    # The mean over the tokens that are there, then the linear layer: nothing else.
    present = tokens[0][tokens[0] != 0]
    expected = bag.network.linear(bag.network.embedding(present).mean(dim=0))
    torch.testing.assert_close(features[0], expected)
    # Word order is thrown away: a bag of words, by definition.
    swapped = tokens.clone()
    swapped[0, [2, 3]] = swapped[0, [3, 2]]
    torch.testing.assert_close(bag.network(swapped)[0], features[0])


def test_clip_trains_with_a_bag_of_words_text_tower(make_recipe):
    import pytorch_lightning as pl

    from ssl_zoo.data.datamodule import ImageDataModule
    from ssl_zoo.methods.clip import CLIP

    recipe = make_recipe("clip", **{"backbone": "convnet4", "clip.text_backbone": "bag_of_words_tiny", "data.num_images": 64})
    datamodule = ImageDataModule.for_recipe(recipe)
    model = CLIP(recipe, num_classes=datamodule.num_classes)
    before = model.text_backbone.embedding.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(model.text_backbone.embedding.weight.detach(), before)
    # Gradient reaches the caption's token embeddings and never the padding's.
    model.zero_grad()
    tokens = model.tokenize(["a small red circle on a plain background"])
    (model.encode_text(tokens) * torch.randn(1, 64, generator=torch.Generator().manual_seed(0))).sum().backward()
    grad = model.text_backbone.embedding.weight.grad.abs().sum(dim=1)  # (vocabulary,)
    assert (grad[tokens[0][tokens[0] != 0]] > 0).all() and grad[0] == 0


def test_bag_of_words_exports_to_plain_torch(make_recipe):
    import torch.nn.functional as F

    from ssl_zoo.methods.clip import CLIP

    model = CLIP(make_recipe("clip", **{"backbone": "convnet4", "clip.text_backbone": "bag_of_words_tiny"})).eval()
    files, config = model.export_text()
    namespace: dict = {}
    exec(config["text_tower"]["build"], namespace)  # the build line as config.json gives it, no ssl_zoo
    text = namespace["text"]
    text.load_state_dict(files["text_tower.safetensors"], strict=True)
    assert config["text_tower"]["library"] == "torch" and config["tokenizer"]["context_length"] == 16
    tokens = model.tokenize(["a red circle on a plain background", "a star"])
    present = (tokens != 0).unsqueeze(-1).float()
    with torch.no_grad():
        plain = text["linear"]((text["embedding"](tokens) * present).sum(1) / present.sum(1))
        embedding = F.normalize(plain @ files["projections.safetensors"]["text_projection.weight"].T, dim=-1)
        torch.testing.assert_close(embedding, model.encode_text(tokens))
