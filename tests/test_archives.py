"""Tests for core.io.archives: safe zip extraction, its caps, and unpacking each zip once."""

from __future__ import annotations

import struct

import pytest
from input_files import BLUE, RED, encode, jpeg, write_files, write_zip
from PIL import Image

from core.io import archives
from core.io.archives import ZipLimits, safe_extract_zip
from core.io.layouts import load_dataset
from core.records import TEST, TRAIN


def test_zip_refuses_unsafe_paths_and_extracts_the_rest(tmp_path):
    archive = write_zip(
        tmp_path / "a.zip",
        {
            "../escape.jpg": jpeg(),
            "train/../../escape2.jpg": jpeg(),
            "/absolute.jpg": jpeg(),
            "C:/drive.jpg": jpeg(),
            "C:\\windows.jpg": jpeg(),
            "inner.zip": b"PK",
            "train/cat/ok.jpg": jpeg(),
            "__MACOSX/train/cat/._ok.jpg": b"junk",
            "train/.DS_Store": b"junk",
        },
        symlinks={"train/cat/link.jpg": "/etc/passwd"},
    )
    dest = tmp_path / "out" / "dest"
    rejected = {r.name: r.reason for r in safe_extract_zip(archive, dest)}

    assert rejected["../escape.jpg"].startswith("path in zip climbs out")
    assert rejected["train/../../escape2.jpg"].startswith("path in zip climbs out")
    for name in ("/absolute.jpg", "C:/drive.jpg", "C:\\windows.jpg"):
        assert rejected[name].startswith("absolute path")
    assert rejected["train/cat/link.jpg"].startswith("symbolic link")
    assert rejected["inner.zip"] == "nested zip archives are not opened"
    assert len(rejected) == 7  # OS junk is skipped silently
    extracted = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert extracted == ["train/cat/ok.jpg"]
    assert not list((tmp_path / "out").glob("escape*")) and not (tmp_path / "escape.jpg").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


@pytest.mark.parametrize(
    "entries, limits, message",
    [
        (
            {"zeros.bin": bytes(2 << 20)},
            ZipLimits(),
            "looks like a zip bomb: entry 'zeros.bin' expands",
        ),
        (
            {f"f{i}.jpg": b"x" for i in range(5)},
            ZipLimits(max_entries=3),
            "has 5 entries; the limit is 3",
        ),
        (
            {"a.jpg": b"x" * 600, "b.jpg": b"y" * 600},
            ZipLimits(max_total_bytes=1000),
            "would unpack to 1,200 bytes; the limit is 1,000",
        ),
    ],
    ids=["ratio", "entries", "total bytes"],
)
def test_zip_over_limits_is_refused_before_writing_anything(tmp_path, entries, limits, message):
    archive = write_zip(tmp_path / "bomb.zip", entries)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=message):
        safe_extract_zip(archive, dest, limits)
    assert not dest.exists()


def test_small_compressible_files_are_not_mistaken_for_bombs(tmp_path):
    flat_bmp = encode(Image.new("RGB", (96, 96), RED), "BMP")  # ~27 kB that deflates > 200x
    archive = write_zip(tmp_path / "flat.zip", {"train/red/flat.bmp": flat_bmp})
    assert safe_extract_zip(archive, tmp_path / "dest") == []
    assert (tmp_path / "dest/train/red/flat.bmp").read_bytes() == flat_bmp


def test_lying_size_header_cannot_write_more_than_declared(tmp_path):
    archive = write_zip(tmp_path / "liar.zip", {"big.jpg": b"A" * 5000, "fine.jpg": jpeg()})
    data = bytearray(archive.read_bytes())
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)  # big.jpg comes first in both headers
        data[at + size_offset : at + size_offset + 4] = struct.pack("<I", 100)
    archive.write_bytes(bytes(data))

    rejected = safe_extract_zip(archive, tmp_path / "dest")
    assert [r.name for r in rejected] == ["big.jpg"]
    assert rejected[0].reason.startswith("corrupt zip entry")
    assert not (tmp_path / "dest/big.jpg").exists()
    assert (tmp_path / "dest/fine.jpg").read_bytes() == jpeg()


def test_running_byte_cap_stops_extraction_even_if_the_declared_sizes_fooled_the_precheck(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(archives, "_check_zip_limits", lambda *args: None)
    archive = write_zip(tmp_path / "big.zip", {"a.jpg": b"x" * 600, "b.jpg": b"y" * 600})
    with pytest.raises(ValueError, match=r"zip entry 'b.jpg' unpacks past the total size limit"):
        safe_extract_zip(archive, tmp_path / "dest", ZipLimits(max_total_bytes=1000))
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["a.jpg"]  # no partial b.jpg


def test_not_a_zip_is_a_clear_error(tmp_path):
    fake = write_files(tmp_path, {"fake.zip": b"not a zip"}) / "fake.zip"
    with pytest.raises(ValueError, match="is not a readable zip archive"):
        safe_extract_zip(fake, tmp_path / "dest")


@pytest.mark.parametrize("wrapper", ["", "my-dataset/"], ids=["flat", "one top folder"])
def test_zip_of_folder_layout(tmp_path, small_layout, wrapper):
    archive = write_zip(
        tmp_path / "pets.zip", {wrapper + name: data for name, data in small_layout.items()}
    )
    work_dir = tmp_path / "work"
    dataset = load_dataset(archive, work_dir=work_dir)
    assert dataset.name == "pets"
    assert [i.id for i in dataset.items] == ["c1.jpg", "c2.jpg", "d1.jpg", "t1.jpg", "t2.jpg"]
    assert all(item.path.is_relative_to(work_dir.resolve()) for item in dataset.items)


def test_a_zip_is_unpacked_once_and_reused_until_its_content_changes(tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", small_layout)
    work_dir = tmp_path / "work"
    first = load_dataset(archive, work_dir=work_dir)
    unpacked = sorted(path.name for path in work_dir.iterdir())
    (folder,) = {item.path.relative_to(work_dir.resolve()).parts[0] for item in first.items}
    assert unpacked == [folder, f"{folder}.refused.json"]  # no staging folder left behind

    edited = work_dir / folder / "train" / "cat" / "c1.jpg"
    edited.write_bytes(jpeg(BLUE))  # unpacking again would overwrite this
    again = load_dataset(archive, work_dir=work_dir)
    assert edited.read_bytes() == jpeg(BLUE)
    assert [item.path for item in again.items] == [item.path for item in first.items]
    assert sorted(path.name for path in work_dir.iterdir()) == unpacked

    write_zip(archive, {**small_layout, "train/dog/d2.jpg": jpeg(BLUE)})
    changed = load_dataset(archive, work_dir=work_dir)
    assert len(changed.items) == len(first.items) + 1
    assert len(list(work_dir.glob("pets-*.refused.json"))) == 2


def test_a_folder_left_without_its_record_is_unpacked_again(tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", {**small_layout, "../evil.jpg": jpeg()})
    work_dir = tmp_path / "work"
    first = load_dataset(archive, work_dir=work_dir)
    (record,) = work_dir.glob("*.refused.json")
    record.unlink()  # as if the run had died between unpacking and writing the record
    stray = first.items[0].path.parent / "stray.jpg"
    stray.write_bytes(jpeg())
    again = load_dataset(archive, work_dir=work_dir)
    assert not stray.exists() and record.is_file()
    assert [r.name for r in again.rejected] == [r.name for r in first.rejected] == ["../evil.jpg"]


def test_zips_unpack_into_the_workspace_home_by_default(workspace, tmp_path, small_layout):
    archive = write_zip(tmp_path / "pets.zip", small_layout)
    dataset = load_dataset(archive)
    assert all(
        item.path.is_relative_to((workspace / "unpacked").resolve()) for item in dataset.items
    )


def test_zip_rejections_join_the_dataset_and_the_rest_loads(tmp_path, small_layout):
    archive = write_zip(
        tmp_path / "z.zip", {**small_layout, "../evil.jpg": jpeg(), "train/cat/x.zip": b"PK"}
    )
    dataset = load_dataset(archive, work_dir=tmp_path / "work")
    assert len(dataset.items) == len(small_layout)
    assert {r.name for r in dataset.rejected} == {"../evil.jpg", "train/cat/x.zip"}


def test_zip_of_csv_layout_inside_a_top_folder(tmp_path):
    archive = write_zip(
        tmp_path / "kaggle.zip",
        {
            "kaggle/images/a.jpg": jpeg(),
            "kaggle/test/t.jpg": jpeg(),
            "kaggle/train.csv": b"image,label\na.jpg,cat\n",
        },
    )
    dataset = load_dataset(archive, work_dir=tmp_path / "work")
    assert dataset.name == "kaggle"
    assert [(i.split, i.id, i.label) for i in dataset.items] == [
        (TRAIN, "a.jpg", "cat"),
        (TEST, "t.jpg", None),
    ]


def test_a_zip_with_a_long_name_unpacks_under_a_bounded_folder_name(tmp_path):
    """Its folder is named after the zip and its content key: a 250-character name would not fit as it is."""
    layout = {"train/cat/a.jpg": jpeg(RED), "train/dog/b.jpg": jpeg(BLUE), "test/c.jpg": jpeg(RED)}
    archive = write_zip(tmp_path / f"{'z' * 250}.zip", layout)
    dataset = load_dataset(archive, work_dir=tmp_path / "unpacked")
    assert len(dataset.split(TRAIN)) == 2 and len(dataset.split(TEST)) == 1
    (unpacked,) = [path for path in (tmp_path / "unpacked").iterdir() if path.is_dir()]
    assert unpacked.name.startswith("z" * 100) and len(unpacked.name.encode()) < 200
