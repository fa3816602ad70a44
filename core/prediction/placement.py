"""Where "-1" goes: train evidence without test truth, P(distractor) and label-rank odds per score, expected AP@k and the placement rules."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from core.search.index import VectorIndex, nearest_others, unit_rows

PLACEMENTS = ("first", "optimal")
NOWHERE = 0  # a position: "-1" is not in the row
# The most labels a prediction row may hold (the k of MAP@k). Each test item keeps k labels and k
# neighbours, the placement model k + 1 odds per item, and precision_table is (k + 1)²: at 100k test
# items k = 100 peaks about 0.3 GB above k = 5; k = 100,000 would ask 9 GB for the table alone.
MAX_K = 100
# Train items compared with all of train at once; past it, whole classes are sampled (seeded) so the
# evidence costs at most this many rows × train, whatever the size of train.
MAX_EVIDENCE_QUERIES = 4000
_ROWS_PER_BLOCK = 256  # train rows whose similarities to all of train are held at once
# A train item's class rank is counted from the items above its class's best when at most this many.
_FEW_ABOVE = 256
# Nearest test items a pooled test item's share evidence takes in, at most (below it the neighbourhood
# is sized by the data, `pooling_size`): 4,000 pooled items then hold 1.6 MB of neighbour rows.
MAX_POOLED = 100
_EM_ROUNDS = 500
_EM_TOLERANCE = 1e-7
_NEWTON_ROUNDS = 50  # a logistic fit of two parameters converges in a handful
_NEWTON_TOLERANCE = 1e-8
# Expected AP@k within this of leaving "-1" out is a tie, and a tie leaves it out: a "-1" that gains nothing costs
# a slot (the k-th label leaves the row), which the model prices only through the ranks train showed it (a rank no
# train item took gets no chance at all). A thousandth of a hit per item is below what its probabilities, learnt
# from at most MAX_EVIDENCE_QUERIES train items, can tell apart.
TIE = 1e-3


@dataclass(frozen=True)
class TrainEvidence:
    """What train alone says about test scores: each train item as a known item and as a distractor.

    As a known item it is scored against train without itself (leave one out) and its class takes
    a rank among its ranked labels; as a distractor it is scored against train without its class
    (every class held out once). Test items see one more image of their class than a left-out
    item does, so these known scores run a little low: the model errs towards flagging.
    """

    known_scores: np.ndarray  # items of classes with 2+ images, scored without themselves
    known_ranks: np.ndarray  # 1..k: rank of the item's class among its labels; 0 when below k
    known_classes: np.ndarray  # class code of each known sample
    distractor_scores: np.ndarray  # every sampled item, scored without its class
    distractor_classes: np.ndarray  # class code of each distractor sample
    known_class_sizes: np.ndarray  # train images of each known sample's class
    k: int

    @property
    def has_known_items(self) -> bool:
        return len(self.known_scores) > 0

    def of_classes(self, classes: np.ndarray) -> TrainEvidence:
        """The evidence of these classes, each as often as it is named (a bootstrap draw)."""

        def rows(of):
            order = np.argsort(of, kind="stable")
            starts = np.searchsorted(of[order], classes, "left")
            lengths = np.searchsorted(of[order], classes, "right") - starts
            return order[
                np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            ]

        known, far = rows(self.known_classes), rows(self.distractor_classes)
        return TrainEvidence(
            self.known_scores[known],
            self.known_ranks[known],
            self.known_classes[known],
            self.distractor_scores[far],
            self.distractor_classes[far],
            self.known_class_sizes[known],
            self.k,
        )

    def with_all_images(self) -> np.ndarray:
        """Known scores as if each item met all n images of its class, not n - 1 (sorted).

        The best of n similarities, if they were independent, has the CDF of the best of n - 1
        raised to n / (n - 1): the sorted scores are read at the quantiles that power maps to.
        """
        power = float(np.mean(self.known_class_sizes / (self.known_class_sizes - 1)))
        levels = ((np.arange(len(self.known_scores)) + 0.5) / len(self.known_scores)) ** (1 / power)
        return np.quantile(self.known_scores, levels)


def train_evidence(
    vectors: np.ndarray, labels: np.ndarray, k: int, score_mode: str, score_k: int, seed: int = 0
) -> TrainEvidence:
    """Leave-one-out and leave-one-class-out scores and ranks of train items against all of train (exact)."""
    vectors = unit_rows(vectors, "train vectors", keep_zero_rows=True)
    classes, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"placing -1 needs at least 2 train classes to hold one out; train has {len(classes)}"
        )
    queries = _evidence_rows(codes, np.random.default_rng(seed))
    sizes = np.bincount(codes)
    known_score = np.full(len(queries), np.nan)
    known_rank = np.zeros(len(queries), np.int64)
    far_score = np.full(len(queries), np.nan)
    settled = _evidence_from_neighbours(
        vectors, codes, queries, k, score_mode, score_k, known_score, known_rank, far_score
    )
    _evidence_from_all_rows(
        vectors,
        codes,
        queries,
        np.flatnonzero(~settled),
        k,
        score_mode,
        score_k,
        known_score,
        known_rank,
        far_score,
    )
    has_known = sizes[codes[queries]] >= 2
    if not has_known.any():
        raise ValueError(
            "placing -1 needs a train class with 2+ images to score an item without itself"
        )
    known_classes = codes[queries][has_known]
    return TrainEvidence(
        known_score[has_known],
        np.where(known_rank[has_known] <= k, known_rank[has_known], 0),
        known_classes,
        far_score,
        codes[queries],
        sizes[known_classes],
        k,
    )


def _evidence_from_neighbours(
    vectors, codes, queries, k, score_mode, score_k, known_score, known_rank, far_score
) -> np.ndarray:
    """Fills the evidence of the queries whose nearest train items settle it; which did.

    One exact search of the queries' top 1 + (their largest class) + max(k, score_k) rows (the
    index's bf16 screen where it pays) instead of their products with all of train: an item's own
    class, its score's neighbours and the classes above its own are almost always among them. An
    item whose list does not hold them all is left to `_evidence_from_all_rows`."""
    sizes = np.bincount(codes)
    width = min(len(codes), 1 + int(sizes[codes[queries]].max()) + max(k, score_k))
    found = VectorIndex(vectors).search(vectors[queries], width)
    similarities, columns = found.similarities.astype(np.float64), found.indices
    own = codes[queries][:, None]
    listed = codes[columns]
    # Besides the item and its class, the list holds max(k, score_k) rows (or all of train): the
    # best score_k of the others and of the other classes are in it, so both scores are settled.
    others = np.where(columns == queries[:, None], -np.inf, similarities)
    far_rows = np.where(listed == own, -np.inf, others)
    own_best = np.where(listed == own, others, -np.inf).max(axis=1)
    # Class rank: 1 + the classes with an item above the own class's best. With that best beyond the
    # list (only in a class of 2+), settled only when the listed classes above the list's last score pass k.
    last = similarities[:, -1]
    above = others > np.where(np.isfinite(own_best), own_best, last)[:, None]
    ranks = 1 + _distinct_per_row(np.where(above & (listed != own), listed, -1))
    settled = np.isfinite(own_best) | (ranks > k) | (sizes[codes[queries]] < 2)
    known_score[settled] = _scores(others[settled], score_mode, score_k)
    known_rank[settled] = ranks[settled]
    far_score[settled] = _scores(far_rows[settled], score_mode, score_k)
    return settled


def _distinct_per_row(values: np.ndarray) -> np.ndarray:
    """Distinct non-negative values in each row (-1 marks none)."""
    ordered = np.sort(values, axis=1)
    new = np.diff(ordered, axis=1, prepend=-1) != 0
    return (new & (ordered >= 0)).sum(axis=1)


def _evidence_from_all_rows(
    vectors, codes, queries, pending, k, score_mode, score_k, known_score, known_rank, far_score
) -> None:
    """Fills the evidence of queries[pending] from their similarities to every train row, a block at a time."""
    if not len(pending):
        return
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    sorted_vectors = vectors[order]
    sizes = np.bincount(codes)
    position = np.empty_like(order)  # each train row's column in the sorted order
    position[order] = np.arange(len(order))
    column_codes = codes[order]
    for at in np.array_split(pending, max(1, len(pending) // _ROWS_PER_BLOCK)):
        block = queries[at]
        # Masked in place, first each row's own column, then its whole class (whose columns are
        # contiguous in the sorted order): copies of a block this size cost as much as its product.
        similarities = vectors[block] @ sorted_vectors.T
        rows, block_codes = np.arange(len(block)), codes[block]
        similarities[rows, position[block]] = -np.inf
        lengths = sizes[block_codes]
        segment_starts = np.cumsum(lengths) - lengths
        own_rows = np.repeat(rows, lengths)
        own_columns = np.repeat(starts[block_codes], lengths) + (
            np.arange(lengths.sum()) - np.repeat(segment_starts, lengths)
        )
        has_known = lengths >= 2
        if has_known.any():
            own_best = np.maximum.reduceat(similarities[own_rows, own_columns], segment_starts)
            without_self = similarities if has_known.all() else similarities[has_known]
            known_rank[at[has_known]] = _own_class_ranks(
                without_self, own_best[has_known], column_codes, starts
            )
            known_score[at[has_known]] = _scores(without_self, score_mode, score_k)
        similarities[own_rows, own_columns] = -np.inf
        far_score[at] = _scores(similarities, score_mode, score_k)


def _own_class_ranks(
    similarities: np.ndarray, own_best: np.ndarray, column_codes: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """1 + the classes with an item above each row's own-class best: its class's rank among labels.

    Counted from the items above it where they are few, which is most rows; each class's best over
    all columns (a reduction per class and row, the slower way) only for the rest.
    """
    above = similarities > own_best[:, None]
    few = above.sum(axis=1) <= _FEW_ABOVE
    ranks = np.empty(len(own_best), np.int64)
    rows, columns = np.nonzero(above[few])
    n_classes = len(starts)
    row_classes = np.unique(rows * n_classes + column_codes[columns])
    ranks[few] = 1 + np.bincount(row_classes // n_classes, minlength=int(few.sum()))
    if not few.all():
        class_best = np.maximum.reduceat(similarities[~few], starts, axis=1)
        ranks[~few] = 1 + (class_best > own_best[~few, None]).sum(axis=1)
    return ranks


def _evidence_rows(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Train rows to score: all of them, or whole classes drawn at random up to MAX_EVIDENCE_QUERIES rows."""
    if len(codes) <= MAX_EVIDENCE_QUERIES:
        return np.arange(len(codes))
    chosen, total = [], 0
    for code in rng.permutation(int(codes.max()) + 1):
        rows = np.flatnonzero(codes == code)
        if total + len(rows) > MAX_EVIDENCE_QUERIES and chosen:
            break
        chosen.append(rows)
        total += len(rows)
    return np.sort(np.concatenate(chosen))


def _scores(similarities: np.ndarray, score_mode: str, score_k: int) -> np.ndarray:
    """The distractor score of rows of similarities (excluded entries at -inf), as `distractor_scores` scores test items."""
    if score_mode == "max":
        return similarities.max(axis=1).astype(np.float64)
    depth = min(max(score_k, 1), similarities.shape[1])
    top = np.partition(similarities, similarities.shape[1] - depth, axis=1)[:, -depth:]
    # A row with fewer than score_k candidates averages the ones it has, as a test item does with a small train.
    counted = np.isfinite(top)
    return np.where(counted, top, 0.0).sum(axis=1, dtype=np.float64) / np.maximum(
        counted.sum(axis=1), 1
    )


def check_k(k: int) -> None:
    """The one bound on k, labels per prediction row: a ValueError naming it outside 1..MAX_K."""
    if not 1 <= k <= MAX_K:
        raise ValueError(
            f"k must be between 1 and {MAX_K} (labels per prediction row; each test item keeps k "
            f"labels and neighbours, so memory grows with k), got {k}"
        )


def precision_table(k: int) -> tuple[np.ndarray, np.ndarray]:
    """AP@k of a known item (rows: its label at rank 1..k, then below k) and of a distractor, for "-1" at 1..k then nowhere."""
    check_k(k)  # the table is (k + 1)²
    positions = np.r_[np.arange(1, k + 1), NOWHERE]
    ranks = np.arange(1, k + 1)[:, None]
    # "-1" before the true label pushes it one rank down, and out of the row from rank k.
    pushed = (positions[None, :] != NOWHERE) & (ranks >= positions[None, :])
    new_rank = ranks + pushed
    known = np.vstack([np.where(new_rank <= k, 1.0 / new_rank, 0.0), np.zeros(k + 1)])
    distractor = np.where(positions == NOWHERE, 0.0, 1.0 / np.maximum(positions, 1))
    return known, distractor


def realised_precisions(
    true_ranks: np.ndarray, is_distractor: np.ndarray, positions: np.ndarray, k: int
) -> np.ndarray:
    """Each item's AP@k with "-1" at `positions` (0: nowhere), from the rank of its true label (0: below k) and truth."""
    known, distractor = precision_table(k)
    columns = np.where(positions == NOWHERE, k, positions - 1)
    rows = np.where(true_ranks == 0, k, true_ranks - 1)
    return np.where(is_distractor, distractor[columns], known[rows, columns])


def realised_table(true_ranks: np.ndarray, is_distractor: np.ndarray, k: int) -> np.ndarray:
    """Items × positions (1..k, then nowhere): `realised_precisions` of every position at once, the realised
    counterpart of `PlacementModel.expected_precisions`."""
    positions = np.r_[np.arange(1, k + 1), NOWHERE]
    return realised_precisions(
        np.asarray(true_ranks)[:, None], np.asarray(is_distractor)[:, None], positions[None, :], k
    )


@dataclass(frozen=True)
class PlacementModel:
    """P(distractor | score) and P(true label at rank r | known, score): logistic in the standardised score.

    Both are fitted on train evidence (scikit-learn's default L2 strength, on scores scaled to unit
    spread so that it means the same on every dataset); the distractor odds are then shifted to the
    distractor share, fitted to the test scores unless given.
    """

    centre: float  # scores are standardised as (score - centre) / spread before either model
    spread: float
    distractor_coef: tuple[float, float]  # intercept and slope of the log-odds at a 50/50 share
    # (k + 1) × 2: intercept and slope of each rank's logit (1..k, then below k)
    rank_coef: np.ndarray
    contamination: float  # the distractor share the odds are shifted to
    k: int

    def _standard(self, scores) -> np.ndarray:
        return (np.asarray(scores, np.float64) - self.centre) / self.spread

    def balanced_log_odds(self, scores) -> np.ndarray:
        return self.distractor_coef[0] + self.distractor_coef[1] * self._standard(scores)

    def distractor_probability(self, scores, contamination: float | None = None) -> np.ndarray:
        return _shifted(
            self.balanced_log_odds(scores),
            self.contamination if contamination is None else contamination,
        )

    def rank_odds(self, scores) -> np.ndarray:
        """Items × (k + 1): P(true label at rank 1..k, then below k | known item, score)."""
        logits = (
            self.rank_coef[:, 0][None, :]
            + self.rank_coef[:, 1][None, :] * self._standard(scores)[:, None]
        )
        # Ranks never seen have logit -inf: their exp is 0. Plain NumPy, as the class bootstraps call this often.
        odds = np.exp(logits - logits.max(axis=1, keepdims=True))
        return odds / odds.sum(axis=1, keepdims=True)

    def expected_precisions(
        self, scores, contamination: float | None = None, moment: int = 1
    ) -> np.ndarray:
        """Items × positions (1..k, then nowhere): expected AP@k of putting "-1" there (of AP@k squared with moment 2)."""
        known, distractor = precision_table(self.k)
        p = self.distractor_probability(scores, contamination)[:, None]
        return p * distractor[None, :] ** moment + (1 - p) * (
            self.rank_odds(scores) @ known**moment
        )

    def with_detector(self, known: np.ndarray, far: np.ndarray) -> PlacementModel:
        """This model with its distractor odds fitted on these known and distractor scores instead, its rank odds kept."""
        centre, spread, intercept, slope = _balanced_detector(known, far)
        # The same log-odds on this model's standardised score, (score - self.centre) / self.spread.
        return replace(
            self,
            distractor_coef=(
                intercept + slope * (self.centre - centre) / spread,
                slope * self.spread / spread,
            ),
        )

    def with_share_of(self, scores, pooling: Pooling | None = None) -> PlacementModel:
        """This model with its distractor share fitted to these test scores (EM for a shifted prior).

        With `pooling`, the EM runs on its pooled items, each item's evidence summed over itself and
        its nearest test items, as items sharing one label: distractors come as whole classes."""
        return replace(
            self, contamination=_mixture_share(_pooled(self.balanced_log_odds(scores), pooling))
        )

    def share_variance(self, scores, pooling: Pooling | None = None) -> float:
        """The sampling variance of the share fitted to these test scores: how far it strays from their true share.

        EM's share solves sum(p_i - share) = 0 over the items' posteriors p_i, so its variance is the
        inverse of the information, (share (1 - share))² / sum((p_i - share)²), the sum over the
        independent items. Pooled, those are the groups (`Pooling.groups`), each worth its mean."""
        share = self.contamination
        posteriors = _shifted(_pooled(self.balanced_log_odds(scores), pooling), share)
        groups = len(posteriors) if pooling is None else pooling.groups
        information = float(np.mean((posteriors - share) ** 2)) * groups
        return (share * (1 - share)) ** 2 / information if information > 0.0 else 0.0

    def map_spread(self, scores, kept: np.ndarray, order: np.ndarray, flagged):
        """The standard deviation of MAP@k, as the model sees each item's AP@k vary, when the `flagged` lowest-scoring
        items (`order`: items by score) get "-1" first and the others at `kept`: how far a finite test set's
        measured MAP@k strays from the expected one (`expected_map_by_flags`'s arguments)."""
        first, second = self.expected_precisions(scores), self.expected_precisions(scores, moment=2)
        variance = np.maximum(second - first**2, 0.0)
        return np.sqrt(expected_map_by_flags(variance, kept, order, flagged) / len(kept))


@dataclass(frozen=True)
class Pooling:
    """Test items whose share evidence is pooled with their nearest test items' (`pooling_of`): distractors come as
    whole classes, so a neighbourhood that stays inside one class says more than its items one by one."""

    items: np.ndarray  # test rows pooled: all, or MAX_EVIDENCE_QUERIES drawn at random (sorted)
    neighbours: np.ndarray  # (items, pooling_size): each pooled item's nearest other test rows
    n_test: int  # test items in all

    @property
    def groups(self) -> float:
        """Independent groups the pooled items stand for: each item, unless their neighbourhoods overlap."""
        return min(len(self.items), self.n_test / (self.neighbours.shape[1] + 1))

    def pooled(self, values: np.ndarray) -> np.ndarray:
        """Each pooled item's value summed with its neighbours' (`values`: one per test item)."""
        if len(values) != self.n_test:
            raise ValueError(
                f"the pooling was made for {self.n_test} test items but there are {len(values)} scores"
            )
        return values[self.items] + values[self.neighbours].sum(axis=1)


def _pooled(balanced_log_odds: np.ndarray, pooling: Pooling | None) -> np.ndarray:
    return balanced_log_odds if pooling is None else pooling.pooled(balanced_log_odds)


def pooling_size(n_test: int, n_classes: int) -> int:
    """Nearest test items a test item pools its share evidence with: a neighbourhood of half the test items a train
    class would hold, N / (2 C) with itself, so that it stays within one class at any share up to one half (at share s a
    known class holds N (1 - s) / C); at most MAX_POOLED. Measured on bench section 9's grid: 0.047 mean share error
    against 0.061 per item; N / C 0.063, N / (3 C) to N / (8 C) 0.041–0.046."""
    return int(
        min(max(round(n_test / (2 * max(n_classes, 1))) - 1, 0), MAX_POOLED, max(n_test - 1, 0))
    )


def pooling_of(test_vectors: np.ndarray, n_classes: int, seed: int = 0) -> Pooling | None:
    """Test items to pool and their `pooling_size` nearest other test items; None when the neighbourhood is empty.

    Every item up to MAX_EVIDENCE_QUERIES, else as many drawn at random: their mean posterior, which
    is what the EM fits, strays from all items' by far less than the classes move it (about 0.006),
    and their neighbours cost one search of those items against the test set (about 1 s at 100,000
    test items where bf16 is native) instead of the whole test set against itself (40 s)."""
    vectors = unit_rows(test_vectors, "test vectors", keep_zero_rows=True)
    size = pooling_size(len(vectors), n_classes)
    if size == 0:
        return None
    items = np.arange(len(vectors))
    if len(items) > MAX_EVIDENCE_QUERIES:
        rng = np.random.default_rng([seed, 7])
        items = np.sort(rng.choice(len(items), MAX_EVIDENCE_QUERIES, replace=False))
    return Pooling(items, nearest_others(vectors, size, items).indices, len(vectors))


def _shifted(balanced_log_odds: np.ndarray, share: float) -> np.ndarray:
    """P(distractor) from log-odds fitted at a 50/50 share, moved to `share` (Bayes' rule on the prior)."""
    share = min(max(share, 1e-9), 1 - 1e-9)
    return 1.0 / (1.0 + np.exp(-np.clip(balanced_log_odds + np.log(share / (1 - share)), -50, 50)))


def _logistic(x: np.ndarray, classes: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Intercept and slope of each class's logit in one feature: scikit-learn's multinomial LogisticRegression.

    Its objective with the default L2 strength (C = 1 on the slopes, the intercepts unpenalised),
    solved by Newton's method: a few parameters need no general solver, and the class bootstraps
    fit it often. `classes` are 0..m-1 (m ≥ 2); returns m × 2, logits defined up to a shared shift.
    Two classes give one logit, the second's, as scikit-learn's binary model does."""
    m = int(classes.max()) + 1
    weight = np.ones(len(x)) if weight is None else weight
    if m == 2:
        return np.vstack([np.zeros(2), _binary_logistic(x, classes == 1, weight)])
    features = np.column_stack([np.ones_like(x), x])  # items × 2
    onehot = np.eye(m)[classes]
    # The intercepts' tiny term keeps a class no item has at a finite logit.
    penalty = np.tile([1e-9, 1.0], m)
    # No likelihood tells apart intercepts shifted together: the first is held at 0 (solved for the
    # others only, as a near-null direction would stall Newton's steps).
    free = np.arange(2 * m) >= 1
    beta = np.zeros(2 * m)
    for _ in range(_NEWTON_ROUNDS):
        logits = features @ beta.reshape(m, 2).T
        # softmax in plain NumPy: scipy's logsumexp costs more in checks than in sums at this size
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        gradient = ((weight[:, None] * (p - onehot)).T @ features).ravel() + penalty * beta
        # The Hessian's blocks are sums of each item's curvature (diag(p) - p pᵀ) times 1, x and x².
        hessian = np.empty((m, 2, m, 2))
        for a in range(2):
            for b in range(a, 2):
                scale = weight * features[:, a] * features[:, b]
                block = np.diag(scale @ p) - (p * scale[:, None]).T @ p
                hessian[:, a, :, b] = hessian[:, b, :, a] = block
        hessian = hessian.reshape(2 * m, 2 * m) + np.diag(penalty)
        step = np.zeros(2 * m)
        step[free] = np.linalg.solve(hessian[np.ix_(free, free)], gradient[free])
        beta -= step
        if np.abs(step).max() < _NEWTON_TOLERANCE:
            break
    return beta.reshape(m, 2)


def _binary_logistic(x: np.ndarray, positive: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Intercept and slope of the logit of `positive`: `_logistic` with two classes, whose sums are those of one
    probability per item (a third of the multinomial's work, which the detector of every class bootstrap pays)."""
    penalty = np.array([1e-9, 1.0])
    beta = np.zeros(2)
    x2 = x * x
    for _ in range(_NEWTON_ROUNDS):
        p = 1.0 / (1.0 + np.exp(-np.clip(beta[0] + beta[1] * x, -50, 50)))
        residual = weight * (p - positive)
        curvature = weight * p * (1 - p)
        gradient = np.array([residual.sum(), residual @ x]) + penalty * beta
        cross = curvature @ x
        hessian = np.array([[curvature.sum(), cross], [cross, curvature @ x2]]) + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < _NEWTON_TOLERANCE:
            break
    return beta


def _balanced_detector(known: np.ndarray, far: np.ndarray) -> tuple[float, float, float, float]:
    """Centre, spread, intercept and slope of the log-odds of a distractor at a 50/50 share, logistic in the standardised score.

    Classes weighted to balance, as scikit-learn's class_weight="balanced", on scores scaled to unit
    spread so that the L2 strength means the same on every dataset."""
    pooled = np.concatenate([known, far]).astype(np.float64)
    centre, spread = float(pooled.mean()), float(pooled.std()) or 1.0
    is_far = np.r_[np.zeros(len(known), np.int64), np.ones(len(far), np.int64)]
    weight = np.where(is_far == 1, len(pooled) / (2 * len(far)), len(pooled) / (2 * len(known)))
    coef = _logistic((pooled - centre) / spread, is_far, weight)
    intercept, slope = coef[1] - coef[0]
    return centre, spread, float(intercept), float(slope)


def fit_placement(
    evidence: TrainEvidence,
    test_scores=None,
    contamination: float | None = None,
    pooling: Pooling | None = None,
) -> PlacementModel:
    """The model from train evidence; the distractor share is `contamination` if given, else fitted to the test scores
    (pooled with `pooling`, `PlacementModel.with_share_of`)."""
    if contamination is None and test_scores is None:
        raise ValueError(
            "fit_placement needs the test scores or a contamination to weigh distractors against known items"
        )
    given = (
        evidence.known_scores,
        evidence.distractor_scores,
        () if test_scores is None else test_scores,
    )
    if not all(np.isfinite(scores).all() for scores in given):
        raise ValueError(
            "placing -1 needs finite scores, and the train or test scores hold NaN or infinite values"
        )
    centre, spread, intercept, slope = _balanced_detector(
        evidence.with_all_images(), evidence.distractor_scores
    )
    ranks = np.where(evidence.known_ranks == 0, evidence.k, evidence.known_ranks - 1)
    rank_coef = np.full((evidence.k + 1, 2), [-np.inf, 0.0])
    seen, codes = np.unique(ranks, return_inverse=True)
    rank_coef[seen] = (
        0.0
        if len(seen) == 1
        else _logistic((evidence.known_scores - centre) / spread, codes.astype(np.int64))
    )
    model = PlacementModel(centre, spread, (intercept, slope), rank_coef, 0.5, evidence.k)
    if contamination is None:
        return model.with_share_of(test_scores, pooling)
    return replace(model, contamination=float(contamination))


def _mixture_share(balanced_log_odds: np.ndarray) -> float:
    """The distractor share whose posteriors average to itself over the test items (EM for a shifted prior)."""
    share = 0.5
    for _ in range(_EM_ROUNDS):
        updated = float(np.mean(_shifted(balanced_log_odds, share)))
        if abs(updated - share) < _EM_TOLERANCE:
            break
        share = updated
    return share


def kept_positions(expected: np.ndarray) -> np.ndarray:
    """For items not flagged: the position among 2..k with the highest expected AP (ties: further back), or nowhere
    when that gains less than TIE over leaving "-1" out."""
    ranks = expected[:, 1:-1][:, ::-1]  # k, ..., 2
    if ranks.shape[1] == 0:  # k = 1: "-1" is first or nowhere
        return np.full(len(expected), NOWHERE)
    best = ranks.shape[1] - 1 - np.argmax(ranks, axis=1)  # 0 for rank 2
    gain = expected[np.arange(len(expected)), best + 1] - expected[:, -1]
    return np.where(gain >= TIE, best + 2, NOWHERE)


def expected_map_by_flags(
    expected: np.ndarray, kept: np.ndarray, order: np.ndarray, flagged
) -> np.ndarray:
    """Expected MAP@k when the `flagged` lowest-scoring items get "-1" first and the others at their `kept` position.

    `expected` is items × positions (1..k, then nowhere), `order` the items by score; `flagged` counts
    (one or an array) are answered at once by prefix sums along that order."""
    k, n = expected.shape[1] - 1, len(kept)
    if_kept = expected[np.arange(n), np.where(kept == NOWHERE, k, kept - 1)][order]
    gained = np.concatenate(([0.0], np.cumsum(expected[order, 0] - if_kept)))
    return (if_kept.sum() + gained[flagged]) / n


def positions_for(flags: np.ndarray, placement: str, kept: np.ndarray) -> np.ndarray:
    """Flagged items get "-1" first; the others nowhere ("first") or at their `kept` position ("optimal")."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    others = np.full(len(flags), NOWHERE) if placement == "first" else kept
    return np.where(flags, 1, others)
