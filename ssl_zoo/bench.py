"""Side-by-side benchmark: several recipes, one budget, one evaluation, one report.

    recipes (+ a supervised baseline per backbone)
      -> equal budget: the same epochs, or the same wall clock of training steps
         (each run's speed is measured first and its step count fitted to the budget,
         so its learning-rate and EMA schedules still run to their end)
      -> fit each -> evaluate each (and a random-init backbone) on the same labelled data
      -> report.md, report.html (plots embedded), results.json
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ssl_zoo.data.datamodule import ImageDataModule
from ssl_zoo.errors import RecipeError
from ssl_zoo.eval.stage import EvalConfig, evaluate, evaluate_checkpoint, load_labelled_splits, write_tensorboard
from ssl_zoo.methods import METHODS
from ssl_zoo.monitor import StepTimer
from ssl_zoo.recipe import METHOD_SECTIONS, Recipe, parse_recipe, recipe_from_dict, recipe_to_dict
from ssl_zoo.train import RunSummary, fit

LABELLED_DATASETS = ("shapes", "shared_cifar10", "cifar10", "cifar100", "stl10", "folder")


@dataclass
class BenchConfig:
    recipes: list[str]
    out: Path
    epochs: int | None = None  # equal epochs ...
    budget_seconds: float | None = None  # ... or equal wall clock of training steps
    overrides: list[str] = field(default_factory=list)  # recipe overrides applied to every recipe
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: bool = True  # train a supervised baseline per backbone under the same budget
    seeds: int = 1  # train every recipe (and baseline) this many times, seeds trainer.seed, +1, ...
    command: str = ""  # the command line that made the report, to reproduce it


@dataclass
class BenchRun:
    label: str
    kind: str  # "method" or "baseline"
    recipe: Recipe
    group: str = ""  # the label without the seed: runs of one recipe under several seeds share it
    training: RunSummary | None = None  # None for the random-init baseline
    result: dict[str, Any] = field(default_factory=dict)  # the evaluation stage's output
    steps_per_second: float | None = None  # measured before a budgeted run
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # loss and kNN curves, for the report

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


def random_init_model(recipe: Recipe):
    """The recipe's method, untrained, initialised from the recipe's seed."""
    pl.seed_everything(recipe.trainer.seed, verbose=False)
    return METHODS[recipe.method](recipe)


def parse_budget(text: str) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise RecipeError(f"Budget '{text}' is not a duration; write e.g. 90s, 10m or 1h.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def measure_steps_per_second(recipe: Recipe, datamodule: ImageDataModule, warmup: int = 3, steps: int = 8) -> float:
    """Training steps per second of ``recipe`` as ``fit`` runs it, monitors excluded."""
    pl.seed_everything(recipe.trainer.seed, verbose=False)
    model = METHODS[recipe.method](recipe, num_classes=datamodule.num_classes)
    timer = StepTimer(skip=warmup)
    cfg = recipe.trainer
    trainer = pl.Trainer(
        max_steps=warmup + steps, accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[timer], use_distributed_sampler=False,  # the sampler splits batches itself
    )
    trainer.fit(model, datamodule=datamodule)
    if not timer.seconds:
        raise RecipeError(
            f"bench: could not time recipe '{recipe.name}': its training split holds fewer than "
            f"{warmup + steps} batches of {recipe.data.batch_size}. Lower --data.batch_size or use --epochs."
        )
    return timer.steps / timer.seconds


def supervised_recipe(recipe: Recipe, data_name: str, data_root: str | None) -> Recipe:
    """The supervised baseline for ``recipe``: same backbone, augmentation and optimiser,
    trained with labels on the benchmark's labelled data."""
    values = recipe_to_dict(recipe)
    for section in METHOD_SECTIONS:
        values.pop(section, None)
    values.update(method="supervised", name=f"supervised_{recipe.backbone}",
                  description=f"Supervised baseline for {recipe.name}")
    if values["data"]["name"] != data_name:
        values["data"].update(name=data_name, train_split=None, val_split=None)
        values["data"]["root"] = data_root or values["data"]["root"]
    return recipe_from_dict(values)


def _baseline_source(recipes: list[Recipe], backbone: str) -> Recipe:
    # The views of a non-CLIP recipe are a supervised run's usual augmentation; CLIP's
    # (a crop only) would handicap the baseline.
    same = [r for r in recipes if r.backbone == backbone]
    return next((r for r in same if r.method != "clip"), same[0])


def _with_budget(recipe: Recipe, steps_per_epoch: int, max_steps: int | None, epochs: int | None) -> Recipe:
    """The recipe with the benchmark's budget, ~6 kNN points along the run (for the
    time-to-accuracy curve) and ~100 logged losses."""
    trainer = recipe.trainer
    if max_steps is not None:
        trainer = dataclasses.replace(trainer, max_epochs=-1, max_steps=max_steps, val_every_n_steps=max(max_steps // 6, 1))
    elif epochs is not None:
        trainer = dataclasses.replace(trainer, max_epochs=epochs, check_val_every_n_epoch=max(epochs // 6, 1))
    total_steps = max_steps or trainer.max_epochs * steps_per_epoch
    trainer = dataclasses.replace(trainer, log_every_n_steps=max(min(total_steps // 100, steps_per_epoch), 1))
    return dataclasses.replace(recipe, trainer=trainer)


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Train, evaluate and report; returns the results written to results.json."""
    started = time.perf_counter()
    if config.seeds < 1:
        raise RecipeError(f"bench: --seeds {config.seeds} trains nothing; give 1 or more.")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    recipes = [
        parse_recipe(["--recipe", name, *config.overrides, "--trainer.output_dir", str(out / "runs")])
        for name in config.recipes
    ]
    if len({r.name for r in recipes}) != len(recipes):
        raise RecipeError("bench: the recipes must have different names (each names its run folder).")

    # One labelled dataset scores every run: the one given, else the first recipe's that has labels.
    eval_config = config.eval
    labelled = next((r for r in recipes if r.data.name in LABELLED_DATASETS), None)
    if eval_config.data is None:
        if labelled is None:
            raise RecipeError("bench: no recipe trains on labelled data; name one to score on with --eval-data.")
        eval_config = dataclasses.replace(eval_config, data=labelled.data.name, root=eval_config.root or labelled.data.root)
    if eval_config.cache_dir is None:
        eval_config = dataclasses.replace(eval_config, cache_dir=str(out / "feature_cache"))
    # Loaded before any training, so bad evaluation data fails fast, not after the budget.
    splits = load_labelled_splits(labelled or recipes[0], eval_config)

    runs = [run for r in recipes for run in seeded_runs(r.name, "method", r, config.seeds)]
    backbones = list(dict.fromkeys(r.backbone for r in recipes))
    if config.baselines:
        for backbone in backbones:
            source = _baseline_source(recipes, backbone)
            baseline = supervised_recipe(source, eval_config.data, eval_config.root)
            runs += seeded_runs(f"supervised ({backbone})", "baseline", baseline, config.seeds)

    # Train every run under the same budget.
    for run in runs:
        datamodule = ImageDataModule(run.recipe.data, with_text=run.recipe.method == "clip", seed=run.recipe.trainer.seed)
        datamodule.setup("fit")
        max_steps = None
        if config.budget_seconds is not None:
            run.steps_per_second = measure_steps_per_second(run.recipe, datamodule)
            max_steps = max(int(config.budget_seconds * run.steps_per_second), 1)
            _say(f"{run.label}: {run.steps_per_second:.2f} steps/s -> {max_steps} steps in the budget")
        steps_per_epoch = len(datamodule.train_set) // run.recipe.data.batch_size
        run.recipe = _with_budget(run.recipe, steps_per_epoch, max_steps, config.epochs)
        _say(f"training {run.label} ({run.recipe.method}, {run.recipe.backbone}, {run.recipe.data.name})")
        run.training = fit(run.recipe, enable_progress_bar=False, datamodule=datamodule)
        _say(f"trained {run.label} in {run.training.wall_seconds:.0f} s")

    runs += [run for b in backbones for run in seeded_runs(f"random init ({b})", "baseline", _baseline_source(recipes, b), config.seeds)]
    return _evaluate_and_report(runs, config, eval_config, splits, seconds_so_far=time.perf_counter() - started)


def _evaluate_and_report(
    runs: list[BenchRun], config: BenchConfig, eval_config: EvalConfig, splits, seconds_so_far: float
) -> dict[str, Any]:
    """Evaluate every run (and the random-init backbones) with the same stage and data."""
    from ssl_zoo.report import write_report  # plotting imports only when reporting

    started = time.perf_counter()
    for run in runs:
        _say(f"evaluating {run.label}")
        if run.training is None:
            run.result = evaluate(random_init_model(run.recipe), eval_config, label=run.label, with_text=False, splits=splits)
        else:
            run.result = evaluate_checkpoint(run.training.checkpoint, eval_config, label=run.label, splits=splits)
            write_tensorboard(run.result, run.training.run_dir)
    _say("writing the report")
    results = write_report(runs, config, eval_config, splits, seconds=seconds_so_far + time.perf_counter() - started)
    _say(f"report: {config.out / 'report.html'} (also report.md, results.json)")
    return results


def reevaluate(results_path: Path) -> dict[str, Any]:
    """Evaluate the runs of an earlier ``bench`` again and rewrite its report, without
    retraining: for a changed evaluation stage (features come from the cache when the
    weights and images are unchanged). The original budget, command and training
    figures are kept."""
    import json

    from ssl_zoo.train import RunSummary

    if not results_path.is_file():
        raise RecipeError(f"bench: '{results_path}' does not exist; pass the results.json of an earlier bench.")
    saved = json.loads(results_path.read_text())
    runs = []
    for entry in saved["runs"]:
        training = entry["training"]
        summary = None
        if training is not None:
            fields = {f.name for f in dataclasses.fields(RunSummary)}
            summary = RunSummary(**{k: v for k, v in training.items() if k in fields})
            summary.run_dir, summary.checkpoint = Path(summary.run_dir), Path(summary.checkpoint)
        run = BenchRun(entry["label"], entry["kind"], recipe_from_dict(entry["recipe"]), training=summary,
                       group=entry.get("group", ""))  # results.json before --seeds: one run per label
        run.steps_per_second = training.get("steps_per_second_measured") if training else None
        runs.append(run)
    stored = saved["runs"][0]["evaluation"]["eval_config"]
    eval_config = EvalConfig(**{**stored, "templates": tuple(stored["templates"])})
    budget = saved["budget"]
    config = BenchConfig(recipes=[r.recipe.name for r in runs if r.kind == "method"], out=results_path.parent,
                         epochs=budget["epochs"], budget_seconds=budget["seconds"], command=saved["command"], eval=eval_config,
                         seeds=saved.get("seeds", 1))
    source = next(r.recipe for r in runs if r.training is None)
    splits = load_labelled_splits(source, eval_config)
    training_seconds = sum(r.training.wall_seconds for r in runs if r.training is not None)
    return _evaluate_and_report(runs, config, eval_config, splits, seconds_so_far=training_seconds)
