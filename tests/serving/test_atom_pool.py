"""The GPU atom pool, on CPU: slots, eviction and reuse, growth, rank padding, batches."""

from __future__ import annotations

import pytest
import torch

from compiler.compose.reference import compose_delta_loop, compose_delta_torch
from serving.atom_pool import AtomPool

SHAPES = {"l0.q": (12, 8), "l0.down": (20, 12)}


def atom(r, seed, modules=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g))
            for m, (d_in, d_out) in modules.items()}


def test_add_places_weights_and_pads_rank():
    pool = AtomPool(SHAPES, rank=4, capacity=4)
    w = atom(2, 0)
    slot = pool.add("a", w)
    assert pool.slot_of("a") == slot and "a" in pool and len(pool) == 1
    for m, (a, b) in w.items():
        A, B = pool.pools()[m]
        assert A.shape == (4, 4, SHAPES[m][0]) and B.shape == (4, SHAPES[m][1], 4)
        assert torch.equal(A[slot, :2], a) and torch.all(A[slot, 2:] == 0)
        assert torch.equal(B[slot, :, :2], b) and torch.all(B[slot, :, 2:] == 0)


def test_missing_module_is_a_zero_delta_and_unknown_module_is_rejected():
    pool = AtomPool(SHAPES, rank=2)
    slot = pool.add("a", {"l0.q": atom(2, 1)["l0.q"]})
    A, B = pool.pools()["l0.down"]
    assert torch.all(A[slot] == 0) and torch.all(B[slot] == 0)
    with pytest.raises(KeyError, match="unknown target modules"):
        pool.add("b", {"l9.q": atom(2, 1)["l0.q"]})
    with pytest.raises(ValueError, match="d_in"):
        pool.add("c", {"l0.q": (torch.randn(2, 5), torch.randn(8, 2))})
    assert "b" not in pool and "c" not in pool


def test_evict_zeroes_and_reuses_slot_without_reallocating():
    pool = AtomPool(SHAPES, rank=2, capacity=4)
    slots = [pool.add(f"a{i}", atom(2, i)) for i in range(3)]
    A_before = pool.pools()["l0.q"][0]
    pool.evict("a1")
    assert "a1" not in pool
    assert torch.all(pool.pools()["l0.q"][0][slots[1]] == 0)
    assert pool.add("b", atom(2, 9)) == slots[1]
    assert pool.pools()["l0.q"][0] is A_before and pool.version == 0
    with pytest.raises(KeyError, match="not in the pool"):
        pool.evict("a1")


def test_grows_by_doubling_and_keeps_contents():
    pool = AtomPool(SHAPES, rank=2, capacity=2)
    ws = {f"a{i}": atom(2, i) for i in range(5)}
    for k, w in ws.items():
        pool.add(k, w)
    assert pool.capacity == 8 and pool.version == 2
    for k, w in ws.items():
        A, B = pool.pools()["l0.down"]
        assert torch.equal(A[pool.slot_of(k)], w["l0.down"][0])
        assert torch.equal(B[pool.slot_of(k)], w["l0.down"][1])


def test_larger_rank_regrows_pool_rank():
    pool = AtomPool(SHAPES, rank=1, capacity=2)
    small = atom(1, 0)
    pool.add("small", small)
    pool.add("big", atom(3, 1))
    assert pool.rank == 3
    A, _ = pool.pools()["l0.q"]
    assert torch.equal(A[pool.slot_of("small"), :1], small["l0.q"][0]) and torch.all(A[pool.slot_of("small"), 1:] == 0)


def test_add_many_and_replace_existing():
    pool = AtomPool(SHAPES, rank=2, capacity=2)
    g = torch.Generator().manual_seed(3)
    stacked = {m: (torch.randn(5, 2, d_in, generator=g), torch.randn(5, d_out, 2, generator=g))
               for m, (d_in, d_out) in SHAPES.items()}
    slots = pool.add_many([f"s{i}" for i in range(5)], stacked)
    assert len(set(slots)) == 5 and pool.capacity == 8
    new = atom(2, 11)
    assert pool.add("s3", new) == slots[3]
    assert torch.equal(pool.pools()["l0.q"][0][slots[3]], new["l0.q"][0])
    with pytest.raises(ValueError, match="distinct"):
        pool.add_many(["x", "x"], {})


def test_slots_pads_and_rejects_unknown_ids():
    pool = AtomPool(SHAPES, rank=2)
    for i in range(4):
        pool.add(f"a{i}", atom(2, i))
    idx, w = pool.slots([["a0", "a2"], [], ["a3"]], [[0.5, 2.0], [], [1.5]])
    assert idx.dtype == torch.int32 and w.dtype == torch.float32
    assert idx.tolist() == [[pool.slot_of("a0"), pool.slot_of("a2")], [-1, -1], [pool.slot_of("a3"), -1]]
    assert w.tolist() == [[0.5, 2.0], [0.0, 0.0], [1.5, 0.0]]
    idx, w = pool.slots([["a1"]], k=4)
    assert idx.shape == (1, 4) and w.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(KeyError, match="nope"):
        pool.slots([["a0", "nope"]])
    with pytest.raises(ValueError, match="k=1"):
        pool.slots([["a0", "a1"]], k=1)
    assert pool.slots([[], []])[0].shape == (2, 0)


def test_composition_through_the_pool_matches_loop():
    """Atoms of mixed ranks, some evicted and replaced, composed per request through pools()."""
    pool = AtomPool(SHAPES, rank=1, capacity=2)
    weights = {f"a{i}": atom(1 + i % 3, i) for i in range(7)}
    for k, w in weights.items():
        pool.add(k, w)
    pool.evict("a2")
    del weights["a2"]
    weights["z"] = atom(2, 99)
    pool.add("z", weights["z"])
    batch = [["a0", "z", "a5"], [], ["a6"], ["a1", "a3", "a4", "a0"]]
    wts = [[1.0, 0.5, -1.0], [], [2.0], [0.25, 1.0, 1.0, 0.75]]
    idx, w = pool.slots(batch, wts)
    g = torch.Generator().manual_seed(7)
    for m, (d_in, d_out) in SHAPES.items():
        x = torch.randn(len(batch), 3, d_in, generator=g)
        A, B = pool.pools()[m]
        got = compose_delta_torch(x, A, B, idx, w)
        assert torch.allclose(got, compose_delta_loop(x, A, B, idx, w), atol=1e-5)
        # and the pool holds exactly the atoms' own (unpadded) deltas
        for b, (ids, ws) in enumerate(zip(batch, wts)):
            want = torch.zeros(3, d_out)
            for a_id, wt in zip(ids, ws):
                a, bb = weights[a_id][m]
                want += wt * (x[b] @ a.T) @ bb.T
            assert torch.allclose(got[b], want, atol=1e-4)


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="rank"):
        AtomPool(SHAPES, rank=0)
    with pytest.raises(ValueError, match="capacity"):
        AtomPool(SHAPES, capacity=0)
    with pytest.raises(ValueError, match="shapes"):
        AtomPool({})


def test_b_is_the_view_of_rank_major_rows():
    """B is the transposed view of a contiguous (capacity, rank, d_out): the GPU expand reads each rank as a row."""
    pool = AtomPool(SHAPES, rank=2, capacity=2)
    ws = {f"a{i}": atom(2, i) for i in range(3)}  # the third add grows the pool: the layout must survive
    for k, w in ws.items():
        pool.add(k, w)
    pool.add("big", atom(3, 9))  # and so must a rank regrowth
    for m in SHAPES:
        A, B = pool.pools()[m]
        assert A.is_contiguous() and B.transpose(1, 2).is_contiguous() and B.shape == (4, SHAPES[m][1], 3)
        for k, w in ws.items():
            assert torch.equal(B[pool.slot_of(k), :, :2], w[m][1]) and torch.all(B[pool.slot_of(k), :, 2] == 0)
