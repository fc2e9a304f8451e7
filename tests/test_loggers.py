"""trainer.loggers: CSV (and wandb, mlflow when installed) beside TensorBoard."""

import csv
import sys
from pathlib import Path

import pytest
import yaml

from conftest import Crash, CrashAt
from ssl_zoo.errors import RecipeError
from ssl_zoo.training.train import fit


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_csv_logger_writes_metrics_views_and_recipe_and_continues_on_resume(make_recipe, monkeypatch):
    # BYOL: its momentum goes to each logger by hand (not self.log), so the CSV shows that
    # the method writes to every logger, not only the first. 4 steps an epoch.
    # wandb and mlflow cannot be imported here (None in sys.modules makes `import` fail):
    # a recipe that does not name them never needs them.
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    recipe = make_recipe("byol", **{
        "backbone": "convnet4", "trainer.loggers": "[csv]", "trainer.max_epochs": 2, "trainer.checkpoint_every_n_steps": 2,
    })
    with pytest.raises(Crash):
        fit(recipe, enable_progress_bar=False, callbacks=[CrashAt(3)])
    run_dir = Path(recipe.trainer.output_dir) / recipe.name / "version_0"
    metrics = run_dir / "csv" / "metrics.csv"
    rows = read_rows(metrics)
    assert [int(row["step"]) for row in rows if row["train/loss"]] == [0, 1, 2]
    assert any(row["train/momentum"] for row in rows) and any(row["knn/top1_random_init"] for row in rows)
    assert (run_dir / "csv" / "views" / "step_0000000.png").is_file()  # CSV has no images: a PNG
    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert hparams["recipe"]["method"] == "byol" and hparams["recipe"]["trainer"]["loggers"] == ["csv"]
    assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard still logs

    # Resumed from step 2's checkpoint, the CSV goes on below the crashed run's rows (step 2,
    # logged before the crash, is logged again: the resumed run redoes it).
    resumed = fit(recipe, enable_progress_bar=False, resume=run_dir / "checkpoints" / "last.ckpt")
    assert resumed.run_dir == run_dir and resumed.steps == 8
    assert [int(row["step"]) for row in read_rows(metrics) if row["train/loss"]] == [0, 1, 2, 2, 3, 4, 5, 6, 7]
    assert (run_dir / "csv" / "views" / "step_0000004.png").is_file()  # the second epoch's grid


def test_an_unknown_logger_is_a_recipe_error_naming_the_valid_ones(make_recipe):
    with pytest.raises(RecipeError, match="trainer.loggers.*'csv', 'wandb', 'mlflow'"):
        make_recipe("simclr", **{"trainer.loggers": "[tensorbord]"})


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_logger_without_its_package_says_what_to_install(name, make_recipe, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed, whether it is or not
    recipe = make_recipe("simclr", **{"trainer.loggers": f"[csv, {name}]"})
    with pytest.raises(RecipeError, match=f"pip install {name}"):
        fit(recipe, enable_progress_bar=False)
    assert not Path(recipe.trainer.output_dir).exists()  # refused before any run folder was made


def test_wandb_offline_gets_the_metrics_and_the_view_grid(make_recipe, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network in tests
    recipe = make_recipe("simclr", **{"backbone": "convnet4", "trainer.loggers": "[wandb]", "trainer.max_steps": 2})
    run_dir = fit(recipe, enable_progress_bar=False).run_dir
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list((offline_run / "files" / "media" / "images").glob("views_*.png"))
    assert wandb.run is None  # finished with the fit: the next fit in this process gets its own run


def test_mlflow_gets_the_recipe_metrics_and_the_view_grid_in_the_run_folder(make_recipe, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # the run folder's SQLite store needs it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = make_recipe("byol", **{"backbone": "convnet4", "trainer.loggers": "[mlflow]", "trainer.max_steps": 2})
    run_dir = fit(recipe, enable_progress_bar=False).run_dir
    client = mlflow.MlflowClient(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(recipe.name).experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["recipe/method"] == "byol"
    assert {"train/loss", "train/momentum"} <= set(run.data.metrics)
    assert list((run_dir / "mlflow_artifacts").rglob("views*.png"))
