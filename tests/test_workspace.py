import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.paths import MAX_NAME_BYTES, confined_path, safe_file_name, workspace_home
from core.session.workspace import DatasetEntry, Workspace


def test_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_LAB_HOME", str(tmp_path / "lab"))
    assert workspace_home() == tmp_path / "lab" and (tmp_path / "lab").is_dir()


def test_state_survives_reopening_and_stays_in_its_workspace(tmp_path):
    first = Workspace("alpha1", tmp_path)
    first.set("threshold", 0.78)
    first.add_dataset(DatasetEntry("demo", "/data/demo", "demo"))
    first.close()

    reopened = Workspace("alpha1", tmp_path)
    assert reopened.get("threshold") == 0.78
    assert reopened.datasets() == [DatasetEntry("demo", "/data/demo", "demo")]

    other = Workspace("beta22", tmp_path)
    assert other.get("threshold") is None and other.datasets() == []
    assert other.files != reopened.files


@pytest.mark.parametrize("bad", ["", "../etc", "a b c d", "x" * 65, "ab"])
def test_workspace_ids_cannot_escape_their_folder(tmp_path, bad):
    with pytest.raises(ValueError, match=r"workspace id .* is not valid"):
        Workspace(bad, tmp_path)


def test_new_ids_are_valid_and_distinct(tmp_path):
    ids = {Workspace.new_id() for _ in range(50)}
    assert len(ids) == 50
    for workspace_id in list(ids)[:3]:
        Workspace(workspace_id, tmp_path)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\evil.jpg", "evil.jpg"),
        (".hidden", "hidden"),
        ("ünï cødé.png", "ünï cødé.png"),
        ("a<b>|c.jpg", "a_b_c.jpg"),
        ("..", "file"),
    ],
)
def test_user_file_names_become_one_harmless_component(name, expected):
    assert safe_file_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["a" * 120 + ".jpg", "数据" * 60, "é" * 120 + ".parquet", "x" * 400, "名" * 200 + ".tar.gz"],
)
def test_a_long_name_becomes_a_bounded_file_name_keeping_its_start_and_suffix(tmp_path, name):
    safe = safe_file_name(name)
    assert len(safe.encode()) <= MAX_NAME_BYTES
    assert safe[:20] == name[:20] and Path(safe).suffix == Path(name).suffix
    (tmp_path / safe).write_bytes(b"")  # a file system takes it


def test_long_names_sharing_their_start_stay_apart_and_short_ones_are_kept():
    shared = "d" * 300
    assert safe_file_name(shared + "1.jpg") != safe_file_name(shared + "2.jpg")
    assert safe_file_name("d" * 120) == "d" * 120


def test_uploads_stay_in_the_workspace_and_never_overwrite(tmp_path):
    ws = Workspace("upload1", tmp_path)
    first = ws.save_upload("../up", "../../x.jpg", b"1")
    second = ws.save_upload("../up", "x.jpg", b"2")
    assert first.parent == second.parent and first.parent.is_relative_to(ws.files)
    assert (first.read_bytes(), second.read_bytes()) == (b"1", b"2")


def test_confined_path_refuses_escapes(tmp_path):
    (tmp_path / "root" / "ok").mkdir(parents=True)
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert confined_path(tmp_path / "root", "ok") == (tmp_path / "root" / "ok").resolve()
    for escape in ("..", "/etc", "ok/../../x", "link"):
        with pytest.raises(ValueError, match="outside the data root"):
            confined_path(tmp_path / "root", escape)


def test_settings_lists_the_keys_under_a_prefix_and_only_this_workspace(workspace):
    mine, other = Workspace("mine1"), Workspace("other1")
    mine.set("threshold:a", 0.5)
    mine.set("threshold:b", 0.25)
    mine.set("dataset", "demo")
    other.set("threshold:a", 0.9)
    assert mine.settings("threshold:") == {"threshold:a": 0.5, "threshold:b": 0.25}
    assert mine.settings("threshold:%") == {}  # a prefix is text, not a pattern
    assert set(mine.settings()) == {"threshold:a", "threshold:b", "dataset"}


def test_each_upload_gets_a_new_folder_even_with_one_name_in_one_second(tmp_path):
    ws = Workspace("upload2", tmp_path)
    folders = [ws.new_upload_folder("../my data") for _ in range(3)]
    assert len(set(folders)) == 3
    assert all(
        folder.parent == ws.files
        and folder.name.startswith("my data-")
        and not any(folder.iterdir())
        for folder in folders
    )


def test_saved_configs_fall_back_to_defaults_when_invalid(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config:
        size: int = 3

        def __post_init__(self):
            if self.size < 1:
                raise ValueError(f"size must be at least 1, got {self.size}")

    ws = Workspace("config1", tmp_path)
    assert ws.get_config("c", Config) == Config()
    ws.set_config("c", Config(size=7))
    assert Workspace("config1", tmp_path).get_config("c", Config) == Config(size=7)
    for stale in ({"size": 0}, {"colour": "red"}):
        ws.set("c", stale)
        assert ws.get_config("c", Config) == Config()


ADDING_PROCESSES = 6
# Each process waits until the same moment, then adds the name: a server per process sharing one home.
_ADD_AT = """
import sys, time
from core.session.workspace import DatasetEntry, Workspace
workspace = Workspace("race9", sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
workspace.add_dataset(DatasetEntry("mydata", sys.argv[3], "upload"))
"""


def test_processes_adding_one_name_at_once_each_keep_a_row_under_a_name_of_their_own(tmp_path):
    Workspace("race9", tmp_path).close()  # the tables exist before the race
    start = time.time() + 3.0
    adders = [
        subprocess.Popen(
            [sys.executable, "-c", _ADD_AT, str(tmp_path), str(start), f"/uploads/{index}"],
            cwd=Path(__file__).resolve().parent.parent,
            stderr=subprocess.PIPE,
        )
        for index in range(ADDING_PROCESSES)
    ]
    for adder in adders:
        assert adder.wait(60) == 0, adder.stderr.read().decode()
    kept = Workspace("race9", tmp_path).datasets()
    assert {entry.source for entry in kept} == {f"/uploads/{i}" for i in range(ADDING_PROCESSES)}
    assert sorted(entry.name for entry in kept) == sorted(
        ["mydata", *(f"mydata ({copy})" for copy in range(2, ADDING_PROCESSES + 1))]
    )
