import numpy as np
import pytest

from core.retrieval.index import Neighbours
from core.retrieval.predict import (
    neighbours_needed,
    place_distractor,
    rank_labels,
    read_submission,
    read_truth,
    write_submission,
)


def test_rank_labels_keeps_distinct_labels_by_best_neighbour():
    labels = ["a", "a", "b", "c", "b", "d", "e", "f"]
    neighbours = Neighbours(np.zeros((1, 8), np.float32), np.array([[0, 1, 2, 4, 3, 5, 6, 7]]))
    assert rank_labels(neighbours, labels, 5) == [["a", "b", "c", "d", "e"]]


def test_rows_are_short_when_train_has_few_classes():
    neighbours = Neighbours(np.zeros((1, 3), np.float32), np.array([[2, 0, 1]]))
    assert rank_labels(neighbours, ["x", "x", "y"], 5) == [["y", "x"]]


def test_neighbours_needed_covers_the_largest_class():
    assert neighbours_needed(["a"] * 3 + ["b"] * 3 + ["c"] * 2, 5) == 8
    assert neighbours_needed([str(i // 3) for i in range(3000)], 5) == 15


def test_place_distractor_puts_minus_one_first_and_keeps_four():
    rows = [["a", "b", "c", "d", "e"], ["a", "b"]]
    assert place_distractor(rows, np.array([True, False])) == [["-1", "a", "b", "c", "d"], ["a", "b"]]
    with pytest.raises(ValueError, match="2 prediction rows but 1 flags"):
        place_distractor(rows, np.array([True]))


def test_submission_round_trip(tmp_path):
    path = write_submission(tmp_path / "sub.csv", ["x.jpg", "y.jpg"], [["-1", "a"], ["b", "c"]])
    assert path.read_text().splitlines() == ["id,predictions", "x.jpg,-1 a", "y.jpg,b c"]
    assert read_submission(path) == {"x.jpg": ["-1", "a"], "y.jpg": ["b", "c"]}


def test_labels_with_spaces_score_the_same_after_the_round_trip(tmp_path):
    write_submission(tmp_path / "s.csv", ["x", "y"], [["red circle", "b"], ["-1", "red circle"]])
    (tmp_path / "t.csv").write_text("id,label\nx,red circle\ny, red  circle \n")
    assert read_submission(tmp_path / "s.csv") == {"x": ["red_circle", "b"], "y": ["-1", "red_circle"]}
    assert read_truth(tmp_path / "t.csv") == {"x": "red_circle", "y": "red_circle"}


def test_truth_file_errors_are_clear(tmp_path):
    (tmp_path / "t.csv").write_text("image,label\nx,1\n")
    with pytest.raises(ValueError, match="lacks column.*id.*found image, label"):
        read_truth(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("id,label\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="repeats the id 'x'"):
        read_truth(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="not found"):
        read_truth(tmp_path / "missing.csv")
