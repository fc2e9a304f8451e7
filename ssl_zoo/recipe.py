"""Recipes: the one source of configuration.

A recipe is a YAML file under ``recipes/`` whose keys are the fields of ``Recipe`` below
(nested sections are dataclasses). It is parsed and type-checked by jsonargparse, the
machinery under LightningCLI, so an unknown key or a value of the wrong type is an error,
and any key can be overridden on the command line (``--optim.lr 0.1``). The resolved
recipe is saved with every checkpoint and run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.resources
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from ssl_zoo.augment import AugmentConfig
from ssl_zoo.errors import RecipeError
from ssl_zoo.registry import DATASETS, METHODS


@dataclass
class DataConfig:
    name: str = "shapes"  # a registered dataset (ssl_zoo.registry.DATASETS; `ssl_zoo recipes` lists them)
    # Where the data lives: torchvision's download folder (cifar10/cifar100/stl10), the
    # folder of cifar10.npz / flickr8k_64.npz (shared_*), an ImageFolder root with
    # train/ and val/ inside (folder), a CSV/JSONL file of path,caption (pairs), or
    # WebDataset tar shards: a folder of .tar files or a pattern train-{000000..000145}.tar.
    root: str = "data"
    download: bool = False  # torchvision datasets only; needs internet
    train_split: str | None = None  # None: the dataset's usual training split
    val_split: str | None = None  # None: the dataset's usual test split
    image_size: int = 32  # side of the stored images (shapes render size, folders resize)
    num_images: int = 4000  # shapes only: training images (validation: a quarter as many)
    batch_size: int = 256  # per process
    # DataLoader worker processes. None: 0 for in-memory data (indexed a batch at a time),
    # every core of this process's share for shards (they decode there).
    num_workers: int | None = None
    # shards only: validation shards for the monitors (None: hold out val_size training samples)
    val_root: str | None = None
    # shards only: where JPEGs are decoded. auto: on the GPU (nvJPEG) when training on one,
    # else in the DataLoader workers.
    decode: Literal["auto", "worker", "device"] = "auto"
    hold_on_device: bool = True  # keep the uint8 dataset on the GPU when there is one
    knn_bank_size: int = 10_000  # training images in the kNN monitor's memory bank
    val_size: int | None = None  # validation images the monitors score (None: the whole split)
    context_length: int = 77  # methods with text (CLIP) only: tokens per caption

    def __post_init__(self) -> None:
        DATASETS[self.name]  # an unknown name is an error that lists the valid ones


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.06  # per 256 images; scaled by the global batch size (lr_scaling)
    # linear: lr x global batch / 256 (SimCLR, BYOL, MoCo v3); sqrt: lr x sqrt(global batch / 256);
    # none: lr as given at any batch (CLIP and open_clip give theirs so). See effective_lr.
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    momentum: float = 0.9  # sgd and lars
    # lars only: the trust coefficient (eta; 0.001 in SimCLR, BYOL and lightly, 0.02 in
    # solo-learn), and whether the layer-wise rate is clipped to the global one (solo-learn).
    lars_eta: float = 0.001
    lars_clip_lr: bool = False
    weight_decay: float = 5e-4  # not applied to norm layers and biases
    warmup_epochs: float = 10
    probe_lr: float = 0.1  # the online linear probe's learning rate (same schedule)


def effective_lr(optim: OptimConfig, global_batch: int) -> float:
    """The learning rate the optimiser is built with when ``global_batch`` images (per-process
    batch x processes) make one step: ``optim.lr`` scaled by ``optim.lr_scaling``."""
    if optim.lr_scaling == "linear":
        return optim.lr * global_batch / 256
    if optim.lr_scaling == "sqrt":
        return optim.lr * math.sqrt(global_batch / 256)
    return optim.lr


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    max_steps: int = -1  # optimiser steps; when set (> 0) it ends the run and sets the schedules' length
    max_time: str | None = None  # wall-clock budget "DD:HH:MM:SS"; stops early when reached
    accelerator: str = "auto"
    devices: int | str = "auto"  # processes per node (GPUs, or CPU processes with accelerator cpu)
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning's: "ddp" on several devices (what auto picks), "ddp_spawn", ...
    # Batch-norm statistics over the global batch when there are several processes. None:
    # as the method's paper does (on for SimCLR and BYOL, off for CLIP and supervised).
    sync_batchnorm: bool | None = None
    precision: str = "32-true"  # "bf16-mixed" on recent GPUs
    seed: int = 0
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int = 1  # also how often the kNN monitor runs
    val_every_n_steps: int | None = None  # validate every N optimiser steps instead of by epoch
    output_dir: str = "runs"  # run folders go to output_dir/<recipe name>/version_N
    checkpoint_every_n_steps: int | None = 500  # also at every epoch's end; None: only there
    # Loggers beside TensorBoard, which always runs (the bench report reads its files); each
    # writes inside the run folder. wandb and mlflow need their packages (pip install ...).
    loggers: list[Literal["csv", "wandb", "mlflow"]] = field(default_factory=list)


@dataclass
class ReferenceConfig:
    """The published result a recipe should reach, read beside ours in reports.

    ``metric: none`` when there is no published counterpart; ``note`` then says why.
    """

    metric: Literal["knn_top1", "linear_top1", "zero_shot_top1", "none"] = "none"
    value: float | None = None  # percent
    # linear_top1 only: how the source's linear classifier was trained, as ``eval
    # --protocol`` names it. probe: SGD on augmented crops of the frozen backbone (the
    # protocol of SimCLR, BYOL, MoCo v3 and solo-learn); features: logistic regression on
    # fixed features (CLIP's linear probes). A report compares only a number made the same way.
    protocol: Literal["features", "probe"] | None = None
    dataset: str = ""  # what it was scored on, e.g. "CIFAR-10 test"
    epochs: int | None = None  # of pretraining
    batch_size: int | None = None  # global
    # The learning rate the source trains with at that global batch_size, after its own
    # scaling rule (SimCLR's 0.3 x 4096 / 256 = 4.8): what effective_lr(optim, batch_size)
    # must give (tests/test_recipe_lr.py). Where ssl_zoo's loss is a constant multiple of
    # the source's, the rate that takes the source's steps, and the recipe's comment says so.
    # Also set beside metric none when the optimiser settings still follow a source.
    lr: float | None = None
    source: str = ""  # paper and table, or repository and file
    note: str = ""  # deviations from the source, or why there is none

    def __post_init__(self) -> None:
        if self.metric == "none":
            if not self.note.strip():
                raise RecipeError("reference: metric none needs a note saying why there is no published result.")
        elif self.value is None or self.epochs is None or not self.source.strip():
            raise RecipeError(
                f"reference: metric {self.metric} needs value (percent), epochs and source; "
                f"got value={self.value}, epochs={self.epochs}, source={self.source!r}."
            )
        if self.metric == "linear_top1" and self.protocol is None:
            raise RecipeError(
                "reference.protocol is required with metric linear_top1: probe (an SGD classifier on "
                "augmented crops, as the SimCLR and BYOL papers train it) or features (logistic regression "
                "on fixed features, as CLIP's linear probes); say which one made the published number."
            )
        if self.metric != "linear_top1" and self.protocol is not None:
            raise RecipeError(
                f"reference.protocol ({self.protocol}) applies to metric linear_top1 only, not {self.metric}; remove it."
            )

    def describe(self) -> str:
        """One line: the number, its protocol and source, or why there is none."""
        if self.metric == "none":
            return f"none ({self.note.strip()})"
        setting = ", ".join(
            part for part in (self.dataset, f"{self.protocol} protocol" if self.protocol else "",
                              f"{self.epochs} epochs", f"batch {self.batch_size}" if self.batch_size else "") if part
        )
        return f"{METRIC_NAMES[self.metric]} {self.value:.1f} % ({setting}; {self.source})"


METRIC_NAMES = {"knn_top1": "kNN top-1", "linear_top1": "linear top-1", "zero_shot_top1": "zero-shot top-1"}


@dataclass
class Recipe:
    method: str  # a registered method (ssl_zoo.registry.METHODS; `ssl_zoo recipes` lists them)
    name: str = "custom"  # the recipe's name; names the run folder
    description: str = ""  # one line, shown by `ssl_zoo recipes`
    backbone: str = "resnet18_cifar"  # a name from ssl_zoo.backbones.IMAGE_BACKBONES, or timm:NAME / torchvision:NAME
    # Weights the backbone starts from, to fine-tune or continue (None: random init): a
    # .safetensors or .pth file in the backbone's own keys (what `export` writes, what
    # torchvision and timm publish) or a fit checkpoint, whose backbone is taken.
    init_weights: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reference: ReferenceConfig = field(default_factory=lambda: ReferenceConfig(note="the recipe names none"))
    # The method's own settings: in YAML the section named after the method (``simclr:``),
    # whose keys are the fields of the method's ``Config`` dataclass (in its own file).
    method_config: Any = None

    def __post_init__(self) -> None:
        config_type = METHODS[self.method].Config
        if self.method_config is None:
            self.method_config = config_type()
        elif not isinstance(self.method_config, config_type):
            raise RecipeError(
                f"Recipe '{self.name}': the '{self.method}:' section must be a {config_type.__name__}, "
                f"not {type(self.method_config).__name__}."
            )


def recipes_dir() -> Path:
    """The folder of the bundled recipes: ``recipes/`` at the top of a source checkout,
    or the ``ssl_zoo.recipes`` package data that a wheel installs from it."""
    checkout = Path(__file__).resolve().parents[1] / "recipes"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("ssl_zoo.recipes")))


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A bundled recipe's name, or the path of a YAML file, to the file's path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    recipes = available_recipes()
    if name_or_path not in recipes:
        raise RecipeError(
            f"Unknown recipe '{name_or_path}'. Valid recipes: {', '.join(recipes)}. "
            "Run `python -m ssl_zoo recipes` to see what each does, or pass the path of "
            "a .yaml file."
        )
    return recipes[name_or_path]


def recipe_parser(prog: str = "ssl_zoo fit") -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        exit_on_error=False,
        description=(
            "Train a method from a recipe. Any recipe key can be overridden after "
            "--recipe, e.g. `--data.batch_size 128 --trainer.max_epochs 5`."
        ),
    )
    parser.add_argument(
        "--recipe", action=ActionConfigFile, help="a recipe name (see `ssl_zoo recipes`) or a YAML file"
    )
    parser.add_class_arguments(Recipe, None, fail_untyped=True, skip={"method_config"})
    # One optional section per registered method; the recipe sets only its own.
    for name, method in METHODS.items():
        parser.add_argument(f"--{name}", type=Optional[method.Config], default=None,
                            help=f"{name}'s settings (recipes of method {name} only)")
    return parser


def sections() -> dict[str, type]:
    """Every recipe section's dataclass, by key: the fixed ones and one per method."""
    fixed = {"data": DataConfig, "augment": AugmentConfig, "optim": OptimConfig, "trainer": TrainerConfig,
             "reference": ReferenceConfig}
    return {**fixed, **{name: method.Config for name, method in METHODS.items()}}


def _unknown_key_hint(message: str) -> str:
    """For an unknown key: what it is, the closest valid key and its section's keys."""
    if not any(s in message for s in ("unrecognized", "does not accept", "not expected", "not accepted")):
        return message
    section = re.search(r"--(\w+)\.|Group '(\w+)'|\"(\w+)\.|Parser key \"(\w+)\"", message)
    name = next((g for g in section.groups() if g), None) if section else None
    known = sections()
    keys = [f.name for f in dataclasses.fields(known[name])] if name in known else [*RECIPE_KEYS, *METHODS.names()]
    given = re.findall(r"(?:--(?:\w+\.)?|[Oo]ption ')(\w+)", message)
    close = difflib.get_close_matches(given[-1], keys, n=1) if given else []
    where = f"of '{name}'" if name in known else "at the top level"
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    if given and "Union subtypes" in message:  # a method's section: jsonargparse's message is about types
        message = f"the '{name}:' section has no key '{given[-1]}'"
    return f"{message}.{suggestion} Valid keys {where}: {', '.join(keys)}"


def parse_recipe(argv: list[str], parser: ArgumentParser | None = None) -> Recipe:
    """Parse ``--recipe NAME_OR_PATH`` followed by overrides into a validated Recipe."""
    argv = list(argv)
    if "--recipe" in argv:
        # The recipe file is read first, so overrides given before it still win.
        at = argv.index("--recipe")
        if at + 1 >= len(argv):
            raise RecipeError("--recipe needs a value: a recipe name or a YAML file.")
        path = resolve_recipe_path(argv[at + 1])
        del argv[at : at + 2]
        argv = ["--recipe", str(path), *argv]
    source = f" ({argv[1]})" if argv[:1] == ["--recipe"] else ""
    parser = parser or recipe_parser()
    try:
        namespace = parser.parse_args(argv)
        recipe = parser.instantiate(namespace).as_dict()
    except argparse.ArgumentError as error:
        message = " ".join(str(error).split())
        raise RecipeError(f"Invalid recipe{source}: {_unknown_key_hint(message)}.") from None
    except (TypeError, ValueError) as error:
        raise RecipeError(f"Invalid recipe{source}: {error}") from None
    return _as_recipe(recipe)


RECIPE_KEYS = [f.name for f in dataclasses.fields(Recipe) if f.name != "method_config"]


def _as_recipe(values: dict[str, Any]) -> Recipe:
    values = {k: v for k, v in values.items() if k not in ("recipe", "__path__")}
    given = {name: section for name in METHODS.names() if (section := values.pop(name, None)) is not None}
    method = values["method"]
    METHODS[method]  # an unknown method is an error that lists the valid ones
    for name in given:
        if name != method:
            raise RecipeError(
                f"Recipe '{values.get('name', 'custom')}' is for method '{method}' but sets the "
                f"'{name}:' section. Remove it, or set method: {name}."
            )
    return Recipe(**values, method_config=given.get(method))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain YAML-safe dict (tuples become lists); the method's settings under its name."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    values = plain(dataclasses.asdict(recipe))
    values[recipe.method] = values.pop("method_config")
    return values


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """Validate a saved recipe (from a checkpoint or run folder) exactly as a file is."""
    # NOTE: recipes saved before reference.protocol existed: every bundled linear reference
    # then was a paper's SGD probe, so their checkpoints and results still load.
    reference = values.get("reference") or {}
    if reference.get("metric") == "linear_top1" and reference.get("protocol") is None:
        values = {**values, "reference": {**reference, "protocol": "probe"}}
    parser = recipe_parser()
    try:
        namespace = parser.parse_object(values)
        return _as_recipe(parser.instantiate(namespace).as_dict())
    except argparse.ArgumentError as error:
        raise RecipeError(f"Invalid saved recipe: {' '.join(str(error).split())}") from None


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
