import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, CLIPConfig, CLIPModel, CLIPProcessor
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

import core.embedding.clip
from core.embedding.baseline import BaselineEmbedder
from core.embedding.cache import EmbeddingCache
from core.embedding.clip import FastClipPreprocessing
from core.embedding.config import BASELINE_MODEL, KNOWN_MODELS, EmbedConfig, list_models
from core.embedding.embedder import PreparingEmbedder
from core.embedding.hub import ModelUnavailableError
from core.embedding.runner import EmbeddingStream, embed_dataset, embed_texts_cached, load_embedder
from core.io.images import load_image
from core.records import TEST, TRAIN, Dataset, Item

RED, BLUE = (220, 40, 40), (40, 60, 220)
TEXTS = [
    "a photo of a cat",
    "photo",
    "a " * 60 + "cat",
]  # the last one is longer than the model's 32 tokens


class CountingEmbedder:
    """Wraps an embedder and records how many images or texts each model call received."""

    def __init__(self, inner):
        self.inner = inner
        self.identity, self.dim = inner.identity, inner.dim
        self.supports_text, self.draft_size = inner.supports_text, inner.draft_size
        self.device, self.precision = inner.device, inner.precision
        self.precision_note = inner.precision_note
        self.default_batch_size, self.use_threads = inner.default_batch_size, inner.use_threads
        # Every call goes through embed_images, counted: no first-batch precision check of its own.
        self.awaits_precision_check = False
        self.image_calls, self.text_calls = [], []

    def embed_images(self, images):
        self.image_calls.append(len(images))
        return self.inner.embed_images(images)

    def embed_texts(self, texts):
        self.text_calls.append(len(texts))
        return self.inner.embed_texts(texts)


def dataset_of(paths, split=TRAIN, label="x") -> Dataset:
    return Dataset("test", [Item(path.name, split, label, path) for path in paths])


def coloured_images(image_file, count, colour=RED, suffix="png"):
    return [
        image_file(f"images/{colour[0]}-{index}.{suffix}", colour=colour, size=(40, 30))
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return load_embedder(EmbedConfig(model=str(tiny_clip_dir), precision="fp32"))


def transformers_reference(tiny_clip_dir, images, texts):
    """What transformers itself computes for the checkpoint, normalised, with no code of ours."""
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.inference_mode():
        image_output = model.get_image_features(**processor(images=images, return_tensors="pt"))
        text_output = model.get_text_features(
            **processor(text=texts, padding=True, truncation=True, return_tensors="pt")
        )
    vectors = []
    for output in (image_output, text_output):
        features = output if isinstance(output, torch.Tensor) else output.pooler_output
        vectors.append(torch.nn.functional.normalize(features, dim=-1).numpy())
    return vectors


def test_clip_vectors_equal_transformers_own_features(tiny_clip, tiny_clip_dir, image_file):
    images = [
        load_image(path)
        for path in coloured_images(image_file, 2) + coloured_images(image_file, 1, BLUE)
    ]
    images.append(Image.new("RGB", (17, 61), (0, 200, 0)))  # tall and small: resized and cropped
    expected_images, expected_texts = transformers_reference(tiny_clip_dir, images, TEXTS)

    np.testing.assert_allclose(tiny_clip.embed_images(images), expected_images, atol=1e-5)
    np.testing.assert_allclose(tiny_clip.embed_texts(TEXTS), expected_texts, atol=1e-5)
    assert tiny_clip.embed_images(images).dtype == np.float32
    assert tiny_clip.dim == 16 and tiny_clip.supports_text
    assert tiny_clip.embed_images([]).shape == tiny_clip.embed_texts([]).shape == (0, 16)


def test_bf16_agrees_with_fp32(tiny_clip, tiny_clip_dir, image_file):
    half = load_embedder(EmbedConfig(model=str(tiny_clip_dir), precision="bf16"))
    images = [
        load_image(path)
        for path in coloured_images(image_file, 3) + coloured_images(image_file, 3, BLUE)
    ]
    for full_vectors, half_vectors in [
        (tiny_clip.embed_images(images), half.embed_images(images)),
        (tiny_clip.embed_texts(TEXTS), half.embed_texts(TEXTS)),
    ]:
        assert half_vectors.dtype == np.float32
        assert np.all(np.sum(full_vectors * half_vectors, axis=1) > 0.99)
    assert half.identity != tiny_clip.identity and "bf16" in half.identity


def test_identity_names_the_model_and_tells_different_weights_apart(
    tiny_clip, tiny_clip_dir, tmp_path
):
    assert tiny_clip.identity.startswith("tiny-clip@local fp32 cfg:")
    assert load_embedder(EmbedConfig(model=str(tiny_clip_dir))).identity == tiny_clip.identity

    # Same folder name, same config, different weights: a fine-tune saved elsewhere.
    retuned = tmp_path / "elsewhere" / tiny_clip_dir.name
    shutil.copytree(tiny_clip_dir, retuned)
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        model.visual_projection.weight.add_(0.01)
    model.save_pretrained(retuned)
    assert load_embedder(EmbedConfig(model=str(retuned))).identity != tiny_clip.identity


def test_a_model_in_the_hub_cache_loads_offline_with_its_commit(
    tiny_clip_dir, tmp_path, monkeypatch
):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    embedder = load_embedder(EmbedConfig(model="tiny-org/tiny-clip"))
    assert embedder.identity.startswith(f"tiny-org/tiny-clip@{commit} fp32")
    assert embedder.embed_texts(["a photo of a cat"]).shape == (1, 16)


def test_a_model_that_is_not_on_this_machine_says_what_to_do():
    with pytest.raises(
        ModelUnavailableError, match="not in the local Hugging Face cache"
    ) as raised:
        load_embedder(EmbedConfig(model="no-such-org/no-such-clip"))
    message = str(raised.value)
    for advice in ("local directory", "HF_HOME", "HF_HUB_OFFLINE", "--model baseline"):
        assert advice in message
    assert "\n" not in message


def test_a_folder_without_a_clip_checkpoint_is_refused_clearly(tmp_path):
    with pytest.raises(
        ModelUnavailableError,
        match=r"cannot load a CLIP checkpoint from the directory .*--model baseline",
    ):
        load_embedder(EmbedConfig(model=str(tmp_path)))
    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailableError, match="is a 'bert' checkpoint, not CLIP"):
        load_embedder(EmbedConfig(model=str(tmp_path)))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"precision": "int8"}, "precision must be one of auto, fp32, bf16, fp16, got 'int8'"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        (
            {"model": " "},
            "model must be a CLIP id, a local checkpoint directory or 'baseline', got ' '",
        ),
    ],
)
def test_embed_config_names_the_bad_value_and_what_is_allowed(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EmbedConfig(**fields)


def test_known_models_are_the_openai_checkpoints_and_the_baseline():
    assert (
        set(list_models())
        == set(KNOWN_MODELS)
        == {
            "openai/clip-vit-base-patch32",
            "openai/clip-vit-base-patch16",
            "openai/clip-vit-large-patch14",
            "openai/clip-vit-large-patch14-336",
            BASELINE_MODEL,
        }
    )
    assert EmbedConfig().model in KNOWN_MODELS
    assert all(description.strip() for description in list_models().values())


def test_baseline_is_deterministic_unit_norm_and_separates_colours(image_file):
    reds = [load_image(path) for path in coloured_images(image_file, 4)]
    blues = [load_image(path) for path in coloured_images(image_file, 4, BLUE)]
    flat = Image.new("RGB", (20, 20), (90, 90, 90))
    embedder = load_embedder(EmbedConfig(model=BASELINE_MODEL))
    vectors = embedder.embed_images(reds + blues + [flat])

    np.testing.assert_array_equal(vectors, BaselineEmbedder().embed_images(reds + blues + [flat]))
    assert vectors.dtype == np.float32 and vectors.shape == (9, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors[:8] @ vectors[:8].T
    within = np.concatenate([similarity[:4, :4].ravel(), similarity[4:, 4:].ravel()])
    assert within.min() > similarity[:4, 4:].max()
    assert "baseline (downscaled pixels)" in embedder.identity


def test_baseline_refuses_text():
    assert not BaselineEmbedder().supports_text
    with pytest.raises(ValueError, match="baseline cannot embed text; use a CLIP model"):
        embed_texts_cached(["a photo of a cat"], BaselineEmbedder())


def test_bad_images_are_rejected_and_the_rest_are_embedded(image_file, tmp_path):
    good = coloured_images(image_file, 3)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    vanished = tmp_path / "images" / "vanished.png"
    dataset = dataset_of([good[0], broken, good[1], vanished, good[2]])

    run = embed_dataset(dataset, BaselineEmbedder(), cache=None, batch_size=2)

    assert list(run.embeddings.ids) == [path.name for path in good]
    assert [rejected.name for rejected in run.rejected] == ["broken.jpg", "vanished.png"]
    assert "cannot read the file" in run.rejected[1].reason
    assert run.rejected[0].reason
    assert run.computed == 3 and run.from_cache == 0
    assert run.embeddings.model == BaselineEmbedder.identity


def test_an_interrupted_run_resumes_from_the_cache(image_file, tmp_path):
    paths = coloured_images(image_file, 4) + coloured_images(image_file, 3, BLUE)
    dataset = Dataset(
        "resume",
        [Item(path.name, TEST if i % 2 else TRAIN, None, path) for i, path in enumerate(paths)],
    )
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    batch_size = 3

    def interrupt(done, total, images_per_second):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_dataset(dataset, BaselineEmbedder(), cache, batch_size, progress=interrupt)
    assert cache.count(BaselineEmbedder.identity) == batch_size

    resumed_embedder, reports = CountingEmbedder(BaselineEmbedder()), []
    resumed = embed_dataset(
        dataset,
        resumed_embedder,
        cache,
        batch_size,
        progress=lambda *report: reports.append(report),
    )
    assert (resumed.computed, resumed.from_cache) == (len(paths) - batch_size, batch_size)
    assert resumed_embedder.image_calls == [3, 1]
    assert [done for done, _, _ in reports] == [6, 7] and all(total == 7 for _, total, _ in reports)

    uncached = embed_dataset(dataset, BaselineEmbedder(), cache=None, batch_size=batch_size)
    np.testing.assert_array_equal(resumed.embeddings.vectors, uncached.embeddings.vectors)
    np.testing.assert_array_equal(resumed.embeddings.splits, uncached.embeddings.splits)

    again_embedder, reports = CountingEmbedder(BaselineEmbedder()), []
    again = embed_dataset(
        dataset, again_embedder, cache, batch_size, progress=lambda *report: reports.append(report)
    )
    assert (again.computed, again.from_cache, again_embedder.image_calls) == (0, len(paths), [])
    assert reports == [(7, 7, 0.0)]
    cache.close()


def test_identical_files_are_embedded_once(image_file, tmp_path):
    first = image_file("a/same.png", colour=RED, noise=0)
    second = image_file("b/same-too.png", colour=RED, noise=0)
    counting = CountingEmbedder(BaselineEmbedder())
    run = embed_dataset(
        dataset_of([first, second]), counting, EmbeddingCache(tmp_path / "cache.sqlite")
    )
    assert counting.image_calls == [1]
    assert run.computed == 2 and len(run.embeddings.ids) == 2


def test_an_empty_dataset_gives_an_empty_table(tiny_clip):
    run = embed_dataset(Dataset("empty", []), tiny_clip, cache=None)
    assert run.embeddings.vectors.shape == (0, 16) and run.rejected == [] and run.computed == 0


def test_clip_runs_match_direct_embedding_despite_reduced_jpeg_decoding(
    tiny_clip, image_file, tmp_path
):
    # Large JPEGs decode in draft mode near twice the model's input size; vectors must barely move.
    rng = np.random.default_rng(1)
    paths = []
    for index in range(3):
        gradient = np.linspace(0, 255, 800)[None, :, None] * rng.uniform(0.3, 1.0, size=(1, 1, 3))
        pixels = np.repeat(gradient, 600, axis=0)
        pixels[100 + 50 * index : 300, 200:500] = rng.integers(0, 255, size=3)
        path = tmp_path / f"large-{index}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    run = embed_dataset(
        dataset_of(paths), tiny_clip, EmbeddingCache(tmp_path / "cache.sqlite"), batch_size=2
    )
    direct = tiny_clip.embed_images([load_image(path) for path in paths])
    assert np.all(np.sum(run.embeddings.vectors * direct, axis=1) > 0.99)
    assert run.embeddings.model == tiny_clip.identity


def test_text_vectors_are_cached_by_text(tiny_clip, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    counting = CountingEmbedder(tiny_clip)
    texts = ["a photo of a cat", "a photo of a dog", "a photo of a cat"]
    first = embed_texts_cached(texts, counting, cache)
    again = embed_texts_cached(texts[::-1], counting, cache)
    assert counting.text_calls == [2]
    np.testing.assert_allclose(first, tiny_clip.embed_texts(texts), atol=1e-6)
    np.testing.assert_array_equal(again, first[::-1])
    assert embed_texts_cached([], counting, cache).shape == (0, 16)
    cache.close()


# ── fast preprocessing: the pipeline's own replica of the checkpoint's processor ──


def photo_like_images(count, size=(640, 480)):
    from bench.fixtures import photo_jpeg

    rng = np.random.default_rng(7)
    return [photo_jpeg(rng, size) for _ in range(count)]


def test_fast_preprocessing_reproduces_the_checkpoints_processor(tiny_clip, tiny_clip_dir):
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir).image_processor
    assert FastClipPreprocessing.of(processor) is not None
    images = [load_image(data) for data in photo_like_images(3)]
    images += [
        Image.new("RGB", (17, 61), (0, 200, 0)),
        load_image(photo_like_images(1, (301, 1003))[0]),
    ]
    for image in images:
        expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(tiny_clip.prepare_image(image), expected, atol=1e-5)


def test_draft_decoding_with_fast_preprocessing_agrees_with_the_processor_on_full_decodes(
    tiny_clip, tiny_clip_dir, tmp_path
):
    # JPEGs decode at 1/8 scale for the tiny model's 32 px input: the pipeline's biggest shortcut.
    paths = []
    for index, data in enumerate(photo_like_images(6)):
        paths.append(tmp_path / f"photo-{index}.jpg")
        paths[-1].write_bytes(data)
    run = embed_dataset(dataset_of(paths), tiny_clip, cache=None, batch_size=4)
    reference, _ = transformers_reference(
        tiny_clip_dir, [Image.open(path).convert("RGB") for path in paths], ["x"]
    )
    assert tiny_clip.draft_size == 32 and load_image(
        paths[0], draft_size=tiny_clip.draft_size
    ).size == (80, 60)
    assert np.sum(run.embeddings.vectors * reference, axis=1).min() >= 0.99


@pytest.mark.parametrize(
    "change",
    [
        {"size": {"height": 32, "width": 32}},  # a square resize, not shortest-edge
        {"do_center_crop": False},
        {
            "crop_size": {"height": 40, "width": 40}
        },  # larger than the resized image: the processor pads
        {"do_rescale": False},
        {"image_mean": 0.5, "image_std": 0.5},  # one number for every channel
    ],
)
def test_processors_the_fast_path_does_not_replicate_are_used_as_they_are(
    tiny_clip_dir, tmp_path, change
):
    checkpoint = tmp_path / "changed-processor"
    shutil.copytree(tiny_clip_dir, checkpoint)
    processor = CLIPProcessor.from_pretrained(checkpoint)
    for name, value in change.items():
        setattr(processor.image_processor, name, value)
    processor.save_pretrained(checkpoint)
    reloaded = CLIPProcessor.from_pretrained(checkpoint).image_processor
    assert FastClipPreprocessing.of(reloaded) is None
    embedder = load_embedder(EmbedConfig(model=str(checkpoint)))
    image = load_image(photo_like_images(1)[0])
    expected = reloaded(images=[image], return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(embedder.prepare_image(image), expected, atol=1e-6)


def test_embedders_prepare_apart_from_the_model_call(tiny_clip):
    images = [load_image(data) for data in photo_like_images(2)] + [Image.new("L", (40, 30), 90)]
    for embedder in (tiny_clip, BaselineEmbedder()):
        assert isinstance(embedder, PreparingEmbedder)
        prepared = np.stack([embedder.prepare_image(image) for image in images])
        np.testing.assert_allclose(
            embedder.embed_prepared(prepared), embedder.embed_images(images), atol=1e-6
        )
        assert embedder.embed_prepared(prepared[:0]).shape == (0, embedder.dim)


def tiny_clip_with_vision_layers(tiny_clip_dir, tmp_path, layers):
    """The tiny checkpoint with fresh random weights and `layers` vision encoder layers."""
    checkpoint = tmp_path / f"tiny-clip-{layers}-layers"
    shutil.copytree(tiny_clip_dir, checkpoint)
    config = CLIPConfig.from_pretrained(tiny_clip_dir)
    config.vision_config.num_hidden_layers = layers
    torch.manual_seed(layers)
    CLIPModel(config).save_pretrained(checkpoint)
    return checkpoint


def load_watching_the_last_layer(monkeypatch, checkpoint, precision="fp32", change_model=None):
    """The embedder, and the shapes its last vision layer's MLP receives: (n, hidden) when it runs for the CLS token only."""
    mlp_inputs = []
    load_checkpoint = core.embedding.clip.load_checkpoint

    def load_and_watch(*args):
        model, image_processor, tokenizer = load_checkpoint(*args)
        last = model.vision_model.encoder.layers[-1]
        last.mlp.register_forward_hook(
            lambda module, inputs, output: mlp_inputs.append(tuple(inputs[0].shape))
        )
        if change_model is not None:
            change_model(model)
        return model, image_processor, tokenizer

    monkeypatch.setattr(core.embedding.clip, "load_checkpoint", load_and_watch)
    return load_embedder(EmbedConfig(model=str(checkpoint), precision=precision)), mlp_inputs


def transformers_image_features(checkpoint, pixels):
    """get_image_features' pooler_output for the checkpoint, normalised: transformers alone, in fp32."""
    model = CLIPModel.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        features = model.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def random_pixels(count=6):
    return np.random.default_rng(count).normal(0.0, 1.0, (count, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_cls_only_last_layer_gives_transformers_image_features(
    tiny_clip_dir, tmp_path, monkeypatch, layers
):
    checkpoint = tiny_clip_with_vision_layers(tiny_clip_dir, tmp_path, layers)
    pixels = random_pixels()
    expected = transformers_image_features(checkpoint, pixels)

    full, mlp_inputs = load_watching_the_last_layer(monkeypatch, checkpoint)
    vectors = full.embed_prepared(pixels)
    assert mlp_inputs == [(len(pixels), 32)], "the last layer's MLP should see the CLS token alone"
    assert vectors.dtype == np.float32 and vectors.shape == (len(pixels), 16)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    half, mlp_inputs = load_watching_the_last_layer(monkeypatch, checkpoint, precision="bf16")
    half_vectors = half.embed_prepared(pixels)
    assert mlp_inputs == [(len(pixels), 32)]
    assert half_vectors.dtype == np.float32
    assert np.all(np.sum(half_vectors * expected, axis=1) >= 0.99)


class PassThrough(torch.nn.Module):
    """Runs the wrapped layer unchanged, but hides its self_attn, layer norms and MLP."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)


class RedefinedLayer(CLIPEncoderLayer):
    """A subclass with a forward of its own (here the same maths), which the CLS-only path must not assume."""

    def forward(self, hidden_states, attention_mask, **kwargs):
        return super().forward(hidden_states, attention_mask, **kwargs)


def wrap_the_layers(model):
    encoder = model.vision_model.encoder
    encoder.layers = torch.nn.ModuleList(PassThrough(layer) for layer in encoder.layers)


def redefine_the_last_layer(model):
    model.vision_model.encoder.layers[-1].__class__ = RedefinedLayer


@pytest.mark.parametrize("change_model", [wrap_the_layers, redefine_the_last_layer])
def test_vision_towers_of_another_structure_use_get_image_features(
    tiny_clip_dir, monkeypatch, change_model
):
    pixels = random_pixels(4)
    embedder, mlp_inputs = load_watching_the_last_layer(
        monkeypatch, tiny_clip_dir, change_model=change_model
    )
    vectors = embedder.embed_prepared(pixels)
    tokens = (32 // 8) ** 2 + 1
    assert mlp_inputs == [(len(pixels), tokens, 32)], (
        "the last layer should run for every token, as transformers runs it"
    )
    np.testing.assert_allclose(
        vectors, transformers_image_features(tiny_clip_dir, pixels), atol=1e-5
    )


def test_the_stream_yields_every_item_once_cached_then_computed_batch_by_batch(
    image_file, tmp_path
):
    paths = (
        coloured_images(image_file, 5)
        + coloured_images(image_file, 4, BLUE)
        + [image_file("a/copy.png", noise=0), image_file("b/copy.png", noise=0)]
    )
    dataset = dataset_of([*paths, tmp_path / "vanished.png"])
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    embed_dataset(dataset_of(paths[:4]), BaselineEmbedder(), cache)

    stream = EmbeddingStream(dataset, BaselineEmbedder(), cache, batch_size=3)
    steps = [(list(batch.embeddings.ids), [row.name for row in batch.rejected]) for batch in stream]
    assert steps[0] == ([], ["vanished.png"])
    assert sorted(steps[1][0]) == sorted(path.name for path in paths[:4])
    computed = [ids for ids, _ in steps[2:]]
    assert [len(ids) for ids in computed] == [
        3,
        4,
    ]  # 6 distinct files in batches of 3; the two copies share one, both in its step
    assert sorted(name for step in computed for name in step) == sorted(
        path.name for path in paths[4:]
    )
    assert (stream.computed, stream.from_cache) == (len(paths) - 4, 4)
    cache.close()
