"""The benchmark report: report.md (plots as PNG files) and a self-contained report.html
(plots embedded), rendered from what ``bench`` gathered: its results (results.json, as a
dict) and the arrays its figures show (``ReportFigures``). Nothing here trains, loads or
evaluates a model."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssl_zoo.atomic import atomic_path, atomic_write  # noqa: E402
from ssl_zoo.eval.confidence import COMPARED_METRICS, RESAMPLES, intervals_overlap  # noqa: E402
from ssl_zoo.eval.zero_shot import DEFAULT_TEMPLATES  # noqa: E402
from ssl_zoo.recipe import METRIC_NAMES, ReferenceConfig  # noqa: E402
from ssl_zoo.report_robustness import robustness_plots, robustness_tables  # noqa: E402


@dataclass
class Similarity:
    """A text method's cosine similarities of test images and their first captions."""

    label: str  # the run's
    name: str  # its recipe's (names the plot's file)
    images: torch.Tensor  # uint8 (N, 3, H, W)
    captions: list[str]  # N
    matrix: torch.Tensor  # (N images, N captions)


@dataclass
class ReportFigures:
    """The arrays the report's plots show, gathered by ``bench``."""

    tsne_features: dict[str, torch.Tensor]  # run label -> (N, D) test features of a seeded sample
    tsne_labels: torch.Tensor  # (N,) their classes
    classes: list[str]
    gallery: list[tuple[str, torch.Tensor]]  # row title -> (N, H, W, 3) pixels in [0, 1]
    similarities: list[Similarity] = field(default_factory=list)


# ----------------------------------------------------------------------------- plots


def _save(figure: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as partial:  # the format from the final name: the temporary one has no suffix
        figure.savefig(partial, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_losses(runs: list[dict[str, Any]], path: Path) -> Path:
    trained = [r for r in runs if r["training"] is not None]
    figure, axes = plt.subplots(1, len(trained), figsize=(3.6 * len(trained), 3), squeeze=False)
    for ax, run in zip(axes[0], trained):
        steps, values = zip(*run["curves"]["loss"]) if run["curves"]["loss"] else ((), ())
        ax.plot(steps, values, color="tab:blue")
        ax.set_title(run["label"], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    figure.suptitle("Training loss (each method's own objective)", fontsize=11, y=1.03)
    return _save(figure, path)


def plot_time_to_accuracy(runs: list[dict[str, Any]], path: Path) -> Path:
    figure, ax = plt.subplots(figsize=(6.5, 4))
    for run in runs:
        if run["training"] is not None and run["curves"]["knn_by_seconds"]:
            seconds, values = zip(*run["curves"]["knn_by_seconds"])
            ax.plot(seconds, [100 * v for v in values], marker="o", label=run["label"])
    # Each curve starts at its random-init backbone (the monitor scores it before step 1).
    ax.set_xlabel("wall-clock seconds since the run started")
    ax.set_ylabel("kNN top-1 (%), training monitor")
    ax.set_title("Time to accuracy", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_tsne(figures: ReportFigures, path: Path) -> Path:
    from sklearn.manifold import TSNE

    shown = list(figures.tsne_features)
    classes = figures.classes
    columns = min(len(shown), 3)
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, label in zip(axes.flat, shown):
        x = F.normalize(figures.tsne_features[label].float(), dim=1).cpu().numpy()
        perplexity = min(30.0, (len(x) - 1) / 3)
        # NOTE: 500 iterations, not sklearn's 1,000: on 1,000 points in 8 clusters the final KL
        # was 1.02 against 1.00 and the trustworthiness (10 neighbours) 0.969 for both, and
        # the default bench's report spends about 7 s less on its five maps.
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=0).fit_transform(x)
        ax.scatter(points[:, 0], points[:, 1], c=figures.tsne_labels.numpy(), cmap=colours, s=4, vmin=0, vmax=colours.N - 1)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours(i), label=name) for i, name in enumerate(classes)]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(classes), 10), fontsize=8)
    figure.suptitle("t-SNE of test-set features, coloured by class", fontsize=11)
    figure.subplots_adjust(bottom=0.08 if rows > 1 else 0.14)
    return _save(figure, path)


def plot_gallery(rows: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """The same images, and the views each run's augmentation makes of them."""
    count = rows[0][1].shape[0]
    figure, axes = plt.subplots(len(rows), count, figsize=(1.1 * count + 1.5, 1.15 * len(rows)), squeeze=False)
    for (name, row), row_axes in zip(rows, axes):
        for ax, image in zip(row_axes, row):
            ax.imshow(image.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row_axes[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle("Augmentation gallery: the views each method trains on", fontsize=11)
    return _save(figure, path)


def plot_similarity(similarity: Similarity, path: Path) -> Path:
    """Cosine similarity of test images (columns, each under its thumbnail) and their first
    captions (rows)."""
    count, matrix, captions = len(similarity.captions), similarity.matrix, similarity.captions
    figure, ax = plt.subplots(figsize=(1.0 * count + 4, 1.0 * count + 1.6))
    shown = ax.imshow(matrix.T.numpy(), cmap="viridis")  # (captions, images): column i is image i
    # Each thumbnail drawn in the matrix's own coordinates, over its column, so that the
    # colour bar (which narrows the matrix) cannot shift them off their columns.
    for i, image in enumerate(similarity.images.permute(0, 2, 3, 1).numpy()):
        ax.imshow(image, extent=(i - 0.45, i + 0.45, -0.6, -1.5))
    ax.set_xlim(-0.5, count - 0.5)
    ax.set_ylim(count - 0.5, -1.55)
    ax.set_yticks(range(count), [c if len(c) < 48 else c[:45] + "..." for c in captions], fontsize=7)
    ax.set_xticks(range(count), [f"image {i + 1}" for i in range(count)], fontsize=7, rotation=45)
    for i in range(count):
        for j in range(count):
            ax.text(i, j, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    figure.colorbar(shown, ax=ax, fraction=0.03, label="cosine similarity")
    ax.set_title(f"{similarity.label}: image-caption similarity (diagonal = true pairs)", fontsize=10)
    return _save(figure, path)


# ----------------------------------------------------------------------------- captions
# Each plot's caption says what it shows and what it leaves out, and why.


def _untrained(runs: list[dict[str, Any]]) -> str:
    return ", ".join(run["label"] for run in runs if run["training"] is None)


def loss_caption(runs: list[dict[str, Any]]) -> str:
    left_out = _untrained(runs)
    return ("Each trained run's own objective, so the curves' heights are not comparable across methods."
            + (f" Not shown: {left_out} (not trained here, so no loss)." if left_out else ""))


def time_to_accuracy_caption(runs: list[dict[str, Any]]) -> str:
    """Which trained runs have no curve, and why: the kNN monitor needs labels in the run's
    own training data (a run on captioned photos, CLIP's, has none)."""
    from ssl_zoo.data.spec import dataset_spec

    reasons = []
    for run in runs:
        if run["training"] is None or run["curves"]["knn_by_seconds"]:
            continue
        data = run["recipe"]["data"]["name"]
        why = (f"its training data ({data}) has no class labels, so the kNN monitor did not run; the tables score it "
               "on the labelled evaluation data" if not dataset_spec(data).labelled else "no kNN monitor value was logged")
        reasons.append(f"{run['label']}: {why}")
    untrained = _untrained(runs)
    if untrained:
        reasons.append(f"{untrained}: not trained here (each curve starts at its run's random init)")
    return ("The kNN monitor during training, on each run's own validation subset and memory bank (a smaller, faster "
            "measure than the tables')."
            + (" Not shown: " + "; ".join(reasons) + "." if reasons else ""))


def tsne_caption(figures: ReportFigures, num_test: int) -> str:
    shown = len(figures.tsne_labels)
    sample = "every test image" if shown >= num_test else f"a seeded sample of {shown:,} of the {num_test:,} test images (t-SNE's time grows with the points)"
    return f"Every run's features of {sample}, each map fitted on its own: positions are not comparable across maps."


def gallery_caption(runs: list[dict[str, Any]], images: int) -> str:
    left_out = _untrained(runs)
    return (f"{images} test images and the views each trained run's augmentation makes of them."
            + (f" Not shown: {left_out} (not trained here, so no views)." if left_out else ""))


def similarity_caption(similarity: Similarity) -> str:
    return (f"The first {len(similarity.captions)} image-caption pairs of {similarity.label}'s retrieval split, each "
            "image with its first caption; the tables' recall uses every pair. Only trained runs with a text tower "
            "have this plot.")


# ----------------------------------------------------------------------------- tables


def _percent(metrics: dict[str, float], name: str) -> str:
    return f"{100 * metrics[name]:.1f}" if name in metrics else "–"


def _with_interval(result: dict[str, Any], name: str) -> str:
    """'45.3 [43.9, 46.7]': the accuracy and its 95 % bootstrap interval, in percent."""
    if name not in result["metrics"]:
        return "–"
    low, high = result.get("intervals", {}).get(name, (None, None))
    shown = _percent(result["metrics"], name)
    return shown if low is None else f"{shown} [{100 * low:.1f}, {100 * high:.1f}]"


def seed_rows(summaries: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "seeds"] + [f"{METRIC_NAMES[name]} mean ± std [95 % interval]" for name in COMPARED_METRICS]
    rows = []
    for group, metrics in summaries.items():
        cells = []
        for name in COMPARED_METRICS:
            if name not in metrics:
                cells.append("–")
                continue
            m = metrics[name]
            low, high = m["interval"]
            spread = f" ± {100 * m['std']:.1f}" if m["std"] is not None else ""
            cells.append(f"{100 * m['mean']:.1f}{spread} [{100 * low:.1f}, {100 * high:.1f}]")
        seeds = max((m["seeds"] for m in metrics.values()), default=0)
        rows.append([group, str(seeds), *cells])
    return header, rows


def comparison_rows(summaries: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Every pair of runs, per metric: the gap, and whether their 95 % intervals overlap."""
    header = ["pair"] + [METRIC_NAMES[name] for name in COMPARED_METRICS]
    groups = list(summaries)
    rows = []
    for i, first in enumerate(groups):
        for second in groups[i + 1:]:
            cells = []
            for name in COMPARED_METRICS:
                a, b = summaries[first].get(name), summaries[second].get(name)
                if a is None or b is None:
                    cells.append("–")
                elif intervals_overlap(a["interval"], b["interval"]):
                    cells.append(f"{100 * (a['mean'] - b['mean']):+.1f}: not distinguishable at this budget")
                else:
                    cells.append(f"{100 * (a['mean'] - b['mean']):+.1f}: {first if a['mean'] > b['mean'] else second} ahead")
            if any(cell != "–" for cell in cells):
                rows.append([f"{first} vs {second}", *cells])
    return header, rows


def _number(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "–"


def _trained_how(run: dict[str, Any]) -> str:
    """The method column: the method trained, or where the weights came from."""
    if run["training"] is not None:
        return run["recipe"]["method"]
    if run["kind"] == "imported":
        return f"imported ({run['evaluation']['weights']['source']})"
    return "none (untrained)"


def _seconds(training: dict[str, Any] | None, key: str) -> str:
    """A run's seconds of training or of its monitor; "–" where results predate them."""
    if training is None:
        return "0"
    return _number(training[key], 0) if training.get(key) else "–"


def budget_text(budget: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """What the runs were given, and, for a wall-clock budget, how closely their training
    time held to it and the steps each recipe was fitted."""
    if budget["mode"] != "wall_clock":
        return f"equal epochs: {budget['epochs'] if budget['epochs'] is not None else 'each recipe’s own'}"
    trained = [run for run in runs if run["training"] is not None]
    seconds = [run["training"]["train_seconds"] for run in trained if run["training"].get("train_seconds")]
    if not seconds:  # results from before budgets were held (ssl_zoo 2026-12-06): as they were made
        return (f"equal wall clock: {budget['seconds']:.0f} s of training steps per run (each run's speed measured "
                "first; its step count fitted to the budget, so schedules complete)")
    text = (f"equal wall clock: {budget['seconds']:.0f} s of training steps per run, the kNN monitor apart. A recipe's "
            "first seed holds the budget itself (its step count refitted to its speed as it trains, the schedules "
            "with it); every later seed trains the steps the first ended with, so that seeds differ by their seed alone")
    steps = {run["group"]: run["training"]["steps"] for run in trained}
    text += " (" + ", ".join(f"{group}: {n} steps" for group, n in steps.items()) + ")"
    off = [100 * (s / budget["seconds"] - 1) for s in seconds]
    return text + f". Training took {min(seconds):.1f}–{max(seconds):.1f} s ({min(off):+.1f} % to {max(off):+.1f} % of the budget)"


def headline_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "method", "backbone", "trained on", "epochs", "steps", "training (s)", "kNN monitor (s)", "images/s",
              "peak GPU mem (GiB)", "linear top-1", "linear top-5", "kNN top-1", "zero-shot top-1",
              "R@1/5/10 image→text", "R@1/5/10 text→image"]
    rows = []
    for run in runs:
        result, t = run["evaluation"], run["training"]
        m = result["metrics"]
        recall = {
            way: "/".join(_percent(m, f"{way}_r{k}") for k in (1, 5, 10)) if f"{way}_r1" in m else "–"
            for way in ("image_to_text", "text_to_image")
        }
        rows.append([
            run["label"], _trained_how(run), result["backbone"],
            run["recipe"]["data"]["name"] if t is not None else "–",
            str(t["epochs"]) if t else "0", str(t["steps"]) if t else "0",
            _seconds(t, "train_seconds"), _seconds(t, "monitor_seconds"),
            _number(t["images_per_second"], 0) if t else "–",
            _number(t["peak_memory_gib"]) if t and t["peak_memory_gib"] is not None else "–",
            _with_interval(result, "linear_top1"), _percent(m, "linear_top5"), _with_interval(result, "knn_top1"),
            _with_interval(result, "zero_shot_top1"), recall["image_to_text"], recall["text_to_image"],
        ])
    return header, rows


def diagnostic_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "embedding std (×√D; 0 = collapsed)", "RankMe", "feature dim",
              "alignment (lower = closer views)", "uniformity (lower = more spread)"]
    rows = []
    for run in runs:
        result = run["evaluation"]
        m = result["metrics"]
        rows.append([run["label"], _number(m.get("embedding_std")), _number(m.get("rankme"), 1),
                     str(result.get("feature_dim", "–")), _number(m.get("alignment"), 3), _number(m.get("uniformity"), 3)])
    return header, rows


def linear_protocols(runs: list[dict[str, Any]]) -> str:
    """Which protocol made each run's linear top-1: one phrase for all when they agree."""
    def describe(linear: dict[str, Any] | None) -> str:
        if not linear or linear["protocol"] == "features":  # results from before the probe: features
            return ("features (logistic regression on standardised frozen features, L2 penalty chosen on 10 % of the "
                    f"training split held out; {(linear or {}).get('fit') or 'L-BFGS, in memory'})")
        return (f"probe (SGD on random-resized crops and flips through the frozen backbone, {linear['epochs']} of "
                f"{linear['full_epochs']} epochs, batch {linear['batch_size']}, lr {linear['lr']:g}; {linear['source']})")

    phrases = {run["label"]: describe(run["evaluation"].get("linear")) for run in runs}
    if len(set(phrases.values())) == 1:
        return next(iter(phrases.values()))
    return "; ".join(f"{label}: {phrase}" for label, phrase in phrases.items())


def reference_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Each trained run beside the published number its recipe names (``reference:``),
    compared only where the run's number was made as the published one was."""
    header = ["run", "ours", "published reference", "comparison"]
    rows = []
    for run in runs:
        if run["training"] is None:
            continue
        reference, m = ReferenceConfig(**run["recipe"]["reference"]), run["evaluation"]["metrics"]
        if reference.metric == "none":
            rows.append([run["label"], "–", reference.describe(), "–"])
            continue
        why_not = _not_comparable(run, reference)
        comparison = f"not compared: {why_not}" if why_not else f"{100 * m[reference.metric] - reference.value:+.1f} points"
        rows.append([run["label"], _percent(m, reference.metric), reference.describe(), comparison])
    return header, rows


def _not_comparable(run: dict[str, Any], reference: ReferenceConfig) -> str | None:
    """Why the run's number cannot stand beside the reference's (None: it can): fewer
    epochs of pretraining, a part of a split, another linear protocol, a shorter probe."""
    result, epochs = run["evaluation"], run["training"]["epochs"]
    if reference.epochs is not None and epochs < reference.epochs:
        return f"this run trained {epochs} of the reference's {reference.epochs} epochs"
    if reference.metric not in result["metrics"]:
        return f"this evaluation has no {METRIC_NAMES[reference.metric]}"
    # Results written before evaluation recorded these lack them: their linear numbers came
    # from the features protocol (the only one then), their split sizes are unknown.
    linear = result.get("linear", {"protocol": "features"})
    if reference.metric == "linear_top1" and linear["protocol"] != reference.protocol:
        return f"linear top-1 from the {linear['protocol']} protocol, the reference used the {reference.protocol}"
    data = result.get("data", {})
    # Zero-shot scores the test split only; linear and kNN learn from the training split too.
    splits = ("test",) if reference.metric == "zero_shot_top1" else ("train", "test")
    for split in splits:
        scored, full = data.get(f"num_{split}"), data.get(f"full_{split}")
        if scored is None or full is None:
            return "split size unknown"
        if scored < full:
            return f"{scored:,} of {full:,} {'training' if split == 'train' else 'test'} images"
    if reference.metric == "linear_top1" and linear["protocol"] == "probe":
        trained, full_epochs = linear.get("epochs"), linear.get("full_epochs")
        if trained is not None and full_epochs is not None and trained < full_epochs:
            return f"probe trained {trained} of {full_epochs} epochs"
    return None


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='table-scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


# ----------------------------------------------------------------------------- report


def write_report(results: dict[str, Any], figures: ReportFigures, out: Path) -> None:
    """report.md, report.html and their plots (``out/plots``) from a bench's results.

    Both show the same sections, in this order: the setup list, the tables (the notes after
    the first), the plots, and the commands that reproduce the report.
    """
    plots = report_plots(results, figures, out / "plots")
    setup = report_setup(results)
    tables = report_tables(results)
    notes = report_notes(results)
    reproduce = reproduce_commands(results)
    heading = title(results["runs"])
    atomic_write(out / "report.md", _markdown(heading, setup, tables, notes, plots, out, reproduce))
    atomic_write(out / "report.html", _html(heading, setup, tables, notes, plots, reproduce))


def report_plots(results: dict[str, Any], figures: ReportFigures, plots_dir: Path) -> dict[str, tuple[Path, str]]:
    """Draws the plots into ``plots_dir``: title -> (PNG, caption: what the plot shows, leaves out, and why)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    plots = {
        "Training loss": (plot_losses(runs, plots_dir / "loss_curves.png"), loss_caption(runs)),
        "Time to accuracy (kNN top-1 against wall time)": (
            plot_time_to_accuracy(runs, plots_dir / "time_to_accuracy.png"), time_to_accuracy_caption(runs)),
        "t-SNE of the features": (plot_tsne(figures, plots_dir / "tsne.png"),
                                  tsne_caption(figures, results["eval_data"]["num_test"])),
        "Augmentation gallery": (plot_gallery(figures.gallery, plots_dir / "augmentation_gallery.png"),
                                 gallery_caption(runs, len(figures.gallery[0][1]))),
    }
    for similarity in figures.similarities:
        plots[f"Image–caption similarity ({similarity.label})"] = (
            plot_similarity(similarity, plots_dir / f"clip_similarity_{similarity.name}.png"),
            similarity_caption(similarity),
        )
    plots.update(robustness_plots(runs, plots_dir))  # few-shot and shift, where the runs were scored on them
    return plots


def report_tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Title -> (header, rows), in the order the report shows them."""
    runs, seeds = results["runs"], results["seeds"]
    tables = {"Results": headline_rows(runs)}
    if seeds > 1:
        tables[f"Across {seeds} seeds"] = seed_rows(results["groups"])
    tables["Which differences are larger than the noise"] = comparison_rows(results["groups"])
    tables["Published references"] = reference_rows(runs)
    tables["Representation diagnostics"] = diagnostic_rows(runs)
    tables.update(robustness_tables(runs))  # few-shot and shift, where the runs were scored on them
    return tables


def reproduce_commands(results: dict[str, Any]) -> list[str]:
    """The commands that train and score every run again. Paths are relative to the folder
    these run from (ssl_zoo.report_paths)."""
    runs, data, eval_config = results["runs"], results["eval_data"], results["eval_config"]
    trained = [run for run in runs if run["training"] is not None]
    limits = "".join(f" --{flag} {eval_config[key]}" for flag, key in (("max-train", "max_train"), ("max-test", "max_test"))
                     if eval_config[key])
    return [f"# run from {results['paths_relative_to']}", results["command"]] + [
        f"python -m ssl_zoo fit --recipe {run['training']['run_dir']}/recipe.yaml" for run in trained
    ] + [
        f"python -m ssl_zoo eval --ckpt {run['training']['checkpoint']} --data {data['name']} --root {data['root']}{limits}"
        for run in trained
    ] + [
        f"python -m ssl_zoo eval --weights {run['evaluation']['weights']['source']}={run['evaluation']['weights']['path']} "
        f"--data {data['name']} --root {data['root']}{limits}"
        + (f" --data-recipe {eval_config['data_recipe']}" if eval_config.get("data_recipe") else "")
        + (f" --input-size {results['weights_input_size']}" if results.get("weights_input_size") else "")
        for run in runs if run["kind"] == "imported"
    ]


def report_setup(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value): how the runs were trained and scored, and on what."""
    runs, data = results["runs"], results["eval_data"]
    return [
        ("Device", results["device"]),
        ("Budget", budget_text(results["budget"], runs)),
        ("Evaluated on", f"{data['name']}: {data['num_train']} training images ({data['train_split']}) for the "
                         f"linear classifier and kNN bank, {data['num_test']} test images ({data['test_split']})"),
        ("Protocol", protocol_text(runs, results["eval_config"])),
        ("Source", source_text(results["versions"])),
        ("Machine", machine_text(results["machine"])),
        ("Peak memory", memory_text(results["machine"])),
        ("Versions", ", ".join(f"{k} {v}" for k, v in results["versions"].items() if not k.startswith("ssl_zoo_"))),
        ("Created", f"{results['created']} in {results['bench_seconds'] / 60:.1f} min"),
    ]


def protocol_text(runs: list[dict[str, Any]], eval_config: dict[str, Any]) -> str:
    """How each score was measured: linear, kNN, zero-shot and retrieval."""
    retrieval = "; ".join(
        f"{run['label']} on {p['name']} '{p['split']}' ({p['num_images']} images, {p['num_captions']} captions"
        + (", the training data itself: in-sample)" if p["split"] == "all" else ")")
        for run in runs if (p := run["evaluation"].get("pairs"))
    ) or "no run with text"
    zero_shot = next((run["evaluation"]["zero_shot"] for run in runs if run["evaluation"].get("zero_shot")), None)
    zero_shot_text = (f"{zero_shot['templates']} prompt templates averaged ({zero_shot['class_names']})" if zero_shot
                      else f"{len(eval_config['templates'] or DEFAULT_TEMPLATES)} prompt templates averaged")
    return (f"frozen backbone; linear top-1: {linear_protocols(runs)}; "
            f"kNN: k={eval_config['knn_k']}, T={eval_config['knn_temperature']}, cosine-weighted, on features; "
            f"zero-shot: {zero_shot_text}; retrieval: {retrieval}")


def report_notes(results: dict[str, Any]) -> list[str]:
    """The paragraphs after the first table: baselines, timing, intervals, seeds."""
    runs, data, seeds = results["runs"], results["eval_data"], results["seeds"]
    return [
        "Baselines: *supervised* is the same backbone, augmentation and budget trained with labels "
        f"(cross-entropy); *random init* is the untrained backbone; *imported* runs are weights made elsewhere, "
        f"scored by the same protocol. Accuracies are percentages on the '{data['test_split']}' split of {data['name']}.",
        "Peak GPU memory is blank on the CPU. Images/s counts training images (pairs of views for two-view methods such as SimCLR and BYOL). "
        "Training seconds are the steps' (data, views, step, logging, checkpoints); the kNN monitor's (random init, "
        "then about six times along the run) are apart, outside the budget.",
        f"In brackets: the 95 % bootstrap interval over the {data['num_test']} test images ({RESAMPLES} resamples). "
        "It measures the test set's noise, not the seed's. Two runs whose intervals overlap are not "
        "distinguishable at this budget (next table).",
        (f"Every recipe and baseline was trained {seeds} times (seeds "
         f"{', '.join(sorted({str(run['recipe']['trainer']['seed']) for run in runs if run['recipe']}))}); "
         "the seed table gives mean ± standard deviation across them, and its interval is that of the mean."
         if seeds > 1 else
         "One seed per run (the default, so that the bench stays within its time): the spread across seeds is "
         "not measured here. `bench --seeds N` trains each recipe N times and reports mean ± std."),
    ]


def source_text(versions: dict[str, Any]) -> str:
    """'ssl_zoo 0.1.0, git commit 53a82a5a8a47 (uncommitted changes)'."""
    commit, dirty = versions.get("ssl_zoo_commit"), versions.get("ssl_zoo_dirty")
    if commit is None:
        return f"ssl_zoo {versions['ssl_zoo']}, not run from a git checkout (commit unknown)"
    state = {True: "with uncommitted changes", False: "no uncommitted changes"}.get(dirty, "changes unknown")
    return f"ssl_zoo {versions['ssl_zoo']}, git commit {commit[:12]} ({state})"


def machine_text(machine: dict[str, Any]) -> str:
    return f"CPU: {machine['cpu']}; GPU: {machine['gpu'] or 'none used'}"


def memory_text(machine: dict[str, Any]) -> str:
    host, gpu = machine["peak_host_rss_gib"], machine["peak_gpu_memory_gib"]
    if host["process"] is None:
        host_text = "host RSS not measured on this platform"
    else:
        # NOTE: a forked child (a DataLoader worker) counts the pages it shares with the bench process.
        host_text = (f"host RSS {host['process']:.2f} GiB (the bench process), {host['largest_child']:.2f} GiB "
                     "(its largest child process, shared pages included)")
    return f"{host_text}; GPU {_number(gpu)} GiB (the largest training run)" if gpu is not None else f"{host_text}; GPU: none used"


def title(runs: list[dict[str, Any]]) -> str:
    """'ssl_zoo benchmark: simclr, byol and clip side by side': the methods the runs trained."""
    methods = list(dict.fromkeys(run["recipe"]["method"] for run in runs if run["kind"] == "method"))
    named = ", ".join(methods[:-1]) + (" and " if len(methods) > 1 else "") + methods[-1] if methods else "runs"
    return f"ssl_zoo benchmark: {named} side by side"


def _markdown(title: str, setup, tables, notes, plots, out: Path, reproduce) -> str:
    """``tables``: title -> (header, rows), in order; the notes follow the first table."""
    parts = [f"# {title}", ""]
    parts += [f"- **{name}:** {value}" for name, value in setup]
    for i, (title, table) in enumerate(tables.items()):
        parts += ["", f"## {title}", "", markdown_table(*table), ""]
        if i == 0:
            parts += [*notes, ""]
    for name, (path, caption) in plots.items():
        parts += [f"## {name}", "", f"![{name}]({path.relative_to(out).as_posix()})", "", caption, ""]
    parts += ["## Reproduce", "", "```sh", *reproduce, "```", ""]
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
.table-scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 1em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _html(title: str, setup, tables, notes, plots, reproduce) -> str:
    def embedded(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><dl>"]
    parts += [f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>" for name, value in setup]
    parts += ["</dl>"]
    for i, (title, table) in enumerate(tables.items()):
        parts += [f"<h2>{html.escape(title)}</h2>", html_table(*table)]
        if i == 0:
            parts += [f"<p>{html.escape(note).replace('*', '').replace('`', '')}</p>" for note in notes]
    for name, (path, caption) in plots.items():
        parts += [f"<h2>{html.escape(name)}</h2>", embedded(path), f"<p>{html.escape(caption)}</p>"]
    parts += ["<h2>Reproduce</h2><pre>", html.escape("\n".join(reproduce)), "</pre></body></html>"]
    return "\n".join(parts)
