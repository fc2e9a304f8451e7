"""Finding shards: a folder of .tar files, one .tar, or a brace pattern."""

from __future__ import annotations

import re
from pathlib import Path

from ssl_zoo.errors import DataFormatError, DataNotFoundError

MAKE_SHARDS = "python -m ssl_zoo shards --from folder DIR --out OUT --size S"


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` -> x, y (bash's
    brace expansion, without nesting; numeric ranges keep the first bound's zero padding)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numbers:
        first, last = numbers.groups()
        step = 1 if int(last) >= int(first) else -1
        parts = [str(n).zfill(len(first)) for n in range(int(first), int(last) + step, step)]
    else:
        parts = body.split(",")
    return [head + part + rest for part in parts for rest in _expand_braces(tail)]


def expand_shard_paths(root: str | Path) -> list[Path]:
    """The shard files ``root`` names: a brace pattern (``/data/train-{000000..000145}.tar``),
    one ``.tar`` file, or a folder of ``*.tar`` files (sorted by name)."""
    root = str(root)
    if "{" in root:
        paths = [Path(p).expanduser() for p in _expand_braces(root)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataNotFoundError(
                f"{len(missing)} of the {len(paths)} shards that '{root}' names are missing: "
                f"{', '.join(map(str, missing[:3]))}{more}. Fix the pattern, or make shards "
                f"with `{MAKE_SHARDS}`."
            )
    else:
        path = Path(root).expanduser()
        if path.is_dir():
            paths = sorted(path.glob("*.tar"))
            if not paths:
                raise DataNotFoundError(
                    f"No shards (*.tar files) in {path.absolute()}. Make them with "
                    f"`{MAKE_SHARDS}`, or point the data root at the folder that holds them."
                )
        elif path.is_file():
            paths = [path]
        else:
            raise DataNotFoundError(
                f"Shards not found: {path.absolute()} is neither a .tar file, a folder of "
                f".tar files nor a brace pattern (train-{{000000..000009}}.tar). Make shards "
                f"with `{MAKE_SHARDS}`."
            )
    for p in paths:
        if p.suffix != ".tar":
            raise DataFormatError(
                f"{p} is not a .tar shard. Compressed shards (.tar.gz) cannot be read at "
                f"random; decompress them (gunzip), or make shards with `{MAKE_SHARDS}`."
            )
    return paths

