"""`ssl_zoo export`: exported weights load into the plain libraries and give ssl_zoo's features.

Each case trains a tiny checkpoint for two steps (so batch-norm statistics and weights
have moved from their initial values), exports it, rebuilds the network with the plain
library's constructor (torchvision, timm, open_clip, torch), never ssl_zoo code, loads the
file with strict=True and compares features on the same normalised images.
"""

import json
import os

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file

from conftest import tiny_recipe
from ssl_zoo.cli import export_command
from ssl_zoo.errors import CheckpointError, SslZooError
from ssl_zoo.methods import load_method
from ssl_zoo.export import export_checkpoint
from ssl_zoo.training.train import fit


def plain_resnet18() -> torch.nn.Module:
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    return model


def plain_resnet18_cifar() -> torch.nn.Module:
    model = plain_resnet18()
    model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def plain_convnet4() -> torch.nn.Module:
    layers, channels = [], 3
    for i, width in enumerate((16, 32, 64, 128)):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
        if i < 3:
            layers.append(torch.nn.MaxPool2d(2))
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


CASES = {
    # name: (method, backbone, the plain library's constructor)
    "torchvision_resnet18": ("simclr", "resnet18", plain_resnet18),
    "torchvision_resnet18_cifar": ("byol", "resnet18_cifar", plain_resnet18_cifar),
    "torchvision_get_model": ("simclr", "torchvision:resnet18",
                              lambda: setattr(m := torchvision.models.get_model("resnet18", weights=None), "fc", torch.nn.Identity()) or m),
    "timm_vit_32px": ("simclr", "timm:vit_tiny_patch16_224",
                      lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)),
    "clip_convnet4": ("clip", "convnet4", plain_convnet4),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each case's checkpoint, trained for two steps of 8 shapes (built on first use)."""
    root = tmp_path_factory.mktemp("export")
    built = {}

    def get(case: str):
        if case not in built:
            method, backbone, _ = CASES[case]
            recipe = tiny_recipe(method, root / case, **{
                "backbone": backbone, "data.num_images": 32, "data.batch_size": 8, "data.knn_bank_size": 16,
                "data.val_size": 8, "trainer.max_steps": 2, "trainer.check_val_every_n_epoch": 100,  # no monitors: not tested here
            })
            built[case] = fit(recipe, enable_progress_bar=False).checkpoint
        return built[case]

    return get


def images(size: int) -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", list(CASES))
def test_exported_backbone_loads_into_the_plain_library_and_gives_the_same_features(case, checkpoints, tmp_path):
    checkpoint = checkpoints(case)
    config = export_checkpoint(checkpoint, tmp_path / "out")

    model = load_method(checkpoint)
    state = load_file(tmp_path / "out" / "backbone.safetensors")
    plain = CASES[case][2]()
    plain.load_state_dict(state, strict=True)  # the keys are the plain architecture's, no prefix surgery
    plain.eval()
    x = model.eval_transform(images(32))  # the same normalised input for both
    with torch.no_grad():
        ours = model(x)
        theirs = plain(x)
        # NOTE: ssl_zoo keeps backbones channels-last; in that memory format the plain model
        # runs the same kernels and its features are bit for bit ssl_zoo's. In the default
        # layout other convolution kernels sum in another order: equal up to float rounding.
        same_layout = plain.to(memory_format=torch.channels_last)(x)
    assert torch.equal(same_layout, ours)
    assert (theirs - ours).abs().max() <= 1e-5 * ours.abs().max()
    assert ours.shape == (4, config["feature_dim"])

    # config.json: the recipe, the checkpoint and a loading snippet that works as written.
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved == json.loads(json.dumps(config))
    assert saved["recipe"]["backbone"] == CASES[case][1] and len(saved["checkpoint"]["sha256"]) == 64
    assert saved["checkpoint"]["global_step"] == 2
    assert saved["eval_transform"]["size"] == 32 and saved["eval_transform"]["mean"] == [0.485, 0.456, 0.406]
    namespace = {}
    cwd = os.getcwd()
    os.chdir(tmp_path / "out")
    try:
        exec(saved["how_to_load"], namespace)
    finally:
        os.chdir(cwd)
    with torch.no_grad():
        assert torch.equal(namespace["model"].to(memory_format=torch.channels_last)(x), ours)


def test_clip_export_gives_the_same_image_and_text_embeddings(checkpoints, tmp_path):
    import open_clip.tokenizer
    import open_clip.transformer

    checkpoint = checkpoints("clip_convnet4")
    config = export_checkpoint(checkpoint, tmp_path / "out")
    model = load_method(checkpoint)
    text_config = config["text"]["text_tower"]
    text = open_clip.transformer.TextTransformer(**text_config["kwargs"])
    text.load_state_dict(load_file(tmp_path / "out" / "text_tower.safetensors"), strict=True)
    text.eval()
    image = plain_convnet4().to(memory_format=torch.channels_last)
    image.load_state_dict(load_file(tmp_path / "out" / "backbone.safetensors"), strict=True)
    image.eval()
    projections = load_file(tmp_path / "out" / "projections.safetensors")

    tokenizer = config["text"]["tokenizer"]
    assert tokenizer["class"] == "open_clip.tokenizer.SimpleTokenizer" and tokenizer["context_length"] == 16
    tokens = open_clip.tokenizer.SimpleTokenizer()(["a red circle", "two blue squares"], context_length=tokenizer["context_length"])
    x = model.eval_transform(images(32))
    with torch.no_grad():
        text_embeddings = F.normalize(text(tokens) @ projections["text_projection.weight"].T, dim=-1)
        image_embeddings = F.normalize(image(x) @ projections["image_projection.weight"].T, dim=-1)
        assert torch.equal(text_embeddings, model.encode_text(tokens))
        assert torch.equal(image_embeddings, model.encode_image(x))
    assert torch.equal(projections["logit_scale"], model.logit_scale.detach())


def test_export_replaces_an_earlier_export_and_refuses_any_other_folder(checkpoints, tmp_path, capsys):
    checkpoint = checkpoints("torchvision_resnet18")
    out = tmp_path / "out"
    assert export_command([str(checkpoint), "--out", str(out)]) == 0
    assert "backbone.safetensors" in capsys.readouterr().out
    first = (out / "config.json").read_text()
    assert export_command([str(checkpoint), "--out", str(out)]) == 0  # an earlier export is replaced whole
    assert (out / "config.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or retired folder left behind

    (out / "notes.txt").write_text("mine")  # no longer only an export: never deleted
    with pytest.raises(SslZooError, match="not empty and is not an earlier export.*notes.txt"):
        export_checkpoint(checkpoint, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(SslZooError, match="not an earlier export"):
        export_checkpoint(checkpoint, other)
    assert (out / "notes.txt").read_text() == "mine" and (other / "config.json").read_text() == "{}"


def test_a_crash_while_writing_keeps_the_earlier_export_and_leaves_no_partial_one(checkpoints, tmp_path, monkeypatch):
    import ssl_zoo.export

    checkpoint = checkpoints("clip_convnet4")
    out = tmp_path / "out"
    export_checkpoint(checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    save_file, written = ssl_zoo.export.save_file, []

    def dies_on_the_second_file(tensors, path):
        if written:
            raise OSError("No space left on device")
        written.append(path)
        save_file(tensors, path)

    monkeypatch.setattr(ssl_zoo.export, "save_file", dies_on_the_second_file)
    with pytest.raises(OSError, match="No space"):
        export_checkpoint(checkpoint, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone


def test_export_of_a_missing_or_corrupt_checkpoint_names_the_file_and_writes_nothing(tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CheckpointError, match="missing.ckpt' does not exist"):
        export_checkpoint(missing, tmp_path / "out")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt.ckpt' is not a checkpoint"):
        export_checkpoint(corrupt, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.ckpt"]


@pytest.mark.parametrize(
    "method, backbone, size",
    [("simclr", "vit_tiny_p4", 32), ("clip", "clip_rn50", 64)],  # torchvision's ViT class; open_clip's ModifiedResNet
)
def test_registry_backbones_export_with_their_library_constructor(method, backbone, size, make_recipe, tmp_path):
    """Backbones built from a library class with ssl_zoo's arguments: config.json names the
    class and the arguments, which rebuild it. Untrained (a saved fresh model) to stay fast."""
    from open_clip.modified_resnet import ModifiedResNet
    from torchvision.models.vision_transformer import VisionTransformer

    from ssl_zoo.methods import METHODS

    overrides = {"clip.embed_dim": 1024} if backbone == "clip_rn50" else {}  # the size its attention pool projects to
    recipe = make_recipe(method, **{"backbone": backbone, "augment.size": size, **overrides})
    model = METHODS[method](recipe)
    checkpoint = tmp_path / "fresh.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0}, checkpoint)
    config = export_checkpoint(checkpoint, tmp_path / "out")

    architecture = config["architecture"]
    if backbone == "clip_rn50":
        assert architecture["constructor"] == "open_clip.modified_resnet.ModifiedResNet"
        plain = ModifiedResNet(**architecture["kwargs"])
        # Its attention pool is the image projection: nothing is added after it.
        assert "image_projection.weight" not in load_file(tmp_path / "out" / "projections.safetensors")
    else:
        assert architecture["constructor"] == "torchvision.models.vision_transformer.VisionTransformer"
        plain = VisionTransformer(**architecture["kwargs"])
        plain.heads = torch.nn.Identity()
    plain.load_state_dict(load_file(tmp_path / "out" / "backbone.safetensors"), strict=True)
    x = model.eval_transform(images(size))
    with torch.no_grad():
        assert torch.equal(plain.eval().to(memory_format=torch.channels_last)(x), model.eval()(x))
