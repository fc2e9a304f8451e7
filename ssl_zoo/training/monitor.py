"""Callbacks that watch a run: kNN accuracy of the features, grids of the views, speed."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from kornia.enhance import denormalize
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import Tensor
from torchvision.utils import make_grid

from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.data.imageset import ImageSet
from ssl_zoo.eval.features import image_features
from ssl_zoo.eval.knn import knn_top1
from ssl_zoo.training.loggers import log_image


class KNNMonitor(pl.Callback):
    """kNN top-1 of the backbone's features on the validation split, against a memory
    bank of training images (k=200, T=0.1, cosine-weighted votes).

    Runs once before training (the random-init baseline, logged as
    ``knn/top1_random_init``; with ``init_weights`` it scores those weights, under the same
    tag) and after every validation epoch (``knn/top1``). Data without a labelled
    validation split and bank has nothing to score: the monitor stays idle, and says why in
    one line when training starts.

    Under several processes, rank 0 alone measures, on the whole bank and validation set,
    while the others wait at a barrier. The sets are small and bounded (data.knn_bank_size,
    data.val_size), so this costs seconds; sharding would save some of them, but every
    process would then decode the sets and the votes would need every process's bank
    features gathered. Its numbers are those of one process with the same weights.
    """

    def __init__(self, datamodule: ImageDataModule, k: int = 200, temperature: float = 0.1) -> None:
        self.datamodule = datamodule
        self.k = k
        self.temperature = temperature
        self.random_init_top1: float | None = None
        self.last_top1: float | None = None
        self.seconds = 0.0  # spent measuring (and waiting at its barrier), over the whole run

    # Kept in checkpoints: a resumed run neither scores its checkpoint as the random init
    # again nor forgets the time its first part spent here.
    def state_dict(self) -> dict:
        return {"random_init_top1": self.random_init_top1, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.random_init_top1, self.seconds = state_dict["random_init_top1"], state_dict["seconds"]

    def measure(self, pl_module: "pl.LightningModule") -> float:
        dm, device = self.datamodule, pl_module.device

        def features(images: ImageSet) -> Tensor:  # (N, D), normalised by the kNN
            return image_features(pl_module.backbone, pl_module.eval_transform, images.images, device, dm.config.batch_size)

        bank, query = dm.bank_set, dm.val_set
        return knn_top1(
            features(bank), bank.labels.to(device), features(query), query.labels.to(device),
            num_classes=dm.num_classes, k=self.k, temperature=self.temperature,
        )

    def _measure_on_rank_zero(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """The kNN top-1 on rank 0 (None elsewhere, and where there is nothing to score)."""
        started = time.perf_counter()
        top1 = self.measure(pl_module) if trainer.is_global_zero and self.datamodule.bank_set is not None else None
        # NOTE: the barrier has the process group's timeout (Lightning's default: 30 min).
        trainer.strategy.barrier("knn_monitor")
        self.seconds += time.perf_counter() - started
        return top1

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        why = self.datamodule.unmonitored
        if why is not None and trainer.is_global_zero:
            print(f"ssl_zoo: kNN monitor skipped: {why}. Linear and kNN evaluation need a labelled dataset: "
                  "python -m ssl_zoo eval --ckpt CKPT --data NAME --root DIR.", flush=True)
        # On resuming, the score restored from the checkpoint is kept (the loops' step count
        # is restored only after this hook, so it reads 0 here either way).
        if self.random_init_top1 is None and trainer.global_step == 0:
            self.random_init_top1 = self._measure_on_rank_zero(trainer, pl_module)
            if self.random_init_top1 is not None:
                for logger in trainer.loggers:
                    logger.log_metrics({"knn/top1_random_init": self.random_init_top1}, step=0)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        top1 = self._measure_on_rank_zero(trainer, pl_module)
        if top1 is not None:
            self.last_top1 = top1
            pl_module.log("knn/top1", top1, prog_bar=True, rank_zero_only=True)


class ViewGridLogger(pl.Callback):
    """Logs the views of the first training batch of every epoch to every logger, each
    through its own image API (``ssl_zoo.training.loggers.log_image``)."""

    def __init__(self, num_images: int = 16) -> None:
        self.num_images = num_images

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx != 0 or not trainer.loggers or not trainer.is_global_zero:
            return
        by_size = batch.get("views_by_size", [batch["views"]])  # [(V_s, B, 3, S_s, S_s) per size]
        largest = max(views.shape[-1] for views in by_size)
        # Smaller views (multi-crop's local ones) are shown enlarged to the largest size,
        # pixel for pixel (nearest), so that every view fits one grid.
        views = torch.cat([
            F.interpolate(v[:, : self.num_images].float().flatten(0, 1), size=largest, mode="nearest")
            for v in by_size
        ])  # (V * n, 3, S, S)
        augment = pl_module.recipe.augment
        mean, std = torch.tensor(augment.mean, device=views.device), torch.tensor(augment.std, device=views.device)
        images = denormalize(views, mean, std).clamp(0, 1)
        # One row per view, one column per image: a column shows what the method pairs.
        grid = make_grid(images, nrow=min(self.num_images, by_size[0].shape[1]), padding=1)
        for logger in trainer.loggers:
            log_image(logger, "views", grid, trainer.global_step)


class StepTimer(pl.Callback):
    """Seconds of training steps ``skip + 1 ..``: the steps after a few warm-up steps
    (compilation, caches, allocator), timed as the trainer runs them, up to the trainer's
    ``max_steps`` or, with ``stop_after=(steps, seconds)``, until at least that many steps
    and seconds have been timed (the timer then stops the trainer)."""

    def __init__(self, skip: int, stop_after: tuple[int, float] | None = None) -> None:
        self.skip = skip
        self.stop_after = stop_after
        self.started: float | None = None
        self.steps = 0
        self.seconds = 0.0

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # The device is synchronised only where the clock is read: at the start and the end
        # (with stop_after, at every step: the few seconds a measurement lasts).
        if trainer.global_step == self.skip:
            self.started = self._now(pl_module)
        elif self.started is not None and self.stop_after is not None:
            self.steps, self.seconds = trainer.global_step - self.skip, self._now(pl_module) - self.started
            trainer.should_stop = self.steps >= self.stop_after[0] and self.seconds >= self.stop_after[1]
        elif self.started is not None and trainer.global_step == trainer.max_steps:
            self.steps = trainer.global_step - self.skip
            self.seconds = self._now(pl_module) - self.started

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


class SparseProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss every ``metrics_every`` steps.

    Reading a logged tensor on the host waits for the GPU to finish the queued work; done
    every step it serialises the host and the GPU. So the methods log their loss without
    ``prog_bar=True`` (Lightning would convert it to a number at every step) and this bar
    reads it at its own interval; moving the step count costs nothing.
    """

    def __init__(self, metrics_every: int) -> None:
        super().__init__()
        self.metrics_every = max(metrics_every, 1)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if "train/loss" in trainer.callback_metrics:
            metrics["train/loss"] = f"{float(trainer.callback_metrics['train/loss']):.3f}"
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or bar.disable:
            return
        bar.update(n - bar.n)  # redraws at most every tqdm.mininterval (0.1 s)
        if n % self.metrics_every == 0:
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class ThroughputMeter(pl.Callback):
    """Seconds of training and training images per second over the run, validation and
    monitors excluded. Both counts are kept in checkpoints, so that a resumed run reports
    the whole run's, not its last part's."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.images = 0
        self._started: float | None = None

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._started is not None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.train_seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        # Validation inside fit (mid-epoch or at an epoch's end) hands back to training;
        # trainer.training is still False in this hook, so ask what the trainer is doing.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += batch["views"].shape[1] * trainer.world_size

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, the part under way included (the host's clock: on a
        GPU, the steps queued but not yet run are not in it)."""
        return self.train_seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds else 0.0

    def state_dict(self) -> dict:
        # A checkpoint written mid-epoch holds the seconds of the part under way too.
        return {"train_seconds": self.elapsed, "images": self.images}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds, self.images = state_dict["train_seconds"], state_dict["images"]
