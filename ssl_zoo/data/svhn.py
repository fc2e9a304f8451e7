"""SVHN (Netzer et al. 2011), house-number digits, through torchvision: ``data.name: svhn``.

32 px, 10 classes (digit 0 is label 0); "extra" holds 531k more, easier training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_zoo.data.sources import TorchvisionSource, register_torchvision


def _open(cls: type, root: str, split: str, download: bool) -> Any:
    return cls(root, split=split, download=download)


def _arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    # uint8 (N, 3, 32, 32) already; torchvision maps the .mat files' label 10 to digit 0
    return torch.from_numpy(ds.data), torch.from_numpy(np.asarray(ds.labels, dtype=np.int64)), [str(d) for d in range(10)]


def _by_hand(root: Path, split: str) -> str:
    return f"download http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat into {root} yourself"


register_torchvision("svhn", TorchvisionSource("SVHN", ("train", "test", "extra"), open=_open, arrays=_arrays, by_hand=_by_hand))
