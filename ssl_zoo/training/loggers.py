"""Lightning loggers beside TensorBoard (``trainer.loggers``), and images to any logger.

TensorBoard always runs: the bench report reads its event files. A recipe may add csv,
wandb and mlflow; each writes inside the run folder, and wandb and mlflow are imported
only when a recipe names them (neither is a dependency of ssl_zoo).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable, Sequence
from functools import singledispatch
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import save_image

from ssl_zoo.errors import RecipeError

# The package each optional logger needs, where it is not already a dependency.
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_logger_packages(names: Sequence[str]) -> None:
    """Raise a RecipeError naming the ``pip install`` for each named logger whose package is missing."""
    missing = [PACKAGES[name] for name in names if name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise RecipeError(
            f"trainer.loggers needs {' and '.join(missing)}, not installed here: pip install {' '.join(missing)} "
            "(or take it out of trainer.loggers; TensorBoard always logs)."
        )


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it continues a metrics.csv it finds.

    NOTE: Lightning's writer deletes an existing metrics.csv (its ``_check_log_dir_exists``),
    so ``fit --resume`` would lose the rows before the checkpoint. This one reads the file's
    header instead and appends below it (rewriting the header if new keys come). Steps
    logged after the checkpoint and before a crash appear twice, as in TensorBoard.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing through ``_ContinuedWriter``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


class FinishingWandbLogger(WandbLogger):
    """Lightning's WandbLogger, ending its wandb run when the fit ends.

    NOTE: Lightning leaves the wandb run open after ``fit``, and a later WandbLogger in the
    same process reuses an open run: the bench's runs would all log into one (and an
    offline run's file is only complete once finished). A resumed fit is a new wandb run.
    """

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def _csv(recipe_name: str, run_dir: Path) -> Logger:
    return ContinuedCSVLogger(save_dir=run_dir, name="", version="csv")  # run_dir/csv/metrics.csv


def _wandb(recipe_name: str, run_dir: Path) -> Logger:
    # Online or offline as wandb's own settings say (WANDB_MODE=offline without a network).
    return FinishingWandbLogger(project="ssl_zoo", name=f"{recipe_name}/{run_dir.name}", group=recipe_name, save_dir=str(run_dir))


def _mlflow(recipe_name: str, run_dir: Path) -> Logger:
    # MLFLOW_TRACKING_URI (a server) when set; otherwise a database in the run folder.
    # NOTE: not MLflow's plain-file store (Lightning's default): MLflow 3 refuses it
    # unless MLFLOW_ALLOW_FILE_STORE=true, and points to SQLite instead.
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    return MLFlowLogger(
        experiment_name=recipe_name, run_name=run_dir.name, tracking_uri=tracking_uri,
        artifact_location=(run_dir.resolve() / "mlflow_artifacts").as_uri(),
    )


BUILDERS: dict[str, Callable[[str, Path], Logger]] = {"csv": _csv, "wandb": _wandb, "mlflow": _mlflow}


def extra_loggers(names: Sequence[str], recipe_name: str, run_dir: Path) -> list[Logger]:
    """The loggers ``trainer.loggers`` names, writing inside ``run_dir``."""
    check_logger_packages(names)
    return [BUILDERS[name](recipe_name, run_dir) for name in names]


@singledispatch
def log_image(logger: Logger, key: str, image: Tensor, step: int) -> None:
    """Write ``image`` (3, H, W), floats in [0, 1], through ``logger``'s own image API.

    A logger kind not registered below has no image API ssl_zoo knows: it is skipped.
    """


@log_image.register
def _tensorboard_image(logger: TensorBoardLogger, key: str, image: Tensor, step: int) -> None:
    logger.experiment.add_image(key, image, global_step=step)


@log_image.register
def _csv_image(logger: CSVLogger, key: str, image: Tensor, step: int) -> None:
    # CSV holds numbers only: the image goes to a PNG beside metrics.csv, one per step.
    path = Path(logger.log_dir) / key / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image, path)


@log_image.register
def _wandb_image(logger: WandbLogger, key: str, image: Tensor, step: int) -> None:
    logger.log_image(key=key, images=[image.cpu()], step=step)


@log_image.register
def _mlflow_image(logger: MLFlowLogger, key: str, image: Tensor, step: int) -> None:
    array = image.mul(255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3) uint8, as mlflow takes it
    logger.experiment.log_image(logger.run_id, array, key=key, step=step)
