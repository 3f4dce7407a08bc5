"""The GPU serving path with the delta on a side stream (compiler.compose.grouped.serve_linear /
serve_group, through compiler.lora.AtomLinear), eager and under CUDA-graph capture, against the
fp32 loop reference. Needs CUDA and Triton; skips cleanly otherwise (streams and graphs have no
interpreter equivalent). The CPU test at the end runs everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from compiler.compose.reference import compose_delta_loop
from compiler.lora import AtomLinear, ComposeState
from serving.atom_pool import AtomPool
from test_compose_triton import HAS_TRITON, TOL, rel_err_per_request

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")

# one layer's projections (q/k/v and gate/up grouped, o and down alone), small widths
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
O, DOWN = "m.layers.0.self_attn.o_proj", "m.layers.0.mlp.down_proj"


def layer_dims(D=96, FF=160, KV=32):
    dims = {f"m.layers.0.self_attn.{p}": (D, d) for p, d in (("q_proj", D), ("k_proj", KV), ("v_proj", KV),
                                                             ("o_proj", D))}
    dims.update({f"m.layers.0.mlp.{p}": (D, FF) for p in ("gate_proj", "up_proj")})
    dims[DOWN] = (FF, D)
    return dims


def is_qkv(n):
    return n.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj")


def is_gu(n):
    return n.rsplit(".", 1)[1] in ("gate_proj", "up_proj")


@contextmanager
def overlap_mode(mode: str):
    import compiler.compose.grouped as grouped

    old = grouped.overlap
    grouped.overlap = mode
    try:
        yield
    finally:
        grouped.overlap = old


def build(dtype, n_atoms=24, r=2, seed=0, dims=None):
    dims = dims or layer_dims()
    g = torch.Generator().manual_seed(seed)
    pool = AtomPool(dims, rank=r, capacity=n_atoms, dtype=dtype, device="cuda")
    ids = [f"a{i}" for i in range(n_atoms)]
    pool.add_many(ids, {n: (torch.randn(n_atoms, r, d_in, generator=g) / d_in**0.5,
                            torch.randn(n_atoms, d_out, r, generator=g) / r**0.5) for n, (d_in, d_out) in dims.items()})
    st = ComposeState()
    st.pools = pool.pools()
    st.set_groups(pool.compose_groups())
    mods = {}
    for n, (d_in, d_out) in dims.items():
        lin = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(d_out, d_in, generator=g) / d_in**0.5)
        mods[n] = AtomLinear(lin.to("cuda", dtype), n, st)
    return pool, st, mods, ids


def setup(dtype, bsz, seed, **kw):
    """build() with a batch of atoms set on the state: (pool, state, modules, ids, idx, w)."""
    pool, st, mods, ids = build(dtype, **kw)
    idx, w = batch(pool, ids, bsz, 6, seed=seed)
    st.set(idx.cuda(), w.cuda())
    return pool, st, mods, ids, idx, w


def layer(mods, x_attn, x_mlp, x_down):
    """The seven projections in a decoder layer's order (each group's members on one input object)."""
    out = {n: mods[n](x_attn) for n in mods if is_qkv(n)}
    out[O] = mods[O](x_attn)
    for n in mods:
        if is_gu(n):
            out[n] = mods[n](x_mlp)
    out[DOWN] = mods[DOWN](x_down)
    return out


def reference(pool, mods, xs, idx, w):
    pools = pool.pools()
    ref = {}
    for n, mod in mods.items():
        x = xs[0] if is_qkv(n) or n == O else (xs[1] if is_gu(n) else xs[2])
        A, B = pools[n]
        W = mod.base.weight
        ref[n] = x.float().cpu() @ W.float().cpu().t() + compose_delta_loop(x.float().cpu(), A.float().cpu(),
                                                                           B.float().cpu(), idx.cpu(), w.cpu())
    return ref


def inputs(bsz, T, dtype, seed, mods):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bsz, T, mods[n].in_features, generator=g).to("cuda", dtype) for n in (O, O, DOWN)]


def batch(pool, ids, bsz, K, seed):
    g = torch.Generator().manual_seed(seed)
    lists = [[ids[i] for i in torch.randperm(len(ids), generator=g)[:int(torch.randint(0, K + 1, (1,), generator=g))]]
             for _ in range(bsz)]
    ws = [[float(v) for v in (torch.rand(len(a), generator=g) + 0.25)] for a in lists]
    return pool.slots(lists, ws)


def check(out, ref, dtype):
    assert out.keys() == ref.keys()
    for n in ref:
        o = out[n]
        assert torch.isfinite(o).all(), n
        assert rel_err_per_request(o.float().cpu(), ref[n]) < TOL[dtype], n


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bsz,T", [(5, 1), (33, 1), (4, 3)])
def test_side_stream_eager_matches_reference(dtype, bsz, T):
    import compiler.compose.grouped as grouped

    pool, st, mods, ids = build(dtype)
    with overlap_mode("always"), torch.no_grad():
        for step in range(3):  # the first forward records the siblings' weights; later ones overlap
            idx, w = batch(pool, ids, bsz, 6, seed=step)
            st.set(idx.cuda(), w.cuda())
            xs = inputs(bsz, T, dtype, 10 + step, mods)
            out = layer(mods, *xs)
            if step:
                assert grouped._sides, "the side stream was never made"
            torch.cuda.synchronize()
            check(out, reference(pool, mods, xs, idx, w), dtype)


@needs_gpu
def test_side_stream_outputs_survive_later_work():
    """Outputs handed out by the overlapped path stay intact while later layers allocate and run."""
    dtype = torch.bfloat16
    with overlap_mode("always"), torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, 16, seed=1)
        layer(mods, *inputs(16, 1, dtype, 0, mods))  # records weights
        keep = []
        for step in range(4):
            xs = inputs(16, 1, dtype, 20 + step, mods)
            out = layer(mods, *xs)
            junk = [torch.randn(16, 1, 4096, device="cuda") for _ in range(4)]  # reuse freed blocks
            del junk
            keep.append((xs, out))
        torch.cuda.synchronize()
        for xs, out in keep:
            check(out, reference(pool, mods, xs, idx, w), dtype)


# "capture" first and with widths no other test uses: its eager warm-up must compile every kernel
# variant the capture launches (a capture cannot compile)
@needs_gpu
@pytest.mark.parametrize("mode", ["capture", "always", "never"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_side_stream_under_graph_capture(mode, dtype):
    """A captured layer (fork/join inside the graph) replayed with new inputs and new atoms == reference."""
    import compiler.compose.grouped as grouped

    bsz = 24
    with overlap_mode(mode), torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, bsz, seed=3, dims=layer_dims(200, 300, 48))
        meta = st.meta
        xs = inputs(bsz, 1, dtype, 4, mods)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: compiles, records the siblings' weights, makes the side stream
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
                o.fill_(float("nan"))  # poison: every element must be rewritten by the replay
            graph.replay()
            torch.cuda.synchronize()
            check(out, reference(pool, mods, xs, idx2, w2), dtype)
    if mode != "never":
        assert grouped._sides, "the side stream was never made"


def check_changed_sibling_weight(dtype) -> None:
    """A sibling projection whose weight object was replaced after a first call must not be served from the
    group's earlier state: the layer's outputs match the reference with the new weight (under the caller's mode)."""
    with torch.no_grad():
        pool, st, mods, ids, idx, w = setup(dtype, 8, seed=5)
        layer(mods, *inputs(8, 1, dtype, 6, mods))
        k = next(n for n in mods if n.endswith("k_proj"))
        mods[k].base.weight = nn.Parameter(torch.randn_like(mods[k].base.weight))  # a new weight object
        xs = inputs(8, 1, dtype, 7, mods)
        out = layer(mods, *xs)
        torch.cuda.synchronize()
        check(out, reference(pool, mods, xs, idx, w), dtype)


@needs_gpu
def test_changed_sibling_weight_is_not_served_stale():
    with overlap_mode("always"):
        check_changed_sibling_weight(torch.float32)


@needs_gpu
def test_stream_argument_needs_out():
    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import compose_delta_triton

    pool, st, mods, ids, idx, w = setup(torch.float32, 4, seed=8)
    x = torch.randn(4, 1, mods[O].in_features, device="cuda")
    A, B = pool.pools()[O]
    s = torch.cuda.Stream()
    with pytest.raises(ValueError, match="out="):
        compose_delta_triton(x, A, B, meta=st.meta, stream=s)
    names, A_cat, ranks = pool.compose_groups()[0]
    with pytest.raises(ValueError, match="outs="):
        compose_group_triton(x, A_cat, [pool.pools()[n][1] for n in names], meta=st.meta, ranks=ranks, stream=s)


def test_cpu_path_never_forks():
    """On the CPU the serving helpers decline (None) and AtomLinear's plain path runs."""
    pytest.importorskip("triton")
    from compiler.compose.grouped import serve_linear

    lin = nn.Linear(6, 5, bias=False)
    x = torch.randn(2, 1, 6)
    assert serve_linear(lin, x, torch.zeros(3, 1, 6), torch.zeros(3, 5, 1), meta=None) is None
