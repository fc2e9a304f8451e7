"""`bench` end to end on shapes with a tiny budget: every file, table and plot, and the
HTML report as a browser renders it."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from ssl_zoo.bench import _with_budget, parse_budget
from ssl_zoo.errors import RecipeError
from ssl_zoo.recipe import parse_recipe

RECIPES = ["quickstart", "byol_shapes", "clip_shapes"]
RUN_LABELS = RECIPES + ["supervised (resnet18)", "random init (resnet18)"]


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    args = [
        "bench", "--recipes", *RECIPES, "--budget", "2s", "--out", str(out), "--max-test", "96",
        "--data.num_images", "384", "--data.batch_size", "48", "--data.knn_bank_size", "256",
        "--trainer.accelerator", "cpu",
    ]
    result = subprocess.run([sys.executable, "-m", "ssl_zoo", *args], capture_output=True, text=True, timeout=900)
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
    # Every run trained the same budget: step counts follow each method's measured speed.
    measured = [run["training"]["steps_per_second_measured"] for run in results["runs"][:4]]
    steps = [run["training"]["steps"] for run in results["runs"][:4]]
    assert steps == [max(int(2.0 * rate), 1) for rate in measured]

    plots = sorted(p.name for p in (bench_report / "plots").glob("*.png"))
    assert plots == sorted([
        "augmentation_gallery.png", "clip_similarity_clip_shapes.png", "loss_curves.png",
        "time_to_accuracy.png", "tsne.png",
    ])
    markdown = (bench_report / "report.md").read_text()
    for label in RUN_LABELS:
        assert markdown.count(f"| {label} |") == 2  # a row in the results and in the diagnostics table
    for plot in plots:
        assert f"(plots/{plot})" in markdown
    assert "## Reproduce" in markdown and "python -m ssl_zoo eval --ckpt" in markdown
    html = (bench_report / "report.html").read_text()
    assert html.count("<table>") == 2 and html.count('src="data:image/png;base64,') == len(plots)
    assert "src=\"plots/" not in html  # self-contained


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
    assert probe_result["rows"] == [len(RUN_LABELS) + 1] * 2
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
        capture_output=True, text=True, timeout=600,
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


def test_bench_rejects_an_unknown_option(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ssl_zoo", "bench", "--recipes", "quickstart", "--bugdet", "1m", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "unknown option --bugdet" in result.stderr and "Traceback" not in result.stderr
