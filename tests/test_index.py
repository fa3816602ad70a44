import numpy as np
import pytest

from core.retrieval.index import EXACT_UP_TO, VectorIndex, checked_vectors, resolve_kind, search
from core.retrieval.index import unit_rows as unit_rows_checked


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


# ── approximate kinds: chosen by size, validated, and close to exact ──


def clustered_rows(rng, n, d=64, clusters=50):
    """Unit rows around cluster centres, like embeddings of images of a few classes."""
    centres = rng.normal(size=(clusters, d))
    rows = centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def recall_at(exact, approximate):
    return np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(exact, approximate)])


def test_auto_is_exact_up_to_the_threshold_and_ivf_above():
    assert resolve_kind("auto", EXACT_UP_TO) == "exact"
    assert resolve_kind("auto", EXACT_UP_TO + 1) == "ivf"
    assert resolve_kind("hnsw", 10) == "hnsw" and resolve_kind("exact", 10**9) == "exact"
    assert VectorIndex(unit_rows(np.random.default_rng(3), 20, 8)).kind == "exact"


def test_an_unknown_kind_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"index kind must be one of auto, exact, hnsw, ivf, got 'annoy'"):
        VectorIndex(unit_rows(np.random.default_rng(4), 20, 8), kind="annoy")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_true_neighbours_with_exact_similarities(kind):
    rng = np.random.default_rng(5)
    train, queries = clustered_rows(rng, 4000), clustered_rows(rng, 200)
    exact = search(train, queries, 5, kind="exact")
    found = search(train, queries, 5, kind=kind)
    assert recall_at(exact.indices, found.indices) >= 0.9
    np.testing.assert_allclose(found.similarities, np.einsum("qd,qkd->qk", queries, train[found.indices]), atol=1e-5)
    assert np.all(np.diff(found.similarities, axis=1) <= 1e-6)
    assert found.indices.dtype == np.int64


def test_ivf_returns_k_neighbours_even_when_the_probed_lists_hold_fewer():
    rng = np.random.default_rng(6)
    train, queries = clustered_rows(rng, 2000), clustered_rows(rng, 20)
    index = VectorIndex(train, kind="ivf")
    found = index.search(queries, 600)  # far more than the few probed lists hold
    assert (found.indices >= 0).all()
    assert all(len(set(row)) == 600 for row in found.indices)
    assert recall_at(search(train, queries, 600, kind="exact").indices, found.indices) >= 0.95
    assert "IVF" in index.settings and len(index) == 2000


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_search_among_allowed_rows_only(kind):
    rng = np.random.default_rng(5)
    train, queries = unit_rows(rng, 4000, 16), unit_rows(rng, 30, 16)
    allowed = rng.random(len(train)) < 0.3
    found = VectorIndex(train, kind).search(queries, 5, allowed)
    assert allowed[found.indices].all()
    np.testing.assert_allclose(found.similarities, np.einsum("qd,qkd->qk", queries, train[found.indices]), atol=1e-5)
    if kind == "exact":
        expected = np.flatnonzero(allowed)[np.argsort(-(queries @ train[allowed].T), axis=1)[:, :5]]
        np.testing.assert_array_equal(found.indices, expected)


def test_allowed_rows_are_checked_and_clamp_k():
    index = VectorIndex(unit_rows(np.random.default_rng(6), 5, 8))
    with pytest.raises(ValueError, match=r"allowed must mark each of the 5 indexed rows, got shape \(4,\)"):
        index.search(unit_rows(np.random.default_rng(7), 2, 8), 1, np.ones(4, bool))
    with pytest.raises(ValueError, match="allowed marks no indexed row"):
        index.search(unit_rows(np.random.default_rng(7), 2, 8), 1, np.zeros(5, bool))
    with pytest.warns(UserWarning, match="k=3 is larger than the 2 indexed vectors searched"):
        found = index.search(unit_rows(np.random.default_rng(7), 2, 8), 3, np.array([1, 0, 0, 1, 0], bool))
    assert set(found.indices.ravel()) == {0, 3}


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.ones(4), r"queries must be a 2-D array of shape \(rows ≥ 1, dimensions ≥ 1\); got shape \(4,\)"),
        (np.zeros((0, 3)), r"queries must be a 2-D array of shape \(rows ≥ 1, dimensions ≥ 1\); got shape \(0, 3\)"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), r"queries have NaN or infinite values in 1 of 2 rows \(first at row 1\)"),
    ],
)
def test_checked_vectors_names_the_argument_and_the_bad_value(vectors, message):
    with pytest.raises(ValueError, match=message):
        checked_vectors(vectors, "queries", min_rows=1)


def test_unit_rows_refuses_or_keeps_zero_rows():
    rows = np.array([[3.0, 4.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="targets row 1 is all zeros: it has no direction"):
        unit_rows_checked(rows, "targets")
    np.testing.assert_allclose(unit_rows_checked(rows, "targets", keep_zero_rows=True), [[0.6, 0.8], [0.0, 0.0]])
