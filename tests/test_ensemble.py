import numpy as np
import pytest
from test_index import unit_rows

from core.analysis.pipeline import analyse
from core.methods.ensemble import combine, search_weights, validation_map
from core.records import Embeddings


def model(name, vectors, ids=None, labels=None, splits=None):
    n = len(vectors)
    return Embeddings(
        np.array(ids if ids is not None else [f"item{i}" for i in range(n)]),
        np.array(splits if splits is not None else ["train"] * n),
        np.array(labels if labels is not None else [f"c{i % 4}" for i in range(n)], dtype=object),
        np.asarray(vectors, np.float32),
        name,
    )


def orthogonal_blocks(rng, n, blocks, width):
    """Unit rows that live in disjoint coordinate blocks: one table per block, mutually orthogonal."""
    tables = []
    for b in range(blocks):
        vectors = np.zeros((n, blocks * width), np.float32)
        vectors[:, b * width : (b + 1) * width] = unit_rows(rng, n, width)
        tables.append(vectors)
    return tables


def mean_cosine_to(target):
    return lambda embeddings: float(np.mean(np.sum(embeddings.vectors * target, axis=1)))


def test_rows_are_aligned_by_split_and_id():
    rng = np.random.default_rng(0)
    a = model("a", unit_rows(rng, 8, 5))
    order = rng.permutation(8)
    shuffled = model("b", a.vectors[order], ids=a.ids[order], labels=a.labels[order])
    combined = combine([a, shuffled], [1.0, 1.0])
    np.testing.assert_allclose(combined.vectors, a.vectors, atol=1e-6)
    assert list(combined.ids) == list(a.ids)
    assert combined.model == "ensemble(a×1 + b×1)"


def test_each_model_is_norm_scaled_before_combining():
    rng = np.random.default_rng(1)
    a, b = model("a", unit_rows(rng, 6, 4)), model("b", unit_rows(rng, 6, 4))
    loud = model("b", b.vectors * rng.uniform(1, 1000, size=(6, 1)))
    np.testing.assert_allclose(
        combine([a, loud], [1, 0.5]).vectors, combine([a, b], [1, 0.5]).vectors, atol=1e-6
    )
    expected = a.vectors + 0.5 * b.vectors
    np.testing.assert_allclose(
        combine([a, b], [1, 0.5]).vectors,
        expected / np.linalg.norm(expected, axis=1, keepdims=True),
        atol=1e-6,
    )


def test_different_dimensions_are_concatenated_as_a_weighted_cosine():
    rng = np.random.default_rng(2)
    a, b = model("a", unit_rows(rng, 5, 3)), model("b", unit_rows(rng, 5, 7))
    combined = combine([a, b], [1.0, 0.5])
    assert combined.dim == 10
    cosine = combined.vectors @ combined.vectors.T
    expected = (a.vectors @ a.vectors.T + 0.25 * (b.vectors @ b.vectors.T)) / 1.25
    np.testing.assert_allclose(cosine, expected, atol=1e-5)
    assert combine([a, b], [1.0, 0.0]).dim == 3  # a model weighted 0 is left out


def test_search_finds_a_known_optimum_one_model_at_a_time():
    rng = np.random.default_rng(3)
    a, b, c = (model(name, v) for name, v in zip("abc", orthogonal_blocks(rng, 50, 3, 6)))
    best = a.vectors + 0.6 * b.vectors + 0.3 * c.vectors
    target = best / np.linalg.norm(best, axis=1, keepdims=True)
    # Given out of order: a scores best alone, so it anchors at 1.0 and weights come back in input order.
    reported = []
    search = search_weights(
        [c, a, b], mean_cosine_to(target), max_ratio=2.0, iterations=10, progress=reported.append
    )
    np.testing.assert_allclose(search.weights, [0.3, 1.0, 0.6], atol=0.05)
    assert search.metric > 0.999
    assert search.mode == "sum"
    # Every evaluation is recorded: 3 solo runs, then per newcomer both ends and 2 per iteration
    # (ratio 0 is the ensemble so far, already known).
    assert len(search.steps) == 3 + 2 * (1 + 2 * 10)
    assert reported == search.steps
    for step in search.steps[::7]:
        assert step.metric == pytest.approx(
            mean_cosine_to(target)(combine([c, a, b], step.weights))
        )
    assert [step.model for step in search.steps[:3]] == ["c", "a", "b"]
    table = search.table().splitlines()
    assert "ratio" in table[0] and len(table) == len(search.steps) + 2
    assert table[-1].startswith("chosen (sum): weights (") and ", 1, " in table[-1]


def test_a_model_that_only_hurts_gets_weight_zero():
    rng = np.random.default_rng(4)
    a, b = (model(name, v) for name, v in zip("ab", orthogonal_blocks(rng, 30, 2, 4)))
    search = search_weights([a, b], mean_cosine_to(a.vectors), iterations=4)
    assert search.weights == (1.0, 0.0)
    assert search.embeddings.model == "ensemble(a×1 + b×0)"


def complementary_models(seed=0, known=20, distractors=6):
    """Two views of the same items: each model merges a different set of class pairs into one cluster."""
    rng = np.random.default_rng(seed)
    classes = np.concatenate(
        [np.repeat(np.arange(known), 3), np.repeat(np.arange(known + distractors), 4)]
    )
    splits = ["train"] * (3 * known) + ["test"] * (4 * (known + distractors))
    labels = [f"c{c}" if c < known else "-1" for c in classes]
    ids = [f"{split}{i}" for i, split in enumerate(splits)]
    shift = np.array(
        [
            (c + 1 if c % 2 else c - 1) % known if c < known else c
            for c in range(known + distractors)
        ]
    )
    partners = {
        "a": np.arange(known + distractors) ^ 1,
        "b": shift,
    }  # a: 0~1, 2~3 …; b: 1~2, 3~4 …, 19~0

    def view(name):
        centres = rng.normal(size=(known + distractors, 16))
        vectors = centres[np.minimum(classes, partners[name][classes])] + 0.3 * rng.normal(
            size=(len(classes), 16)
        )
        return model(
            name, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ids, labels, splits
        )

    return view("a"), view("b")


def test_default_validation_metric_finds_an_ensemble_better_than_either_model():
    a, b = complementary_models()
    metric = validation_map()
    solo_a, solo_b = metric(a), metric(b)
    search = search_weights([a, b], iterations=4)
    assert search.metric > max(solo_a, solo_b) + 0.1
    assert min(search.weights) > 0

    # Held-out test items agree with the validation metric.
    def measured_map(embeddings):
        return analyse(embeddings).report().measured_map

    assert measured_map(search.embeddings) > max(measured_map(a), measured_map(b)) + 0.1
    again = search_weights([a, b], iterations=4)
    assert (again.weights, again.steps) == (search.weights, search.steps)


def test_bad_inputs_are_explained():
    rng = np.random.default_rng(5)
    a = model("a", unit_rows(rng, 4, 3))
    other_ids = model("b", unit_rows(rng, 4, 3), ids=["item0", "item1", "item2", "x"])
    with pytest.raises(
        ValueError, match=r"embed different items: 1 of a's items are missing from b, e.g. 'item3'"
    ):
        combine([a, other_ids], [1, 1])
    relabelled = model("b", unit_rows(rng, 4, 3), labels=["c0", "c1", "c2", "zzz"])
    with pytest.raises(ValueError, match="disagree on the label of 'item3'"):
        combine([a, relabelled], [1, 1])
    with pytest.raises(ValueError, match="one weight per model"):
        combine([a, a], [1])
    with pytest.raises(ValueError, match="not all 0"):
        combine([a, a], [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        combine([a, a], [1, -1])
    with pytest.raises(ValueError, match="equal dimensions"):
        combine([a, model("c", unit_rows(rng, 4, 5))], [1, 1], mode="sum")
    with pytest.raises(ValueError, match="mode must be one of"):
        combine([a, a], [1, 1], mode="mean")
    with pytest.raises(ValueError, match="at least 2 models"):
        search_weights([a])
    with pytest.raises(ValueError, match="max_ratio must be > 0"):
        search_weights([a, a], max_ratio=0)
    with pytest.raises(ValueError, match="iterations must be"):
        search_weights([a, a], iterations=0)
    with pytest.raises(ValueError, match="at least 4 train classes"):
        validation_map()(model("tiny", unit_rows(rng, 3, 3), labels=["x", "y", "y"]))
