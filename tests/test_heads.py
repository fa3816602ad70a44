import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_pipeline import clustered_embeddings

import core.methods.heads as heads
from core.analysis.pipeline import retrieve
from core.methods.heads import HEADS, ArcFaceHead, HeadConfig, SimClrHead, TripletHead, make_head
from core.prediction.config import PredictConfig
from core.records import DISTRACTOR

# Fewer steps than the default keep the file fast; the data are small and well clustered.
FAST = HeadConfig(min_steps=150)


@pytest.fixture(scope="module")
def data():
    embeddings = clustered_embeddings(spread=1.0)
    return embeddings.subset("train"), embeddings.subset("test")


def first_labels(head, train, queries):
    """Each query's best label: by probability for classifiers, by cosine kNN in the head's space otherwise."""
    if head.kind == "classifier":
        return head.rank(queries, k=5).labels
    _, result = retrieve(
        head.transform(train.vectors),
        train.labels.astype(object),
        head.transform(queries),
        PredictConfig(),
    )
    return result.labels


@pytest.fixture(scope="module")
def fitted(data):
    train, test = data
    fitted = {}
    for key in HEADS:
        head = make_head(key, FAST)
        fitted[key] = head.fit(
            np.vstack([train.vectors, test.vectors]) if not head.uses_labels else train.vectors,
            train.labels,
        )
    return fitted


@pytest.mark.parametrize("key", list(HEADS))
def test_every_head_beats_chance_on_known_classes(key, fitted, data):
    train, test = data
    known = test.labels != DISTRACTOR
    rows = first_labels(fitted[key], train, test.vectors[known])
    top1 = np.mean([row[0] == truth for row, truth in zip(rows, test.labels[known])])
    assert top1 > 0.35  # chance is 1/20
    assert fitted[key].fit_seconds >= 0 and fitted[key].device.startswith("cpu")


@pytest.mark.parametrize("key", ["linear", "bce"])
def test_classifier_best_probability_separates_distractors(key, fitted, data):
    _, test = data
    ranking = fitted[key].rank(test.vectors, k=5)
    assert all(len(row) == 5 and DISTRACTOR not in row for row in ranking.labels)
    assert roc_auc_score(test.labels == DISTRACTOR, -ranking.scores) > 0.7


@pytest.mark.parametrize("key", ["triplet", "arcface", "simclr"])
def test_projection_rows_are_unit_vectors_of_the_configured_size(key, fitted, data):
    out = fitted[key].transform(data[1].vectors)
    assert out.shape == (len(data[1].ids), FAST.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("key", ["bce", "triplet", "arcface", "simclr"])
def test_torch_heads_are_deterministic_under_a_seed(key, data):
    train, test = data

    def output(seed):
        head = make_head(key, HeadConfig(min_steps=20, epochs=1, seed=seed)).fit(
            train.vectors, train.labels
        )
        return (
            head.rank(test.vectors).scores
            if head.kind == "classifier"
            else head.transform(test.vectors)
        )

    np.testing.assert_array_equal(output(0), output(0))
    assert not np.array_equal(output(0), output(1))


def test_small_data_gets_enough_steps_with_a_note(data):
    train, _ = data
    head = TripletHead(HeadConfig(epochs=2, min_steps=10, batch_size=32)).fit(
        train.vectors, train.labels
    )
    # 60 vectors in batches of 32 and 28: two steps per epoch.
    assert len(head.losses) == 5
    assert any("5 epochs, not 2: at least 10 steps" in note for note in head.notes)
    # 61 rows in batches of 60: the lone last row joins the first batch, one step per epoch; 62 rows: two.
    for extra, epochs in ((1, 4), (2, 2)):
        vectors, labels = (
            np.vstack([train.vectors, train.vectors[:extra]]),
            np.append(train.labels, train.labels[:extra]),
        )
        config = HeadConfig(epochs=1, min_steps=4, batch_size=60)
        assert len(TripletHead(config).fit(vectors, labels).losses) == epochs


def test_boosting_rounds_are_capped_by_the_tree_budget(data, monkeypatch):
    train, _ = data
    monkeypatch.setattr(heads, "MAX_BOOSTED_TREES", 40)
    head = make_head("boosting", HeadConfig(boosting_rounds=10)).fit(train.vectors, train.labels)
    assert any("lowered from 10 to 2" in note for note in head.notes)


def test_simclr_views_stay_near_their_source(data):
    import torch

    head = SimClrHead(HeadConfig(min_steps=1, epochs=1)).fit(data[0].vectors)
    x = torch.from_numpy(data[0].vectors)
    view = head.augment(x)
    cosine = torch.nn.functional.cosine_similarity(view, x).numpy()
    assert 0.5 < cosine.mean() < 0.999


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "epochs=0: use a whole number >= 1"),
        (dict(epochs=1.5), "epochs=1.5"),
        (dict(batch_size=1), "batch_size=1"),
        (dict(lr=0), "lr=0: use a number > 0"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(dropout=1.0), r"dropout=1.0: use a share in \[0, 1\)"),
        (dict(angular_margin=2.0), "angular_margin=2.0"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**kwargs)


def test_arcface_refuses_more_than_64_dimensions():
    with pytest.raises(ValueError, match="at most 64 dimensions"):
        ArcFaceHead(HeadConfig(dim=128))


def test_bad_fit_and_apply_inputs_are_explained(data):
    train, test = data
    with pytest.raises(ValueError, match="60 vectors but 59 labels"):
        make_head("linear").fit(train.vectors, train.labels[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_head("linear").fit(train.vectors, np.array(["a"] * 60, dtype=object))
    with pytest.raises(ValueError, match='not "-1"'):
        make_head("bce").fit(train.vectors, np.array(["-1", *train.labels[1:]], dtype=object))
    with pytest.raises(ValueError, match="NaN"):
        make_head("linear").fit(np.full((4, 3), np.nan), ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="not fitted yet"):
        make_head("triplet").transform(test.vectors)
    with pytest.raises(ValueError, match="positive pairs"):
        make_head("triplet").fit(train.vectors[:5], ["a", "b", "c", "d", "e"])
    fitted = make_head("linear").fit(train.vectors, train.labels)
    with pytest.raises(ValueError, match="fitted on 32"):
        fitted.rank(test.vectors[:, :16])
    with pytest.raises(ValueError, match="k must be at least 1"):
        fitted.rank(test.vectors, k=0)
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        make_head("svm")
