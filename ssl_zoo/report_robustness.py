"""The report's "beyond top-1" part: few-shot probes and distribution shift, from the
results of ``eval --few-shot`` / ``--shifts`` (bench passes them on as run evaluations).

Tables: few-shot top-1 per k; top-1 on each shifted set. Plots: few-shot top-1 against k
with each text model's zero-shot level; shifted against in-distribution top-1 per run (the
effective-robustness picture of Radford et al. 2021, Fig. 13, and Taori et al. 2020).
Nothing here trains or evaluates a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ssl_zoo.eval.corruptions import CORRUPTIONS  # noqa: E402
from ssl_zoo.eval.shift import PROTOCOLS  # noqa: E402

PROTOCOL_NAMES = {"linear_top1": "linear", "knn_top1": "kNN", "zero_shot_top1": "zero-shot"}
MARKERS = {"linear_top1": "o", "knn_top1": "^", "zero_shot_top1": "*"}


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "–"


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- few-shot


def few_shot_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per run: top-1 per k (mean of the draws [95 % interval]), full linear, zero-shot, and
    the k at which the probe matches zero-shot."""
    scored = [run for run in runs if run["evaluation"].get("few_shot")]
    shots = scored[0]["evaluation"]["few_shot"]["shots"]
    header = ["run", *[f"k={k}" for k in shots], "all labels (linear)", "zero-shot", "k matching zero-shot"]
    rows = []
    for run in scored:
        result, metrics = run["evaluation"]["few_shot"], run["evaluation"]["metrics"]
        cells = [f"{_percent(v['mean'])} [{_percent(v['interval'][0])}–{_percent(v['interval'][1])}]"
                 for v in result["top1"].values()]
        rows.append([run["label"], *cells, _percent(metrics.get("linear_top1")), _percent(metrics.get("zero_shot_top1")),
                     matching_text(result)])
    return header, rows


def matching_text(few_shot: dict[str, Any]) -> str:
    """'4.6 (first k at or above: 8)', '<= 1', '> 16', or '–' for a model without text."""
    if "matches_zero_shot" not in few_shot:
        return "–"
    matched, shots = few_shot["matches_zero_shot"], few_shot["shots"]
    if matched["first_k"] is None:
        return f"> {shots[-1]}"
    if matched["first_k"] == shots[0]:
        return f"<= {shots[0]}"
    return f"{matched['interpolated_k']:.1f} (first k at or above: {matched['first_k']})"


def plot_few_shot(runs: list[dict[str, Any]], path: Path) -> Path:
    scored = [run for run in runs if run["evaluation"].get("few_shot")]
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for i, run in enumerate(scored):
        colour = f"C{i}"
        result = run["evaluation"]["few_shot"]
        shots = [int(k) for k in result["top1"]]
        means = [100 * v["mean"] for v in result["top1"].values()]
        low = [m - 100 * v["interval"][0] for m, v in zip(means, result["top1"].values())]
        high = [100 * v["interval"][1] - m for m, v in zip(means, result["top1"].values())]
        axes.errorbar(shots, means, yerr=[low, high], marker="o", capsize=3, color=colour, label=run["label"])
        if "zero_shot_top1" in result:
            axes.axhline(100 * result["zero_shot_top1"], color=colour, linestyle="--", label=f"{run['label']}: zero-shot")
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(k) for k in shots])
    axes.set_xlabel("labelled training images per class (k)")
    axes.set_ylabel("test top-1 (%)")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def few_shot_caption(runs: list[dict[str, Any]]) -> str:
    result = next(run["evaluation"]["few_shot"] for run in runs if run["evaluation"].get("few_shot"))
    return (
        f"Logistic regression on the frozen features of k labelled training images per class, scored on the whole "
        f"test split; each point is the mean of {result['draws']} seeded draws of the k images, its bar the 95 % "
        f"interval over the draws (Student's t), which measures which images were drawn. One L2 penalty "
        f"({result['weight_decay']:g}) for every k and features standardised with the whole training split's "
        "statistics: k images per class leave nothing to choose a penalty on. Dashed: a text model's zero-shot "
        "top-1, which uses no labelled image; the table's 'k matching zero-shot' is interpolated in log k between "
        "the first k whose mean reaches it and the k before."
    )


# ----------------------------------------------------------------------------- shift


def _shift_columns(shift: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Column name -> top-1 per protocol: the test split, each shapes shift, each corruption
    (mean of its severities), and all corruptions' mean."""
    columns = {"test split": shift["in_distribution"]}
    sets = shift["sets"]
    columns.update({name: s for name, s in sets.items() if s["family"] == "shapes"})
    for corruption in CORRUPTIONS:
        levels = [s for s in sets.values() if s.get("corruption") == corruption]
        columns[corruption] = {p: sum(s[p] for s in levels) / len(levels) for p in PROTOCOLS if p in levels[0]}
    columns["corruptions (mean)"] = shift["corruption_mean"]
    return columns


def chance(run: dict[str, Any]) -> float | None:
    """Top-1 of a guess, 1 / classes, where the run's results name the classes."""
    classes = run["evaluation"].get("data", {}).get("classes")
    return 1 / len(classes) if classes else None


def kept_above_chance(shifted: float, test: float, guess: float | None) -> str:
    """The share of the test split's top-1 above chance that a shifted set keeps: 1 loses
    nothing, 0 falls to chance. Near chance on the test split it means nothing ('–')."""
    guess = guess or 0.0
    return f"{(shifted - guess) / (test - guess):.2f}" if test - guess > 0.05 else "–"


def shift_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per run and protocol: top-1 on the test split and on each shifted set, and the share of
    its test-split top-1 above chance that the shapes shifts and the corruptions keep."""
    scored = [run for run in runs if run["evaluation"].get("shift")]
    columns = list(_shift_columns(scored[0]["evaluation"]["shift"]))
    header = ["run", "protocol", *columns, "kept: shapes shifts", "kept: corruptions"]
    rows = []
    for run in scored:
        shift = run["evaluation"]["shift"]
        by_column = _shift_columns(shift)
        for protocol in PROTOCOLS:
            if protocol not in shift["in_distribution"]:
                continue
            test = shift["in_distribution"][protocol]
            kept = []
            for family in ("shapes", "corruption"):
                shifted = [s[protocol] for s in shift["sets"].values() if s["family"] == family]
                kept.append(kept_above_chance(sum(shifted) / len(shifted), test, chance(run)) if shifted else "–")
            rows.append([run["label"], PROTOCOL_NAMES[protocol], *[_percent(c.get(protocol)) for c in by_column.values()],
                         *kept])
    return header, rows


def severity_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Linear top-1 per corruption and severity, per run."""
    scored = [run for run in runs if run["evaluation"].get("shift")]
    sets = [s for s in scored[0]["evaluation"]["shift"]["sets"].values() if s["family"] == "corruption"]
    header = ["run", "test split", *[f"{s['corruption']} {s['severity']}" for s in sets]]
    rows = [[run["label"], _percent(run["evaluation"]["shift"]["in_distribution"]["linear_top1"]),
             *[_percent(run["evaluation"]["shift"]["sets"][s["name"]]["linear_top1"]) for s in sets]] for run in scored]
    return header, rows


def plot_effective_robustness(runs: list[dict[str, Any]], path: Path) -> Path:
    scored = [run for run in runs if run["evaluation"].get("shift")]
    panels = [c for c in _shift_columns(scored[0]["evaluation"]["shift"]) if c != "test split" and c not in CORRUPTIONS]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1)  # no loss under shift
        if chance(scored[0]) is not None:
            ax.axhline(100 * chance(scored[0]), color="grey", linestyle=":", linewidth=1)  # a guess
        for i, run in enumerate(scored):
            shift = run["evaluation"]["shift"]
            shifted = _shift_columns(shift)[panel]
            for protocol in PROTOCOLS:
                if protocol in shifted:
                    ax.scatter(100 * shift["in_distribution"][protocol], 100 * shifted[protocol], color=f"C{i}",
                               marker=MARKERS[protocol], s=60 if protocol == "zero_shot_top1" else 30,
                               label=f"{run['label']} ({PROTOCOL_NAMES[protocol]})")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("test split top-1 (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("shifted top-1 (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7)
    return _save(figure, path)


def effective_robustness_caption(runs: list[dict[str, Any]]) -> str:
    return (
        "Each point is one run's top-1 on a shifted set (y) against its top-1 on the test split (x): circles the "
        "linear classifier fitted on the training distribution, triangles the kNN vote over the training features, "
        "stars zero-shot; all three are applied to the shifted images unchanged. On the dashed line a shift costs "
        "nothing; the dotted line is chance. A model is effectively robust when it lies above the line the other models draw, that is, keeps "
        "more accuracy than its test-split top-1 predicts (CLIP's claim for zero-shot on ImageNet's shifts). "
        "Shapes shifts: outline sketches on plain paper, hatched shapes in colours outside the training palette on "
        "concentric-ring backgrounds, shapes smaller or larger than any trained size; corruptions: Gaussian noise, "
        "blur, contrast and JPEG at 3 severities (CIFAR-10-C's severities 1, 3 and 5), averaged. The table's "
        "'kept' columns give (shifted top-1 - chance) / (test-split top-1 - chance), averaged over the sets."
    )


def robustness_tables(runs: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The few-shot and shift tables (title -> (header, rows)), where any run has them."""
    tables = {}
    if any(run["evaluation"].get("few_shot") for run in runs):
        tables["Few-shot linear probe (top-1 %, mean of the draws [95 % interval])"] = few_shot_rows(runs)
    if any(run["evaluation"].get("shift") for run in runs):
        tables["Distribution shift (top-1 %; corruptions: mean of 3 severities)"] = shift_rows(runs)
        tables["Corruptions by severity (linear top-1 %)"] = severity_rows(runs)
    return tables


def robustness_plots(runs: list[dict[str, Any]], plots_dir: Path) -> dict[str, tuple[Path, str]]:
    """The few-shot and effective-robustness plots (title -> (PNG, caption)), where any run has them."""
    plots = {}
    if any(run["evaluation"].get("few_shot") for run in runs):
        plots["Few-shot top-1 against labelled images per class"] = (
            plot_few_shot(runs, plots_dir / "few_shot.png"), few_shot_caption(runs))
    if any(run["evaluation"].get("shift") for run in runs):
        plots["Effective robustness: shifted against test-split top-1"] = (
            plot_effective_robustness(runs, plots_dir / "effective_robustness.png"), effective_robustness_caption(runs))
    return plots
