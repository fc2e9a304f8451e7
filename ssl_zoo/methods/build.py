"""The one way from a recipe, or a ``fit`` checkpoint, to a method."""

from __future__ import annotations

from pathlib import Path
from ssl_zoo.training.checkpointing import read_checkpoint
from ssl_zoo.errors import CheckpointError
from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.recipe import Recipe, recipe_from_dict
from ssl_zoo.registry import METHODS
from ssl_zoo.weights import state_dict_mismatch


def method_class(recipe: Recipe) -> type[SSLMethod]:
    """The registered class of the recipe's method."""
    return METHODS[recipe.method]


def build_method(recipe: Recipe, num_classes: int = 0) -> SSLMethod:
    """The recipe's method, freshly initialised. ``num_classes``: classes the online
    probe scores (0: no probe)."""
    return method_class(recipe)(recipe, num_classes=num_classes)


def load_method(path: str | Path) -> SSLMethod:
    """The method a ``fit`` checkpoint holds, rebuilt from its saved recipe, in eval mode."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]
    recipe = recipe_from_dict(saved["recipe"])
    model = build_method(recipe, num_classes=saved.get("num_classes", 0))
    mismatch = state_dict_mismatch(model.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise CheckpointError(
            f"'{path}' does not match its own recipe: its weights are not those of a {recipe.method} "
            f"with backbone {recipe.backbone} ({mismatch}). The checkpoint or the recipe saved in it "
            "was changed after training; pass the checkpoint as `fit` wrote it."
        )
    model.load_state_dict(checkpoint["state_dict"])
    model.trained_steps = int(checkpoint.get("global_step", 0))  # where eval results go in TensorBoard
    return model.eval()
