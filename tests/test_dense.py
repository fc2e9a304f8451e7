"""Dense zero-shot segmentation: the scores by hand, the dense path against the global one,
and the errors for models without text and data without masks."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_zoo.backbones import build_image_backbone, dense_features
from ssl_zoo.data.shapes import make_shapes
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.dense import (
    DenseModel, check_masks, confusion_matrix, decode_grid, dense_evaluation, mask_classes, segment,
    segmentation_scores, zero_shot_logits,
)
from ssl_zoo.eval.stage import evaluate
from ssl_zoo.methods import build_method


def test_mean_iou_and_pixel_accuracy_match_a_hand_computed_example():
    truth = torch.tensor([[[0, 0, 1], [1, 2, 2]]])  # (1, 2, 3): classes 0, 1, 2 present, 3 absent
    predicted = torch.tensor([[[0, 1, 1], [1, 2, 3]]])
    confusion = confusion_matrix(predicted, truth, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    scores = segmentation_scores(confusion)
    # IoU: class 0 1/2, class 1 2/3, class 2 1/2; class 3 is never true, so not averaged
    # (its false positive already lowered class 2's IoU).
    assert scores["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert scores["pixel_acc"] == pytest.approx(4 / 6)


def test_masks_become_the_label_on_the_object_and_background_elsewhere():
    masks = torch.tensor([[[True, False]], [[False, True]]])
    assert mask_classes(masks, torch.tensor([3, 5]), background=8).tolist() == [[[3, 8]], [[8, 5]]]


def test_convnet_dense_map_averages_to_the_pooled_features():
    network = build_image_backbone("convnet4", 32).network.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense, pooled = dense_features(network, x), network(x)
    assert dense.shape == (2, 128, 4, 4)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), pooled)


def test_dense_features_of_a_vit_and_of_clips_resnet_are_on_their_grids():
    vit = build_image_backbone("vit_tiny_p4", 16).network.eval()
    with torch.no_grad():
        assert dense_features(vit, torch.randn(1, 3, 16, 16)).shape == (1, 192, 4, 4)
    with pytest.raises(Exception, match="Dense features of a Linear backbone are not known"):
        dense_features(nn.Linear(3, 3), torch.randn(1, 3, 8, 8))


def test_clip_resnet_dense_map_is_the_attention_pool_of_a_uniform_map_without_positions():
    # MaskCLIP's trick: value then output projection at each position. For a map that is the
    # same everywhere, and the pool's positional embedding zeroed, attention pooling averages
    # identical values, so it gives the same vector.
    network = build_image_backbone("clip_rn50", 96).network.eval()  # a 3x3 map before the pool
    pool = network.attnpool
    with torch.no_grad():
        pool.positional_embedding.zero_()
        uniform = torch.randn(1, 2048, 1, 1).expand(1, 2048, 3, 3)
        by_position = pool.c_proj(pool.v_proj(uniform.permute(0, 2, 3, 1)))  # (1, 3, 3, E)
        torch.testing.assert_close(by_position[0, 1, 2], pool(uniform)[0], rtol=1e-4, atol=1e-5)


@pytest.fixture
def clip_model(make_recipe):
    return build_method(make_recipe("clip", backbone="convnet4")).eval()


def test_dense_class_map_equals_the_global_prediction_on_a_uniform_image(clip_model):
    # A backbone whose every position sees only its own pixel (1x1 convolutions): on an image of
    # one colour all positions carry the pooled feature, so each must get the global class.
    clip_model.backbone = nn.Sequential(
        nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    model = DenseModel(clip_model, torch.device("cpu"), batch_size=16)
    classifier = F.normalize(torch.randn(9, 64, generator=torch.Generator().manual_seed(0)), dim=1)  # (K, E)
    colours = torch.randint(0, 256, (12, 3, 1, 1), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images = colours.expand(12, 3, 32, 32)
    with torch.no_grad():
        global_classes = (clip_model.embed_image_features(clip_model.backbone(clip_model.eval_transform(images))) @ classifier.T).argmax(dim=1)
        dense_classes = segment(zero_shot_logits(model.embed(model.features(images)), classifier), 32)  # (12, 32, 32)
    assert dense_classes.shape == (12, 32, 32)
    assert torch.equal(dense_classes, global_classes.view(12, 1, 1).expand(12, 32, 32))
    assert len(global_classes.unique()) > 1  # the colours do not all land in one class


def test_dense_evaluation_scores_zero_shot_chance_and_the_probe(clip_model):
    data = make_shapes(96, 32, seed=0)
    train, test = data.subset(64, seed=0), dataclasses.replace(make_shapes(16, 32, seed=1))
    names = []

    def classifier(class_names):
        names.extend(class_names)
        return F.normalize(torch.randn(len(class_names), 64, generator=torch.Generator().manual_seed(2)), dim=1)

    result = dense_evaluation(DenseModel(clip_model, torch.device("cpu"), 32), train, test, train.classes,
                              classifier, probe_positions_total=640, seed=0)
    assert names == [*train.classes, "background"]
    assert set(result.metrics) == {f"dense{p}_{m}" for p in ("", "_chance", "_probe") for m in ("miou", "pixel_acc")}
    assert all(0 <= value <= 1 for value in result.metrics.values())
    # Chance predicts background (most pixels) everywhere: its pixel accuracy is background's
    # share, its mIoU that share over the classes present in the test masks.
    truth = mask_classes(test.masks, test.labels, 8)
    background = (truth == 8).double().mean().item()
    assert result.metrics["dense_chance_pixel_acc"] == pytest.approx(background)
    assert result.metrics["dense_chance_miou"] == pytest.approx(background / len(truth.unique()))
    grid = decode_grid(result.describe()["grid"])
    assert torch.equal(grid["images"], test.images[:6]) and torch.equal(grid["truth"], truth[:6].to(torch.uint8))


def test_dense_on_a_model_without_text_is_a_clear_error(make_recipe):
    simclr = build_method(make_recipe("simclr", backbone="convnet4"))
    with pytest.raises(SslZooError, match="eval --dense needs a model with a text tower .* a simclr model has no text encoder"):
        evaluate(simclr, EvalConfig(dense=True, device="cpu"))


def test_dense_on_data_without_masks_is_a_clear_error():
    data = make_shapes(8, 16)
    check_masks(data, data)  # shapes has masks
    with pytest.raises(SslZooError, match="dataset 'shapes' has no masks on its test split"):
        check_masks(data, dataclasses.replace(data, masks=None))


def test_the_probe_finds_the_object_where_pixels_show_it(clip_model):
    # White objects on black: per-pixel features (1x1 convolutions) separate object from
    # background, so the supervised probe gets nearly every pixel's object-or-background right.
    clip_model.backbone = nn.Sequential(nn.Conv2d(3, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    data = make_shapes(48, 16, seed=0)
    data.images = (data.masks[:, None] * 255).expand(-1, 3, -1, -1).to(torch.uint8)
    result = dense_evaluation(DenseModel(clip_model, torch.device("cpu"), 16), data, data, data.classes,
                              lambda names: F.normalize(torch.randn(len(names), 64), dim=1), 2000, seed=0)
    object_found = result.probe_predicted != 8  # (6, 16, 16), the grid's first images
    assert (object_found == data.masks[:6]).double().mean() > 0.95
    assert result.metrics["dense_probe_miou"] > result.metrics["dense_chance_miou"]


def test_the_report_shows_a_table_row_and_a_grid_for_each_run_scored_dense(tmp_path):
    from ssl_zoo.eval.dense import DenseResult
    from ssl_zoo.report_dense import dense_plots, dense_tables

    maps = torch.randint(0, 9, (3, 6, 40, 40), generator=torch.Generator().manual_seed(0))
    metrics = {f"dense{p}_{m}": 0.25 for p in ("", "_chance", "_probe") for m in ("miou", "pixel_acc")}
    result = DenseResult(metrics, [f"class {i}" for i in range(8)] + ["background"],
                         torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8), *maps)
    scored = {"label": "clip run", "evaluation": {"metrics": metrics, "dense": result.describe()}}
    unscored = {"label": "simclr run", "evaluation": {"metrics": {"linear_top1": 0.5}}}
    tables = dense_tables([scored, unscored])
    (header, rows), = tables.values()
    assert rows == [["clip run", *["25.0 %"] * 6]] and len(header) == 7
    plots = dense_plots([scored, unscored], tmp_path)
    (path, caption), = plots.values()
    assert path.read_bytes()[:4] == b"\x89PNG" and "linear probe" in caption
    assert dense_tables([unscored]) == {} and dense_plots([unscored], tmp_path) == {}
