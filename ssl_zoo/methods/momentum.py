"""What every momentum method (BYOL, MoCo, DINO, ...) shares: a frozen copy of a network
that follows the trained one as an exponential moving average (EMA)."""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """The EMA target's starting point: a copy of ``module`` that gradients never train."""
    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for every parameter.

    NOTE: lightly's ``update_momentum`` computes the same one parameter at a time (two
    kernels and a new tensor each: ~180 launches for a ResNet-18 + projector); the foreach
    form updates all of them in a few fused launches, in place.
    """
    targets, onlines = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(targets, onlines, 1.0 - momentum)
