"""Tests for core.io.files: atomic replacement and the one CSV reader."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from input_files import write_files

from core.io.files import read_csv, replaced_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = write_files(tmp_path, {"out.csv": b"old"}) / "out.csv"
    with pytest.raises(RuntimeError), replaced_atomically(target) as partial:
        partial.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_two_writers_of_one_file_never_share_a_partial_file(tmp_path):
    target = tmp_path / "out.csv"
    with replaced_atomically(target) as first, replaced_atomically(target) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the last to finish wins whole
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_read_csv_keys_rows_by_lower_case_columns_and_fills_short_rows(tmp_path):
    path = write_files(tmp_path, {"t.csv": b"\xef\xbb\xbf ID ,Label\nx,1\n\n , \ny\n"}) / "t.csv"
    assert read_csv(path, ("id",)) == (
        [{"id": "x", "label": "1"}, {"id": "y", "label": ""}],
        ["id", "label"],
    )


def test_read_csv_bad_inputs_name_the_file(tmp_path):
    files = write_files(
        tmp_path, {"a.csv": b"image,label\nx,1\n", "b.csv": "id\ncaf\xe9\n".encode("latin-1")}
    )
    with pytest.raises(
        ValueError, match=r"a.csv lacks column\(s\) id: found image, label; required: id, label"
    ):
        read_csv(files / "a.csv", ("id", "label"))
    with pytest.raises(ValueError, match=r"b.csv is not UTF-8 text"):
        read_csv(files / "b.csv")
    with pytest.raises(ValueError, match=r"missing.csv not found"):
        read_csv(files / "missing.csv")


def test_a_replacement_reaches_the_disk_before_the_rename_and_the_rename_after_it(
    tmp_path, monkeypatch
):
    # Renamed before its bytes reach the disk, a file can be found empty or truncated after a power loss.
    happened = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: happened.append(("fsync", os.fstat(fd).st_ino)) or fsync(fd)
    )
    monkeypatch.setattr(
        os,
        "replace",
        lambda *paths: happened.append(("rename", os.stat(paths[0]).st_ino)) or replace(*paths),
    )
    target = tmp_path / "result.npz"
    with replaced_atomically(target) as partial:
        partial.write_bytes(b"whole")
    written = target.stat().st_ino
    assert happened == [("fsync", written), ("rename", written), ("fsync", tmp_path.stat().st_ino)]


def test_a_folder_that_cannot_be_synced_still_gets_the_whole_file(tmp_path, monkeypatch):
    fsync = os.fsync

    def files_only(fd):  # as network and FUSE mounts answer for a folder
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", files_only)
    with replaced_atomically(tmp_path / "out.csv") as partial:
        partial.write_text("whole")
    assert (tmp_path / "out.csv").read_text() == "whole"
