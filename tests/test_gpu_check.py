"""benchmarks/gpu_check.py runs every section in its CPU form, so the GPU check cannot rot."""

import json
import math
import tempfile
from pathlib import Path

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def numbers(values: dict) -> list[float]:
    """The measured figures of a row (lists of losses included)."""
    found = []
    for value in values.values():
        items = value if isinstance(value, list) else [value]
        found += [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return found


@pytest.mark.slow
def test_quick_cpu_run_reports_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    results = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    table = capsys.readouterr().out

    rows = results["rows"]
    assert json.loads(out.read_text())["rows"] == rows  # the file holds what was returned
    by_section = {name: [row for row in rows if row["section"] == name] for name in gpu_check.SECTIONS}
    expected = {
        "throughput": 6,  # full/model and full/lightly for each of 3 methods
        "decode": 2,
        "recipes": 2 * len(gpu_check.IMAGENET_RECIPES),  # step and loss per recipe
        "hold_on_device": 2,
        "host_syncs": 3 * len(gpu_check.OPTIMIZERS),
        "eval": 4,  # features, kNN, linear, one epoch of the probe
    }
    assert {name: len(section) for name, section in by_section.items()} == expected
    for row in rows:
        # Measured, not skipped by a budget, not an error, and no placeholder: finite figures.
        assert row["status"] in ("PASS", "FAIL", "INFO"), row
        assert "error" not in row["values"], row
        figures = numbers(row["values"])
        assert figures and all(math.isfinite(f) for f in figures), row
        assert f"| {row['section']} | {row['name']} | {row['measured']} |" in table
    for name in ("throughput", "decode", "eval"):  # rates and ratios: positive
        assert all(max(numbers(row["values"])) > 0 for row in by_section[name])

    # On the CPU no GPU target is judged; the host-sync counts and finite losses are.
    gpu_targets = by_section["throughput"] + by_section["decode"] + by_section["hold_on_device"]
    assert all(row["status"] == "INFO" for row in gpu_targets)
    assert all(row["status"] in ("PASS", "FAIL") for row in by_section["host_syncs"])
    syncs = {row["name"]: row["values"]["host_syncs"] for row in by_section["host_syncs"]}
    assert syncs["simclr sgd"] == 0 and syncs["byol sgd"] == 0 and syncs["clip sgd"] == 0  # as tests/test_host_sync.py
    losses = [row for row in by_section["recipes"] if row["name"].endswith(": loss")]
    assert all(row["values"]["finite"] and len(row["values"]["losses"]) == 4 for row in losses)

    # No machine paths in the results.
    text = out.read_text()
    for path in (str(Path(__file__).resolve().parents[1]), tempfile.gettempdir(), str(Path.home())):
        assert path not in text, path
    assert results["device"] == "cpu" and "no row is a GPU figure" in results["note"]


def test_only_reruns_one_section_into_its_own_file(gpu_check, tmp_path):
    out = tmp_path / "hold.json"
    results = gpu_check.main(["--device", "cpu", "--quick", "--only", "hold_on_device", "--out", str(out)])
    assert {row["section"] for row in results["rows"]} == {"hold_on_device"}
    streamed = next(row for row in results["rows"] if row["name"].startswith("streamed"))
    # The decision for a CUDA device whose free memory is too small: stream, and say so.
    assert streamed["values"]["device"] == "cpu" and streamed["values"]["printed"] is True
    assert results["command"] == "python benchmarks/gpu_check.py --device cpu --quick --only hold_on_device"


def test_budget_spent_marks_the_rest_skipped(gpu_check, tmp_path):
    check = gpu_check.Check(gpu_check.torch.device("cpu"), quick=True, tmp=tmp_path)
    section = gpu_check.Section("eval", budget_s=0.0, check=check)
    section.attempt("never", lambda: pytest.fail("a spent budget must not start a check"))
    assert [row.status for row in section.rows] == ["SKIP"]


def test_a_failing_check_is_a_fail_row_without_machine_paths(gpu_check, tmp_path):
    check = gpu_check.Check(gpu_check.torch.device("cpu"), quick=True, tmp=tmp_path)
    section = gpu_check.Section("decode", budget_s=60.0, check=check)

    def broken():
        raise RuntimeError(f"CUDA out of memory reading {tmp_path / 'shard-000000.tar'}")

    section.attempt("broken", broken)
    (row,) = section.rows
    assert row.status == "FAIL" and str(tmp_path) not in row.measured and "<tmp>" in row.values["error"]


def test_gpu_slug_and_budgets(gpu_check):
    assert gpu_check.device_slug(gpu_check.torch.device("cpu")) == "cpu"
    assert sum(gpu_check.FULL_BUDGETS.values()) <= 8 * 60  # a minute of the 9 left for start-up and the table
    assert set(gpu_check.FULL_BUDGETS) == set(gpu_check.SECTIONS) == set(gpu_check.QUICK_BUDGETS)
