"""The key index: exact vs approximate agreement, stable ids across add/remove, rebuild from the store."""

import faiss
import numpy as np
import pytest
from router_helpers import FakeStore, clustered_keys

from router.index import INDEX_FILE, KeyIndex, ivf_nlist


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a.tolist(), b.tolist())]))


def test_ivf_agrees_with_exact_on_synthetic_keys():
    X = clustered_keys(20_000, seed=1)
    ids = np.arange(1, len(X) + 1, dtype=np.int64) * 7  # ids are rowids, not positions
    rng = np.random.default_rng(2)
    Q = X[rng.integers(0, len(X), 200)] + 0.3 * rng.standard_normal((200, X.shape[1])).astype(np.float32) / 20
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    exact = KeyIndex.build(ids, X, X.shape[1])
    ivf = KeyIndex.build(ids, X, X.shape[1], exact_max=1_000, approx="ivf")
    hnsw = KeyIndex.build(ids, X, X.shape[1], exact_max=1_000)  # the default approximate kind
    assert exact.kind == "flat" and ivf.kind == "ivf" and ivf.index.nlist == ivf_nlist(len(X)) and hnsw.kind == "hnsw"
    _, e = exact.search(Q, 10)
    for approx in (ivf, hnsw):
        _, a = approx.search(Q, 10)
        assert _recall(a, e) >= 0.95
        assert (e[:, 0] == a[:, 0]).mean() >= 0.97


@pytest.mark.parametrize("exact_max,approx", [(10_000, "ivf"), (100, "ivf"), (100, "hnsw")])
def test_ids_are_stable_across_remove_and_add(exact_max, approx, tmp_path):
    X = clustered_keys(600, seed=3)
    idx = KeyIndex.build(np.arange(1, 401), X[:400], X.shape[1], exact_max=exact_max, approx=approx)
    assert idx.kind == ("flat" if exact_max > 400 else approx)
    gone = np.arange(100, 200)
    idx.remove(gone)
    idx.add(np.arange(401, 601), X[400:])  # new atoms get new rowids; old ones keep theirs
    want = np.setdiff1d(np.arange(1, 601), gone)
    assert np.array_equal(idx.ids(), want)
    _, hits = idx.search(X[99:201], 5)
    assert not set(hits.ravel().tolist()) & set(gone.tolist())
    assert np.allclose(idx.vectors([1, 450, 600]), X[[0, 449, 599]], atol=1e-6)
    s, i = idx.search(X[[450]], 1)  # a kept vector finds its own id
    assert i[0, 0] == 451 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    idx.save(tmp_path)  # and all of it survives a save and an open (HNSW tombstones ride in keys.json)
    again = KeyIndex.open(tmp_path, FakeStore(want, X[want - 1]), X.shape[1], exact_max=exact_max, approx=approx)
    assert again.kind == idx.kind and np.array_equal(again.ids(), want)
    assert not set(again.search(X[99:201], 5)[1].ravel().tolist()) & set(gone.tolist())


def test_open_keeps_a_matching_file_and_rebuilds_a_stale_one(tmp_path):
    X = clustered_keys(50, seed=4)
    store = FakeStore(np.arange(10, 60), X)
    idx = KeyIndex.open(tmp_path, store, X.shape[1])
    assert np.array_equal(idx.ids(), store.rowids()) and (tmp_path / INDEX_FILE).exists()
    # the store moved on without the index (a crash between the SQLite commit and the index write)
    store2 = FakeStore(np.arange(20, 70), clustered_keys(50, seed=5))
    idx2 = KeyIndex.open(tmp_path, store2, X.shape[1], write=False)
    assert np.array_equal(idx2.ids(), store2.rowids())
    on_disk = faiss.read_index(str(tmp_path / INDEX_FILE))
    assert np.array_equal(faiss.vector_to_array(on_disk.id_map)[:3], [10, 11, 12])  # write=False left the file alone
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")  # unreadable file: rebuilt
    assert np.array_equal(KeyIndex.open(tmp_path, store2, X.shape[1]).ids(), store2.rowids())


def test_hnsw_rebuilds_after_many_tombstones_and_agrees_with_exact():
    X = clustered_keys(3000, seed=8)
    ids = np.arange(3000)
    h = KeyIndex.build(ids, X, X.shape[1], exact_max=100, approx="hnsw")
    e = KeyIndex.build(ids, X, X.shape[1])
    Q = X[:100]
    assert _recall(h.search(Q, 10)[1], e.search(Q, 10)[1]) >= 0.95
    h.remove(np.arange(0, 3000, 10))
    assert not h.wants_rebuild(100)
    h.remove(np.arange(1, 3000, 3))
    assert h.wants_rebuild(100)  # over 20% tombstones


def test_kind_follows_size(tmp_path):
    X = clustered_keys(300, seed=6)
    small = KeyIndex.build(np.arange(300), X, X.shape[1], exact_max=1000)
    assert small.kind == "flat" and not small.wants_rebuild(1000) and small.wants_rebuild(200)
    big = KeyIndex.build(np.arange(300), X, X.shape[1], exact_max=200, approx="ivf")
    assert big.kind == "ivf" and not big.wants_rebuild(200)
    big.save(tmp_path)  # an IVF index round-trips through keys.faiss with its ids
    store = FakeStore(np.arange(300), X)
    again = KeyIndex.open(tmp_path, store, X.shape[1], exact_max=200, approx="ivf")
    assert again.kind == "ivf" and np.array_equal(again.ids(), np.arange(300))
    assert again.vectors([5]).shape == (1, X.shape[1])


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    X = clustered_keys(20, seed=7)
    idx = KeyIndex.build(np.arange(20), X, X.shape[1])
    idx.save(tmp_path)
    idx.remove([0, 1])

    def boom(index, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(RuntimeError):
        idx.save(tmp_path)
    monkeypatch.undo()
    assert faiss.read_index(str(tmp_path / INDEX_FILE)).ntotal == 20  # the old, complete index
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_empty_index_searches_to_nothing():
    idx = KeyIndex(8)
    s, i = idx.search(np.zeros((2, 8), np.float32), 4)
    assert (i == -1).all() and np.isneginf(s).all()
