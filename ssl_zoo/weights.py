"""Weights in: a backbone's weights from a file, whoever wrote it.

The file is a safetensors file or a torch pickle (``.pth``/``.pt``, read with
``weights_only``: never code) in the backbone's own key layout, as ``export`` writes it and
as torchvision, timm and most repositories publish it; or a ``fit`` checkpoint, whose
backbone is taken. Wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DDP's
``module.`` prefix are undone here, so that no user has to strip prefixes by hand. A
classifier head the backbone does not have (``fc.``, ``head.``) is left out and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ssl_zoo.training.checkpointing import load_data
from ssl_zoo.errors import CheckpointError

# Layers that classify features: present in supervised weights, absent from a backbone.
HEAD_PREFIXES = ("fc.", "head.", "heads.", "classifier.")
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state")


def state_dict_mismatch(expected: dict[str, Any], saved: dict[str, Any]) -> str:
    """How ``saved`` weights differ from a model's: counts and a first key ('' if they fit)."""
    tensors = [k for k in expected.keys() & saved.keys() if isinstance(expected[k], Tensor)]
    problems = {
        "missing": sorted(expected.keys() - saved.keys()),
        "unexpected": sorted(saved.keys() - expected.keys()),
        "of another shape": sorted(k for k in tensors if expected[k].shape != saved[k].shape),
    }
    return "; ".join(f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in problems.items() if keys)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, by name, unwrapped (see the module's docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({error}).") from None
    saved = load_data(path, "weights file", "Give a .safetensors file, or a .pth/.pt state dict of tensors")
    if isinstance(saved, dict) and "hyper_parameters" in saved and "state_dict" in saved:  # a fit checkpoint
        return {k.removeprefix("backbone."): v for k, v in saved["state_dict"].items() if k.startswith("backbone.")}
    while isinstance(saved, dict) and (key := next((k for k in WRAPPER_KEYS if isinstance(saved.get(k), dict)), None)):
        saved = saved[key]
    if not isinstance(saved, dict) or not saved or not all(isinstance(v, Tensor) for v in saved.values()):
        raise CheckpointError(f"'{path}' holds no state dict (a mapping of names to tensors).")
    if all(k.startswith("module.") for k in saved):  # saved from inside DistributedDataParallel
        saved = {k.removeprefix("module."): v for k, v in saved.items()}
    return saved


def load_backbone_weights(network: nn.Module, path: str | Path, what: str) -> dict[str, Any]:
    """Load ``path`` into ``network`` (every tensor must fit); returns what was loaded.

    ``what``: the network, for the error message ("backbone timm:resnet18").
    """
    state = read_state_dict(path)
    expected = network.state_dict()
    head = sorted(k for k in state if k not in expected and k.startswith(HEAD_PREFIXES))
    state = {k: v for k, v in state.items() if k not in head}
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(
            f"'{path}' does not fit the {what} ({mismatch}). The file must hold that architecture's weights, "
            "with its own key names (as `python -m ssl_zoo export` writes them, or torchvision/timm publish them)."
        )
    network.load_state_dict(state)
    return {"path": str(path), "tensors": len(state), "head_tensors_left_out": len(head)}
