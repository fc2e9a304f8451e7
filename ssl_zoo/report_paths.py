"""Paths in a benchmark's report, written relative to one base folder so that a report
names no folder of the machine that made it (no absolute path, no home folder, no
temporary folder) and its reproduce lines run wherever the report is copied.

The base is the working directory ``bench`` ran from when the report lies inside it (the
reproduce lines then run from there, as typed), else the report's own folder.
``ReportPaths.portable`` rewrites results for the report; ``ReportPaths.restore`` turns
them back into paths this process can open (``bench --from-results``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys of results.json (at any depth) whose string values are paths: the recipe's
# (data.root, trainer.output_dir, init_weights), the training summary's, the evaluation's
# (its checkpoint, imported weights, data and settings).
PATH_KEYS = frozenset({"root", "val_root", "pairs_root", "output_dir", "run_dir", "checkpoint", "path", "cache_dir",
                       "data_recipe", "classnames", "init_weights"})
# Options of the bench command line whose values are paths ("--weights" is LIBRARY:NAME=FILE).
PATH_OPTIONS = frozenset({"--out", "--eval-root", "--from-results", "--resume", "--weights", "--data.root",
                          "--data.val_root", "--trainer.output_dir", "--init_weights"})
RECIPE_FILE = (".yaml", ".yml")  # --recipes takes names or files

BASE_WORKING_DIRECTORY = "the working directory bench ran from"
BASE_REPORT_FOLDER = "the report's folder"


@dataclass
class ReportPaths:
    base: Path  # absolute
    described: str  # BASE_WORKING_DIRECTORY or BASE_REPORT_FOLDER

    @classmethod
    def for_report(cls, out: Path, working_directory: Path | None = None) -> ReportPaths:
        cwd = Path(os.path.abspath(working_directory or Path.cwd()))
        out = Path(os.path.abspath(out))
        if out == cwd or cwd in out.parents:
            return cls(cwd, BASE_WORKING_DIRECTORY)
        return cls(out, BASE_REPORT_FOLDER)

    def show(self, path: str) -> str:
        """``path`` (absolute, or relative to this process's working directory) relative to
        the base; under the home folder when the base is not: ``~/...``."""
        if not path:
            return path
        target = os.path.abspath(os.path.expanduser(path))
        home = os.path.expanduser("~")
        inside_home = lambda p: p == home or p.startswith(home.rstrip(os.sep) + os.sep)  # noqa: E731
        if inside_home(target) and not inside_home(str(self.base)):
            return "~/" + Path(os.path.relpath(target, home)).as_posix()
        return Path(os.path.relpath(target, self.base)).as_posix()

    def open(self, path: str) -> str:
        """A path as ``show`` wrote it -> one this process can open."""
        if not path:
            return path
        expanded = os.path.expanduser(path)
        return expanded if os.path.isabs(expanded) else os.path.normpath(self.base / expanded)

    def portable(self, results: dict[str, Any]) -> dict[str, Any]:
        """``results`` with every path relative to the base (``show``), its command too."""
        rewritten = _map_paths(results, self.show)
        rewritten["command"] = " ".join(map_command(results["command"].split(), self.show))
        return rewritten

    def restore(self, results: dict[str, Any]) -> dict[str, Any]:
        """The inverse of ``portable``: paths this process can open, in the command too."""
        restored = _map_paths(results, self.open)
        restored["command"] = " ".join(map_command(results["command"].split(), self.open))
        return restored


def _map_paths(value: Any, change: Callable[[str], str], key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _map_paths(v, change, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_paths(v, change, key) for v in value]
    if isinstance(value, str) and (key in PATH_KEYS or os.path.isabs(value)):
        return change(value)
    return value


def map_command(argv: list[str], change: Callable[[str], str]) -> list[str]:
    """The bench arguments with ``change`` applied to every path among them: the values of
    PATH_OPTIONS (``--opt VALUE`` or ``--opt=VALUE``), recipe files, and any absolute path."""
    changed, option = [], ""
    for token in argv:
        name, equals, value = token.partition("=") if token.startswith("--") else ("", "", token)
        if name and equals:  # --opt=VALUE
            changed.append(f"{name}={_change_value(name, value, change)}")
            option = ""
            continue
        if token.startswith("--"):
            option = token
            changed.append(token)
            continue
        changed.append(_change_value(option, token, change))
        if option != "--recipes":  # the only option taking several values
            option = ""
    return changed


def _change_value(option: str, value: str, change: Callable[[str], str]) -> str:
    if option == "--weights" and "=" in value:  # LIBRARY:NAME=FILE
        source, _, path = value.partition("=")
        return f"{source}={change(path)}"
    if option in PATH_OPTIONS or (option == "--recipes" and value.endswith(RECIPE_FILE)) or os.path.isabs(value):
        return change(value)
    return value
