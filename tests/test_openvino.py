"""The OpenVINO runtime of the image tower: converted once per model, checked against torch fp32 on the first batch, and every fallback."""

import re
from pathlib import Path

import numpy as np
import pytest

from core.embedding import clip, openvino_tower
from core.embedding.cache import EmbeddingCache
from core.embedding.config import EmbedConfig
from core.embedding.runner import embed_dataset, load_embedder
from core.paths import workspace_home
from core.records import TRAIN, Dataset, Item

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
def photos(image_file):
    paths = [
        image_file(f"photos/train/c{index}/{index}.png", colour=colour, size=(40, 30))
        for index, colour in enumerate(COLOURS)
    ]
    return Dataset("photos", [Item(path.name, TRAIN, "x", path) for path in paths])


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(clip, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def test_auto_runs_openvino_on_the_cpu_when_its_first_batch_agrees_with_torch_fp32(
    tiny_clip_dir, photos, workspace
):
    embedder = load_embedder(EmbedConfig(model=str(tiny_clip_dir), device="cpu"))
    # torch fp32 until the check
    assert embedder.awaits_precision_check and embedder.runtime == "torch"

    run = embed_dataset(photos, embedder, EmbeddingCache(workspace / "cache.sqlite"))

    assert embedder.runtime == "openvino" and " openvino " in run.embeddings.model
    assert re.fullmatch(
        r"precision: openvino (bf16|fp32) \(auto; first batch agrees with fp32: median cosine .*\)",
        embedder.precision_note,
    )
    exact = embed_dataset(
        photos,
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch", precision="fp32")),
    ).embeddings.vectors
    assert np.median(np.sum(run.embeddings.vectors * exact, axis=1)) >= clip.MIN_MEDIAN_COSINE
    assert list((workspace / clip.OPENVINO_FOLDER).glob("*.xml")), (
        "the converted tower is kept under the workspace home"
    )


def test_the_converted_tower_is_kept_and_a_second_model_load_does_not_convert_again(
    tiny_clip_dir, photos, workspace, monkeypatch
):
    embed_dataset(photos, load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="openvino")))
    monkeypatch.setattr(openvino_tower, "_converted", lambda *args: pytest.fail("converted twice"))
    again = load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="openvino"))
    embed_dataset(photos, again)
    assert again.runtime == "openvino"


def test_a_model_openvino_cannot_convert_falls_back_to_the_next_candidate_and_says_why(
    native_bf16, tiny_clip_dir, photos, workspace, monkeypatch
):
    def cannot(*args):
        raise RuntimeError("unsupported operation aten::something\nmore detail")

    monkeypatch.setattr(openvino_tower, "_converted", cannot)
    embedder = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    embed_dataset(photos, embedder)
    assert embedder.backend == clip.Backend("torch", "bf16")
    note = embedder.precision_note
    assert (
        "openvino bf16 cannot run it (RuntimeError: unsupported operation aten::something)" in note
    )
    assert "first batch agrees with fp32" in note and "more detail" not in note


def test_when_no_candidate_agrees_the_run_is_exact_torch_fp32_and_every_refusal_is_said(
    native_bf16, tiny_clip_dir, photos, workspace, monkeypatch
):
    monkeypatch.setattr(clip, "MIN_MEDIAN_COSINE", 1.5)  # no batch can reach it
    embedder = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    run = embed_dataset(photos, embedder)
    assert embedder.backend == clip.TORCH_FP32 and run.embeddings.model == embedder.identity
    note = embedder.precision_note
    assert note.startswith(
        "precision: fp32 (auto; openvino bf16 refused, the first batch disagrees with fp32: median cosine "
    )
    assert "; bf16 refused, the first batch disagrees with fp32" in note
    exact = embed_dataset(
        photos,
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch", precision="fp32")),
    )
    np.testing.assert_allclose(run.embeddings.vectors, exact.embeddings.vectors, atol=1e-6)


def test_a_rerun_settles_from_the_cache_without_converting_or_running_the_model(
    tiny_clip_dir, photos, workspace, monkeypatch
):
    cache = EmbeddingCache(workspace / "cache.sqlite")
    first = embed_dataset(photos, load_embedder(EmbedConfig(model=str(tiny_clip_dir))), cache)
    again = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    monkeypatch.setattr(
        again, "embed_prepared", lambda inputs: pytest.fail("the model ran on cached data")
    )
    monkeypatch.setattr(
        clip, "OpenVinoTower", lambda *args: pytest.fail("converted or compiled for cached data")
    )
    run = embed_dataset(photos, again, cache)
    assert again.runtime == "openvino" and (run.computed, run.from_cache) == (0, len(COLOURS))
    np.testing.assert_array_equal(run.embeddings.vectors, first.embeddings.vectors)


def test_runtime_openvino_is_refused_off_the_cpu_and_without_the_package(
    tiny_clip_dir, monkeypatch
):
    with pytest.raises(
        ValueError, match="runtime 'openvino' runs on the CPU, not on device 'cuda'"
    ):
        EmbedConfig(runtime="openvino", device="cuda")
    with pytest.raises(
        ValueError, match=r"runtime must be one of auto, torch, openvino, got 'onnx'"
    ):
        EmbedConfig(runtime="onnx")
    monkeypatch.setattr(clip, "openvino_available", lambda: False)
    with pytest.raises(
        ValueError,
        match=re.escape("runtime 'openvino' needs the openvino package (pip install openvino)"),
    ):
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="openvino"))
    assert not any(
        " openvino " in identity
        for identity in load_embedder(EmbedConfig(model=str(tiny_clip_dir))).check_identities
    )


def test_a_worker_given_the_settled_backend_computes_with_it_and_names_it_as_the_run_does(
    tiny_clip_dir, photos, workspace
):
    checked = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    run = embed_dataset(photos, checked)
    assert (
        clip.backend_in(run.embeddings.model)
        == checked.backend
        == clip.Backend("openvino", checked.precision)
    )

    worker = load_embedder(
        EmbedConfig(model=str(tiny_clip_dir)), settled=clip.backend_in(run.embeddings.model)
    )
    assert not worker.awaits_precision_check and worker.identity == run.embeddings.model
    np.testing.assert_allclose(
        embed_dataset(photos, worker).embeddings.vectors, run.embeddings.vectors, atol=1e-6
    )
    assert clip.backend_in("baseline-pixels-12") is None
    assert clip.backend_in("my model@local fp32 cfg:0123456789ab") == clip.TORCH_FP32


def test_a_worker_refuses_a_settled_backend_its_device_cannot_run(tiny_clip_dir, monkeypatch):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "settled on fp16, which this worker's device (cpu) cannot run; give --runtime torch"
        ),
    ):
        load_embedder(EmbedConfig(model=str(tiny_clip_dir)), settled=clip.Backend("torch", "fp16"))
    monkeypatch.setattr(clip, "_pick_device", lambda requested: "cuda")
    with pytest.raises(
        ValueError,
        match=re.escape("settled on openvino bf16, which this worker's device (cuda) cannot run"),
    ):
        load_embedder(
            EmbedConfig(model=str(tiny_clip_dir)), settled=clip.Backend("openvino", "bf16")
        )


def converted_tower(embedder) -> Path:
    """Where `embedder`'s converted image tower is kept under the workspace home."""
    key = clip._file_name(embedder.identity_of(clip.TORCH_FP32))
    return workspace_home() / clip.OPENVINO_FOLDER / f"{key}.xml"


def other_checkpoint(tiny_clip_dir, folder: Path, projection_dim: int) -> Path:
    """A checkpoint of the tiny CLIP's kind with other random weights and `projection_dim`-d vectors, saved in `folder`."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    config = CLIPModel.from_pretrained(tiny_clip_dir).config
    config.projection_dim = projection_dim
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor.from_pretrained(tiny_clip_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "projection_dim, problem",
    [
        (8, "has another output size (8, not 16)"),
        (16, "computes other vectors than this model (cosine "),
    ],
    ids=["another-output-size", "other-weights"],
)
def test_a_kept_tower_of_another_checkpoint_is_converted_again_and_said_so(
    tiny_clip_dir, photos, workspace, tmp_path, recwarn, projection_dim, problem
):
    other = load_embedder(
        EmbedConfig(
            model=str(other_checkpoint(tiny_clip_dir, tmp_path / "other", projection_dim)),
            runtime="openvino",
        )
    )
    embed_dataset(photos, other)
    assert other.runtime == "openvino"
    settled = clip.Backend("openvino", "fp32")
    embedder = load_embedder(EmbedConfig(model=str(tiny_clip_dir)), settled=settled)
    # This model's key now holds the other checkpoint's tower, as when a folder's checkpoint is replaced.
    for suffix in (".xml", ".bin"):
        converted_tower(embedder).with_suffix(suffix).write_bytes(
            converted_tower(other).with_suffix(suffix).read_bytes()
        )
    recwarn.clear()

    run = embed_dataset(photos, embedder)

    notes = [str(warning.message) for warning in recwarn]
    prefix = f"the converted OpenVINO copy of this model's image tower {problem}"
    assert len(notes) == 1 and notes[0].startswith(prefix), notes
    assert notes[0].endswith("; converting it again")
    exact = embed_dataset(
        photos,
        load_embedder(EmbedConfig(model=str(tiny_clip_dir), runtime="torch", precision="fp32")),
    ).embeddings.vectors
    assert np.min(np.sum(run.embeddings.vectors * exact, axis=1)) >= clip.MIN_MEDIAN_COSINE


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scrambled(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


@pytest.mark.parametrize(
    "suffix, damage, problem",
    [
        (".xml", truncated, "was unreadable"),
        (".bin", truncated, "was unreadable"),
        (".bin", scrambled, "was unreadable"),
    ],
    ids=["truncated-xml", "truncated-bin", "garbage-bin"],
)
def test_a_damaged_converted_tower_is_converted_again_with_one_plain_line(
    tiny_clip_dir, photos, workspace, recwarn, suffix, damage, problem
):
    first = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    embed_dataset(photos, first)
    assert first.runtime == "openvino"
    damage(converted_tower(first).with_suffix(suffix))
    recwarn.clear()

    again = load_embedder(EmbedConfig(model=str(tiny_clip_dir)))
    embed_dataset(photos, again)

    notes = [str(warning.message) for warning in recwarn]
    assert len(notes) == 1 and notes[0].startswith(
        f"the converted OpenVINO copy of this model's image tower {problem}"
    )
    assert notes[0].endswith("; converting it again") and "core.cpp" not in notes[0]
    assert again.runtime == "openvino" and "cannot run it" not in again.precision_note
