import threading

import numpy as np
import pytest
from test_pipeline import clustered_embeddings

import core.analysis.pipeline as pipeline
from core.analysis.pipeline import analyse
from core.prediction.config import PredictConfig
from core.progress import Cancelled, Watch
from core.records import Embeddings
from core.search.store import SearchStore, search_key


@pytest.fixture
def embeddings():
    return clustered_embeddings(seed=3)


@pytest.fixture
def counted_searches(monkeypatch):
    """How many test-against-train searches and train leave-one-out searches analyse runs."""
    counts = {"test": 0, "train": 0}

    def counting(function, name):
        def counted(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(pipeline, "search_and_rank", counting(pipeline.search_and_rank, "test"))
    monkeypatch.setattr(
        pipeline, "leave_one_out_neighbours", counting(pipeline.leave_one_out_neighbours, "train")
    )
    return counts


def assert_same_analysis(stored, searched):
    np.testing.assert_array_equal(stored.neighbours.indices, searched.neighbours.indices)
    np.testing.assert_array_equal(stored.neighbours.similarities, searched.neighbours.similarities)
    assert stored.retrieval.labels == searched.retrieval.labels
    np.testing.assert_array_equal(stored.scores, searched.scores)
    np.testing.assert_array_equal(stored.train_loo_scores, searched.train_loo_scores)
    np.testing.assert_array_equal(
        stored.train_neighbours.indices, searched.train_neighbours.indices
    )
    assert stored.report() == searched.report()


def test_a_second_analysis_with_the_store_reads_instead_of_searching(
    tmp_path, embeddings, counted_searches
):
    store = SearchStore(tmp_path / "analyses")
    config = PredictConfig(auto=True, validation_rounds=3)
    first = analyse(embeddings, config, store)
    assert counted_searches == {"test": 1, "train": 1}
    # as after a server restart
    again = analyse(embeddings, config, SearchStore(tmp_path / "analyses"))
    assert counted_searches == {"test": 1, "train": 1}
    assert_same_analysis(again, first)
    without_store = analyse(embeddings, config)
    assert_same_analysis(again, without_store)
    assert len(list((tmp_path / "analyses").glob("*.npz"))) == 1


def test_the_key_follows_the_vectors_the_train_labels_and_the_settings(embeddings):
    train, test = embeddings.subset("train"), embeddings.subset("test")
    key = search_key(train.vectors, train.labels, test.vectors, "k=5")
    assert key == search_key(train.vectors.copy(), train.labels.copy(), test.vectors.copy(), "k=5")
    changed_vector = test.vectors.copy()
    changed_vector[0, 0] += 1e-3
    relabelled = train.labels.copy()
    relabelled[0] = "another class"
    assert (
        len(
            {
                key,
                search_key(train.vectors, train.labels, changed_vector, "k=5"),
                search_key(train.vectors, relabelled, test.vectors, "k=5"),
                search_key(train.vectors, train.labels, test.vectors, "k=4"),
            }
        )
        == 4
    )


@pytest.mark.parametrize("changed", [{"k": 3}, {"score_mode": "mean"}, {"score_k": 8}])
def test_other_search_settings_search_again(tmp_path, embeddings, counted_searches, changed):
    store = SearchStore(tmp_path)
    analyse(embeddings, PredictConfig(), store)
    analyse(embeddings, PredictConfig(**changed), store)
    assert counted_searches["test"] == 2
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_threshold_setting_reuses_the_stored_search(tmp_path, embeddings, counted_searches):
    store = SearchStore(tmp_path)
    analyse(embeddings, PredictConfig(contamination=0.2), store)
    analyse(embeddings, PredictConfig(threshold=0.5), store)
    assert counted_searches["test"] == 1


def test_other_vectors_search_again(tmp_path, embeddings, counted_searches):
    store = SearchStore(tmp_path)
    analyse(embeddings, PredictConfig(), store)
    moved = embeddings.vectors.copy()
    moved[-1] = moved[0]
    analyse(
        Embeddings(embeddings.ids, embeddings.splits, embeddings.labels, moved, embeddings.model),
        PredictConfig(),
        store,
    )
    assert counted_searches["test"] == 2


def test_a_corrupt_stored_file_is_searched_again_and_replaced(
    tmp_path, embeddings, counted_searches
):
    store = SearchStore(tmp_path)
    first = analyse(embeddings, PredictConfig(), store)
    (stored_file,) = tmp_path.glob("*.npz")
    stored_file.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="stored search results .* cannot be read"):
        again = analyse(embeddings, PredictConfig(), store)
    assert counted_searches["test"] == 2
    assert_same_analysis(again, first)
    analyse(embeddings, PredictConfig(), store)  # the file was written whole again
    assert counted_searches["test"] == 2


def test_a_store_that_cannot_be_written_only_warns(tmp_path, embeddings):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match="search results not cached in"):
        analysis = analyse(embeddings, PredictConfig(), SearchStore(not_a_folder))
    assert len(analysis.scores) == int((embeddings.splits == "test").sum())


@pytest.mark.parametrize("with_store", [False, True])
def test_an_analysis_asked_to_stop_raises_cancelled_and_stores_nothing(
    tmp_path, embeddings, with_store
):
    stop = threading.Event()
    stop.set()
    store = SearchStore(tmp_path) if with_store else None
    with pytest.raises(Cancelled, match="cancelled during searching test against train"):
        analyse(embeddings, PredictConfig(), store, Watch(stop=stop))
    assert not list(tmp_path.glob("*.npz"))


def test_an_analysis_reports_the_blocks_of_its_search_then_its_later_stages(
    tmp_path, embeddings, monkeypatch
):
    monkeypatch.setattr("core.prediction.predict._QUERIES_PER_CALL", 10)
    heard = []
    analyse(
        embeddings, PredictConfig(), SearchStore(tmp_path), Watch(lambda *step: heard.append(step))
    )
    n_test = int((embeddings.splits == "test").sum())
    blocks = -(-n_test // 10)
    searching = [step for step in heard if step[2] == "searching test against train"]
    assert searching == [(done, blocks, "searching test against train") for done in range(blocks)]
    assert [stage for _, _, stage in heard[len(searching) :]] == [
        pipeline.LEAVE_ONE_OUT_STAGE,
        pipeline.PLACEMENT_STAGE,
    ]
