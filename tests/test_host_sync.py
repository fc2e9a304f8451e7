"""The training step never makes the host wait for the device (``ssl_zoo.host_sync``)."""

import pytest
import pytorch_lightning as pl

from ssl_zoo.host_sync import CountBetweenSteps, HostSyncCounter, count_host_syncs
from ssl_zoo.registry import METHODS
from ssl_zoo.training.train import fit


# Every method with SGD, and every other optimiser the recipes use with one method.
CASES = [(method, "sgd") for method in METHODS.names()] + [("simclr", "lars"), ("simclr", "adamw")]


@pytest.mark.parametrize(("method", "optimizer"), CASES)
def test_fit_steps_make_no_host_syncs(method, optimizer, make_recipe):
    # 14 batches an epoch, logging every 50 steps: steps 3-10 are plain steps (logging and
    # the progress bar's metrics happen at their interval, and may sync there).
    recipe = make_recipe(method, **{
        "data.num_images": 448, "trainer.max_steps": 12, "trainer.log_every_n_steps": 50,
        "augment.blur_p": "[0.5, 0.5]", "augment.solarize_p": "[0.0, 0.2]", "optim.optimizer": optimizer,
    })
    counter = count_host_syncs(recipe, first=2, last=10, enable_progress_bar=True)
    assert counter.ops_seen > 1000  # 8 steps of a ResNet-18 ran under the counter
    assert not counter.calls, (
        f"{len(counter.calls)} host syncs in 8 steps of {method} with {optimizer}:\n" + "\n".join(counter.calls[:10])
    )


class ReadLossEveryStep(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        float(trainer.callback_metrics["train/loss"])  # what a progress bar does every step


def test_the_counter_sees_a_host_sync(make_recipe):
    recipe = make_recipe("simclr", **{"data.num_images": 448, "trainer.max_steps": 12, "trainer.log_every_n_steps": 50})
    counter = HostSyncCounter()
    with counter:
        fit(recipe, enable_progress_bar=False, callbacks=[CountBetweenSteps(counter, 2, 10), ReadLossEveryStep()])
    assert len(counter.calls) == 8 and all("_local_scalar_dense" in call for call in counter.calls)
