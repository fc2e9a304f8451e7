"""Losses that lightly does not provide, as pure, shape-documented functions.

SimCLR's NT-Xent and BYOL's negative cosine similarity come from lightly
(``lightly.loss.NTXentLoss``, ``lightly.loss.NegativeCosineSimilarity``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor


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
    if dist.world_size() > 1:
        all_images = torch.cat(dist.gather(image_embeddings))  # (world * B, E)
        all_texts = torch.cat(dist.gather(text_embeddings))  # (world * B, E)
    else:
        all_images, all_texts = image_embeddings, text_embeddings
    logits_per_image = logit_scale * image_embeddings @ all_texts.T  # (B, world * B)
    logits_per_text = logit_scale * text_embeddings @ all_images.T  # (B, world * B)
    batch = image_embeddings.shape[0]
    labels = torch.arange(batch, device=image_embeddings.device) + dist.rank() * batch
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
