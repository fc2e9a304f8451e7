"""Registries: names -> the methods and datasets that registered themselves.

A method or dataset is added in one place, its own file, which registers it under the name
recipes use; every list of names (the recipe's choices, the CLI's help, the tests'
parametrisations) is read from here. The built-in entries are the modules of one package
(``ssl_zoo.methods``, ``ssl_zoo.data``), all imported on the first lookup, so a new file
there is found without being listed anywhere. Other packages add theirs through an entry
point (``[project.entry-points."ssl_zoo.methods"]`` in their pyproject, naming a module),
loaded then too; code that defines a method itself (a notebook, a test) registers it by
defining it.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from ssl_zoo.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind; the package's modules and the plugins' are loaded on
    the first lookup."""

    def __init__(self, kind: str, package: str, entry_point_group: str) -> None:
        self.kind = kind  # "method", "dataset": for error messages
        self.package = package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``. A definition run again (a notebook cell) replaces
        its earlier self; another entry under a taken name is an error."""
        known = self._entries.get(name)
        if known is not None and _origin(known) != _origin(entry):
            raise ValueError(f"Two {self.kind}s are registered as '{name}': {_origin(known)} and {_origin(entry)}.")
        self._entries[name] = entry
        return entry

    def _load(self) -> None:
        # NOTE: flagged first, so that a built-in module that looks a name up while it is
        # being imported does not import itself again.
        if self._loaded:
            return
        self._loaded = True
        try:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__, prefix=f"{self.package}."):
                importlib.import_module(module.name)
            for entry_point in entry_points(group=self.entry_point_group):
                entry_point.load()  # importing the plugin's module registers its entries
        except BaseException:
            self._loaded = False  # a broken plugin: the next lookup tries again, and fails as loudly
            raise

    def __getitem__(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise RecipeError(f"Unknown {self.kind} '{name}'. Valid {self.kind}s: {', '.join(self.names())}.")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())


def _origin(entry: object) -> str:
    """Where ``entry`` was defined: a class's module and name, or what it says of itself
    (a dataset spec: its loader's module)."""
    if hasattr(entry, "origin"):
        return entry.origin
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


METHODS: Registry = Registry("method", package="ssl_zoo.methods", entry_point_group="ssl_zoo.methods")
DATASETS: Registry = Registry("dataset", package="ssl_zoo.data", entry_point_group="ssl_zoo.datasets")
