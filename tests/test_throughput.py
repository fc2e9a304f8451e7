"""The throughput benchmark compares like with like, and runs on the CPU."""

import json
import math

import pytest
import torch
from torchvision.transforms import v2 as T

from conftest import load_benchmark
from ssl_zoo.augment import AugmentConfig
from ssl_zoo.data.shapes import make_shapes


@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("throughput")


def view_ops(view_transform) -> dict[type, object]:
    """The torchvision ops of one lightly view transform, by type (RandomApply unwrapped)."""
    ops = {}
    for op in view_transform.transform.transforms:
        ops[type(op)] = op
        if isinstance(op, T.RandomApply):
            ops[type(op.transforms[0])] = op
    return ops


def test_lightly_transform_draws_from_the_same_distribution(throughput):
    config = throughput.VIEWS_CONFIG
    transform = throughput.lightly_transform(config, num_views=2)
    assert type(transform).__name__ == "SimCLRTransform" and len(transform.transforms) == 2
    ops = view_ops(transform.transforms[0])
    crop = ops[T.RandomResizedCrop]
    assert crop.size == (config.size, config.size) and crop.scale == config.crop_scale
    assert all(math.isclose(a, b) for a, b in zip(crop.ratio, config.crop_ratio))
    assert ops[T.RandomHorizontalFlip].p == config.flip_p
    jitter_apply, jitter = ops[T.ColorJitter], ops[T.RandomApply].transforms[0]
    assert jitter_apply.p == config.jitter_p
    b, c, s, h = config.jitter
    assert jitter.brightness == pytest.approx((1 - b, 1 + b)) and jitter.contrast == pytest.approx((1 - c, 1 + c))
    assert jitter.saturation == pytest.approx((1 - s, 1 + s)) and jitter.hue == pytest.approx((-h, h))
    assert ops[T.RandomGrayscale].p == config.grayscale_p
    normalize = ops[T.Normalize]
    assert normalize.mean == list(config.mean) and normalize.std == list(config.std)


def test_lightly_transform_keeps_byols_per_view_probabilities(throughput):
    config = AugmentConfig(size=32, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
    transform = throughput.lightly_transform(config, num_views=2)
    assert type(transform).__name__ == "BYOLTransform"
    for view, (blur, solarize) in zip(transform.transforms, [(1.0, 0.0), (0.1, 0.2)]):
        ops = {type(op).__name__: op for op in view.transform.transforms}
        assert ops["GaussianBlur"].prob == blur and ops["RandomSolarization"].prob == solarize


def test_lightly_transform_refuses_what_it_cannot_match(throughput):
    with pytest.raises(ValueError, match="crop ratio"):
        throughput.lightly_transform(AugmentConfig(crop_ratio=(1.0, 1.0)), num_views=2)


def test_view_rates_and_a_row_on_the_cpu(throughput, tmp_path):
    settings = throughput.Settings(
        device=torch.device("cpu"), warmup=1, steps=2, view_batch=64, view_rounds=2, cores=1
    )
    views = throughput.measure_views(make_shapes(64 * 12, 32, seed=0), settings)
    assert views["ssl_zoo"] > 0 and views["lightly"] > 0 and views["kornia"] > 0
    assert views["ratio_over_lightly"] == pytest.approx(views["ssl_zoo"] / views["lightly"])

    case = throughput.Case("byol", "resnet18", size=32, batch=8, base_recipe="byol_resnet18_cifar10")
    row = throughput.measure_case(case, settings)
    for key in ("pairs_per_s_model", "pairs_per_s_full", "pairs_per_s_lightly"):
        assert row[key] > 0, key
    assert row["ratio_full_over_model"] == pytest.approx(row["pairs_per_s_full"] / row["pairs_per_s_model"])
    assert row["peak_mem_gib"] is None  # no GPU memory on the CPU
    json.dumps(row)  # the result file's rows are plain JSON


def test_views_before_after_alternates_the_trees_and_reads_the_ratio_per_pair(tmp_path, monkeypatch):
    """Its processes replaced by a fake whose working tree runs at 0.9 of the base: the
    order alternates pair by pair, the base's files are the commit's, and each row's median
    block ratio, interval and verdict follow."""
    before_after = load_benchmark("views_before_after")
    calls = []

    def fake_rates(tree, device, scratch):
        side = "head" if tree == before_after.ROOT else "base"
        assert side == "head" or (tree / "ssl_zoo" / "augment.py").is_file()  # the exported commit
        calls.append(side)
        base = {"ssl_zoo": 1000.0 + len(calls), "kornia": 500.0, "lightly": 300.0}
        return {row: rate * (0.9 if side == "head" and row == "ssl_zoo" else 1.0) for row, rate in base.items()}

    monkeypatch.setattr(before_after, "view_rates", fake_rates)
    monkeypatch.setattr(before_after, "check_imports_from", lambda tree: None)
    results = before_after.main(["--base", "HEAD", "--pairs", "4", "--out", str(tmp_path / "r.json")])
    assert calls == ["base", "head", "head", "base", "base", "head", "head", "base"]
    ssl_zoo = results["rows"]["ssl_zoo"]
    assert ssl_zoo["median_ratio"] == pytest.approx(0.9, abs=0.002) and ssl_zoo["verdict"] == "drop beyond 5%"
    assert results["rows"]["kornia"]["median_ratio"] == 1.0 and results["rows"]["kornia"]["verdict"] == "no drop beyond 5%"
    assert json.loads((tmp_path / "r.json").read_text())["runs"][1]["first"] == "head"


def test_views_before_after_cancels_the_position_in_a_pair():
    """The second process of every pair 20 % slower, whichever tree: the blocks read 1."""
    before_after = load_benchmark("views_before_after")
    runs = [{"first": first, first: {"ssl_zoo": 100.0}, second: {"ssl_zoo": 80.0}}
            for first, second in [("base", "head"), ("head", "base")] * 2]
    assert before_after.block_ratios(runs, "ssl_zoo") == [pytest.approx(1.0)] * 2


def test_views_before_after_calls_an_interval_across_the_tolerance_undecided():
    before_after = load_benchmark("views_before_after")
    low, high = before_after.median_interval([0.9, 0.95, 1.0, 1.05, 1.1, 0.92, 1.08])
    assert low < 0.95 < high
    assert before_after.verdict(low, high, 0.05).startswith("undecided")
    assert before_after.median_interval([1.0] * 5) == (1.0, 1.0)
