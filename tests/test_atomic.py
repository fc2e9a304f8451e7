"""ssl_zoo.atomic: a file is replaced whole or not at all, flushed to disk, with no debris."""

import os

import pytest

from ssl_zoo.atomic import atomic_path, atomic_write


def test_atomic_write_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "new" / "results.json"  # missing folders are created
    atomic_write(path, "{\"top1\": 0.5}")
    assert path.read_text() == "{\"top1\": 0.5}"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "shard-000000.tar"
    atomic_write(path, b"old, whole")
    with pytest.raises(OSError, match="No space"):
        with atomic_path(path) as temp:
            temp.write_bytes(b"new, half")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old, whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def test_the_temporary_file_is_beside_the_target_and_matches_no_pattern_of_finished_files(tmp_path):
    path = tmp_path / "index.npy"
    with atomic_path(path) as temp:
        assert temp.parent == tmp_path  # one file system: the rename is atomic, not a copy
        temp.write_bytes(b"x")
        assert not path.exists()  # nothing under the final name until the block ends
        assert not list(tmp_path.glob("*.npy"))
    assert path.read_bytes() == b"x" and not temp.exists()


def test_the_file_and_its_folder_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write(tmp_path / "last.ckpt", b"weights")
    folder_sync = ["fsync"] if hasattr(os, "O_DIRECTORY") else []  # Windows has no folder handle to flush
    assert events == ["fsync", "replace", *folder_sync]


def test_a_writer_that_writes_nothing_is_an_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.md"
    atomic_write(path, "old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(path):
            pass
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
