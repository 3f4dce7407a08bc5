"""One delta launch per projection group (q/k/v, gate/up): the grouped kernel entry and its wiring.

Kernel tests need CUDA and Triton (or TRITON_INTERPRET=1 with Triton installed, on CPU) and
skip cleanly otherwise; the model-level test needs CUDA. The CPU tests (AtomPool's grouped
storage, the training / CPU path of AtomLinear with groups set) run everywhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compiler.compose.reference import compose_delta_loop, compose_delta_torch
from compiler.lora import AtomLinear, ComposeState
from serving.atom_pool import AtomPool, projection_groups
from test_compose_triton import HAS_TRITON, KDEV, TOL, kernel_dtypes, make_case, needs_kernel, rel_err_per_request, table

MEMBERS = (80, 24, 40)  # d_out of the members (q-like, k-like, v-like), d_in 96


def make_group(bsz, K, R, pattern, T=1, d_in=96, d_outs=MEMBERS, ranks=None, seed=0):
    """x, A_cat (N, sum r, d_in), [B_m (N, d_out_m, r_m)], idx, w, unused slots (fp32, CPU)."""
    x, A0, _, idx, w, unused = make_case(bsz, K, R, pattern, T=T, d_in=d_in, d_out=8, seed=seed)
    N = A0.shape[0]
    ranks = ranks or (R,) * len(d_outs)
    g = torch.Generator().manual_seed(seed + 7)
    A = torch.randn(N, sum(ranks), d_in, generator=g) / d_in**0.5
    Bs = [torch.randn(N, d, r, generator=g) / max(r, 1) ** 0.5 for d, r in zip(d_outs, ranks)]
    return x, A, Bs, idx, w, unused, tuple(ranks)


def group_to_dev(dtype, x, A, Bs, idx, w, unused=(), b_rows=True):
    A = A.clone()
    Bs = [B.clone() for B in Bs]
    if unused:
        A[list(unused)] = float("nan")
        for B in Bs:
            B[list(unused)] = float("nan")
    Bs = [B.to(KDEV, dtype) for B in Bs]
    if b_rows:  # AtomPool's layout: transposed view of a contiguous (N, r, d_out)
        Bs = [B.transpose(1, 2).contiguous().transpose(1, 2) for B in Bs]
    return x.to(KDEV, dtype), A.to(KDEV, dtype), Bs, idx.to(KDEV), w.to(KDEV)


def group_oracle(x, A, Bs, idx, w, ranks):
    """fp32 loop reference, one member at a time on its rank slice of A."""
    outs, off = [], 0
    for B, r in zip(Bs, ranks):
        outs.append(compose_delta_loop(x.cpu(), A[:, off:off + r].cpu(), B.cpu(), idx.cpu(), w.cpu()))
        off += r
    return outs


def check(outs, refs, dtype):
    assert len(outs) == len(refs)
    for o, ref in zip(outs, refs):
        assert o.shape == ref.shape and o.dtype == dtype
        assert torch.isfinite(o).all(), "an output element was not written (or a poisoned slot was read)"
        assert rel_err_per_request(o.float().cpu(), ref) < TOL[dtype]


# ---- the grouped kernel entry against the fp32 loop ----------------------------------------
@needs_kernel
@pytest.mark.parametrize("path", ["fused", "wide"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize("bsz,K,R,pattern", list(table()))
def test_group_matches_loop(bsz, K, R, pattern, dtype, path):
    from compiler.compose.grouped import compose_group_triton

    T = 1 if (bsz + K) % 2 else 3  # the grouped plans serve T <= 4 tokens per request
    x, A, Bs, idx, w, unused, ranks = make_group(bsz, K, R, pattern, T=T, seed=bsz + K + R)
    x, A, Bs, idx, w = group_to_dev(dtype, x, A, Bs, idx, w, unused, b_rows=pattern != "shared")
    refs = group_oracle(x, A, Bs, idx, w, ranks)
    outs = [torch.full((bsz, T, d), float("nan"), dtype=dtype, device=KDEV) for d in MEMBERS]  # poisoned
    got = compose_group_triton(x, A, Bs, idx, w, outs=outs, path=path)
    assert all(g.data_ptr() == o.data_ptr() for g, o in zip(got, outs))
    check(got, refs, dtype)


@needs_kernel
@pytest.mark.parametrize("path", ["auto", "fused", "wide"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize(
    "bsz,T,K,R,d_outs,ranks",
    [
        (3, 1, 8, 2, (80, 24, 40), None),  # q/k/v-like
        (5, 2, 8, 2, (200, 200), None),  # gate/up-like
        (4, 1, 8, 2, (64, 48, 32, 80, 16), None),  # five members: two expand launches over one shrink
        (3, 1, 8, 0, (64, 48), (1, 3)),  # mixed ranks
        (2, 1, 7, 0, (64, 48, 40), (2, 0, 3)),  # a member without ranks: zero delta
        (7, 1, 64, 4, (80, 24, 40), None),  # 768 stacked group ranks: several shrink chunks, fused falls back
        (2, 1, 16, 8, (72, 40), None),  # 128 ranks per member (the register limit), 256 in the group
        (3, 5, 8, 2, (80, 24, 40), None),  # T > 4: per-member tile plans
        (32, 1, 8, 2, (1024, 256, 256), None),  # decode shape of a small model
        (2, 1, 8, 2, (100, 36), None),  # d_out not multiples of 16
    ],
)
def test_group_shapes(bsz, T, K, R, d_outs, ranks, dtype, path):
    from compiler.compose.grouped import compose_group_triton

    d_in = 2048 if bsz == 32 else 96
    x, A, Bs, idx, w, unused, ranks = make_group(bsz, K, R, "zipf", T=T, d_in=d_in, d_outs=d_outs, ranks=ranks,
                                                 seed=T + sum(d_outs))
    x, A, Bs, idx, w = group_to_dev(dtype, x, A, Bs, idx, w, unused)
    refs = group_oracle(x, A, Bs, idx, w, ranks)
    got = compose_group_triton(x, A, Bs, idx, w, ranks=ranks, path=path)  # fresh outputs
    check(got, refs, dtype)
    for o in got:
        assert o.is_contiguous() and o.data_ptr() % 16 == 0


@needs_kernel
@pytest.mark.parametrize("path", ["fused", "wide"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
def test_group_accumulates_and_matches_ungrouped(dtype, path):
    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    x, A, Bs, idx, w, unused, ranks = make_group(7, 8, 2, "one_empty", T=1, seed=5)
    x, A, Bs, idx, w = group_to_dev(dtype, x, A, Bs, idx, w, unused)
    meta = ComposeMeta(idx, w, n_slots=A.shape[0])
    ys = [torch.randn(7, 1, d).to(KDEV, dtype) for d in MEMBERS]
    outs = [y.clone() for y in ys]
    compose_group_triton(x, A, Bs, meta=meta, outs=outs, accumulate=True, path=path)
    refs = [r + y.float().cpu() for r, y in zip(group_oracle(x, A, Bs, idx, w, ranks), ys)]
    check(outs, refs, dtype)
    # the ungrouped kernel on the members' rank slices of A (strided views) gives the same deltas
    off = 0
    for B, r, ref in zip(Bs, ranks, group_oracle(x, A, Bs, idx, w, ranks)):
        got = compose_delta_triton(x, A[:, off:off + r], B, meta=meta, path=path)
        assert rel_err_per_request(got.float().cpu(), ref) < TOL[dtype]
        off += r


@needs_kernel
def test_group_rejects_bad_inputs_before_launch():
    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import ComposeMeta

    x = torch.randn(2, 1, 32, device=KDEV)
    A = torch.randn(4, 4, 32, device=KDEV)
    Bs = [torch.randn(4, 16, 2, device=KDEV), torch.randn(4, 8, 2, device=KDEV)]
    idx = torch.tensor([[0, 1], [2, 4]], device=KDEV)
    w = torch.ones(2, 2, device=KDEV)
    outs = [torch.full((2, 1, 16), float("nan"), device=KDEV), torch.full((2, 1, 8), float("nan"), device=KDEV)]
    with pytest.raises(IndexError):
        compose_group_triton(x, A, Bs, idx, w, outs=outs)
    with pytest.raises(IndexError):
        compose_group_triton(x, A, Bs, meta=ComposeMeta(idx, w), outs=outs)
    assert all(torch.isnan(o).all() for o in outs), "the kernel ran despite the bad index"
    idx[1, 1] = 3
    with pytest.raises(ValueError, match="sum"):
        compose_group_triton(x, A, Bs, idx, w, ranks=(2, 1))
    with pytest.raises(ValueError):
        compose_group_triton(x, A, [Bs[0], torch.randn(4, 8, 3, device=KDEV)], idx, w)
    with pytest.raises(TypeError):
        compose_group_triton(x, A.half(), Bs, idx, w)
    with pytest.raises(ValueError):
        compose_group_triton(x, A, Bs, idx, w, outs=[outs[0]])


@needs_kernel
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize("bsz,path", [(6, "auto"), (70, "auto"), (6, "fused"), (6, "wide")])
def test_group_repeated_calls_take_the_cached_launch(dtype, bsz, path):
    """The eager fast path (cached launches per call shape) must see new inputs, slots, weights and outputs."""
    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import ComposeMeta

    x, A, Bs, idx, w, unused, ranks = make_group(bsz, 8, 2, "zipf", T=1, d_in=128, seed=3)
    x, A, Bs, idx, w = group_to_dev(dtype, x, A, Bs, idx, w, unused)
    meta = ComposeMeta(idx, w, n_slots=A.shape[0])
    clean = torch.tensor(sorted(set(range(A.shape[0])) - set(unused)))
    for rep in range(4):
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(rep)).to(KDEV, dtype)
        got = compose_group_triton(x, A, Bs, meta=meta, path=path)
        check(got, group_oracle(x, A, Bs, meta.idx, meta.w, ranks), dtype)
        ys = [torch.randn(bsz, 1, d).to(KDEV, dtype) for d in MEMBERS]
        outs = [y.clone() for y in ys]
        compose_group_triton(x, A, Bs, meta=meta, outs=outs, accumulate=True, path=path)
        refs = [r + y.float().cpu() for r, y in zip(group_oracle(x, A, Bs, meta.idx, meta.w, ranks), ys)]
        check(outs, refs, dtype)
        g = torch.Generator().manual_seed(10 + rep)
        new_idx = clean[torch.randint(0, len(clean), (bsz, 8), generator=g)]
        new_idx[torch.rand(bsz, 8, generator=g) < 0.2] = -1
        meta.update_(new_idx.to(KDEV), (torch.rand(bsz, 8, generator=g) + 0.5).to(KDEV), n_slots=A.shape[0])
    xs = torch.randn(bsz * 96 + 1).to(KDEV, dtype)[1:].view(bsz, 1, 96)  # misaligned: not the cached launch
    xs = torch.nn.functional.pad(xs, (0, 32))  # d_in 128 again, fresh and aligned
    check(compose_group_triton(xs, A, Bs, meta=meta, path=path), group_oracle(xs, A, Bs, meta.idx, meta.w, ranks),
          dtype)
    with pytest.raises(IndexError):  # a pool too small for the slots: checked on every call
        compose_group_triton(x, A[:2], [B[:2] for B in Bs], meta=meta, path=path)


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("bsz,path", [(7, "auto"), (7, "fused"), (96, "auto"), (32, "wide")])
def test_group_under_cuda_graph_with_refilled_meta(bsz, path):
    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import ComposeMeta

    dtype = torch.bfloat16
    x1, A, Bs, idx1, w1, _, ranks = make_group(bsz, 8, 2, "zipf", T=1, d_in=128, seed=1)
    x2, _, _, idx2, w2, _, _ = make_group(bsz, 8, 2, "zipf", T=1, d_in=128, seed=2)
    N = max(A.shape[0], int(idx2.max()) + 1)
    A = torch.randn(N, A.shape[1], 128) / 11
    Bs = [torch.randn(N, d, 2) for d in MEMBERS]
    x, A, Bs, idx, w = group_to_dev(dtype, x1, A, Bs, idx1, w1)
    meta = ComposeMeta(idx, w, n_slots=N)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for p in ("wide", "fused"):  # compile outside the capture
            compose_group_triton(x, A, Bs, meta=meta, path=p)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = compose_group_triton(x, A, Bs, meta=meta, path=path)
    x.copy_(x2.to("cuda", dtype))
    meta.update_(idx2.to("cuda"), w2.to("cuda"), n_slots=N)
    for o in outs:
        o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    check(outs, group_oracle(x, A, Bs, idx2, w2, ranks), dtype)


# ---- the model: grouped AtomLinear against the ungrouped path --------------------------------
def tiny_llama(dtype, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=256, num_hidden_layers=3, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def attach_pool(model, dtype, device, n_atoms=40, r=2, groups="auto"):
    from compiler.lora import attach, module_shapes, target_names

    proj = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    names = target_names(model, proj, list(range(model.config.num_hidden_layers)))
    shapes = module_shapes(model, names)
    pool = AtomPool(shapes, rank=r, capacity=n_atoms, dtype=dtype, device=device, groups=groups)
    g = torch.Generator().manual_seed(1)
    ids = [f"a{i}" for i in range(n_atoms)]
    pool.add_many(ids, {n: (torch.randn(n_atoms, r, d_in, generator=g) / 8, torch.randn(n_atoms, d_out, r, generator=g) / 4)
                        for n, (d_in, d_out) in shapes.items()})
    state = attach(model, names)
    state.pools = pool.pools()
    return pool, state, ids


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tiny_llama_grouped_matches_ungrouped(dtype):
    from compiler.compose import use_backend
    import compiler.compose.grouped as grouped

    model = tiny_llama(dtype, "cuda")
    pool, state, ids = attach_pool(model, dtype, "cuda")
    bsz = 5
    lists = [ids[3 * b:3 * b + 3 + b % 3] for b in range(bsz)]
    lists[2] = []
    idx, w = pool.slots(lists)
    tok = torch.randint(0, 256, (bsz, 9), generator=torch.Generator().manual_seed(2)).cuda()

    def run(grouped_on: bool, backend: str = "auto"):
        with use_backend(backend), torch.no_grad():
            state.set_groups(pool.compose_groups() if grouped_on else [])
            state.set(idx, w)
            out = model(input_ids=tok[:, :6], use_cache=True)  # prefill (T=6: per-member plans)
            cache = out.past_key_values
            logits = [out.logits.float()]
            for t in range(6, 9):  # decode steps (T=1: the grouped GEMV plans)
                out = model(input_ids=tok[:, t:t + 1], past_key_values=cache, use_cache=True)
                logits.append(out.logits.float())
            state.clear()
            return torch.cat(logits, dim=1)

    calls = []
    orig, orig_fused = grouped.compose_group_triton, grouped._fl.fused_linear_group
    grouped.compose_group_triton = lambda *a, **k: calls.append("delta") or orig(*a, **k)
    # fused_linear "auto" takes bf16/fp16 eager decode calls from a shape's second call on (the group's
    # base GEMMs and deltas in one pass): that is a grouped launch too (single linears, o/down, also go
    # through fused_linear_group, with one weight: not counted)
    grouped._fl.fused_linear_group = lambda *a, **k: (len(a[1]) > 1 and calls.append("fused")) or orig_fused(*a, **k)
    # and a group's fused launches replayed by the eager lane (from the step after a fused call)
    orig_lane = grouped._lane_run

    def lane(lane_, state_, names, *a):
        y = orig_lane(lane_, state_, names, *a)
        if y is not None and len(names) > 1:
            calls.append("lane")
        return y

    grouped._lane_run = lane
    try:
        got = run(True)
    finally:
        grouped.compose_group_triton, grouped._fl.fused_linear_group = orig, orig_fused
        grouped._lane_run = orig_lane
    assert len(calls) == 4 * 2 * 3, "one grouped launch per q/k/v and gate/up group, layer and forward"
    if dtype == torch.float32:
        assert set(calls) == {"delta"}
    ungrouped = run(False)
    reference = run(False, "torch")
    tol = 1e-4 if dtype == torch.float32 else 6e-2  # bf16: the kernel and torch paths round differently
    scale = reference.abs().max()
    assert (got - ungrouped).abs().max() <= tol * scale
    assert (got - reference).abs().max() <= tol * scale
    assert (ungrouped - reference).abs().max() <= tol * scale


# ---- CPU: grouped storage and the training / CPU path ---------------------------------------
LAYER = {f"m.layers.0.self_attn.{p}": (12, d) for p, d in (("q_proj", 12), ("k_proj", 4), ("v_proj", 4), ("o_proj", 12))}
LAYER.update({f"m.layers.0.mlp.{p}": (12, 20) for p in ("gate_proj", "up_proj")})
LAYER["m.layers.0.mlp.down_proj"] = (20, 12)


def test_projection_groups_and_grouped_pool_storage():
    assert sorted(projection_groups(LAYER)) == sorted([
        ("m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.k_proj", "m.layers.0.self_attn.v_proj"),
        ("m.layers.0.mlp.gate_proj", "m.layers.0.mlp.up_proj")])
    g = torch.Generator().manual_seed(0)
    atoms = {f"a{i}": {n: (torch.randn(2, d_in, generator=g), torch.randn(d_out, 2, generator=g))
                       for n, (d_in, d_out) in LAYER.items()} for i in range(5)}
    grouped = AtomPool(LAYER, rank=1, capacity=2)
    flat = AtomPool(LAYER, rank=1, capacity=2, groups=None)
    for pool in (grouped, flat):
        for a, wts in atoms.items():
            pool.add(a, wts)  # grows capacity and rank
        pool.evict("a1")
        pool.add("a1", atoms["a3"])
    assert grouped.rank == 2 and grouped.capacity == 8
    pg, pf = grouped.pools(), flat.pools()
    for n in LAYER:
        assert torch.equal(pg[n][0], pf[n][0]) and torch.equal(pg[n][1], pf[n][1])
        assert pg[n][0] is grouped.pools()[n][0]
    for names, A, ranks in grouped.compose_groups():
        off = 0
        for n, r in zip(names, ranks):
            assert torch.equal(A[:, off:off + r], pg[n][0]) and pg[n][0].data_ptr() == A[:, off:off + r].data_ptr()
            off += r
    x = torch.randn(3, 2, 12)
    idx, w = grouped.slots([["a0", "a1"], ["a4"], []])
    for n in LAYER:
        if LAYER[n][0] == 12:
            ref = compose_delta_loop(x, pf[n][0], pf[n][1], idx, w)
            assert torch.allclose(compose_delta_torch(x, pg[n][0], pg[n][1], idx, w), ref, atol=1e-5)


def test_cpu_and_training_path_unchanged_with_groups_set():
    """Groups set on the state must not change the CPU / training path: same outputs, same gradients."""
    torch.manual_seed(0)
    pool = AtomPool(LAYER, rank=2, capacity=4)
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        pool.add(f"a{i}", {n: (torch.randn(2, d_in, generator=g), torch.randn(d_out, 2, generator=g))
                           for n, (d_in, d_out) in LAYER.items()})
    names = ["m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.k_proj", "m.layers.0.self_attn.v_proj"]
    bases = {n: nn.Linear(12, LAYER[n][1], bias=False) for n in names}
    x = torch.randn(2, 3, 12, requires_grad=True)
    idx, w = pool.slots([["a0", "a2"], ["a1"]])

    def run(with_groups: bool):
        st = ComposeState()
        st.pools = pool.pools()
        if with_groups:
            st.set_groups(pool.compose_groups())
        st.set(idx, w)
        assert st.meta is None  # CPU: no kernel metadata
        mods = [AtomLinear(bases[n], n, st) for n in names]
        ys = [m(x) for m in mods]
        grads = torch.autograd.grad(sum(y.square().sum() for y in ys), [x] + [bases[n].weight for n in names])
        return ys, grads

    ys_g, gr_g = run(True)
    ys_f, gr_f = run(False)
    for a, b in zip(ys_g, ys_f):
        assert torch.equal(a, b)
    for a, b in zip(gr_g, gr_f):
        assert torch.equal(a, b)
    for n, y in zip(names, ys_f):
        A, B = pool.pools()[n]
        ref = bases[n](x) + compose_delta_loop(x, A, B, idx, w)
        assert torch.allclose(y, ref, atol=1e-4)
