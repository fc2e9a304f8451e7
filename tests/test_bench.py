"""`bench` end to end on shapes with a tiny budget: every file, table and plot, and the
HTML report as a browser renders it."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import ssl_zoo

from ssl_zoo.bench import BenchConfig, BenchState, _fitted_steps, _with_budget, seeded_runs
from ssl_zoo.training.budget import measurement_seconds, parse_budget
from ssl_zoo.environment import cpu_model
from ssl_zoo.report import budget_text
from ssl_zoo.errors import RecipeError
from ssl_zoo.recipe import parse_recipe
from ssl_zoo.training.train import fit

RECIPES = ["quickstart", "byol_shapes", "clip_shapes"]
RUN_LABELS = RECIPES + ["supervised (convnet4)", "random init (convnet4)"]


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    # Run from its own folder, as a user runs it from a project's, with --out given absolute:
    # the report must still name no folder of this machine.
    out = tmp_path_factory.mktemp("bench") / "report"
    args = [
        "bench", "--recipes", *RECIPES, "--budget", "2s", "--out", str(out), "--max-test", "96",
        "--data.num_images", "384", "--data.batch_size", "48", "--data.knn_bank_size", "256",
        "--trainer.accelerator", "cpu",
    ]
    result = subprocess.run([sys.executable, "-m", "ssl_zoo", *args], capture_output=True, text=True, timeout=900,
                            cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in result.stdout
    return out


def test_bench_writes_results_markdown_and_html_with_every_table_and_plot(bench_report):
    results = json.loads((bench_report / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == RUN_LABELS
    assert results["budget"] == {"mode": "wall_clock", "seconds": 2.0, "epochs": None}
    assert results["command"].startswith("python -m ssl_zoo bench --recipes quickstart")
    for run in results["runs"]:
        metrics = run["evaluation"]["metrics"]
        assert {"linear_top1", "knn_top1", "embedding_std", "rankme", "alignment", "uniformity"} <= set(metrics)
        if run["kind"] == "method" or run["label"].startswith("supervised"):
            training = run["training"]
            assert training["steps"] >= 1 and training["steps_per_second_measured"] > 0
            assert run["curves"]["loss"] and len(run["curves"]["knn_by_seconds"]) >= 2
            # The throughput meter pauses for validation and resumes after it: it agrees
            # with the speed measured before the run (loosely; CI machines are noisy).
            batch = run["recipe"]["data"]["batch_size"]
            assert 0.3 < training["images_per_second"] / (batch * training["steps_per_second_measured"]) < 3
    clip = results["runs"][2]["evaluation"]["metrics"]
    assert {"zero_shot_top1", "image_to_text_r1", "text_to_image_r10"} <= set(clip)
    # Every accuracy has its 95 % bootstrap interval over the 96 test images, from the
    # per-image outcomes saved beside it.
    assert results["seeds"] == 1
    for run in results["runs"]:
        evaluation = run["evaluation"]
        compared = {"linear_top1", "knn_top1"} | ({"zero_shot_top1"} if run["label"] == "clip_shapes" else set())
        assert set(evaluation["intervals"]) == compared == set(evaluation["per_image_correct"])
        for name in compared:
            low, high = evaluation["intervals"][name]
            outcomes = evaluation["per_image_correct"][name]
            assert len(outcomes) == 96 and outcomes.count("1") / 96 == pytest.approx(evaluation["metrics"][name])
            assert low <= evaluation["metrics"][name] <= high and high - low > 0.05  # 96 images: wide
        assert results["groups"][run["group"]]["knn_top1"]["mean"] == evaluation["metrics"]["knn_top1"]
    # Every run trained the same budget, held by its BudgetKeeper (tests/test_budget.py holds
    # it to 5 %; here loosely, as steps of a toy run are a large part of 2 s on a busy CI
    # machine); the monitor's seconds are apart. Its recipe states the steps it ended with.
    for run in results["runs"][:4]:
        training = run["training"]
        assert training["train_seconds"] == pytest.approx(2.0, rel=0.3) and training["monitor_seconds"] > 0
        assert run["recipe"]["trainer"]["max_steps"] == training["steps"]
    budget_line = next(line for line in (bench_report / "report.md").read_text().splitlines() if line.startswith("- **Budget:**"))
    assert all(f"{run['group']}: {run['training']['steps']} steps" in budget_line for run in results["runs"][:4])
    assert "% of the budget" in budget_line

    plots = sorted(p.name for p in (bench_report / "plots").glob("*.png"))
    assert plots == sorted([
        "augmentation_gallery.png", "clip_similarity_clip_shapes.png", "loss_curves.png",
        "time_to_accuracy.png", "tsne.png",
    ])
    markdown = (bench_report / "report.md").read_text()
    for label in RUN_LABELS:  # a row in the results, the references (trained runs) and the diagnostics
        assert markdown.count(f"| {label} |") == (2 if label.startswith("random init") else 3)
    assert "## Published references" in markdown
    # Five runs make ten pairs, each marked distinguishable or not (96 test images: mostly not).
    comparisons = markdown.split("## Which differences are larger than the noise")[1].split("##")[0]
    assert comparisons.count(" vs ") == 10 and "not distinguishable at this budget" in comparisons
    assert "One seed per run" in markdown and "--seeds N" in markdown
    assert "| quickstart | – | none (shapes is generated by ssl_zoo; nothing is published on it) | – |" in markdown
    for plot in plots:
        assert f"(plots/{plot})" in markdown
    assert "## Reproduce" in markdown and "python -m ssl_zoo eval --ckpt" in markdown
    html = (bench_report / "report.html").read_text()
    assert html.count("<table>") == 4 and html.count('src="data:image/png;base64,') == len(plots)
    assert "src=\"plots/" not in html  # self-contained


def test_the_report_says_what_ran_it_and_where(bench_report):
    results = json.loads((bench_report / "results.json").read_text())
    versions, machine = results["versions"], results["machine"]
    source_root = Path(ssl_zoo.__file__).resolve().parent.parent
    if (source_root / ".git").exists():  # a checkout (CI's clone, a worktree): its commit
        assert re.fullmatch(r"[0-9a-f]{40}", versions["ssl_zoo_commit"]) and versions["ssl_zoo_dirty"] in (True, False)
    assert versions["ssl_zoo"] == ssl_zoo.__version__
    assert machine["cpu"] == cpu_model() and machine["cpu"] in results["device"]
    assert machine["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    peak = machine["peak_host_rss_gib"]
    assert 0.2 < peak["process"] < 64 and peak["largest_child"] is not None  # torch alone takes a few hundred MiB
    markdown = (bench_report / "report.md").read_text()
    assert f"- **Source:** ssl_zoo {ssl_zoo.__version__}, " in markdown
    assert f"- **Machine:** CPU: {cpu_model()}; GPU: " in markdown
    assert f"- **Peak memory:** host RSS {peak['process']:.2f} GiB (the bench process)" in markdown


def test_the_report_names_no_folder_of_this_machine(bench_report):
    """Paths are relative to the folder bench ran from: no absolute path, home or
    temporary folder anywhere in the report's files; the reproduce lines run from there."""
    results = json.loads((bench_report / "results.json").read_text())
    assert results["paths_relative_to"] == "the working directory bench ran from"
    assert " --out report " in results["command"]
    assert results["runs"][0]["training"]["checkpoint"] == "report/runs/quickstart/version_0/checkpoints/last.ckpt"
    machine_folders = {str(bench_report.parent), str(Path.home()), tempfile.gettempdir(), str(Path.cwd())}
    for name in ("results.json", "report.md", "report.html"):
        text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", (bench_report / name).read_text())  # embedded PNGs
        assert not [folder for folder in machine_folders if folder in text], name
        assert not re.findall(r"(?:^|[\s\"'(=])/\w[^\s\"']*", text), name  # an absolute path
    markdown = (bench_report / "report.md").read_text()
    assert "# run from the working directory bench ran from" in markdown
    assert "python -m ssl_zoo fit --recipe report/runs/quickstart/version_0/recipe.yaml" in markdown


def test_report_renders_in_headless_chromium(bench_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    # A copy of the report with a probe that records, once the page has loaded, how many
    # tables have rows and how many images decoded to a real size.
    probe = """<script>window.addEventListener('load', () => {
      const images = [...document.images];
      const decoded = images.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length;
      const rows = [...document.querySelectorAll('table')].map(t => t.rows.length);
      document.body.setAttribute('data-probe', JSON.stringify({images: images.length, decoded, rows}));
    });</script></body>"""
    page = tmp_path / "probe.html"
    page.write_text((bench_report / "report.html").read_text().replace("</body>", probe))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
    ]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r"data-probe=\"([^\"]+)\"", dom.stdout)
    assert found, dom.stderr[-2000:]
    probe_result = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe_result["images"] == 5 and probe_result["decoded"] == 5
    # Results and diagnostics: a header and every run; comparisons: a header and every pair;
    # published references: a header and every trained run (random init has no reference).
    pairs = len(RUN_LABELS) * (len(RUN_LABELS) - 1) // 2
    assert probe_result["rows"] == [len(RUN_LABELS) + 1, pairs + 1, len(RUN_LABELS), len(RUN_LABELS) + 1]
    # And a screenshot of the page as a reader sees it (kept beside the report).
    shot = bench_report / "screenshot.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1280,2400", f"--screenshot={shot}", (bench_report / "report.html").as_uri()],
        capture_output=True, timeout=180,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000  # a blank page compresses to a few KB


def test_an_earlier_bench_is_evaluated_again_without_retraining(bench_report):
    before = json.loads((bench_report / "results.json").read_text())
    checkpoints = {p: p.stat().st_mtime for p in bench_report.glob("runs/*/version_0/checkpoints/last.ckpt")}
    result = subprocess.run(
        [sys.executable, "-m", "ssl_zoo", "bench", "--from-results", str(bench_report / "results.json")],
        capture_output=True, text=True, timeout=600, cwd=bench_report.parent,  # its paths are relative to there
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training" not in result.stdout  # nothing retrained
    after = json.loads((bench_report / "results.json").read_text())
    assert [r["label"] for r in after["runs"]] == RUN_LABELS and after["command"] == before["command"]
    for old, new in zip(before["runs"], after["runs"]):
        assert new["training"] == old["training"]
        # Same weights, same images: the same numbers, from cached features.
        assert new["evaluation"]["metrics"] == pytest.approx(old["evaluation"]["metrics"], abs=1e-6)
        if new["training"] is not None:
            assert new["evaluation"]["feature_cache"]["misses"] == 0
    assert checkpoints == {p: p.stat().st_mtime for p in checkpoints}


# Two seeds of one recipe, an epoch each: two short training runs (checkpointed every 2 of
# their 4 steps, so that a run cut short has a checkpoint to go on from).
SEEDS_ARGS = [
    "--recipes", "quickstart", "--seeds", "2", "--no-baselines", "--epochs", "1",
    "--max-test", "96", "--data.num_images", "192", "--data.batch_size", "48", "--data.knn_bank_size", "96",
    "--trainer.accelerator", "cpu", "--trainer.checkpoint_every_n_steps", "2",
]


@pytest.fixture(scope="module")
def seeds_bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seeds") / "seeds"
    result = subprocess.run([sys.executable, "-m", "ssl_zoo", "bench", *SEEDS_ARGS, "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Not a terminal: one progress line per stage on stderr, with the run, elapsed time and ETA.
    stages = [line for line in result.stderr.splitlines() if line.startswith("[bench] [")]
    assert len(stages) == 2 + 4 + 1 and "\r" not in result.stderr
    assert "training run 2 of 2 (quickstart seed 1)" in stages[1] and "evaluation 4 of 4" in stages[5]
    assert all(re.search(r"\d+:\d\d elapsed · (~\d+:\d\d left|time left known after the first run)", s) for s in stages)
    return out


def test_seeds_train_each_recipe_again_and_report_mean_and_std(seeds_bench):
    out = seeds_bench
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["runs"]] == [
        "quickstart seed 0", "quickstart seed 1", "random init (convnet4) seed 0", "random init (convnet4) seed 1",
    ]
    assert [r["recipe"]["trainer"]["seed"] for r in results["runs"]] == [0, 1, 0, 1]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["quickstart_seed0", "quickstart_seed1"]
    knn = [r["evaluation"]["metrics"]["knn_top1"] for r in results["runs"][:2]]
    assert knn[0] != knn[1] or results["runs"][0]["evaluation"]["per_image_correct"] != results["runs"][1]["evaluation"]["per_image_correct"]
    group = results["groups"]["quickstart"]["knn_top1"]
    assert group["seeds"] == 2 and group["mean"] == pytest.approx(sum(knn) / 2)
    assert group["std"] == pytest.approx(abs(knn[0] - knn[1]) / 2 ** 0.5)
    markdown = (out / "report.md").read_text()
    assert "## Across 2 seeds" in markdown and "| quickstart | 2 | " in markdown and " ± " in markdown
    assert "| quickstart vs random init (convnet4) |" in markdown


def _without_timings(results: dict) -> dict:
    """results.json less what differs between two benches of the same runs: when and how fast
    they ran, the memory they took."""
    results = {k: v for k, v in results.items() if k not in ("created", "bench_seconds", "machine")}
    for run in results["runs"]:
        if run["training"]:  # (the continued run's images/s covers its second try only)
            for key in ("wall_seconds", "images_per_second", "train_seconds", "monitor_seconds"):
                run["training"].pop(key)
        run["evaluation"].pop("seconds")
        if "checkpoint" in run["evaluation"]:  # its file also holds the loops' timings; the weights are compared apart
            run["evaluation"]["checkpoint"].pop("sha256")
        run["curves"]["knn_by_seconds"] = [value for _, value in run["curves"]["knn_by_seconds"]]
    return results


def test_a_bench_killed_in_its_second_run_resumes_to_the_same_results(seeds_bench, tmp_path, monkeypatch):
    from conftest import Crash, CrashAt

    import ssl_zoo.bench
    from ssl_zoo.cli import main

    trainings = []

    def fit_killed_in_second_run(recipe, **kwargs):  # before step 3 of 4, after the checkpoint of step 2
        trainings.append(recipe.name)
        crash = [CrashAt(3)] if len(trainings) == 2 else []
        return fit(recipe, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), *crash]})

    out = tmp_path / "seeds"
    monkeypatch.setattr(ssl_zoo.bench, "fit", fit_killed_in_second_run)
    with pytest.raises(Crash):
        main(["bench", *SEEDS_ARGS, "--out", str(out)])
    assert not (out / "results.json").exists() and (out / "runs/quickstart_seed1/version_0/checkpoints/last.ckpt").is_file()

    monkeypatch.setattr(ssl_zoo.bench, "fit", lambda recipe, **kwargs: trainings.append(kwargs["resume"]) or fit(recipe, **kwargs))
    assert main(["bench", "--resume", str(out)]) == 0
    # The first run was kept, the second went on from its checkpoint, in its own folder.
    assert trainings[2:] == [out / "runs/quickstart_seed1/version_0/checkpoints/last.ckpt"]
    assert sorted(p.name for p in (out / "runs/quickstart_seed1").iterdir()) == ["version_0"]
    resumed = json.loads((out / "results.json").read_text())
    unbroken = json.loads((seeds_bench / "results.json").read_text())
    assert _without_timings(resumed) == _without_timings(unbroken)
    weights = [torch.load(bench / "runs/quickstart_seed1/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
               for bench in (out, seeds_bench)]
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)  # the same weights, bit for bit


def test_budgets_parse_and_set_the_step_count():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    assert parse_budget("45") == 45
    for bad in ("ten minutes", "0m", "-5s", "5d"):
        with pytest.raises(RecipeError, match="not a duration"):
            parse_budget(bad)
    recipe = parse_recipe(["--recipe", "quickstart"])
    budgeted = _with_budget(recipe, steps_per_epoch=31, max_steps=600, epochs=None)
    assert budgeted.trainer.max_steps == 600 and budgeted.trainer.max_epochs == -1
    assert budgeted.trainer.val_every_n_steps == 100 and budgeted.trainer.log_every_n_steps == 6
    by_epochs = _with_budget(recipe, steps_per_epoch=31, max_steps=None, epochs=12)
    assert by_epochs.trainer.max_epochs == 12 and by_epochs.trainer.check_val_every_n_epoch == 2
    assert by_epochs.trainer.log_every_n_steps == 3


def test_every_seed_of_a_recipe_trains_the_steps_its_first_seed_ended_with(tmp_path, monkeypatch):
    import ssl_zoo.bench

    speeds = iter([12.5, 7.25])  # one measurement per recipe (a third would raise StopIteration)
    measured = []

    def measure(recipe, datamodule, seconds):
        measured.append((recipe.name, seconds))
        return next(speeds)

    monkeypatch.setattr(ssl_zoo.bench, "measure_steps_per_second", measure)
    config = BenchConfig(recipes=[], out=tmp_path, budget_seconds=40.0, seeds=2)
    state = BenchState(tmp_path / "bench_state.json", config={})
    progress = type("Quiet", (), {"say": lambda self, text: None})()
    quick, slow = (parse_recipe(["--recipe", "quickstart", "--name", name]) for name in ("quick", "slow"))
    runs = seeded_runs("quick", "method", quick, 2) + seeded_runs("slow", "method", slow, 2)
    # The first seed starts from 40 s x 12.5 steps/s and holds the budget (BudgetKeeper);
    # say it ended at 530 steps: the second seed trains those.
    assert _fitted_steps(runs[0], config, state, None, progress) == 500
    assert state.fitted_steps["quick"] == {"steps_per_second": 12.5, "kept_by": "quick seed 0", "steps": 500, "fixed": False}
    state.fitted_steps["quick"].update(steps=530, fixed=True)
    assert _fitted_steps(runs[1], config, state, None, progress) == 530
    assert [_fitted_steps(run, config, state, None, progress) for run in runs[2:]] == [290, 290]  # 40 s x 7.25
    assert measured == [("quick_seed0", 1.0), ("slow_seed0", 1.0)]  # once a recipe, for 2 % of the budget (>= 1 s)
    assert [run.steps_per_second for run in runs] == [12.5] * 2 + [7.25] * 2
    state.save()  # kept for bench --resume
    assert BenchState.load(tmp_path).fitted_steps == state.fitted_steps
    assert measurement_seconds(90) == 1.8 and measurement_seconds(600) == 12.0 and measurement_seconds(3600) == 30.0
    assert _fitted_steps(runs[0], BenchConfig(recipes=[], out=tmp_path, epochs=3), state, None, progress) is None


def test_the_budget_line_says_how_the_steps_were_set_then_and_now():
    budget = {"mode": "wall_clock", "seconds": 90.0, "epochs": None}
    old = [{"group": "a", "training": {"steps": 500}}]  # results.json from before held budgets
    assert "step count fitted to the budget" in budget_text(budget, old) and "holds" not in budget_text(budget, old)
    held = [{"group": "a", "training": {"steps": 500, "train_seconds": 89.5}},
            {"group": "b", "training": {"steps": 700, "train_seconds": 90.9}}, {"group": "random", "training": None}]
    line = budget_text(budget, held)
    assert "holds the budget" in line and "a: 500 steps, b: 700 steps" in line
    assert line.endswith("Training took 89.5–90.9 s (-0.6 % to +1.0 % of the budget)")
    assert budget_text({"mode": "epochs", "seconds": None, "epochs": 3}, held) == "equal epochs: 3"


def test_bench_rejects_an_unknown_option(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ssl_zoo", "bench", "--recipes", "quickstart", "--bugdet", "1m", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "unknown option --bugdet" in result.stderr and "Traceback" not in result.stderr


def reference_run(recipe_name: str, metrics: dict, epochs: int | None = None, **evaluation) -> dict:
    """A results.json run entry of the bundled recipe, trained for its reference's epochs
    unless told, with the evaluation's ``metrics`` and other keys (``data``, ``linear``)."""
    from ssl_zoo.recipe import recipe_to_dict

    recipe = parse_recipe(["--recipe", recipe_name])
    return {"label": recipe_name, "kind": "method", "recipe": recipe_to_dict(recipe),
            "training": {"epochs": recipe.reference.epochs if epochs is None else epochs},
            "evaluation": {"metrics": metrics, **evaluation}}


def compared(run: dict) -> list[str]:
    from ssl_zoo.report import reference_rows

    (row,) = reference_rows([run])[1]
    return row


CIFAR_FULL = {"num_train": 50_000, "num_test": 10_000, "full_train": 50_000, "full_test": 10_000}
IN100_FULL = {"num_train": 126_689, "num_test": 5_000, "full_train": 126_689, "full_test": 5_000}
PROBE_FULL = {"protocol": "probe", "source": "byol_resnet18_imagenet100", "epochs": 100, "full_epochs": 100}


def test_a_run_shorter_than_its_reference_is_not_compared():
    short = compared(reference_run("simclr_resnet18_cifar10", {"knn_top1": 0.80}, epochs=3, data=CIFAR_FULL))
    assert short[1] == "80.0" and short[3] == "not compared: this run trained 3 of the reference's 200 epochs"
    full = compared(reference_run("simclr_resnet18_cifar10", {"knn_top1": 0.80}, data=CIFAR_FULL))
    assert "kNN top-1 84.8 %" in full[2] and full[3] == "-4.8 points"


def test_a_knn_number_on_part_of_a_split_is_not_compared():
    part = compared(reference_run("simclr_resnet18_cifar10", {"knn_top1": 0.80}, data={**CIFAR_FULL, "num_test": 2_000}))
    assert part[1] == "80.0" and part[3] == "not compared: 2,000 of 10,000 test images"
    bank = compared(reference_run("simclr_resnet18_cifar10", {"knn_top1": 0.80}, data={**CIFAR_FULL, "num_train": 5_000}))
    assert bank[3] == "not compared: 5,000 of 50,000 training images"
    # Results written before evaluation recorded the full split sizes.
    older = compared(reference_run("simclr_resnet18_cifar10", {"knn_top1": 0.80},
                                   data={"num_train": 50_000, "num_test": 10_000}))
    assert older[3] == "not compared: split size unknown"


def test_a_linear_number_is_compared_only_with_the_references_protocol():
    features = {"protocol": "features", "source": "byol_resnet18_imagenet100", "epochs": None, "full_epochs": None}
    other = compared(reference_run("byol_resnet18_imagenet100", {"linear_top1": 0.79}, data=IN100_FULL, linear=features))
    assert other[3] == "not compared: linear top-1 from the features protocol, the reference used the probe"
    # Results from before --protocol probe existed carry no 'linear': the features protocol made them.
    older = compared(reference_run("byol_resnet18_imagenet100", {"linear_top1": 0.79}, data=IN100_FULL))
    assert older[3] == other[3]
    same = compared(reference_run("byol_resnet18_imagenet100", {"linear_top1": 0.79}, data=IN100_FULL, linear=PROBE_FULL))
    assert "probe protocol" in same[2] and same[3] == "-1.3 points"


def test_a_probe_on_part_of_the_split_or_epochs_is_not_compared():
    subset = compared(reference_run("byol_resnet18_imagenet100", {"linear_top1": 0.79},
                                    data={**IN100_FULL, "num_test": 1_000}, linear=PROBE_FULL))
    assert subset[3] == "not compared: 1,000 of 5,000 test images"
    short = compared(reference_run("byol_resnet18_imagenet100", {"linear_top1": 0.79}, data=IN100_FULL,
                                   linear={**PROBE_FULL, "epochs": 2}))
    assert short[1] == "79.0" and short[3] == "not compared: probe trained 2 of 100 epochs"


def test_a_missing_metric_is_said():
    row = compared(reference_run("simclr_resnet18_cifar10", {"linear_top1": 0.80}, data=CIFAR_FULL))
    assert row[1] == "–" and row[3] == "not compared: this evaluation has no kNN top-1"


def test_a_zero_shot_number_needs_only_the_whole_test_split():
    """Zero-shot learns nothing from the training split, so only the test split's size counts."""
    run = reference_run("clip_resnet18_flickr8k", {"zero_shot_top1": 0.30}, epochs=32,
                        data={**CIFAR_FULL, "num_train": 0})
    run["recipe"]["reference"] = {"metric": "zero_shot_top1", "value": 33.0, "dataset": "CIFAR-10 test",
                                  "epochs": 32, "source": "a paper"}
    assert compared(run)[3] == "-3.0 points"
    run["evaluation"]["data"]["num_test"] = 500
    assert compared(run)[3] == "not compared: 500 of 10,000 test images"
