"""Indexed WebDataset shards: the converter, the index, random access, decoding, the dataset."""

import io
import json
import pickle
import tarfile
import tracemalloc
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssl_zoo.cli import shards_command
from ssl_zoo.data.shards import convert as convert_module
from ssl_zoo.data.shards.convert import Sample, convert, index_shards, write_shards
from ssl_zoo.data.datamodule import EpochBatchSampler
from ssl_zoo.data.decode import DecodeCounts, decode_images
from ssl_zoo.data.decode_ahead import DecodeAhead
from ssl_zoo.data.decode_ahead import unpack_encoded
from ssl_zoo.data.training import already_batched
from ssl_zoo.data.shards import ShardDataset, ShardSet, build_index, expand_shard_paths, index_path
from ssl_zoo.data.sources import load_shared_cifar10, load_shared_flickr8k
from ssl_zoo.errors import DataFormatError, DataNotFoundError, RecipeError
from ssl_zoo.text import tokenize, tokenize_captions

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def shared_root() -> Path:
    if not (SHARED / "cifar10.npz").is_file() or not (SHARED / "flickr8k_64.npz").is_file():
        pytest.skip(
            "../shared/data not found: the shard tests against the in-memory loaders need "
            "the repository's shared data folder"
        )
    return SHARED


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _solid(rgb, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, rgb)


def _shared_jpegs(root: Path, file_name: str, split: str, count: int) -> list[bytes]:
    """The first ``count`` JPEGs of a split, exactly as stored (header + body)."""
    with np.load(root / file_name, allow_pickle=False) as d:
        header, body, off = d["jpeg_header"].tobytes(), d[f"{split}_body"], d[f"{split}_offsets"]
        return [header + body[off[i] : off[i + 1]].tobytes() for i in range(count)]


def _mean_colour(image: torch.Tensor) -> list[float]:
    return image.float().mean((1, 2)).tolist()


def _close(colour, expected, tolerance=4.0) -> bool:
    return max(abs(a - b) for a, b in zip(colour, expected)) <= tolerance


# ----------------------------------------------------------------------------------------
# Shards of the shared archives give what the in-memory loaders give.


def test_cifar10_shards_equal_in_memory(shared_root, tmp_path):
    memory = load_shared_cifar10(shared_root, "test")
    count = 600
    jpegs = _shared_jpegs(shared_root, "cifar10.npz", "test", count)  # raw bytes, not re-encoded
    labels = memory.labels[:count].tolist()
    write_shards((Sample(j, label=l) for j, l in zip(jpegs, labels)), tmp_path, shard_size=256)

    shards = ShardSet(expand_shard_paths(tmp_path))
    assert len(shards) == count and len(shards.paths) == 3  # 256 + 256 + 88
    assert shards.has_labels and not shards.has_captions
    assert np.array_equal(shards.labels, memory.labels[:count].numpy())
    assert shards.read_image_bytes(300) == jpegs[300]

    batch_index = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:256].tolist()
    batch = ShardDataset(shards, image_size=32).__getitems__(batch_index)
    assert batch["image"].shape == (256, 3, 32, 32) and batch["image"].dtype == torch.uint8
    # TorchCodec's libjpeg-turbo and PIL's decode these JPEGs to the same pixels.
    assert torch.equal(batch["image"], memory.images[batch_index])
    assert torch.equal(batch["label"], memory.labels[batch_index])
    assert DecodeCounts.from_tensor(batch["decode_counts"]) == DecodeCounts(images=256) and "tokens" not in batch


def test_flickr8k_shards_equal_in_memory(shared_root, tmp_path):
    memory = load_shared_flickr8k(shared_root, "test")
    count = 200
    jpegs = _shared_jpegs(shared_root, "flickr8k_64.npz", "test", count)
    write_shards((Sample(j, captions=c) for j, c in zip(jpegs, memory.captions)), tmp_path, shard_size=64)

    shards = ShardSet(expand_shard_paths(tmp_path / "shard-{000000..000003}.tar"))
    assert len(shards) == count and shards.num_captions == 5 and not shards.has_labels
    assert shards.read_captions(17) == memory.captions[17]

    dataset = ShardDataset(shards, image_size=64, tokenize=partial(tokenize, context_length=24))
    sampler = EpochBatchSampler(count, 50, seed=3, num_captions=shards.num_captions)
    expected_tokens = tokenize_captions(memory.captions[:count], partial(tokenize, context_length=24))  # (N, 5, 24)
    for items in sampler:  # (image, caption) pairs
        batch = dataset.__getitems__(items)
        image, caption = torch.tensor(items).T
        assert torch.equal(batch["image"], memory.images[image])
        assert torch.equal(batch["tokens"], expected_tokens[image, caption])
        assert "label" not in batch


# ----------------------------------------------------------------------------------------
# The converter.


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """An ImageFolder with every kind of image the converter must handle, and some it must skip."""
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b" / "nested").mkdir(parents=True)
    (root / "c_empty").mkdir()
    _solid((200, 30, 40)).save(root / "a" / "1_red.jpg", quality=95)
    _solid((20, 40, 210)).save(root / "a" / "2_blue.png")
    _solid((0, 255, 255, 0), mode="CMYK").save(root / "a" / "3_cmyk.jpg", quality=95)  # pure red
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(root / "a" / "4_sixteen.png")
    _solid(90, mode="L").save(root / "a" / "5_gray.jpg", quality=95)
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 200, 0), (0, 0, 255)
    Image.fromarray(wide).save(root / "b" / "1_wide.png")  # centre crop keeps the green third
    _solid((10, 200, 30)).convert("P").save(root / "b" / "2_palette.png")
    (root / "b" / "3_corrupt.jpg").write_bytes(b"this is not an image" * 10)
    good = _encode(_solid((120, 120, 0), size=(64, 64)), quality=95)
    (root / "b" / "4_truncated.jpg").write_bytes(good[: len(good) // 2])
    _solid((250, 250, 250)).save(root / "b" / "nested" / "5_white.webp", lossless=True)
    (root / "b" / "notes.txt").write_text("not an image file: ignored")
    return root


# (label, expected colour) of each readable image, in the converter's order.
MESSY_EXPECTED = [
    (0, (200, 30, 40)), (0, (20, 40, 210)), (0, (255, 0, 0)), (0, (156, 156, 156)), (0, (90, 90, 90)),
    (1, (0, 200, 0)), (1, (10, 200, 30)), (1, (250, 250, 250)),
]


def test_converter_on_a_messy_folder(messy_folder, tmp_path):
    out = tmp_path / "shards"
    summary = convert("folder", messy_folder, out, size=16, shard_size=3, progress=False)
    assert (summary.samples, summary.shards, summary.resumed_shards) == (8, 3, 0)
    assert summary.classes == ["a", "b", "c_empty"] and summary.empty_classes == ["c_empty"]
    skipped = dict(summary.skipped)
    assert set(skipped) == {str(messy_folder / "b" / "3_corrupt.jpg"), str(messy_folder / "b" / "4_truncated.jpg")}
    assert all("unreadable image" in reason for reason in skipped.values())
    assert "truncated" in skipped[str(messy_folder / "b" / "4_truncated.jpg")].lower()
    text = str(summary)
    assert "3_corrupt.jpg" in text and "c_empty" in text and "8 samples" in text

    shards = ShardSet(expand_shard_paths(out))
    assert shards.classes == ["a", "b", "c_empty"]
    assert shards.labels.tolist() == [label for label, _ in MESSY_EXPECTED]
    batch = ShardDataset(shards, image_size=16).__getitems__(list(range(len(shards))))
    assert batch["image"].shape == (8, 3, 16, 16) and DecodeCounts.from_tensor(batch["decode_counts"]).replaced == 0
    for image, (_, colour) in zip(batch["image"], MESSY_EXPECTED):
        assert _close(_mean_colour(image[:, 2:-2, 2:-2]), colour), (_mean_colour(image), colour)
    with tarfile.open(shards.paths[0]) as tar:  # every image is re-encoded as a square JPEG
        first = tar.extractfile("000000000.jpg").read()
    assert Image.open(io.BytesIO(first)).format == "JPEG" and Image.open(io.BytesIO(first)).size == (16, 16)


def test_converter_pairs_file(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    _solid((255, 0, 0)).save(folder / "red.png")
    _solid((0, 0, 255)).save(folder / "blue.jpg")
    rows = [("red.png", "a red square"), ("blue.jpg", "a blue square"), ("red.png", "something red"),
            ("missing.jpg", "never seen")]
    (folder / "pairs.csv").write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    summary = convert("pairs", folder / "pairs.csv", tmp_path / "out", size=8, progress=False)
    assert summary.samples == 2 and summary.classes is None
    assert summary.skipped == [(str(folder / "missing.jpg"), "file not found")]
    shards = ShardSet(expand_shard_paths(tmp_path / "out"))
    assert shards.num_captions == 2 and not shards.has_labels
    assert shards.read_captions(0) == ["a red square", "something red"]
    # A sample with fewer captions than the most any has cycles through its own.
    assert [shards.read_caption(1, c) for c in range(2)] == ["a blue square", "a blue square"]


def test_interrupted_conversion_resumes_to_the_same_bytes(messy_folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    convert("folder", messy_folder, whole, size=16, shard_size=3, workers=2, progress=False)

    calls = []
    real_write_shard = convert_module.write_shard

    def dies_after_the_first_shard(samples, path, first_key):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        return real_write_shard(samples, path, first_key)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(convert_module, "write_shard", dies_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        convert("folder", messy_folder, resumed, size=16, shard_size=3, progress=False)
    assert sorted(p.name for p in resumed.glob("*.tar")) == ["shard-000000.tar"]
    monkeypatch.setattr(convert_module, "write_shard", real_write_shard)

    summary = convert("folder", messy_folder, resumed, size=16, shard_size=3, progress=False)
    assert summary.resumed_shards == 1 and summary.shards == 3 and summary.samples == 8
    assert len(summary.skipped) == 2  # the first shard's skipped files come from its record
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    for name in names:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name

    again = convert("folder", messy_folder, resumed, size=16, shard_size=3, progress=False)
    assert again.resumed_shards == 3 and again.samples == 8
    with pytest.raises(RecipeError, match="size: 16 before, 24 now") as err:
        convert("folder", messy_folder, resumed, size=24, shard_size=3, progress=False)
    assert str(resumed) in str(err.value)


def test_converter_bad_input_writes_nothing(tmp_path, messy_folder):
    out = tmp_path / "out"
    with pytest.raises(DataNotFoundError, match="not found") as err:
        convert("folder", tmp_path / "nowhere", out, size=32, progress=False)
    assert str(tmp_path / "nowhere") in str(err.value)
    (tmp_path / "no_images" / "cls").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no image files"):
        convert("folder", tmp_path / "no_images", out, size=32, progress=False)
    with pytest.raises(RecipeError, match="at least 8"):
        convert("folder", messy_folder, out, size=4, progress=False)
    with pytest.raises(RecipeError, match="'folder'"):
        convert("tar", messy_folder, out, size=32, progress=False)
    assert not out.exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RecipeError, match="is a file") as err:
        convert("folder", messy_folder, tmp_path / "a_file", size=32, progress=False)
    assert str(tmp_path / "a_file") in str(err.value)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.pdf").write_text("x")
    with pytest.raises(RecipeError, match="not empty"):
        convert("folder", messy_folder, tmp_path / "busy", size=32, progress=False)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["thesis.pdf"]


def test_shards_command(messy_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert shards_command(["--from", "folder", str(messy_folder), "--out", str(out), "--size", "16", "--quiet"]) == 0
    assert "Wrote 8 samples in 1 shard(s)" in capsys.readouterr().out
    index_path(out / "shard-000000.tar").unlink()
    assert shards_command(["--index", str(out)]) == 0
    assert "Indexed 1 shard(s)" in capsys.readouterr().out
    assert len(ShardSet(expand_shard_paths(out))) == 8
    assert index_shards(out) == []  # every index is current


# ----------------------------------------------------------------------------------------
# Shards written by other tools, and broken ones.


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_img2dataset_style_shard_with_json(tmp_path):
    red, blue = _encode(_solid((255, 0, 0))), _encode(_solid((0, 0, 255)), "PNG")
    shard = _tar(tmp_path / "00000.tar", [
        ("00000/000000001.jpg", red),
        ("00000/000000001.json", json.dumps({"caption": "red", "label": 3, "url": "x"}).encode()),
        ("00000/000000002.png", blue),
        ("00000/000000002.json", json.dumps({"caption": "blue", "label": 5}).encode()),
    ])
    assert index_shards(shard) == [index_path(shard)]
    shards = ShardSet([shard])
    assert shards.labels.tolist() == [3, 5] and shards.num_captions == 1
    assert [shards.read_caption(i) for i in range(2)] == ["red", "blue"]
    batch = ShardDataset(shards, 8, tokenize=partial(tokenize, context_length=8)).__getitems__([[1, 0], [0, 0]])
    assert _close(_mean_colour(batch["image"][0]), (0, 0, 255)) and batch["label"].tolist() == [5, 3]


def test_missing_shards_say_how_to_make_them(tmp_path):
    for root in (tmp_path / "nope", tmp_path / "train-{000..003}.tar"):
        with pytest.raises(DataNotFoundError, match="python -m ssl_zoo shards --from") as err:
            expand_shard_paths(root)
        assert str(tmp_path) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"No shards \(\*\.tar files\)") as err:
        expand_shard_paths(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataFormatError, match="decompress"):
        expand_shard_paths(tmp_path / "x.tar.gz")


def test_brace_patterns(tmp_path):
    for k in range(3):
        _tar(tmp_path / f"train-{k:03d}.tar", [])
    assert [p.name for p in expand_shard_paths(tmp_path / "train-{000..002}.tar")] == [
        "train-000.tar", "train-001.tar", "train-002.tar"
    ]
    assert [p.name for p in expand_shard_paths(tmp_path / "train-{002,000}.tar")] == ["train-002.tar", "train-000.tar"]


def test_shard_without_index_or_image_or_with_stale_index(tmp_path):
    shard = write_shards([Sample(_encode(_solid((1, 2, 3))), label=0)] * 3, tmp_path / "s", 10)[0]
    index_path(shard).unlink()
    with pytest.raises(DataFormatError, match="has no index") as err:
        ShardSet([shard])
    assert f"python -m ssl_zoo shards --index {shard}" in str(err.value)

    no_image = _tar(tmp_path / "captions_only.tar", [("0001.txt", b"a caption"), ("0001.cls", b"1")])
    with pytest.raises(DataFormatError, match="no image member") as err:
        build_index(no_image)
    assert str(no_image) in str(err.value)

    # Stale: the shard was rewritten (here: grew by one sample) after it was indexed.
    build_index(shard)
    old_index = index_path(shard).read_bytes()
    write_shards([Sample(_encode(_solid((1, 2, 3))), label=0)] * 4, tmp_path / "s", 10)
    index_path(shard).write_bytes(old_index)
    with pytest.raises(DataFormatError, match="stale") as err:
        ShardSet([shard])
    assert str(shard) in str(err.value) and "--index" in str(err.value)

    # Stale at equal size: the index points somewhere that is no longer an image's start.
    build_index(shard)
    table = np.load(index_path(shard))
    table[1]["image_offset"] += 512
    np.save(index_path(shard), table)
    with pytest.raises(DataFormatError, match="stale") as err:
        ShardSet([shard])
    assert str(shard) in str(err.value)

    index_path(shard).write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="not a readable index"):
        ShardSet([shard])


def test_bad_label_member(tmp_path):
    shard = _tar(tmp_path / "bad.tar", [("1.jpg", _encode(_solid((0, 0, 0)))), ("1.cls", b"cat")])
    with pytest.raises(DataFormatError, match="integer") as err:
        build_index(shard)
    assert "1.cls" in str(err.value) and str(shard) in str(err.value)


# ----------------------------------------------------------------------------------------
# Decoding.


def test_decode_images_formats_and_corrupt_members():
    red = _encode(_solid((255, 0, 0)), quality=95)
    encoded = [
        red,
        b"\xff\xd8\xff\xe0 corrupt JPEG",  # looks like a JPEG, is not
        _encode(_solid((0, 255, 0)), "PNG"),
        _encode(_solid((0, 0, 255)), "WEBP", lossless=True),
        _encode(_solid(77, mode="L"), quality=95),
        red[: len(red) // 2],  # truncated
        _encode(_solid((0, 255, 255, 0), mode="CMYK"), quality=95),
        _encode(Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)), "PNG"),
        _encode(_solid((10, 200, 30)).convert("P"), "PNG"),
        _encode(_solid((0, 0, 0)), "BMP"),  # TorchCodec has no BMP decoder: PIL's turn
        torch.frombuffer(bytearray(_encode(_solid((9, 9, 9)), "PNG")), dtype=torch.uint8),
    ]
    images, counts = decode_images(encoded, size=12)
    assert images.shape == (11, 3, 12, 12) and images.dtype == torch.uint8 and counts.replaced == 2
    # The 6 members that are not JPEG, and the 2 broken JPEGs the batched call refused.
    assert counts.images == 11 and counts.one_by_one == 8
    expected = [(255, 0, 0), (0, 255, 0), (0, 255, 0), (0, 0, 255), (77, 77, 77), (255, 0, 0), (255, 0, 0),
                (156, 156, 156), (10, 200, 30), (0, 0, 0), (9, 9, 9)]
    for i, (image, colour) in enumerate(zip(images, expected)):
        assert _close(_mean_colour(image), colour), (i, _mean_colour(image), colour)
    assert torch.equal(images[1], images[2]) and torch.equal(images[5], images[6])  # the next good one

    with pytest.raises(DataFormatError, match="None of the 2 images") as err:
        decode_images([b"x", b"\xff\xd8\xff"], size=8, names=["shard-7.tar (sample 1)", "shard-7.tar (sample 2)"])
    assert "shard-7.tar" in str(err.value)


def test_decode_images_resizes_shorter_side_and_crops_centre():
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, 32:64] = 255  # a white centre third
    images, _ = decode_images([_encode(Image.fromarray(wide), "PNG")], size=16)
    assert images.shape == (1, 3, 16, 16)
    assert images[0, :, :, 2:-2].min() >= 250  # the crop is the white third, edges aside


# ----------------------------------------------------------------------------------------
# The dataset in DataLoader workers, and memory.


@pytest.fixture
def labelled_shards(tmp_path) -> ShardSet:
    generator = np.random.default_rng(0)
    samples = [
        Sample(
            _encode(Image.fromarray(generator.integers(0, 256, (24, 24, 3), dtype=np.uint8)), quality=90),
            label=i % 5,
            captions=[f"picture {i}", f"image number {i}"],
        )
        for i in range(96)
    ]
    write_shards(samples, tmp_path / "shards", shard_size=40)
    return ShardSet(expand_shard_paths(tmp_path / "shards"))


def test_worker_processes_give_the_same_batches(labelled_shards):
    dataset = ShardDataset(labelled_shards, image_size=16, tokenize=partial(tokenize, context_length=12))
    dataset.__getitems__([[0, 0]])  # files are open in this process now; workers must reopen

    def batches(workers: int) -> list[dict]:
        sampler = EpochBatchSampler(len(dataset), 16, seed=1, num_captions=labelled_shards.num_captions)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=already_batched, num_workers=workers)
        return list(loader)

    inline, workers = batches(0), batches(2)
    assert len(inline) == len(workers) == 6
    for a, b in zip(inline, workers):
        assert a.keys() == b.keys() == {"image", "label", "tokens", "decode_counts"}
        assert all(torch.equal(a[k], b[k]) for k in a)

    copy = pickle.loads(pickle.dumps(dataset))
    state = labelled_shards.__getstate__()  # what a spawned worker receives: no descriptors, no mappings
    assert labelled_shards._files and not {"_files", "_rows", "_pid"} & set(state)
    items = [[5, 1], [90, 0], [41, 1]]
    assert all(torch.equal(copy.__getitems__(items)[k], dataset.__getitems__(items)[k]) for k in ("image", "tokens"))


def test_device_decode_mode_hands_over_encoded_bytes(labelled_shards):
    batch = ShardDataset(labelled_shards, image_size=16, decode="device").__getitems__([3, 50, 7])
    # One buffer and its offsets cross the process boundary, not one tensor per image.
    assert "image" not in batch and batch["encoded"].dtype == torch.uint8 and batch["encoded"].ndim == 1
    assert batch["offsets"].tolist()[0] == 0 and batch["offsets"].tolist()[-1] == len(batch["encoded"])
    encoded = unpack_encoded(batch["encoded"], batch["offsets"])
    assert [bytes(t.numpy()) for t in encoded] == [labelled_shards.read_image_bytes(i) for i in (3, 50, 7)]
    images, counts = decode_images(encoded, 16, device="cpu")
    inline = ShardDataset(labelled_shards, image_size=16).__getitems__([3, 50, 7])
    assert torch.equal(images, inline["image"]) and counts == DecodeCounts(images=3)
    assert torch.equal(batch["label"], inline["label"])


def test_shard_set_holds_no_per_sample_python_objects(tmp_path):
    count = 20_000
    tiny = _encode(_solid((5, 5, 5), size=(8, 8)), quality=50)
    write_shards((Sample(tiny, label=i % 10) for i in range(count)), tmp_path, shard_size=5_000)
    paths = expand_shard_paths(tmp_path)
    tracemalloc.start()
    try:
        shards = ShardSet(paths)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(shards) == count
    # The index is 64 bytes a sample (1.3 MB here) and stays on disk, memory-mapped.
    assert all(isinstance(rows, np.memmap) for rows in shards._rows)
    assert held < 200_000, f"ShardSet of {count} samples holds {held} bytes"
    assert shards.read_image_bytes(count - 1) == tiny and shards.labels_of([count - 1]).tolist() == [9]


def test_converter_takes_only_the_listed_classes(tmp_path):
    from ssl_zoo.data.shards.convert import read_class_list

    imagenet100 = read_class_list("imagenet100")  # CMC's list, shipped with the package
    assert len(imagenet100) == len(set(imagenet100)) == 100 and imagenet100[0] == "n02869837"
    for name in ("n01", "n02", "n03"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "train" / name / "a.png")
    (tmp_path / "two.txt").write_text("# two classes\nn03\nn01\n")
    code = shards_command(["--from", "folder", str(tmp_path / "train"), "--out", str(tmp_path / "out"),
                           "--size", "16", "--classes", str(tmp_path / "two.txt"), "--quiet"])
    assert code == 0
    assert (tmp_path / "out" / "classes.txt").read_text().split() == ["n01", "n03"]
    assert ShardSet(expand_shard_paths(tmp_path / "out")).labels.tolist() == [0, 1]
    with pytest.raises(DataFormatError, match="lacks 100 of the 100 listed class folders, e.g. n01558993"):
        convert("folder", tmp_path / "train", tmp_path / "out100", 16, classes=imagenet100, progress=False)
    assert not (tmp_path / "out100").exists()


def test_a_bad_jpeg_leaves_the_rest_of_its_batch_on_the_batched_decoder(monkeypatch):
    # The batched call fails as a whole on one bad image; halves are retried, so only the
    # bad one is decoded on its own (and counted), not the whole batch one at a time.
    from ssl_zoo.data import decode as decode_module

    good = [_encode(_solid((20 * i, 0, 0)), quality=95) for i in range(8)]
    calls = []
    real = decode_module.decode_jpeg
    monkeypatch.setattr(decode_module, "decode_jpeg", lambda sources, **kw: calls.append(len(sources)) or real(sources, **kw))
    images, counts = decode_images([*good[:5], b"\xff\xd8\xff\xe0 corrupt", *good[5:]], size=12)
    assert counts == DecodeCounts(images=9, one_by_one=1, replaced=1)
    assert calls[0] == 9 and max(calls[1:]) <= 5 and len(calls) <= 1 + 2 * 4  # halving, never one call per image
    reference, _ = decode_images(good, size=12)
    assert torch.equal(images[[0, 1, 2, 3, 4, 6, 7, 8]], reference)


def test_decoding_ahead_gives_the_workers_batches_in_order_decoded_in_a_background_thread(labelled_shards, monkeypatch):
    import threading

    from ssl_zoo.data import decode_ahead

    sampler = lambda: EpochBatchSampler(len(labelled_shards), 16, seed=2)  # noqa: E731
    loader = lambda decode: DataLoader(  # noqa: E731
        ShardDataset(labelled_shards, 16, decode=decode), batch_sampler=sampler(), collate_fn=already_batched, num_workers=2
    )
    events, threads = [], set()
    real = decode_ahead.decode_images

    def decode(encoded, size, device):
        threads.add(threading.current_thread().name)
        return real(encoded, size, device=device)

    class Fetches(list):  # the encoded loader, noting when each batch is taken from it
        def __iter__(self):
            for batch in super().__iter__():
                events.append("fetch")
                yield batch

    monkeypatch.setattr(decode_ahead, "decode_images", decode)
    ahead = DecodeAhead(Fetches(loader("device")), 16, torch.device("cpu"))
    assert len(ahead) == len(sampler()) == 6
    batches = []
    for batch in ahead:
        events.append("step")
        batches.append(batch)
    for a, b in zip(batches, loader("worker"), strict=True):
        assert a.keys() == b.keys() == {"image", "label", "decode_counts"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(threads) == 1 and threads.pop().startswith("ssl_zoo-decode")  # never the step's thread
    # Batch n + 1 is handed to the decoder before step n runs.
    assert events == ["fetch", "fetch", "step"] * 1 + ["fetch", "step"] * 4 + ["step"]


def test_loader_workers_take_a_slurm_tasks_own_cpus_and_share_a_nodes_otherwise(monkeypatch):
    from types import SimpleNamespace

    from pytorch_lightning.plugins.environments import LightningEnvironment, SLURMEnvironment

    from ssl_zoo.data.training import loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    trainer = lambda environment: SimpleNamespace(  # noqa: E731  8 processes on 2 nodes: 4 a node
        strategy=SimpleNamespace(cluster_environment=environment), world_size=8, num_nodes=2
    )
    # torchrun or Lightning's launcher: the 4 processes of a node share its 16 cores.
    assert loader_workers(trainer(LightningEnvironment())) == 4
    # SLURM: the CPU set is already this task's (--cpus-per-task), not divided again.
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert loader_workers(trainer(SLURMEnvironment())) == 12
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert loader_workers(trainer(SLURMEnvironment())) == 16
    assert loader_workers(SimpleNamespace(strategy=SimpleNamespace(), world_size=1, num_nodes=1)) == 16  # one device


def test_a_run_ends_with_one_warning_each_for_replaced_images_and_for_slow_device_decoding(labelled_shards):
    from ssl_zoo.data.datamodule import ImageDataModule
    from ssl_zoo.data.shards.dataset import ShardTraining
    from ssl_zoo.recipe import DataConfig

    config = DataConfig(name="shards", root="shards/train")
    data = ImageDataModule(config)
    data.train_data = train = ShardTraining(labelled_shards, config, seed=0)
    train.decode_on = "device"
    train.decode_counts = DecodeCounts(images=1000, one_by_one=10, replaced=0)  # 1 %: the limit, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.teardown("fit")
    train.decode_counts = DecodeCounts(images=1000, one_by_one=11, replaced=2)
    with pytest.warns(UserWarning) as caught:
        data.teardown("fit")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "2 training image(s) in shards/train could not be decoded" in messages[0]
    assert "11 of 1000 training images (1.1 %)" in messages[1] and "--shards.decode worker" in messages[1]
    train.decode_on = "workers"  # on the CPU workers, one at a time is the only way: nothing to say
    train.decode_counts = DecodeCounts(images=1000, one_by_one=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.teardown("fit")
