"""precision="auto": how it resolves, its check on the first batch against fp32, the fallback, and where it shows."""

import os
import re

import numpy as np
import pytest

from core.__main__ import main
from core.embedding import clip
from core.embedding.cache import EmbeddingCache
from core.embedding.clip import PrecisionCheck, cpu_flags, resolve_precision
from core.embedding.config import EmbedConfig
from core.embedding.runner import embed_dataset, load_embedder
from core.io.files import file_digest
from core.records import TRAIN, Dataset, Item

NATIVE_BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
# Far apart colours: each image's nearest neighbours are clear, as a real dataset's mostly are.
COLOURS = [
    (220, 30, 30),
    (30, 220, 30),
    (30, 30, 220),
    (220, 220, 30),
    (30, 220, 220),
    (220, 30, 220),
    (128, 128, 128),
    (20, 20, 20),
]


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(clip, "cpu_flags", lambda: NATIVE_BF16)


@pytest.fixture
def photos(image_file):
    paths = [
        image_file(f"photos/train/c{index}/{index}.png", colour=colour, size=(40, 30))
        for index, colour in enumerate(COLOURS)
    ]
    return Dataset("photos", [Item(path.name, TRAIN, "x", path) for path in paths])


def auto_embedder(tiny_clip_dir):
    """Precision "auto" on torch: tests/test_openvino.py covers the OpenVINO runtime that runtime "auto" may add."""
    return load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch"))


@pytest.mark.parametrize(
    "flags, requested, device, expected",
    [
        ({"avx512f", "avx512_bf16"}, "auto", "cpu", "bf16"),
        ({"amx_tile", "amx_bf16"}, "auto", "cpu", "bf16"),
        ({"avx512f", "avx512_vnni"}, "auto", "cpu", "fp32"),
        ({"avx512_bf16"}, "auto", "mps", "fp32"),
        (set(), "bf16", "cpu", "bf16"),
        ({"avx512_bf16"}, "fp32", "cpu", "fp32"),
    ],
)
def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(
    monkeypatch, flags, requested, device, expected
):
    monkeypatch.setattr(clip, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision(requested, device) == expected


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch, supported, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    assert resolve_precision("auto", "cuda") == expected


def test_cpu_flags_are_read_from_the_flags_lines_and_none_without_the_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\nbugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu amx_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_the_check_measures_cosine_and_shared_neighbours_and_names_each_shortfall():
    # points along an arc: neighbours are the adjacent angles
    angles = np.radians(np.arange(8) * 10.0)
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    same = PrecisionCheck.of(vectors, vectors)
    assert (
        same.median_cosine == pytest.approx(1.0)
        and same.neighbour_agreement == 1.0
        and same.shortfalls == []
    )

    # Swapping the coordinates moves every vector far from itself.
    shuffled = PrecisionCheck.of(vectors, np.roll(vectors, 1, axis=1))
    assert shuffled.median_cosine < clip.MIN_MEDIAN_COSINE
    assert shuffled.shortfalls[0].startswith("median cosine ") and shuffled.shortfalls[0].endswith(
        f"< {clip.MIN_MEDIAN_COSINE}"
    )

    near = vectors.copy()
    near[[0, 7]] = near[
        [7, 0]
    ]  # the two ends trade vectors: six of eight stay put, but neighbours move
    traded = PrecisionCheck.of(vectors, near)
    assert traded.median_cosine == pytest.approx(1.0)
    assert traded.neighbour_agreement == pytest.approx(0.8)
    assert traded.shortfalls == [
        f"top-{clip.NEIGHBOURS_COMPARED} agreement {traded.neighbour_agreement:.2f} < {clip.MIN_NEIGHBOUR_AGREEMENT}"
    ]


def test_below_six_images_only_the_cosine_is_checked():
    vectors = np.eye(5, dtype=np.float32)
    check = PrecisionCheck.of(vectors, vectors)
    assert check.neighbour_agreement is None and check.shortfalls == []
    assert "top-5 agreement not measured with 5 images" in check.summary()


def test_auto_keeps_bf16_when_the_first_batch_agrees_and_says_so_in_the_identity(
    native_bf16, tiny_clip_dir, photos, tmp_path
):
    embedder = auto_embedder(tiny_clip_dir)
    assert embedder.awaits_precision_check and " fp32 " in embedder.identity  # fp32 until the check

    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    run = embed_dataset(photos, embedder, cache)

    check = embedder.precision_check
    assert check.images == len(COLOURS) and check.shortfalls == []
    assert (
        embedder.precision == "bf16"
        and " bf16 " in embedder.identity
        and "auto" not in embedder.identity
    )
    assert run.embeddings.model == embedder.identity and run.computed == len(COLOURS)
    assert (
        embedder.precision_note
        == f"precision: bf16 (auto; first batch agrees with fp32: {check.summary()})"
    )
    assert re.fullmatch(
        r"median cosine 0\.99\d\d|median cosine 1\.0000", check.summary().split(",")[0]
    )
    np.testing.assert_allclose(
        run.embeddings.vectors,
        embedder.embed_images(list(map(load_photo, photos.items))),
        atol=1e-6,
    )
    keys = {file_digest(item.path) for item in photos.items}
    assert set(cache.get_many(embedder.identity, keys)) == keys
    with pytest.raises(RuntimeError, match=re.escape("a first batch settles precision once")):
        embedder.settle_precision({}, np.zeros((1, 3, 32, 32), np.float32))


def test_auto_falls_back_to_exact_fp32_when_the_check_fails_and_keeps_its_cache_rows_apart(
    native_bf16, tiny_clip_dir, photos, tmp_path, monkeypatch
):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    agreeing = auto_embedder(tiny_clip_dir)
    embed_dataset(photos, agreeing, cache)
    assert agreeing.precision == "bf16"

    monkeypatch.setattr(clip, "MIN_MEDIAN_COSINE", 1.5)  # no batch can reach it
    refused = auto_embedder(tiny_clip_dir)
    run = embed_dataset(photos, refused, cache)

    assert (
        refused.precision == "fp32"
        and " fp32 " in refused.identity
        and run.embeddings.model == refused.identity
    )
    assert refused.precision_note.startswith(
        "precision: fp32 (auto; bf16 refused, the first batch disagrees with fp32: median cosine "
    )
    assert "< 1.5" in refused.precision_note
    # The first run's check cached both precisions' vectors: this run settles from the cache and reads
    # the fp32 rows it computed, never the bf16 ones (the vectors equal a fresh fp32 run's, below).
    assert (run.computed, run.from_cache) == (0, len(COLOURS))

    chosen_fp32 = load_embedder(EmbedConfig(model=str(tiny_clip_dir), precision="fp32"))
    again = embed_dataset(photos, chosen_fp32, cache)
    assert chosen_fp32.identity == refused.identity and (again.computed, again.from_cache) == (
        0,
        len(COLOURS),
    )
    # The fp32 weights came back exactly: the fallback's vectors are fp32's, not bf16's widened.
    fresh = embed_dataset(photos, chosen_fp32, None)
    np.testing.assert_allclose(run.embeddings.vectors, fresh.embeddings.vectors, atol=1e-6)
    assert (
        np.abs(
            run.embeddings.vectors - embed_dataset(photos, agreeing, None).embeddings.vectors
        ).max()
        > 1e-4
    )


def test_without_native_bf16_auto_is_fp32_and_runs_no_check(monkeypatch, tiny_clip_dir, photos):
    monkeypatch.setattr(clip, "cpu_flags", lambda: frozenset({"avx2"}))
    embedder = auto_embedder(tiny_clip_dir)
    embed_dataset(photos, embedder)
    assert (
        not embedder.awaits_precision_check
        and embedder.precision_check is None
        and embedder.precision == "fp32"
    )
    assert embedder.precision_note.startswith("precision: fp32 (auto; bf16 is not native here")
    assert load_embedder(EmbedConfig(model="baseline")).precision_note is None


def test_a_first_batch_that_does_not_decode_leaves_auto_unsettled_and_the_run_fp32(
    native_bf16, tiny_clip_dir, photos, tmp_path
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    dataset = Dataset("photos", [Item("broken.png", TRAIN, "x", broken), *photos.items])
    embedder = auto_embedder(tiny_clip_dir)
    run = embed_dataset(dataset, embedder, batch_size=1)
    assert (
        embedder.awaits_precision_check
        and embedder.precision == "fp32"
        and " fp32 " in run.embeddings.model
    )
    assert [rejected.name for rejected in run.rejected] == ["broken.png"] and len(
        run.embeddings.ids
    ) == len(COLOURS)


def test_the_cli_says_which_precision_it_used_and_what_the_check_found(
    native_bf16, tiny_clip_dir, photos, tmp_path, workspace, capsys
):
    folder = photos.items[0].path.parents[2]
    assert (
        main(
            [
                "embed",
                str(folder),
                "--model",
                str(tiny_clip_dir),
                "--runtime",
                "torch",
                "--out",
                str(tmp_path / "e.parquet"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert re.search(
        r"^precision: bf16 \(auto; first batch agrees with fp32: median cosine [01]\.\d{4}, top-5 agreement [01]\.\d\d\)$",
        captured.err,
        re.M,
    )
    assert " bf16 cfg:" in captured.out


def load_photo(item):
    from core.io.images import load_image

    return load_image(item.path)


def test_a_second_auto_run_of_the_same_data_settles_from_the_cache_without_the_model(
    native_bf16, tiny_clip_dir, photos, tmp_path, monkeypatch
):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first = embed_dataset(photos, auto_embedder(tiny_clip_dir), cache)
    again = auto_embedder(tiny_clip_dir)
    monkeypatch.setattr(
        again, "embed_prepared", lambda inputs: pytest.fail("the model ran on cached data")
    )
    run = embed_dataset(photos, again, cache)
    assert again.precision == "bf16" and again.precision_check is not None
    assert (run.computed, run.from_cache) == (0, len(COLOURS))
    np.testing.assert_array_equal(run.embeddings.vectors, first.embeddings.vectors)


@pytest.mark.parametrize("bf16_supported, candidate", [(True, "bf16"), (False, "fp16")])
def test_on_a_cuda_gpu_auto_tries_torch_in_half_precision_and_never_openvino(
    monkeypatch, bf16_supported, candidate
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_supported)
    candidates, fallback, reason = clip._plan(EmbedConfig(), "cuda")
    assert candidates == [clip.Backend("torch", candidate)] and fallback == clip.TORCH_FP32
    assert reason == f"auto; {candidate} once a first batch agrees with fp32"


def test_fp16_and_openvino_are_refused_where_they_cannot_run():
    with pytest.raises(
        ValueError, match="precision 'fp16' runs on a CUDA GPU, not on device 'cpu'"
    ):
        EmbedConfig(precision="fp16", device="cpu")
    with pytest.raises(
        ValueError, match="precision 'fp16' runs on a CUDA GPU, and device auto chose 'cpu'"
    ):
        clip._plan(EmbedConfig(precision="fp16"), "cpu")
    with pytest.raises(
        ValueError, match="runtime 'openvino' runs on the CPU, and device auto chose 'cuda'"
    ):
        clip._plan(EmbedConfig(runtime="openvino"), "cuda")


def test_decoding_keeps_two_threads_beside_a_cpu_model_and_every_core_beside_a_gpu_model(
    tiny_clip_dir, monkeypatch
):
    from core.embedding.runner import decode_threads

    embedder = load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch"))
    assert embedder.device == "cpu" and decode_threads(embedder) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setattr(embedder, "device", "cuda")
    assert decode_threads(embedder) == 12
    assert decode_threads(load_embedder(EmbedConfig(model="baseline"))) == 2


def test_a_gpu_batch_follows_its_free_memory_within_bounds_and_the_cpu_keeps_sixteen(tiny_clip_dir):
    from core.embedding.config import CPU_BATCH_SIZE, MAX_GPU_BATCH_SIZE

    megabyte = 2**20
    assert clip.gpu_batch_size(8 * 1024 * megabyte, 4 * megabyte) == MAX_GPU_BATCH_SIZE
    # a quarter of 8 GB in 64 MB images
    assert clip.gpu_batch_size(8 * 1024 * megabyte, 64 * megabyte) == 32
    assert clip.gpu_batch_size(100 * megabyte, 64 * megabyte) == CPU_BATCH_SIZE
    assert EmbedConfig().batch_size is None
    assert (
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch")).default_batch_size()
        == CPU_BATCH_SIZE
        == 16
    )
    assert load_embedder(EmbedConfig(model="baseline")).default_batch_size() == CPU_BATCH_SIZE
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        EmbedConfig(batch_size=0)
