"""DINO (Caron et al. 2021): a student matches a momentum teacher's centred, sharpened
distribution over prototypes, from small local crops as well as the global ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightly.models.modules import DINOProjectionHead
from lightly.models.modules.center import Center
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule, linear_warmup_schedule
from torch import Tensor, nn

from ssl_zoo.errors import RecipeError
from ssl_zoo.losses import centred_teacher, dino_loss, sinkhorn_teacher
from ssl_zoo.methods.momentum import MomentumMethod, frozen_copy
from ssl_zoo.ranges import ranged
from ssl_zoo.recipe import Recipe


def accept_any_size(backbone: nn.Module) -> None:
    """Let a timm ViT take the local crops' size as well as the global crops' it was built
    for, as timm's ``dynamic_img_size=True`` builds it: the position embeddings are
    resampled to each input's grid of patches.

    NOTE: the paper's ViT does the same (vision_transformer.py, interpolate_pos_encoding).
    Convolutional backbones take any size as they are; a ViT that cannot (torchvision's)
    is refused.
    """
    if hasattr(backbone, "dynamic_img_size") and hasattr(backbone, "patch_embed"):  # timm's VisionTransformer
        from timm.layers import Format

        backbone.dynamic_img_size = True
        backbone.patch_embed.strict_img_size = False
        backbone.patch_embed.flatten = False
        backbone.patch_embed.output_fmt = Format.NHWC
    elif any(isinstance(module, nn.MultiheadAttention) for module in backbone.modules()):
        raise RecipeError(
            "dino: the view groups have several sizes (global and local crops), but this transformer backbone "
            "takes images of one size only. Use a timm ViT (backbone: timm:vit_small_patch16_224), a convolutional "
            "backbone, or views of one size."
        )


@dataclass
class DINOConfig:
    """dino: the projection head, the teacher's momentum, centring and temperatures
    (defaults: facebookresearch/dino main_dino.py's, for ViT-S/16 on ImageNet, but the
    weight decay's schedule)."""

    hidden_dim: int = ranged(2048, at_least=1)
    """Width of the head's two hidden layers."""
    bottleneck_dim: int = ranged(256, at_least=1)
    """Size of the L2-normalised bottleneck before the head's last (weight-normalised) layer."""
    output_dim: int = ranged(65536, at_least=1)
    """Prototypes K: the size of the distributions the loss compares."""
    batch_norm: bool = False
    """Batch norm in the head's hidden layers (main_dino.py's use_bn_in_head)."""
    norm_last_layer: bool = True
    """Fix the last layer's weight norm to 1 (more stable; false trains it, as the paper's best ViT-S)."""
    freeze_last_layer: int = ranged(1, at_least=0)
    """Epochs at the start during which the last layer gets no update."""
    base_momentum: float = ranged(0.996, at_least=0, at_most=1)
    """The teacher's EMA momentum at the start, raised to 1 on a cosine schedule over training."""
    student_temp: float = ranged(0.1, above=0)
    """The student's softmax temperature."""
    teacher_temp: float = ranged(0.04, above=0)
    """The teacher's softmax temperature after its warm-up (lower than the student's: sharpening)."""
    warmup_teacher_temp: float = ranged(0.04, above=0)
    """The teacher's temperature at the start, raised linearly to teacher_temp."""
    warmup_teacher_temp_epochs: float = ranged(0, at_least=0)
    """Epochs of the teacher temperature's linear warm-up."""
    centering: Literal["center", "sinkhorn_knopp"] = "center"
    """How the teacher's targets avoid collapse: 'center' subtracts an EMA centre and sharpens (the paper's); 'sinkhorn_knopp' balances them over the batch (DINOv2's; steadier in short runs with small batches)."""
    center_momentum: float = ranged(0.9, at_least=0, at_most=1)
    """EMA momentum of the centre subtracted from the teacher's outputs (centering: center)."""
    # NOTE: main_dino.py raises it from 0.04 to 0.4; the default here keeps optim.weight_decay,
    # which a recipe sets for its optimiser (5e-4 under SGD would otherwise climb to 0.4).
    weight_decay_end: float | None = ranged(None, at_least=0)
    """Weight decay at the end, reached from optim.weight_decay on a cosine (main_dino.py: 0.04 to 0.4); null: optim.weight_decay throughout."""
    clip_grad: float = ranged(3.0, at_least=0)
    """Largest gradient norm of each parameter of the student (0: no clipping)."""


class DINO(MomentumMethod, name="dino", config=DINOConfig):
    # NOTE: the views are the recipe's view groups (``augment.views``): those of the first
    # size are the global crops, which the teacher sees too; every other size is local crops,
    # which only the student sees (the paper: 2 global crops at 224 px, 8 local at 96 px).
    num_views = None

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__(recipe, num_classes)
        cfg: DINOConfig = self.config
        if len(self.augment.sizes) > 1:  # local crops of another size than the global ones
            accept_any_size(self.backbone)
        self.projection_head = self._head()
        # The teacher: an EMA of the student's backbone and head, never trained by gradients.
        self.target_backbone = frozen_copy(self.backbone)
        # NOTE: lightly's head weight-normalises its last layer with torch.nn.utils.weight_norm,
        # whose computed weight deepcopy refuses: the teacher's head is built anew and takes
        # the student's weights.
        self.target_projection_head = self._head()
        self.target_projection_head.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.target_projection_head)
        # The teacher's centre: (1, 1, K), an EMA of its mean output over the global views and
        # the global batch. A buffer, so checkpoints carry it. Sinkhorn-Knopp needs none.
        self.center = Center((1, 1, cfg.output_dim), momentum=cfg.center_momentum) if cfg.centering == "center" else None

    def _head(self) -> DINOProjectionHead:
        """backbone features (N, D) -> (N, K): MLP, L2-normalised bottleneck, weight-normalised last layer."""
        cfg: DINOConfig = self.config
        return DINOProjectionHead(
            self.feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim, batch_norm=cfg.batch_norm,
            freeze_last_layer=cfg.freeze_last_layer, norm_last_layer=cfg.norm_last_layer,
        )

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projection_head, self.target_projection_head)]

    def teacher_temp(self) -> float:
        """The teacher's temperature at this step: a linear warm-up, then constant."""
        cfg: DINOConfig = self.config
        warmup_steps = int(cfg.warmup_teacher_temp_epochs * self._steps_per_epoch())
        return linear_warmup_schedule(self.global_step, warmup_steps, cfg.warmup_teacher_temp, cfg.teacher_temp)

    def teacher_targets(self, teacher_out: Tensor) -> Tensor:
        """The teacher's outputs (T, B, K) -> its target distributions (T, B, K), by the
        recipe's centring; the centre then moves toward this batch's mean output."""
        if self.center is None:
            return sinkhorn_teacher(teacher_out, self.teacher_temp())
        targets = centred_teacher(teacher_out, self.center.value, self.teacher_temp())
        self.center.update(teacher_out)
        return targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        views_by_size = batch["views_by_size"]  # [(2, B, 3, S, S) global, then (N, B, 3, s, s) local]
        num_global, images = views_by_size[0].shape[:2]
        # NOTE: views of one size go through the backbone as one batch, as the paper's
        # MultiCropWrapper forwards them (batch norm sees all views of that size together).
        features = [self.backbone(views.flatten(0, 1)) for views in views_by_size]  # per size: (V_s * B, D)
        student_out = self.projection_head(torch.cat(features)).view(-1, images, self.config.output_dim)  # (V, B, K)
        with torch.no_grad():
            teacher_features = self.target_backbone(views_by_size[0].flatten(0, 1))  # (2 * B, D)
            teacher_out = self.target_projection_head(teacher_features).view(num_global, images, -1)  # (2, B, K)
        loss = dino_loss(self.teacher_targets(teacher_out), student_out, self.config.student_temp)
        self.log("train/loss", loss)
        return loss + self.probe_step(features[0][:images], batch)  # the first global view's features

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # the teacher follows the student
        cfg: DINOConfig = self.config
        if cfg.weight_decay_end is not None:  # the paper's weight decay rises on a cosine
            decay = cosine_schedule(self.global_step, self.total_steps(), self.recipe.optim.weight_decay, cfg.weight_decay_end)
            for group in self.trainer.optimizers[0].param_groups:
                if group["name"] == "ssl":  # the group with weight decay
                    group["weight_decay"] = decay

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After the gradients are unscaled (mixed precision), before the step, as main_dino.py.
        cfg: DINOConfig = self.config
        if cfg.clip_grad > 0:
            # NOTE: the paper's code clips each parameter's gradient to its own norm, not the
            # total norm. Written with foreach kernels and no comparison on the host, so it
            # never waits for the GPU (main_dino.py reads every norm with .item()).
            grads = [p.grad for m in (self.backbone, self.projection_head) for p in m.parameters() if p.grad is not None]
            scales = torch._foreach_add(torch._foreach_norm(grads), 1e-6)
            torch._foreach_reciprocal_(scales)
            torch._foreach_mul_(scales, cfg.clip_grad)
            torch._foreach_clamp_max_(scales, 1.0)  # clip / (norm + 1e-6), at most 1
            torch._foreach_mul_(grads, scales)
        self.projection_head.cancel_last_layer_gradients(self.current_epoch)
