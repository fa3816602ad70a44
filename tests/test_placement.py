import re
from dataclasses import replace

import numpy as np
import pytest

import core.prediction.placement
from core.prediction.metrics import average_precision_at_k
from core.prediction.placement import (
    MAX_K,
    NOWHERE,
    TIE,
    PlacementModel,
    fit_placement,
    kept_positions,
    positions_for,
    precision_table,
    realised_precisions,
    train_evidence,
)
from core.prediction.predict import place_minus_one


def test_realised_precisions_equal_the_ap_of_the_placed_rows():
    labels = ["a", "b", "c", "d", "e"]
    for truth in [*labels, "-1", "z"]:
        rank = labels.index(truth) + 1 if truth in labels else 0
        for position in (NOWHERE, 1, 2, 3, 4, 5):
            row = place_minus_one([labels], np.array([position]))[0]
            expected = average_precision_at_k(truth, row, 5)
            got = realised_precisions(
                np.array([rank]), np.array([truth == "-1"]), np.array([position]), 5
            )[0]
            assert got == pytest.approx(expected), (truth, position)


def test_the_precision_table_stays_small_up_to_the_largest_k_and_refuses_a_larger_one():
    known, distractor = precision_table(MAX_K)
    assert known.nbytes + distractor.nbytes <= 1 << 20  # it grows with k², so k is bounded
    with pytest.raises(ValueError, match=f"k must be between 1 and {MAX_K}"):
        precision_table(MAX_K + 1)


def test_kept_positions_choose_the_best_of_two_to_k_and_nowhere_further_back_on_ties():
    expected = np.array(
        [
            [9.0, 0.5, 0.1, 0.1, 0.1, 0.2],
            [0.0, 0.3, 0.3, 0.1, 0.1, 0.1],
            [0.0, 0.1, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    assert kept_positions(expected).tolist() == [2, 3, NOWHERE]
    flags = np.array([True, False, False])
    assert positions_for(flags, "optimal", kept_positions(expected)).tolist() == [1, 3, NOWHERE]
    assert positions_for(flags, "first", kept_positions(expected)).tolist() == [1, NOWHERE, NOWHERE]
    with pytest.raises(ValueError, match="placement must be one of"):
        positions_for(flags, "last", kept_positions(expected))


def tie_model(k: int = 5) -> PlacementModel:
    """A placement model as fitted on a clean train set: the true label was only ever seen at rank 1 or 2, so ranks
    3..k get no chance and a "-1" there costs a known item nothing."""
    unseen = [-np.inf, 0.0]
    rank_coef = np.array([[0.0, 0.0], [-5.0, -2.0], *[unseen] * (k - 2), unseen])
    return PlacementModel(0.0, 1.0, (0.0, -3.0), rank_coef, contamination=0.3, k=k)


def test_a_minus_one_that_gains_nothing_over_nowhere_is_left_out():
    model = tie_model()
    sure, unsure = 3.0, -1.0  # standardised scores: far above and below the distractors
    chance = model.distractor_probability(np.array([sure, unsure]))
    assert chance[0] < 1e-3 < 0.5 < chance[1]
    expected = model.expected_precisions(np.array([sure, unsure]))
    # At rank 3 or later the "-1" gains its tiny distractor chance over leaving it out, and nothing more.
    assert 0 < expected[0, 2] - expected[0, -1] < TIE
    assert kept_positions(expected).tolist()[0] == NOWHERE
    # An item the model doubts keeps its "-1" where it gains most.
    assert kept_positions(expected).tolist()[1] == 2
    # Ties between "-1" and nowhere in a hand-made table: a gain under TIE is none, one of TIE or more counts.
    table = np.array(
        [[0.0, 0.5 + TIE / 2, 0.3, 0.3, 0.3, 0.5], [0.0, 0.5 + TIE, 0.3, 0.3, 0.3, 0.5]]
    )
    assert kept_positions(table).tolist() == [NOWHERE, 2]


def test_with_one_label_per_row_minus_one_is_placed_only_first():
    expected = np.array([[0.9, 0.1], [0.2, 0.8]])  # positions 1, then nowhere
    assert kept_positions(expected).tolist() == [NOWHERE, NOWHERE]


@pytest.mark.parametrize("score_mode", ["max", "mean"])
@pytest.mark.parametrize(
    "path",
    [
        "from-neighbours",
        "half-each-way",
        "all-rows-ranks-from-items-above",
        "all-rows-ranks-by-class",
    ],
)
def test_train_evidence_matches_a_brute_force_leave_one_out(path, score_mode, monkeypatch):
    placement = core.prediction.placement
    from_neighbours = placement._evidence_from_neighbours
    settled = []

    def some(*args):
        settled.append(from_neighbours(*args))
        if (
            path == "half-each-way"
        ):  # every other item left to the all-rows path, its figures blanked
            settled[-1][::2] = False
            for filled in args[-3:]:
                filled[::2] = -7
        return settled[-1]

    monkeypatch.setattr(placement, "_evidence_from_neighbours", some)
    if path.startswith("all-rows"):  # every item from its similarities to all of train
        monkeypatch.setattr(
            placement, "_evidence_from_neighbours", lambda *args: np.zeros(len(args[2]), bool)
        )
    if (
        path == "all-rows-ranks-by-class"
    ):  # every rank by each class's best, the way taken when many are above
        monkeypatch.setattr(placement, "_FEW_ABOVE", 0)
    # Six tight clusters of ten, one item labelled with the class of another cluster (its class is
    # beyond its nearest rows) and one class of a single image (no known score, only a distractor one).
    rng = np.random.default_rng(1)
    vectors = np.repeat(rng.normal(size=(6, 8)), 10, axis=0) + 0.1 * rng.normal(size=(60, 8))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels = np.array([f"c{i // 10}" for i in range(60)], dtype=object)
    labels[10], labels[59] = "c0", "alone"
    evidence = train_evidence(vectors, labels, 3, score_mode, 4)
    similarities = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(similarities, -np.inf)
    same = labels[:, None] == labels[None, :]

    def scores(rows):
        if score_mode == "max":
            return rows.max(axis=1)
        return np.sort(rows, axis=1)[:, -4:].mean(axis=1)

    known = labels != "alone"
    assert np.allclose(evidence.known_scores, scores(similarities)[known], atol=1e-5)
    assert np.allclose(
        evidence.distractor_scores, scores(np.where(same, -np.inf, similarities)), atol=1e-5
    )
    ranks = []
    for row in np.flatnonzero(known):
        best = {c: similarities[row, labels == c].max() for c in set(labels)}
        rank = 1 + sum(value > best[labels[row]] for c, value in best.items() if c != labels[row])
        ranks.append(rank if rank <= 3 else 0)
    assert evidence.known_ranks.tolist() == ranks
    assert {0, 1, 2} <= set(ranks)  # ranks past k and within it
    if path == "from-neighbours":  # the mislabelled item's rank needs all of train
        assert 0 < settled[0].sum() < len(labels)


def test_the_distractor_share_is_fitted_to_the_test_scores_and_odds_follow_the_score():
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig
    from tests.test_pipeline import clustered_embeddings

    for distractor_classes, true_share in ((8, 8 / 28), (20, 0.5)):
        analysis = analyse(
            clustered_embeddings(n_distractor_classes=distractor_classes, spread=0.5),
            PredictConfig(),
        )
        model = analysis.placement_model
        assert abs(model.contamination - true_share) < 0.1
        low, high = np.percentile(analysis.scores, [5, 95])
        assert (
            model.distractor_probability(np.array([low]))[0]
            > model.distractor_probability(np.array([high]))[0]
        )
        assert model.rank_odds(np.array([high]))[0, 0] >= model.rank_odds(np.array([low]))[0, 0]
    with pytest.raises(ValueError, match="test scores or a contamination"):
        fit_placement(analysis.evidence)


def tiny_train(images_per_class: int, n_classes: int):
    """A train set too small for the placement model, and a test set with a distractor."""
    from tests.test_pipeline import clustered_embeddings

    return clustered_embeddings(
        n_classes=n_classes,
        n_distractor_classes=1,
        train_per_class=images_per_class,
        test_per_class=2,
    )


@pytest.mark.parametrize(
    "images_per_class, n_classes, why",
    [(1, 6, "a train class with 2\\+ images"), (3, 1, "at least 2 train classes")],
)
def test_a_train_set_too_small_for_the_model_places_minus_one_first_with_a_note(
    images_per_class, n_classes, why
):
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    for asked in (None, "optimal"):
        analysis = analyse(
            tiny_train(images_per_class, n_classes),
            PredictConfig(placement=asked, contamination=0.3),
        )
        assert analysis.placement == "first" and analysis.placement_model is None
        assert any(re.search(f"goes first .*{why}", note) for note in analysis.notes)
        assert re.search(why, analysis.placement_source)
        flags = analysis.flags()
        assert [
            row.count("-1") for row in analysis.predictions(placement="optimal")
        ] == flags.astype(int).tolist()
        report = analysis.report()
        assert report.expected_map is None and 0.0 <= report.measured_map <= 1.0


def test_scores_that_are_not_finite_place_minus_one_first_with_a_note(monkeypatch):
    import core.analysis.pipeline as pipeline

    real = pipeline.evidence_for

    def with_a_nan(train, config):
        evidence = real(train, config)
        return replace(evidence, known_scores=np.r_[np.nan, evidence.known_scores[1:]])

    monkeypatch.setattr(pipeline, "evidence_for", with_a_nan)
    analysis = pipeline.analyse(tiny_train(3, 6))
    assert (
        analysis.placement == "first"
        and analysis.placement_model is None
        and analysis.evidence is not None
    )
    assert any("finite scores" in note for note in analysis.notes)
    with pytest.raises(ValueError, match="needs finite scores"):
        fit_placement(analysis.evidence, analysis.scores)


def test_a_guaranteed_false_flag_rate_without_train_evidence_names_what_to_do():
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    with pytest.raises(
        ValueError,
        match=r"guaranteed false-flag rate needs .* cannot give .*2\+ images.* — use a contamination rate",
    ):
        analyse(tiny_train(1, 6), PredictConfig(max_false_flag=0.1))


def test_the_newton_logistic_fits_agree_with_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from core.prediction.placement import _balanced_detector, _logistic

    rng = np.random.default_rng(0)
    known, far = rng.normal(0.6, 0.1, 300), rng.normal(0.4, 0.1, 100)
    centre, spread, intercept, slope = _balanced_detector(known, far)
    pooled = (np.r_[known, far] - centre) / spread
    reference = LogisticRegression(class_weight="balanced").fit(
        pooled[:, None], np.r_[np.zeros(300), np.ones(100)]
    )
    # scikit-learn's L-BFGS stops at its tolerance (1e-4 on the gradient); Newton's method goes on to the optimum.
    assert (intercept, slope) == pytest.approx(
        (reference.intercept_[0], reference.coef_[0, 0]), abs=5e-3
    )
    x = rng.normal(size=500)
    ranks = np.clip((1.5 * x + rng.normal(size=500) + 2).astype(int), 0, 3)
    coef = _logistic(x, ranks)
    at = np.array([-1.0, 0.0, 1.0])
    logits = coef[:, 0][None, :] + coef[:, 1][None, :] * at[:, None]
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = LogisticRegression().fit(x[:, None], ranks).predict_proba(at[:, None])
    assert odds / odds.sum(axis=1, keepdims=True) == pytest.approx(expected, abs=5e-3)


def test_the_intervals_hold_the_truth_on_most_digit_samples_with_five_or_more_train_images_a_class():
    from bench.quality import digits_regime
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    shares, maps = [], []
    for per_class in (5, 10):
        for share in (0.1, 0.3, 0.5):
            for seed in range(2):
                analysis = analyse(digits_regime(seed, per_class, share), PredictConfig(auto=True))
                report = analysis.report()
                low, high = report.estimated_distractor_share_interval
                expected_low, expected_high = report.expected_map_interval
                assert 0.0 <= low <= high <= 1.0
                assert expected_low <= report.expected_map <= expected_high
                shares.append(low <= share <= high)
                maps.append(expected_low <= report.measured_map <= expected_high)
    assert np.mean(shares) >= 0.75 and np.mean(maps) >= 0.75


def test_a_train_set_too_small_for_the_model_gives_no_intervals():
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    report = analyse(tiny_train(1, 6), PredictConfig(contamination=0.3)).report()
    assert report.estimated_distractor_share_interval is None
    assert report.expected_map_interval is None


def _interval_holds(analysis) -> tuple[bool, bool]:
    """Whether the share's interval holds the true share, and the expected MAP@5's the measured MAP@5."""
    report = analysis.report()
    low, high = report.estimated_distractor_share_interval
    expected_low, expected_high = report.expected_map_interval
    share = float(np.mean(analysis.truth == "-1"))
    return low <= share <= high, expected_low <= report.measured_map <= expected_high


def test_the_share_interval_holds_its_own_estimate_when_test_scores_outnumber_the_bootstraps_sample():
    from bench.fixtures import retrieval_embeddings
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig
    from core.prediction.placement import MAX_EVIDENCE_QUERIES

    for share in (0.1, 0.3):
        embeddings = retrieval_embeddings(2 * MAX_EVIDENCE_QUERIES, distractor_share=share)
        report = analyse(embeddings, PredictConfig()).report()
        low, high = report.estimated_distractor_share_interval
        assert low <= report.estimated_distractor_share <= high, (share, low, high)


def test_the_intervals_hold_the_truth_on_clip_like_sets_where_the_class_bootstraps_agree_too_well():
    # A thousand train classes move the model so little that the bootstraps' spread is a few thousandths, less
    # than the model's own error: only its error on pseudo-tests of left-out classes makes the intervals honest.
    from bench.fixtures import retrieval_embeddings
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    held = [
        _interval_holds(
            analyse(retrieval_embeddings(4000, distractor_share=share), PredictConfig(auto=True))
        )
        for share in (0.1, 0.3, 0.5)
    ]
    shares, maps = zip(*held)
    assert sum(shares) >= 2 and sum(maps) >= 2, held


def test_the_share_interval_holds_the_truth_on_most_digit_samples_with_two_or_three_train_images_a_class():
    from bench.quality import digits_regime
    from core.analysis.pipeline import analyse
    from core.prediction.config import PredictConfig

    held = [
        _interval_holds(analyse(digits_regime(seed, per_class, share), PredictConfig(auto=True)))[0]
        for per_class in (2, 3)
        for share in (0.1, 0.3, 0.5)
        for seed in range(4)
    ]
    assert np.mean(held) >= 0.75, held


def test_predict_says_when_the_figures_without_the_answers_are_uncertain_and_not_otherwise(
    tmp_path, workspace, capsys
):
    from bench.fixtures import retrieval_embeddings
    from bench.quality import digits_regime
    from core.__main__ import main
    from core.analysis.pipeline import analyse
    from core.io.parquet import write_embeddings
    from core.prediction.config import PredictConfig

    # Seven digits with two train images each: wide intervals. A thousand classes with three each: narrow ones.
    for name, embeddings, uncertain in (
        ("digits", digits_regime(0, 2, 0.3), True),
        ("clip-like", retrieval_embeddings(4000), False),
    ):
        source = tmp_path / f"{name}.parquet"
        write_embeddings(source, embeddings)
        assert main(["predict", str(source), "--out", str(tmp_path / f"{name}.csv")]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "uncertain" in line]
        assert bool(said) == uncertain, said
        if uncertain:
            low, high = analyse(embeddings, PredictConfig()).share_interval
            assert said[0].startswith("note: ") and f"{low:.1%}–{high:.1%}" in said[0]
            assert "train: 2 images a class" in said[0]


def test_pooling_takes_each_items_nearest_other_test_items_sized_by_the_classes(monkeypatch):
    import core.prediction.placement
    from core.prediction.placement import MAX_POOLED, pooling_of, pooling_size

    assert pooling_size(1400, 7) == 99  # N / (2 C) with itself
    assert pooling_size(13_000, 1000) == 5
    assert pooling_size(100_000, 10) == MAX_POOLED
    assert pooling_size(10, 100) == 0
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 5
    vectors = np.repeat(centres, 10, axis=0) + rng.standard_normal((40, 16)) * 0.1
    vectors[1] = vectors[0]  # a duplicate must not push the item's own row into its neighbours
    pooling = pooling_of(vectors, 2)  # 40 / (2 · 2) - 1 = 9: the other nine of its group
    assert pooling.n_test == 40 and (pooling.items == np.arange(40)).all()
    assert pooling.neighbours.shape == (40, 9) and pooling.groups == 4
    assert not (pooling.neighbours == pooling.items[:, None]).any()
    assert (pooling.neighbours // 10 == pooling.items[:, None] // 10).all()
    assert pooling_of(vectors, 40) is None
    # Past MAX_EVIDENCE_QUERIES test items, that many are pooled, drawn at random, with neighbours among all.
    monkeypatch.setattr(core.prediction.placement, "MAX_EVIDENCE_QUERIES", 12)
    drawn = pooling_of(vectors, 2, seed=3)
    assert len(drawn.items) == 12 == len(np.unique(drawn.items)) and drawn.groups == 4
    assert (np.diff(drawn.items) > 0).all() and drawn.neighbours.shape == (12, 9)
    assert (drawn.neighbours // 10 == drawn.items[:, None] // 10).all()
    assert not (drawn.neighbours == drawn.items[:, None]).any()


def test_pooled_share_counts_whole_groups_and_its_variance_counts_each_group_once():
    from core.prediction.placement import Pooling

    # Items in groups of five sharing a label: pooled, each group's evidence decides it as a whole.
    rng = np.random.default_rng(1)
    model = PlacementModel(0.0, 1.0, (0.0, -1.0), np.zeros((2, 2)), 0.5, 1)
    is_far = np.repeat(rng.random(400) < 0.3, 5)
    scores = np.where(is_far, -0.6, 0.6) + rng.standard_normal(2000) * 1.5
    groups = np.arange(2000) // 5
    neighbours = np.array(
        [np.flatnonzero((groups == g) & (np.arange(2000) != i)) for i, g in enumerate(groups)]
    )
    pooling = Pooling(np.arange(2000), neighbours, 2000)
    alone, together = model.with_share_of(scores), model.with_share_of(scores, pooling)
    assert abs(together.contamination - is_far.mean()) < abs(alone.contamination - is_far.mean())
    assert abs(together.contamination - is_far.mean()) < 0.03
    # Five items a group count as one: the pooled variance is that of 400 items, not 2000.
    assert pooling.groups == 400
    assert together.share_variance(scores, pooling) > together.share_variance(scores)
    with pytest.raises(
        ValueError, match="the pooling was made for 2000 test items but there are 3"
    ):
        model.with_share_of(scores[:3], pooling)
