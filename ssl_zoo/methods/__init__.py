"""The methods: LightningModules on one shared base, one file each, registered by name
(``ssl_zoo.registry.METHODS``) when their module is imported."""

from ssl_zoo.methods.base import SSLMethod
from ssl_zoo.methods.build import build_method, load_method, method_class
from ssl_zoo.registry import METHODS

__all__ = ["METHODS", "SSLMethod", "build_method", "load_method", "method_class"]
