"""Crashes cost nothing: exact resume after SIGKILL, checkpoints never torn, NaN stops cleanly."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import pytorch_lightning as pl
import torch
import yaml

from conftest import Crash, CrashAt
from ssl_zoo.training.checkpointing import AtomicCheckpointIO
from ssl_zoo.errors import CheckpointError, RecipeError, TrainingError
from ssl_zoo.recipe import parse_recipe, recipe_to_dict
from ssl_zoo.training.train import check_resumable, fit

# 256 images in batches of 32: 8 steps an epoch, 3 epochs, a checkpoint every 3 steps. The
# backbone is not what these tests check (resume, checkpoints, NaN guards): convnet4 (with batch
# norm, whose running statistics must resume too) trains several times faster than resnet18.
RESUME_KEYS = {
    "backbone": "convnet4", "data.num_images": 256, "trainer.max_epochs": 3, "trainer.checkpoint_every_n_steps": 3,
    "augment.blur_p": "[0.5, 0.5]", "augment.solarize_p": "[0.0, 0.2]",
}


def write_recipe(make_recipe, method: str, path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(recipe_to_dict(make_recipe(method, **{**RESUME_KEYS, **keys}))))
    return path


def run_fit(recipe_file: Path, output_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "ssl_zoo", "fit", "--recipe", str(recipe_file),
               "--trainer.output_dir", str(output_dir), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except FileNotFoundError:
        return -1


def assert_same_state(a: dict, b: dict, where: str = "checkpoint") -> None:
    """Bit-equal tensors and equal values, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def final_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # The state that training carries on: weights (EMA target and augmentation generators
    # included), optimiser, schedules, step counters and the data order.
    return {key: state[key] for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch", "ImageDataModule")}


def assert_sigkill_then_resume_is_bit_exact(recipe_file: Path, tmp_path: Path) -> None:
    """Train a BYOL recipe of RESUME_KEYS unbroken; train it again, SIGKILL it mid-epoch and
    `fit --resume` it: the two must end with bit-identical states."""
    unbroken = run_fit(recipe_file, tmp_path / "a")
    assert unbroken.wait(timeout=300) == 0, unbroken.stdout.read()

    broken = run_fit(recipe_file, tmp_path / "b")
    last = tmp_path / "b" / "tiny_byol" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while saved_step(last) < 9 and broken.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    broken.send_signal(signal.SIGKILL)
    assert broken.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = saved_step(last)
    assert 9 <= killed_at < 24 and killed_at % 8 != 0, f"not killed mid-epoch (checkpoint at step {killed_at})"

    resumed = run_fit(recipe_file, tmp_path / "b", "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert "Resuming from" in output and "version_0" in output
    assert not (tmp_path / "b" / "tiny_byol" / "version_1").exists()  # same run folder
    assert_same_state(final_state(tmp_path / "a" / "tiny_byol" / "version_0" / "checkpoints" / "last.ckpt"), final_state(last))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(make_recipe, tmp_path):
    assert_sigkill_then_resume_is_bit_exact(write_recipe(make_recipe, "byol", tmp_path / "byol.yaml"), tmp_path)


@pytest.mark.parametrize("method", ["simclr", "clip"])
def test_resume_from_a_mid_epoch_checkpoint_is_bit_exact(method, make_recipe, tmp_path):
    # In process (faster than the SIGKILL test): CLIP also resumes its caption draws.
    recipe = make_recipe(method, **{**RESUME_KEYS, "trainer.max_epochs": 2})
    unbroken = fit(recipe, enable_progress_bar=False)
    crashed = make_recipe(method, **{**RESUME_KEYS, "trainer.max_epochs": 2, "trainer.output_dir": tmp_path / "b"})
    with pytest.raises(Crash):
        fit(crashed, enable_progress_bar=False, callbacks=[CrashAt(step=11)])
    last = tmp_path / "b" / f"tiny_{method}" / "version_0" / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 9  # mid-epoch 2
    resumed = fit(crashed, enable_progress_bar=False, resume=last)
    assert resumed.run_dir == last.parent.parent
    assert_same_state(final_state(unbroken.checkpoint), final_state(resumed.checkpoint))
    # The monitors carry on too: the random-init score is the first try's, logged once (the
    # checkpoint is not scored as another), and the throughput covers the whole run's images.
    assert resumed.knn_top1_random_init == unbroken.knn_top1_random_init is not None
    events = EventAccumulator(str(resumed.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("knn/top1_random_init")) == 1
    images = resumed.images_per_second * resumed.train_seconds
    assert images == pytest.approx(resumed.steps * crashed.data.batch_size)


WRITER = textwrap.dedent("""
    import sys, torch
    from ssl_zoo.training.checkpointing import AtomicCheckpointIO
    path, start = sys.argv[1], int(sys.argv[2])
    io = AtomicCheckpointIO()
    print("ready", flush=True)
    for step in range(start, start + 10_000):
        io.save_checkpoint({"step": step, "weights": torch.full((4_000_000,), float(step))}, path)
""")


def test_killing_the_checkpoint_writer_never_tears_the_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "last.ckpt"
    last_seen = -1  # the step of the last whole checkpoint read
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55, 0.08):  # kills land at different moments of a write
        start = last_seen + 1
        writer = subprocess.Popen([sys.executable, str(script), str(path), str(start)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if not path.exists():  # killed before its first write finished
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)  # whole, not torn
        assert torch.all(state["weights"] == state["step"])
        assert state["step"] >= last_seen  # the old checkpoint or a newer one, never an older one
        last_seen = state["step"]
    assert last_seen >= 0, "no checkpoint was ever completed"


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the partial file is gone


class PoisonWeightsAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.backbone.parameters()).fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(make_recipe):
    recipe = make_recipe("simclr", **{"backbone": "convnet4", "data.num_images": 256, "trainer.checkpoint_every_n_steps": 2, "trainer.log_every_n_steps": 50})
    with pytest.raises(TrainingError, match=r"NaN or infinite at step 6 .*last good checkpoint is kept"):
        fit(recipe, enable_progress_bar=False, callbacks=[PoisonWeightsAt(step=5)])
    last = Path(recipe.trainer.output_dir) / "tiny_simclr" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4  # the step-6 checkpoint was refused, step 4's stays
    weights = [t for t in state["state_dict"].values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in weights)


def test_weights_broken_by_an_update_after_a_finite_loss_are_not_saved(make_recipe):
    recipe = make_recipe("simclr", **{"backbone": "convnet4", "data.num_images": 256, "trainer.checkpoint_every_n_steps": 2, "trainer.log_every_n_steps": 50})
    with pytest.raises(TrainingError, match=r"weights became NaN or infinite by step 4 \(the loss was still finite\)"):
        fit(recipe, enable_progress_bar=False, callbacks=[PoisonWeightsAt(step=4)])  # poisoned before step 4's save
    last = Path(recipe.trainer.output_dir) / "tiny_simclr" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


class RecordSavedSteps(pl.Callback):
    def __init__(self) -> None:
        self.steps = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(checkpoint["global_step"])


def test_last_checkpoint_is_saved_every_n_steps_at_epoch_ends_and_at_the_end(make_recipe):
    # 8 steps an epoch, 19 steps in all, every 5 steps: 5, 8 (epoch), 10, 15, 16 (epoch), 19 (end).
    recipe = make_recipe("simclr", **{"backbone": "convnet4", "data.num_images": 256, "trainer.max_epochs": 3, "trainer.max_steps": 19, "trainer.checkpoint_every_n_steps": 5})
    saved = RecordSavedSteps()
    summary = fit(recipe, enable_progress_bar=False, callbacks=[saved])
    assert saved.steps == [5, 8, 10, 15, 16, 19]
    assert summary.checkpoint.name == "last.ckpt" and saved_step(summary.checkpoint) == summary.steps == 19
    assert sorted(p.name for p in summary.checkpoint.parent.iterdir()) == ["last.ckpt"]  # no versions, no debris


def test_recipes_load_with_a_safe_yaml_loader(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"method: simclr\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError):
        parse_recipe(["--recipe", str(evil)])
    assert not marker.exists()


def test_resuming_with_another_global_batch_is_refused_before_training(make_recipe, tmp_path):
    # The optimiser, the schedules and BYOL's momentum count steps of the global batch
    # (per process x processes) they trained with: only the same global batch resumes.
    recipe = make_recipe("byol")  # data.batch_size 32
    path = tmp_path / "last.ckpt"

    def checkpoint(data_state: dict) -> Path:
        torch.save({"state_dict": {}, "hyper_parameters": {"recipe": recipe_to_dict(recipe)}, "ImageDataModule": data_state}, path)
        return path

    trained_on_two = checkpoint({"epoch": 0, "images_done": 128, "global_batch": 64})
    with pytest.raises(CheckpointError) as refused:
        check_resumable(trained_on_two, recipe, world_size=1)
    message = str(refused.value)
    assert "global batch of 32 images (data.batch_size 32 x 1 processes): it trained with 64" in message
    assert "trainer.devices x trainer.num_nodes x data.batch_size" in message and f"--init_weights {path}" in message
    check_resumable(trained_on_two, recipe, world_size=2)  # 32 x 2 processes: the same global batch
    recipe.data.batch_size = 64
    check_resumable(trained_on_two, recipe, world_size=1)  # 64 on one process: also the same
    # A checkpoint written before the global batch was recorded resumes as it did.
    check_resumable(checkpoint({"epoch": 0, "images_done": 128}), recipe, world_size=1)
