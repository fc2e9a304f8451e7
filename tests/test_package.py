"""ssl_zoo as a package: the public API's README example, and a wheel that works once installed.

The wheel test builds the wheel from a copy of the files a wheel is made of, installs it
into a fresh virtual environment (which sees this interpreter's packages for the
dependencies, not the editable ssl_zoo: the installed one comes first on its path, and the
test checks which one it imports), and from a folder outside the checkout lists the bundled
recipes, reads the ImageNet-100 class list and runs a tiny bench.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The README's five-line example of the Python API, run as it is written there.
README_EXAMPLE = """\
from ssl_zoo import bench, evaluate, fit, load_recipe

recipe = load_recipe("quickstart", shapes={"num_images": 512}, trainer={"max_epochs": 1})  # a toy run
run = fit(recipe)                                          # runs/quickstart/version_0: checkpoint, logs
print(evaluate(run.checkpoint, max_test=100)["metrics"])   # kNN and linear top-1, diagnostics
bench(["quickstart"], epochs=1, baselines=False, max_test=100, shapes={"num_images": 512})  # runs/bench/report.md
"""


def test_readme_shows_the_api_example():
    assert README_EXAMPLE in (ROOT / "README.md").read_text()


def test_import_is_light():
    code = "import sys, ssl_zoo; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.slow
def test_the_readme_api_example_runs(tmp_path):
    result = subprocess.run([sys.executable, "-c", README_EXAMPLE], capture_output=True, text=True, cwd=tmp_path,
                            env=_env(PYTHONPATH=str(ROOT)), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'knn_top1':" in result.stdout and "'linear_top1':" in result.stdout
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    results = json.loads((tmp_path / "runs" / "bench" / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == ["quickstart", "random init (convnet4)"]
    assert (tmp_path / "runs" / "bench" / "report.md").is_file()


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    started = time.perf_counter()
    source = tmp_path / "source"  # the files the wheel is made of, so no build/ lands in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ssl_zoo", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run = _runner(tmp_path)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        cwd=source)
    (wheel,) = (tmp_path / "dist").glob("ssl_zoo-*.whl")
    run(sys.executable, "-m", "venv", "--system-site-packages", tmp_path / "venv")
    venv = tmp_path / "venv" / "bin"
    run(venv / "python", "-m", "pip", "install", "-q", "--no-deps", wheel)
    built = time.perf_counter()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed ssl_zoo, not the checkout's editable one, and the ImageNet-100 list inside it.
    installed = run(venv / "python", "-c", "import ssl_zoo; from ssl_zoo.data.imagenet100 import imagenet100_classes as c; "
                    "print(ssl_zoo.__file__, len(c()), c()[0])", cwd=elsewhere)
    assert installed.split() == [str(_site_packages(tmp_path / "venv") / "ssl_zoo" / "__init__.py"), "100", "n01558993"]
    listed = run(venv / "ssl_zoo", "recipes", cwd=elsewhere)
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"  {recipe.stem} " in listed
    assert (_site_packages(tmp_path / "venv") / "ssl_zoo-0.1.0.dist-info" / "licenses" / "LICENSE").is_file()

    out = elsewhere / "bench"
    run(venv / "ssl_zoo", "bench", "--recipes", "quickstart", "--epochs", "1", "--no-baselines", "--out", "bench",
        "--max-test", "96", "--shapes.num_images", "192", "--data.batch_size", "48", "--data.knn_bank_size", "96",
        "--data.val_size", "96", "--trainer.accelerator", "cpu", cwd=elsewhere)
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == ["quickstart", "random init (convnet4)"]
    assert (out / "report.md").is_file()
    print(f"wheel built and installed in {built - started:.0f} s, checked in {time.perf_counter() - built:.0f} s")


def _env(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH (the tests run with the checkout on it), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def _runner(tmp_path: Path):
    def run(*argv, cwd: Path = tmp_path) -> str:
        result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=600)
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
        return result.stdout

    return run


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
