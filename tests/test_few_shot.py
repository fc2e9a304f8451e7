"""Few-shot linear probes: the sampler, the interval over draws, the k matching zero-shot,
and the eval flags end to end on an untrained model."""

import math

import pytest
import torch

from ssl_zoo.cli import eval_parser, format_eval, main
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.few_shot import few_shot_metrics, few_shot_probes, mean_interval, sample_shots, shots_matching


def test_the_sampler_draws_exactly_k_of_each_class_seeded_and_without_repeats():
    labels = torch.arange(300) % 5
    labels[:40] = 4  # unbalanced: class 4 has the most
    for k in (1, 3, 16):
        rows = sample_shots(labels, k, num_classes=5, seed=7)
        assert len(rows) == 5 * k and len(set(rows.tolist())) == 5 * k
        assert torch.bincount(labels[rows], minlength=5).tolist() == [k] * 5
        assert labels[rows].tolist() == [c for c in range(5) for _ in range(k)]  # grouped by class
        assert torch.equal(rows, sample_shots(labels, k, num_classes=5, seed=7))
        assert not torch.equal(rows, sample_shots(labels, k, num_classes=5, seed=8))


def test_the_sampler_names_a_class_with_fewer_than_k_images():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 10)
    with pytest.raises(SslZooError, match="k=4: class 1 has only 3 labelled training image"):
        sample_shots(labels, 4, num_classes=3, seed=0)
    with pytest.raises(SslZooError, match="k >= 1"):
        sample_shots(labels, 0, num_classes=3, seed=0)


def test_the_interval_over_draws_is_students_t_and_stays_within_0_and_1():
    values = [0.50, 0.52, 0.54, 0.56, 0.58]
    low, high = mean_interval(values)
    half = 2.776445 * math.sqrt(0.001) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert low == pytest.approx(0.54 - half) and high == pytest.approx(0.54 + half)
    assert mean_interval([0.99, 1.0, 0.95]) [1] == 1.0 and mean_interval([0.3]) == (0.3, 0.3)


def test_the_k_matching_zero_shot_is_interpolated_in_log_k():
    top1 = {1: 0.2, 2: 0.4, 4: 0.6, 8: 0.7}
    assert shots_matching(top1, 0.5) == {"first_k": 4, "interpolated_k": pytest.approx(2**1.5)}
    assert shots_matching(top1, 0.6) == {"first_k": 4, "interpolated_k": pytest.approx(4.0)}
    assert shots_matching(top1, 0.1) == {"first_k": 1, "interpolated_k": 1}
    assert shots_matching(top1, 0.9) == {"first_k": None, "interpolated_k": None}


def test_few_shot_probes_on_separable_features_improve_with_k():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 16, generator=g)
    train_y, test_y = torch.arange(400) % 4, torch.arange(200) % 4
    train_x = centres[train_y] + 2.5 * torch.randn(400, 16, generator=g)
    test_x = centres[test_y] + 2.5 * torch.randn(200, 16, generator=g)
    result = few_shot_probes(train_x, train_y, test_x, test_y, 4, shots=(1, 16), draws=4, seed=0, zero_shot_top1=0.5)
    one, sixteen = result["top1"]["1"], result["top1"]["16"]
    assert len(one["draws"]) == 4 and one["mean"] == pytest.approx(sum(one["draws"]) / 4)
    assert one["interval"][0] <= one["mean"] <= one["interval"][1]
    assert sixteen["mean"] > one["mean"] and sixteen["mean"] > 0.8
    assert result["matches_zero_shot"]["first_k"] == 1  # 0.5 is reached with one image per class
    metrics, intervals = few_shot_metrics(result)
    assert set(metrics) == {"few_shot_top1_k1", "few_shot_top1_k16", "few_shot_k_matching_zero_shot"}
    assert intervals["few_shot_top1_k16"] == sixteen["interval"]


@pytest.mark.parametrize("value", ["0", "-2", "1,x", "2.5", "4,4", ""])
def test_bad_few_shot_values_are_a_clear_error(value, capsys):
    assert main(["eval", "--ckpt", "never_read.ckpt", "--few-shot", value]) == 2
    error = capsys.readouterr().err
    assert "argument --few-shot" in error and "Traceback" not in error


@pytest.fixture
def one_thread():
    # The evaluation's L-BFGS fits are many tiny ops: on 2 shared cores two threads made this
    # test take 110 s against 10 s on one (conftest sets two).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_the_eval_flags_reach_the_config_and_the_results(make_recipe, one_thread):
    args = eval_parser().parse_args(["--ckpt", "x.ckpt", "--few-shot", "8,1,2", "--few-shot-draws", "2", "--shifts"])
    assert args.few_shot == (1, 2, 8) and args.few_shot_draws == 2 and args.shifts
    from ssl_zoo.eval.stage import evaluate
    from ssl_zoo.methods.clip import CLIP

    # An untrained CLIP (text: zero-shot too) on 64 shapes images: 16 test images, 6 per class in training.
    model = CLIP(make_recipe("clip", backbone="convnet4", **{"data.num_images": 64}))
    result = evaluate(model, EvalConfig(few_shot=(1, 2), few_shot_draws=2, shifts=True, batch_size=64, diagnostics_size=16))
    metrics = result["metrics"]
    assert {"few_shot_top1_k1", "few_shot_top1_k2", "shift_sketch_linear_top1", "shift_jpeg_s3_knn_top1",
            "shift_scale_zero_shot_top1", "shift_corruption_mean_linear_top1"} <= set(metrics)
    assert all(0 <= metrics[name] <= 1 for name in metrics if name.endswith("top1"))
    assert result["intervals"]["few_shot_top1_k2"] == result["few_shot"]["top1"]["2"]["interval"]
    assert result["shift"]["in_distribution"]["linear_top1"] == metrics["linear_top1"]
    assert len(result["shift"]["sets"]) == 15 and "zero_shot_top1" in result["few_shot"]
    shown = format_eval(result)
    assert "few-shot linear probe" in shown and "k=2" in shown and "gaussian_noise_s3" in shown
    assert "shift_sketch" not in shown  # the shift metrics are in their table, not one a line
