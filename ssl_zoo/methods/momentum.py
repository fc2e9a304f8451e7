"""What every momentum method (BYOL, DINO, MoCo, ...) shares: frozen copies of networks that
follow the trained ones as exponential moving averages (EMA), their momentum rising to 1 on
a cosine schedule.

A momentum method is a ``MomentumMethod`` whose recipe section has a ``base_momentum``, and
that declares its (online, target) pairs; the base does the rest::

    class MyMethod(MomentumMethod, name="my_method", config=MyConfig):  # MyConfig.base_momentum
        def __init__(self, recipe, num_classes=0):
            super().__init__(recipe, num_classes)
            self.projection_head = ...
            self.target_backbone = frozen_copy(self.backbone)
            self.target_projection_head = frozen_copy(self.projection_head)

        def ema_pairs(self):
            return [(self.backbone, self.target_backbone), (self.projection_head, self.target_projection_head)]

The base starts each target as a copy of its online module when training starts (so also
from a recipe's ``init_weights``), updates it before every training step, and logs the
momentum. Targets are submodules, so checkpoints carry them and a resumed run goes on with
them; ``export`` writes the online backbone alone.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssl_zoo.methods.base import SSLMethod


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


class MomentumMethod(SSLMethod):
    """A method with EMA targets: it declares them in ``ema_pairs``, and its recipe section's
    ``base_momentum`` starts the schedule. A subclass that overrides ``on_train_start``,
    ``on_train_batch_start`` or ``on_train_batch_end`` calls ``super()``'s."""

    def __init_subclass__(cls, name: str | None = None, config: type | None = None, **kwargs: Any) -> None:
        # Checked before the base registers the method, so that a refused one is not registered.
        if name is not None and cls.ema_pairs is SSLMethod.ema_pairs:
            raise TypeError(f"{cls.__name__}: a momentum method declares its (online, target) pairs (ema_pairs).")
        if name is not None and config is not None and "base_momentum" not in {f.name for f in dataclasses.fields(config)}:
            raise TypeError(f"{cls.__name__}: its recipe section ({config.__name__}) needs a base_momentum, "
                            "where the EMA momentum starts.")
        super().__init_subclass__(name=name, config=config, **kwargs)

    def momentum(self) -> float:
        """EMA momentum at this step: base_momentum raised to 1 on a cosine schedule over the run."""
        return cosine_schedule(self.global_step, self.total_steps(), self.config.base_momentum, 1.0)

    @torch.no_grad()
    def on_train_start(self) -> None:
        # The targets start as copies of the online modules: of the backbone a recipe's
        # init_weights loaded too (after the targets were made). A resumed run (its step
        # counter restored by now) goes on with the targets its checkpoint holds.
        if self.global_step == 0:
            for online, target in self.ema_pairs():
                target.load_state_dict(online.state_dict())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Before the step's forward pass, as BYOL's code does: the targets follow the online
        # modules as the last optimiser step left them.
        momentum = self.momentum()
        for online, target in self.ema_pairs():
            ema_update(online, target, momentum)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The momentum is a schedule, not a measurement: it goes to the logger at the log
        # interval, as the learning rate does (self.log of a Python number would copy it
        # to the GPU, a host sync, at every step).
        if self.loggers and self.global_step % self.trainer.log_every_n_steps == 0:
            for logger in self.loggers:  # every logger, not only the first (self.logger)
                logger.log_metrics({"train/momentum": self.momentum()}, step=self.global_step)
