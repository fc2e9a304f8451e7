"""Shards at web scale: a ShardSet of many shards holds a bounded number of index maps and
open files per process, checks each index on its first use, pickles without either, and
`shards --index --workers N` writes the same indexes as one process."""

import io
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_zoo.cli import shards_command
from ssl_zoo.data.shards import ShardSet, expand_shard_paths, index_path, reader
from ssl_zoo.data.shards.convert import Sample, index_shards, write_shard
from ssl_zoo.errors import DataFormatError, RecipeError

SHARDS = 200
PER_SHARD = 3
BOUND = 8  # the per-process limits, set low so that 200 shards overflow them many times

needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="counts maps and descriptors in /proc (Linux)")


def _label(sample: int) -> int:
    return sample % 7


def _jpeg(sample: int) -> bytes:
    """Sample i's image: an 8 x 8 JPEG of grey level i % 256 (neighbours' bytes differ)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), sample % 256).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def _write(root: Path, shards: int) -> list[Path]:
    """``shards`` indexed shards of PER_SHARD samples; sample i is ``_jpeg(i)``, labelled
    i % 7 and captioned "caption i"."""
    root.mkdir(parents=True)
    paths = []
    for s in range(shards):
        samples = [
            Sample(_jpeg(i), label=_label(i), captions=[f"caption {i}"]) for i in range(s * PER_SHARD, (s + 1) * PER_SHARD)
        ]
        paths.append(write_shard(samples, root / f"shard-{s:06d}.tar", s * PER_SHARD))
    return paths


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> list[Path]:
    return _write(tmp_path_factory.mktemp("many") / "shards", SHARDS)


@pytest.fixture
def low_bounds(monkeypatch):
    monkeypatch.setattr(reader, "_MAX_MAPPED_INDEXES", BOUND)
    monkeypatch.setattr(reader, "_MAX_OPEN_FILES", BOUND)


def _held(folder: Path) -> tuple[int, int]:
    """(index files mapped, descriptors open) of this process, among the files in ``folder``."""
    maps = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if line.rstrip().endswith(".idx.npy") and str(folder) in line}
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return len(maps), fds


def _rewrite_index(shard: Path, change) -> None:
    """Change an index's table and put the result in place as a new file (a file that is
    mapped must not be truncated under the map)."""
    table = np.load(index_path(shard))
    change(table)
    temp = index_path(shard).with_suffix(".tmp")
    with open(temp, "wb") as f:
        np.save(f, table)
    os.replace(temp, index_path(shard))


@needs_proc
def test_reading_every_shard_stays_within_the_bounds(many_shards, low_bounds):
    folder = many_shards[0].parent
    shards = ShardSet(many_shards)
    assert len(shards) == SHARDS * PER_SHARD
    assert _held(folder)[0] == 1  # opening maps the first shard's index only (to check it)
    assert shards.has_labels and shards.max_label == 6 and shards.num_captions == 1

    order = np.random.default_rng(0).permutation(len(shards))  # every sample of every shard, at random
    most_maps = most_fds = 0
    for start in range(0, len(order), 50):
        batch = order[start : start + 50]
        assert [shards.read_image_bytes(int(i)) for i in batch] == [_jpeg(int(i)) for i in batch]
        assert shards.labels_of(batch).tolist() == [_label(int(i)) for i in batch]
        assert [shards.read_caption(int(i)) for i in batch[:5]] == [f"caption {i}" for i in batch[:5]]
        maps, fds = _held(folder)
        most_maps, most_fds = max(most_maps, maps), max(most_fds, fds)
        assert shards._rows.mapped <= BOUND and len(shards._files) <= BOUND
    # Each mapped index holds a descriptor too (CPython's mmap), hence 2 x BOUND descriptors.
    assert BOUND // 2 < most_maps <= BOUND and BOUND < most_fds <= 2 * BOUND, (most_maps, most_fds)

    # Every label, read a few indexes at a time.
    assert np.array_equal(shards.labels, np.array([_label(i) for i in range(len(shards))]))
    assert _held(folder)[0] <= BOUND
    shards.close()
    assert _held(folder) == (0, 0)


def test_labels_summary_comes_from_the_headers(tmp_path):
    labelled = _write(tmp_path / "a", 3)
    unlabelled = tmp_path / "b" / "shard.tar"
    unlabelled.parent.mkdir()
    write_shard([Sample(_jpeg(0), captions=["no label"])], unlabelled, 0)
    shards = ShardSet([*labelled, unlabelled])
    assert not shards.has_labels and shards.max_label == 6
    assert shards._rows.mapped == 1  # has_labels, max_label and the counts came from the headers
    assert shards.labels.tolist() == [_label(i) for i in range(3 * PER_SHARD)] + [-1]


# A set made before the pool forks: its copy in the worker is the parent's, maps and
# descriptors included (as in a forked DataLoader worker).
_INHERITED: ShardSet | None = None


def _read_in_worker(shards: ShardSet | None, samples: list[int]) -> tuple[list[bytes], list[int], int, int]:
    shards = shards or _INHERITED
    images = [shards.read_image_bytes(i) for i in samples]
    labels = shards.labels_of(samples).tolist()
    maps, fds = _held(shards.paths[0].parent)
    return images, labels, maps, fds


@needs_proc
def test_a_set_pickles_without_maps_or_files_and_reads_in_workers(many_shards, low_bounds):
    global _INHERITED
    shards = ShardSet(many_shards)
    samples = np.random.default_rng(1).choice(len(shards), 60, replace=False).tolist()
    expected = ([shards.read_image_bytes(i) for i in samples], shards.labels_of(samples).tolist())
    assert shards._rows.mapped == BOUND and len(shards._files) == BOUND

    state = shards.__getstate__()
    assert not {"_rows", "_files", "_pid"} & set(state)
    assert not any(isinstance(value, np.memmap) for value in state.values())
    copy = pickle.loads(pickle.dumps(shards))
    assert copy._rows.mapped == 0 and not copy._files  # nothing mapped or open until it reads
    assert [copy.read_image_bytes(i) for i in samples] == expected[0]

    # In a forked worker: a set inherited with its parent's maps and descriptors drops them
    # on first use; one pickled to the worker maps and opens only its own.
    copy.close()
    _INHERITED = shards
    try:
        for given in (None, copy):
            with multiprocessing.get_context("fork").Pool(1) as pool:
                images, labels, maps, fds = pool.apply(_read_in_worker, (given, samples))
            assert (images, labels) == expected
            assert maps <= BOUND and fds <= 2 * BOUND, (maps, fds)
            shards.close()  # the second worker inherits nothing
    finally:
        _INHERITED = None


def test_parallel_indexing_writes_the_same_bytes(many_shards, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for shard in many_shards[:40]:
        (folder / shard.name).write_bytes(shard.read_bytes())
    serial = index_shards(folder, workers=1)
    assert serial == [index_path(folder / shard.name) for shard in many_shards[:40]]
    written = {path: path.read_bytes() for path in serial}
    for path in serial:
        path.unlink()
    assert index_shards(folder, workers=2) == serial
    assert {path: path.read_bytes() for path in serial} == written
    assert written[serial[0]] == index_path(many_shards[0]).read_bytes()  # as the converter wrote it

    index_path(folder / many_shards[3].name).unlink()
    assert shards_command(["--index", str(folder), "--workers", "2", "--quiet"]) == 0
    assert "Indexed 1 shard(s)" in capsys.readouterr().out
    assert index_shards(folder, workers=2) == []  # every index current
    with pytest.raises(RecipeError, match=r"--workers \(0\)"):
        index_shards(folder, workers=0)


def test_a_stale_index_is_found_on_first_use(tmp_path, low_bounds):
    paths = _write(tmp_path / "shards", 40)
    shards = ShardSet(paths)  # opening checks the first shard's index only

    # Stale at equal size: the index points where no image of its size starts.
    _rewrite_index(paths[30], lambda table: table[1].__setitem__("image_offset", table[1]["image_offset"] + 512))
    with paths[20].open("ab") as f:  # stale by size: the shard grew after indexing
        f.write(bytes(1024))
    assert shards.read_image_bytes(0)  # other shards read on
    with pytest.raises(DataFormatError, match="stale") as err:
        shards.read_image_bytes(30 * PER_SHARD)
    assert str(paths[30]) in str(err.value) and "--index" in str(err.value)
    with pytest.raises(DataFormatError, match="stale") as err:
        shards.labels_of([20 * PER_SHARD + 1])
    assert str(paths[20]) in str(err.value) and "bytes, but the index was built for" in str(err.value)

    # A shard and its index rewritten with fewer samples after the set was opened.
    fewer = tmp_path / "fewer.tar"
    write_shard([Sample(_jpeg(0))], fewer, 0)
    fewer.replace(paths[10])
    index_path(fewer).replace(index_path(paths[10]))
    with pytest.raises(DataFormatError, match="rebuilt or rewritten while these shards were open"):
        shards.read_image_bytes(10 * PER_SHARD)

    # A checked shard stays checked while the process reads on; a new process checks again.
    shards.read_image_bytes(5 * PER_SHARD)
    _rewrite_index(paths[5], lambda table: table[1].__setitem__("image_offset", table[1]["image_offset"] + 512))
    with pytest.raises(DataFormatError, match="stale"):
        pickle.loads(pickle.dumps(shards)).read_image_bytes(5 * PER_SHARD)


def test_an_index_of_the_older_layout_asks_for_a_rebuild(tmp_path):
    paths = _write(tmp_path / "shards", 3)
    _rewrite_index(paths[2], lambda table: table[0].__setitem__("image_offset", table[0]["image_offset"] - 1))
    with pytest.raises(DataFormatError, match="layout version 1, written by an older ssl_zoo") as err:
        ShardSet(expand_shard_paths(tmp_path / "shards"))  # at open: the header is read
    assert f"python -m ssl_zoo shards --index {paths[2]}" in str(err.value)
    assert index_shards(tmp_path / "shards") == [index_path(paths[2])]
    assert len(ShardSet(paths)) == 3 * PER_SHARD


def test_an_index_header_numpy_wrote_otherwise_still_reads(tmp_path):
    # Opening parses np.save's usual header by hand (numpy's parser is slow); any other
    # header numpy accepts goes through numpy's parser.
    paths = _write(tmp_path / "shards", 2)
    table = np.load(index_path(paths[1]))
    text = f"{{'shape': ({len(table)},), 'fortran_order': False, 'descr': {np.lib.format.dtype_to_descr(table.dtype)!r}}}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    index_path(paths[1]).write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")
                                     + table.tobytes())
    assert np.array_equal(np.load(index_path(paths[1])), table)
    shards = ShardSet(paths)
    assert [shards.read_image_bytes(i) for i in range(len(shards))] == [_jpeg(i) for i in range(2 * PER_SHARD)]
    assert shards.labels.tolist() == [_label(i) for i in range(2 * PER_SHARD)]
