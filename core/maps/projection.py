"""2-D projections of train and test embeddings (UMAP, t-SNE, PCA) and their cache."""

from __future__ import annotations

import functools
import json
import numbers
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from core.io.array_store import ArrayStore, arrays_digest
from core.paths import workspace_home
from core.search.index import checked_vectors, unit_rows

# Maps kept under the workspace home, one file per vectors and config.
PROJECTIONS_FOLDER = "projections"

PROJECTION_METHODS = ("umap", "tsne", "pca")
# Each method as people write it, for every text a user reads (option values stay lower-case).
METHOD_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
# The option values beside those names, for an option's help.
METHOD_CHOICES = ", ".join(f"{method} ({METHOD_NAMES[method]})" for method in PROJECTION_METHODS)
# Metrics umap-learn accepts by name and _nearest computes exactly for t-SNE.
METRICS = ("cosine", "euclidean", "correlation", "manhattan")
# Fewer rows than this make UMAP's spectral initialisation fail (k >= N).
MIN_UMAP_ROWS = 4
# t-SNE's PCA initialisation needs two directions, which takes three points.
MIN_TSNE_ROWS = 3
# Part of every cache key: bump when the stored layout or the algorithms' use changes.
CACHE_FORMAT = "projection-v4"
# Layout rounds: umap-learn's choice for 10k rows or more. Its 500 for smaller sets doubles the fit
# time of a 3k-row train set without better trustworthiness (BENCHMARKS.md, section 4).
UMAP_EPOCHS = 200
# Layout rounds when placing test rows, as umap-learn's transform picks them by the number of rows.
PLACEMENT_EPOCHS_UP_TO_10K = 100
PLACEMENT_EPOCHS_ABOVE_10K = 30
# t-SNE fits at most this many points unless asked for all: openTSNE takes about 20 s for 16k
# (bench/projection.py) and grows faster than linearly, with the map's spread, beyond that.
TSNE_SAMPLE_LIMIT = 20_000
# openTSNE's own schedule: 250 early-exaggeration rounds, then 500; progress is reported every 50.
TSNE_ROUNDS = (250, 500)
TSNE_PROGRESS_EVERY = 50
# openTSNE interpolates the repulsive forces on a grid with this many of the map's units per interval.
# Its default 1 makes each round cost grow with the map's spread: 57 s at 16k clustered points against
# 19 s for 2, for trustworthiness 0.911 against 0.905 (3: 0.886).
TSNE_UNITS_PER_GRID_INTERVAL = 2
# Unfitted points are placed at the median position of this many nearest fitted points.
TSNE_PLACEMENT_NEIGHBOURS = 10
# Up to this many train rows the fit's neighbours are exact (FAISS brute force: about 4 s at 50k).
# Above, umap-learn's NN-descent finds them approximately, and compiles for about 30 s once per process.
EXACT_NEIGHBOURS_UP_TO = 50_000
# A compile in a child process that takes longer than this is left to finish in the server's own.
CHILD_COMPILE_TIMEOUT_SECONDS = 300
# umap warns that given neighbours come without its search index; this module never needs it.
_NO_SEARCH_INDEX_WARNING = "precomputed_knn.2. .knn_search_index. is not an NNDescent object"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProjectionConfig:
    """How to lay embeddings out in two dimensions."""

    method: str = "umap"  # "umap", "tsne" or "pca"
    # PCA to this many dims before UMAP/t-SNE (speed, denoising); None = off
    pca_first: int | None = 50
    n_neighbors: int = 15  # UMAP: neighbourhood size; larger keeps more global structure
    min_dist: float = 0.1  # UMAP: how tightly points may pack, in [0, 1]
    perplexity: float = 30.0  # t-SNE: effective number of neighbours
    metric: str = "cosine"  # distance between embeddings (CLIP vectors compare by angle)
    seed: int = 0  # random state: same inputs and seed, same map
    # t-SNE: fit at most this many points, place the rest; None = all
    tsne_limit: int | None = TSNE_SAMPLE_LIMIT

    def __post_init__(self) -> None:
        if self.method not in PROJECTION_METHODS:
            raise ValueError(
                f"method {self.method!r} is not known; use one of {PROJECTION_METHODS}"
            )
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not supported; use one of {METRICS}")
        if self.pca_first is not None:
            self._normalise(
                "pca_first", numbers.Integral, "an integer >= 2, or None", lambda v: v >= 2
            )
        self._normalise("n_neighbors", numbers.Integral, "an integer >= 2", lambda v: v >= 2)
        self._normalise("min_dist", numbers.Real, "a number between 0 and 1", lambda v: 0 <= v <= 1)
        self._normalise("perplexity", numbers.Real, "a number > 0", lambda v: v > 0)
        self._normalise("seed", numbers.Integral, "an integer >= 0", lambda v: v >= 0)
        if self.tsne_limit is not None:
            allowed = f"an integer >= {MIN_TSNE_ROWS}, or None for all points"
            self._normalise("tsne_limit", numbers.Integral, allowed, lambda v: v >= MIN_TSNE_ROWS)

    def _normalise(self, name: str, kind: type, allowed: str, is_allowed: Callable) -> None:
        """Check a number field, then store it as a plain int or float.

        Plain numbers keep repr (part of the cache key) and JSON (the cache file) canonical:
        numpy.int64(15) and 15 are the same config.
        """
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, kind) or not is_allowed(value):
            raise ValueError(f"{name}={value!r}: use {allowed}")
        object.__setattr__(self, name, int(value) if kind is numbers.Integral else float(value))


# eq=False: fields are arrays, whose == is element-wise rather than a truth value.
@dataclass(frozen=True, eq=False)
class Projection:
    """2-D coordinates for train and test rows, in the order they were given."""

    train_xy: np.ndarray  # (n_train, 2) float32
    test_xy: np.ndarray  # (n_test, 2) float32, in the same coordinates as train_xy
    notes: list[str]  # adjustments made to the config (clamps, fallbacks), for people to read
    config: ProjectionConfig  # what was asked for


def project(
    train_vectors: np.ndarray,
    test_vectors: np.ndarray,
    config: ProjectionConfig = ProjectionConfig(),
    progress: Progress | None = None,
) -> Projection:
    """Lay train and test vectors out in 2-D; test rows land in the coordinates of the train map.

    UMAP and PCA are fitted on train and place test rows with ``transform``; t-SNE has no
    transform, so it is fitted on train and test together. Sizes too small for the configured
    parameters are clamped, and each adjustment is explained in ``Projection.notes``.
    """
    train, test = _checked_rows(train_vectors, test_vectors)
    report = progress or (lambda stage: None)
    notes: list[str] = []
    if config.method == "umap":
        train_xy, test_xy = _umap(train, test, config, notes, report)
    elif config.method == "tsne":
        train_xy, test_xy = _tsne(train, test, config, notes, report)
    else:
        train_xy, test_xy = _pca(train, test, config, notes, report)
    return Projection(train_xy.astype(np.float32), test_xy.astype(np.float32), notes, config)


def _checked_rows(
    train_vectors: np.ndarray, test_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    train = checked_vectors(
        train_vectors, "train vectors", min_rows=1, min_dims=2, dtype=np.float64
    )
    test = np.asarray(test_vectors, dtype=np.float64)
    if test.size == 0:
        test = test.reshape(0, train.shape[1])
    if test.ndim != 2 or test.shape[1] != train.shape[1]:
        raise ValueError(
            f"test vectors must be 2-D with {train.shape[1]} dims like train; got shape {test.shape}"
        )
    return train, checked_vectors(test, "test vectors", dtype=np.float64)


def _pca_first(
    config: ProjectionConfig, report: Progress, fit_rows: np.ndarray, *other_rows: np.ndarray
):
    """Reduce to ``config.pca_first`` dims, fitted on ``fit_rows``; a no-op when already small."""
    if config.pca_first is None or fit_rows.shape[1] <= config.pca_first:
        return (fit_rows, *other_rows)
    report("PCA")
    # n centred rows span at most n - 1 directions: more components would keep nothing.
    # An exact eigendecomposition of the dims × dims covariance: for embeddings (a few hundred dims)
    # it is faster than the default randomized SVD, and keeps more of the variance.
    n_components = min(config.pca_first, len(fit_rows) - 1)
    pca = PCA(n_components, svd_solver="covariance_eigh", random_state=config.seed).fit(fit_rows)
    return tuple(_transform(pca, rows) for rows in (fit_rows, *other_rows))


def _transform(pca: PCA, rows: np.ndarray) -> np.ndarray:
    # scikit-learn refuses zero rows; an empty test set is still a valid input.
    return pca.transform(rows) if len(rows) else np.empty((0, pca.n_components_))


def _pca(train, test, config: ProjectionConfig, notes: list[str], report: Progress):
    """Two principal axes fitted on train, or on train and test when train cannot define them."""
    fit_rows = train
    if len(train) < 3 and len(test) > 0:
        notes.append(
            f"only {len(train)} train points, too few for two PCA axes: "
            "PCA was fitted on train and test together"
        )
        fit_rows = np.vstack([train, test])
    report("PCA")
    n_components = min(2, len(fit_rows) - 1, train.shape[1])
    if n_components == 0:
        notes.append("a single point has no spread: it is drawn at the origin")
        return np.zeros((len(train), 2)), np.zeros((len(test), 2))
    pca = PCA(n_components, random_state=config.seed).fit(fit_rows)
    return tuple(
        np.pad(_transform(pca, rows), ((0, 0), (0, 2 - n_components))) for rows in (train, test)
    )


def _joint_fit(train, test, config: ProjectionConfig, report: Progress, stage: str, fit_transform):
    """Fit on train and test stacked, then split the coordinates back into the two sets."""
    (both,) = _pca_first(config, report, np.vstack([train, test]))
    report(stage)
    xy = fit_transform(both)
    return xy[: len(train)], xy[len(train) :]


def _too_few_rows(method: str, n_rows: int, minimum: int, notes: list[str]) -> bool:
    if n_rows >= minimum:
        return False
    notes.append(
        f"{method} needs at least {minimum} points and there are {n_rows}: showing PCA instead"
    )
    return True


def _umap(train, test, config: ProjectionConfig, notes: list[str], report: Progress):
    fit_jointly = len(train) < config.n_neighbors + 2 and len(test) > 0
    n_fit = len(train) + len(test) if fit_jointly else len(train)
    if _too_few_rows("UMAP", n_fit, MIN_UMAP_ROWS, notes):
        return _pca(train, test, config, notes, report)
    if fit_jointly:
        notes.append(
            f"only {len(train)} train points, fewer than n_neighbors + 2 = {config.n_neighbors + 2}: "
            "UMAP was fitted on train and test together, so test points also shaped the map"
        )
    n_neighbors = _clamped(
        config.n_neighbors, n_fit - 1, "n_neighbors", f"{n_fit} fitted points", notes
    )

    umap = _umap_kept_compiled()

    def reducer(**given):
        return umap.UMAP(
            n_neighbors=n_neighbors,
            min_dist=config.min_dist,
            metric=config.metric,
            random_state=config.seed,
            n_jobs=1,  # a fixed seed forces one thread anyway; saying so avoids umap's warning
            n_epochs=UMAP_EPOCHS,
            **given,
        )

    if fit_jointly:
        return _joint_fit(train, test, config, report, "UMAP fit", reducer().fit_transform)
    train, test = _pca_first(config, report, train, test)
    report("UMAP fit")
    if len(train) > EXACT_NEIGHBOURS_UP_TO:
        fitted = reducer().fit(train)
    else:
        # umap-learn compares all pairs of a set under 4,096 rows itself, but through a numba distance
        # that scikit-learn calls once per pair from Python (about 6 s for 3k rows), and above that
        # compiles NN-descent. Handing it exact neighbours gives the graph it would build from exact
        # neighbours (BENCHMARKS.md, section 4).
        neighbours = _nearest(train, train, config.metric, n_neighbors, same_rows=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_SEARCH_INDEX_WARNING)
            fitted = reducer(precomputed_knn=neighbours).fit(train)
    if len(test) == 0:
        return fitted.embedding_, np.empty((0, 2))
    report("UMAP transform")
    return fitted.embedding_, _place(fitted, *_nearest(test, train, config.metric, n_neighbors))


def _nearest(rows: np.ndarray, to: np.ndarray, metric: str, k: int, same_rows: bool = False):
    """Each row's k nearest rows of ``to``, nearest first, as (indices, distances) arrays of shape (n, k).

    Exact, by FAISS's brute-force top-k: no rows × to matrix is ever whole. ``same_rows`` says rows
    is ``to``: each row's distance to itself is then exactly 0, as umap expects of a first neighbour.
    """
    import faiss

    if metric in ("cosine", "correlation"):
        # cosine distance is 1 - the inner product of unit rows; correlation is cosine of centred rows.
        centred = metric == "correlation"

        def unit(vectors):
            # A zero row has no direction: kept at zero, it is at distance 1 from every row.
            return unit_rows(
                vectors - vectors.mean(axis=1, keepdims=True) if centred else vectors,
                "vectors",
                True,
            )

        similarities, indices = faiss.knn(
            unit(rows), unit(to), k, metric=faiss.METRIC_INNER_PRODUCT
        )
        distances = np.maximum(1 - similarities, 0)
    elif metric == "euclidean":
        squared, indices = faiss.knn(rows, to, k, metric=faiss.METRIC_L2)
        distances = np.sqrt(np.maximum(squared, 0))
    else:
        distances, indices = faiss.knn(rows, to, k, metric=faiss.METRIC_L1)
    if same_rows:
        distances[indices == np.arange(len(rows))[:, None]] = 0
        # a duplicate may have come before the row itself
        order = np.argsort(distances, axis=1, kind="stable")
        indices, distances = (
            np.take_along_axis(indices, order, axis=1),
            np.take_along_axis(distances, order, axis=1),
        )
    return indices, distances


def _place(fitted, indices: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """umap-learn's ``transform`` of new rows from their nearest fitted rows, without its per-row Python.

    The same steps as umap-learn 0.5's transform (a bipartite fuzzy graph, each row started at the
    weighted mean of its neighbours, then layout rounds against the fixed train map); only the
    graph-to-start step is vectorised. A test holds it equal to umap's own.
    """
    from sklearn.utils import check_random_state
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (
        DISCONNECTION_DISTANCES,
        INT32_MAX,
        INT32_MIN,
        compute_membership_strengths,
        find_ab_params,
        make_epochs_per_sample,
        smooth_knn_dist,
    )

    # What umap's fit derives from its public parameters (its private _disconnection_distance,
    # _n_neighbors, _a, _b and _initial_alpha), derived here the same way instead of read.
    disconnection = fitted.disconnection_distance
    if disconnection is None:
        disconnection = DISCONNECTION_DISTANCES.get(fitted.metric, np.inf)
    n_neighbors = min(fitted.n_neighbors, len(fitted.embedding_) - 1)
    if fitted.a is None or fitted.b is None:
        a, b = find_ab_params(fitted.spread, fitted.min_dist)
    else:
        a, b = fitted.a, fitted.b
    indices, distances = indices.copy(), np.ascontiguousarray(distances, np.float32)
    indices[distances >= disconnection] = -1
    sigmas, rhos = smooth_knn_dist(
        distances,
        float(n_neighbors),
        local_connectivity=float(max(0.0, fitted.local_connectivity - 1.0)),
    )
    rows, cols, strengths, _ = compute_membership_strengths(
        indices, distances, sigmas, rhos, bipartite=True
    )
    n_new, n_fitted = len(indices), len(fitted.embedding_)
    start = _weighted_mean_positions(strengths.reshape(indices.shape), indices, fitted.embedding_)
    n_epochs = _placement_epochs(n_new)
    graph = coo_matrix((strengths, (rows, cols)), shape=(n_new, n_fitted))
    graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
    graph.eliminate_zeros()
    rng_state = (
        check_random_state(fitted.transform_seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    )
    return optimize_layout_euclidean(
        start,
        fitted.embedding_.astype(np.float32, copy=True),
        graph.row,
        graph.col,
        n_epochs,
        n_fitted,
        make_epochs_per_sample(graph.data, n_epochs),
        a,
        b,
        rng_state,
        fitted.repulsion_strength,
        fitted.learning_rate / 4.0,
        fitted.negative_sample_rate,
        fitted.random_state is None,
    )


def _placement_epochs(n_rows: int) -> int:
    """Layout rounds for placing new rows: umap-learn's own transform default (n_epochs unset).

    Because this module sets the fit's n_epochs, umap would otherwise place new rows for a third of
    it (66 rounds): on 13k test rows that doubles the placement time and buys 0.01 of
    trustworthiness (BENCHMARKS.md, section 4).
    """
    return PLACEMENT_EPOCHS_UP_TO_10K if n_rows <= 10_000 else PLACEMENT_EPOCHS_ABOVE_10K


def _weighted_mean_positions(
    strengths: np.ndarray, indices: np.ndarray, embedding: np.ndarray
) -> np.ndarray:
    """Each new row at the strength-weighted mean of its neighbours' positions (umap's init_graph_transform).

    Bit for bit as umap computes it, in float32 and in the same order: umap seeds each row's random
    negative samples from the bits of its starting position, so one rounding difference would give
    another layout. A neighbour at strength 1 is an exact duplicate, and the row takes its position;
    a row with no neighbour inside the metric's disconnection distance has none (NaN), as in umap.
    """
    # umap walks a sparse row, in column order
    by_column = np.argsort(indices, axis=1, kind="stable")
    indices = np.take_along_axis(indices, by_column, axis=1)
    strengths = np.where(indices >= 0, np.take_along_axis(strengths, by_column, axis=1), 0).astype(
        np.float32
    )
    neighbour_xy = embedding[np.maximum(indices, 0)].astype(np.float32)
    # numpy's pairwise sum over each row's stored (non-zero) strengths, as scipy sums a sparse row.
    totals = strengths.sum(axis=1)
    for row in np.flatnonzero((strengths == 0).any(axis=1)):
        totals[row] = strengths[row][strengths[row] != 0].sum()
    positions = np.zeros((len(strengths), embedding.shape[1]), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for column, column_xy in zip(strengths.T, neighbour_xy.transpose(1, 0, 2)):
            positions += (column / totals)[:, None] * column_xy
    duplicate = strengths == 1
    has_duplicate = duplicate.any(axis=1)
    positions[has_duplicate] = neighbour_xy[has_duplicate, duplicate.argmax(axis=1)[has_duplicate]]
    positions[totals == 0] = np.nan
    return positions


def _tsne(train, test, config: ProjectionConfig, notes: list[str], report: Progress):
    """openTSNE (FFT-accelerated) on train and test together, or on a sample with the rest placed.

    Neighbours are exact, from FAISS as for UMAP, so every metric behaves the same and the map does not
    depend on an approximate index's randomness.
    """
    n_rows = len(train) + len(test)
    if _too_few_rows("t-SNE", n_rows, MIN_TSNE_ROWS, notes):
        return _pca(train, test, config, notes, report)
    (both,) = _pca_first(config, report, np.vstack([train, test]))
    fitted = np.arange(n_rows)
    if config.tsne_limit is not None and n_rows > config.tsne_limit:
        fitted = np.sort(
            np.random.default_rng(config.seed).choice(n_rows, config.tsne_limit, replace=False)
        )
        notes.append(
            f"t-SNE was fitted on a random sample of {len(fitted):,} of the {n_rows:,} points; each other point "
            f"sits at the median position of its {TSNE_PLACEMENT_NEIGHBOURS} nearest fitted points"
        )
    # The usual bound 3 * perplexity <= n - 1 keeps every point's neighbourhood inside the data.
    n_fit = len(fitted)
    perplexity = _clamped(
        config.perplexity, (n_fit - 1) / 3, "perplexity", f"{n_fit} points", notes
    )
    xy = np.empty((n_rows, 2))
    xy[fitted] = _tsne_fit(both[fitted], perplexity, config, report)
    rest = np.setdiff1d(np.arange(n_rows), fitted)
    if len(rest):
        report("t-SNE placement")
        k = min(TSNE_PLACEMENT_NEIGHBOURS, n_fit)
        indices, _ = _nearest(both[rest], both[fitted], config.metric, k)
        xy[rest] = np.median(xy[fitted][indices], axis=1)
    return xy[: len(train)], xy[len(train) :]


def _tsne_fit(
    rows: np.ndarray, perplexity: float, config: ProjectionConfig, report: Progress
) -> np.ndarray:
    from openTSNE import TSNE
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    report("t-SNE neighbours")
    # openTSNE's own neighbourhood size for a perplexity; its neighbour lists leave each point itself out.
    k = max(1, min(len(rows) - 1, int(3 * perplexity)))
    indices, distances = _nearest(rows, rows, config.metric, k + 1, same_rows=True)
    total_rounds = sum(TSNE_ROUNDS)

    rounds_done = 0

    def progress(*_) -> None:
        # openTSNE counts rounds afresh in each of its two phases: count them here across both.
        nonlocal rounds_done
        rounds_done += TSNE_PROGRESS_EVERY
        report(f"t-SNE fit: round {rounds_done} of {total_rounds}")

    report("t-SNE fit")
    tsne = TSNE(
        perplexity=perplexity,
        early_exaggeration_iter=TSNE_ROUNDS[0],
        n_iter=TSNE_ROUNDS[1],
        ints_in_interval=TSNE_UNITS_PER_GRID_INTERVAL,
        neighbors=PrecomputedNeighbors(indices[:, 1:], distances[:, 1:]),
        initialization="pca",
        random_state=config.seed,
        n_jobs=1,  # one thread gives the same map on every machine, and the server's other users their core
        callbacks=progress,
        callbacks_every_iters=TSNE_PROGRESS_EVERY,
    )
    return np.asarray(tsne.fit(rows))


def _clamped(value, limit, name: str, why: str, notes: list[str]):
    if value <= limit:
        return value
    notes.append(f"{name} lowered from {value:g} to {limit:g} for {why}")
    return limit


def kept_projection(
    train_vectors: np.ndarray,
    test_vectors: np.ndarray,
    config: ProjectionConfig,
    progress: Progress | None = None,
) -> Projection:
    """project(), read from the projections kept under the workspace home when these vectors and config were mapped before.

    The dashboard and the command line keep their maps in the same place, so either reuses the other's.
    """
    cache = ProjectionCache(workspace_home() / PROJECTIONS_FOLDER)
    key = projection_key(train_vectors, test_vectors, config)
    stored = cache.get(key, len(train_vectors), len(test_vectors))
    if stored is not None:
        return stored
    result = project(train_vectors, test_vectors, config, progress=progress)
    cache.put(key, result)
    return result


def projection_key(
    train_vectors: np.ndarray, test_vectors: np.ndarray, config: ProjectionConfig
) -> str:
    """Content address of a projection: both arrays (shape, dtype, bytes) and the config."""
    return arrays_digest(CACHE_FORMAT, (train_vectors, test_vectors), repr(config))


class ProjectionCache:
    """Computed projections as one ``<key>.npz`` file each, so re-opening a map is instant."""

    def __init__(self, directory: Path) -> None:
        self.files = ArrayStore(directory, "projection")

    def path(self, key: str) -> Path:
        return self.files.path(key)

    def get(self, key: str, n_train: int, n_test: int) -> Projection | None:
        """The projection stored for `n_train` train and `n_test` test rows, or None when absent or unusable (it is then recomputed)."""
        return self.files.get(
            key,
            lambda stored: Projection(
                train_xy=stored["train_xy"],
                test_xy=stored["test_xy"],
                config=ProjectionConfig(**json.loads(str(stored["config"]))),
                notes=[str(note) for note in stored["notes"]],
            ),
            {"train_xy": (n_train, 2), "test_xy": (n_test, 2), "config": (), "notes": (None,)},
        )

    def put(self, key: str, projection: Projection) -> None:
        """Store atomically; a cache that cannot be written only warns (the caller keeps the projection)."""
        self.files.put(
            key,
            {
                "train_xy": projection.train_xy,
                "test_xy": projection.test_xy,
                "config": np.array(json.dumps(asdict(projection.config))),
                "notes": np.array(projection.notes, dtype=str),
            },
        )


@functools.cache
def _umap_kept_compiled():
    """The umap module, its compiled functions kept in numba's disk cache, as pynndescent's are.

    umap-learn compiles its fuzzy-graph and layout functions in every process (about 4 s of one core,
    holding the GIL, which stalls every page a server is running meanwhile); kept on disk, a later
    process loads them in a twentieth of a second. numba's cache is what ``cache=True`` turns on:
    beside umap's source when that folder is writable, else the user's cache folder or
    NUMBA_CACHE_DIR. Where none can be written, umap compiles in each process, as without this.
    """
    import umap  # importing umap (numba) takes seconds: keep that out of importing this module
    import umap.layouts
    import umap.umap_
    from numba.extending import is_jitted

    for module in (umap.umap_, umap.layouts):
        for function in vars(module).values():
            if is_jitted(function) and function.py_func.__module__ == module.__name__:
                try:
                    function.enable_caching()
                except RuntimeError:  # numba: "no locator available" — nowhere to write
                    return umap
    return umap


def warm_up(config: ProjectionConfig = ProjectionConfig()) -> None:
    """Pay umap's import and numba compilation once, e.g. in a background thread at start-up."""
    rng = np.random.default_rng(config.seed)
    project(
        rng.normal(size=(40, 8)), rng.normal(size=(5, 8)), ProjectionConfig(metric=config.metric)
    )


def compile_in_child_process() -> bool:
    """Fill numba's disk cache with what ``warm_up`` compiles, in a child process; True if it did.

    numba holds the GIL while it compiles, so a server that compiles in a thread of its own stalls
    every page it runs meanwhile; a child holds its own GIL, and ``warm_up`` then only loads. The
    child runs at the lowest CPU priority: it starts as a user opens their first analysis, and its
    seconds of a core (even with the cache filled: umap's import) should not slow the browser or
    the server showing it.
    """
    child = "import os; os.nice(19); from core.maps.projection import warm_up; warm_up()"
    try:
        finished = subprocess.run(
            [sys.executable, "-c", child],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            timeout=CHILD_COMPILE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return finished.returncode == 0


def quality(
    high_dim: np.ndarray, low_dim: np.ndarray, n_neighbors: int = 10, metric: str = "cosine"
) -> float:
    """Trustworthiness in [0, 1]: how far the map's near neighbours are true neighbours too.

    ``metric`` measures the high-dimensional vectors; the map is always Euclidean. n_neighbors is
    clamped below half the number of rows, as scikit-learn requires; NaN for fewer than 3 rows.
    """
    n_rows = len(high_dim)
    if len(low_dim) != n_rows:
        raise ValueError(
            f"high_dim has {n_rows} rows but low_dim has {len(low_dim)}; they must match"
        )
    limit = (n_rows - 1) // 2
    if limit < 1:
        return float("nan")
    if n_neighbors > limit:
        warnings.warn(
            f"n_neighbors lowered from {n_neighbors} to {limit} for {n_rows} rows", stacklevel=2
        )
    return float(
        trustworthiness(high_dim, low_dim, n_neighbors=min(n_neighbors, limit), metric=metric)
    )
