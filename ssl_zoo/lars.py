"""LARS: SGD with a layer-wise trust ratio, without host syncs.

NOTE: this exists because lightly's ``lightly.utils.lars.LARS`` decides per parameter with
``if p_norm != 0 and g_norm != 0`` on device tensors: two host syncs per weight-decayed
parameter per step (44 a step for SimCLR on a ResNet-18), each making the host wait until
the GPU has drained its queue. Here the same decision is a ``torch.where`` on the device,
and the arithmetic runs as foreach ops over a group's parameters. ``tests/test_lars.py``
holds it equal to lightly's LARS step by step, and to zero host syncs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum whose update, per parameter, is scaled by the trust ratio of
    You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks" (2017,
    https://arxiv.org/abs/1708.03888), Eq. 6, applied as lightly's LARS applies it::

        lars_lr = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps)
        d_p     = lars_lr * (g + weight_decay * p)
        v       = momentum * v + (1 - dampening) * d_p      (v = d_p at the first step)
        p       = p - lr * (d_p + momentum * v if nesterov else v)

    With ``clip_lr`` (NOTE: solo-learn's LARS, after NVIDIA apex's LARC "clip" mode),
    ``lars_lr = min(lars_lr / lr, 1)``: the layer's step is never larger than plain SGD's.

    The other arguments and their meaning are those of ``lightly.utils.lars.LARS``, including
    its exclusions (NOTE: lightly's, from SimCLR and BYOL): a group with ``weight_decay``
    0 (biases and norm layers in ``configure_optimizers``) gets plain SGD, with neither
    the trust ratio nor weight decay; so does a parameter whose weight or gradient is all
    zeros at that step, in any group.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        clip_lr: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, trust_coefficient=trust_coefficient, eps=eps, clip_lr=clip_lr,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Branches on settings and on which parameters have gradients, never on values.
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            weight_decay, momentum = group["weight_decay"], group["momentum"]

            if weight_decay != 0:
                p_norms = torch.stack(torch._foreach_norm(params))  # (P,)
                g_norms = torch.stack(torch._foreach_norm(grads))  # (P,)
                adapt = (p_norms != 0) & (g_norms != 0)  # (P,)
                trust = p_norms / (g_norms + p_norms * weight_decay + group["eps"]) * group["trust_coefficient"]
                if group["clip_lr"]:
                    trust = (trust / group["lr"]).clamp_(max=1.0)
                # Where adapt is False: scale 1 and no decay, d_p = g (lightly skips both).
                scales = torch.where(adapt, trust, 1.0).unbind()  # P x ()
                decays = torch.where(adapt, weight_decay, 0.0).to(p_norms.dtype).unbind()  # P x ()
                d_ps = torch._foreach_add(grads, torch._foreach_mul(params, decays))
                torch._foreach_mul_(d_ps, scales)
            else:
                d_ps = grads

            if momentum != 0:
                states = [self.state[p] for p in params]
                new = [i for i, state in enumerate(states) if "momentum_buffer" not in state]
                old = [i for i, state in enumerate(states) if "momentum_buffer" in state]
                for i in new:
                    states[i]["momentum_buffer"] = d_ps[i].detach().clone()
                if old:
                    buffers = [states[i]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(buffers, momentum)
                    torch._foreach_add_(buffers, [d_ps[i] for i in old], alpha=1 - group["dampening"])
                buffers = [state["momentum_buffer"] for state in states]
                d_ps = torch._foreach_add(d_ps, buffers, alpha=momentum) if group["nesterov"] else buffers

            torch._foreach_add_(params, d_ps, alpha=-group["lr"])
        return loss
