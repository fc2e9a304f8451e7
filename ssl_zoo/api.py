"""The public Python API, what ``from ssl_zoo import ...`` gives: the CLI's commands as functions.

    from ssl_zoo import bench, evaluate, fit, load_recipe

Overrides are recipe keys as on the command line: a section as a dict
(``trainer={"max_epochs": 1}``) or dotted keys (``**{"trainer.max_epochs": 1}``), checked
as ``fit`` checks them. The heavy modules (torch, Lightning) load on the first call, not
on import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ssl_zoo.eval.imported import ImportedModel
    from ssl_zoo.methods import SSLMethod
    from ssl_zoo.recipe import Recipe
    from ssl_zoo.training.train import RunSummary


def load_recipe(name_or_path: str | Path, **overrides: Any) -> Recipe:
    """A bundled recipe (by name, see ``ssl_zoo recipes``) or a YAML file, with ``overrides``,
    validated as ``fit`` validates it (keys, types and ranges); raises RecipeError."""
    from ssl_zoo.recipe import parse_recipe

    return parse_recipe(["--recipe", str(name_or_path), *_override_args(overrides)])


def fit(recipe: Recipe | str | Path, *, resume: str | Path | None = None, progress_bar: bool = True,
        **overrides: Any) -> RunSummary:
    """Train ``recipe`` (a Recipe, or a name or file with ``overrides`` as load_recipe takes
    them) and write its run folder; ``resume``: a run folder or its last.ckpt to continue.
    Returns the run's summary: ``.checkpoint``, ``.run_dir``, ``.knn_top1``, ``.wall_seconds``..."""
    from ssl_zoo.training.checkpointing import checkpoint_in
    from ssl_zoo.recipe import Recipe
    from ssl_zoo.training.train import fit as train

    if isinstance(recipe, Recipe):
        if overrides:
            raise TypeError("fit: overrides apply to a recipe name or file; change a Recipe with dataclasses.replace.")
    else:
        recipe = load_recipe(recipe, **overrides)
    return train(recipe, enable_progress_bar=progress_bar, resume=checkpoint_in(resume) if resume else None)


def evaluate(model: str | Path | SSLMethod | ImportedModel, *, data: str | None = None, root: str | None = None,
             protocol: Literal["features", "probe"] = "features", max_train: int | None = None, max_test: int | None = None,
             device: str = "auto", **options: Any) -> dict[str, Any]:
    """Score ``model`` (a checkpoint ``fit`` wrote, or a model) as ``ssl_zoo eval`` does: linear
    and kNN top-1 on ``data`` (default: the recipe's own), zero-shot and retrieval for models
    with text, diagnostics. ``options``: any other field of ssl_zoo.eval.config.EvalConfig.
    Returns the results (``["metrics"]["knn_top1"]``, ...), as the JSON ``eval`` writes."""
    from ssl_zoo.eval.config import EvalConfig
    from ssl_zoo.eval.stage import evaluate as evaluate_model
    from ssl_zoo.eval.stage import evaluate_checkpoint

    config = EvalConfig(data=data, root=root, protocol=protocol, max_train=max_train, max_test=max_test,
                        device=device, **options)
    if isinstance(model, (str, Path)):
        return evaluate_checkpoint(model, config)
    return evaluate_model(model, config)


def bench(recipes: Sequence[str | Path], *, budget: str | None = "90s", epochs: int | None = None,
          out: str | Path = "runs/bench", seeds: int = 1, baselines: bool = True, max_test: int | None = None,
          device: str = "auto", **overrides: Any) -> dict[str, Any]:
    """Train ``recipes`` under one budget (``budget`` of training wall clock: 90s, 10m, 1h; or
    ``epochs`` each), evaluate them beside a supervised and a random-init baseline, and write
    report.md, report.html and results.json under ``out``, as ``ssl_zoo bench`` does.
    ``overrides`` apply to every recipe. Returns the results written to results.json."""
    from ssl_zoo.bench import BenchConfig, run_bench
    from ssl_zoo.training.budget import parse_budget
    from ssl_zoo.eval.config import EvalConfig

    args = _override_args(overrides)
    config = BenchConfig(
        recipes=[str(r) for r in recipes], out=Path(out), epochs=epochs,
        budget_seconds=parse_budget(budget) if epochs is None and budget else None,
        overrides=args, baselines=baselines, seeds=seeds,
        eval=EvalConfig(max_test=max_test, device=device),
        command=" ".join(["python -m ssl_zoo bench --recipes", *map(str, recipes),
                          f"--epochs {epochs}" if epochs is not None else f"--budget {budget}", "--out", str(out),
                          *([f"--seeds {seeds}"] if seeds != 1 else []), *([] if baselines else ["--no-baselines"]),
                          *([f"--max-test {max_test}"] if max_test else []), *args]),
    )
    return run_bench(config)


def _override_args(overrides: Mapping[str, Any]) -> list[str]:
    """Overrides as command-line arguments: {"trainer": {"max_epochs": 1}} -> --trainer.max_epochs 1."""

    def flat(prefix: str, values: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        for key, value in values.items():
            if isinstance(value, Mapping):
                yield from flat(f"{prefix}{key}.", value)
            else:
                yield f"{prefix}{key}", value

    # Strings go as they are; everything else as JSON, which the parser reads back (1, 0.5, [0.0, 0.0], null, true).
    return [arg for key, value in flat("", overrides)
            for arg in (f"--{key}", str(value) if isinstance(value, (str, Path)) else json.dumps(value))]
