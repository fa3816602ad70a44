import time

import numpy as np
import pytest

import core.prediction.predict
from core.prediction.predict import (
    first_label_counts,
    place_distractor,
    read_submission,
    read_truth,
    search_labels,
    write_submission,
)
from core.records import DISTRACTOR
from core.search.index import VectorIndex


def exhaustive_labels(train, labels, queries, k):
    """The definition: each query's neighbours over all of train, best first, and their first k distinct labels."""
    everything = VectorIndex(train).search(queries, len(train))
    return [
        list(dict.fromkeys(row))[:k] for row in np.asarray(labels, dtype=object)[everything.indices]
    ]


def test_rank_by_best_neighbour_and_short_rows_when_few_classes():
    train = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.9, 0.5, 0.3]], np.float32)
    assert search_labels(VectorIndex(train), ["a", "b", "c", "a"], query, 5, 1)[1] == [
        ["b", "c", "a"]
    ]
    assert search_labels(VectorIndex(train), ["a", "b", "c", "d"], query, 2, 1)[1] == [["b", "c"]]


@pytest.mark.parametrize("seed", range(40))
def test_labels_equal_the_exhaustive_definition_ties_included(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n, dim, n_queries = int(rng.integers(5, 80)), int(rng.integers(1, 6)), int(rng.integers(1, 40))
    if seed % 2:  # small whole numbers: exact dot products, so many classes tie at their best
        train, queries = (
            rng.integers(-2, 3, (n, dim)).astype(np.float32),
            rng.integers(-2, 3, (n_queries, dim)).astype(np.float32),
        )
    else:
        train, queries = (
            rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(n_queries, dim)).astype(np.float32),
        )
    n_classes = int(rng.integers(1, 10))
    labels = [f"c{c}" for c in rng.choice(n_classes, n, p=rng.dirichlet(np.full(n_classes, 0.3)))]
    k = int(rng.integers(1, 7))
    # A shallow first search sends most queries through the later, class-excluding rounds.
    monkeypatch.setattr(core.prediction.predict, "FIRST_SEARCH_DEPTH", int(rng.integers(1, 10)))
    neighbours, found = search_labels(VectorIndex(train), labels, queries, k, 3)
    assert found == exhaustive_labels(train, labels, queries, k)
    assert neighbours.k == min(3, n)
    np.testing.assert_array_equal(
        neighbours.similarities, VectorIndex(train).search(queries, min(3, n)).similarities
    )


def skewed_and_balanced(n_train, n_test, dim, seed=0):
    """Train with one class holding half the rows, and the same rows in classes of 20; queries near train rows."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, dim)).astype(np.float32)
    queries = train[rng.integers(0, n_train, n_test)] + 0.3 * rng.normal(size=(n_test, dim)).astype(
        np.float32
    )
    balanced = [f"c{row // 20}" for row in range(n_train)]
    skewed = ["big" if row < n_train // 2 else label for row, label in enumerate(balanced)]
    return train, queries, skewed, balanced


def test_skewed_classes_cost_about_what_balanced_ones_do():
    train, queries, skewed, balanced = skewed_and_balanced(4000, 1000, 32)
    index = VectorIndex(train)
    seconds = {}
    for name, labels in (("skewed", skewed), ("balanced", balanced)):
        started = time.perf_counter()
        search_labels(index, labels, queries, 5, 5)
        seconds[name] = time.perf_counter() - started
    # Searching k × the largest class deep took about 9× longer on the skewed labels.
    assert seconds["skewed"] < 3 * seconds["balanced"] + 0.05, seconds


def test_skewed_classes_take_at_most_twice_the_memory_of_balanced_ones():
    import tracemalloc

    # 2,048 queries: one search call each way, as deep as each labelling makes the first search
    train, queries, skewed, balanced = skewed_and_balanced(4000, 2048, 32)
    index = VectorIndex(train)
    search_labels(index, balanced, queries[:10], 5, 5)  # the index's one-time state, made before
    peaks = {}
    for name, labels in (("skewed", skewed), ("balanced", balanced)):
        tracemalloc.start()
        search_labels(index, labels, queries, 5, 5)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["skewed"] <= 2 * peaks["balanced"], peaks


def test_search_labels_refuses_what_cannot_fit_and_mismatched_labels(monkeypatch):
    train = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="2 train labels but 3 indexed vectors"):
        search_labels(VectorIndex(train), ["a", "b"], train, 5, 1)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        search_labels(VectorIndex(train), ["a", "b", "c"], train, 0, 1)
    monkeypatch.setattr(core.prediction.predict, "MAX_NEIGHBOUR_CELLS", 8)
    with pytest.raises(
        ValueError, match=r"3 queries × 3 neighbours each need .* GB.*lower k and score_k"
    ):
        search_labels(VectorIndex(train), ["a", "b", "c"], train, 5, 3)


def test_place_distractor_puts_minus_one_first_and_keeps_four():
    rows = [["a", "b", "c", "d", "e"], ["a", "b"]]
    assert place_distractor(rows, np.array([True, False])) == [
        ["-1", "a", "b", "c", "d"],
        ["a", "b"],
    ]
    with pytest.raises(ValueError, match="2 prediction rows but 1 flags"):
        place_distractor(rows, np.array([True]))


def test_submission_round_trip(tmp_path):
    path = write_submission(tmp_path / "sub.csv", ["x.jpg", "y.jpg"], [["-1", "a"], ["b", "c"]])
    assert path.read_text().splitlines() == ["id,predictions", "x.jpg,-1 a", "y.jpg,b c"]
    assert read_submission(path) == {"x.jpg": ["-1", "a"], "y.jpg": ["b", "c"]}


def test_labels_with_spaces_score_the_same_after_the_round_trip(tmp_path):
    write_submission(tmp_path / "s.csv", ["x", "y"], [["red circle", "b"], ["-1", "red circle"]])
    (tmp_path / "t.csv").write_text("id,label\nx,red circle\ny, red  circle \n")
    assert read_submission(tmp_path / "s.csv") == {
        "x": ["red_circle", "b"],
        "y": ["-1", "red_circle"],
    }
    assert read_truth(tmp_path / "t.csv") == {"x": "red_circle", "y": "red_circle"}


def test_truth_file_errors_are_clear(tmp_path):
    (tmp_path / "t.csv").write_text("image,label\nx,1\n")
    with pytest.raises(ValueError, match=r"lacks column.*id.*found image, label"):
        read_truth(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("id,label\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="repeats the id 'x'"):
        read_truth(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="not found"):
        read_truth(tmp_path / "missing.csv")


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_query_with_non_finite_values_is_refused_not_searched_forever(bad):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    queries[1, 2] = bad
    with pytest.raises(ValueError, match="queries have NaN or infinite values in 1 of 3 rows"):
        search_labels(
            VectorIndex(train / np.linalg.norm(train, axis=1, keepdims=True)),
            [f"c{i % 10}" for i in range(50)],
            queries,
            5,
            5,
        )


def test_first_label_counts_ranks_classes_by_the_images_they_head_ties_by_name():
    rows = [[label, "z"] for label in ["7"] * 5 + ["3"] * 9 + ["12"] * 5 + ["1"]]
    counts = first_label_counts(rows)
    assert counts["class"].tolist() == ["3", "12", "7", "1"]  # the 5-5 tie goes to the name first
    assert counts["test images"].tolist() == [9, 5, 5, 1]


def test_first_label_counts_leave_minus_one_out_and_keep_labels_as_data():
    rows = [[DISTRACTOR, "a"]] * 3_999 + [["16"]] * 16 + [["<b>x</b>", DISTRACTOR]] * 2 + [[]]
    counts = first_label_counts(rows)
    assert counts.to_dict("list") == {"class": ["16", "<b>x</b>"], "test images": [16, 2]}
    assert first_label_counts([[DISTRACTOR]]).empty
