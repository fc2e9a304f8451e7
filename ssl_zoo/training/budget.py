"""A wall-clock budget of training, held: ``bench --budget T`` gives every run T seconds of
training steps, monitors apart.

    measure the recipe's speed for a few seconds -> a provisional step count
      -> its first seed trains with a BudgetKeeper, which refits the step count to the
         speed seen so far, every 5 % of T, so that training ends at T
      -> every later seed trains the steps the first one ended with

A step count alone does not hold a budget on a shared CPU: its speed wanders by 10-25 % over
tens of seconds, so any few seconds of measurement mispredict a minute and a half of steps.
Steps, not a timer, end a run, so that its learning-rate and momentum schedules run to
their end and every seed of a recipe trains the same steps.
"""

from __future__ import annotations

import re

import pytorch_lightning as pl

from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.errors import RecipeError
from ssl_zoo.methods import build_method
from ssl_zoo.training.monitor import StepTimer, ThroughputMeter
from ssl_zoo.recipe import Recipe


def parse_budget(text: str) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise RecipeError(f"Budget '{text}' is not a duration; write e.g. 90s, 10m or 1h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def measurement_seconds(budget_seconds: float) -> float:
    """How long a recipe's speed is measured: 2 % of the budget, within 1 s and 30 s. It
    is a first guess, off by 10-20 % on a busy CPU: the BudgetKeeper holds the run to its time."""
    return min(max(0.02 * budget_seconds, 1.0), 30.0)


def measure_steps_per_second(recipe: Recipe, datamodule: ImageDataModule, seconds: float, warmup: int = 3,
                             min_steps: int = 8) -> float:
    """Training steps per second of ``recipe`` as ``fit`` runs it, monitors excluded: timed
    over ``seconds`` (and at least ``min_steps`` steps) after ``warmup`` steps."""
    pl.seed_everything(recipe.trainer.seed, verbose=False)
    model = build_method(recipe, num_classes=datamodule.num_classes)
    timer = StepTimer(skip=warmup, stop_after=(min_steps, seconds))
    cfg = recipe.trainer
    trainer = pl.Trainer(
        # The timer stops it; a bound far off keeps the schedules (sized by max_steps) sane meanwhile.
        max_steps=1_000_000, accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[timer], use_distributed_sampler=False,  # the sampler splits batches itself
    )
    trainer.fit(model, datamodule=datamodule)
    if not timer.seconds:
        raise RecipeError(
            f"bench: could not time recipe '{recipe.name}': its training split holds fewer than "
            f"{warmup + min_steps} batches of {recipe.data.batch_size}. Lower --data.batch_size or use --epochs."
        )
    return timer.steps / timer.seconds


class BudgetKeeper(pl.Callback):
    """Ends a run after ``seconds`` of training (``fit``'s ThroughputMeter's clock: steps,
    validation and monitors apart) by refitting its step count to its speed so far: every
    ``every`` of the budget, and whenever the run would otherwise end early. The run must
    be step-bounded (``max_epochs: -1``, ``max_steps`` a first guess).

    NOTE: the cosine schedules are sized by the step count, so each refit stretches or
    shrinks the rest of them: the learning rate (lightly's CosineWarmupScheduler reads its
    ``max_epochs`` at every step) and BYOL's momentum (``total_steps()`` reads the
    trainer's). A refit late in the run moves them little: the average speed over most of
    the run changes little, and near its end a cosine is flat.
    """

    def __init__(self, seconds: float, every: float = 0.05, validations: int | None = None) -> None:
        self.seconds = seconds
        self.every = every
        # With a count, validation (the kNN monitor) is spaced to that many along the refitted
        # run, as it was along the first guess: a guess 3x too short would monitor 3x as often.
        self.validations = validations
        self.refits = 0
        self._next_refit = every  # as a fraction of the budget
        self._steps: int | None = None  # the step count of the last refit
        self._meter: ThroughputMeter | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        elapsed, step = self._meter.elapsed, trainer.global_step
        ending = step + 1 >= trainer.max_steps and elapsed < (1 - self.every) * self.seconds
        if elapsed < self._next_refit * self.seconds and not ending:
            return
        while self._next_refit * self.seconds <= elapsed:
            self._next_refit += self.every
        steps = max(round(self.seconds * step / elapsed), step)  # step itself: the run ends now
        trainer.fit_loop.epoch_loop.max_steps = self._steps = steps
        if self.validations and trainer.check_val_every_n_epoch is None:  # validation every N steps
            trainer.val_check_interval = trainer.val_check_batch = max(steps // self.validations, 1)
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "max_epochs"):  # lightly's cosine schedulers: their length in steps
                config.scheduler.max_epochs = steps
        self.refits += 1

    # A run resumed from a checkpoint (bench --resume) goes on with the step count it had
    # (its recipe holds the first guess) and refits from where it was.
    def state_dict(self) -> dict:
        return {"next_refit": self._next_refit, "refits": self.refits, "steps": self._steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self._next_refit, self.refits, self._steps = state_dict["next_refit"], state_dict["refits"], state_dict["steps"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._meter = next(c for c in trainer.callbacks if isinstance(c, ThroughputMeter))  # fit's training clock
        if self._steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = self._steps
            if self.validations and trainer.check_val_every_n_epoch is None:
                trainer.val_check_interval = trainer.val_check_batch = max(self._steps // self.validations, 1)
