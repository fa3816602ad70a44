import numpy as np
import pytest

from core.methods.regression import rank_prompts
from core.methods.zeroshot import RESULT_COLUMNS, measured, results_table


@pytest.fixture
def ranking():
    """Three images and three texts in 8-d: each image sits near one text, which is its true match."""
    rng = np.random.default_rng(2)
    texts = rng.normal(size=(3, 8))
    images = texts[[2, 0, 1]] + 0.3 * rng.normal(size=(3, 8))
    return rank_prompts(images, texts, ["t0", "t1", "t2"], k=3)


def test_results_table_ranks_every_text_per_image_with_the_zero_shot_label_first(ranking):
    table = results_table(["i0", "i1", "i2"], ranking)
    assert tuple(table.columns) == RESULT_COLUMNS
    assert len(table) == 9
    best = table[table["rank"] == 1]
    assert list(zip(best["image"], best["text"])) == [("i0", "t2"), ("i1", "t0"), ("i2", "t1")]
    # float32 cosines from FAISS
    assert table.groupby("image")["probability"].sum().to_numpy() == pytest.approx(
        [1.0, 1.0, 1.0], abs=1e-4
    )
    for _, rows in table.groupby("image"):
        assert rows["clip_score"].is_monotonic_decreasing
        assert rows["rank"].tolist() == [1, 2, 3]
    assert table["clip_score"].between(0, 100).all()


def test_results_table_needs_one_name_per_image(ranking):
    with pytest.raises(ValueError, match="2 image names for a ranking of 3 images"):
        results_table(["a", "b"], ranking)


def test_measured_fills_in_time_and_memory_even_when_the_block_fails():
    with pytest.raises(RuntimeError), measured() as stats:
        raise RuntimeError("boom")
    assert stats.wall_seconds >= 0.0
    assert stats.peak_memory_mib > 1.0  # a Python process holding numpy is well over a MiB
    lines = stats.log_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["wall_time_s", "peak_memory_mib"]
