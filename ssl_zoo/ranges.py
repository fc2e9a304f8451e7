"""Valid ranges of numeric recipe values: declared beside each field, checked when a recipe loads.

A recipe section's numeric field says its range where it says its default::

    batch_size: int = ranged(256, at_least=1)
    lr: float = ranged(0.06, above=0)
    flip_p: float = ranged(0.5, at_least=0, at_most=1)

and ``range_errors(section, "data")`` lists every value outside its range, naming the key,
the value and the range, so that ``--data.batch_size -4`` is refused when the recipe loads
rather than deep inside the optimiser. A tuple's every item must lie in the range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

_METADATA_KEY = "ssl_zoo.range"


@dataclass(frozen=True)
class Range:
    """The valid values of a number; a bound left None does not limit it."""

    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None
    also: tuple[float, ...] = ()  # values valid outside the range, e.g. -1 for "no limit"

    def __contains__(self, value: float) -> bool:
        if value in self.also:
            return True
        return math.isfinite(value) and not (
            (self.at_least is not None and value < self.at_least)
            or (self.at_most is not None and value > self.at_most)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def __str__(self) -> str:
        """'>= 1', '> 0', '[0, 1]', '(0, 1]', or '-1 or >= 1'."""
        low = f"[{_show(self.at_least)}" if self.at_least is not None else f"({_show(self.above)}" if self.above is not None else None
        high = f"{_show(self.at_most)}]" if self.at_most is not None else f"{_show(self.below)})" if self.below is not None else None
        if low and high:
            text = f"{low}, {high}"
        elif low:
            text = f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        else:
            text = f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return " or ".join([*(_show(v) for v in self.also), text])


def _show(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def ranged(default: Any, *, at_least: float | None = None, at_most: float | None = None,
           above: float | None = None, below: float | None = None, also: tuple[float, ...] = ()) -> Any:
    """A dataclass field with ``default`` whose value (or every item of it) must lie in the range."""
    valid = Range(at_least, at_most, above, below, also)
    assert all(v in valid for v in _numbers(default)), f"default {default} outside its own range {valid}"
    return dataclasses.field(default=default, metadata={_METADATA_KEY: valid})


def field_ranges(config_type: type) -> dict[str, Range]:
    """The declared range of each of a section dataclass's ranged fields, by field name."""
    return {f.name: f.metadata[_METADATA_KEY] for f in dataclasses.fields(config_type) if _METADATA_KEY in f.metadata}


def range_errors(config: Any, section: str) -> list[str]:
    """One line per value of ``config`` outside its range: 'data.batch_size = -4 (valid: >= 1)'."""
    errors = []
    for name, valid in field_ranges(type(config)).items():
        value = getattr(config, name)
        if any(v not in valid for v in _numbers(value)):
            each = "each item " if isinstance(value, tuple) else ""
            errors.append(f"{section}.{name} = {list(value) if isinstance(value, tuple) else value} (valid: {each}{valid})")
    return errors


def _numbers(value: Any) -> list[float]:
    """The numbers a field's value holds: itself, or a tuple's items. None (an unset optional)
    and strings ("auto" devices) hold none; their type is checked by the parser."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
