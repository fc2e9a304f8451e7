"""The evaluation stage: one protocol for every method, checkpoint and baseline.

    model -> frozen backbone -> features of the train and test splits (cached)
      -> linear eval (L-BFGS on standardised features), kNN (k=200, T=0.1)
      -> models with text: zero-shot with prompt ensembles, image<->text retrieval R@K
      -> diagnostics: embedding std, RankMe, alignment, uniformity
      -> results (a JSON-ready dict: recipe, checkpoint hash, data, device, versions)

Its parts: ``config`` (the settings), ``data`` (which splits), ``evaluator`` (the
protocols on one model's features); ``ssl_zoo.environment`` says where it ran.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ssl_zoo.environment import device_name, versions
from ssl_zoo.eval.cache import hash_file
from ssl_zoo.eval.class_names import read_class_names
from ssl_zoo.eval.confidence import bootstrap_interval, correct_to_text
from ssl_zoo.eval.config import EvalConfig
from ssl_zoo.eval.data import LabelledSplits, load_labelled_splits, load_retrieval_pairs, model_data
from ssl_zoo.eval.evaluator import Evaluator
from ssl_zoo.eval.imported import ImportedModel, WeightsSource, load_imported
from ssl_zoo.methods import SSLMethod, load_method
from ssl_zoo.recipe import recipe_to_dict


def evaluate(
    model: SSLMethod | ImportedModel, config: EvalConfig, label: str | None = None, with_text: bool | None = None,
    splits: LabelledSplits | None = None,
) -> dict[str, Any]:
    """Every metric of the stage for ``model``; returns a JSON-ready dict.

    ``model``: a method (from ``fit``, or untrained) or weights made elsewhere.
    ``with_text``: run zero-shot and retrieval (default: when the model has a text tower).
    ``splits``: labelled data already loaded (default: load it as ``config`` says).
    """
    started = time.perf_counter()
    recipe = model.recipe  # None for weights made elsewhere
    with_text = model.uses_text if with_text is None else with_text
    trained_on = model_data(recipe, config, model.eval_transform.size)
    evaluator = Evaluator(model, config)
    imported = recipe is None
    result: dict[str, Any] = {
        "label": label or (model.weights.source if imported else recipe.name),
        "method": "imported" if imported else recipe.method,
        "backbone": model.weights.source if imported else recipe.backbone,
        "recipe": None if imported else recipe_to_dict(recipe),
        "device": device_name(evaluator.device),
        "versions": versions(),
        "eval_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "metrics": {},
        "intervals": {},
        "skipped": {},
    }

    if imported:
        result["weights"] = model.weights.describe()
        result["input"] = {"size": model.eval_transform.size, "mean": model.eval_transform.mean.tolist(),
                           "std": model.eval_transform.std.tolist()}
    splits = splits or load_labelled_splits(trained_on, config)
    if isinstance(splits, str):
        result["skipped"]["classification"] = splits
    else:
        if config.classnames:  # checked before any feature is extracted, not after hours of it
            read_class_names(config.classnames, splits.train.num_classes)
        result["data"] = splits.info
        metrics, correct = evaluator.classification(splits.train, splits.test, with_text)
        result["metrics"].update(metrics)
        if evaluator.zero_shot_classes is not None:
            classes = evaluator.zero_shot_classes
            result["zero_shot"] = {"class_names": classes.source, "templates": len(config.templates or classes.templates)}
            if classes.warning:
                result["zero_shot"]["warning"] = classes.warning
                warnings.warn(classes.warning, stacklevel=2)
        result["linear"] = evaluator.linear_protocol
        # 95 % bootstrap intervals over the test images, and the per-image outcomes they come
        # from ('1' right, '0' wrong, in test-split order), so runs can be compared later.
        result["intervals"] = {name: list(bootstrap_interval(c, seed=config.seed)) for name, c in correct.items()}
        result["per_image_correct"] = {name: correct_to_text(c) for name, c in correct.items()}
        if evaluator.few_shot is not None:  # intervals over the draws of k images per class
            result["few_shot"] = evaluator.few_shot
            result["intervals"].update(evaluator.few_shot_intervals)
        if evaluator.shift is not None:
            result["shift"] = evaluator.shift

    if with_text:
        pairs = load_retrieval_pairs(trained_on, config)
        if isinstance(pairs, str):
            result["skipped"]["retrieval"] = pairs
        else:
            images, result["pairs"] = pairs
            result["metrics"].update(evaluator.retrieval(images, result["pairs"]["split"]))

    evaluator.seconds["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 3) for k, v in evaluator.seconds.items()}
    result["feature_cache"] = {"hits": evaluator.cache.hits, "misses": evaluator.cache.misses}
    return result


def evaluate_checkpoint(
    path: str | Path, config: EvalConfig, label: str | None = None, splits: LabelledSplits | None = None
) -> dict[str, Any]:
    """Load a ``fit`` checkpoint and evaluate it; the result names the file and its hash."""
    model = load_method(path)
    result = evaluate(model, config, label=label, splits=splits)
    result["checkpoint"] = {"path": str(path), "sha256": hash_file(path), "global_step": model.trained_steps}
    return result


def evaluate_weights(
    weights: WeightsSource, config: EvalConfig, input_size: int | None = None, label: str | None = None,
    splits: LabelledSplits | None = None,
) -> dict[str, Any]:
    """Load weights made elsewhere (``--weights LIBRARY:NAME=FILE``) and evaluate them."""
    return evaluate(load_imported(weights, input_size), config, label=label, splits=splits)


def write_tensorboard(result: dict[str, Any], log_dir: str | Path) -> None:
    """The metrics as TensorBoard scalars under ``eval/<data>/``."""
    from torch.utils.tensorboard import SummaryWriter

    data = result.get("data", {}).get("name") or result.get("pairs", {}).get("name", "data")
    step = result.get("checkpoint", {}).get("global_step", 0)  # the training step the weights are from
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = SummaryWriter(str(log_dir))
    for name, value in result["metrics"].items():
        writer.add_scalar(f"eval/{data}/{name}", value, global_step=step)
    writer.close()
