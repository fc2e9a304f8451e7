"""Each loss against a naive, loop-by-loop reference written here."""

import math

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss

from ssl_zoo.losses import byol_loss, clip_loss, nt_xent_loss
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.recipe import Recipe


def naive_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> float:
    """SimCLR's loss from the paper: 2N views, each with 1 positive and 2N - 2 negatives."""
    z = F.normalize(torch.cat([z0, z1]), dim=1).tolist()
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = [sum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(2 * n)]
        denominator = sum(math.exp(s) for j, s in enumerate(sims) if j != i)
        total += -math.log(math.exp(sims[positive]) / denominator)
    return total / (2 * n)


def test_nt_xent_matches_the_naive_reference_and_lightly():
    torch.manual_seed(0)
    for temperature in (0.1, 0.5):
        z0, z1 = torch.randn(6, 16), torch.randn(6, 16)
        loss = nt_xent_loss(z0, z1, temperature)
        assert abs(loss.item() - naive_nt_xent(z0, z1, temperature)) < 1e-4
        assert torch.allclose(loss, NTXentLoss(temperature=temperature)(z0, z1), atol=1e-6)


def test_simclr_trains_on_nt_xent_with_its_recipes_temperature(monkeypatch):
    model = SimCLR(Recipe(method="simclr", backbone="resnet18"))
    seen = {}
    monkeypatch.setattr("ssl_zoo.methods.simclr.nt_xent_loss", lambda z0, z1, t: seen.setdefault("t", t) * z0.sum() * 0)
    model.training_step({"views": torch.rand(2, 4, 3, 32, 32)}, 0)
    assert seen["t"] == model.config.temperature


def naive_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    n = len(images)
    logits = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    image_to_text = sum(-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(n)) / n
    text_to_image = sum(
        -logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(n))) for j in range(n)
    ) / n
    return (image_to_text + text_to_image) / 2


def test_clip_loss_matches_naive_reference():
    torch.manual_seed(1)
    images = F.normalize(torch.randn(7, 8), dim=1)
    texts = F.normalize(torch.randn(7, 8), dim=1)
    for scale in (1.0, 14.3, 100.0):
        expected = naive_clip_loss(images, texts, scale)
        assert abs(clip_loss(images, texts, torch.tensor(scale)).item() - expected) < 1e-3 * max(1, expected)


def test_clip_loss_is_low_for_matching_pairs_and_high_for_shuffled():
    torch.manual_seed(2)
    images = F.normalize(torch.randn(16, 32), dim=1)
    matched = clip_loss(images, images, torch.tensor(100.0))
    shuffled = clip_loss(images, images[torch.randperm(16)], torch.tensor(100.0))
    assert matched.item() < 1e-3
    assert shuffled.item() > math.log(16) / 2


def test_byol_loss_is_the_papers_normalised_mse():
    torch.manual_seed(3)
    p, t = torch.randn(6, 8), torch.randn(6, 8)
    # Naive reference, eq. 2 of Grill et al.: ||p/|p| - t/|t|||^2 per sample, batch mean.
    expected = sum(((p[i] / p[i].norm() - t[i] / t[i].norm()) ** 2).sum().item() for i in range(6)) / 6
    assert abs(byol_loss(p, t).item() - expected) < 1e-5
    cos = F.cosine_similarity(p, t).mean().item()
    assert abs(byol_loss(p, t).item() - (2 - 2 * cos)) < 1e-5
    # Four times the gradient of the old 0.5 * (-cos - cos) form, summed over both directions.
    p.requires_grad_(True)
    (byol_loss(p, t) + byol_loss(t.flip(0), p.flip(0))).backward()
    ours = p.grad.clone()
    p.grad = None
    (0.5 * (NegativeCosineSimilarity()(p, t) + NegativeCosineSimilarity()(t.flip(0), p.flip(0)))).backward()
    assert torch.allclose(ours, 4 * p.grad, atol=1e-6)
