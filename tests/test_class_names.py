"""Zero-shot class names: ImageNet WordNet ids become CLIP's names, ids with no name warn."""

from importlib.resources import files

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from ssl_zoo.data.shards.convert import read_class_list
from ssl_zoo.errors import SslZooError
from ssl_zoo.eval.class_names import read_class_names, zero_shot_classes
from ssl_zoo.eval.zero_shot import DEFAULT_TEMPLATES

# The sorted 1000 ImageNet-1k WordNet ids, read straight from timm's file (not through the
# module under test), so the tests check the module's mapping against an independent route.
IMAGENET_WNIDS = files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text().split()


def test_imagenet_1k_ids_get_clips_names_and_80_templates():
    zs = zero_shot_classes(IMAGENET_WNIDS, DEFAULT_TEMPLATES)
    assert zs.names == list(IMAGENET_CLASSNAMES)
    assert zs.names[0] == "tench" and zs.names[1] == "goldfish" and zs.names[-1] == "toilet paper"
    assert len(zs.templates) == 80 and all(t.count("{}") == 1 for t in zs.templates)
    assert "a bad photo of a {}." in zs.templates
    assert zs.warning is None and "CLIP" in zs.source and "80" in zs.source


def test_imagenet_100_ids_map_to_the_names_at_their_imagenet_index():
    classes = sorted(read_class_list("imagenet100"))  # as the converter writes classes.txt
    zs = zero_shot_classes(classes, DEFAULT_TEMPLATES)
    assert len(zs.names) == 100 and zs.warning is None
    for wnid, name in zip(classes, zs.names):
        assert name == IMAGENET_CLASSNAMES[IMAGENET_WNIDS.index(wnid)]
    assert not any(n.startswith("n0") for n in zs.names)


def test_classnames_file_wins_and_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# my names\nred fish\n\nblue fish\n", encoding="utf-8")
    zs = zero_shot_classes(["n01440764", "n01443537"], DEFAULT_TEMPLATES, path)
    assert zs.names == ["red fish", "blue fish"]
    assert zs.templates == DEFAULT_TEMPLATES and zs.warning is None and str(path) in zs.source


def test_classnames_file_with_the_wrong_count_names_both_counts(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("".join(f"class {i}\n" for i in range(998)), encoding="utf-8")
    with pytest.raises(SslZooError, match=r"names\.txt has 998 names, the dataset has 1000 classes"):
        zero_shot_classes(IMAGENET_WNIDS, DEFAULT_TEMPLATES, path)


def test_missing_classnames_file_is_named(tmp_path):
    with pytest.raises(SslZooError, match="nowhere.txt not found"):
        read_class_names(tmp_path / "nowhere.txt", 10)


@pytest.mark.parametrize(
    "classes",
    [
        [str(i) for i in range(10)],  # shards without classes.txt
        ["n00000001", "n00000002"],  # WordNet-shaped, but not ImageNet-1k's
        ["n01440764", "n99999999"],  # one known id does not make the list mappable
    ],
)
def test_ids_with_no_known_names_are_kept_with_a_warning(classes):
    templates = ("a photo of a {}.",)
    zs = zero_shot_classes(classes, templates)
    assert zs.names == classes and zs.templates == templates
    assert "near chance" in zs.warning and "--classnames FILE" in zs.warning


def test_ordinary_names_pass_through():
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    zs = zero_shot_classes(cifar10, DEFAULT_TEMPLATES)
    assert zs.names == cifar10 and zs.names is not cifar10
    assert zs.templates == DEFAULT_TEMPLATES and zs.warning is None and "own" in zs.source
