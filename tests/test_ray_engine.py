"""core.embedding.ray_engine: Ray Data in local mode (2 CPUs) with the tiny CLIP gives the local path's vectors, resumes, refuses bad options."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.embedding.config import EmbedConfig
from core.embedding.ray_engine import EngineConfig, embed_on_ray
from core.embedding.runner import embed_dataset, embed_to_parquet, load_embedder
from core.io.files import read_csv
from core.io.layouts import load_dataset
from core.io.parquet import PRECISION_METADATA_KEY, read_embeddings_checked
from core.io.parts import REJECTED_FILE
from core.records import Dataset

IMAGES = 24
# Past the header check when the dataset is listed: only decoding it in a worker finds it truncated.
BROKEN = "zz-truncated.png"
RAY = EngineConfig(engine="ray", workers=2)
MAIN_SHAPE_HALF = 1500


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, as small as CI allows; the workers import core from this checkout."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1] / "core")]},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory) -> Path:
    """23 seeded noisy colour images over 3 classes and test, and a truncated PNG last among the test images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-data")
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    for index in range(IMAGES - 1):
        folder = root / (f"train/c{index % 3}" if index < 12 else "test")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(colours[index % 3], float) + rng.normal(0, 25, (30, 40, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:02d}.png")
    whole = (root / "test" / "22.png").read_bytes()
    (root / "test" / BROKEN).write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def unlabelled_test_folder(tmp_path_factory) -> Path:
    """The project's main shape, at a size where Ray Data gives a block labelled train rows and unlabelled test rows:
    1,500 labelled train images over 100 classes and 1,500 test images without labels, 8×8 pixels each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-unlabelled")
    rng = np.random.default_rng(1)
    for index in range(2 * MAIN_SHAPE_HALF):
        folder = root / (f"train/c{index % 100}" if index < MAIN_SHAPE_HALF else "test")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    return root


def config_of(model: Path, precision: str = "fp32") -> EmbedConfig:
    return EmbedConfig(model=str(model), precision=precision, batch_size=4)


def test_ray_gives_the_local_vectors_reports_the_bad_file_and_a_second_run_computes_nothing(
    ray_local, dataset_folder, tiny_clip_dir, tmp_path
):
    dataset = load_dataset(dataset_folder)
    config = config_of(tiny_clip_dir)
    seen = []
    out = tmp_path / "vectors"

    run = embed_on_ray(
        dataset, config, out, RAY, progress=lambda done, total, rate: seen.append((done, total))
    )

    local = embed_dataset(dataset, load_embedder(config), batch_size=config.batch_size)
    on_ray, dropped = read_embeddings_checked(out)
    assert not dropped
    assert on_ray.model == local.embeddings.model == run.model
    assert sorted(on_ray.ids) == sorted(local.embeddings.ids) and len(on_ray.ids) == IMAGES - 1
    ray_rows = dict(zip(on_ray.ids, on_ray.vectors))
    cosines = [
        float(ray_rows[item] @ vector)
        for item, vector in zip(local.embeddings.ids, local.embeddings.vectors)
    ]
    assert min(cosines) >= 0.9999
    assert (run.written, run.already, run.computed) == (IMAGES - 1, 0, IMAGES - 1)
    assert [row.name for row in run.rejected] == [BROKEN]
    sidecar, _ = read_csv(out / REJECTED_FILE, required=("name", "reason"))
    assert [row["name"] for row in sidecar] == [BROKEN] and "truncated" in sidecar[0]["reason"]
    # the first batch, then the actors' batches as they came
    assert seen[-1] == (IMAGES, IMAGES) and len(seen) > 2

    parts = sorted(out.glob("part-*.parquet"))
    again = embed_on_ray(dataset, config, out, RAY)
    assert (again.computed, again.written, again.already) == (0, 0, IMAGES - 1)
    assert sorted(out.glob("part-*.parquet")) == parts
    assert len(read_csv(out / REJECTED_FILE, required=("name", "reason"))[0]) == 1


def test_the_command_line_embeds_on_ray_settling_precision_auto_once_for_every_part(
    ray_local, dataset_folder, tiny_clip_dir, tmp_path, capsys
):
    from core.__main__ import main

    out = tmp_path / "cli"
    argv = [
        "embed",
        str(dataset_folder),
        "--model",
        str(tiny_clip_dir),
        "--precision",
        "auto",
        "--batch-size",
        "4",
    ]
    assert main([*argv, "--engine", "ray", "--workers", "1", "--out", str(out)]) == 0
    assert len(read_embeddings_checked(out)[0].ids) == IMAGES - 1
    parts = list(out.glob("part-*.parquet"))
    precisions = {pq.read_schema(part).metadata[PRECISION_METADATA_KEY].decode() for part in parts}
    # the driver's first batch, and the actor's part
    assert len(parts) >= 2 and len(precisions) == 1
    told = capsys.readouterr()
    # "precision: [runtime ]bf16 (why)"
    note = next(line for line in told.err.splitlines() if line.startswith("precision: "))
    assert precisions.pop() in note.split("(")[0] and f"wrote {IMAGES - 1} vectors" in told.out
    assert main([*argv, "--engine", "ray", "--out", str(tmp_path / "one.parquet")]) == 2
    assert main([*argv, "--address", "auto", "--out", str(tmp_path / "local")]) == 2
    assert (
        "one.parquet names a file" in (err := capsys.readouterr().err)
        and "is an option of engine 'ray'" in err
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"engine": "spark"}, "engine must be one of local, ray, got 'spark'"),
        (
            {"engine": "ray", "address": "http://head"},
            "address must be auto, HOST:PORT or ray://HOST:PORT, got 'http://head'",
        ),
        ({"engine": "ray", "workers": 0}, "workers must be an integer >= 1"),
        ({"engine": "ray", "cpus_per_worker": 0.0}, "cpus_per_worker must be > 0, got 0.0"),
        ({"engine": "ray", "gpus_per_worker": -1.0}, "gpus_per_worker must be >= 0, got -1.0"),
        ({"workers": 2}, "workers is an option of engine 'ray'"),
    ],
)
def test_bad_engine_options_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**options)


def test_cluster_addresses_are_accepted():
    for address in ("auto", "10.0.0.1:6379", "ray://head.example:10001", None):
        assert EngineConfig(engine="ray", address=address).address == address


def test_ray_refuses_a_file_name_for_its_output(dataset_folder, tiny_clip_dir, tmp_path):
    with pytest.raises(ValueError, match=r"folder of part files; .*vectors.parquet names a file"):
        embed_on_ray(
            load_dataset(dataset_folder),
            config_of(tiny_clip_dir),
            tmp_path / "vectors.parquet",
            RAY,
        )


def test_a_worker_with_another_model_stops_the_run_in_one_line_keeping_what_was_written(
    ray_local, dataset_folder, tmp_path
):
    from core.embedding.ray_engine import _embed_rest, _Progress
    from core.io.parts import PartWriter

    items = load_dataset(dataset_folder).items[:4]
    parts = PartWriter(tmp_path / "mixed", "the run's model", rows_per_part=100)
    with pytest.raises(
        ValueError,
        match=r"^the Ray run stopped: .*this worker's model is 'baseline.*', the run's is \"the run's model\"",
    ):
        _embed_rest(
            items,
            EmbedConfig(model="baseline", batch_size=2),
            "the run's model",
            RAY,
            RAY.workers,
            parts,
            _Progress(None, 4, 0),
        )
    assert not list((tmp_path / "mixed").glob("part-*.parquet"))


def test_thousands_of_images_with_an_unlabelled_test_split_embed_on_ray_like_the_local_path(
    ray_local, unlabelled_test_folder, tmp_path
):
    dataset = load_dataset(unlabelled_test_folder)
    config = EmbedConfig(model="baseline")
    out = tmp_path / "vectors"

    run = embed_on_ray(dataset, config, out, RAY)

    on_ray, dropped = read_embeddings_checked(out)
    local = embed_dataset(dataset, load_embedder(config))
    assert not dropped and run.written == len(on_ray.ids) == 2 * MAIN_SHAPE_HALF
    rows = dict(zip(on_ray.ids, zip(on_ray.labels, on_ray.vectors)))
    assert [rows[item][0] for item in local.embeddings.ids] == list(local.embeddings.labels)
    cosines = [
        float(rows[item][1] @ vector)
        for item, vector in zip(local.embeddings.ids, local.embeddings.vectors)
    ]
    assert min(cosines) >= 0.9999


def test_a_failed_ray_run_says_the_workers_own_error_not_ray_datas_retry_advice(ray_local):
    import ray.data
    import ray.exceptions

    from core.embedding.ray_engine import why_stopped

    def merge(batch):
        try:
            pa.unify_schemas(
                [pa.schema([("label", pa.string())]), pa.schema([("label", pa.float64())])]
            )
        except pa.ArrowTypeError as error:
            raise RuntimeError("the block could not be built") from error

    with pytest.raises(ray.exceptions.RayError) as stopped:
        ray.data.range(4).map_batches(merge).materialize()

    assert "To change retry attempts" in str(stopped.value)  # what the user was shown
    assert why_stopped(stopped.value) == (
        "ArrowTypeError: Unable to merge: Field label has incompatible types: string vs double"
    )


@contextmanager
def deadline(seconds: int):
    """Fail, rather than wait for ever, when the block takes longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"cpus_per_worker": 99.0},
            r"^no node of the Ray cluster can hold an actor of 99 CPUs \(1 node: 2 CPUs, 0 GPUs\)",
        ),
        (
            {"gpus_per_worker": 1.0},
            r"^no node .* an actor of 1 CPU and 1 GPU \(1 node: 2 CPUs, 0 GPUs\)",
        ),
        (
            {"workers": 3},
            r"^--workers 3 actors of 1 CPU each do not fit the Ray cluster, which holds 2 "
            r"\(1 node: 2 CPUs, 0 GPUs\): give --workers 2 or fewer$",
        ),
    ],
)
def test_resources_the_cluster_lacks_are_refused_in_one_line_before_the_model_loads(
    ray_local, dataset_folder, tmp_path, options, match
):
    out = tmp_path / "vectors"
    with deadline(120), pytest.raises(ValueError, match=match):
        embed_on_ray(
            load_dataset(dataset_folder),
            EmbedConfig(model="baseline", batch_size=4),
            out,
            EngineConfig(engine="ray", **options),
        )
    assert not list(out.glob("part-*"))  # refused before the first batch


def test_a_folder_of_another_models_parts_is_refused_as_the_local_engine_refuses_it(
    ray_local, dataset_folder, tiny_clip_dir, tmp_path
):
    readable = load_dataset(dataset_folder).items[:-1]  # all but the truncated file, last
    dataset = Dataset("readable", readable)
    out = tmp_path / "vectors"
    embed_to_parquet(dataset, EmbedConfig(model="baseline"), out)  # every item, by the baseline
    parts = sorted(out.iterdir())

    with pytest.raises(ValueError) as local:
        embed_to_parquet(dataset, config_of(tiny_clip_dir), out)
    with pytest.raises(ValueError) as on_ray:
        embed_on_ray(dataset, config_of(tiny_clip_dir), out, RAY)

    assert readable[-1].id != BROKEN and str(on_ray.value) == str(local.value)
    assert "holds parts by model 'baseline" in str(on_ray.value)
    assert sorted(out.iterdir()) == parts


def test_an_error_after_part_of_a_progress_bar_starts_a_line_of_its_own(
    monkeypatch, capfd, dataset_folder, tmp_path
):
    from core.__main__ import main

    def stops_half_way(dataset, config, out, engine, progress, rows_per_part):
        progress(4, len(dataset.items), 10.0)
        raise ValueError("the Ray run stopped: its node was lost")

    monkeypatch.setattr("core.embedding.ray_engine.embed_on_ray", stops_half_way)
    argv = ["embed", str(dataset_folder), "--model", "baseline", "--engine", "ray"]
    assert main([*argv, "--out", str(tmp_path / "vectors")]) == 2
    assert "error: the Ray run stopped: its node was lost" in capfd.readouterr().err.splitlines()
