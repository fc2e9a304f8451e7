"""Self-supervised losses as pure, shape-documented functions, gathered across processes.

BYOL's regression loss is lightly's ``NegativeCosineSimilarity`` put on the paper's scale.
DINO's cross-entropy takes its teacher's targets as an argument, made by the paper's
centring (the method keeps the centre, in lightly's ``Center``) or by DINOv2's Sinkhorn-Knopp
(lightly's SwAV ``sinkhorn``), rather than keeping a centre as lightly's ``DINOLoss`` does,
and is tested equal to it.
SimCLR's NT-Xent is written here although lightly has one: lightly's ``NTXentLoss`` cuts
the self-similarities out with a boolean index, which on a GPU makes the host wait for the
device at every step. ``nt_xent_loss`` masks them instead and is tested equal to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity
from lightly.loss.swav_loss import sinkhorn
from lightly.utils import dist
from torch import Tensor


def _gather(x: Tensor) -> Tensor:
    """(B, D) per process -> (world * B, D), rank-major, with gradients flowing back."""
    return torch.cat(dist.gather(x)) if dist.world_size() > 1 else x


def nt_xent_loss(z0: Tensor, z1: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, and the
    other 2N - 2 views of the global batch (N images over all processes) are negatives.

    z0, z1: (B, P) projections of the two views of this process's B images (normalised
    here). Returns the mean loss over this process's 2B views.

    Under DDP each process scores its own views against the views of all processes, so
    local row i's positive is column rank * B + i; the gather keeps gradients, so the
    mean over processes equals one process holding the whole global batch.
    """
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    all0, all1 = _gather(z0), _gather(z1)  # (N, P)
    batch = z0.shape[0]
    labels = torch.arange(batch, device=z0.device) + dist.rank() * batch  # (B,)
    # A view is not its own negative. NOTE: masked to -inf (softmax weight 0) rather than
    # cut out as lightly does: same loss, and no data-dependent shape.
    itself = torch.arange(all0.shape[0], device=z0.device)[None, :] == labels[:, None]  # (B, N)
    logits_01 = z0 @ all1.T / temperature  # (B, N): view 0 against every view 1
    logits_00 = (z0 @ all0.T / temperature).masked_fill(itself, float("-inf"))
    logits_10 = z1 @ all0.T / temperature
    logits_11 = (z1 @ all1.T / temperature).masked_fill(itself, float("-inf"))
    logits = torch.cat([torch.cat([logits_01, logits_00], 1), torch.cat([logits_10, logits_11], 1)])  # (2B, 2N)
    return F.cross_entropy(logits, labels.repeat(2))


def clip_loss(image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy over the image-text similarity matrix.

    image_embeddings, text_embeddings: (B, E), L2-normalised; row i of each is a pair.
    logit_scale: scalar, the inverse temperature (already exponentiated).
    Returns the scalar loss.

    Under DDP every process scores its own B images against the texts of all processes
    (and its texts against all images), so each row has world_size * B - 1 negatives; the
    right column of local row i is rank * B + i. The gather keeps gradients, so the
    result equals one process holding the whole global batch.
    """
    all_images, all_texts = _gather(image_embeddings), _gather(text_embeddings)  # (world * B, E)
    logits_per_image = logit_scale * image_embeddings @ all_texts.T  # (B, world * B)
    logits_per_text = logit_scale * text_embeddings @ all_images.T  # (B, world * B)
    batch = image_embeddings.shape[0]
    labels = torch.arange(batch, device=image_embeddings.device) + dist.rank() * batch
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


_negative_cosine = NegativeCosineSimilarity()  # mean over the batch of -cos(p, t)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's loss for one direction: the mean squared error of the L2-normalised vectors,
    ``||p/|p| - t/|t|||^2 = 2 - 2 cos(p, t)``, averaged over the batch (Grill et al. 2020, eq. 2).

    prediction: (B, P), the online network's prediction of one view.
    target: (B, P), the target network's projection of the other view (no gradient).
    Returns the scalar loss, in [0, 4].

    NOTE: the method sums both directions, as the paper and its code do. Taking -cos, or
    averaging the two directions, gives the same minimum but a smaller gradient (4x smaller
    for 0.5 * (-cos - cos)), which changes the step size under SGD and the balance of
    weight decay under LARS.
    """
    return 2 + 2 * _negative_cosine(prediction, target)


def dino_loss(teacher_probs: Tensor, student_out: Tensor, student_temp: float) -> Tensor:
    """DINO's loss (Caron et al. 2021, eq. 3 and Algorithm 1): the cross-entropy from the
    teacher's distribution over K prototypes for each global view to the student's for
    every other view, averaged over the pairs and the batch.

    teacher_probs: (T, B, K) the teacher's targets for the T global views (no gradient),
    centred and sharpened (``centred_teacher``, the paper's) or balanced over the batch
    (``sinkhorn_teacher``, DINOv2's).
    student_out: (V, B, K) the student's outputs for all V views, the T global ones first
    (in the teacher's order), then the local ones.
    student_temp: the student's softmax temperature.
    Returns the scalar loss, the mean over the T * V - T pairs of different views.

    NOTE: a view is never its own target: the pair (global view t, the student's view t) is
    left out, as in the paper's code (``if v == iq: continue``) and lightly. Under DDP each
    process averages over its own batch, and DDP's gradient averaging makes that the global
    batch's mean: the loss needs no gather.
    """
    teacher_views, batch = teacher_probs.shape[:2]
    student = F.log_softmax(student_out / student_temp, dim=-1)  # (V, B, K)
    cross = -torch.einsum("tbk,vbk->tv", teacher_probs, student) / batch  # (T, V): mean over the batch
    itself = torch.eye(teacher_views, student_out.shape[0], dtype=torch.bool, device=cross.device)  # (T, V)
    return cross.masked_fill(itself, 0.0).sum() / (cross.numel() - teacher_views)


def centred_teacher(teacher_out: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """DINO's teacher targets: (T, B, K) outputs -> (T, B, K) distributions,
    softmax((out - center) / teacher_temp) over the K prototypes.

    center: (K,), or any shape that broadcasts to (T, B, K): an EMA of the teacher's mean
    output (lightly's ``Center`` keeps it). Centring keeps one prototype from winning every
    image; the low temperature (sharpening) keeps the distributions from going flat.
    """
    return F.softmax((teacher_out - center) / teacher_temp, dim=-1)


def sinkhorn_teacher(teacher_out: Tensor, teacher_temp: float, iterations: int = 3) -> Tensor:
    """DINOv2's teacher targets (Oquab et al. 2023): (T, B, K) outputs -> (T, B, K)
    distributions from ``iterations`` Sinkhorn-Knopp steps on exp(out / teacher_temp) over the
    T * B rows of the global batch (all processes'), which give every prototype an equal
    share of the batch and every row a distribution.

    Balanced within the batch itself, the targets can neither collapse to one prototype nor
    go flat, with no state to lag behind (the EMA centre's failure in short, small-batch runs).
    Uses lightly's SwAV ``sinkhorn``, which sums over processes. Like DINOv2's, it assumes
    logits in a weight-normalised last layer's range (cosines, |out| <= 1): logits hundreds of
    temperatures apart underflow to an all-zero image and give NaN.
    """
    views, batch, prototypes = teacher_out.shape
    logits = teacher_out.detach().flatten(0, 1).float()  # (T * B, K)
    # NOTE: each prototype's logits are shifted by its largest over the global batch first, so
    # exp() can neither overflow nor leave a prototype all zeros. Exact: Sinkhorn-Knopp's first
    # step divides each prototype by its sum, which cancels any factor of its own (a shift
    # taken per process would not cancel).
    shift = logits.max(dim=0).values  # (K,)
    if dist.world_size() > 1:
        torch.distributed.all_reduce(shift, op=torch.distributed.ReduceOp.MAX)
    targets = sinkhorn(logits - shift, iterations=iterations, epsilon=teacher_temp, gather_distributed=True)
    return targets.view(views, batch, prototypes)

