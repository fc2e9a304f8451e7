"""ssl_zoo: SimCLR, BYOL and CLIP trained, evaluated and compared side by side.

    from ssl_zoo import bench, evaluate, fit, load_recipe

The four functions live in ``ssl_zoo.api`` and load on first use, so ``import ssl_zoo``
does not import torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["bench", "evaluate", "fit", "load_recipe", "__version__"]

if TYPE_CHECKING:
    from ssl_zoo.api import bench, evaluate, fit, load_recipe


def __getattr__(name: str) -> Any:
    if name in ("bench", "evaluate", "fit", "load_recipe"):
        from ssl_zoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'ssl_zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
