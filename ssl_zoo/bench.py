"""Side-by-side benchmark: several recipes, one budget, one evaluation, one report.

    recipes (+ a supervised baseline per backbone)
      -> equal budget: the same epochs, or the same wall clock of training steps
         (each run's speed is measured first and its step count fitted to the budget,
         so its learning-rate and EMA schedules still run to their end)
      -> fit each -> evaluate each (and a random-init backbone) on the same labelled data
      -> gather what the report shows (results.json; curves, features, views, similarities)
      -> report.md, report.html (plots embedded), rendered by ``ssl_zoo.report``
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from kornia.enhance import denormalize

from ssl_zoo.atomic import atomic_write
from ssl_zoo.augment import ViewAugment
from ssl_zoo.bench_progress import BenchProgress
from ssl_zoo.training.budget import BudgetKeeper, measure_steps_per_second, measurement_seconds
from ssl_zoo.data.datamodule import ImageDataModule, load_split
from ssl_zoo.data.spec import dataset_spec
from ssl_zoo.environment import cpu_model, device_name, peak_host_memory_gib, pick_device, versions
from ssl_zoo.errors import RecipeError
from ssl_zoo.eval.confidence import group_summaries
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.data import LabelledSplits, load_labelled_splits, retrieval_split
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.eval.imported import ImportedModel, WeightsSource, load_imported
from ssl_zoo.eval.stage import evaluate, evaluate_checkpoint, evaluate_weights, write_tensorboard
from ssl_zoo.methods import SSLMethod, build_method, load_method, method_class
from ssl_zoo.methods.supervised import Supervised
from ssl_zoo.recipe import Recipe, parse_recipe, recipe_from_dict, recipe_to_dict, save_recipe
from ssl_zoo.report import ReportFigures, Similarity, write_report
from ssl_zoo.report_paths import BASE_REPORT_FOLDER, ReportPaths
from ssl_zoo.training.train import RunSummary, fit

TSNE_POINTS = 1000  # test images per t-SNE map
GALLERY_IMAGES = 8  # test images in the augmentation gallery
SIMILARITY_PAIRS = 8  # image-caption pairs in a text method's similarity plot


@dataclass
class BenchConfig:
    recipes: list[str]
    out: Path
    epochs: int | None = None  # equal epochs ...
    budget_seconds: float | None = None  # ... or equal wall clock of training steps
    overrides: list[str] = field(default_factory=list)  # recipe overrides applied to every recipe
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: bool = True  # train a supervised baseline per backbone under the same budget
    # Weights made elsewhere, scored beside the runs: "LIBRARY:NAME=FILE" (ssl_zoo.eval.imported)
    weights: list[str] = field(default_factory=list)
    weights_input_size: int | None = None  # their input side (None: each one's own)
    seeds: int = 1  # train every recipe (and baseline) this many times, seeds trainer.seed, +1, ...
    command: str = ""  # the command line that made the report, to reproduce it


@dataclass
class BenchRun:
    label: str
    kind: str  # "method", "baseline" or "imported" (weights made elsewhere)
    recipe: Recipe | None  # None for imported weights
    group: str = ""  # the label without the seed: runs of one recipe under several seeds share it
    training: RunSummary | None = None  # None for the random-init baseline and imported weights
    weights: WeightsSource | None = None  # imported weights only
    result: dict[str, Any] = field(default_factory=dict)  # the evaluation stage's output
    steps_per_second: float | None = None  # measured before a budgeted run

    def __post_init__(self) -> None:
        self.group = self.group or self.label


def seeded_runs(label: str, kind: str, recipe: Recipe, seeds: int) -> list[BenchRun]:
    """``seeds`` runs of ``recipe`` with seeds trainer.seed, +1, ...; with more than one,
    the seed is in each run's label and name (its run folder)."""
    if seeds == 1:
        return [BenchRun(label, kind, recipe)]
    runs = []
    for seed in range(recipe.trainer.seed, recipe.trainer.seed + seeds):
        seeded = dataclasses.replace(recipe, name=f"{recipe.name}_seed{seed}",
                                     trainer=dataclasses.replace(recipe.trainer, seed=seed))
        runs.append(BenchRun(f"{label} seed {seed}", kind, seeded, group=label))
    return runs


def random_init_model(recipe: Recipe) -> SSLMethod:
    """The recipe's method, untrained, initialised from the recipe's seed."""
    pl.seed_everything(recipe.trainer.seed, verbose=False)
    return build_method(recipe)


def on_one_device(recipe: Recipe) -> Recipe:
    """The recipe on one device: ``trainer.devices: auto`` (which would take every GPU) set
    to 1; a recipe asking for several devices or nodes refused. Bench trains every run in
    its own process and times it on one device, so that the budgets compare; several
    processes (DDP) would each run the whole bench."""
    devices, nodes = recipe.trainer.devices, recipe.trainer.num_nodes
    text = str(devices).strip()
    count = 1 if devices == "auto" else (
        int(text) if text.lstrip("-").isdigit() else len([d for d in text.strip("[]").split(",") if d.strip()]))
    if count == 1 and nodes == 1:
        return dataclasses.replace(recipe, trainer=dataclasses.replace(recipe.trainer, devices=1)) if devices == "auto" else recipe
    keys = ([f"trainer.devices {devices}"] if count != 1 else []) + ([f"trainer.num_nodes {nodes}"] if nodes != 1 else [])
    asked, several = " and ".join(keys), " ".join(f"--{key}" for key in keys)
    raise RecipeError(
        f"bench: recipe '{recipe.name}' asks for {asked}, but bench trains and times every run on one device, so "
        "that the runs' budgets compare (several processes would each run the whole bench). Drop the override to "
        f"bench on one device, or train on several with `python -m ssl_zoo fit --recipe {recipe.name} {several}` and "
        "score the checkpoint with `python -m ssl_zoo eval --ckpt <run folder>/checkpoints/last.ckpt`."
    )


def supervised_recipe(recipe: Recipe, data_name: str, data_root: str | None) -> Recipe:
    """The supervised baseline for ``recipe``: same backbone, augmentation and optimiser,
    trained with labels on the benchmark's labelled data."""
    values = recipe_to_dict(recipe)
    values.pop(recipe.method)  # the method's own section
    values.update(method=Supervised.method_name, name=f"supervised_{recipe.backbone}",
                  description=f"Supervised baseline for {recipe.name}")
    if values["data"]["name"] != data_name:
        values.pop(values["data"]["name"], None)  # the dataset's own section goes with it
        values["data"].update(name=data_name, train_split=None, val_split=None)
        values["data"]["root"] = data_root or values["data"]["root"]
    return recipe_from_dict(values)


def _baseline_source(recipes: list[Recipe], backbone: str) -> Recipe:
    # The views of a method that trains on images alone are a supervised run's usual
    # augmentation; CLIP's (a crop only) would handicap the baseline.
    same = [r for r in recipes if r.backbone == backbone]
    return next((r for r in same if not method_class(r).uses_text), same[0])


MONITOR_POINTS = 6  # kNN scores along a run, for the time-to-accuracy curve


def _with_budget(recipe: Recipe, steps_per_epoch: int, max_steps: int | None, epochs: int | None) -> Recipe:
    """The recipe with the benchmark's budget, MONITOR_POINTS kNN scores along the run
    and ~100 logged losses."""
    trainer = recipe.trainer
    if max_steps is not None:
        trainer = dataclasses.replace(trainer, max_epochs=-1, max_steps=max_steps,
                                      val_every_n_steps=max(max_steps // MONITOR_POINTS, 1))
    elif epochs is not None:
        trainer = dataclasses.replace(trainer, max_epochs=epochs, check_val_every_n_epoch=max(epochs // MONITOR_POINTS, 1))
    total_steps = max_steps or trainer.max_epochs * steps_per_epoch
    trainer = dataclasses.replace(trainer, log_every_n_steps=max(min(total_steps // 100, steps_per_epoch), 1))
    return dataclasses.replace(recipe, trainer=trainer)


STATE_FILE = "bench_state.json"  # what a bench has done so far, for --resume


class BenchState:
    """What a bench has done, saved in ``OUT/bench_state.json`` after every stage so that
    ``bench --resume OUT`` goes on from there: its settings, the steps fitted to each
    recipe, and per run label the recipe with its budget, the run folders that existed
    before it started training, its training summary and its evaluation."""

    def __init__(self, path: Path, config: dict[str, Any], runs: dict[str, dict[str, Any]] | None = None,
                 fitted_steps: dict[str, dict[str, Any]] | None = None):
        self.path, self.config, self.runs = path, config, runs or {}
        # Per recipe (run group): its measured speed, its steps, the seed that holds the
        # budget and whether it has finished (fixed: the steps of every later seed).
        self.fitted_steps = fitted_steps or {}

    @classmethod
    def load(cls, out: Path) -> BenchState:
        path = out / STATE_FILE
        if not path.is_file():
            raise RecipeError(f"bench --resume: '{out}' holds no {STATE_FILE}; pass the --out folder of a bench "
                              "started with this version of ssl_zoo.")
        saved = json.loads(path.read_text())
        return cls(path, saved["config"], saved["runs"], saved.get("fitted_steps"))

    def of(self, run: BenchRun) -> dict[str, Any]:
        return self.runs.setdefault(run.label, {})

    def save(self) -> None:
        # Never a half-written state, whenever the bench is killed.
        atomic_write(self.path, json.dumps({"config": self.config, "runs": self.runs, "fitted_steps": self.fitted_steps}, indent=1))


def config_to_dict(config: BenchConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["out"] = str(config.out)
    values["eval"]["templates"] = list(config.eval.templates) if config.eval.templates else None
    return values


def config_from_dict(values: dict[str, Any]) -> BenchConfig:
    evaluation = dict(values["eval"], templates=tuple(values["eval"]["templates"]) if values["eval"]["templates"] else None)
    return BenchConfig(**{**values, "out": Path(values["out"]), "eval": EvalConfig(**evaluation)})


def summary_to_dict(summary: RunSummary) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in vars(summary).items()}


def summary_from_dict(values: dict[str, Any]) -> RunSummary:
    fields = {f.name for f in dataclasses.fields(RunSummary)}
    summary = RunSummary(**{k: v for k, v in values.items() if k in fields})
    summary.run_dir, summary.checkpoint = Path(summary.run_dir), Path(summary.checkpoint)
    return summary


def _run_versions(recipe: Recipe) -> list[str]:
    return sorted(p.name for p in (Path(recipe.trainer.output_dir) / recipe.name).glob("version_*"))


def _continue_from(recipe: Recipe, versions_before: list[str]) -> Path | None:
    """A run killed in an earlier bench: the checkpoint to continue it from (its run folder,
    the one it made), or None to train it again; a folder it left without a checkpoint (killed
    before its first) is removed, so that the new run takes its name."""
    left = [p for p in (Path(recipe.trainer.output_dir) / recipe.name).glob("version_*") if p.name not in versions_before]
    checkpoint = next((p / "checkpoints" / "last.ckpt" for p in left if (p / "checkpoints" / "last.ckpt").is_file()), None)
    if checkpoint is None:
        for folder in left:
            shutil.rmtree(folder)
    return checkpoint


def run_bench(config: BenchConfig, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the results written to results.json.
    ``resume``: go on with the bench in ``config.out`` (``config`` as it saved it),
    skipping the runs and evaluations it finished."""
    started = time.perf_counter()
    if config.seeds < 1:
        raise RecipeError(f"bench: --seeds {config.seeds} trains nothing; give 1 or more.")
    imported = [WeightsSource.parse(text) for text in config.weights]  # checked before any training
    missing = [str(w.path) for w in imported if not w.path.is_file()]
    if missing:
        raise RecipeError(f"bench: --weights file(s) not found: {', '.join(missing)}.")
    out = config.out
    recipes = [
        on_one_device(parse_recipe(["--recipe", name, *config.overrides, "--trainer.output_dir", str(out / "runs")]))
        for name in config.recipes
    ]
    if len({r.name for r in recipes}) != len(recipes):
        raise RecipeError("bench: the recipes must have different names (each names its run folder).")
    out.mkdir(parents=True, exist_ok=True)
    state = BenchState.load(out) if resume else BenchState(out / STATE_FILE, config_to_dict(config))
    state.save()

    # One labelled dataset scores every run: the one given, else the first recipe's that has labels.
    eval_config = config.eval
    labelled = next((r for r in recipes if dataset_spec(r.data.name).labelled), None)
    if eval_config.data is None:
        if labelled is None:
            raise RecipeError("bench: no recipe trains on labelled data; name one to score on with --eval-data.")
        eval_config = dataclasses.replace(eval_config, data=labelled.data.name, root=eval_config.root or labelled.data.root)
    if eval_config.cache_dir is None:
        eval_config = dataclasses.replace(eval_config, cache_dir=str(out / "feature_cache"))
    # Loaded before any training, so bad evaluation data fails fast, not after the budget.
    data_source = labelled or recipes[0]
    splits = load_labelled_splits(data_source.data, eval_config)
    # Weights made elsewhere have no data of their own: they are scored on this recipe's
    # (retrieval too), and `eval --weights --data-recipe` reproduces it.
    if imported:
        save_recipe(data_source, out / "eval_data_recipe.yaml")
        eval_config = dataclasses.replace(eval_config, data_recipe=str(out / "eval_data_recipe.yaml"))
    for weights in imported:  # a wrong name or architecture fails now, not after the budget
        load_imported(weights, config.weights_input_size)

    runs = [run for r in recipes for run in seeded_runs(r.name, "method", r, config.seeds)]
    backbones = list(dict.fromkeys(r.backbone for r in recipes))
    if config.baselines:
        for backbone in backbones:
            source = _baseline_source(recipes, backbone)
            baseline = supervised_recipe(source, eval_config.data, eval_config.root)
            runs += seeded_runs(f"supervised ({backbone})", "baseline", baseline, config.seeds)
    trained = len(runs)
    runs += [run for b in backbones for run in seeded_runs(f"random init ({b})", "baseline", _baseline_source(recipes, b), config.seeds)]
    runs += [BenchRun(weights.source, "imported", None, weights=weights) for weights in imported]
    progress = BenchProgress(trainings=trained, evaluations=len(runs), budget_seconds=config.budget_seconds)
    try:
        for run in runs[:trained]:  # every run under the same budget
            _train(run, config, state, progress)
        return _evaluate_and_report(runs, config, eval_config, splits, progress, state,
                                    seconds_so_far=time.perf_counter() - started)
    finally:
        progress.close()


def resume_bench(out: Path) -> dict[str, Any]:
    """Go on with the bench whose --out is ``out``, as it was started (its settings are in
    its state), skipping the runs and evaluations it finished."""
    return run_bench(config_from_dict(BenchState.load(out).config), resume=True)


def _train(run: BenchRun, config: BenchConfig, state: BenchState, progress: BenchProgress) -> None:
    """Train ``run`` under the bench's budget, or take its training from the bench's
    state when an earlier try finished it; a try that was killed goes on from its last
    checkpoint, with the steps fitted then."""
    saved = state.of(run)
    if "training" in saved and Path(saved["training"]["checkpoint"]).is_file():
        run.recipe, run.steps_per_second = recipe_from_dict(saved["recipe"]), saved["steps_per_second"]
        run.training = summary_from_dict(saved["training"])
        progress.skip("training")
        progress.say(f"{run.label}: trained by the earlier bench, kept")
        return
    progress.begin("training", run.label)
    datamodule = ImageDataModule.for_recipe(run.recipe)
    datamodule.setup("fit")
    resume_from = None
    if "recipe" in saved:  # started by an earlier try: its recipe, budget and steps
        run.recipe, run.steps_per_second = recipe_from_dict(saved["recipe"]), saved["steps_per_second"]
        resume_from = _continue_from(run.recipe, saved["versions_before"])
    else:
        max_steps = _fitted_steps(run, config, state, datamodule, progress)
        run.recipe = _with_budget(run.recipe, steps_per_epoch_of(datamodule, run.recipe), max_steps, config.epochs)
        saved.update(recipe=recipe_to_dict(run.recipe), steps_per_second=run.steps_per_second,
                     versions_before=_run_versions(run.recipe))
        state.save()
    # The first seed of a recipe under a wall-clock budget holds it, and fixes the steps of the others.
    fitted = state.fitted_steps.get(run.group)
    keeps_budget = fitted is not None and fitted.get("kept_by") == run.label
    action = f"resuming {run.label} from {resume_from}" if resume_from else f"training {run.label}"
    progress.say(f"{action} ({run.recipe.method}, {run.recipe.backbone}, {run.recipe.data.name})")
    run.training = fit(run.recipe, enable_progress_bar=False, datamodule=datamodule, resume=resume_from,
                       callbacks=[BudgetKeeper(config.budget_seconds, validations=MONITOR_POINTS)] if keeps_budget else [])
    if keeps_budget:  # the steps it ended with: its seeds' steps, and its recipe's (to reproduce it)
        fitted.update(steps=run.training.steps, fixed=True)
        run.recipe = _with_budget(run.recipe, steps_per_epoch_of(datamodule, run.recipe), run.training.steps, None)
        save_recipe(run.recipe, run.training.run_dir / "recipe.yaml")
    saved["training"] = summary_to_dict(run.training)
    saved["recipe"] = recipe_to_dict(run.recipe)
    state.save()
    progress.end()
    progress.say(f"trained {run.label}: {run.training.train_seconds:.0f} s of training, "
                 f"{run.training.monitor_seconds:.0f} s of kNN monitor")


def steps_per_epoch_of(datamodule: ImageDataModule, recipe: Recipe) -> int:
    return len(datamodule.train_set) // recipe.data.batch_size


def _fitted_steps(run: BenchRun, config: BenchConfig, state: BenchState, datamodule: ImageDataModule,
                  progress: BenchProgress) -> int | None:
    """The steps ``run`` trains under a wall-clock budget (None: an epoch budget). A
    recipe's first seed starts from its speed measured for a few seconds, and its
    BudgetKeeper refits the steps as it trains; every later seed trains the steps the first
    ended with (``fixed``), so that seeds differ by their seed alone."""
    if config.budget_seconds is None:
        return None
    fitted = state.fitted_steps.get(run.group)
    if fitted is None:
        speed = measure_steps_per_second(run.recipe, datamodule, measurement_seconds(config.budget_seconds))
        fitted = state.fitted_steps[run.group] = {"steps_per_second": speed, "kept_by": run.label,
                                                   "steps": max(int(config.budget_seconds * speed), 1), "fixed": False}
        progress.say(f"{run.group}: {speed:.2f} steps/s -> about {fitted['steps']} steps in the budget")
    elif fitted["fixed"]:
        progress.say(f"{run.label}: {fitted['steps']} steps, as {fitted['kept_by']}")
    run.steps_per_second = fitted["steps_per_second"]
    return fitted["steps"]


def _evaluate_and_report(
    runs: list[BenchRun], config: BenchConfig, eval_config: EvalConfig, splits: LabelledSplits,
    progress: BenchProgress, state: BenchState | None, seconds_so_far: float,
) -> dict[str, Any]:
    """Evaluate every run (and the random-init backbones) with the same stage and data,
    gather what the report shows, and write it. ``state``: the bench's, whose finished
    evaluations are kept and which records each new one (None: none kept)."""
    started = time.perf_counter()
    for run in runs:
        saved = state.of(run) if state is not None else {}
        if "evaluation" in saved:
            run.result = saved["evaluation"]
            progress.skip("evaluation")
            continue
        progress.begin("evaluation", run.label)
        progress.say(f"evaluating {run.label}")
        if run.weights is not None:
            run.result = evaluate_weights(run.weights, eval_config, config.weights_input_size, label=run.label, splits=splits)
        elif run.training is None:
            run.result = evaluate(random_init_model(run.recipe), eval_config, label=run.label, with_text=False, splits=splits)
        else:
            run.result = evaluate_checkpoint(run.training.checkpoint, eval_config, label=run.label, splits=splits)
            write_tensorboard(run.result, run.training.run_dir)
        progress.end()
        if state is not None:
            saved["evaluation"] = run.result
            state.save()
    progress.begin("report")
    progress.say("writing the report")
    figures = gather_figures(runs, config, eval_config, splits)
    results = gather_results(runs, config, eval_config, splits, seconds=seconds_so_far + time.perf_counter() - started)
    results = ReportPaths.for_report(config.out).portable(results)  # no folder of this machine in the report
    atomic_write(config.out / "results.json", json.dumps(results, indent=2))
    write_report(results, figures, config.out)
    progress.end()
    progress.say(f"report: {config.out / 'report.html'} (also report.md, results.json)")
    return results


def _model(run: BenchRun, config: BenchConfig) -> SSLMethod | ImportedModel:
    if run.weights is not None:
        return load_imported(run.weights, config.weights_input_size)
    return load_method(run.training.checkpoint) if run.training is not None else random_init_model(run.recipe)


def read_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Loss by step and kNN top-1 by seconds since the run started, from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # A run continued from a checkpoint (bench --resume) logs again the steps after it:
    # per step, the last value is the run's (event files are read oldest first). The
    # random-init score is the first try's (the monitor keeps it in its checkpoints).
    scalars = {tag: list({e.step: e for e in events.Scalars(tag)}.values()) for tag in ("train/loss", "knn/top1") if tag in tags}
    scalars["knn/top1_random_init"] = events.Scalars("knn/top1_random_init")[:1] if "knn/top1_random_init" in tags else []
    start = min((s[0].wall_time for s in scalars.values() if s), default=0.0)
    knn = scalars["knn/top1_random_init"] + scalars.get("knn/top1", [])
    return {
        "loss": [[e.step, e.value] for e in scalars.get("train/loss", [])],
        "knn_by_seconds": [[e.wall_time - start, e.value] for e in knn],
    }


def _pixels(views: torch.Tensor, mean, std) -> torch.Tensor:
    """(N, 3, S, S) normalised -> (N, S, S, 3) in [0, 1], for a plot."""
    return denormalize(views.float(), torch.tensor(mean), torch.tensor(std)).clamp(0, 1).permute(0, 2, 3, 1)


@torch.no_grad()
def gather_figures(runs: list[BenchRun], config: BenchConfig, eval_config: EvalConfig, splits: LabelledSplits) -> ReportFigures:
    """The arrays the report plots: test features (t-SNE), each trained run's views of the
    same images (gallery), and each text method's image-caption similarities."""
    # A seeded sample, not the first images: a test split may be stored sorted by class.
    # The features come from the evaluation's cache (same weights, same images).
    sample = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:TSNE_POINTS]
    features, similarities = {}, []
    for run in runs:
        model = _model(run, config)
        evaluator = Evaluator(model, eval_config)
        test_features = evaluator.features(splits.test, "test")  # on the device, or memory-mapped (shards)
        features[run.label] = test_features[sample.to(test_features.device)].float().cpu()
        run.result["feature_dim"] = features[run.label].shape[1]
        if model.uses_text and run.training is not None:
            similarities.append(_similarity(run, model, evaluator))

    images = splits.test.images_at(sample[:GALLERY_IMAGES])
    gallery = [("original", images.permute(0, 2, 3, 1).float() / 255)]
    for run in runs:
        if run.training is not None:
            augment = run.recipe.augment
            # Every size of a multi-crop layout, at most two views of each: [(V_s, N, 3, S_s, S_s)]
            by_size = ViewAugment(augment, method_class(run.recipe).num_views, seed=0).views_by_size(images)
            views = [view for views_of_size in by_size for view in views_of_size[:2]]
            gallery += [(f"{run.label}\nview {v + 1}", _pixels(view, augment.mean, augment.std)) for v, view in enumerate(views)]
    return ReportFigures(features, splits.test.labels[sample], splits.test.classes, gallery, similarities)


def _similarity(run: BenchRun, model: SSLMethod, evaluator: Evaluator) -> Similarity:
    """Cosine similarities of the first test images of the run's captioned data and their first captions."""
    pairs = load_split(run.recipe.data, retrieval_split(run.recipe.data.name), evaluator.config.seed)
    images = pairs.images[:SIMILARITY_PAIRS]
    captions = [c[0] for c in pairs.captions[:SIMILARITY_PAIRS]]
    image_embeddings = model.encode_image(model.eval_transform(images.to(evaluator.device)))
    matrix = (image_embeddings @ evaluator.encode_texts(captions).T).cpu()  # (images, captions)
    return Similarity(run.label, run.recipe.name, images, captions, matrix)


def gather_results(
    runs: list[BenchRun], config: BenchConfig, eval_config: EvalConfig, splits: LabelledSplits, seconds: float
) -> dict[str, Any]:
    """results.json: the setting, every run's training summary, evaluation and curves, and
    the per-recipe statistics across seeds."""
    entries = [
        {
            # A trained run's recipe as bench last set it (the steps its budget ended with), not
            # its checkpoint's (the first guess of a run that held the budget).
            "label": run.label, "group": run.group, "kind": run.kind,
            "recipe": recipe_to_dict(run.recipe) if run.training is not None else run.result["recipe"],
            "training": None if run.training is None else {
                **summary_to_dict(run.training),
                "steps_per_second_measured": run.steps_per_second,
            },
            "evaluation": run.result,
            "curves": read_curves(run.training.run_dir) if run.training is not None else {"loss": [], "knn_by_seconds": []},
        }
        for run in runs
    ]
    eval_device = pick_device(eval_config.device)
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": config.command,
        "paths_relative_to": ReportPaths.for_report(config.out).described,
        "device": device_name(eval_device),
        "versions": versions(),  # the ssl_zoo commit and dirty flag among them
        "machine": machine(runs, eval_device),
        "budget": {"mode": "wall_clock" if config.budget_seconds is not None else "epochs",
                   "seconds": config.budget_seconds, "epochs": config.epochs},
        "eval_data": splits.info,
        "eval_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(eval_config).items()},
        "bench_seconds": round(seconds, 1),
        "seeds": config.seeds,
        "weights_input_size": config.weights_input_size,
        # Per run label without its seed, per accuracy: mean, std over seeds, 95 % bootstrap interval.
        "groups": group_summaries(entries),
        "runs": entries,
    }


def machine(runs: list[BenchRun], eval_device: torch.device) -> dict[str, Any]:
    """The CPU and (where one trained or evaluated) GPU model, and the peak memory of this
    bench: host RSS of its process and its largest child (DataLoader workers), GPU
    memory of its largest training run."""
    used_gpu = eval_device.type == "cuda" or any(r.training is not None and r.training.device.startswith("cuda") for r in runs)
    gpu_peaks = [r.training.peak_memory_gib for r in runs if r.training is not None and r.training.peak_memory_gib is not None]
    return {
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name() if used_gpu else None,
        "peak_host_rss_gib": peak_host_memory_gib(),
        "peak_gpu_memory_gib": max(gpu_peaks, default=None),
    }


def reevaluate(results_path: Path) -> dict[str, Any]:
    """Evaluate the runs of an earlier ``bench`` again and rewrite its report, without
    retraining: for a changed evaluation stage (features come from the cache when the
    weights and images are unchanged). The original budget, command and training
    figures are kept."""
    if not results_path.is_file():
        raise RecipeError(f"bench: '{results_path}' does not exist; pass the results.json of an earlier bench.")
    saved = json.loads(results_path.read_text())
    # Its paths are relative to its folder or to the working directory bench ran from (the
    # reproduce lines say which), or absolute in results written before that.
    relative_to_folder = saved.get("paths_relative_to") == BASE_REPORT_FOLDER
    saved = ReportPaths(results_path.parent.resolve() if relative_to_folder else Path.cwd(), "").restore(saved)
    runs = []
    for entry in saved["runs"]:
        training = entry["training"]
        summary = summary_from_dict(training) if training is not None else None
        imported = entry["kind"] == "imported"
        weights = entry["evaluation"]["weights"] if imported else None
        run = BenchRun(entry["label"], entry["kind"], None if imported else recipe_from_dict(entry["recipe"]), training=summary,
                       group=entry.get("group", ""),  # results.json before --seeds: one run per label
                       weights=WeightsSource.parse(f"{weights['source']}={weights['path']}") if imported else None)
        run.steps_per_second = training.get("steps_per_second_measured") if training else None
        runs.append(run)
    stored = saved["runs"][0]["evaluation"]["eval_config"]
    # Old results stored the default templates themselves; None now means the dataset's.
    templates = stored.get("templates")
    eval_config = EvalConfig(**{**stored, "templates": tuple(templates) if templates else None})
    budget = saved["budget"]
    config = BenchConfig(recipes=[r.recipe.name for r in runs if r.kind == "method"], out=results_path.parent,
                         epochs=budget["epochs"], budget_seconds=budget["seconds"], command=saved["command"], eval=eval_config,
                         seeds=saved.get("seeds", 1), weights=[f"{r.weights.source}={r.weights.path}" for r in runs if r.weights],
                         weights_input_size=saved.get("weights_input_size"))
    source = next(r.recipe for r in runs if r.training is None and r.recipe is not None)
    splits = load_labelled_splits(source.data, eval_config)
    training_seconds = sum(r.training.wall_seconds for r in runs if r.training is not None)
    progress = BenchProgress(trainings=0, evaluations=len(runs), budget_seconds=None)
    try:
        return _evaluate_and_report(runs, config, eval_config, splits, progress, state=None, seconds_so_far=training_seconds)
    finally:
        progress.close()
