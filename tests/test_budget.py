"""The BudgetKeeper holds a run's training time to its budget, whatever the first guess."""

import time

import pytest
import pytorch_lightning as pl
from conftest import tiny_recipe

from ssl_zoo.training.budget import BudgetKeeper
from ssl_zoo.training.train import fit


class SlowSteps(pl.Callback):
    """Steps of a known, steady length: the test measures the keeper, not the machine. On a
    loaded machine (pytest-xdist's other worker) a step can still take several times that:
    the longest is kept, as the keeper can only stop between steps."""

    def __init__(self) -> None:
        self.longest, self._start = 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        time.sleep(0.05)
        self.longest = max(self.longest, time.perf_counter() - self._start)


class Schedules(pl.Callback):
    """The learning rate and the schedules' length at each step, and the validations."""

    def __init__(self) -> None:
        self.lengths, self.rates, self.validations = [], [], 0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validations += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.lengths.append(pl_module.total_steps())
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("first_guess", [8, 400])  # far too few steps, far too many
def test_the_keeper_ends_training_at_the_budget_and_sizes_the_schedules_to_it(tmp_path, first_guess):
    budget = 3.0
    recipe = tiny_recipe("byol", tmp_path, **{
        "backbone": "convnet4", "data.num_images": 96, "data.batch_size": 8, "trainer.max_epochs": -1,
        "trainer.max_steps": first_guess, "trainer.val_every_n_steps": max(first_guess // 4, 1), "optim.warmup_epochs": 0,
    })
    keeper, schedules, steps = BudgetKeeper(budget, validations=4), Schedules(), SlowSteps()
    summary = fit(recipe, enable_progress_bar=False, callbacks=[steps, schedules, keeper])
    # Within 5 % of the budget, give or take the one step that was running when it ran out.
    assert abs(summary.train_seconds - budget) <= 0.05 * budget + steps.longest
    assert keeper.refits >= 5 and summary.steps == schedules.lengths[-1]  # the run ended where its schedules did
    # The monitor keeps to about 4 scores along the run, not 4 along the first guess's length.
    assert 3 <= schedules.validations <= 6
    # BYOL's momentum and the learning rate follow the refitted length: the cosine reaches
    # its end value at the run's last step, not at the first guess's.
    # (A refit may also lengthen the run a little when the machine speeds up, which moves
    # the cosine back a little: the rate is not checked to fall at every step.)
    lr = schedules.rates
    assert lr[-1] < 0.05 * max(lr)


def test_a_run_cut_below_its_warm_up_warms_up_throughout(tmp_path):
    """A first guess of 400 steps with a 300-step warm-up, on a budget that holds far fewer:
    the keeper shortens the warm-up with the run (lightly's scheduler refuses a longer one)."""
    recipe = tiny_recipe("byol", tmp_path, **{
        "backbone": "convnet4", "data.num_images": 96, "data.batch_size": 8, "trainer.max_epochs": -1,
        "trainer.max_steps": 400, "optim.warmup_epochs": 25,  # 12 steps an epoch
    })

    class Warmup(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            self.steps, self.total = scheduler.warmup_epochs, scheduler.max_epochs

    warmup = Warmup()
    summary = fit(recipe, enable_progress_bar=False, callbacks=[SlowSteps(), warmup, BudgetKeeper(3.0, validations=0)])
    assert summary.steps < 300 and warmup.total == summary.steps and warmup.steps == summary.steps
