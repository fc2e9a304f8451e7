"""The command line as a user runs it: recipes, fit end to end, clear errors."""

import subprocess
import sys

import torch
import yaml

from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.recipe import recipe_from_dict


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ssl_zoo", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_and_recipes_list():
    result = run_cli("--help")
    assert result.returncode == 0 and "python -m ssl_zoo fit --recipe" in result.stdout
    result = run_cli("recipes")
    assert result.returncode == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) >= 10 and any(line.split()[0] == "quickstart" for line in lines)
    result = run_cli("fit", "--help")
    assert result.returncode == 0 and "--data.batch_size" in result.stdout and "--trainer.max_epochs" in result.stdout


def test_every_command_answers_help_itself_and_bad_input_in_one_paragraph(capsys):
    from ssl_zoo.cli import main

    for command in ("eval", "bench", "export", "shards"):
        assert main([command, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: ssl_zoo {command}")
        assert main([command, "--no-such-option"]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"ssl_zoo: error: ssl_zoo {command}: ") and error.count("\n") == 1, error
        assert f"python -m ssl_zoo {command} --help" in error and "usage:" not in error


def test_fit_runs_end_to_end_on_shapes(tmp_path):
    result = run_cli(
        "fit", "--recipe", "quickstart", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--data.num_images", "256", "--data.batch_size", "64", "--data.knn_bank_size", "256",
        "--trainer.log_every_n_steps", "2",
        "--trainer.output_dir", str(tmp_path / "runs"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "kNN top-1 (val)" in out and "random-init backbone" in out and "online probe top-1" in out
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert str(checkpoint) in out
    assert checkpoint.is_file() and list(run_dir.glob("events.out.tfevents.*"))
    # TensorBoard holds the losses, lr, probe, kNN (also at random init) and the view grid.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "knn/top1", "knn/top1_random_init", "probe/val_top1"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    grid = events.Images("views")[0]
    assert grid.width > 2 * grid.height  # 2 rows (views) of 16 images
    # The resolved recipe is in the run folder and in the checkpoint, with the overrides.
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["shapes"]["num_images"] == 256
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["recipe"] == saved
    assert state["global_step"] == 2 * 256 // 64
    model = SimCLR.load_from_checkpoint(checkpoint, map_location="cpu")
    assert model.recipe == recipe_from_dict(saved)


def test_unknown_recipe_is_a_clear_error_without_traceback():
    result = run_cli("fit", "--recipe", "simclr_resnet5")
    assert result.returncode == 2
    assert "Unknown recipe 'simclr_resnet5'" in result.stderr and "simclr_resnet50" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_offline_names_the_path_and_the_fix(tmp_path):
    result = run_cli("fit", "--recipe", "simclr_resnet50_stl10", "--data.root", str(tmp_path / "nowhere"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "stl10" in result.stderr.lower() and str(tmp_path / "nowhere") in result.stderr
    assert "download" in result.stderr


def test_missing_imagenet_shards_say_how_to_convert_and_what_downloads(tmp_path):
    result = run_cli("fit", "--recipe", "byol_resnet50", "--data.root", str(tmp_path / "imagenet"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and str(tmp_path / "imagenet") in result.stderr
    assert "python -m ssl_zoo shards --from folder" in result.stderr
    assert "byol_resnet50_stl10" in result.stderr and "simclr_resnet50_stl10" in result.stderr


def test_missing_shared_archive_is_a_clear_error(tmp_path):
    result = run_cli("fit", "--recipe", "simclr_resnet18_cifar10", "--data.name", "shared_cifar10",
                     "--data.root", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cifar10.npz" in result.stderr


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    result = run_cli(
        "fit", "--recipe", "quickstart", "--data.num_images", "100", "--data.batch_size", "128",
        "--trainer.output_dir", str(tmp_path),
    )
    assert result.returncode == 2 and "Lower --data.batch_size" in result.stderr
