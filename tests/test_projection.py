"""Tests for core.maps.projection: quality floors on seeded clusters, clamping, validation, cache."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from core.maps.projection import (
    PROJECTION_METHODS,
    Projection,
    ProjectionCache,
    ProjectionConfig,
    compile_in_child_process,
    project,
    projection_key,
    quality,
    warm_up,
)

N_TRAIN, N_TEST, N_CLUSTERS = 200, 300, 5


@pytest.fixture(scope="module")
def blobs():
    vectors, clusters = make_blobs(
        n_samples=N_TRAIN + N_TEST,
        n_features=64,
        centers=N_CLUSTERS,
        cluster_std=3.0,
        random_state=0,
    )
    return vectors[:N_TRAIN], vectors[N_TRAIN:], clusters[:N_TRAIN], clusters[N_TRAIN:]


@pytest.fixture(scope="module")
def stages_and_projections(blobs):
    """One projection per method, shared by every test: UMAP's first fit pays numba's compile."""
    train, test, _, _ = blobs
    stages = {}
    projections = {}
    for method in PROJECTION_METHODS:
        stages[method] = []
        projections[method] = project(
            train, test, ProjectionConfig(method=method), stages[method].append
        )
    return stages, projections


@pytest.mark.parametrize("method", PROJECTION_METHODS)
def test_projection_keeps_neighbourhoods_trustworthy(blobs, stages_and_projections, method):
    train, test, _, _ = blobs
    projection = stages_and_projections[1][method]
    assert projection.train_xy.shape == (N_TRAIN, 2) and projection.test_xy.shape == (N_TEST, 2)
    both = np.vstack([projection.train_xy, projection.test_xy])
    assert quality(np.vstack([train, test]), both, n_neighbors=10) > 0.85


@pytest.mark.parametrize("method", PROJECTION_METHODS)
def test_test_points_land_near_their_clusters_train_points(blobs, stages_and_projections, method):
    _, _, train_clusters, test_clusters = blobs
    projection = stages_and_projections[1][method]
    centroids = np.array(
        [projection.train_xy[train_clusters == c].mean(axis=0) for c in range(N_CLUSTERS)]
    )
    distances = np.linalg.norm(projection.test_xy[:, None, :] - centroids[None, :, :], axis=2)
    assert np.mean(distances.argmin(axis=1) == test_clusters) > 0.9


def test_progress_reports_each_stage(stages_and_projections):
    stages = stages_and_projections[0]
    assert stages["umap"] == ["PCA", "UMAP fit", "UMAP transform"]
    rounds = [f"t-SNE fit: round {done} of 750" for done in range(50, 751, 50)]
    assert stages["tsne"] == ["PCA", "t-SNE neighbours", "t-SNE fit", *rounds]
    assert stages["pca"] == ["PCA"]


def test_notes_are_empty_when_nothing_was_adjusted(stages_and_projections):
    projections = stages_and_projections[1]
    assert all(projection.notes == [] for projection in projections.values())


@pytest.mark.parametrize(
    ("method", "n_train", "n_test", "expected_notes"),
    [
        ("umap", 5, 0, ["n_neighbors lowered from 15 to 4"]),
        ("umap", 5, 3, ["fitted on train and test together", "n_neighbors lowered from 15 to 7"]),
        (
            "umap",
            2,
            1,
            ["UMAP needs at least 4 points", "PCA was fitted on train and test together"],
        ),
        ("tsne", 5, 0, ["perplexity lowered from 30 to 1.33333"]),
        (
            "tsne",
            1,
            1,
            ["t-SNE needs at least 3 points", "PCA was fitted on train and test together"],
        ),
        ("pca", 1, 0, ["drawn at the origin"]),
    ],
)
def test_tiny_inputs_are_clamped_with_notes(method, n_train, n_test, expected_notes):
    rng = np.random.default_rng(1)
    projection = project(
        rng.normal(size=(n_train, 64)),
        rng.normal(size=(n_test, 64)),
        ProjectionConfig(method=method),
    )
    assert projection.train_xy.shape == (n_train, 2) and projection.test_xy.shape == (n_test, 2)
    assert np.isfinite(projection.train_xy).all() and np.isfinite(projection.test_xy).all()
    assert len(projection.notes) == len(expected_notes)
    for note, expected in zip(projection.notes, expected_notes):
        assert expected in note


@pytest.mark.parametrize("method", PROJECTION_METHODS)
@pytest.mark.parametrize("empty_test", [np.empty((0, 64)), np.empty(0)])
def test_zero_test_rows(blobs, method, empty_test):
    train = blobs[0][:40]
    projection = project(train, empty_test, ProjectionConfig(method=method, perplexity=5.0))
    assert projection.train_xy.shape == (40, 2) and projection.test_xy.shape == (0, 2)
    assert np.isfinite(projection.train_xy).all()


@pytest.mark.parametrize("method", PROJECTION_METHODS)
def test_same_seed_gives_the_same_map_and_another_seed_does_not(blobs, method):
    train, test = blobs[0][:60], blobs[1][:20]
    runs = [project(train, test, ProjectionConfig(method=method, seed=seed)) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0].train_xy, runs[1].train_xy)
    np.testing.assert_array_equal(runs[0].test_xy, runs[1].test_xy)
    if method != "pca":  # PCA has no randomness to seed
        assert not np.allclose(runs[0].train_xy, runs[2].train_xy)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "lda", r"method 'lda' is not known; use one of \('umap', 'tsne', 'pca'\)"),
        ("pca_first", 1, r"pca_first=1: use an integer >= 2, or None"),
        ("n_neighbors", 1, r"n_neighbors=1: use an integer >= 2"),
        ("n_neighbors", 7.5, r"n_neighbors=7.5"),
        ("min_dist", 1.5, r"min_dist=1.5: use a number between 0 and 1"),
        ("perplexity", 0, r"perplexity=0: use a number > 0"),
        ("metric", "hamming", r"metric 'hamming' is not supported; use one of \('cosine'"),
        ("seed", -1, r"seed=-1: use an integer >= 0"),
        ("seed", True, r"seed=True: use an integer >= 0"),
        ("tsne_limit", 2, r"tsne_limit=2: use an integer >= 3, or None for all points"),
        ("tsne_limit", 1e4, r"tsne_limit=10000.0: use an integer >= 3"),
        ("min_dist", "0.1", r"min_dist='0.1': use a number between 0 and 1"),
        ("perplexity", float("nan"), r"perplexity=nan: use a number > 0"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ProjectionConfig(**{field: value})


def test_config_accepts_pca_off_and_all_points_for_tsne():
    assert ProjectionConfig(pca_first=None).pca_first is None
    assert ProjectionConfig(tsne_limit=None).tsne_limit is None


def test_tsne_above_its_limit_fits_a_sample_places_the_rest_and_says_so(
    blobs, stages_and_projections
):
    train, test, train_clusters, test_clusters = blobs
    stages = []
    sampled = project(train, test, ProjectionConfig(method="tsne", tsne_limit=150), stages.append)
    assert sampled.notes == [
        "t-SNE was fitted on a random sample of 150 of the 500 points; each other point sits at the "
        "median position of its 10 nearest fitted points"
    ]
    assert stages[-1] == "t-SNE placement"
    # Placed points land in their cluster: a floor on map quality and on cluster agreement.
    assert quality(np.vstack([train, test]), np.vstack([sampled.train_xy, sampled.test_xy])) > 0.85
    centroids = np.array(
        [sampled.train_xy[train_clusters == c].mean(axis=0) for c in range(N_CLUSTERS)]
    )
    nearest_centroid = np.linalg.norm(sampled.test_xy[:, None] - centroids[None], axis=2).argmin(
        axis=1
    )
    assert np.mean(nearest_centroid == test_clusters) > 0.9
    # At or under the limit every point is fitted, and None lifts the limit.
    for limit in (N_TRAIN + N_TEST, None):
        whole = project(train, test, ProjectionConfig(method="tsne", tsne_limit=limit))
        np.testing.assert_array_equal(whole.train_xy, stages_and_projections[1]["tsne"].train_xy)
        assert whole.notes == []


def test_config_stores_numpy_numbers_as_plain_ones_so_keys_match():
    from_numpy = ProjectionConfig(
        n_neighbors=np.int64(15), min_dist=np.float32(0.25), perplexity=30
    )
    plain = ProjectionConfig(n_neighbors=15, min_dist=float(np.float32(0.25)), perplexity=30.0)
    assert repr(from_numpy) == repr(plain)
    assert type(from_numpy.n_neighbors) is int and type(from_numpy.perplexity) is float


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        (
            np.empty((0, 8)),
            np.empty((0, 8)),
            r"train vectors must be a 2-D array of shape \(rows ≥ 1, dimensions ≥ 2\); got shape \(0, 8\)",
        ),
        (np.ones(8), np.empty((0, 8)), r"got shape \(8,\)"),
        (
            np.ones((5, 8)),
            np.ones((3, 9)),
            r"must be 2-D with 8 dims like train; got shape \(3, 9\)",
        ),
        (
            np.ones((5, 8)),
            np.full((3, 8), np.nan),
            r"test vectors have NaN or infinite values in 3 of 3 rows \(first at row 0\)",
        ),
    ],
)
def test_project_rejects_bad_vectors(train, test, message):
    with pytest.raises(ValueError, match=message):
        project(train, test, ProjectionConfig(method="pca"))


def test_cache_round_trip_is_identical(tmp_path, stages_and_projections):
    cache = ProjectionCache(tmp_path / "projections")
    stored = stages_and_projections[1]["umap"]
    stored_with_note = Projection(stored.train_xy, stored.test_xy, ["a note"], stored.config)
    rows = len(stored.train_xy), len(stored.test_xy)
    assert cache.get("missing", *rows) is None
    cache.put("key", stored_with_note)
    loaded = cache.get("key", *rows)
    np.testing.assert_array_equal(loaded.train_xy, stored.train_xy)
    np.testing.assert_array_equal(loaded.test_xy, stored.test_xy)
    assert loaded.train_xy.dtype == stored.train_xy.dtype == np.float32
    assert loaded.notes == ["a note"] and loaded.config == stored.config
    assert [path.name for path in (tmp_path / "projections").iterdir()] == ["key.npz"]


def test_cache_treats_an_unreadable_file_as_missing_and_deletes_it(tmp_path):
    cache = ProjectionCache(tmp_path)
    cache.path("broken").write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match=r"stored projection broken\.npz cannot be read"):
        assert cache.get("broken", 3, 2) is None
    assert not cache.path("broken").exists()


def test_cache_that_cannot_be_written_warns_instead_of_failing(tmp_path, stages_and_projections):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    cache = ProjectionCache(not_a_directory)
    with pytest.warns(UserWarning, match="projection not cached in .*file"):
        cache.put("key", stages_and_projections[1]["pca"])
    assert cache.get("key", 3, 2) is None


def test_cache_write_leaves_no_temporary_files(tmp_path, stages_and_projections):
    cache = ProjectionCache(tmp_path)
    for key in ("a", "b", "a"):
        cache.put(key, stages_and_projections[1]["pca"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.npz", "b.npz"]


def test_projection_key_follows_data_config_and_split(blobs):
    train, test = blobs[0][:30], blobs[1][:10]
    key = projection_key(train, test, ProjectionConfig())
    assert key == projection_key(train.copy(), test.copy(), ProjectionConfig())
    assert len(key) == 64
    assert key != projection_key(train, test, ProjectionConfig(seed=1))
    assert key != projection_key(train, test, ProjectionConfig(method="pca"))
    assert key != projection_key(train[:-1], test, ProjectionConfig())
    # The same rows split differently are a different projection.
    assert key != projection_key(train[:-1], np.vstack([train[-1:], test]), ProjectionConfig())
    assert key != projection_key(train.astype(np.float32), test, ProjectionConfig())


def test_quality_ranks_a_faithful_map_above_a_random_one(blobs):
    train = blobs[0]
    faithful = train[:, :2]
    flat = np.hstack([faithful, np.zeros((len(train), 62))])
    random_map = np.random.default_rng(0).normal(size=(len(train), 2))
    assert quality(flat, faithful, metric="euclidean") == pytest.approx(1.0)
    assert quality(train, random_map) < 0.7


def test_quality_clamps_neighbours_for_few_rows_and_is_nan_below_three():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="n_neighbors lowered from 10 to 2 for 6 rows"):
        assert 0.0 <= quality(rng.normal(size=(6, 8)), rng.normal(size=(6, 2))) <= 1.0
    assert np.isnan(quality(rng.normal(size=(2, 8)), rng.normal(size=(2, 2))))
    with pytest.raises(ValueError, match="high_dim has 6 rows but low_dim has 5"):
        quality(rng.normal(size=(6, 8)), rng.normal(size=(5, 2)))


def test_warm_up_runs():
    warm_up()


def child_priorities(parent: int) -> set[int]:
    """The nice values of `parent`'s running children once they have lowered it (Linux /proc), ignoring any still at
    the parent's own, which they start from."""
    found, own = set(), os.nice(0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state, ppid, ... nice is the 19th field of the line, the 17th after ")"
        if int(fields[1]) == parent and int(fields[16]) != own:
            found.add(int(fields[16]))
    return found


def test_a_child_process_keeps_umaps_compiled_functions_for_the_server_to_load(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    with ThreadPoolExecutor(1) as pool:
        compiled = pool.submit(compile_in_child_process)
        priorities = set()
        while not compiled.done():
            priorities |= child_priorities(os.getpid())
            time.sleep(0.05)
    assert compiled.result()
    # it yields the cores to the browser and the server a user is looking at
    assert priorities == {19}, priorities
    kept = {path.name.split("-")[0] for path in tmp_path.glob("umap*/*.nbc")}
    # the fuzzy graph and the layout, which umap-learn itself leaves to compile in every process
    assert {
        "umap_.smooth_knn_dist",
        "umap_.compute_membership_strengths",
        "layouts._optimize_layout_euclidean_single_epoch",
    } <= kept, kept


# ── the fast UMAP path: exact neighbours from FAISS, umap's transform without its per-row Python ──


@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean", "manhattan"])
def test_nearest_equals_brute_force_for_every_metric(blobs, metric):
    from sklearn.metrics import pairwise_distances

    from core.maps.projection import _nearest

    train, test = blobs[0].astype(np.float32), blobs[1].astype(np.float32)
    indices, distances = _nearest(test, train, metric, 15)
    expected = np.sort(pairwise_distances(test, train, metric=metric), axis=1)[:, :15]
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
    true_distances = pairwise_distances(test, train, metric=metric)
    np.testing.assert_allclose(
        np.take_along_axis(true_distances, indices, axis=1), expected, rtol=1e-4, atol=1e-4
    )


def test_nearest_among_the_same_rows_puts_each_row_first_at_distance_zero(blobs):
    from core.maps.projection import _nearest

    train = np.vstack([blobs[0], blobs[0][:3]])  # three exact duplicates compete for first place
    indices, distances = _nearest(train, train, "cosine", 15, same_rows=True)
    assert (distances[:, 0] == 0).all() and (distances[:, 1:] >= 0).all()
    assert (np.diff(distances, axis=1) >= 0).all()
    assert (indices == np.arange(len(train))[:, None]).any(axis=1).all()


def test_umap_fitted_on_given_neighbours_has_umaps_own_neighbour_graph(blobs):
    import umap

    from core.maps.projection import _nearest

    train = blobs[0]
    settings = {"n_neighbors": 15, "random_state": 0, "n_jobs": 1, "metric": "cosine"}
    own = umap.UMAP(**settings).fit(train)
    with pytest.warns(UserWarning, match="knn_search_index"):
        given = umap.UMAP(
            precomputed_knn=_nearest(train, train, "cosine", 15, same_rows=True), **settings
        ).fit(train)
    assert (
        (own.graph_ != 0).nnz
        == (given.graph_ != 0).nnz
        == ((own.graph_ != 0).multiply(given.graph_ != 0)).nnz
    )
    # strengths in [0, 1]; FAISS works in float32
    assert abs(own.graph_ - given.graph_).max() < 1e-4


@pytest.mark.parametrize(
    ("duplicate_a_train_row", "settings"),
    [
        (False, {}),
        (True, {}),
        # _place derives the curve (a, b), learning rate and disconnection distance from umap's public
        # parameters as its fit does: settings away from the defaults show it follows them.
        (
            False,
            {"min_dist": 0.5, "spread": 1.5, "learning_rate": 0.5, "disconnection_distance": 0.9},
        ),
        (False, {"a": 1.2, "b": 0.8, "metric": "euclidean"}),
    ],
)
def test_placing_test_rows_equals_umaps_own_transform(blobs, duplicate_a_train_row, settings):
    import umap
    from sklearn.metrics import pairwise_distances
    from umap.distances import named_distances

    from core.maps.projection import _place

    train, test = blobs[0].astype(np.float32), blobs[1].astype(np.float32)
    if duplicate_a_train_row:  # strength 1: umap puts such a row exactly on its twin
        test[:5] = train[:5]
    settings = {"metric": "cosine", "n_neighbors": 15, "random_state": 0, "n_jobs": 1, **settings}
    # n_epochs unset: umap's transform then picks its layout rounds by size, as _place does.
    fitted = umap.UMAP(**settings).fit(train)
    expected = fitted.transform(test)
    # The neighbours umap's transform finds for a small fit: its own distance on all pairs.
    distances = pairwise_distances(test, train, metric=named_distances[settings["metric"]])
    indices = np.argsort(distances, axis=1, kind="stable")[:, :15]
    placed = _place(fitted, indices, np.take_along_axis(distances, indices, axis=1))
    np.testing.assert_array_equal(placed, expected)


def test_train_sets_above_the_exact_neighbour_limit_use_umaps_own_neighbours(blobs, monkeypatch):
    import core.maps.projection

    train, test = blobs[0], blobs[1]
    monkeypatch.setattr(core.maps.projection, "EXACT_NEIGHBOURS_UP_TO", len(train) - 1)
    nearest, searches = core.maps.projection._nearest, []

    def watched_nearest(rows, to, *args, **kwargs):
        searches.append((len(rows), len(to)))
        return nearest(rows, to, *args, **kwargs)

    monkeypatch.setattr(core.maps.projection, "_nearest", watched_nearest)
    projection = project(train, test, ProjectionConfig())
    assert searches == [(len(test), len(train))], (
        "only test rows should be searched: the fit finds its own"
    )
    assert (
        quality(np.vstack([train, test]), np.vstack([projection.train_xy, projection.test_xy]))
        > 0.85
    )
