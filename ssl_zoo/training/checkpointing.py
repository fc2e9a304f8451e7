"""Checkpoints that survive crashes: atomic writes, no saved broken state, resume lookup.

- ``AtomicCheckpointIO`` writes a checkpoint to a temporary file beside it, flushes it to
  disk and renames it over the old one: a kill at any moment leaves the old or the new
  checkpoint, whole.
- ``LastCheckpoint`` keeps ``last.ckpt`` current: every N steps, at epoch ends, at the end.
- ``FiniteLossGuard`` stops a run whose loss or weights became NaN or infinite, naming the
  step, and refuses to save a checkpoint of that state, so the last good checkpoint stays.
- ``checkpoint_in`` and ``latest_checkpoint`` find what ``fit --resume`` continues from.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_zoo.atomic import atomic_path
from ssl_zoo.errors import CheckpointError, TrainingError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: temporary file, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(path) as partial:
            torch.save(checkpoint, partial)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: every ``every_n_steps`` steps, at every epoch's end and when training ends.

    Lightning's step-interval checkpointing alone skips epoch ends and the final step when
    they fall between intervals: a run would lose up to N - 1 steps. The file is always
    overwritten in place (atomically, by ``AtomicCheckpointIO``), never versioned.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None) -> None:
        super().__init__(
            dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps, enable_version_counter=False
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_unless_saved(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_unless_saved(trainer)

    def _save_unless_saved(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # also skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class FiniteLossGuard(pl.Callback):
    """Stops training when the loss or the weights are NaN or infinite; never saves such a state.

    The loss check stays on the device at every step (a host read per step would stall
    the GPU). The host reads it every ``check_every`` steps and before every checkpoint is
    written, when the weights about to be saved are checked too (an update can break them
    after a finite loss). Under DDP the processes decide together, so they stop together.
    """

    def __init__(self, check_every: int = 50) -> None:
        self.check_every = max(check_every, 1)
        self._first_bad_step: torch.Tensor | None = None  # -1 while every loss was finite

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step  # the step just taken
        bad_now = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(bad_now, step, self._first_bad_step)
        if step % self.check_every == 0:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Raising here aborts the write: the old file stays.
        weights = [t for t in checkpoint["state_dict"].values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
        finite = bool(torch.stack([t.isfinite().all() for t in weights]).all()) if weights else True
        self._raise_if_bad(trainer, weights_finite=finite)

    def _raise_if_bad(self, trainer: pl.Trainer, weights_finite: bool = True) -> None:
        loss_bad = self._first_bad_step is not None and int(self._first_bad_step) >= 0
        if not trainer.strategy.reduce_boolean_decision(loss_bad or not weights_finite, all=False):
            return  # every process is fine
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        kept = (
            f"The last good checkpoint is kept: {last}." if last and Path(last).is_file()
            else "No checkpoint was written before it."
        )
        if loss_bad:
            what = f"the loss became NaN or infinite at step {int(self._first_bad_step)} (noticed at step {trainer.global_step})"
        elif not weights_finite:
            what = f"the weights became NaN or infinite by step {trainer.global_step} (the loss was still finite)"
        else:
            what = f"another process saw a NaN or infinite loss or weights by step {trainer.global_step}"
        raise TrainingError(
            f"Training stopped: {what}. No checkpoint of that state was saved. {kept} "
            "Lower optim.lr, lengthen optim.warmup_epochs, or train in trainer.precision 32-true; "
            "resume from the last checkpoint with `fit --resume`."
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint ``fit`` wrote, loaded as data only (``weights_only=True``).

    Loading never runs code from the file: a pickle of arbitrary objects is refused with a
    message that says so, as is a file that is not a checkpoint, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint '{path}' does not exist. A run writes runs/<recipe>/version_N/checkpoints/last.ckpt."
        )
    checkpoint = load_data(path, "checkpoint", "Pass the .ckpt file that `fit` wrote")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "recipe" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointError(
            f"'{path}' is a PyTorch file but not an ssl_zoo checkpoint (it has no saved recipe). "
            "Pass the .ckpt file that `fit` wrote."
        )
    return checkpoint


def load_data(path: Path, kind: str, what_to_pass: str) -> Any:
    """A torch file (a ``kind``: "checkpoint", "weights file") loaded as data only
    (``weights_only=True``): unpickling never runs code from it. Anything else is a
    CheckpointError that ends with ``what_to_pass``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a valid pickle of objects that are not plain data
            raise CheckpointError(
                f"'{path}' holds Python objects besides tensors and plain values. ssl_zoo loads "
                "torch files with weights_only=True and does not unpickle such objects, because "
                f"unpickling can run code from the file. {what_to_pass}."
            ) from None
        raise CheckpointError(_unreadable(path, error, kind, what_to_pass)) from None
    except Exception as error:  # a text file, a truncated archive
        raise CheckpointError(_unreadable(path, error, kind, what_to_pass)) from None


def _unreadable(path: Path, error: Exception, kind: str, what_to_pass: str) -> str:
    return (
        f"'{path}' is not a {kind} ssl_zoo can read ({type(error).__name__}). {what_to_pass}; "
        "if it is one, it may be truncated (copy it again)."
    )


def checkpoint_in(run: str | Path) -> Path:
    """The checkpoint to resume: ``run`` is a checkpoint file or a run folder."""
    path = Path(run)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise CheckpointError(
            f"Cannot resume from '{run}': no such checkpoint. Pass a run folder "
            "(runs/<recipe>/version_N) or its checkpoints/last.ckpt."
        )
    return path


def latest_checkpoint(output_dir: str | Path, recipe_name: str) -> Path:
    """The last checkpoint of the newest run of ``recipe_name`` under ``output_dir``."""
    runs = Path(output_dir) / recipe_name
    candidates = [
        (int(folder.name.removeprefix("version_")), folder / "checkpoints" / "last.ckpt")
        for folder in runs.glob("version_*")
        if folder.name.removeprefix("version_").isdigit() and (folder / "checkpoints" / "last.ckpt").is_file()
    ]
    if not candidates:
        raise CheckpointError(
            f"Nothing to resume: no run of recipe '{recipe_name}' under '{runs}' has a "
            "checkpoints/last.ckpt. Start it without --resume, or pass the run folder."
        )
    return max(candidates)[1]
