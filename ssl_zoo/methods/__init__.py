"""The methods: LightningModules on one shared base."""

from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.clip import CLIP
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.methods.supervised import Supervised

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "byol": BYOL, "clip": CLIP, "supervised": Supervised}

__all__ = ["BYOL", "CLIP", "METHODS", "SSLMethod", "SimCLR", "Supervised"]
