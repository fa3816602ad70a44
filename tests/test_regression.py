import numpy as np
import pytest
from test_index import unit_rows

from core.methods.regression import (
    clip_scores,
    cosine_scores,
    dedupe_pairs,
    knn_regress,
    mean_cosine,
    rank_prompts,
)


def test_knn_regression_recovers_a_known_linear_target():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 16))
    train, queries = unit_rows(rng, 3000, 8), unit_rows(rng, 200, 8)
    result = knn_regress(train, train @ weights, queries, k=10, dedupe_threshold=None)
    truth = queries @ weights
    assert mean_cosine(result.predictions, truth) > 0.97
    # Far better than answering every query with the average target.
    average = np.repeat((train @ weights).mean(axis=0, keepdims=True), len(queries), axis=0)
    assert mean_cosine(result.predictions, truth) > mean_cosine(average, truth) + 0.3


def test_prediction_is_the_similarity_weighted_mean_of_neighbour_targets():
    train = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]], np.float32)
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    query = np.array([[1.0, 0.0]], np.float32)
    result = knn_regress(train, targets, query, k=3, dedupe_threshold=None)
    # Similarities 1.0, 0.8 and -1.0: the opposite neighbour gets no weight.
    np.testing.assert_allclose(result.predictions[0], [1 / 1.8, 0.8 / 1.8, 0.0], atol=1e-6)
    exact = knn_regress(train, targets, train[1:2], k=1, dedupe_threshold=None)
    np.testing.assert_allclose(exact.predictions[0], targets[1])


def test_dedupe_keeps_the_first_of_near_duplicates_greedily():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    near_a = a + np.array([0.0, 0.05, 0.0])
    targets = np.stack([a, near_a, b, a])
    np.testing.assert_array_equal(dedupe_pairs(targets, 0.95), [0, 2])
    # A chain: b is close to a and c, but a and c are not close: a and c stay, b goes.
    angles = np.radians([0.0, 15.0, 30.0])
    chain = np.stack([np.cos(angles), np.sin(angles), np.zeros(3)], axis=1)
    np.testing.assert_array_equal(dedupe_pairs(chain, np.cos(np.radians(20))), [0, 2])


def test_regression_drops_duplicate_pairs_and_clamps_k_with_notes():
    rng = np.random.default_rng(1)
    train = unit_rows(rng, 6, 4)
    targets = np.repeat(unit_rows(rng, 2, 3), 3, axis=0)
    result = knn_regress(train, targets, unit_rows(rng, 2, 4), k=5)
    np.testing.assert_array_equal(result.kept_rows, [0, 3])
    assert result.k == 2
    assert any("dropped 4 of 6" in note for note in result.notes)
    assert any("k lowered from 5 to 2" in note for note in result.notes)


def test_rank_prompts_finds_each_image_its_prompt():
    rng = np.random.default_rng(2)
    texts = [f"a photo of a thing{i}" for i in range(12)]
    text_vectors = unit_rows(rng, 12, 32)
    images = text_vectors[[3, 7, 11]] + 0.1 * rng.normal(size=(3, 32))
    ranking = rank_prompts(images, text_vectors, texts, k=4)
    assert [row[0] for row in ranking.texts] == [texts[3], texts[7], texts[11]]
    assert ranking.scores.shape == ranking.probabilities.shape == (3, 4)
    assert np.all(np.diff(ranking.scores, axis=1) <= 0)
    assert np.all((ranking.scores >= 0) & (ranking.scores <= 100))
    assert np.all(ranking.probabilities[:, 0] > 0.9)
    assert np.all(ranking.probabilities.sum(axis=1) <= 1 + 1e-9)
    # With every candidate shown, the softmax over candidates sums to one.
    every = rank_prompts(images, text_vectors, texts, k=12)
    np.testing.assert_allclose(every.probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(
        every.scores[:, 0], clip_scores(cosine_scores(images, text_vectors[[3, 7, 11]])), atol=1e-3
    )


def test_clip_score_is_100_times_cosine_clipped_at_zero():
    np.testing.assert_allclose(
        clip_scores(np.array([-0.2, 0.0, 0.31, 1.0])), [0.0, 0.0, 31.0, 100.0]
    )


def test_k_above_the_candidates_is_clamped():
    rng = np.random.default_rng(3)
    ranking = rank_prompts(unit_rows(rng, 2, 8), unit_rows(rng, 3, 8), ["a", "b", "c"], k=10)
    assert ranking.indices.shape == (2, 3)


def test_bad_inputs_are_explained():
    rng = np.random.default_rng(4)
    images, texts = unit_rows(rng, 2, 8), unit_rows(rng, 3, 8)
    with pytest.raises(ValueError, match="3 text vectors but 2 texts"):
        rank_prompts(images, texts, ["a", "b"])
    with pytest.raises(ValueError, match="same CLIP model"):
        rank_prompts(unit_rows(rng, 2, 4), texts, ["a", "b", "c"])
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        rank_prompts(images, texts, ["a", "b", "c"], k=0)
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        rank_prompts(np.array([[1.0] * 8, [0.0] * 8]), texts, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one row per training input"):
        knn_regress(images, texts, images)
    with pytest.raises(ValueError, match="NaN"):
        knn_regress(images, np.full((2, 3), np.nan), images)
    with pytest.raises(ValueError, match=r"cosine similarity in \[-1, 1\], got 1.5"):
        knn_regress(images, unit_rows(rng, 2, 3), images, dedupe_threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        mean_cosine(images, texts)
