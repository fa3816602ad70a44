"""Tests for core.io.parts and the streaming, resumable embed: part files, the rejections sidecar, kill and resume."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from input_files import make_embeddings

from core.embedding.clip import backend_in
from core.embedding.config import EmbedConfig
from core.embedding.runner import embed_dataset, embed_to_parquet, is_folder_out, load_embedder
from core.io.files import read_csv
from core.io.layouts import load_dataset
from core.io.parquet import (
    MODEL_METADATA_KEY,
    PRECISION_METADATA_KEY,
    is_embeddings_source,
    read_embeddings_checked,
)
from core.io.parts import (
    REJECTED_FILE,
    Completion,
    PartWriter,
    completion,
    embedded_ids,
    incomplete_note,
    part_files,
    writing,
    written_by,
)
from core.records import Dataset, Embeddings, Rejected

REPO = Path(__file__).resolve().parents[1]


def rows(emb: Embeddings, chosen: slice) -> Embeddings:
    return Embeddings(
        emb.ids[chosen], emb.splits[chosen], emb.labels[chosen], emb.vectors[chosen], emb.model
    )


def test_parts_read_back_as_one_table_with_model_and_precision_and_the_sidecar_is_skipped(tmp_path):
    folder, original = tmp_path / "out" / "parts", make_embeddings()
    writer = PartWriter(folder, original.model, "bf16")
    first, second = (
        writer.write(rows(original, slice(0, 2))),
        writer.write(rows(original, slice(2, 4))),
    )
    assert writer.write(rows(original, slice(0, 0))) is None
    writer.rejected([Rejected("bad.jpg", 'not an image, e.g. "quoted", with a comma')])

    assert first != second and sorted(
        path.name for path in folder.glob("part-*.parquet")
    ) == sorted([first.name, second.name])
    assert first.name.startswith("part-000000-") and second.name.startswith("part-000001-")
    assert is_embeddings_source(folder)
    loaded, dropped = read_embeddings_checked(folder)
    assert (
        dropped == []
        and sorted(loaded.ids) == sorted(original.ids)
        and loaded.model == original.model
    )
    by_id = dict(zip(loaded.ids, loaded.vectors))
    np.testing.assert_allclose([by_id[i] for i in original.ids], original.vectors, atol=1e-6)
    metadata = pq.read_schema(first).metadata
    assert (metadata[MODEL_METADATA_KEY], metadata[PRECISION_METADATA_KEY]) == (
        b"test/model",
        b"bf16",
    )
    assert written_by(folder) == ("test/model", "bf16")
    assert embedded_ids(folder) == set(original.ids)


def test_a_second_writer_adds_parts_after_the_first_ones(tmp_path):
    original = make_embeddings()
    PartWriter(tmp_path, original.model).write(rows(original, slice(0, 3)))
    added = PartWriter(tmp_path, original.model).write(rows(original, slice(3, 4)))
    assert added.name.startswith("part-000001-")
    assert embedded_ids(tmp_path) == set(original.ids) and written_by(tmp_path) == (
        "test/model",
        None,
    )


@pytest.mark.parametrize("model, precision", [("other/model", None), ("test/model", "fp32")])
def test_a_folder_refuses_parts_by_another_model_or_precision_naming_both(
    tmp_path, model, precision
):
    original = make_embeddings()
    PartWriter(tmp_path, original.model).write(original)
    with pytest.raises(
        ValueError,
        match=rf"model 'test/model' in precision none, not by '{model}' in precision {precision or 'none'}",
    ):
        PartWriter(tmp_path, model, precision)
    with pytest.raises(ValueError, match="cannot go into parts by 'test/model'"):
        PartWriter(tmp_path, original.model).write(make_embeddings(model="other/model"))


def test_a_folder_with_other_files_or_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes.txt, which are not Parquet part files"):
        PartWriter(tmp_path, "test/model")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        embedded_ids(tmp_path / "notes.txt")


def test_embedded_ids_of_a_missing_or_empty_folder_are_none(tmp_path):
    assert embedded_ids(tmp_path / "missing") == set() == embedded_ids(tmp_path)
    assert written_by(tmp_path) is None


def test_rejections_are_appended_under_one_header_without_repeats(tmp_path):
    writer = PartWriter(tmp_path, "test/model")
    writer.rejected([Rejected("a.jpg", "truncated"), Rejected("a.jpg", "truncated")])
    PartWriter(tmp_path, "test/model").rejected(
        [Rejected("a.jpg", "truncated"), Rejected("b.png", "empty file")]
    )
    found, header = read_csv(tmp_path / REJECTED_FILE, required=("name", "reason"))
    assert header == ["name", "reason"]
    assert [(row["name"], row["reason"]) for row in found] == [
        ("a.jpg", "truncated"),
        ("b.png", "empty file"),
    ]


# A tiny CLIP runs a batch in milliseconds: the killed run sleeps per batch so the kill lands part-way.
# The CPU's flags are given too, so precision auto chooses as it would on a CPU with or without bf16.
SLOW_EMBED = (
    "import runpy, time; from core.embedding import clip; embed = clip.ClipEmbedder.embed_prepared; "
    "clip.ClipEmbedder.embed_prepared = lambda self, inputs: (time.sleep({seconds}), embed(self, inputs))[1]; "
    "clip.cpu_flags = lambda: frozenset({cpu_flags!r}); "
    "runpy.run_module('core', run_name='__main__')"
)
NATIVE_BF16, NO_BF16 = ("avx512f", "avx512_bf16"), ("avx2",)
IMAGES = 40


@pytest.fixture
def dataset_folder(image_file, tmp_path):
    """40 readable images over 4 classes and test, and two files that cannot be embedded."""
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]
    for index in range(IMAGES):
        split = f"train/c{index % 4}" if index < IMAGES // 2 else "test"
        image_file(f"data/{split}/{index:02d}.png", colour=colours[index % 4], size=(40, 30))
    (tmp_path / "data" / "test" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "data" / "test" / "empty.png").write_bytes(b"")
    return tmp_path / "data"


def embed_command(
    source, out, model, seconds_per_batch=0.0, options=("--precision", "fp32"), cpu_flags=NO_BF16
):
    argv = [
        "embed",
        str(source),
        "--model",
        str(model),
        *options,
        "--batch-size",
        "4",
        "--rows-per-part",
        "4",
        "--out",
        str(out),
    ]
    child = SLOW_EMBED.format(seconds=seconds_per_batch, cpu_flags=set(cpu_flags))
    return [sys.executable, "-c", child, *argv]


def child_env(tmp_path):
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETRIEVAL_LAB_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }


@contextlib.contextmanager
def running_part_way(command, env, out):
    """Runs `command` and yields it once its first part is in `out`; it is killed after the block if still running."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not part_files(out) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, (
            "the run ended before its first part: " + child.stderr.read().decode()
        )
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=60)


def killed_part_way(command, env, out, interruption=signal.SIGKILL):
    """Runs `command` and interrupts it once its first part is in `out`; the ids the parts hold then, and its stderr."""
    with running_part_way(command, env, out) as child:
        child.send_signal(interruption)
        _, err = child.communicate(timeout=60)
    return embedded_ids(out), err.decode()


def run(command, env):
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def test_a_killed_embed_resumes_with_only_the_missing_ids_and_the_vectors_of_a_one_shot_run(
    dataset_folder, tiny_clip_dir, tmp_path
):
    out, env = tmp_path / "vectors", child_env(tmp_path)
    before, _ = killed_part_way(embed_command(dataset_folder, out, tiny_clip_dir, 0.4), env, out)
    assert 0 < len(before) < IMAGES

    parts_before = set(out.glob("part-*.parquet"))
    resumed = subprocess.run(
        embed_command(dataset_folder, out, tiny_clip_dir),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(before)} already there" in resumed.stdout
    computed, from_cache = map(
        int, re.search(r"computed (\d+), from cache (\d+)", resumed.stderr).groups()
    )
    assert computed + from_cache == IMAGES - len(before)
    added = set().union(
        *(embedded_ids_of(part) for part in set(out.glob("part-*.parquet")) - parts_before)
    )
    assert added == {f"{index:02d}.png" for index in range(IMAGES)} - before

    final, dropped = read_embeddings_checked(out)
    assert dropped == [] and len(final.ids) == len(set(final.ids)) == IMAGES
    one_shot = embed_dataset(
        load_dataset(dataset_folder),
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), precision="fp32")),
    )
    assert final.model == one_shot.embeddings.model
    by_id = dict(zip(one_shot.embeddings.ids, one_shot.embeddings.vectors))
    cosines = np.einsum(
        "ij,ij->i", final.vectors, np.stack([by_id[item_id] for item_id in final.ids])
    )
    assert cosines.min() >= 0.9999

    refused, _ = read_csv(out / REJECTED_FILE, required=("name", "reason"))
    assert sorted(row["name"].rsplit("/", 1)[-1] for row in refused) == ["broken.jpg", "empty.png"]
    assert all(row["reason"] for row in refused)


@pytest.mark.parametrize(
    "cpu_flags, interruption, backend",
    [(NATIVE_BF16, signal.SIGKILL, "openvino bf16"), (NO_BF16, signal.SIGINT, "openvino fp32")],
    ids=["bf16-cpu-killed", "cpu-without-bf16-ctrl-c"],
)
def test_an_interrupted_run_with_the_default_options_resumes_in_the_parts_runtime_and_precision(
    dataset_folder, tiny_clip_dir, tmp_path, cpu_flags, interruption, backend
):
    out, env = tmp_path / "vectors", child_env(tmp_path)
    command = embed_command(
        dataset_folder, out, tiny_clip_dir, 0.3, options=(), cpu_flags=cpu_flags
    )
    before, interrupted = killed_part_way(command, env, out, interruption)
    assert 0 < len(before) < IMAGES and f" {backend} cfg:" in written_by(out)[0]
    if interruption == signal.SIGINT:
        assert interrupted.splitlines()[-1] == (
            "interrupted: finished batches are cached and will be reused"
        ), interrupted

    resumed = subprocess.run(
        embed_command(dataset_folder, out, tiny_clip_dir, options=(), cpu_flags=cpu_flags),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"precision: {backend} (auto; the runtime and precision of the parts already in {out})"
        in resumed.stderr.splitlines()
    )
    computed, from_cache = map(
        int, re.search(r"computed (\d+), from cache (\d+)", resumed.stderr).groups()
    )
    assert computed + from_cache == IMAGES - len(before)
    final, _ = read_embeddings_checked(out)
    assert len(final.ids) == len(set(final.ids)) == IMAGES
    assert f" {backend} cfg:" in final.model


def test_a_second_embed_into_a_folder_being_written_is_refused_and_a_killed_runs_lock_blocks_nothing(
    dataset_folder, tiny_clip_dir, tmp_path
):
    out, env = tmp_path / "vectors", child_env(tmp_path)
    with running_part_way(
        embed_command(dataset_folder, out, tiny_clip_dir, 2.0), env, out
    ) as first:
        second = run(embed_command(dataset_folder, out, tiny_clip_dir), env)
        assert first.poll() is None, "the first run ended before the second was refused"
        first.send_signal(signal.SIGKILL)
    assert second.returncode == 2
    assert second.stderr.splitlines()[-1] == (
        f"error: another run is writing {out} (pid {first.pid}); wait for it to end, "
        "or stop it and run this command again to finish what it leaves"
    )
    before = embedded_ids(out)
    assert 0 < len(before) < IMAGES

    resumed = run(embed_command(dataset_folder, out, tiny_clip_dir), env)
    assert resumed.returncode == 0, resumed.stderr
    final, dropped = read_embeddings_checked(out)
    assert dropped == [] and len(final.ids) == len(set(final.ids)) == IMAGES


def test_a_folder_held_by_one_thread_refuses_another_threads_writer_and_nests_in_its_own(tmp_path):
    original = make_embeddings()
    refusals = []

    def other_thread():
        try:
            PartWriter(tmp_path, original.model)
        except ValueError as error:
            refusals.append(str(error))

    with writing(tmp_path, expected=len(original.ids)):
        with PartWriter(tmp_path, original.model) as writer:
            writer.write(original)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert refusals == [
        f"another run is writing {tmp_path} (pid {os.getpid()}); wait for it to end, "
        "or stop it and run this command again to finish what it leaves"
    ]
    assert completion(tmp_path) == Completion(len(original.ids), len(original.ids), True, False)
    PartWriter(tmp_path, original.model).write(original)  # let go: the folder is free again


def test_readers_are_told_a_folder_is_incomplete_while_a_run_writes_it_and_after_it_was_killed(
    dataset_folder, tiny_clip_dir, tmp_path
):
    out, env = tmp_path / "vectors", child_env(tmp_path)
    predict = [sys.executable, "-m", "core", "predict", str(out), "--contamination", "0.3"]
    writing_now = re.compile(
        r"note: vectors is incomplete: (\d+) of (\d+) images embedded, a run is writing it"
    )
    with running_part_way(
        embed_command(dataset_folder, out, tiny_clip_dir, 2.0), env, out
    ) as child:
        during = run([*predict, "--out", str(tmp_path / "during.csv")], env)
        state = completion(out)
        assert child.poll() is None, "the run ended before it was read"
        child.send_signal(signal.SIGKILL)
    # The note comes first, and the command goes on with the rows there are.
    embedded, expected = map(int, writing_now.match(during.stderr).groups())
    assert 0 < embedded < expected == len(load_dataset(dataset_folder).items)
    assert f"{embedded} accepted" in during.stderr
    assert state.being_written and not state.complete

    stopped = run([*predict, "--out", str(tmp_path / "stopped.csv")], env)
    assert re.match(
        r"note: vectors is incomplete: \d+ of \d+ images embedded, its last run stopped before "
        r"the end; run the same embed command to finish it",
        stopped.stderr,
    )

    assert run(embed_command(dataset_folder, out, tiny_clip_dir), env).returncode == 0
    done = run([*predict, "--out", str(tmp_path / "done.csv")], env)
    assert done.returncode == 0 and "incomplete" not in done.stderr
    assert incomplete_note(out) is None and completion(out).complete


def test_a_refused_run_leaves_a_complete_folder_marked_complete(
    dataset_folder, tiny_clip_dir, tmp_path
):
    out, dataset = tmp_path / "vectors", load_dataset(dataset_folder)
    embed_to_parquet(dataset, EmbedConfig(model="baseline"), out)
    with pytest.raises(ValueError, match="holds parts by model"):
        embed_to_parquet(dataset, EmbedConfig(model=str(tiny_clip_dir), precision="fp32"), out)
    assert completion(out).complete and incomplete_note(out) is None


def embedded_ids_of(part):
    return set(pq.read_table(part, columns=["id"]).column("id").to_pylist())


def test_a_rerun_into_the_folder_embeds_only_new_images(dataset_folder, image_file, tmp_path):
    out, config = tmp_path / "baseline-vectors", EmbedConfig(model="baseline", batch_size=8)
    first = embed_to_parquet(load_dataset(dataset_folder), config, out, rows_per_part=16)
    assert (first.written, first.already, first.computed) == (IMAGES, 0, IMAGES)
    assert sorted(row.name.rsplit("/", 1)[-1] for row in first.rejected) == [
        "broken.jpg",
        "empty.png",
    ]
    assert sorted(len(embedded_ids_of(part)) for part in out.glob("part-*.parquet")) == [8, 16, 16]

    image_file("data/test/new.png", colour=(10, 200, 90))
    again = embed_to_parquet(load_dataset(dataset_folder), config, out)
    assert (again.written, again.already, again.computed, again.from_cache) == (1, IMAGES, 1, 0)
    assert embedded_ids(out) == {f"{index:02d}.png" for index in range(IMAGES)} | {"new.png"}
    assert len(read_csv(out / REJECTED_FILE, required=("name",))[0]) == 2


def test_a_resumed_auto_run_keeps_the_parts_precision_and_another_is_refused(
    dataset_folder, tiny_clip_dir, tmp_path
):
    out, dataset = tmp_path / "clip-vectors", load_dataset(dataset_folder)
    first = embed_to_parquet(
        Dataset("first", dataset.items[:8]),
        EmbedConfig(model=str(tiny_clip_dir), precision="bf16"),
        out,
    )
    assert written_by(out) == (first.model, "bf16")

    resumed = embed_to_parquet(
        Dataset("more", dataset.items[:12]),
        EmbedConfig(model=str(tiny_clip_dir), batch_size=4),
        out,
    )
    assert (
        resumed.precision_note
        == f"precision: bf16 (auto; the runtime and precision of the parts already in {out})"
    )
    assert (resumed.model, resumed.already, resumed.written) == (first.model, 8, 4)
    with pytest.raises(ValueError, match=r"in precision bf16, not by .* in precision fp32"):
        embed_to_parquet(dataset, EmbedConfig(model=str(tiny_clip_dir), precision="fp32"), out)
    assert len(embedded_ids(out)) == 12


@pytest.mark.parametrize(
    "runtime, precision, kept",
    [
        ("auto", "auto", True),
        ("openvino", "auto", True),
        ("auto", "parts", True),
        ("openvino", "parts", True),
        ("torch", "auto", False),
        ("auto", "other", False),
    ],
)
def test_a_resumed_run_takes_the_parts_runtime_and_precision_where_the_options_leave_them(
    dataset_folder, tiny_clip_dir, tmp_path, workspace, runtime, precision, kept
):
    out, dataset = tmp_path / "clip-vectors", load_dataset(dataset_folder)
    first = embed_to_parquet(
        Dataset("first", dataset.items[:8]), EmbedConfig(str(tiny_clip_dir)), out
    )
    parts = backend_in(first.model)
    assert parts.runtime == "openvino"
    other = "fp32" if parts.precision == "bf16" else "bf16"
    config = EmbedConfig(
        str(tiny_clip_dir),
        runtime=runtime,
        precision={"parts": parts.precision, "other": other}.get(precision, precision),
    )
    more = Dataset("more", dataset.items[:12])
    if not kept:
        with pytest.raises(
            ValueError, match=r"holds parts by model '.* openvino .*' in precision \w+, not by"
        ):
            embed_to_parquet(more, config, out)
        assert len(embedded_ids(out)) == 8
        return
    resumed = embed_to_parquet(more, config, out)
    assert (resumed.model, resumed.already, resumed.written) == (first.model, 8, 4)
    assert resumed.precision_note.startswith(f"precision: {parts} (")


def test_a_file_name_gets_one_file_in_dataset_order_with_its_precision(
    dataset_folder, tiny_clip_dir, tmp_path
):
    assert (
        is_folder_out(tmp_path / "v")
        and is_folder_out(f"{tmp_path}/v.parquet/")
        and not is_folder_out(tmp_path / "v.parquet")
    )
    dataset = load_dataset(dataset_folder)
    run = embed_to_parquet(
        dataset, EmbedConfig(model=str(tiny_clip_dir), precision="fp32"), tmp_path / "v.parquet"
    )
    assert (
        run.written == IMAGES
        and pq.read_schema(tmp_path / "v.parquet").metadata[PRECISION_METADATA_KEY] == b"fp32"
    )
    assert read_embeddings_checked(tmp_path / "v.parquet")[0].ids.tolist() == [
        item.id for item in dataset.items
    ]


def test_added_rows_become_a_part_once_enough_rows_or_enough_time_has_gathered(
    tmp_path, monkeypatch
):
    from core.io import parts as parts_module

    def rows(start, count):
        ids = np.array([f"i{n}" for n in range(start, start + count)], str)
        return Embeddings(
            ids,
            np.full(count, "test"),
            np.full(count, None, object),
            np.eye(count, 4, dtype=np.float32),
            "m",
        )

    by_rows = PartWriter(tmp_path / "rows", "m", rows_per_part=5)
    by_rows.add(rows(0, 3))
    assert part_files(tmp_path / "rows") == []
    by_rows.add(rows(3, 3))
    assert len(part_files(tmp_path / "rows")) == 1 and embedded_ids(tmp_path / "rows") == {
        f"i{n}" for n in range(6)
    }
    assert by_rows.flush() is None  # nothing gathered since
    with pytest.raises(ValueError, match="embeddings by model 'm' cannot go into parts by 'other'"):
        PartWriter(tmp_path / "other", "other").add(rows(0, 1))

    clock = iter([0.0, 30.0, 61.0, 61.0])  # made, first add, second add (late), the part written
    monkeypatch.setattr(parts_module.time, "monotonic", lambda: next(clock))
    by_time = PartWriter(tmp_path / "time", "m", rows_per_part=1000, seconds_per_part=60.0)
    by_time.add(rows(0, 2))
    assert part_files(tmp_path / "time") == []
    by_time.add(rows(2, 2))
    assert embedded_ids(tmp_path / "time") == {"i0", "i1", "i2", "i3"}
