"""The small base every method shares: backbone, views, optimiser, online probe.

A method is one file: its recipe section (a dataclass), and a subclass of ``SSLMethod``
that names itself and that section, which registers it::

    @dataclass
    class MyConfig:
        temperature: float = 0.1

    class MyMethod(SSLMethod, name="my_method", config=MyConfig):
        def __init__(self, recipe, num_classes=0): ...        # heads; self.config is a MyConfig
        def training_step(self, batch, batch_idx): ...        # batch["views"]: (V, B, 3, S, S)

A method with views of several sizes (multi-crop) sets ``num_views = None`` and reads
``batch["views_by_size"]``: one (V_s, B, 3, S_s, S_s) tensor per size, as its recipe's
``augment.views`` lists them (``ssl_zoo.augment``).

Recipes then say ``method: my_method`` and ``my_method: {temperature: 0.2}``. Everything
else a run needs (kNN monitor, view grids, checkpoints) lives in callbacks, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.benchmarking import OnlineLinearClassifier
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import Tensor, nn

from ssl_zoo.augment import EvalTransform, ViewAugment
from ssl_zoo.backbones import build_image_backbone
from ssl_zoo.eval.probe import DEFAULT_PROBE, ProbeSettings
from ssl_zoo.lars import LARS
from ssl_zoo.recipe import RECIPE_KEYS, Recipe, effective_lr, recipe_from_dict, recipe_to_dict
from ssl_zoo.registry import METHODS


def labelled_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Cross-entropy and top-1 accuracy over the labelled rows of a batch.

    logits: (B, C); labels: (B,), -1 for an unlabelled image (STL-10's unlabelled part),
    which adds nothing to either. A batch with no labelled row gives 0, not NaN. Masked
    rather than indexed, so that the host never waits for the device to count them.
    """
    labelled = labels >= 0  # (B,)
    count = labelled.sum().clamp_min(1)
    loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum", label_smoothing=label_smoothing) / count
    # NOTE: by hand, not torchmetrics: its multiclass_accuracy drops ignore_index rows with
    # a boolean mask (preds[target != -1]), a host sync at every step (tests/test_host_sync.py).
    top1 = ((logits.argmax(dim=1) == labels) & labelled).sum() / count
    return loss, top1


class SSLMethod(pl.LightningModule):
    # What the rest of ssl_zoo asks a method, rather than its name:
    method_name: ClassVar[str]  # the recipe's `method:`
    Config: ClassVar[type]  # the dataclass of its recipe section (`<method_name>:`)
    # Views the augmentation makes of every image; None: as many as the recipe's augment.views
    # lists (multi-crop methods, which read batch["views_by_size"]).
    num_views: ClassVar[int | None] = 2
    # Trains on captions: the data module hands it tokens (``caption_tokenizer``), and it has
    # a text tower (``encode_text``, ``embed_image_features``) for zero-shot and retrieval.
    uses_text: ClassVar[bool] = False
    # Keeps momentum (EMA) targets beside the trained networks: derived, true of a class that
    # declares its ``ema_pairs`` (a ``ssl_zoo.methods.momentum.MomentumMethod``, which keeps
    # them); checkpoints carry the targets, exports leave them out.
    has_ema_target: ClassVar[bool] = False
    global_batchnorm: ClassVar[bool] = False  # the paper normalises over the global batch (sync BN under DDP)
    # The paper's linear-evaluation protocol (``ssl_zoo.eval.probe.linear_probe``, eval
    # --protocol probe); methods without one use lightly's ImageNet benchmark settings.
    linear_probe: ClassVar[ProbeSettings] = DEFAULT_PROBE

    def __init_subclass__(cls, name: str | None = None, config: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.has_ema_target = cls.ema_pairs is not SSLMethod.ema_pairs
        if name is not None:  # a method, not an intermediate base class
            if config is None:
                raise TypeError(f"{cls.__name__}: a method names its recipe section's dataclass (config=...).")
            if name in RECIPE_KEYS:  # its section would shadow a recipe key
                raise TypeError(f"{cls.__name__}: '{name}' is a recipe key ({', '.join(RECIPE_KEYS)}); name the method otherwise.")
            cls.method_name, cls.Config = name, config
            METHODS.register(name, cls)

    def __init__(self, recipe: Recipe | dict[str, Any], num_classes: int = 0) -> None:
        super().__init__()
        recipe = recipe if isinstance(recipe, Recipe) else recipe_from_dict(recipe)
        # The resolved recipe travels in every checkpoint (and hparams.yaml).
        self.save_hyperparameters({"recipe": recipe_to_dict(recipe), "num_classes": num_classes})
        self.recipe = recipe
        self.config = recipe.method_config  # this method's section of the recipe
        backbone = build_image_backbone(recipe.backbone, recipe.augment.size)
        # NOTE: channels-last (NHWC) weights make convolutions pick their NHWC kernels, which
        # oneDNN on CPUs and tensor cores on GPUs run faster (the CPU ConvNet: ~25 % on 2 cores).
        self.backbone = backbone.network.to(memory_format=torch.channels_last)
        self.feature_dim = backbone.feature_dim
        self.backbone_projects = backbone.projects  # its output is already an embedding (CLIP's RN)
        self.augment = ViewAugment(recipe.augment, self.num_views, seed=recipe.trainer.seed)
        self.eval_transform = EvalTransform(recipe.augment.size, recipe.augment.mean, recipe.augment.std)
        # A linear classifier on detached features, trained alongside: a cheap, live
        # measure of how linearly separable the features are (None without labels).
        self.online_probe = OnlineLinearClassifier(self.feature_dim, num_classes, topk=(1,)) if num_classes else None

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features: (B, 3, S, S) normalised images -> (B, feature_dim)."""
        return self.backbone(images)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules of a momentum method (``MomentumMethod`` keeps them):
        each target follows its online module as an EMA, and starts as its copy (also when
        the backbone starts from ``init_weights``). Empty for methods without a target."""
        return []

    # The text interface, for methods with ``uses_text`` (CLIP): the data module tokenizes
    # training captions with ``caption_tokenizer``; the evaluation stage's zero-shot
    # classification and retrieval use ``tokenize``, ``encode_text`` and ``embed_image_features``.
    @classmethod
    def caption_tokenizer(cls, config: Any) -> Callable[[list[str]], Tensor]:
        """Strings -> (n, L) token ids for ``encode_text``, given the method's recipe section
        (``config``: its ``Config``). It runs in the loader's worker processes too, so it
        must pickle (a module-level function or a partial of one)."""
        raise NotImplementedError(f"{cls.__name__} has no text tower (uses_text is False).")

    def tokenize(self, texts: list[str]) -> Tensor:
        """Strings -> (n, L) token ids, as the training captions were tokenized."""
        return self.caption_tokenizer(self.config)(texts)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """(n, L) token ids -> (n, E) unit vectors in the joint image-text space."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower (uses_text is False).")

    def embed_image_features(self, features: Tensor) -> Tensor:
        """(n, feature_dim) backbone features -> (n, E) unit vectors in the joint space."""
        raise NotImplementedError(f"{type(self).__name__} has no joint image-text space (uses_text is False).")

    def encode_image(self, images: Tensor) -> Tensor:
        """(n, 3, S, S) normalised images -> (n, E) unit vectors in the joint space."""
        return self.embed_image_features(self.backbone(images))

    def export_text(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """What ``export`` writes beside the backbone: {file name: tensors by name} and
        config.json's "text" section (with a "how_to_load" list of Python lines)."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower (uses_text is False).")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # The data path's last step, on the device: uint8 images -> float views.
        if self._trainer is not None and self.trainer.training:
            views = self.augment.views_by_size(batch.pop("image"))  # [(V_s, B, 3, S_s, S_s) per size]
            batch["views_by_size"] = views
            batch["views"] = views[0]  # (V, B, 3, S, S): every view, for single-size layouts
        else:
            batch["image"] = self.eval_transform(batch["image"])  # (B, 3, S, S)
        return batch

    # Every process draws its own views. Only rank 0's module state is saved, so the other
    # ranks' generator states travel beside it, and each rank gets its own back on resume.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            states = self.augment.get_extra_state()  # {device: uint8 state}
            checkpoint["augment_states_per_rank"] = {
                key: self.all_gather(state.to(self.device)).cpu() for key, state in states.items()  # (W, n)
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        per_rank = checkpoint.get("augment_states_per_rank")
        if not per_rank or self._trainer is None:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if world == next(iter(per_rank.values())).shape[0]:
            checkpoint["state_dict"]["augment._extra_state"] = {key: states[rank] for key, states in per_rank.items()}
        else:  # another number of processes: fresh streams, distinct per rank (from the seed)
            checkpoint["state_dict"]["augment._extra_state"] = {}

    def probe_step(self, features: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Train the online probe on detached features; returns its loss (0 without one)."""
        if self.online_probe is None or "label" not in batch:
            return features.new_zeros(())
        logits = self.online_probe(features.detach())  # (B, C)
        loss, top1 = labelled_cross_entropy(logits, batch["label"])
        self.log_dict({"probe/train_loss": loss, "probe/train_top1": top1})
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.online_probe is None:
            return
        features = self(batch["image"])
        _, log = self.online_probe.validation_step((features, batch["label"]), batch_idx)
        self.log("probe/val_top1", log["val_online_cls_top1"], prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        optim = self.recipe.optim
        ssl_modules = [m for name, m in self.named_children() if name != "online_probe"]
        decay, no_decay = get_weight_decay_parameters(ssl_modules)
        # Parameters held by the method itself, not by a submodule (CLIP's logit_scale), are
        # trained without weight decay, as open_clip does.
        no_decay = [*no_decay, *self.parameters(recurse=False)]
        groups = [
            {"name": "ssl", "params": [p for p in decay if p.requires_grad]},
            {"name": "ssl_no_weight_decay", "params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
        ]
        if self.online_probe is not None:
            groups.append(
                {"name": "online_probe", "params": list(self.online_probe.parameters()), "weight_decay": 0.0, "lr": optim.probe_lr}
            )
        lr = effective_lr(optim, self._global_batch())
        if optim.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        elif optim.optimizer == "lars":
            optimizer = LARS(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                             trust_coefficient=optim.lars_eta, clip_lr=optim.lars_clip_lr)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=optim.weight_decay)
        total_steps = self.total_steps()
        # A run shorter than its warm-up (a quick override of max_epochs) warms up throughout.
        warmup_steps = min(int(optim.warmup_epochs * self._steps_per_epoch()), total_steps)
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup_steps, max_epochs=total_steps)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def _global_batch(self) -> int:
        """The per-process batch x processes: the global batch the learning rate is scaled to."""
        return self.recipe.data.batch_size * (self.trainer.world_size if self._trainer is not None else 1)

    def _steps_per_epoch(self) -> float:
        if self._trainer is None:
            return 1.0
        if not math.isfinite(self.trainer.num_training_batches):
            self.trainer.fit_loop.setup_data()  # sizes the training loader (as estimated_stepping_batches does)
        batches = self.trainer.num_training_batches
        return max(batches / self.trainer.accumulate_grad_batches, 1.0) if math.isfinite(batches) else 1.0

    def total_steps(self) -> int:
        """Optimiser steps of the whole run (the schedules' length)."""
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return max(int(steps), 1) if math.isfinite(steps) else 1
