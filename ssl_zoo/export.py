"""A ``fit`` checkpoint's weights for the plain libraries (``python -m ssl_zoo export CKPT --out DIR``).

DIR gets safetensors files whose keys are exactly those of the plain architecture
(torchvision, timm, open_clip or torch), so ``load_state_dict(strict=True)`` works with no
renaming, and a ``config.json`` that says which constructor and arguments build it, how
images are prepared, which recipe and checkpoint the weights come from, and a snippet that
loads them:

    backbone.safetensors     the image backbone (BYOL: the online network, not the EMA target)
    ...                      methods with text: what their ``export_text`` gives (CLIP:
                             text_tower.safetensors, open_clip's TextTransformer, and
                             projections.safetensors), described under "text" in config.json
    config.json              written last: a folder with it is a whole export
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ssl_zoo.atomic import atomic_path, atomic_write, flush_folder
from ssl_zoo.augment import AugmentConfig, EvalTransform
from ssl_zoo.backbones import build_image_backbone
from ssl_zoo.errors import SslZooError
from ssl_zoo.environment import versions
from ssl_zoo.eval.cache import hash_file
from ssl_zoo.methods import load_method
from ssl_zoo.recipe import recipe_to_dict

FORMAT = "ssl_zoo-export/1"  # in config.json: marks a folder as an export this command may replace
BACKBONE, CONFIG = "backbone.safetensors", "config.json"


class ExportError(SslZooError):
    """The export's output folder cannot be written without losing what is in it."""


def export_checkpoint(checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write ``checkpoint``'s weights and config into ``out``; returns the config written.

    ``out`` may be missing, empty, or an earlier export (replaced whole); anything else is
    refused before the checkpoint is read. The files are written into a temporary folder
    beside ``out`` and renamed into place, so a crash never leaves a partial export at ``out``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    _check_replaceable(out)
    model = load_method(checkpoint)
    recipe = model.recipe
    tensors = {BACKBONE: _plain_state(model.backbone)}
    architecture = _image_architecture(recipe.backbone, recipe.augment.size)
    config: dict[str, Any] = {
        "format": FORMAT,
        "ssl_zoo_version": versions()["ssl_zoo"],
        "checkpoint": {"file": checkpoint.name, "sha256": hash_file(checkpoint), "global_step": model.trained_steps},
        "method": recipe.method,
        "backbone": recipe.backbone,
        "feature_dim": model.feature_dim,
        "architecture": architecture,
        "eval_transform": _eval_transform(model.eval_transform, recipe.augment),
    }
    how_to_load = [
        "# in the export folder; images prepared as eval_transform says",
        architecture["build"], "from safetensors.torch import load_file", f"model.load_state_dict(load_file('{BACKBONE}'))",
        "model.eval()  # model(images) -> (B, feature_dim) features",
    ]
    if model.uses_text:  # the text tower and whatever joins the two: the method knows its own
        try:
            text_files, config["text"] = model.export_text()
        except NotImplementedError as error:
            raise ExportError(f"'{checkpoint}': {error} Its backbone alone cannot stand for a method with text.") from None
        tensors.update({name: _plain_state(state) for name, state in text_files.items()})
        how_to_load += config["text"]["how_to_load"]
    config["how_to_load"] = "\n".join(how_to_load) + "\n"
    config["recipe"] = recipe_to_dict(recipe)

    _write(out, tensors, config)
    return config


def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' is a file, not a folder. Pass a new folder (it is created).")
    if not out.is_dir() or not any(out.iterdir()):
        return
    entries = {p.name for p in out.iterdir()}
    earlier = _earlier_export_files(out / CONFIG)
    foreign = sorted(entries - {CONFIG} - (earlier or set()))
    if not foreign and earlier is not None:
        return
    what = f"it holds {', '.join(repr(name) for name in foreign[:3])}" if foreign else f"its {CONFIG} is not an export's"
    raise ExportError(
        f"--out '{out}' is not empty and is not an earlier export ({what}). Nothing was written. "
        "Pass a new or empty folder; an earlier export (its config.json and the files it lists only) is replaced."
    )


def _earlier_export_files(config: Path) -> set[str] | None:
    """The files an earlier export's config.json lists; None when it is not an export's."""
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        return None
    return set(saved.get("files", {}))


def _plain_state(module: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # NOTE: the methods keep the backbone channels-last, and safetensors stores only dense
    # row-major tensors; .contiguous() gives each tensor the plain layout (same values).
    state = module.state_dict() if isinstance(module, nn.Module) else module
    return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def _write(out: Path, tensors: dict[str, dict[str, torch.Tensor]], config: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the final renames stay on one file system (atomic, not a copy).
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name, state in tensors.items():
            with atomic_path(staging / name) as partial:  # on disk before the folder is renamed into place
                save_file(state, str(partial))
        config["files"] = {name: {"bytes": (staging / name).stat().st_size, "sha256": hash_file(staging / name)} for name in tensors}
        atomic_write(staging / CONFIG, json.dumps(config, indent=2) + "\n")  # last: its presence means whole
        # NOTE: a folder cannot be renamed over a non-empty one, so an earlier export is first
        # moved aside. A crash between the two renames leaves no folder at `out` (and the old
        # export under a hidden name beside it), never a mix of old and new files.
        retired = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
        if retired is not None:
            os.replace(out, retired)
        os.replace(staging, out)
        flush_folder(out.parent)
        if retired is not None:
            shutil.rmtree(retired)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# Where each library's version is found (config.json records it beside the constructor).
_DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "open_clip": "open_clip_torch"}


def _image_architecture(name: str, image_size: int) -> dict[str, Any]:
    """Library, constructor, arguments and modifications that build the backbone's plain
    twin, and ``build``: Python lines that do it (they define ``model``)."""
    plain = build_image_backbone(name, image_size).plain
    if plain is None:
        raise ExportError(f"Backbone '{name}' does not say how a plain library builds it (Backbone.plain), so it cannot be exported.")
    described = {k: v for k, v in asdict(plain).items() if k not in ("imports", "lines")}
    return {**described, "library_version": versions()[_DISTRIBUTIONS[plain.library]], "build": plain.build()}


def _eval_transform(transform: EvalTransform, augment: AugmentConfig) -> dict[str, Any]:
    # mean and std as the recipe gives them (the transform holds them rounded to float32)
    return {
        "size": transform.size,
        "mean": list(augment.mean),
        "std": list(augment.std),
        "resize": (
            "the whole image (no crop) resized to size x size unless it already is: "
            "torch.nn.functional.interpolate(x, size=(size, size), mode='bilinear', antialias=True, "
            "align_corners=False) on RGB floats in [0, 1], then (x - mean) / std per channel"
        ),
        "input": "float (B, 3, size, size), RGB",
    }
