"""What a report records about the source and machine that made it, and how it writes
paths: fast checks without a bench (tests/test_bench.py checks a real report)."""

import os
import subprocess
from pathlib import Path

import ssl_zoo.environment as environment
from ssl_zoo.report import time_to_accuracy_caption
from ssl_zoo.report_paths import BASE_REPORT_FOLDER, BASE_WORKING_DIRECTORY, ReportPaths, map_command


def test_outside_a_git_checkout_the_commit_is_unknown_and_nothing_fails(tmp_path, monkeypatch):
    # A wheel's files: no repository tracks them (here a repository exists around them, as
    # for a virtual environment inside a project, but it does not track the package).
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(environment, "PACKAGE_DIR", tmp_path)
    assert environment.source_revision() == {"commit": None, "dirty": None}
    assert environment.versions()["ssl_zoo_commit"] is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(environment.subprocess, "run", no_git)  # git not installed
    assert environment.source_revision() == {"commit": None, "dirty": None}


def test_the_cpu_model_and_peak_memory_are_read():
    assert environment.cpu_model() and environment.cpu_model() != "unknown"
    peak = environment.peak_host_memory_gib()
    assert 0.05 < peak["process"] < 1024 and peak["largest_child"] >= 0


def test_paths_are_relative_to_the_working_directory_when_the_report_is_inside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = ReportPaths.for_report(tmp_path / "runs" / "bench")
    assert (paths.base, paths.described) == (tmp_path, BASE_WORKING_DIRECTORY)
    assert paths.show(str(tmp_path / "runs/bench/runs/a/version_0")) == "runs/bench/runs/a/version_0"
    assert paths.show("../shared/data") == "../shared/data"  # as typed
    assert paths.open("runs/bench/x") == str(tmp_path / "runs/bench/x")


def test_paths_are_relative_to_the_report_when_it_lies_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    out = tmp_path / "reports" / "bench"
    paths = ReportPaths.for_report(out)
    assert (paths.base, paths.described) == (out, BASE_REPORT_FOLDER)
    assert paths.show(str(out / "runs")) == "runs" and paths.show(str(out)) == "."
    assert paths.show("data") == "../../project/data"  # relative to the working directory before
    results = {"command": f"python -m ssl_zoo bench --recipes a {tmp_path}/b.yaml --out {out} --eval-root data",
               "runs": [{"training": {"checkpoint": str(out / "runs/a/last.ckpt")}, "label": "/not/a/key"}]}
    portable = paths.portable(results)
    assert portable["command"] == "python -m ssl_zoo bench --recipes a ../../b.yaml --out . --eval-root ../../project/data"
    assert portable["runs"][0]["training"]["checkpoint"] == "runs/a/last.ckpt"
    restored = paths.restore(portable)
    assert restored["runs"][0]["training"]["checkpoint"] == str(out / "runs/a/last.ckpt")
    assert paths.restore(portable)["command"].split()[-3] == str(out)


def test_a_path_in_the_home_folder_is_written_from_home_when_the_base_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    paths = ReportPaths(tmp_path / "elsewhere", BASE_REPORT_FOLDER)
    assert paths.show(str(tmp_path / "home" / "data" / "cifar")) == "~/data/cifar"
    assert paths.open("~/data/cifar") == os.path.join(tmp_path, "home", "data", "cifar")


def test_command_paths_are_found_in_both_option_forms():
    change = lambda p: f"<{p}>"  # noqa: E731
    argv = ["--recipes", "simclr_shapes", "mine.yaml", "--out=runs/x", "--weights", "timm:resnet18=w.pth",
            "--data.batch_size", "64", "--data.root", "d"]
    assert map_command(argv, change) == ["--recipes", "simclr_shapes", "<mine.yaml>", "--out=<runs/x>", "--weights",
                                         "timm:resnet18=<w.pth>", "--data.batch_size", "64", "--data.root", "<d>"]


def test_the_time_to_accuracy_caption_says_which_runs_it_leaves_out_and_why():
    def run(label, data, curve, trained=True):
        return {"label": label, "training": {} if trained else None, "recipe": {"data": {"name": data}},
                "curves": {"knn_by_seconds": [[0.0, 0.1]] if curve else []}}

    caption = time_to_accuracy_caption([
        run("simclr", "shared_cifar10", True), run("clip_convnet4_flickr8k", "shared_flickr8k", False),
        run("random init (convnet4)", "shared_cifar10", False, trained=False),
    ])
    assert "clip_convnet4_flickr8k: its training data (shared_flickr8k) has no class labels, so the kNN monitor did not run" in caption
    assert "random init (convnet4): not trained here" in caption and "simclr:" not in caption
