"""The registries: built-ins found without a list, plugins through entry points, clear errors."""

from types import SimpleNamespace

import pytest

import ssl_zoo.registry
from ssl_zoo.data.spec import DatasetSpec, dataset_spec
from ssl_zoo.errors import RecipeError
from ssl_zoo.registry import DATASETS, METHODS, Registry


def test_built_ins_register_themselves_from_their_own_files():
    assert {"simclr", "byol", "clip", "supervised", "dino"} <= set(METHODS.names())
    assert METHODS["byol"].has_ema_target and METHODS["dino"].has_ema_target and not METHODS["simclr"].has_ema_target
    assert METHODS["clip"].uses_text and METHODS["clip"].num_views == 1
    assert {"shapes", "shared_cifar10", "shared_flickr8k", "stl10", "pairs", "shards"} <= set(DATASETS.names())
    assert dataset_spec("stl10").labelled_splits == ("train", "test") and dataset_spec("stl10").splits[0] == "train+unlabeled"
    assert dataset_spec("shared_flickr8k").retrieval_split == "test" and not dataset_spec("shared_flickr8k").labelled
    assert dataset_spec("shards").streamed


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(RecipeError, match=r"Unknown method 'simclear'\. Valid methods: .*simclr"):
        METHODS["simclear"]


def test_a_plugin_registers_through_its_entry_point(monkeypatch):
    registry = Registry("dataset", package="ssl_zoo.data", entry_point_group="ssl_zoo.datasets")
    plugin = DatasetSpec("plugin_data", load=lambda config, split, seed: None, splits=("train", "val"))
    loaded = []

    def entry_points(group):  # what importlib.metadata finds for an installed plugin package
        assert group == "ssl_zoo.datasets"
        return [SimpleNamespace(load=lambda: loaded.append(registry.register(plugin.name, plugin)))]

    monkeypatch.setattr(ssl_zoo.registry, "entry_points", entry_points)
    assert registry["plugin_data"] is plugin and loaded == [plugin]
    assert "plugin_data" not in DATASETS  # another registry: the global one is untouched


def test_two_entries_cannot_share_a_name():
    with pytest.raises(ValueError, match=r"Two datasets are registered as 'shapes': ssl_zoo.data.shapes.shapes and .*test_registry.shapes"):
        DatasetSpec("shapes", load=lambda config, split, seed: None, splits=("train", "val")).register()
    assert dataset_spec("shapes").load.__module__ == "ssl_zoo.data.shapes"  # the built-in stays


def test_a_datasets_section_cannot_take_a_recipe_keys_or_a_methods_name(monkeypatch):
    from dataclasses import dataclass

    from ssl_zoo.recipe import dataset_sections

    @dataclass
    class Options:
        size: int = 1

    with pytest.raises(ValueError, match="Dataset 'optim' has a recipe section, and 'optim' is already a recipe key"):
        DatasetSpec("optim", load=lambda config, split, seed: None, splits=("train", None), config=Options).register()
    assert "optim" not in DATASETS
    clash = DatasetSpec("simclr", load=lambda config, split, seed: None, splits=("train", None), config=Options)
    monkeypatch.setattr(DATASETS, "_entries", {**DATASETS._entries, "simclr": clash})
    with pytest.raises(RecipeError, match="Dataset section\\(s\\) simclr share their name with a method's section"):
        dataset_sections()


def test_a_broken_plugin_is_not_forgotten(monkeypatch):
    registry = Registry("method", package="ssl_zoo.methods", entry_point_group="ssl_zoo.methods")

    def broken():
        raise ImportError("the plugin's module has a typo")

    monkeypatch.setattr(ssl_zoo.registry, "entry_points", lambda group: [SimpleNamespace(load=broken)])
    for _ in range(2):  # every lookup says why, not only the first
        with pytest.raises(ImportError, match="typo"):
            registry["simclr"]
