import sqlite3
import threading

import numpy as np
import pytest

from core.embedding.cache import EmbeddingCache, text_key
from core.io.files import bytes_digest, file_digest


def unit_vectors(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_vectors_round_trip_and_survive_reopening(tmp_path):
    path = tmp_path / "cache.sqlite"
    vectors = unit_vectors(3)
    with EmbeddingCache(path) as cache:
        cache.put_many("model-a", {"k0": vectors[0], "k1": vectors[1]})
        found = cache.get_many("model-a", ["k0", "k1", "absent"])
    assert set(found) == {"k0", "k1"}
    assert found["k0"].dtype == np.float32
    np.testing.assert_array_equal(found["k1"], vectors[1])

    with EmbeddingCache(path) as reopened:
        reopened.put_many("model-a", {"k0": vectors[2]})  # a later value replaces the earlier one
        np.testing.assert_array_equal(reopened.get_many("model-a", ["k0"])["k0"], vectors[2])
        assert reopened.count("model-a") == 2


def test_models_never_see_each_others_vectors(tmp_path):
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        cache.put_many("model-a", {"shared-key": unit_vectors(1, seed=1)[0]})
        cache.put_many("model-b", {"shared-key": unit_vectors(1, dim=4, seed=2)[0]})
        assert cache.get_many("model-a", ["shared-key"])["shared-key"].shape == (8,)
        assert cache.get_many("model-b", ["shared-key"])["shared-key"].shape == (4,)
        assert cache.get_many("model-c", ["shared-key"]) == {}
        assert (cache.count("model-a"), cache.count("model-b"), cache.count("model-c")) == (1, 1, 0)


def test_lookups_larger_than_one_query_find_everything(tmp_path):
    vectors = unit_vectors(1200, dim=2)
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        cache.put_many("m", {f"k{i}": vector for i, vector in enumerate(vectors)})
        found = cache.get_many("m", [f"k{i}" for i in range(1300)])
    assert len(found) == 1200
    np.testing.assert_array_equal(found["k1199"], vectors[1199])


def test_two_connections_to_one_file_see_each_others_writes(tmp_path):
    # The dashboard and the command line may share one cache file.
    path = tmp_path / "cache.sqlite"
    with EmbeddingCache(path) as writer, EmbeddingCache(path) as reader:
        writer.put_many("m", {"k": unit_vectors(1)[0]})
        assert set(reader.get_many("m", ["k"])) == {"k"}


@pytest.mark.parametrize("vector", [[np.nan, 1.0], [[1.0, 0.0]]], ids=["nan", "two-dimensional"])
def test_unusable_vectors_are_refused(tmp_path, vector):
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(ValueError, match="vector for key 'bad' must be one finite row"):
            cache.put_many("m", {"good": unit_vectors(1)[0], "bad": np.asarray(vector)})
        assert cache.count("m") == 0  # the whole batch is refused, not half of it


def _garbage(path):
    path.write_bytes(b"this is not a database\n" * 200)


def _damaged_pages(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x BLOB)")
        db.executemany("INSERT INTO t VALUES (?)", [(bytes(1000),)] * 200)
    db.close()
    data = bytearray(path.read_bytes())
    data[4096:12288] = b"\xff" * 8192  # overwrite pages 2 and 3, keep the valid header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage, _damaged_pages])
def test_a_corrupt_cache_is_moved_aside_with_a_warning(tmp_path, damage):
    path = tmp_path / "cache.sqlite"
    damage(path)
    damaged_bytes = path.read_bytes()

    with pytest.warns(
        RuntimeWarning, match="was unreadable .* moved to .*corrupt-.* new, empty cache"
    ):
        cache = EmbeddingCache(path)
    cache.put_many("m", {"k": unit_vectors(1)[0]})
    assert cache.count("m") == 1
    cache.close()
    (moved,) = tmp_path.glob("cache.sqlite.corrupt-*")
    assert moved.read_bytes() == damaged_bytes


def test_the_default_file_lives_in_the_workspace(workspace):
    with EmbeddingCache() as cache:
        assert cache.path == workspace / "embeddings.sqlite"
        assert cache.path.is_file()


def test_threads_can_share_one_cache(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    vectors = unit_vectors(50)
    errors = []

    def worker(thread: int) -> None:
        try:
            for start in range(0, 50, 10):
                batch = {f"t{thread}-{i}": vectors[i] for i in range(start, start + 10)}
                cache.put_many("m", batch)
                assert len(cache.get_many("m", batch)) == 10
        except Exception as error:  # a failure in a thread must reach the test
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.count("m") == 200
    cache.close()


def test_keys_are_content_hashes_and_texts_never_collide_with_images(tmp_path):
    data = b"a photo of a cat"
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert bytes_digest(data) == file_digest(path) == bytes_digest(bytes(data))
    assert bytes_digest(data) != bytes_digest(data + b" ")
    assert len(bytes_digest(data)) == 64
    assert text_key("a photo of a cat") != bytes_digest(data)
    assert text_key("a photo of a cat").startswith("text:")
