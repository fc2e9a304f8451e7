"""The evaluation stage: each metric against a case whose answer is known."""

import json
import math
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.data.shapes import make_shapes
from ssl_zoo.errors import CheckpointError
from ssl_zoo.eval.cache import FeatureCache
from ssl_zoo.eval.diagnostics import alignment, embedding_std, rankme, uniformity
from ssl_zoo.eval.knn import knn_accuracy
from ssl_zoo.eval.linear import linear_eval, topk_accuracy
from ssl_zoo.eval.retrieval import retrieval_recall
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.eval.features import ExtractionSettings, extraction_settings, image_features
from ssl_zoo.eval.zero_shot import zero_shot_accuracy, zero_shot_classifier, zero_shot_hits
from ssl_zoo.methods import load_method
from ssl_zoo.methods.simclr import SimCLR


def test_linear_eval_recovers_a_linear_separation_and_scores_noise_at_chance():
    g = torch.Generator().manual_seed(0)
    true_weights = torch.randn(5, 32, generator=g)
    x = torch.randn(3000, 32, generator=g) * 3 + 7  # off-centre, scaled: standardisation must handle it
    y = ((x - 7) @ true_weights.T).argmax(dim=1)
    result = linear_eval(x[:2000], y[:2000], x[2000:], y[2000:], num_classes=5)
    assert result.top1 > 0.95 and result.top5 == 1.0
    assert set(result.holdout_top1) >= {1e-4, 1e-2}
    noise_labels = torch.randint(0, 5, (3000,), generator=g)
    chance = linear_eval(x[:2000], noise_labels[:2000], x[2000:], noise_labels[2000:], num_classes=5)
    assert 0.12 < chance.top1 < 0.28


def test_torchmetrics_accuracies_are_the_means_of_the_per_image_outcomes():
    # The reported accuracies come from torchmetrics, the bootstrap intervals from the
    # per-image vectors: the two must be one number, ties included (zero rows: all classes tie).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = (x[:, :5] + 0.8 * torch.randn(600, 5, generator=g)).argmax(dim=1)
    x[:100] = 0.0
    result = linear_eval(x[:400], y[:400], x[400:], y[400:], num_classes=5, max_iter=50)
    assert result.top1 == result.correct.float().mean().item()
    embeddings, classifier = F.normalize(x[:, :8], dim=1), F.normalize(torch.randn(6, 8, generator=g), dim=1)
    labels = torch.randint(0, 6, (600,), generator=g)
    top1, top5 = zero_shot_hits(embeddings, labels, classifier)
    assert zero_shot_accuracy(embeddings, labels, classifier) == {
        "zero_shot_top1": top1.float().mean().item(), "zero_shot_top5": top5.float().mean().item()
    }
    logits = embeddings @ classifier.T
    assert topk_accuracy(logits, labels, 10) == 1.0  # k beyond the classes: every label is in
    predicted = torch.randint(0, 6, (600,), generator=g)
    assert knn_accuracy(predicted, labels, 6) == (predicted == labels).float().mean().item()


def test_zero_shot_of_agreeing_towers_is_perfect_and_of_shuffled_ones_chance():
    g = torch.Generator().manual_seed(0)
    classes = ["cat", "dog", "ship", "truck", "frog", "deer", "horse", "bird"]
    directions = {name: F.normalize(torch.randn(64, generator=g), dim=0) for name in classes}

    def encode_text(prompts):
        # A text tower that puts every prompt of a class at that class's direction
        # (plus a prompt-specific wobble the ensemble averages out).
        rows = []
        for prompt in prompts:
            name = next(n for n in classes if f" {n}" in prompt)
            wobble = 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(zlib.crc32(prompt.encode())))
            rows.append(F.normalize(directions[name] + wobble, dim=0))
        return torch.stack(rows)

    classifier = zero_shot_classifier(encode_text, classes)
    labels = torch.randint(0, len(classes), (800,), generator=g)
    images = F.normalize(torch.stack([directions[classes[i]] for i in labels]) + 0.05 * torch.randn(800, 64, generator=g), dim=1)
    top1, top5 = zero_shot_hits(images, labels, classifier)
    assert top1.all() and top5.all()
    shuffled = images[torch.randperm(800, generator=g)]
    top1, _ = zero_shot_hits(shuffled, labels, classifier)
    assert abs(top1.float().mean().item() - 1 / len(classes)) < 0.06


def test_retrieval_recall_on_a_toy_case():
    images = torch.eye(3)  # image i points along axis i
    texts = torch.tensor([
        [1.0, 0.0, 0.0],  # caption 0, of image 0: its image first
        [0.6, 0.8, 0.0],  # caption 1, of image 0: image 1 (0.8) before image 0 (0.6)
        [0.0, 0.6, 0.8],  # caption 2, of image 1: image 2 (0.8) before image 1 (0.6)
        [0.0, 0.0, 1.0],  # caption 3, of image 2: its image first
    ])
    owner = torch.tensor([0, 0, 1, 2])
    recall = retrieval_recall(images, texts, owner, ks=(1, 2))
    assert recall["text_to_image_r1"] == 0.5 and recall["text_to_image_r2"] == 1.0
    # Image 0 ranks its caption 0 first; image 1 ranks caption 1 (0.8) before its own
    # caption 2 (0.6); image 2 ranks its caption 3 first.
    assert recall["image_to_text_r1"] == pytest.approx(2 / 3) and recall["image_to_text_r2"] == 1.0


def test_retrieval_of_collapsed_embeddings_is_chance_not_perfect():
    # Every image and caption at the same point: ties must not count as hits.
    images, texts = torch.ones(10, 4) / 2, torch.ones(20, 4) / 2
    owner = torch.arange(10).repeat_interleave(2)
    recall = retrieval_recall(images, texts, owner, ks=(1, 10))
    assert recall["text_to_image_r1"] == 0.0 and recall["image_to_text_r1"] == 0.0
    assert recall["text_to_image_r10"] == 1.0  # ranked last of 10 images: still within 10


def test_rankme_is_the_papers_formula_on_the_raw_matrix():
    # Singular values of diag(3, 1) are 3 and 1: p = (0.75, 0.25) (+ 1e-7 each), by hand.
    features = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    p = [0.75 + 1e-7, 0.25 + 1e-7]
    assert rankme(features) == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-6)
    # Not centred: a ReLU-like (non-negative) matrix has a large mean direction, which
    # RankMe counts; centring would remove it and give another number.
    relu = torch.randn(500, 32, generator=torch.Generator().manual_seed(0)).clamp_min(0)
    centred = relu - relu.mean(0)
    assert rankme(relu) != pytest.approx(rankme(centred), rel=0.01)


def test_diagnostics_tell_collapse_from_health():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(2000, 64, generator=g)
    collapsed = torch.randn(1, 64, generator=g) + 1e-4 * torch.randn(2000, 64, generator=g)
    assert embedding_std(healthy) == pytest.approx(1.0, abs=0.05)
    assert embedding_std(collapsed) < 0.01
    assert rankme(healthy) > 55
    low_rank = torch.randn(2000, 3, generator=g) @ torch.randn(3, 64, generator=g)
    assert rankme(low_rank) < 3.01
    assert alignment(healthy, healthy) == pytest.approx(0.0, abs=1e-6)
    assert alignment(healthy, -healthy) == pytest.approx(4.0)  # antipodal: ||a - b||^2 = 4
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-3)  # log E exp(0)
    assert uniformity(healthy) < -3.5  # spread over the sphere


def test_feature_cache_is_keyed_by_weights_and_images(make_recipe, tmp_path):
    recipe = make_recipe("simclr")
    model = SimCLR(recipe)
    config = EvalConfig(cache_dir=str(tmp_path / "cache"), batch_size=64)
    images = make_shapes(64, 32, seed=0)

    evaluator = Evaluator(model, config)
    first = evaluator.features(images, "test")
    again = Evaluator(model, config).features(images, "test")
    assert torch.equal(first, again)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    # Other images under the same name and split: a new entry, not the stale one.
    other_images = make_shapes(64, 32, seed=1)
    cache_check = Evaluator(model, config)
    cache_check.features(other_images, "test")
    assert cache_check.cache.misses == 1 and cache_check.cache.hits == 0

    # Changed weights (a retrained checkpoint): a new entry, and different features.
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.5)
    retrained = Evaluator(model, config)
    changed = retrained.features(images, "test")
    assert retrained.cache.misses == 1 and not torch.allclose(changed, first)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_image_features_on_the_cpu_are_the_float32_features_of_eval_mode(make_recipe):
    """On the CPU, extraction is a plain float32 loop over batches (no autocast, no pinning):
    the features equal the backbone's own outputs to the last bit."""
    model = SimCLR(make_recipe("simclr"))  # channels-last backbone with batch norm, in train mode
    images = make_shapes(40, 32, seed=0).images  # (40, 3, 32, 32) uint8
    features = image_features(model.backbone, model.eval_transform, images, torch.device("cpu"), batch_size=16)
    assert model.backbone.training  # left as it was
    model.backbone.eval()
    with torch.no_grad():
        expected = torch.cat([model.backbone(model.eval_transform(images[i : i + 16])) for i in range(0, 40, 16)])
    assert features.dtype == torch.float32 and torch.equal(features, expected)


def test_extraction_settings_follow_the_device_type(monkeypatch):
    """bf16 autocast and pinned copies are chosen by the device's type alone (the CUDA
    branch's results need a GPU, which these tests do not have)."""
    assert extraction_settings(torch.device("cpu")) == ExtractionSettings(pin_memory=False, autocast=None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert extraction_settings(torch.device("cuda:1")) == ExtractionSettings(pin_memory=True, autocast=torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # pre-Ampere: float32
    assert extraction_settings(torch.device("cuda")) == ExtractionSettings(pin_memory=True, autocast=None)


def test_cache_without_a_folder_computes_every_time():
    cache = FeatureCache(None)
    calls = []
    cache.get_or_compute({"a": 1}, lambda: calls.append(1) or {"features": torch.zeros(1)})
    cache.get_or_compute({"a": 1}, lambda: calls.append(1) or {"features": torch.zeros(1)})
    assert len(calls) == 2


def test_load_method_rejects_files_that_are_not_ssl_zoo_checkpoints(make_recipe, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint ssl_zoo can read"):
        load_method(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_method(tmp_path / "missing.ckpt")
    bare = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError, match="not an ssl_zoo checkpoint"):
        load_method(bare)
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not an ssl_zoo checkpoint"):
        load_method(plain)
    # A checkpoint whose weights are another backbone's than its recipe says.
    from ssl_zoo.recipe import recipe_to_dict

    recipe = make_recipe("simclr")
    state = SimCLR(recipe).state_dict()
    recipe.backbone = "resnet50"
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"recipe": recipe_to_dict(recipe), "num_classes": 0}}, mismatched)
    with pytest.raises(CheckpointError, match="does not match its own recipe"):
        load_method(mismatched)


def test_eval_command_scores_a_clip_checkpoint_with_every_metric(make_recipe, tmp_path):
    from ssl_zoo.training.train import fit

    recipe = make_recipe("clip", **{"data.num_images": 256, "data.batch_size": 64})
    summary = fit(recipe, enable_progress_bar=False)
    args = ["--ckpt", str(summary.checkpoint), "--cache-dir", str(tmp_path / "cache"), "--max-test", "50"]
    result = subprocess.run([sys.executable, "-m", "ssl_zoo", "eval", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((summary.run_dir / "eval" / "shapes.json").read_text())
    metrics = saved["metrics"]
    for name in ("linear_top1", "linear_top5", "knn_top1", "zero_shot_top1", "image_to_text_r1",
                 "text_to_image_r10", "embedding_std", "rankme", "alignment", "uniformity"):
        assert name in metrics and metrics[name] == metrics[name], name  # present and not NaN
    assert 0 <= metrics["knn_top1"] <= 1 and saved["data"]["num_test"] == 50
    assert saved["checkpoint"]["sha256"] and saved["recipe"]["method"] == "clip"
    assert {"torch", "lightly", "kornia"} <= set(saved["versions"])
    # The second run reads its features from the cache.
    again = subprocess.run([sys.executable, "-m", "ssl_zoo", "eval", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "feature cache: 3 hits" in again.stdout
    assert json.loads((summary.run_dir / "eval" / "shapes.json").read_text())["metrics"] == metrics


def test_clip_trained_on_unlabelled_pairs_gets_retrieval_and_a_clear_skip(make_recipe, tmp_path):
    import numpy as np
    from PIL import Image

    from ssl_zoo.eval.stage import evaluate

    rows = ["path,caption"]
    for i in range(12):
        path = tmp_path / f"image_{i}.png"
        Image.fromarray(np.full((16, 16, 3), 20 * i, dtype=np.uint8)).save(path)
        rows.append(f"{path},a picture number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows))
    recipe = make_recipe("clip", **{"data.name": "pairs", "data.root": str(tmp_path / "pairs.csv")})
    from ssl_zoo.methods.clip import CLIP

    result = evaluate(CLIP(recipe), EvalConfig(batch_size=8))
    assert "no test split" in result["skipped"]["classification"] and "--eval-data" in result["skipped"]["classification"]
    assert result["pairs"] == {"name": "pairs", "split": "all", "num_images": 12, "num_captions": 12}
    assert 0 <= result["metrics"]["text_to_image_r1"] <= 1
