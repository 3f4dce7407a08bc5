"""The fused decode linear (compiler.compose.fused_linear): y = x W^T + delta in one pass, against the
fp32 loop reference; directly, under CUDA-graph capture, and through compiler.lora.AtomLinear (the
serving path). Needs CUDA and Triton; skips cleanly otherwise. The CPU test at the end runs everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from compiler.compose.reference import compose_delta_loop
from test_compose_triton import HAS_TRITON, TOL, rel_err_per_request

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@contextmanager
def fused_mode(mode: str, **cfg):
    import compiler.compose.fused_linear as fl

    old, old_cfg = fl.mode, dict(fl.config)
    fl.mode = mode
    fl.config.clear()
    fl.config.update(cfg)
    try:
        yield fl
    finally:
        fl.mode = old
        fl.config.clear()
        fl.config.update(old_cfg)


def make_group(d_in, d_outs, r, n_atoms, bsz, K, dtype, seed, pattern="ragged", b_rank_major=True):
    """x (bsz, T=1 made later), Ws, A_cat (N, M r, d_in), Bs (AtomPool layout), idx, w (CPU fp32 masters)."""
    g = torch.Generator().manual_seed(seed)
    M = len(d_outs)
    Ws = [torch.randn(d, d_in, generator=g) / d_in**0.5 for d in d_outs]
    A = torch.randn(n_atoms, M * r, d_in, generator=g) / d_in**0.5
    Bs = [torch.randn(n_atoms, d, r, generator=g) / r**0.5 for d in d_outs]
    if K == 0:
        idx = torch.empty(bsz, 0, dtype=torch.int64)
    elif pattern == "distinct" and bsz * K <= n_atoms:
        idx = torch.randperm(n_atoms, generator=g)[: bsz * K].reshape(bsz, K)
    else:
        idx = torch.randint(0, n_atoms, (bsz, K), generator=g)
        n_used = torch.randint(0, K + 1, (bsz,), generator=g)  # ragged: trailing padding
        idx[torch.arange(K)[None, :] >= n_used[:, None]] = -1
        if bsz > 2:
            idx[1] = -1  # one request without atoms
    w = torch.rand(bsz, K, generator=g) + 0.25
    w[idx < 0] = 1e3  # must be ignored
    return Ws, A, Bs, idx, w


def to_dev(dtype, Ws, A, Bs, b_rank_major=True):
    Wd = [W.to("cuda", dtype) for W in Ws]
    Ad = A.to("cuda", dtype)
    Bd = [B.transpose(1, 2).contiguous().to("cuda", dtype).transpose(1, 2) if b_rank_major else B.to("cuda", dtype)
          for B in Bs]
    return Wd, Ad, Bd


def reference(x, Ws, A, Bs, idx, w, ranks):
    """Per member x W^T + delta in fp32 on the CPU, from the device tensors' values."""
    xf = x.float().cpu()
    out, off = [], 0
    for W, B, r in zip(Ws, Bs, ranks):
        a = A[:, off:off + r].float().cpu()
        d = compose_delta_loop(xf, a, B.float().cpu(), idx.cpu(), w.cpu()) if idx.shape[1] else 0.0
        out.append(xf @ W.float().cpu().t() + d)
        off += r
    return out


def check(outs, refs, dtype, bsz, T):
    assert len(outs) == len(refs)
    for o, ref in zip(outs, refs):
        assert o.shape == (bsz * T, ref.shape[-1])
        o = o.float().cpu().view(bsz, T, -1)
        assert torch.isfinite(o).all()
        assert rel_err_per_request(o, ref) < TOL[dtype]


GROUPS = {"qkv": (96, (96, 32, 32)), "gate_up": (64, (160, 160)), "one": (160, (96,)), "four": (64, (48,) * 4)}


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("bsz,T", [(1, 1), (33, 1), (130, 1), (4, 3), (17, 4)])
@pytest.mark.parametrize("K", [0, 6])
@pytest.mark.parametrize("pdl", [False, True], ids=["nopdl", "pdl"])
def test_fused_linear_matches_reference(dtype, group, bsz, T, K, pdl):
    if pdl and (dtype != torch.bfloat16 or T != 1):
        pytest.skip("PDL: bf16 decode shapes only (the launch attribute does not change the arithmetic)")
    from compiler.compose.fused_linear import fused_linear_group

    d_in, d_outs = GROUPS[group]
    r = 2
    seed = hash((group, bsz, T, K)) % 1000
    Ws, A, Bs, idx, w = make_group(d_in, d_outs, r, 40, bsz, K, dtype, seed)
    Wd, Ad, Bd = to_dev(dtype, Ws, A, Bs)
    x = torch.randn(bsz, T, d_in, generator=torch.Generator().manual_seed(seed + 1)).to("cuda", dtype)
    outs = fused_linear_group(x, Wd, Ad, Bd, idx.cuda(), w.cuda(), ranks=[r] * len(d_outs), pdl=pdl)
    torch.cuda.synchronize()
    check(outs, reference(x, Wd, Ad, Bd, idx, w, [r] * len(d_outs)), dtype, bsz, T)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", [dict(block_n=16, block_k=32), dict(block_m=16, block_n=64, block_c=32),
                                 dict(block_m=64, block_n=32, block_k=64, stages=2, warps=8),
                                 dict(block_n=128, block_c=128, stages=3), dict(split_k=2),
                                 dict(split_k=3, block_k=32, block_c=16), dict(split_k=7, block_k=32),
                                 dict(split_k=8, block_k=16, block_n=32, block_c=32)],
                         ids=["n16k32", "m16n64c32", "m64w8", "n128c128", "sk2", "sk3c16", "sk7", "sk8k16"])
@pytest.mark.parametrize("bsz", [3, 40])
def test_fused_linear_tile_configs(dtype, cfg, bsz):
    """The tile overrides the bench sweeps compute the same function (ranks 1 and 3 mixed, B row-major)."""
    from compiler.compose.fused_linear import fused_linear_group

    d_in, d_outs = 200, (72, 136)
    g = torch.Generator().manual_seed(bsz)
    ranks = (1, 3)
    Ws = [torch.randn(d, d_in, generator=g) / d_in**0.5 for d in d_outs]
    A = torch.randn(30, 4, d_in, generator=g) / d_in**0.5
    Bs = [torch.randn(30, d, r, generator=g) for d, r in zip(d_outs, ranks)]
    idx = torch.randint(-1, 30, (bsz, 5), generator=g)
    w = torch.rand(bsz, 5, generator=g) + 0.25
    Wd, Ad, Bd = to_dev(dtype, Ws, A, Bs, b_rank_major=False)
    x = torch.randn(bsz, 2, d_in, generator=g).to("cuda", dtype)
    with fused_mode("always", **cfg):
        outs = fused_linear_group(x, Wd, Ad, Bd, idx.cuda(), w.cuda(), ranks=ranks)
    torch.cuda.synchronize()
    check(outs, reference(x, Wd, Ad, Bd, idx, w, ranks), dtype, bsz, 2)


@needs_gpu
def test_fused_linear_rank_slice_and_strided_weight():
    """A as a rank slice of a group tensor (what serve_linear gets for a member), W a row slice of a larger tensor."""
    from compiler.compose.fused_linear import fused_linear_group
    from compiler.compose.triton_ops import ComposeMeta

    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(3)
    A_cat = (torch.randn(20, 6, 128, generator=g) / 12).to("cuda", dtype)
    A = A_cat[:, 2:4]
    Wbig = (torch.randn(100, 128, generator=g) / 12).to("cuda", dtype)
    W = Wbig[10:74]
    B = torch.randn(20, 64, 2, generator=g).to("cuda", dtype)
    idx = torch.randint(-1, 20, (9, 3), generator=g).cuda()
    w = (torch.rand(9, 3, generator=g) + 0.5).cuda()
    x = torch.randn(9, 1, 128, generator=g).to("cuda", dtype)
    meta = ComposeMeta(idx, w, n_slots=20)
    for _ in range(2):  # the second call takes the cached fast path
        (y,) = fused_linear_group(x, [W], A, [B], meta=meta)
        torch.cuda.synchronize()
        check([y], reference(x, [W], A, [B], idx, w, [2]), dtype, 9, 1)


@needs_gpu
def test_fused_linear_rejects_bad_inputs():
    from compiler.compose.fused_linear import fused_linear_group

    x = torch.randn(2, 1, 16, device="cuda")
    W = torch.randn(8, 16, device="cuda")
    A = torch.randn(4, 2, 16, device="cuda")
    B = torch.randn(4, 8, 2, device="cuda")
    idx = torch.tensor([[0, 4], [1, -1]], device="cuda")
    with pytest.raises(IndexError):
        fused_linear_group(x, [W], A, [B], idx)
    with pytest.raises(ValueError):
        fused_linear_group(x, [W], A, [B], idx.clamp(max=3), ranks=[3])
    with pytest.raises(TypeError):
        fused_linear_group(x, [W.half()], A, [B], idx.clamp(max=3))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "nopdl"])
@pytest.mark.parametrize("cfg", [{}, dict(split_k=3, block_k=32)], ids=["plan", "splitk"])
def test_fused_linear_under_graph_capture(dtype, pdl, cfg):
    """A captured group call replayed with new inputs and new atoms == reference; scratch is the graph's own."""
    with fused_mode("always", **cfg):
        _graph_case(dtype, pdl)


def _graph_case(dtype, pdl):
    from compiler.compose.fused_linear import fused_linear_group
    from compiler.compose.triton_ops import ComposeMeta

    bsz, d_in, d_outs, r = 24, 192, (192, 64, 64), 2
    Ws, A, Bs, idx, w = make_group(d_in, d_outs, r, 48, bsz, 5, dtype, 11)
    Wd, Ad, Bd = to_dev(dtype, Ws, A, Bs)
    meta = ComposeMeta(idx.cuda(), w.cuda(), n_slots=48)
    x = torch.randn(bsz, 1, d_in, device="cuda", dtype=dtype)
    ranks = [r] * 3
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fused_linear_group(x, Wd, Ad, Bd, meta=meta, ranks=ranks, pdl=pdl)  # compiles
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fused_linear_group(x, Wd, Ad, Bd, meta=meta, ranks=ranks, pdl=pdl)
    for rep in range(3):
        _, _, _, idx2, w2 = make_group(d_in, d_outs, r, 48, bsz, 5, dtype, 20 + rep)
        meta.update_(idx2.cuda(), w2.cuda(), n_slots=48)
        x.copy_(torch.randn(bsz, 1, d_in, device="cuda", dtype=dtype))
        for o in outs:
            o.fill_(float("nan"))  # poison: every element must be rewritten by the replay
        graph.replay()
        torch.cuda.synchronize()
        check(outs, reference(x, Wd, Ad, Bd, idx2, w2, ranks), dtype, bsz, 1)


@needs_gpu
@pytest.mark.parametrize("cfg", [{}, dict(split_k=4, block_k=16)], ids=["plan", "splitk"])
def test_fused_linear_eager_reuse_of_scratch(cfg):
    """Back-to-back eager calls of different groups on one stream (shared scratch, workspace and
    split-K counters) stay correct, also through the cached fast path."""
    from compiler.compose.fused_linear import fused_linear_group
    from compiler.compose.triton_ops import ComposeMeta

    dtype = torch.bfloat16
    cases = []
    with fused_mode("always", **cfg):
        for i, (d_in, d_outs) in enumerate([(96, (96, 32, 32)), (64, (160, 160)), (160, (96,))] * 3):
            Ws, A, Bs, idx, w = make_group(d_in, d_outs, 2, 40, 17, 6, dtype, 100 + i)
            Wd, Ad, Bd = to_dev(dtype, Ws, A, Bs)
            x = torch.randn(17, 1, d_in, device="cuda", dtype=dtype)
            meta = ComposeMeta(idx.cuda(), w.cuda(), n_slots=40)
            outs = fused_linear_group(x, Wd, Ad, Bd, meta=meta, ranks=[2] * len(d_outs))
            cases.append((outs, x, Wd, Ad, Bd, idx, w, len(d_outs)))
    torch.cuda.synchronize()
    for outs, x, Wd, Ad, Bd, idx, w, M in cases:
        check(outs, reference(x, Wd, Ad, Bd, idx, w, [2] * M), dtype, 17, 1)


# ---- through AtomLinear (the serving entry point) --------------------------------------------
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("grouped_on", [True, False], ids=["grouped", "ungrouped"])
@pytest.mark.parametrize("bsz,T", [(5, 1), (33, 1), (4, 3)])
def test_atom_linear_fused_eager(dtype, grouped_on, bsz, T):
    from test_compose_overlap import batch, build, check as check_layer, inputs, layer, reference as ref_layer

    import compiler.compose.fused_linear as fl

    calls = []
    real = fl.fused_linear_group

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    with fused_mode("always"), torch.no_grad():
        pool, st, mods, ids = build(dtype)
        if not grouped_on:
            st.set_groups([])
        fl.fused_linear_group = spy
        try:
            for step in range(3):  # the first forward records the siblings' weights
                idx, w = batch(pool, ids, bsz, 6, seed=step)
                st.set(idx.cuda(), w.cuda())
                xs = inputs(bsz, T, dtype, 10 + step, mods)
                out = layer(mods, *xs)
                torch.cuda.synchronize()
                check_layer(out, ref_layer(pool, mods, xs, idx, w), dtype)
        finally:
            fl.fused_linear_group = real
    assert calls, "the fused path was never taken"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", [{}, dict(split_k=3, block_k=32)], ids=["plan", "splitk"])
def test_atom_linear_fused_under_graph_capture(dtype, cfg):
    from test_compose_overlap import batch, check as check_layer, inputs, layer, layer_dims, reference as ref_layer
    from test_compose_overlap import setup

    bsz = 24
    with fused_mode("always", **cfg), torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, bsz, seed=3, dims=layer_dims(136, 264, 40))
        meta = st.meta
        xs = inputs(bsz, 1, dtype, 4, mods)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: compiles, records the siblings' weights
                layer(mods, *xs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(mods, *xs)
        for rep in range(3):
            idx2, w2 = batch(pool, ids, bsz, 6, seed=40 + rep)
            meta.update_(idx2.cuda(), w2.cuda(), n_slots=pool.capacity)
            for x, nx in zip(xs, inputs(bsz, 1, dtype, 50 + rep, mods)):
                x.copy_(nx)
            for o in out.values():
                o.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            check_layer(out, ref_layer(pool, mods, xs, idx2, w2), dtype)


@needs_gpu
def test_atom_linear_fused_changed_sibling_weight():
    from test_compose_overlap import check_changed_sibling_weight

    with fused_mode("auto"):
        check_changed_sibling_weight(torch.bfloat16)


@needs_gpu
@pytest.mark.parametrize("grouped_on", [True, False], ids=["grouped", "ungrouped"])
def test_eager_lane_replays_only_unchanged_operands(grouped_on):
    """The eager lane (grouped._lane_run) replays a module's last fused launches, bit for bit what the full path
    gives, and declines (full path, right outputs) after a new weight object, replaced pool entries, a changed
    fused_linear setting; ComposeState.set empties it."""
    from test_compose_overlap import batch, check as check_layer, inputs, layer, reference as ref_layer
    from test_compose_overlap import setup
    from torch import nn

    import compiler.compose.grouped as gr

    used = []
    real = gr._lane_run

    def spy(*a, **k):
        y = real(*a, **k)
        used.append(y is not None)
        return y

    dtype, bsz = torch.bfloat16, 8
    with fused_mode("auto"), torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, bsz, seed=11)
        if not grouped_on:
            st.set_groups([])
        n_lanes = 4 if grouped_on else 7  # qkv, o, gate/up, down as groups or seven single linears

        def run(seed):
            xs = inputs(bsz, 1, dtype, seed, mods)
            used.clear()
            out = layer(mods, *xs)
            torch.cuda.synchronize()
            check_layer(out, ref_layer(pool, mods, xs, idx, w), dtype)
            return xs, out

        gr._lane_run = spy
        try:
            run(1)  # round-4 path (the first eager call of each shape)
            run(2)  # fused: the lanes are made
            assert len([v for v in st.lanes.values() if v is not None]) == n_lanes
            xs, out = run(3)
            assert used == [True] * n_lanes
            st.lanes.clear()  # the same inputs through the full path: the same launches, the same bits
            ref_out = layer(mods, *xs)
            for n in out:
                assert torch.equal(out[n], ref_out[n]), n
            run(4)
            k = next(n for n in mods if n.endswith("k_proj"))
            mods[k].base.weight = nn.Parameter(torch.randn_like(mods[k].base.weight))  # a new weight object
            run(5)  # grouped: q's lane still sees k's old weight (recorded at k's call): k recomputes its own
            seen = list(used)
            run(6)
            assert False in seen + used
            run(7)
            assert all(used) and len(used) == n_lanes  # re-made with the new weight
            st.pools = {n: (a, b) for n, (a, b) in st.pools.items()}  # the same tensors in new entries
            run(8)
            assert not any(used)
            with fused_mode("auto", block_n=32):
                run(9)
                assert not any(used)
            idx, w = batch(pool, ids, bsz, 6, seed=12)
            st.set(idx.cuda(), w.cuda())
            assert not st.lanes
            run(10)
            assert not any(used)
            run(11)
            assert all(used) and len(used) == n_lanes
        finally:
            gr._lane_run = real


def test_fused_mode_declines_on_cpu():
    """On the CPU (or with mode "never") the serving path does not take the fused linear."""
    pytest.importorskip("triton")
    import compiler.compose.fused_linear as fl

    x = torch.randn(2, 1, 8)
    assert not fl.wants(x)
    old = fl.mode
    fl.mode = "never"
    try:
        assert not fl.wants(x)
    finally:
        fl.mode = old


@needs_gpu
def test_auto_mode_fuses_eager_calls_only():
    """"auto": the first eager call of a shape takes the round-4 path (compiling what a capture launches),
    later eager calls the fused linear, captured calls the round-4 path; outputs match the reference."""
    from test_compose_overlap import batch, check as check_layer, inputs, layer, layer_dims, reference as ref_layer
    from test_compose_overlap import setup

    import compiler.compose.fused_linear as fl

    calls = []
    real = fl.fused_linear_group

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    dtype, bsz = torch.bfloat16, 12
    with fused_mode("auto"), torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, bsz, seed=9, dims=layer_dims(72, 136, 24))
        xs = inputs(bsz, 1, dtype, 1, mods)
        fl.fused_linear_group = spy
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                layer(mods, *xs)
                assert not calls, "the first eager call of a shape must take the round-4 path"
                out = layer(mods, *xs)
                assert calls, "later eager calls take the fused linear"
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            check_layer(out, ref_layer(pool, mods, xs, idx, w), dtype)
            n = len(calls)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = layer(mods, *xs)
            assert len(calls) == n, "a captured call took the fused linear in auto mode"
        finally:
            fl.fused_linear_group = real
        for rep in range(2):
            idx2, w2 = batch(pool, ids, bsz, 6, seed=60 + rep)
            st.meta.update_(idx2.cuda(), w2.cuda(), n_slots=pool.capacity)
            for x, nx in zip(xs, inputs(bsz, 1, dtype, 70 + rep, mods)):
                x.copy_(nx)
            graph.replay()
            torch.cuda.synchronize()
            check_layer(out, ref_layer(pool, mods, xs, idx2, w2), dtype)
