"""Each loss against a naive, loop-by-loop reference written here."""

import math

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss

from ssl_zoo.losses import byol_loss, centred_teacher, clip_loss, dino_loss, nt_xent_loss, sinkhorn_teacher
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


def naive_dino(teacher_out: torch.Tensor, student_out: torch.Tensor, center: torch.Tensor,
               teacher_temp: float, student_temp: float) -> float:
    """DINO's loss as the paper's Algorithm 1 and main_dino.py's DINOLoss loop write it: for
    each teacher global view and each student view but itself, the cross-entropy per image."""
    total, terms = 0.0, 0
    for t, teacher in enumerate(teacher_out.tolist()):
        for v, student in enumerate(student_out.tolist()):
            if v == t:
                continue
            for row_t, row_s in zip(teacher, student):
                shifted = [(x - c) / teacher_temp for x, c in zip(row_t, center.tolist())]
                p_t = [math.exp(x) / sum(math.exp(y) for y in shifted) for x in shifted]
                log_norm = math.log(sum(math.exp(x / student_temp) for x in row_s))
                total += -sum(p * (x / student_temp - log_norm) for p, x in zip(p_t, row_s))
            terms += 1
    return total / (terms * teacher_out.shape[1])


def test_dino_loss_matches_the_naive_reference_and_lightly():
    torch.manual_seed(0)
    teacher_out, local_out = torch.randn(2, 5, 12), torch.randn(4, 5, 12)  # 2 global, 4 local views
    student_out = torch.cat([torch.randn(2, 5, 12), local_out])  # (6, 5, 12): globals first
    center = 0.3 * torch.randn(12)
    for teacher_temp in (0.04, 0.07):
        loss = dino_loss(centred_teacher(teacher_out, center, teacher_temp), student_out, student_temp=0.1)
        assert abs(loss.item() - naive_dino(teacher_out, student_out, center, teacher_temp, 0.1)) < 1e-4
        lightly_loss = DINOLoss(output_dim=12, teacher_temp=teacher_temp, student_temp=0.1)
        lightly_loss.center.copy_(center)  # (1, 1, K): lightly keeps the centre itself
        expected = lightly_loss(list(teacher_out), list(student_out), teacher_temp=teacher_temp)
        torch.testing.assert_close(loss, expected)
    # Two views alone: each global view is the other's target, and its own never is.
    two = dino_loss(centred_teacher(teacher_out, center, 0.04), student_out[:2], 0.1)
    assert abs(two.item() - naive_dino(teacher_out, student_out[:2], center, 0.04, 0.1)) < 1e-4


def test_dino_loss_is_low_when_the_student_agrees_with_the_teacher():
    # A teacher sure of one prototype per image: the student that picks the same ones
    # scores lower than one that picks others.
    torch.manual_seed(0)
    picks = torch.randint(0, 16, (8,))
    teacher_out = 5 * F.one_hot(picks, 16).float().expand(2, 8, 16)  # (2, 8, 16)
    agreeing = teacher_out.repeat(2, 1, 1)  # (4, 8, 16)
    other = 5 * F.one_hot((picks + 1) % 16, 16).float().expand(4, 8, 16)
    center = torch.zeros(16)
    targets = centred_teacher(teacher_out, center, 0.04)
    assert dino_loss(targets, agreeing, 0.1) < 0.1 < dino_loss(targets, other, 0.1)


def naive_sinkhorn(teacher_out, teacher_temp, iterations=3):
    """DINOv2's sinkhorn_knopp_teacher, written as its paper states it: alternately make
    every prototype's column hold 1/K of the mass and every row 1/N, then rows sum to 1."""
    rows = [[math.exp(x / teacher_temp) for x in row] for row in teacher_out.flatten(0, 1).tolist()]
    n, k = len(rows), len(rows[0])
    total = sum(map(sum, rows))
    rows = [[x / total for x in row] for row in rows]
    for _ in range(iterations):
        columns = [sum(row[j] for row in rows) for j in range(k)]
        rows = [[x / columns[j] / k for j, x in enumerate(row)] for row in rows]
        rows = [[x / sum(row) / n for x in row] for row in rows]
    return torch.tensor([[x * n for x in row] for row in rows]).view(teacher_out.shape)


def test_sinkhorn_teacher_matches_the_naive_reference_and_balances_the_prototypes():
    torch.manual_seed(0)
    teacher_out = torch.randn(2, 6, 5)  # 2 global views, 6 images, 5 prototypes
    targets = sinkhorn_teacher(teacher_out, teacher_temp=0.5)
    torch.testing.assert_close(targets, naive_sinkhorn(teacher_out, 0.5), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(targets.sum(-1), torch.ones(2, 6))  # every row a distribution
    # A teacher that puts every image on prototype 0 (the collapse the EMA centre must undo
    # over many steps) gets targets that share the batch among the prototypes at once.
    collapsed = torch.zeros(2, 6, 5)
    collapsed[..., 0] = 1.0
    shares = sinkhorn_teacher(collapsed + 0.01 * torch.randn(2, 6, 5), teacher_temp=0.04).sum(dim=(0, 1)) / 12
    torch.testing.assert_close(shares, torch.full((5,), 0.2), atol=0.02, rtol=0)
    # The weight-normalised last layer's widest logits (cosines, -1 to 1) at the lowest
    # temperature neither overflow nor empty a prototype or an image: one image at -1 on
    # every prototype, the others at +1.
    extreme = torch.ones(2, 6, 5)
    extreme[0, 0] = -1.0
    assert torch.isfinite(sinkhorn_teacher(extreme, teacher_temp=0.04)).all()
