"""Weights in: files ssl_zoo did not write are evaluated by the same stage, stand in a
bench report, and start a recipe's backbone. Every file is made here; nothing downloads."""

import json
import shlex

import open_clip
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from ssl_zoo.cli import main
from ssl_zoo.errors import CheckpointError, RecipeError
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.imported import WeightsSource, load_imported
from ssl_zoo.eval.stage import evaluate_weights
from ssl_zoo.weights import load_backbone_weights, read_state_dict

SHAPES = ["--data", "shapes", "--max-train", "256", "--max-test", "64", "--no-cache"]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A supervised torchvision ResNet-18 as torchvision saves one: classifier included."""
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(network.state_dict(), path)
    return path, network


def plain_features(network: torch.nn.Module, model, images: torch.Tensor) -> torch.Tensor:
    network.fc = torch.nn.Identity()
    with torch.no_grad():
        return network.eval()(model.eval_transform(images))


def test_torchvision_weights_give_the_plain_networks_features(resnet18_file):
    path, network = resnet18_file
    model = load_imported(WeightsSource.parse(f"torchvision:resnet18={path}"), input_size=32)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert model.eval_transform.size == 32 and model.eval_transform.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    with torch.no_grad():
        ours = model.backbone(model.eval_transform(images))
    torch.testing.assert_close(ours, plain_features(network, model, images), rtol=0, atol=1e-5)


def test_eval_scores_timm_weights_with_the_same_protocol(tmp_path, capsys):
    torch.manual_seed(0)
    network = timm.create_model("resnet18", pretrained=False, num_classes=5)
    path = tmp_path / "timm_resnet18.safetensors"
    save_file(network.state_dict(), path)
    out = tmp_path / "eval.json"
    assert main(["eval", "--weights", f"timm:resnet18={path}", "--input-size", "32", *SHAPES, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "imported" and result["backbone"] == "timm:resnet18" and result["recipe"] is None
    assert result["weights"]["path"] == str(path) and len(result["weights"]["sha256"]) == 64
    assert result["input"]["size"] == 32 and result["data"]["name"] == "shapes"
    assert {"linear_top1", "knn_top1", "rankme"} <= set(result["metrics"]) and "zero_shot_top1" not in result["metrics"]
    assert "imported" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A small open_clip model (its own config, as open_clip's JSON files give them) and a
    checkpoint of it."""
    folder = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
              "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (folder / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "tiny-test-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip")
    path = folder / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_open_clip_weights_get_zero_shot_and_retrieval(tiny_open_clip):
    path, reference = tiny_open_clip
    weights = WeightsSource.parse(f"open_clip:tiny-test-clip={path}")
    model = load_imported(weights)
    texts = ["a photo of a circle", "a square"]
    with torch.no_grad():
        ours = model.encode_text(model.tokenize(texts))
        theirs = torch.nn.functional.normalize(reference.eval().encode_text(open_clip.get_tokenizer("tiny-test-clip")(texts)), dim=-1)
    torch.testing.assert_close(ours, theirs)
    config = EvalConfig(data="shapes", max_train=256, max_test=64)
    result = evaluate_weights(weights, config)
    assert {"zero_shot_top1", "image_to_text_r1", "text_to_image_r5"} <= set(result["metrics"])
    assert result["pairs"]["name"] == "shapes"  # the labelled data is captioned too


def test_open_clip_weights_are_scored_on_captions_alone(tiny_open_clip, tmp_path):
    import numpy as np
    from PIL import Image

    rows = ["path,caption"]
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), 20 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{tmp_path / f'{i}.png'},a picture number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows))
    path, _ = tiny_open_clip
    config = EvalConfig(pairs="pairs", pairs_root=str(tmp_path / "pairs.csv"))
    result = evaluate_weights(WeightsSource.parse(f"open_clip:tiny-test-clip={path}"), config)
    assert "no test split" in result["skipped"]["classification"]
    assert result["pairs"]["num_captions"] == 12 and 0 <= result["metrics"]["image_to_text_r1"] <= 1


def test_imported_weights_stand_in_a_bench_report(resnet18_file, tmp_path, monkeypatch):
    path, _ = resnet18_file
    out = tmp_path / "bench"
    assert main(["bench", "--recipes", "quickstart", "--epochs", "1", "--no-baselines", "--out", str(out),
                 "--weights", f"torchvision:resnet18={path}", "--input-size", "32", "--max-test", "96",
                 "--data.num_images", "256", "--data.batch_size", "64", "--data.knn_bank_size", "256",
                 "--trainer.accelerator", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["quickstart", "random init (convnet4)", "torchvision:resnet18"]
    imported = results["runs"][-1]
    assert imported["kind"] == "imported" and imported["training"] is None and 0 < imported["evaluation"]["metrics"]["knn_top1"]
    report = (out / "report.md").read_text()
    assert "| torchvision:resnet18 | imported (torchvision:resnet18) | torchvision:resnet18 |" in report
    # Its reproduce line scores it again on the same images, to the same numbers.
    # Its paths are relative to the report's folder (it lies outside the folder bench ran from).
    assert "# run from the report's folder" in report and str(path) not in report
    line = next(line for line in report.splitlines() if "eval --weights torchvision:resnet18=" in line)
    assert "--data-recipe" in line and "--input-size 32" in line
    again = tmp_path / "again.json"
    monkeypatch.chdir(out)
    assert main([*shlex.split(line)[3:], "--out", str(again)]) == 0
    assert json.loads(again.read_text())["metrics"]["knn_top1"] == imported["evaluation"]["metrics"]["knn_top1"]


def test_a_recipe_starts_from_init_weights(resnet18_file, make_recipe):
    from ssl_zoo.training.train import fit

    path, network = resnet18_file
    recipe = make_recipe("byol", **{"backbone": "resnet18", "init_weights": str(path), "trainer.max_steps": 1,
                                    "optim.lr": 0.0, "optim.weight_decay": 0.0})
    summary = fit(recipe, enable_progress_bar=False)
    state = torch.load(summary.checkpoint, weights_only=True)["state_dict"]
    # With a zero learning rate the trained weights are the file's (batch-norm statistics move).
    for name in ("conv1.weight", "layer4.1.conv2.weight"):
        torch.testing.assert_close(state[f"backbone.{name}"], network.state_dict()[name])
        torch.testing.assert_close(state[f"target_backbone.{name}"], network.state_dict()[name])  # BYOL's target too


def test_weight_files_are_unwrapped_and_bad_ones_named(tmp_path, resnet18_file):
    path, network = resnet18_file
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, wrapped)
    assert read_state_dict(wrapped).keys() == network.state_dict().keys()

    resnet50 = torchvision.models.resnet50()
    with pytest.raises(CheckpointError, match=r"does not fit the backbone torchvision:resnet50 \(.*of another shape"):
        load_backbone_weights(resnet50, path, "backbone torchvision:resnet50")
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.pth' is not a weights file ssl_zoo can read.*state dict of tensors"):
        read_state_dict(tmp_path / "notes.pth")
    with pytest.raises(RecipeError, match="is not LIBRARY:NAME=FILE"):
        WeightsSource.parse("resnet50.pth")
    with pytest.raises(RecipeError, match="does not exist"):
        load_imported(WeightsSource.parse(f"timm:resnet18={tmp_path / 'missing.pth'}"))


def test_an_export_comes_back_in_with_the_same_scores(make_recipe, tmp_path):
    # fit -> export -> eval --weights scores what eval --ckpt scores: the round trip loses nothing.
    from ssl_zoo.eval.data import load_labelled_splits
    from ssl_zoo.eval.stage import evaluate_checkpoint
    from ssl_zoo.export import export_checkpoint
    from ssl_zoo.training.train import fit

    recipe = make_recipe("simclr", **{"backbone": "torchvision:resnet18", "trainer.max_steps": 2, "data.num_images": 512})
    checkpoint = fit(recipe, enable_progress_bar=False).checkpoint
    export_checkpoint(checkpoint, tmp_path / "export")
    config = EvalConfig(data="shapes")
    splits = load_labelled_splits(recipe.data, config)  # as bench does: one set of images scores both
    trained = evaluate_checkpoint(checkpoint, config, splits=splits)
    back = evaluate_weights(WeightsSource.parse(f"torchvision:resnet18={tmp_path / 'export' / 'backbone.safetensors'}"),
                            config, input_size=32, splits=splits)
    assert trained["data"]["num_test"] == 128 and trained["metrics"]["knn_top1"] > 0
    for name in ("knn_top1", "linear_top1", "embedding_std"):
        assert back["metrics"][name] == pytest.approx(trained["metrics"][name], abs=1e-6), name
