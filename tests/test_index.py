import numpy as np
import pytest

from core.index import VectorIndex, search


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    train, queries = unit_rows(rng, 300, 32), unit_rows(rng, 50, 32)
    result = search(train, queries, 5)
    brute = queries @ train.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.similarities, np.take_along_axis(brute, expected, 1), atol=1e-5)


def test_k_larger_than_train_is_clamped_with_a_warning():
    rng = np.random.default_rng(1)
    with pytest.warns(UserWarning, match="k=10 is larger than the 3 indexed vectors"):
        result = search(unit_rows(rng, 3, 8), unit_rows(rng, 4, 8), 10)
    assert result.indices.shape == (4, 3)
    assert (result.indices >= 0).all()


def test_bad_inputs_are_named():
    rng = np.random.default_rng(2)
    index = VectorIndex(unit_rows(rng, 5, 8))
    with pytest.raises(ValueError, match="queries have 4 dimensions but the index has 8"):
        index.search(unit_rows(rng, 2, 4), 1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(unit_rows(rng, 2, 8), 0)
    with pytest.raises(ValueError, match="train split is empty"):
        VectorIndex(np.zeros((0, 8), np.float32))
    assert index.search(np.zeros((0, 8), np.float32), 3).indices.shape == (0, 3)
