"""Methods ssl_zoo has never seen, defined entirely in this file, train, evaluate and
bench through the same commands as the built-in ones: nothing under ssl_zoo/ names them.

The method is SimSiam (Chen & He 2021): two views, a projector and a predictor, a
stop-gradient on the other branch, no negatives and no momentum target.
"""

import json
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import yaml
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ssl_zoo.cli import main
from ssl_zoo.methods import SSLMethod, load_method
from ssl_zoo.methods.clip import CLIP, CLIPConfig
from ssl_zoo.registry import METHODS


@dataclass
class SimSiamConfig:  # the recipe's `simsiam:` section
    hidden_dim: int = 2048
    output_dim: int = 2048


class SimSiam(SSLMethod, name="simsiam", config=SimSiamConfig):
    global_batchnorm = True  # NOTE: SimSiam's projector normalises over the global batch, as SimCLR's does

    def __init__(self, recipe, num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        self.projection_head = SimSiamProjectionHead(self.feature_dim, self.config.hidden_dim, self.config.output_dim)
        self.prediction_head = SimSiamPredictionHead(self.config.output_dim, self.config.hidden_dim // 4, self.config.output_dim)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, batch, batch_idx):
        views = batch["views"]  # (2, B, 3, S, S)
        features = [self.backbone(view) for view in views]  # 2 x (B, D)
        z0, z1 = (self.projection_head(f) for f in features)  # (B, P) each
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        # NOTE: the stop-gradient on z is what keeps SimSiam from collapsing.
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        self.log("train/loss", loss)
        return loss + self.probe_step(features[0], batch)


TINY = {"data.num_images": 256, "data.batch_size": 64, "data.knn_bank_size": 256, "trainer.accelerator": "cpu",
        "trainer.log_every_n_steps": 2, "optim.warmup_epochs": 0}


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("simsiam")
    recipe = {
        "method": "simsiam", "name": "simsiam_shapes", "description": "SimSiam, defined in a test file",
        "backbone": "convnet4",
        "data": {"name": "shapes", "num_images": 256, "batch_size": 64, "knn_bank_size": 256},
        "optim": {"lr": 0.05, "warmup_epochs": 0},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 2, "output_dir": str(folder / "runs")},
        "simsiam": {"hidden_dim": 128, "output_dim": 128},
    }
    path = folder / "simsiam_shapes.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_the_method_registers_itself_by_being_defined():
    assert METHODS["simsiam"] is SimSiam and SimSiam.num_views == 2
    assert not SimSiam.uses_text and not SimSiam.has_ema_target


def test_it_trains_evaluates_and_reloads(recipe_file, tmp_path, capsys):
    assert main(["fit", "--recipe", str(recipe_file)]) == 0
    assert "kNN top-1 (val)" in capsys.readouterr().out
    checkpoint = recipe_file.parent / "runs" / "simsiam_shapes" / "version_0" / "checkpoints" / "last.ckpt"
    model = load_method(checkpoint)
    assert isinstance(model, SimSiam) and model.config == SimSiamConfig(hidden_dim=128, output_dim=128)
    saved = yaml.safe_load((checkpoint.parent.parent / "recipe.yaml").read_text())
    assert saved["method"] == "simsiam" and saved["simsiam"] == {"hidden_dim": 128, "output_dim": 128}

    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(checkpoint), "--max-test", "128", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "simsiam" and 0 < result["metrics"]["knn_top1"] <= 1
    assert "zero_shot_top1" not in result["metrics"]  # it has no text tower


def test_its_section_is_validated_like_any_other(recipe_file, capsys):
    assert main(["fit", "--recipe", str(recipe_file), "--simsiam.hiden_dim", "64"]) == 2
    error = capsys.readouterr().err
    assert "hiden_dim" in error and "Did you mean 'hidden_dim'?" in error
    assert main(["fit", "--recipe", str(recipe_file), "--simclr.temperature", "0.2"]) == 2
    assert "is for method 'simsiam' but sets the 'simclr:' section" in capsys.readouterr().err


def test_it_benches_beside_a_built_in_method(recipe_file, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--recipes", str(recipe_file), "quickstart", "--epochs", "1", "--out", str(out),
                 "--max-test", "96", *[arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]]) == 0
    results = json.loads((out / "results.json").read_text())
    labels = [run["label"] for run in results["runs"]]
    assert labels == ["simsiam_shapes", "quickstart", "supervised (convnet4)", "random init (convnet4)"]
    simsiam = results["runs"][0]
    assert simsiam["recipe"]["method"] == "simsiam" and simsiam["training"]["steps"] == 4
    assert "| simsiam_shapes | simsiam | convnet4 |" in (out / "report.md").read_text()
    assert torch.tensor(simsiam["curves"]["loss"]).shape[1] == 2


# A second text method needs no edit to ssl_zoo either: CLIP's model with its own tokenizer
# (characters instead of BPE), which the data module then uses for the training captions.
def char_tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """Characters as token ids 1..255, then an end token (the highest id, where the text
    tower pools), then 0-padding: (n, context_length)."""
    tokens = torch.zeros(len(texts), context_length, dtype=torch.int64)
    for row, text in enumerate(texts):
        ids = [min(ord(c), 255) for c in text[: context_length - 1]] + [256]
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens


class CharCLIP(CLIP, name="char_clip", config=CLIPConfig):
    @classmethod
    def caption_tokenizer(cls, config):
        return partial(char_tokenize, context_length=config.context_length)


def test_a_second_text_method_trains_and_scores_on_its_own_tokens(make_recipe):
    from ssl_zoo.data.datamodule import ImageDataModule
    from ssl_zoo.eval.config import EvalConfig
    from ssl_zoo.eval.stage import evaluate
    from ssl_zoo.training.train import fit

    recipe = make_recipe("char_clip", **{"backbone": "convnet4", "trainer.max_steps": 2, "char_clip.context_length": 48})
    datamodule = ImageDataModule.for_recipe(recipe)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["tokens"].shape == (32, 48) and batch["tokens"].max() == 256  # characters, not BPE ids
    summary = fit(recipe, enable_progress_bar=False)
    model = load_method(summary.checkpoint)
    assert isinstance(model, CharCLIP) and torch.equal(model.tokenize(["a cat"])[0, :6], torch.tensor([97, 32, 99, 97, 116, 256]))
    result = evaluate(model, EvalConfig(max_test=64))
    assert {"zero_shot_top1", "image_to_text_r1"} <= set(result["metrics"])
