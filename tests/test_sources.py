"""Real-data loaders: the shared archives, torchvision, image folders and image-text pairs."""

import io
import json
import pickle
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo.data.sources import (
    load_image_folder,
    load_image_text_pairs,
    load_shared_cifar10,
    load_shared_flickr8k,
    load_torchvision,
)
from ssl_zoo.errors import DataFormatError, DataNotFoundError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]


@pytest.fixture(scope="module")
def shared_root() -> Path:
    if not (SHARED / "cifar10.npz").is_file() or not (SHARED / "flickr8k_64.npz").is_file():
        pytest.skip(
            "../shared/data not found: the real-data loader tests need the repository's "
            "shared data folder"
        )
    return SHARED


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _solid(rgb, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, rgb)


# ----------------------------------------------------------------------------------------
# Shared archives


def test_shared_cifar10_test_split(shared_root):
    start = time.perf_counter()
    ds = load_shared_cifar10(shared_root, "test")
    elapsed = time.perf_counter() - start
    assert elapsed < 15, f"decoding 10,000 CIFAR-10 JPEGs took {elapsed:.1f} s"
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.classes == CIFAR_CLASSES
    assert ds.captions is None and ds.masks is None and ds.name == "cifar10"
    mean = ds.images.float().mean((0, 2, 3)) / 255
    readme_mean = torch.tensor([0.4913, 0.4821, 0.4465])  # train mean, from the README
    assert (mean - readme_mean).abs().max() < 0.02
    # Image 17 is the README's recipe: shared header + body slice, decoded by PIL.
    with np.load(shared_root / "cifar10.npz", allow_pickle=False) as d:
        off = d["test_offsets"]
        jpeg = d["jpeg_header"].tobytes() + d["test_body"][off[17] : off[17 + 1]].tobytes()
        expected = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        assert int(ds.labels[17]) == int(d["test_labels"][17])
    assert torch.equal(ds.images[17], torch.from_numpy(expected).permute(2, 0, 1))


def test_shared_flickr8k_test_split(shared_root):
    ds = load_shared_flickr8k(shared_root, "test")
    assert ds.images.shape == (1000, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.labels is None and ds.classes is None and ds.name == "flickr8k"
    assert len(ds.captions) == 1000
    assert all(len(c) == 5 for c in ds.captions)
    assert all(isinstance(t, str) and t.strip() for c in ds.captions for t in c)
    with np.load(shared_root / "flickr8k_64.npz", allow_pickle=False) as d:
        assert ds.captions[999] == [str(c) for c in d["test_captions"][999]]
    # Real photos: neither blank nor constant.
    assert 60 < ds.images.float().mean() < 200 and ds.images.float().std() > 40


def test_shared_archives_bad_split_and_missing_file(shared_root, tmp_path):
    with pytest.raises(DataFormatError, match="valid splits: train, test"):
        load_shared_cifar10(shared_root, "val")
    with pytest.raises(DataFormatError, match="valid splits: train, dev, test"):
        load_shared_flickr8k(shared_root, "validation")
    with pytest.raises(DataNotFoundError) as err:
        load_shared_cifar10(tmp_path, "test")
    message = str(err.value)
    assert str(tmp_path / "cifar10.npz") in message
    assert "shared/data" in message and "--data.root" in message


# ----------------------------------------------------------------------------------------
# torchvision


@pytest.mark.parametrize(
    "name, split", [("cifar10", "test"), ("cifar100", "train"), ("stl10", "unlabeled"), ("svhn", "test")]
)
def test_torchvision_missing_data_says_where_and_how(tmp_path, name, split):
    with pytest.raises(DataNotFoundError) as err:
        load_torchvision(name, tmp_path, split, download=False)
    message = str(err.value)
    assert name in message and str(tmp_path) in message and "download" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no traceback wall


def test_torchvision_failed_download_is_data_not_found(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="download failed") as err:
        load_torchvision("cifar10", tmp_path, "train", download=True)
    assert str(tmp_path) in str(err.value)


def test_torchvision_bad_name_or_split(tmp_path):
    with pytest.raises(DataFormatError, match="cifar10, cifar100, stl10, svhn"):
        load_torchvision("mnist", tmp_path, "train", download=False)
    with pytest.raises(DataFormatError, match="unlabeled"):
        load_torchvision("stl10", tmp_path, "val", download=False)


def test_torchvision_cifar10_arrays_become_nchw_uint8(tmp_path, monkeypatch):
    """A 4-image CIFAR-10 test batch in torchvision's own file format (checksums bypassed)."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    data[0, 0] = 255  # red image
    data[1, 2] = 255  # blue image
    data[2, :, :16] = 200  # light top half
    data[3, 1, :, :8] = 100  # green stripe on the left
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data.reshape(4, -1), "labels": [3, 1, 4, 1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)

    ds = load_torchvision("cifar10", tmp_path, "test", download=False)
    assert ds.images.shape == (4, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images, torch.from_numpy(data))
    assert ds.labels.tolist() == [3, 1, 4, 1] and ds.labels.dtype == torch.int64
    assert ds.classes == CIFAR_CLASSES and ds.name == "cifar10"

    small = load_torchvision("cifar10", tmp_path, "test", download=False, image_size=16)
    assert small.images.shape == (4, 3, 16, 16)
    assert small.images[0, 0].min() == 255 and small.images[0, 1:].max() == 0
    top, bottom = small.images[2, :, :6].float(), small.images[2, :, 10:].float()
    assert (top - 200).abs().max() <= 1 and bottom.max() <= 1


def test_torchvision_stl10_unlabeled_has_no_labels(tmp_path, monkeypatch):
    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(stl10, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    np.full((3, 3, 96, 96), 77, dtype=np.uint8).tofile(folder / "unlabeled_X.bin")
    ds = load_torchvision("stl10", tmp_path, "unlabeled", download=False, image_size=64)
    assert ds.images.shape == (3, 3, 64, 64) and int(ds.images.min()) == int(ds.images.max()) == 77
    assert ds.labels is None and ds.classes is None


def test_svhn_is_one_file_registering_a_torchvision_dataset(tmp_path, monkeypatch):
    """SVHN's .mat file as torchvision reads it (checksum bypassed): label 10 is the digit 0."""
    import scipy.io
    import torchvision.datasets.svhn as svhn

    from ssl_zoo.data.spec import dataset_spec
    from ssl_zoo.recipe import DataConfig

    monkeypatch.setattr(svhn, "check_integrity", lambda *args, **kwargs: True)
    pixels = np.zeros((32, 32, 3, 3), dtype=np.uint8)  # (H, W, C, N), as the .mat files hold them
    pixels[:, :, 0, 1] = 255  # image 1: red
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": pixels, "y": np.array([[10], [3], [7]], dtype=np.uint8)})
    spec = dataset_spec("svhn")
    assert spec.origin == "ssl_zoo.data.svhn.svhn" and spec.downloadable and spec.splits == ("train", "test")
    ds = spec.load(DataConfig(name="svhn", root=str(tmp_path), image_size=32), "test", 0)
    assert ds.images.shape == (3, 3, 32, 32) and ds.labels.tolist() == [0, 3, 7] and ds.classes[0] == "0"
    assert ds.images[1, 0].min() == 255 and ds.images[1, 1:].max() == 0 and ds.images[0].max() == 0


# ----------------------------------------------------------------------------------------
# Image folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    _save(root / "dog" / "red.jpg", _solid((255, 0, 0), (50, 40)), quality=95)
    _save(root / "dog" / "gray.png", Image.new("L", (20, 30), 100))
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 128))
    _save(root / "dog" / "nested" / "rgba.png", rgba)  # sub-folders count, like ImageFolder
    deep = Image.frombytes("I;16", (33, 17), np.full((17, 33), 40000, np.uint16).tobytes())
    _save(root / "cat" / "deep.png", deep)  # 16-bit: 40000 / 257 -> 156
    # Left quarter blue, middle half green, right quarter red: the centre crop keeps green.
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :20, 2], wide[:, 20:60, 1], wide[:, 60:, 0] = 255, 255, 255
    _save(root / "cat" / "wide.png", Image.fromarray(wide))
    # A JPEG cut in half, and a file that is no image at all.
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    (root / "cat" / "broken.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_loads_every_readable_image_as_rgb(image_folder):
    with pytest.warns(UserWarning, match="Skipped 1 unreadable") as caught:
        ds = load_image_folder(image_folder, image_size=16)
    assert "broken.jpg" in str(caught[0].message)
    assert ds.classes == ["cat", "dog"] and ds.name == "pets"
    assert ds.images.shape == (5, 3, 16, 16) and ds.images.dtype == torch.uint8
    # Sorted: cat/deep.png, cat/wide.png, dog/gray.png, dog/nested/rgba.png, dog/red.jpg
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    mean = ds.images.float().mean((2, 3))  # (5, 3)
    expected = torch.tensor(
        [[156, 156, 156], [0, 255, 0], [100, 100, 100], [0, 0, 255], [255, 0, 0]],
        dtype=torch.float32,
    )
    assert (mean - expected).abs().max() < 3, mean


def test_image_folder_errors(tmp_path, image_folder):
    with pytest.raises(DataNotFoundError, match="not found") as err:
        load_image_folder(tmp_path / "nowhere", 32)
    assert str(tmp_path / "nowhere") in str(err.value)

    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("not an image")
    with pytest.raises(DataFormatError, match="no images and no class sub-folders") as err:
        load_image_folder(tmp_path / "nothing", 32)
    assert str(tmp_path / "nothing") in str(err.value)

    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no image files"):
        load_image_folder(tmp_path / "empty", 32)

    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="none readable"):
        load_image_folder(tmp_path / "bad", 32)


# ----------------------------------------------------------------------------------------
# Image-text pairs


@pytest.fixture
def pair_images(tmp_path) -> Path:
    _save(tmp_path / "img" / "a.png", _solid((255, 0, 0)))
    _save(tmp_path / "img" / "b.jpg", _solid((0, 0, 255), (20, 60)), quality=95)
    return tmp_path


def _assert_red_then_blue(ds):
    """Images come in order of first appearance: a.png (red), then b.jpg (blue)."""
    colours = ds.images.float().mean((2, 3))
    assert (colours[0] - torch.tensor([255.0, 0, 0])).abs().max() < 3
    assert (colours[1] - torch.tensor([0, 0, 255.0])).abs().max() < 3


def test_pairs_csv(pair_images):
    absolute = pair_images / "img" / "b.jpg"
    path = pair_images / "pairs.csv"
    path.write_text(
        "path,caption\n"
        "img/a.png,a red square\n"
        "img/b.jpg,a tall blue box\n"
        'img/a.png,"something red, with a comma"\n'
        f"{absolute},  a second blue caption \n",
        encoding="utf-8",
    )
    ds = load_image_text_pairs(path, image_size=24)
    assert ds.name == "pairs" and ds.labels is None and ds.classes is None
    assert ds.images.shape == (2, 3, 24, 24) and ds.images.dtype == torch.uint8
    assert ds.captions == [
        ["a red square", "something red, with a comma"],
        ["a tall blue box", "a second blue caption"],  # the absolute path is the same file
    ]
    _assert_red_then_blue(ds)


def test_pairs_jsonl(pair_images):
    path = pair_images / "pairs.jsonl"
    _save(pair_images / "img" / "c.png", Image.new("LA", (24, 24), (50, 255)))
    rows = [
        {"path": "img/a.png", "caption": "a red square"},
        {"path": "img/b.jpg", "caption": "a tall blue box"},
        {"path": "img/a.png", "caption": "something red, with a comma"},
        {"path": "img/c.png", "caption": "dark grey", "extra": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = load_image_text_pairs(path, image_size=24)
    assert ds.images.shape == (3, 3, 24, 24)
    assert ds.captions == [
        ["a red square", "something red, with a comma"],
        ["a tall blue box"],
        ["dark grey"],
    ]
    _assert_red_then_blue(ds)
    assert int(ds.images[2].min()) == int(ds.images[2].max()) == 50  # grey+alpha -> RGB


def test_pairs_missing_column(pair_images):
    path = pair_images / "bad.csv"
    path.write_text("path,text\nimg/a.png,a red square\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_image_text_pairs(path, 24)
    message = str(err.value)
    assert str(path) in message and "'caption'" in message and "'text'" in message

    path = pair_images / "bad.jsonl"
    path.write_text('{"path": "img/a.png", "caption": "x"}\n{"path": "img/a.png"}\n')
    with pytest.raises(DataFormatError, match="line 2.*'caption'"):
        load_image_text_pairs(path, 24)


def test_pairs_missing_image(pair_images):
    path = pair_images / "pairs.csv"
    path.write_text("path,caption\nimg/a.png,fine\nimg/nope.png,lost\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_image_text_pairs(path, 24)
    message = str(err.value)
    assert "row 2" in message and str(pair_images / "img" / "nope.png") in message


def test_pairs_empty_caption(pair_images):
    path = pair_images / "pairs.csv"
    path.write_text("path,caption\nimg/a.png,fine\nimg/b.jpg,   \n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="row 2 .*empty caption"):
        load_image_text_pairs(path, 24)
    path = pair_images / "pairs.jsonl"
    path.write_text('{"path": "img/a.png", "caption": ""}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 1: empty caption"):
        load_image_text_pairs(path, 24)


def test_pairs_not_utf8_and_missing_file(pair_images):
    path = pair_images / "latin1.csv"
    path.write_bytes("path,caption\nimg/a.png,un caf\u00e9 rouge\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not valid UTF-8") as err:
        load_image_text_pairs(path, 24)
    assert str(path) in str(err.value)
    with pytest.raises(DataNotFoundError, match="not found"):
        load_image_text_pairs(pair_images / "nope.csv", 24)
