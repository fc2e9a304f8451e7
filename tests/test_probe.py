"""The papers' linear probe (ssl_zoo.eval.probe): SGD on augmented crops through a frozen backbone."""

import dataclasses

import pytest
import torch
from torch import nn

from ssl_zoo.augment import EvalTransform
from ssl_zoo.errors import DataFormatError, SslZooError
from ssl_zoo.eval.probe import DEFAULT_PROBE, ProbeSettings, linear_probe
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.clip import CLIP
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.methods.supervised import Supervised

NUM_CLASSES, SIZE, BATCH = 4, 16, 32
# A few epochs at a probe's usual rate, from a 256 batch down to ours (lr_at scales it).
SETTINGS = ProbeSettings(epochs=8, batch_size=256, lr=0.8, nesterov=True, source="tests/test_probe.py")


def coloured_images(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, SIZE+4, SIZE+4) images whose class sets their colour; labels (n,).

    A colour survives any crop and flip, so a linear layer on pooled features can read it.
    """
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.float32)
    labels = torch.arange(n) % NUM_CLASSES
    pixels = colours[labels][:, :, None, None] + noise * torch.randn(n, 3, SIZE + 4, SIZE + 4, generator=g)
    return pixels.clamp(0, 255).to(torch.uint8), labels


def tiny_backbone() -> nn.Module:
    """A random conv net with batch-norm: (b, 3, S, S) -> (b, 8)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def run(backbone: nn.Module, noise: float = 10.0, **overrides):
    """linear_probe on 128 train / 64 test coloured images, batches of BATCH on the CPU."""
    train_x, train_y = coloured_images(128, noise, seed=1)
    test_x, test_y = coloured_images(64, noise, seed=2)
    calls = []

    def train_batches(epoch: int):
        calls.append(epoch)
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(epoch))
        return [(train_x[i], train_y[i]) for i in order.split(BATCH)]

    def test_batches():
        return [(test_x[i : i + BATCH], test_y[i : i + BATCH]) for i in range(0, len(test_y), BATCH)]

    arguments = dict(
        backbone=backbone, feature_dim=8, eval_transform=EvalTransform(SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        train_batches=train_batches, test_batches=test_batches, num_classes=NUM_CLASSES, settings=SETTINGS,
        device=torch.device("cpu"), batch_size=BATCH,
    ) | overrides
    return linear_probe(**arguments), calls


def test_probe_learns_a_separable_signal_and_reports_what_it_used():
    result, calls = run(tiny_backbone())
    assert result.top1 > 0.95  # chance is 0.25; an almost untrained probe (lr 1e-6) gets 0.73
    assert result.top5 == 1.0  # four classes: top-5 is top-4
    assert result.correct.shape == (64,) and result.correct.dtype == torch.bool
    assert result.correct.float().mean().item() == pytest.approx(result.top1)
    assert (result.epochs, result.batch_size, result.settings) == (8, BATCH, SETTINGS)
    assert result.lr == pytest.approx(0.8 * BATCH / 256)
    assert calls == list(range(8))  # one shuffled pass per epoch


def test_probe_with_batchnorm_and_a_streamed_training_split_learns_too():
    # A generator has no length: the first epoch tells the schedule how many steps there are.
    settings = dataclasses.replace(SETTINGS, batchnorm=True)
    train_x, train_y = coloured_images(128, 10.0, seed=1)

    def streamed(epoch: int):
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(epoch))
        return ((train_x[i], train_y[i]) for i in order.split(BATCH))

    result, _ = run(tiny_backbone(), settings=settings, train_batches=streamed)
    assert result.top1 > 0.9


def test_same_seed_same_result_and_the_seed_draws_the_views():
    # Noisy enough that the probe is not perfect: equal `correct` vectors then say something.
    first, _ = run(tiny_backbone(), noise=150.0, epochs=2, seed=3)
    second, _ = run(tiny_backbone(), noise=150.0, epochs=2, seed=3)
    assert 0.3 < first.top1 < 1.0
    assert torch.equal(first.correct, second.correct) and first.top1 == second.top1 and first.top5 == second.top5
    # Another seed, other crops and flips: another probe (seed 5 differs from 3 on the CPU).
    other, _ = run(tiny_backbone(), noise=150.0, epochs=2, seed=5)
    assert not torch.equal(first.correct, other.correct)


@pytest.mark.parametrize("training", [True, False, "mixed"])
def test_backbone_is_untouched_and_its_mode_restored(training):
    backbone = tiny_backbone().train(training is not False)
    if training == "mixed":  # a caller's frozen batch-norm inside a training network
        backbone[1].eval()
    modes = [module.training for module in backbone.modules()]
    before = {name: value.clone() for name, value in backbone.state_dict().items()}  # BN running stats too
    run(backbone, epochs=2)
    assert [module.training for module in backbone.modules()] == modes
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None and p.requires_grad for p in backbone.parameters())


def test_epochs_override_the_settings_and_are_reported():
    result, calls = run(tiny_backbone(), epochs=3)
    assert SETTINGS.epochs == 8
    assert result.epochs == 3 and calls == [0, 1, 2]


def test_lr_scales_linearly_with_the_batch():
    assert DEFAULT_PROBE.lr_at(256) == pytest.approx(0.1)
    assert DEFAULT_PROBE.lr_at(512) == pytest.approx(0.2)
    assert DEFAULT_PROBE.lr_at(32) == pytest.approx(0.0125)
    assert SimCLR.linear_probe.lr_at(4096) == pytest.approx(1.6)  # SimCLR B.6: 0.1 x 4096 / 256
    assert SimCLR.linear_probe.lr_at(256) == pytest.approx(0.1)
    assert BYOL.linear_probe.lr_at(1024) == pytest.approx(0.8)  # BYOL's code: 0.2 x 1024 / 256
    assert BYOL.linear_probe.lr_at(256) == pytest.approx(0.2)


def test_methods_carry_their_papers_protocol():
    byol, simclr = BYOL.linear_probe, SimCLR.linear_probe
    assert (byol.epochs, byol.batch_size, byol.momentum, byol.nesterov, byol.weight_decay) == (80, 1024, 0.9, True, 0.0)
    assert "BYOL" in byol.source and "C.1" in byol.source
    assert (simclr.epochs, simclr.batch_size, simclr.lr, simclr.nesterov, simclr.weight_decay) == (90, 4096, 1.6, True, 0.0)
    assert "SimCLR" in simclr.source and "B.6" in simclr.source
    for settings in (byol, simclr):
        assert settings.schedule == "cosine" and settings.crop_scale == (0.08, 1.0) and not settings.batchnorm
    # Methods without a paper protocol of their own fall back to lightly's benchmark.
    assert CLIP.linear_probe is DEFAULT_PROBE and Supervised.linear_probe is DEFAULT_PROBE
    assert DEFAULT_PROBE.epochs == 90 and not DEFAULT_PROBE.nesterov and "lightly" in DEFAULT_PROBE.source


def test_bad_settings_and_arguments_are_named():
    with pytest.raises(SslZooError, match="epochs = 0"):
        dataclasses.replace(SETTINGS, epochs=0)
    with pytest.raises(SslZooError, match="crop_scale"):
        dataclasses.replace(SETTINGS, crop_scale=(0.5, 0.2))
    with pytest.raises(SslZooError, match="nesterov"):
        dataclasses.replace(SETTINGS, momentum=0.0)
    with pytest.raises(SslZooError, match="num_classes = 1"):
        run(tiny_backbone(), num_classes=1)
    with pytest.raises(DataFormatError, match="training batches for epoch 0 are empty"):
        run(tiny_backbone(), train_batches=lambda epoch: [])
    with pytest.raises(DataFormatError, match="test batches are empty"):
        run(tiny_backbone(), epochs=1, test_batches=lambda: [])
