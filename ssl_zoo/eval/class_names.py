"""What zero-shot prompts call each class, and which prompt templates they use.

A dataset's class list is what its folders were called. For CIFAR-10 that is already a
name ("airplane"); for ImageNet converted to shards it is a WordNet id ("n01440764"), and a
prompt "a photo of a n01440764." scores near chance. This module turns the class list
into prompt names: a file the user gives, CLIP's curated ImageNet names when every class
is one of ImageNet-1k's 1000 WordNet ids (so ImageNet-1k and any subset, ImageNet-100
too), or the class list unchanged, with a warning when it is ids no one can map.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.errors import SslZooError

WNID = re.compile(r"n\d{8}")  # an ImageNet WordNet id: part of speech + 8-digit offset


@dataclass(frozen=True)
class ZeroShotClasses:
    names: list[str]  # what each class is called in prompts, index = label
    templates: tuple[str, ...]  # prompt templates, each with one "{}"
    source: str  # one line for the results: where names and templates come from
    warning: str | None  # set when class names are ids with no known mapping


def read_class_names(path: str | Path, num_classes: int) -> list[str]:
    """Human class names from a text file, one a line in label order (blank lines and
    ``#`` comments skipped); there must be exactly ``num_classes`` of them."""
    path = Path(path)
    if not path.is_file():
        raise SslZooError(
            f"Class names file {path} not found; give a text file with one class name a line, in label order."
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    if len(names) != num_classes:
        raise SslZooError(
            f"Class names file {path} has {len(names)} names, the dataset has {num_classes} classes; "
            "give one name a line, in the order of the dataset's labels (its classes.txt)."
        )
    return names


@functools.cache
def _imagenet_1k() -> tuple[dict[str, str], tuple[str, ...]]:
    """CLIP's curated name of each ImageNet-1k WordNet id, and OpenAI's 80 ImageNet templates."""
    # NOTE: importing open_clip takes seconds, so it happens only for datasets of WordNet ids.
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from timm.data import ImageNetInfo

    # NOTE: open_clip lists its names by label index only; the index is the position of the
    # WordNet id in the sorted list of the 1000, which timm ships (imagenet_synsets.txt).
    wnids = ImageNetInfo("imagenet-1k").label_names()
    assert len(wnids) == len(IMAGENET_CLASSNAMES) == 1000, "timm's and open_clip's ImageNet-1k lists differ in length"
    # NOTE: open_clip's templates are lambdas (format functions) in recent versions and
    # "{}"-strings in older ones; formatting a lambda with "{}" gives the string form.
    templates = tuple(t("{}") if callable(t) else t for t in OPENAI_IMAGENET_TEMPLATES)
    return dict(zip(wnids, IMAGENET_CLASSNAMES)), templates


def _looks_like_id(name: str) -> bool:
    return bool(WNID.fullmatch(name)) or name.isdigit()


def zero_shot_classes(
    classes: list[str], templates: tuple[str, ...], classnames_file: str | Path | None = None
) -> ZeroShotClasses:
    """Prompt names and templates for a dataset whose labels index ``classes``.

    ``templates`` are the configured ones; they are used except for ImageNet WordNet ids,
    which get the 80 templates CLIP was evaluated with on ImageNet.
    """
    if classnames_file is not None:
        names = read_class_names(classnames_file, len(classes))
        source = f"class names from {classnames_file}; prompt templates: the {len(templates)} configured"
        return ZeroShotClasses(names, templates, source, warning=None)

    if classes and all(WNID.fullmatch(c) for c in classes):
        imagenet_names, imagenet_templates = _imagenet_1k()
        if all(c in imagenet_names for c in classes):
            source = (
                "class names: CLIP's curated ImageNet names (open_clip.zero_shot_metadata), by WordNet id; "
                f"prompt templates: OpenAI's {len(imagenet_templates)} for ImageNet"
            )
            return ZeroShotClasses([imagenet_names[c] for c in classes], imagenet_templates, source, warning=None)

    ids = [c for c in classes if _looks_like_id(c)]
    if ids:
        warning = (
            f"{len(ids)} of {len(classes)} class names are ids with no known name (e.g. {ids[0]!r}), so "
            "zero-shot prompts use the ids and will score near chance; give `--classnames FILE` "
            "with one human name a line, in label order."
        )
        source = f"class names: the dataset's class ids (no known names); prompt templates: the {len(templates)} configured"
        return ZeroShotClasses(list(classes), templates, source, warning)

    source = f"class names: the dataset's own; prompt templates: the {len(templates)} configured"
    return ZeroShotClasses(list(classes), templates, source, warning=None)
