import warnings
from functools import partial

import faiss
import numpy as np
import pytest

import core.embedding.clip
from core.search.index import EXACT_UP_TO, VectorIndex, checked_vectors, resolve_kind, search
from core.search.index import unit_rows as unit_rows_checked


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
    np.testing.assert_allclose(
        result.similarities, np.take_along_axis(brute, expected, 1), atol=1e-5
    )


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
    with pytest.raises(
        ValueError, match=r"index kind must be one of auto, exact, hnsw, ivf, got 'annoy'"
    ):
        VectorIndex(unit_rows(np.random.default_rng(4), 20, 8), kind="annoy")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_true_neighbours_with_exact_similarities(kind):
    rng = np.random.default_rng(5)
    train, queries = clustered_rows(rng, 4000), clustered_rows(rng, 200)
    exact = search(train, queries, 5, kind="exact")
    found = search(train, queries, 5, kind=kind)
    assert recall_at(exact.indices, found.indices) >= 0.9
    np.testing.assert_allclose(
        found.similarities, np.einsum("qd,qkd->qk", queries, train[found.indices]), atol=1e-5
    )
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
    np.testing.assert_allclose(
        found.similarities, np.einsum("qd,qkd->qk", queries, train[found.indices]), atol=1e-5
    )
    if kind == "exact":
        expected = np.flatnonzero(allowed)[np.argsort(-(queries @ train[allowed].T), axis=1)[:, :5]]
        np.testing.assert_array_equal(found.indices, expected)


def test_allowed_rows_are_checked_and_clamp_k():
    index = VectorIndex(unit_rows(np.random.default_rng(6), 5, 8))
    with pytest.raises(
        ValueError, match=r"allowed must mark each of the 5 indexed rows, got shape \(4,\)"
    ):
        index.search(unit_rows(np.random.default_rng(7), 2, 8), 1, np.ones(4, bool))
    with pytest.raises(ValueError, match="allowed marks no indexed row"):
        index.search(unit_rows(np.random.default_rng(7), 2, 8), 1, np.zeros(5, bool))
    with pytest.warns(UserWarning, match="k=3 is larger than the 2 indexed vectors searched"):
        found = index.search(
            unit_rows(np.random.default_rng(7), 2, 8), 3, np.array([1, 0, 0, 1, 0], bool)
        )
    assert set(found.indices.ravel()) == {0, 3}


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (
            np.ones(4),
            r"queries must be a 2-D array of shape \(rows ≥ 1, dimensions ≥ 1\); got shape \(4,\)",
        ),
        (
            np.zeros((0, 3)),
            r"queries must be a 2-D array of shape \(rows ≥ 1, dimensions ≥ 1\); got shape \(0, 3\)",
        ),
        (
            np.array([[1.0, 0.0], [np.inf, 1.0]]),
            r"queries have NaN or infinite values in 1 of 2 rows \(first at row 1\)",
        ),
    ],
)
def test_checked_vectors_names_the_argument_and_the_bad_value(vectors, message):
    with pytest.raises(ValueError, match=message):
        checked_vectors(vectors, "queries", min_rows=1)


def test_unit_rows_refuses_or_keeps_zero_rows():
    rows = np.array([[3.0, 4.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="targets row 1 is all zeros: it has no direction"):
        unit_rows_checked(rows, "targets")
    np.testing.assert_allclose(
        unit_rows_checked(rows, "targets", keep_zero_rows=True), [[0.6, 0.8], [0.0, 0.0]]
    )


def test_unit_rows_leaves_rows_of_unit_length_as_they_are_and_scales_the_others():
    unit = unit_rows(np.random.default_rng(0), 50, 512)
    assert unit_rows_checked(unit, "vectors") is unit
    longer = unit.copy()
    longer[7] *= 1.001
    scaled = unit_rows_checked(longer, "vectors")
    assert scaled is not longer
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(scaled, unit, atol=1e-6)


# ── the exact kind's bf16 screen: the same answers as IndexFlatIP, certified or searched again ──


@pytest.fixture(params=["torch and numpy", "compiled steps"])
def screening(request, monkeypatch):
    """Every exact search screened, whatever its size or this CPU, its candidates chosen and re-ranked each way."""
    from core.search import screen

    monkeypatch.setattr(screen, "SCREEN_MIN_CELLS", 0)
    monkeypatch.setattr(screen, "SCREEN_ROWS_PER_CANDIDATE", 0)
    monkeypatch.setattr(screen, "COMPILED_ROWS_PER_CANDIDATE", 0)
    monkeypatch.setattr(screen, "MANY_CANDIDATES_ROWS", 0)
    monkeypatch.setattr(screen, "SCREEN_MIN_DIMS", 0)
    monkeypatch.setattr(screen, "bf16_native", lambda: True)
    if request.param == "compiled steps":
        screen.load_compiled().result()  # loaded before the first block, not after
    else:
        monkeypatch.setattr(screen, "COMPILED_MIN_ROWS", np.inf)
        monkeypatch.setattr(screen, "_compiled_loading", None)
    return request.param


def near_tied_rows(rng, d=32):
    """Unit rows with duplicates and near-twins (scores within 1e-3 of each other), and queries near them."""
    base = clustered_rows(rng, 400, d, clusters=20)
    duplicates = base[rng.integers(0, len(base), 150)]
    twins = base[rng.integers(0, len(base), 150)] + 2e-4 * rng.normal(size=(150, d))
    rows = np.vstack(
        [base, duplicates, twins / np.linalg.norm(twins, axis=1, keepdims=True)]
    ).astype(np.float32)
    queries = np.vstack(
        [clustered_rows(rng, 50, d, clusters=20), rows[rng.integers(0, len(rows), 30)]]
    )
    return rows, queries


def assert_same_as_flat_ip(found, rows, queries, k, allowed=None):
    """Similarities as FAISS gives them (to 1e-6), and the same rows wherever a similarity is not tied."""
    flat = faiss.IndexFlatIP(rows.shape[1])
    flat.add(rows)
    selector = None
    if allowed is not None:
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.SearchParameters(
            sel=faiss.IDSelectorBitmap(len(rows), faiss.swig_ptr(bits))
        )
    expected, expected_rows = flat.search(queries, k + 1, params=selector)
    np.testing.assert_allclose(found.similarities, expected[:, :k], atol=1e-6)
    np.testing.assert_allclose(
        found.similarities, np.einsum("qd,qkd->qk", queries, rows[found.indices]), atol=1e-6
    )
    gaps = np.diff(expected, axis=1)
    untied = np.ones((len(queries), k), bool)
    untied[:, 1:] &= gaps[:, :-1] < -1e-6
    untied &= gaps < -1e-6
    np.testing.assert_array_equal(found.indices[untied], expected_rows[:, :k][untied])
    if allowed is not None:
        assert allowed[found.indices].all()


@pytest.mark.parametrize(
    ("k", "allowed_share"),
    [
        (5, None),
        (5, 0.3),
        (12, 0.05),
    ],  # the last: fewer allowed rows than 2·k + the margin, so all are candidates
)
def test_screened_search_equals_flat_ip_with_near_ties(screening, k, allowed_share):
    rng = np.random.default_rng(8)
    rows, queries = near_tied_rows(rng)
    allowed = None if allowed_share is None else rng.random(len(rows)) < allowed_share
    queries.setflags(write=False)  # as vectors read from Arrow come
    index = VectorIndex(rows, "exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = index.search(queries, k, allowed)
    assert_same_as_flat_ip(found, rows, queries, k, allowed)
    assert index.screened_queries == len(queries)
    # most queries are certified: the screen answered them
    assert index.rechecked_queries < len(queries) / 2
    assert "bf16 screen, fp32 re-rank" in index.settings


def rows_scoring(rng, centre, scores):
    """Unit rows whose inner products with the unit `centre` are `scores`, in random directions away from it."""
    away = unit_rows(rng, len(scores), len(centre))
    away -= np.outer(away @ centre, centre)
    away /= np.linalg.norm(away, axis=1, keepdims=True)
    return (scores[:, None] * centre + np.sqrt(1 - scores[:, None] ** 2) * away).astype(np.float32)


def test_queries_the_screen_cannot_separate_are_searched_again_exactly(screening):
    rng = np.random.default_rng(9)
    centre = unit_rows(rng, 1, 64)[0]
    # 300 rows scoring 0.9 down to 0.897 against the centre, 1e-5 apart: bf16 (2⁻⁸ relative) cannot
    # order them, so no screened top 25, nor the top 100 of a deeper look, can be certified to hold
    # the top 5. FAISS can order them.
    scores = 0.9 - 1e-5 * np.arange(300)
    rows = rows_scoring(rng, centre, scores)
    queries = (centre + 1e-3 * rng.normal(size=(25, 64))).astype(np.float32)
    index = VectorIndex(rows, "exact")
    found = index.search(queries, 5)
    assert index.rechecked_queries == len(queries)
    assert f"{len(queries)} of {len(queries)} queries searched again with FAISS" in index.settings
    flat = faiss.IndexFlatIP(64)
    flat.add(rows)
    expected_similarities, expected_rows = flat.search(queries, 5)
    np.testing.assert_array_equal(found.indices, expected_rows)
    np.testing.assert_array_equal(found.similarities, expected_similarities)


def test_queries_whose_candidates_are_too_few_get_a_deeper_look_before_faiss(screening):
    from core.search.screen import DEEPER, SCREEN_MARGIN

    rng = np.random.default_rng(15)
    centre = unit_rows(rng, 1, 64)[0]
    # 40 rows bf16 cannot order (0.9 down to 0.898, 5e-5 apart): more than the k + margin candidates
    # of a first look, fewer than a look DEEPER times as deep; the other 260 score at most 0.5.
    assert 5 + SCREEN_MARGIN < 40 < DEEPER * (5 + SCREEN_MARGIN)
    scores = np.r_[0.9 - 5e-5 * np.arange(40), np.linspace(0.5, 0.0, 260)]
    rows = rows_scoring(rng, centre, scores)
    queries = (centre + 1e-4 * rng.normal(size=(25, 64))).astype(np.float32)
    index = VectorIndex(rows, "exact")
    found = index.search(queries, 5)
    assert index.screened_queries == len(queries) and index.rechecked_queries == 0
    assert_same_as_flat_ip(found, rows, queries, 5)


@pytest.mark.parametrize(
    ("flags", "screened"),
    [
        ("fpu sse avx512f avx512_bf16", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_the_screen_runs_where_the_cpu_multiplies_bf16_natively(
    tmp_path, monkeypatch, flags, screened
):
    from core.search import screen

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(screen, "bf16_native", screen.bf16_native.__wrapped__)
    monkeypatch.setattr(
        "core.embedding.clip.cpu_flags", partial(core.embedding.clip.cpu_flags, cpuinfo)
    )
    rng = np.random.default_rng(16)
    index = VectorIndex(unit_rows(rng, 3000, 512))
    index.search(unit_rows(rng, 2000, 512), 5)
    assert (index.screened_queries == 2000) is screened


@pytest.mark.parametrize(
    ("n_rows", "dims", "k", "screened"),
    [(4000, 512, 5, True), (4000, 128, 5, False), (4000, 512, 60, False), (60_000, 256, 60, True)],
)  # few dimensions, or many candidates for the rows, are FAISS's
def test_the_screen_takes_searches_by_their_dimensions_and_candidates(
    monkeypatch, n_rows, dims, k, screened
):
    from core.search import screen

    monkeypatch.setattr(screen, "bf16_native", lambda: True)
    monkeypatch.setattr(screen, "_compiled_loading", None)  # the bounds of torch.topk's screen
    assert screen.screen_pays(2000, n_rows, k, dims) is screened


def test_small_searches_stay_with_faiss():
    rng = np.random.default_rng(10)
    index = VectorIndex(unit_rows(rng, 500, 16))
    index.search(unit_rows(rng, 20, 16), 5)
    assert index.screened_queries == 0 and index.settings == "exact inner product over every vector"


@pytest.mark.parametrize(
    ("n_rows", "m"), [(3000, 25), (1000, 1), (37, 37), (200, 60), (5, 2)]
)  # many groups, one candidate, all rows, fewer groups than candidates, one-row groups
def test_compiled_selection_keeps_each_rows_best_scores_as_topk_does(n_rows, m):
    import torch

    from core.search.compiled import top_scores

    rng = np.random.default_rng(13)
    # bf16 scores of both signs, with zeros of both signs and many exact ties
    values = np.round(rng.normal(0, 0.3, (40, n_rows)), 2).astype(np.float32)
    values[:, ::7] = -0.0
    values[:, 1::11] = 0.0
    scores = torch.from_numpy(values).bfloat16()
    bits = scores.view(torch.int16).numpy().view(np.uint16)
    for threads in (1, 3):
        best, columns = top_scores(bits, m, threads)
        expected = torch.topk(scores, m, dim=1).values.float().numpy()
        np.testing.assert_array_equal(
            torch.from_numpy(best.view(np.int16)).view(torch.bfloat16).float().numpy(), expected
        )
        np.testing.assert_array_equal(np.take_along_axis(bits, columns, 1), best)
        # equal scores (-0 and +0 among them): the earlier column first, and no column twice
        tied = expected[:, 1:] == expected[:, :-1]
        assert (columns[:, 1:][tied] > columns[:, :-1][tied]).all() and (tied.any() or m == 1)
        assert all(len(set(row)) == m for row in columns)


def test_compiled_re_rank_equals_numpys_products_up_to_their_order():
    from core.search.compiled import exact_scores

    rng = np.random.default_rng(14)
    vectors = unit_rows(rng, 500, 48)
    queries = unit_rows(rng, 30, 48)
    queries.setflags(write=False)
    candidates = rng.integers(0, 500, (30, 9))
    widths = rng.integers(0, 10, 30)
    for threads in (1, 2):
        exact = exact_scores(vectors, queries, candidates, widths, threads)
        expected = np.einsum("qcd,qd->qc", vectors[candidates], queries)
        within = np.arange(9) < widths[:, None]
        np.testing.assert_allclose(exact[within], expected[within], atol=1e-6)
        assert (exact[~within] == -np.inf).all()


def test_compiled_selection_refuses_more_candidates_than_rows():
    from core.search.compiled import top_scores

    with pytest.raises(ValueError, match="m must be between 1 and the 4 rows, got 5"):
        top_scores(np.zeros((2, 4), np.uint16), 5, 1)


def test_bf16_rounding_in_numpy_matches_torch_bit_for_bit():
    import torch

    from core.search.screen import bf16_bits, widened

    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    # halfway cases (ties to even, both parities), subnormals, the largest finite values and zeros
    halfway = (rng.integers(0, 2**16, 1000).astype(np.uint32) << 16) | 0x8000
    edges = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000], np.uint32)
    values = np.concatenate([bits, halfway, edges]).view(np.float32)
    values = values[np.isfinite(values)]
    expected = torch.from_numpy(values.copy()).bfloat16().view(torch.int16).numpy()
    np.testing.assert_array_equal(bf16_bits(values), expected.view(np.uint16))
    np.testing.assert_array_equal(
        widened(bf16_bits(values)), torch.from_numpy(values.copy()).bfloat16().float().numpy()
    )


def test_screened_search_over_many_blocks_with_a_short_last_one_equals_flat_ip(
    screening, monkeypatch
):
    from core.search import screen

    monkeypatch.setattr(screen, "SCREEN_CELLS_PER_BLOCK", 1)
    monkeypatch.setattr(screen, "SCREEN_QUERIES_PER_BLOCK", (7, 7))
    rng = np.random.default_rng(12)
    rows, queries = near_tied_rows(rng)
    assert len(queries) % 7
    index = VectorIndex(rows, "exact")
    found = index.search(queries, 5)
    assert_same_as_flat_ip(found, rows, queries, 5)
    assert index.screened_queries == len(queries)
