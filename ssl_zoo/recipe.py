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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from ssl_zoo.augment import AugmentConfig
from ssl_zoo.errors import RecipeError
from ssl_zoo.ranges import field_ranges, range_errors, ranged
from ssl_zoo.registry import DATASETS, METHODS


@dataclass
class DataConfig:
    """data: which images a run trains on, how many at a time, and how they are loaded."""

    name: str = "shapes"
    """A registered dataset (`ssl_zoo recipes` lists them)."""
    root: str = "data"
    """Where the data lives: torchvision's download folder (cifar10, cifar100, stl10); the folder
    of cifar10.npz / flickr8k_64.npz (shared_*); an ImageFolder root with train/ and val/ inside
    (folder); a CSV/JSONL file of path,caption (pairs); or WebDataset tar shards, a folder of .tar
    files or a pattern train-{000000..000145}.tar (shards)."""
    download: bool = False
    """torchvision datasets only: download them when missing (needs internet)."""
    train_split: str | None = None
    """The training split; null: the dataset's usual one."""
    val_split: str | None = None
    """The validation split the monitors score; null: the dataset's usual test split."""
    image_size: int = ranged(32, at_least=8)
    """Side of the stored images in pixels (shapes are drawn at it, folder images resized to it)."""
    batch_size: int = ranged(256, at_least=1)
    """Images per process and step; the global batch (x processes) scales optim.lr."""
    # In-memory data is indexed a batch at a time, so workers would only add copies; shards
    # decode in them, so they get every core of this process's share.
    num_workers: int | None = ranged(None, at_least=0)
    """DataLoader worker processes; null: 0 for in-memory data, every core for shards."""
    # Here, not in the shards' own section: the evaluation stage takes it too (eval --val-root),
    # for any dataset read from shards.
    val_root: str | None = None
    """Datasets read from shards (shards, imagenet100): validation shards for the monitors; null:
    hold out data.val_size training samples."""
    hold_on_device: bool = True
    """Keep the uint8 dataset in GPU memory when training on a GPU."""
    knn_bank_size: int = ranged(10_000, at_least=1)
    """Training images in the kNN monitor's memory bank."""
    val_size: int | None = ranged(None, at_least=1)
    """Validation images the monitors score; null: the whole split."""

    # The dataset's own section (``shapes: {num_images: 20000}``): an instance of its spec's
    # ``config`` dataclass, None for a dataset without one. Not a ``data.`` key: the parser
    # reads it as the top-level section named after the dataset (``recipe_parser``).
    options: Any = None

    def __post_init__(self) -> None:
        spec = DATASETS[self.name]  # an unknown name is an error that lists the valid ones
        if self.options is None:
            self.options = spec.default_options()
        elif spec.config is None or not isinstance(self.options, spec.config):
            wanted = f"a {spec.config.__name__}" if spec.config is not None else "none (it has no options)"
            raise RecipeError(f"data.options of dataset '{self.name}' must be {wanted}, not {type(self.options).__name__}.")


@dataclass
class OptimConfig:
    """optim: the optimiser and its learning-rate schedule (linear warm-up, then cosine decay)."""

    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    """sgd, lars (layer-wise rate, as SimCLR and BYOL at large batches) or adamw."""
    lr: float = ranged(0.06, at_least=0)
    """Peak learning rate per 256 images: the optimiser gets it scaled by the global batch as
    optim.lr_scaling says (linear: lr x global batch / 256); 0 keeps the weights as they start."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """How optim.lr follows the global batch: linear, lr x batch / 256 (SimCLR, BYOL, MoCo v3);
    sqrt, lr x sqrt(batch / 256); none, lr as given at any batch (CLIP and open_clip)."""
    momentum: float = ranged(0.9, at_least=0, below=1)
    """sgd and lars: momentum."""
    # NOTE: 0.001 in SimCLR, BYOL and lightly, 0.02 in solo-learn.
    lars_eta: float = ranged(0.001, above=0)
    """lars only: the trust coefficient (eta) of the layer-wise rate."""
    lars_clip_lr: bool = False
    """lars only: clip the layer-wise rate to the global one (as solo-learn)."""
    weight_decay: float = ranged(5e-4, at_least=0)
    """Weight decay; not applied to norm layers and biases."""
    warmup_epochs: float = ranged(10, at_least=0)
    """Epochs of linear warm-up from 0 to the peak rate (fractions allowed)."""
    probe_lr: float = ranged(0.1, above=0)
    """The online linear probe's learning rate (same schedule, not scaled)."""


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
    """trainer: how long, on what and how often to validate, log and checkpoint (Lightning's Trainer)."""

    max_epochs: int = ranged(100, at_least=1, also=(-1,))
    """Epochs to train; -1: no limit (trainer.max_steps or max_time ends the run)."""
    max_steps: int = ranged(-1, at_least=1, also=(-1,))
    """Optimiser steps; when set it ends the run and sets the schedules' length; -1: unset."""
    max_time: str | None = None
    """Wall-clock budget "DD:HH:MM:SS"; the run stops early when it is reached."""
    accelerator: str = "auto"
    """cpu, gpu or auto."""
    devices: int | str = ranged("auto", at_least=1, also=(-1,))
    """Processes per node (GPUs, or CPU processes with accelerator cpu); -1 or auto: all."""
    num_nodes: int = ranged(1, at_least=1)
    """Machines."""
    strategy: str = "auto"
    """Lightning's strategy: ddp on several devices (what auto picks), ddp_spawn, ..."""
    # NOTE: SimCLR's paper syncs batch norm (local statistics let positives cheat); CLIP's does not.
    sync_batchnorm: bool | None = None
    """Batch-norm statistics over the global batch under several processes; null: as the
    method's paper does (on for SimCLR and BYOL, off for CLIP and supervised)."""
    precision: str = "32-true"
    """Lightning's precision: 32-true, or bf16-mixed on recent GPUs."""
    seed: int = ranged(0, at_least=0, at_most=2**32 - 1)
    """Seeds initialisation, data order and augmentation: the same seed repeats a run."""
    log_every_n_steps: int = ranged(50, at_least=1)
    """Steps between logged losses and learning rates."""
    check_val_every_n_epoch: int = ranged(1, at_least=1)
    """Epochs between validations (the kNN monitor and the online probe)."""
    val_every_n_steps: int | None = ranged(None, at_least=1)
    """Validate every N optimiser steps instead of by epoch; null: by epoch."""
    output_dir: str = "runs"
    """Run folders go to output_dir/<recipe name>/version_N."""
    checkpoint_every_n_steps: int | None = ranged(500, at_least=1)
    """Steps between checkpoints (also at every epoch's end); null: only at epochs' ends."""
    # TensorBoard always runs beside them (the bench report reads its files).
    loggers: list[Literal["csv", "wandb", "mlflow"]] = field(default_factory=list)
    """Loggers beside TensorBoard, each writing inside the run folder; wandb and mlflow need
    their packages (pip install ssl_zoo[loggers])."""


@dataclass
class ReferenceConfig:
    """reference: the published result a recipe should reach, read beside ours in reports.

    ``metric: none`` when there is no published counterpart; ``note`` then says why.
    """

    metric: Literal["knn_top1", "linear_top1", "zero_shot_top1", "none"] = "none"
    """The published metric; none: there is no published counterpart (reference.note says why)."""
    value: float | None = ranged(None, at_least=0, at_most=100)
    """The published number, in percent."""
    # A report compares only a number made the same way.
    protocol: Literal["features", "probe"] | None = None
    """linear_top1 only: how the source trained its linear classifier, as `eval --protocol`
    names it. probe: SGD on augmented crops of the frozen backbone (SimCLR, BYOL, MoCo v3,
    solo-learn); features: logistic regression on fixed features (CLIP's linear probes)."""
    dataset: str = ""
    """What it was scored on, e.g. "CIFAR-10 test"."""
    epochs: int | None = ranged(None, at_least=1)
    """Epochs of pretraining behind the published number."""
    batch_size: int | None = ranged(None, at_least=1)
    """The source's global batch."""
    # What effective_lr(optim, batch_size) must give (tests/test_recipe_lr.py). Where
    # ssl_zoo's loss is a constant multiple of the source's, the rate that takes the
    # source's steps, and the recipe's comment says so.
    lr: float | None = ranged(None, above=0)
    """The learning rate the source trains with at reference.batch_size, after its own scaling
    rule (SimCLR's 0.3 x 4096 / 256 = 4.8); also set beside metric none when the optimiser
    settings still follow a source."""
    source: str = ""
    """Paper and table, or repository and file."""
    note: str = ""
    """Deviations from the source, or why there is none."""

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
    """A recipe: what to train, on what, and how."""

    method: str
    """A registered method (`ssl_zoo recipes` lists them)."""
    name: str = "custom"
    """The recipe's name; names the run folder."""
    description: str = ""
    """One line, shown by `ssl_zoo recipes`."""
    backbone: str = "resnet18_cifar"
    """A name from ssl_zoo.backbones.IMAGE_BACKBONES, or timm:NAME / torchvision:NAME."""
    init_weights: str | None = None
    """Weights the backbone starts from, to fine-tune or continue (null: random init): a
    .safetensors or .pth file in the backbone's own keys (what `export` writes, what torchvision
    and timm publish) or a fit checkpoint, whose backbone is taken."""
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
        # Every numeric key's range (declared beside its field), checked before anything runs.
        errors = [error for key, section in self.sections().items() for error in range_errors(section, key)]
        if errors:
            raise RecipeError(
                f"Invalid recipe value{'s' if len(errors) > 1 else ''} in '{self.name}', out of range: {'; '.join(errors)}. "
                f"Set {'each' if len(errors) > 1 else 'it'} within its range, in the recipe or with --SECTION.KEY VALUE "
                "(`python -m ssl_zoo fit --help` says what every key means)."
            )

    def sections(self) -> dict[str, Any]:
        """The recipe's sections by their YAML key; the method's own under the method's name,
        the dataset's (if it has one) under the dataset's."""
        dataset = {self.data.name: self.data.options} if self.data.options is not None else {}
        return {"data": self.data, "augment": self.augment, "optim": self.optim, "trainer": self.trainer,
                "reference": self.reference, self.method: self.method_config, **dataset}


def recipes_dir() -> Path:
    """The folder of the bundled recipes: ``ssl_zoo/recipes`` where a wheel installed them
    (package data mapped from ``recipes/``), else ``recipes/`` at the top of a source checkout."""
    # NOTE: not importlib.resources.files("ssl_zoo.recipes"): the folder has no __init__.py,
    # so it is a namespace package, whose files() is a MultiplexedPath and no Path.
    package = Path(__file__).resolve().parent
    installed = package / "recipes"
    return installed if installed.is_dir() else package.parent / "recipes"


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


def recipe_parser(prog: str = "ssl_zoo fit", key_help: bool = True) -> ArgumentParser:
    """The recipe's parser. ``key_help``: each key's help is the docstring under its field,
    which jsonargparse reads from the source (docstring_parser); parsing alone skips that,
    as it nearly doubles the ~0.1 s a recipe takes to parse."""
    set_parsing_settings(docstring_parse_attribute_docstrings=key_help)
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
    # NOTE: data is added on its own: jsonargparse's skip does not reach a nested dataclass's
    # fields, and data.options is read from the dataset's own section instead.
    parser.add_class_arguments(Recipe, None, fail_untyped=True, skip={"method_config", "data"})
    parser.add_class_arguments(DataConfig, "data", fail_untyped=True, skip={"options"})
    # One optional section per registered method and per dataset with options; the recipe
    # sets only its own.
    for name, method in METHODS.items():
        parser.add_argument(f"--{name}", type=Optional[method.Config], default=None,
                            help=f"{name}'s settings (recipes of method {name} only; --{name}.help lists them)")
    for name, config in dataset_sections().items():
        parser.add_argument(f"--{name}", type=Optional[config], default=None,
                            help=f"the settings of dataset {name} (recipes with data.name {name} only; --{name}.help lists them)")
    _add_ranges_to_help(parser)
    return parser


def _add_ranges_to_help(parser: ArgumentParser) -> None:
    """Each ranged key's help ends with its valid range: '... Valid: >= 1.'"""
    ranges = {f"{key}.{name}": valid for key, section in sections().items() for name, valid in field_ranges(section).items()}
    for action in parser._actions:  # NOTE: argparse's list of the parser's arguments, nested groups included
        if action.dest in ranges and action.help:
            action.help = f"{action.help} Valid: {ranges[action.dest]}."


def dataset_sections() -> dict[str, type]:
    """The dataclass of each dataset's own section, by the dataset's name (datasets with options)."""
    found = {name: spec.config for name, spec in DATASETS.items() if spec.config is not None}
    clash = sorted(set(found) & set(METHODS.names()))
    if clash:  # (recipe keys are refused when the dataset registers)
        raise RecipeError(f"Dataset section(s) {', '.join(clash)} share their name with a method's section; rename the dataset.")
    return found


def sections() -> dict[str, type]:
    """Every recipe section's dataclass, by key: the fixed ones, one per method and one per
    dataset with options."""
    fixed = {"data": DataConfig, "augment": AugmentConfig, "optim": OptimConfig, "trainer": TrainerConfig,
             "reference": ReferenceConfig}
    return {**fixed, **{name: method.Config for name, method in METHODS.items()}, **dataset_sections()}


def _unknown_key_hint(message: str) -> str:
    """For an unknown key: what it is, the closest valid key and its section's keys."""
    if not any(s in message for s in ("unrecognized", "does not accept", "not expected", "not accepted")):
        return message
    section = re.search(r"--(\w+)\.|Group '(\w+)'|\"(\w+)\.|Parser key \"(\w+)\"", message)
    name = next((g for g in section.groups() if g), None) if section else None
    known = sections()
    if name in known:
        keys = [f.name for f in dataclasses.fields(known[name]) if (known[name], f.name) != (DataConfig, "options")]
    else:
        keys = [*RECIPE_KEYS, *METHODS.names(), *dataset_sections()]
    given = re.findall(r"(?:--(?:\w+\.)?|[Oo]ption ')(\w+)", message)
    close = difflib.get_close_matches(given[-1], keys, n=1) if given else []
    where = f"of '{name}'" if name in known else "at the top level"
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    if given and "Union subtypes" in message:  # a method's or dataset's section: jsonargparse's message is about types
        message = f"the '{name}:' section has no key '{given[-1]}'"
    return f"{message}.{suggestion} Valid keys {where}: {', '.join(keys)}"


def parse_recipe(argv: list[str], parser: ArgumentParser | None = None) -> Recipe:
    """Parse ``--recipe NAME_OR_PATH`` followed by overrides into a validated Recipe."""
    argv = list(argv)
    source, file_values = "", {}
    if "--recipe" in argv:
        # The recipe file is read first, so overrides given before it still win.
        at = argv.index("--recipe")
        if at + 1 >= len(argv):
            raise RecipeError("--recipe needs a value: a recipe name or a YAML file.")
        path = resolve_recipe_path(argv[at + 1])
        del argv[at : at + 2]
        source, file_values = f" ({path})", _read_yaml(path)
        values = _for_dataset(_migrate_moved_keys(file_values), _dataset_named(argv, file_values))
        # The file as it is, unless it needed changing (handed over as YAML text then).
        argv = ["--recipe", str(path) if values == file_values else yaml.safe_dump(values, sort_keys=False), *argv]
    argv = _moved_key_args(argv, {"dataset": _dataset_named(argv, file_values), "method": _method_named(argv, file_values)})
    parser = parser or recipe_parser(key_help=any(a.endswith(".help") for a in argv))  # --simclr.help
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
    data: DataConfig = values.pop("data", None) or DataConfig()
    for name in dataset_sections():
        section = values.pop(name, None)
        if section is not None and name != data.name:
            raise RecipeError(
                f"Recipe '{values.get('name', 'custom')}' trains on dataset '{data.name}' but sets the "
                f"'{name}:' section. Remove it, or set data.name: {name}."
            )
        if section is not None:
            data = dataclasses.replace(data, options=section)
    return Recipe(**values, data=data, method_config=given.get(method))


# Keys that left ``data:`` for the section they belong to: shapes' num_images and the
# shards' decode for the dataset's own section, the text tower's context_length for the
# method's (CLIP's). Recipes written before still load: each moves to that section, or is
# dropped where the dataset or method has no such option (it never had an effect there).
MOVED_DATA_KEYS = {"num_images": "dataset", "decode": "dataset", "context_length": "method"}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # the parser reads it next, and says what is wrong with it
    return values if isinstance(values, dict) else {}


def _moved_data_keys(data: Any) -> list[str]:
    return [key for key in MOVED_DATA_KEYS if key in data] if isinstance(data, dict) else []


def _section_keys(name: str) -> set[str]:
    """The keys of the section ``name``: a registered dataset's or method's (none for others)."""
    config = DATASETS[name].config if name in DATASETS else METHODS[name].Config if name in METHODS else None
    return {f.name for f in dataclasses.fields(config)} if config is not None else set()


def _migrate_moved_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe's moved ``data:`` keys, put in the section of its dataset or method."""
    data = values.get("data")
    moved = _moved_data_keys(data)
    if not moved:
        return values
    owners = {"dataset": data.get("name", DataConfig.name), "method": values.get("method")}
    values = {**values, "data": {k: v for k, v in data.items() if k not in moved}}
    for key in moved:
        owner = owners[MOVED_DATA_KEYS[key]]
        if owner is not None and key in _section_keys(owner):
            values[owner] = {key: data[key], **(values.get(owner) or {})}  # the section's own values win
    return values


def _file_dataset(values: dict[str, Any]) -> str:
    return (values.get("data") or {}).get("name", DataConfig.name)


def _dataset_named(argv: list[str], file_values: dict[str, Any]) -> str:
    """The dataset a recipe trains on: the last ``--data.name`` given, else its file's."""
    names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--data.name"]
    names += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--data.name=")]
    return names[-1] if names else _file_dataset(file_values)


def _for_dataset(values: dict[str, Any], name: str) -> dict[str, Any]:
    """A recipe file pointed at another dataset (``--recipe quickstart --data.name folder``):
    its own dataset's section goes with its dataset."""
    own = _file_dataset(values)
    if own == name or own not in values or own not in dataset_sections():
        return values
    return {k: v for k, v in values.items() if k != own}


def _method_named(argv: list[str], file_values: dict[str, Any]) -> str | None:
    """The method a recipe trains: the last ``--method`` given, else its file's."""
    names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--method"]
    names += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--method=")]
    return names[-1] if names else file_values.get("method")


def _moved_key_args(argv: list[str], owners: dict[str, str | None]) -> list[str]:
    """``--data.num_images 64`` (or ``=64``) -> ``--shapes.num_images 64``, to the section of
    the dataset or method ``owners`` names; dropped where that section has no such key."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, equals, value = arg.partition("=")
        moved = key[len("--data."):] if key.startswith("--data.") else None
        if moved not in MOVED_DATA_KEYS:
            out.append(arg)
            i += 1
            continue
        owner = owners[MOVED_DATA_KEYS[moved]]
        if owner is not None and moved in _section_keys(owner):
            out += [f"--{owner}.{moved}", value] if equals else [f"--{owner}.{moved}", *argv[i + 1 : i + 2]]
        i += 1 if equals else 2
    return out


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain YAML-safe dict (tuples become lists); the method's settings under its name, the
    dataset's under the dataset's."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    values = plain(dataclasses.asdict(recipe))
    values[recipe.method] = values.pop("method_config")
    options = values["data"].pop("options")
    if options is not None:
        values[recipe.data.name] = options
    return values


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """Validate a saved recipe (from a checkpoint or run folder) exactly as a file is."""
    # NOTE: recipes saved before reference.protocol existed: every bundled linear reference
    # then was a paper's SGD probe, so their checkpoints and results still load.
    reference = values.get("reference") or {}
    if reference.get("metric") == "linear_top1" and reference.get("protocol") is None:
        values = {**values, "reference": {**reference, "protocol": "probe"}}
    values = _migrate_moved_keys(values)
    parser = recipe_parser(key_help=False)
    try:
        namespace = parser.parse_object(values)
        return _as_recipe(parser.instantiate(namespace).as_dict())
    except argparse.ArgumentError as error:
        raise RecipeError(f"Invalid saved recipe: {' '.join(str(error).split())}") from None


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
