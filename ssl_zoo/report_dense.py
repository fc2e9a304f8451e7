"""The report's dense zero-shot section: a table of mean IoU and pixel accuracy beside
chance and the supervised probe, and for each run a grid of test images, their masks and
the predicted class maps. Drawn only where a run was scored with ``--dense``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ssl_zoo.eval.dense import decode_grid  # noqa: E402

ROWS = (("images", "image"), ("truth", "mask"), ("zero_shot", "zero-shot"), ("probe", "linear probe"))


def _dense_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [run for run in runs if "dense_miou" in run["evaluation"]["metrics"]]


def dense_tables(runs: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Title -> (header, rows): one row per run scored with ``--dense``; nothing when none was."""
    scored = _dense_runs(runs)
    if not scored:
        return {}
    header = ["run", "zero-shot mIoU", "zero-shot pixel acc", "chance mIoU", "chance pixel acc",
              "linear probe mIoU", "linear probe pixel acc"]
    rows = []
    for run in scored:
        m = run["evaluation"]["metrics"]
        rows.append([run["label"], *(f"{100 * m[f'dense{part}_{score}']:.1f} %"
                                     for part in ("", "_chance", "_probe") for score in ("miou", "pixel_acc"))])
    return {"Dense zero-shot segmentation (masks, background its own class)": (header, rows)}


def dense_plots(runs: list[dict[str, Any]], plots_dir: Path) -> dict[str, tuple[Path, str]]:
    """Title -> (PNG, caption), one grid per run scored with ``--dense``."""
    plots = {}
    for run in _dense_runs(runs):
        dense = run["evaluation"]["dense"]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run["label"]).strip("_")  # a file name from any label
        path = plot_dense_grid(dense, run["label"], plots_dir / f"dense_{name}.png")
        caption = (
            f"The first {dense['grid']['count']} test images, their masks, and the class of each pixel as {run['label']}'s "
            f"nearest class prompt gives it (zero-shot: no mask was seen in training) and as a linear probe trained on the "
            f"training masks gives it. Background: {dense['background']}. Scores in the table above."
        )
        plots[f"Dense zero-shot segmentation ({run['label']})"] = (path, caption)
    return plots


def plot_dense_grid(dense: dict[str, Any], label: str, path: Path) -> Path:
    """Rows: images, masks, zero-shot maps, probe maps; one colour per class, background near black."""
    grid, classes = decode_grid(dense["grid"]), dense["classes"]
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(classes) - 1)] + [(0.1, 0.1, 0.1, 1.0)]
    cmap = ListedColormap(colours)
    count = dense["grid"]["count"]
    figure, axes = plt.subplots(len(ROWS), count, figsize=(1.2 * count + 1.8, 1.25 * len(ROWS)), squeeze=False)
    for (key, title), row_axes in zip(ROWS, axes):
        for ax, values in zip(row_axes, grid[key]):
            if key == "images":
                ax.imshow(values.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.imshow(values.numpy(), cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row_axes[0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours]
    figure.legend(handles, classes, loc="lower center", ncol=min(len(classes), 5), fontsize=7, frameon=False)
    figure.suptitle(f"Dense zero-shot segmentation: {label}", fontsize=11)
    figure.subplots_adjust(bottom=0.16)
    from ssl_zoo.report import _save  # the report's atomic PNG writer

    return _save(figure, path)
