"""Batched composition: the torch reference and the Triton kernel against the fp32 loop oracle.

The CPU table (reference vs loop) runs everywhere. The kernel table needs CUDA and Triton and
skips cleanly otherwise; with TRITON_INTERPRET=1 and Triton installed it also runs on CPU
through Triton's interpreter (fp32/fp16 only: the interpreter mishandles bf16).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from compiler.compose import compose_delta, use_backend
from compiler.compose.reference import compose_delta_loop, compose_delta_torch

BATCHES = (1, 3, 7, 133)
ATOMS = (0, 1, 8, 64)
RANKS = (1, 2, 4, 16)
PATTERNS = ("distinct", "shared", "zipf", "one_empty")

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if torch.cuda.is_available() and HAS_TRITON:
    KDEV = "cuda"
elif INTERPRET and HAS_TRITON:
    KDEV = "cpu"
else:
    KDEV = None
needs_kernel = pytest.mark.skipif(KDEV is None, reason="needs CUDA and Triton (or TRITON_INTERPRET=1)")

# relative error bound per request, ||got - ref|| / ||ref||
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def make_case(bsz, K, R, pattern, T=3, d_in=24, d_out=20, seed=0):
    """fp32 inputs: x (bsz, T, d_in), pool A (N, R, d_in), B (N, d_out, R), idx (bsz, K), w (bsz, K), unused slots."""
    g = torch.Generator().manual_seed(seed)
    if K == 0:
        N = 4
        idx = torch.empty(bsz, 0, dtype=torch.int64)
    elif pattern == "distinct":
        N = bsz * K + 2
        idx = torch.randperm(N, generator=g)[: bsz * K].reshape(bsz, K)
    elif pattern == "shared":
        N = K + 2
        idx = torch.randperm(N, generator=g)[:K].expand(bsz, K).clone()
    elif pattern == "zipf":
        N = max(2 * K, 16)
        p = 1.0 / torch.arange(1, N + 1, dtype=torch.float64) ** 1.1
        idx = torch.stack([torch.multinomial(p, K, replacement=False, generator=g) for _ in range(bsz)])
        n_used = torch.randint(0, K + 1, (bsz,), generator=g)  # ragged: trailing padding
        idx[torch.arange(K)[None, :] >= n_used[:, None]] = -1
    elif pattern == "one_empty":
        N = 2 * K + 2
        idx = torch.randint(0, N - 2, (bsz, K), generator=g)  # repeats within a request allowed
        idx[bsz // 2] = -1
    else:
        raise ValueError(pattern)
    x = torch.randn(bsz, T, d_in, generator=g)
    A = torch.randn(N, R, d_in, generator=g) / d_in**0.5
    B = torch.randn(N, d_out, R, generator=g) / R**0.5
    w = torch.rand(bsz, K, generator=g) + 0.25
    w[idx < 0] = 1e3  # must be ignored
    used = set(idx[idx >= 0].tolist())
    unused = [s for s in range(N) if s not in used]
    return x, A, B, idx, w, unused


def table():
    for bsz in BATCHES:
        for K in ATOMS:
            for R in RANKS:
                for pattern in PATTERNS:
                    if K == 0 and pattern != "distinct":
                        continue  # no atoms: the pattern is meaningless
                    yield pytest.param(bsz, K, R, pattern, id=f"b{bsz}-k{K}-r{R}-{pattern}")


def rel_err_per_request(got, ref):
    """max over requests of ||got_b - ref_b|| / ||ref_b||; requests whose ref is 0 must be exactly 0."""
    got, ref = got.double(), ref.double()
    diff = (got - ref).flatten(1).norm(dim=1)
    scale = ref.flatten(1).norm(dim=1)
    zero = scale == 0
    assert torch.all(diff[zero] == 0), "a request without atoms got a nonzero delta"
    return float((diff[~zero] / scale[~zero]).max()) if (~zero).any() else 0.0


# ---- CPU: the torch reference against the loop (runs in CI) --------------------------------
@pytest.mark.parametrize("bsz,K,R,pattern", list(table()))
def test_torch_reference_matches_loop(bsz, K, R, pattern):
    x, A, B, idx, w, _ = make_case(bsz, K, R, pattern, seed=bsz * 1000 + K * 10 + R)
    ref = compose_delta_loop(x, A, B, idx, w)
    got = compose_delta_torch(x, A, B, idx, w)
    assert got.shape == ref.shape and got.dtype == x.dtype
    assert rel_err_per_request(got, ref) < 1e-4


def test_torch_reference_int32_idx():
    x, A, B, idx, w, _ = make_case(5, 4, 2, "zipf")
    ref = compose_delta_loop(x, A, B, idx, w)
    assert rel_err_per_request(compose_delta_torch(x, A, B, idx.int(), w), ref) < 1e-4


# ---- the Triton kernel ----------------------------------------------------------------------
def kernel_dtypes():
    dts = [torch.float32, torch.float16, torch.bfloat16]
    if KDEV == "cpu":
        dts.remove(torch.bfloat16)
    return dts


def to_dev(dtype, x, A, B, idx, w, unused=(), b_rows=False):
    """Cast to the kernel dtype on the kernel device; poison unused pool slots with NaN.

    b_rows: hand B over as AtomPool does, the transposed view of a contiguous (N, R, d_out).
    """
    A, B = A.clone(), B.clone()
    if unused:
        A[list(unused)] = float("nan")
        B[list(unused)] = float("nan")
    B = B.to(KDEV, dtype)
    if b_rows:
        B = B.transpose(1, 2).contiguous().transpose(1, 2)
    return (x.to(KDEV, dtype), A.to(KDEV, dtype), B, idx.to(KDEV), w.to(KDEV))


def oracle(x, A, B, idx, w):
    return compose_delta_loop(x.cpu(), A.cpu(), B.cpu(), idx.cpu(), w.cpu())


@needs_kernel
@pytest.mark.parametrize("path", ["fused", "wide", "stream"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize("bsz,K,R,pattern", list(table()))
def test_triton_matches_loop(bsz, K, R, pattern, dtype, path):
    from compiler.compose.triton_ops import compose_delta_triton

    T = 1 if (bsz + K) % 2 else 5  # 1: the GEMV plans; 5: the tensor-core tile plans
    x, A, B, idx, w, unused = make_case(bsz, K, R, pattern, T=T, d_in=96, d_out=80, seed=bsz + K + R)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused, b_rows=pattern in ("distinct", "zipf"))
    ref = oracle(x, A, B, idx, w)
    out = torch.full((bsz, T, 80), float("nan"), dtype=dtype, device=KDEV)  # poisoned
    got = compose_delta_triton(x, A, B, idx, w, out=out, path=path)
    assert got.data_ptr() == out.data_ptr()
    assert torch.isfinite(got).all(), "an output element was not written (or a poisoned slot was read)"
    assert rel_err_per_request(got.float().cpu(), ref) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("path", ["fused", "wide", "stream"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize(
    "bsz,T,K,R,d_in,d_out,split",
    [
        (3, 70, 8, 4, 96, 80, None),  # several token blocks
        (2, 40, 64, 4, 96, 200, None),  # 256 stacked ranks: scratch path, two token blocks
        (7, 1, 64, 16, 64, 48, None),  # 1024 stacked ranks (decode)
        (3, 5, 8, 2, 100, 72, None),  # d_in, d_out not multiples of 16
        (1, 1, 8, 2, 128, 1000, 3),  # forced d_out split with a ragged last share
        (2, 17, 3, 4, 64, 300, 64),  # split larger than the number of d_out blocks
        (1, 1, 16, 4, 4096, 64, None),  # long d_in: many d_in slices in the wide plan
        (133, 300, 2, 2, 64, 40, None),  # many tokens (auto picks wide)
        (3, 2, 8, 2, 96, 80, None),  # GEMV plans with several tokens per request
        (5, 4, 8, 16, 100, 72, None),  # GEMV: 128 stacked ranks (the register limit), ragged d_in
        (2, 4, 9, 16, 64, 1000, 3),  # GEMV: 144 stacked ranks (two chunks wide, tile kernel fused), split
        (32, 1, 8, 2, 1024, 4096, None),  # decode shape (q/o of a small model)
        (4, 1, 8, 2, 2048, 256, None),  # d_in >> d_out (down_proj-like): many d_in slices
        (2, 40, 32, 4, 96, 200, None),  # tile wide with 128 stacked ranks in one chunk
    ],
)
@pytest.mark.parametrize("b_rows", [False, True], ids=["b_cols", "b_rows"])
def test_triton_shapes(bsz, T, K, R, d_in, d_out, split, dtype, path, b_rows):
    from compiler.compose.triton_ops import compose_delta_triton

    x, A, B, idx, w, unused = make_case(bsz, K, R, "zipf", T=T, d_in=d_in, d_out=d_out, seed=T + d_out)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused, b_rows=b_rows)
    ref = oracle(x, A, B, idx, w)
    out = torch.full((bsz, T, d_out), float("nan"), dtype=dtype, device=KDEV)
    got = compose_delta_triton(x, A, B, idx, w, out=out, split=split, path=path)
    assert torch.isfinite(got).all()
    assert rel_err_per_request(got.float().cpu(), ref) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("path", ["fused", "wide", "stream"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize("K,R", [(8, 2), (64, 4)])
def test_triton_accumulates_into_out(K, R, dtype, path):
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    x, A, B, idx, w, unused = make_case(7, K, R, "one_empty", T=3, d_in=64, d_out=96, seed=5)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused)
    y = torch.randn(7, 3, 96).to(KDEV, dtype)
    out = y.clone()
    compose_delta_triton(x, A, B, meta=ComposeMeta(idx, w, n_slots=A.shape[0]), out=out, accumulate=True, path=path)
    ref = oracle(x, A, B, idx, w) + y.float().cpu()
    assert rel_err_per_request(out.float().cpu(), ref) < TOL[dtype]


@needs_kernel
def test_triton_no_atoms_and_empty_batch():
    from compiler.compose.triton_ops import compose_delta_triton

    x = torch.randn(3, 2, 32, device=KDEV)
    A, B = torch.randn(4, 2, 32, device=KDEV), torch.randn(4, 16, 2, device=KDEV)
    out = torch.full((3, 2, 16), float("nan"), device=KDEV)
    got = compose_delta_triton(x, A, B, torch.empty(3, 0, dtype=torch.int64, device=KDEV),
                               torch.empty(3, 0, device=KDEV), out=out)
    assert torch.all(got == 0)
    y = torch.randn(3, 2, 16, device=KDEV)
    kept = compose_delta_triton(x, A, B, torch.full((3, 1), -1, device=KDEV), torch.ones(3, 1, device=KDEV),
                                out=y.clone(), accumulate=True)
    assert torch.equal(kept, y)
    assert compose_delta_triton(x[:0], A, B, torch.zeros(0, 1, dtype=torch.int64, device=KDEV),
                                torch.ones(0, 1, device=KDEV)).shape == (0, 2, 16)


@needs_kernel
@pytest.mark.parametrize("bad", [4, 1000, -2])
def test_triton_rejects_out_of_range_before_launch(bad):
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    x = torch.randn(2, 1, 32, device=KDEV)
    A, B = torch.randn(4, 2, 32, device=KDEV), torch.randn(4, 16, 2, device=KDEV)
    idx = torch.tensor([[0, 1], [2, bad]], device=KDEV)
    w = torch.ones(2, 2, device=KDEV)
    out = torch.full((2, 1, 16), float("nan"), device=KDEV)
    with pytest.raises(IndexError):
        compose_delta_triton(x, A, B, idx, w, out=out)
    assert torch.isnan(out).all(), "the kernel ran despite the bad index"
    with pytest.raises(IndexError):
        ComposeMeta(idx, w, n_slots=4)
    if bad >= 4:
        meta = ComposeMeta(idx, w)  # no pool size given: the range check happens at the call
        with pytest.raises(IndexError):
            compose_delta_triton(x, A, B, meta=meta, out=out)
        assert torch.isnan(out).all()
    with pytest.raises(IndexError):
        with use_backend("triton"):
            compose_delta(x, A, B, idx, w)


@needs_kernel
def test_triton_rejects_bad_inputs():
    from compiler.compose.triton_ops import compose_delta_triton

    x = torch.randn(2, 1, 32, device=KDEV)
    A, B = torch.randn(4, 2, 32, device=KDEV), torch.randn(4, 16, 2, device=KDEV)
    idx, w = torch.zeros(2, 1, dtype=torch.int64, device=KDEV), torch.ones(2, 1, device=KDEV)
    with pytest.raises(TypeError):
        compose_delta_triton(x, A.half(), B.half(), idx, w)
    with pytest.raises(ValueError):
        compose_delta_triton(x, A.transpose(1, 2).contiguous().transpose(1, 2), B, idx, w)
    with pytest.raises(ValueError):
        compose_delta_triton(x, A, B, idx, w, out=torch.empty(2, 1, 15, device=KDEV))
    with pytest.raises(TypeError):
        compose_delta_triton(x, A, B, idx.float(), w)
    with pytest.raises(ValueError, match="B must be"):  # neither (N, d_out, R) nor (N, R, d_out) rows
        compose_delta_triton(x, A, torch.randn(16, 4, 2, device=KDEV).permute(1, 0, 2), idx, w)


@needs_kernel
def test_dispatcher_triton_backend_matches_loop():
    x, A, B, idx, w, _ = make_case(7, 8, 2, "zipf", T=4, d_in=64, d_out=48)
    x, A, B, idx, w = to_dev(torch.float32, x, A, B, idx, w)
    with use_backend("triton"):
        got = compose_delta(x, A, B, idx, w)
    assert rel_err_per_request(got.cpu(), oracle(x, A, B, idx, w)) < TOL[torch.float32]


@needs_kernel
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
@pytest.mark.parametrize("bsz,d_out,path", [(6, 96, "auto"), (70, 64, "auto"), (6, 96, "fused")])  # wide, fused, fused
def test_triton_repeated_calls_take_the_cached_launch(dtype, bsz, d_out, path):
    """The eager decode fast path (cached launches and scratch per call shape) must see new data, slots and outputs."""
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    x, A, B, idx, w, unused = make_case(bsz, 8, 2, "zipf", T=1, d_in=128, d_out=d_out, seed=3)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused, b_rows=True)
    meta = ComposeMeta(idx, w, n_slots=A.shape[0])
    for rep in range(4):
        x = torch.randn(x.shape, generator=torch.Generator().manual_seed(rep)).to(KDEV, dtype)
        y = torch.randn(bsz, 1, d_out).to(KDEV, dtype)
        out = y.clone()
        compose_delta_triton(x, A, B, meta=meta, out=out, accumulate=True, path=path)
        ref = oracle(x, A, B, meta.idx, meta.w) + y.float().cpu()
        assert rel_err_per_request(out.float().cpu(), ref) < TOL[dtype], rep
        fresh = torch.full((bsz, 1, d_out), float("nan"), dtype=dtype, device=KDEV)
        compose_delta_triton(x, A, B, meta=meta, out=fresh, path=path)
        assert rel_err_per_request(fresh.float().cpu(), oracle(x, A, B, meta.idx, meta.w)) < TOL[dtype], rep
        # new slots and weights in the same buffers, as between decode steps
        g = torch.Generator().manual_seed(10 + rep)
        clean = torch.tensor(sorted(set(range(A.shape[0])) - set(unused)))  # never a poisoned slot
        new_idx = clean[torch.randint(0, len(clean), (bsz, 8), generator=g)]
        new_idx[torch.rand(bsz, 8, generator=g) < 0.2] = -1
        meta.update_(new_idx.to(KDEV), (torch.rand(bsz, 8, generator=g) + 0.5).to(KDEV), n_slots=A.shape[0])
    # a misaligned x (a view one element in) must not reuse the aligned launch
    xs = torch.randn(bsz * 128 + 1).to(KDEV, dtype)[1:].view(bsz, 1, 128)
    out = torch.full((bsz, 1, d_out), float("nan"), dtype=dtype, device=KDEV)
    compose_delta_triton(xs, A, B, meta=meta, out=out, path=path)
    assert rel_err_per_request(out.float().cpu(), oracle(xs, A, B, meta.idx, meta.w)) < TOL[dtype]
    # nor may a pool too small for the slots: the range check runs on every call
    with pytest.raises(IndexError):
        compose_delta_triton(x, A[:2], B[:2], meta=meta, out=out, path=path)


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("bsz,d_out,path", [(7, 96, "auto"), (7, 96, "fused"), (96, 4096, "auto"), (132, 64, "auto")])
def test_triton_under_cuda_graph_with_refilled_meta(bsz, d_out, path):
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    dtype = torch.bfloat16
    x1, A, B, idx1, w1, _ = make_case(bsz, 8, 2, "zipf", T=1, d_in=128, d_out=d_out, seed=1)
    x2, _, _, idx2, w2, _ = make_case(bsz, 8, 2, "zipf", T=1, d_in=128, d_out=d_out, seed=2)
    N = max(A.shape[0], int(idx2.max()) + 1)
    A = torch.randn(N, 2, 128) / 11
    B = torch.randn(N, d_out, 2)
    x, A, B, idx, w = to_dev(dtype, x1, A, B, idx1, w1, b_rows=True)
    meta = ComposeMeta(idx, w, n_slots=N)
    y = torch.randn(bsz, 1, d_out, device="cuda", dtype=dtype)
    out = torch.empty_like(y)

    def step(p):
        out.copy_(y)
        compose_delta_triton(x, A, B, meta=meta, out=out, accumulate=True, path=p)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for p in ("wide", "fused"):  # compile and warm up outside the capture
            step(p)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(path)
    x.copy_(x2.to("cuda", dtype))
    meta.update_(idx2.to("cuda"), w2.to("cuda"), n_slots=N)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref = oracle(x, A, B, idx2, w2) + y.float().cpu()
    assert rel_err_per_request(out.float().cpu(), ref) < TOL[dtype]


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("K,R", [(1, 1), (4, 4), (8, 4), (16, 4), (32, 4), (64, 4)])  # S = 1 .. 256 (scratch)
@pytest.mark.parametrize("accumulate", [False, True])
def test_triton_large_call_plan(K, R, dtype, accumulate):
    """Calls whose 32-token blocks fill the GPU take the tile-fused plan's large-call tiles (16-bit
    dtypes; fp32 keeps the old tiles), in "auto", eagerly and under a CUDA graph."""
    from compiler.compose.triton_ops import ComposeMeta, _fills_gpu, _num_sms, compose_delta_triton

    T, d_in, d_out = 70, 256, 320  # ragged token tiles and output tiles
    bsz = -(-_num_sms(torch.cuda.current_device()) // -(-T // 32))
    assert _fills_gpu(bsz, T, _num_sms(torch.cuda.current_device()))
    x, A, B, idx, w, unused = make_case(bsz, K, R, "zipf", T=T, d_in=d_in, d_out=d_out, seed=K * R)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused, b_rows=True)
    meta = ComposeMeta(idx, w, n_slots=A.shape[0])
    y = torch.randn(bsz, T, d_out).to("cuda", dtype)
    ref = oracle(x, A, B, idx, w) + (y.float().cpu() if accumulate else 0)

    out = y.clone() if accumulate else torch.full_like(y, float("nan"))
    compose_delta_triton(x, A, B, meta=meta, out=out, accumulate=accumulate)
    assert torch.isfinite(out).all()
    assert rel_err_per_request(out.float().cpu(), ref) < TOL[dtype]

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compose_delta_triton(x, A, B, meta=meta, out=out, accumulate=accumulate)
    out.copy_(y) if accumulate else out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err_per_request(out.float().cpu(), ref) < TOL[dtype]


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("path,tune", [
    ("wide", {"block_t": 32, "split_d": 2, "block_n": 256}),
    ("wide", {"block_s": 16, "block_d": 64, "groups": 3, "warps_s": 8, "stages_s": 4, "stages_e": 3}),
    ("wide", {"block_t": 128, "split_d": 16, "warps_e": 8}),
    ("fused", {"block_t": 32, "block_n": 256, "num_stages": 5}),
    ("fused", {"block_t": 128, "block_d": 64, "num_warps": 8, "num_stages": 2}),
    ("fused", {"block_t": 64, "split": 3, "num_stages": 2}),
    ("fused", {"split": 1}),
    ("stream", {"block_t": 32, "block_d": 64, "block_te": 16, "block_n": 64, "t_per": 40}),
    ("stream", {"block_t": 128, "warps_s": 8, "stages_s": 2, "block_n": 256, "warps_e": 4, "stages_e": 2, "pdl": 0}),
    ("stream", {"t_per": 1, "pdl": 1}),
    ("stream", {"h_once": 1, "groups": 3, "block_te": 64, "stages_e": 2}),
    ("stream", {"h_once": 1, "groups": 100, "block_n": 64, "warps_e": 4}),
])
def test_triton_tune_overrides_keep_semantics(path, tune):
    """bench_kernel.py --layer-tune's overrides change tiles, never results."""
    from compiler.compose.triton_ops import compose_delta_triton

    x, A, B, idx, w, unused = make_case(5, 8, 4, "zipf", T=150, d_in=320, d_out=200, seed=3)
    x, A, B, idx, w = to_dev(torch.bfloat16, x, A, B, idx, w, unused, b_rows=True)
    out = torch.full((5, 150, 200), float("nan"), dtype=torch.bfloat16, device="cuda")
    compose_delta_triton(x, A, B, idx, w, out=out, path=path, tune=tune)
    assert torch.isfinite(out).all()
    assert rel_err_per_request(out.float().cpu(), oracle(x, A, B, idx, w)) < TOL[torch.bfloat16]


@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
def test_triton_wide_tune_rejects_unknown_keys():
    from compiler.compose.triton_ops import compose_delta_triton

    x, A, B, idx, w, _ = make_case(2, 2, 2, "distinct", T=8, d_in=64, d_out=64)
    x, A, B, idx, w = to_dev(torch.bfloat16, x, A, B, idx, w)
    with pytest.raises(ValueError, match="unknown tune keys"):
        compose_delta_triton(x, A, B, idx, w, path="wide", tune={"block_q": 32})
    with pytest.raises(ValueError, match="power of two"):
        compose_delta_triton(x, A, B, idx, w, path="wide", tune={"block_d": 48})
    with pytest.raises(ValueError, match="unknown tune keys"):
        compose_delta_triton(x, A, B, idx, w, path="fused", tune={"split_d": 2})
    with pytest.raises(ValueError, match="power of two"):
        compose_delta_triton(x, A, B, idx, w, path="fused", tune={"block_n": 96})
    with pytest.raises(ValueError, match="unknown tune keys"):
        compose_delta_triton(x, A, B, idx, w, path="stream", tune={"split": 2})
    with pytest.raises(ValueError, match="power of two"):
        compose_delta_triton(x, A, B, idx, w, path="stream", tune={"block_te": 24})


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_gemv_warps_knob_sets_each_pass():
    """The "warps" knob of the two-launch GEMV: "4" both passes at 4 warps, "e2" (default) the expand at 2,
    "e2n" the expand at 2 where d_out <= d_in, "auto" the size rule (8 for 16K-element tiles); an unknown value raises and leaves the knob as it was."""
    from compiler.compose.triton_ops import _plan_gemv, gemv_knobs, set_gemv_knobs

    got = {k: _plan_gemv(32, 8, 2, 4096, 14336, 132, None, ("max", "tile", k)) for k in ("4", "e2", "auto")}
    assert (got["4"].warps_s, got["4"].warps_e) == (4, 4)
    assert (got["e2"].warps_s, got["e2"].warps_e) == (4, 2)
    assert (got["auto"].warps_s, got["auto"].warps_e) == (8, 8)
    assert got["e2"].block_nw == got["4"].block_nw  # the tiles do not change, only the warps
    assert _plan_gemv(32, 8, 2, 4096, 14336, 132, None).warps_e == 2  # the default knobs
    # "e2n": 2 warps for the expand only where the output is no wider than the input
    wide_out = _plan_gemv(32, 8, 2, 4096, 14336, 132, None, ("max", "tile", "e2n"))
    narrow_out = _plan_gemv(32, 8, 2, 14336, 4096, 132, None, ("max", "tile", "e2n"))
    square = _plan_gemv(32, 8, 2, 4096, 4096, 132, None, ("max", "tile", "e2n"))
    assert (wide_out.warps_s, wide_out.warps_e) == (4, 4)
    assert (narrow_out.warps_s, narrow_out.warps_e) == (4, 2)
    assert square.warps_e == 2
    before = gemv_knobs()
    with pytest.raises(ValueError, match="warps"):
        set_gemv_knobs(warps="3")
    assert gemv_knobs() == before


@needs_kernel
@pytest.mark.parametrize("K,R,want", [(4, 2, "stream"), (32, 4, "stream"), (1, 4, "fused"), (64, 4, "fused")])
def test_auto_takes_the_stream_plan_for_large_calls(monkeypatch, K, R, want):
    """A large call (32-token blocks fill the GPU) of >= 64 tokens per request with 8..128 stacked ranks
    takes the two-launch stream plan in "auto" (16-bit inputs); fewer or more stacked ranks keep the
    tile-fused plan."""
    from compiler.compose import triton_ops

    dtype = torch.float16
    n_sm = triton_ops._num_sms(torch.cuda.current_device()) if KDEV == "cuda" else 8
    T = 64
    bsz = -(-n_sm // (T // 32))
    x, A, B, idx, w, unused = make_case(bsz, K, R, "zipf", T=T, d_in=64, d_out=48, seed=K + R)
    x, A, B, idx, w = to_dev(dtype, x, A, B, idx, w, unused, b_rows=True)
    launched = []
    real = triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kernel, *a, **k: (launched.append(kernel), real(kernel, *a, **k))[1])
    got = triton_ops.compose_delta_triton(x, A, B, idx, w)
    names = [getattr(k, "__name__", None) or k.fn.__name__ for k in launched]
    if want == "stream":  # 128 stacked ranks: the expand that holds h and streams B
        expand = "_stream_expand_h_kernel" if K * R == 128 else "_stream_expand_kernel"
        assert names == ["_stream_shrink_kernel", expand]
    else:
        assert names == ["_compose_kernel"]
    assert rel_err_per_request(got.float().cpu(), oracle(x, A, B, idx, w)) < TOL[dtype]


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_stream_plan_reads_each_b_tile_once_when_the_batch_fills_the_gpu():
    from compiler.compose.triton_ops import _plan_stream, _stream_fits

    # the layer target's shape: 32 requests of 256 tokens; every expand program takes a whole request
    for K, R in [(8, 1), (8, 4), (32, 2)]:
        plan = _plan_stream(32, 256, K, R, 4096, 132, 2)
        assert plan[-3] == 256 and plan[1] >= K * R and not plan[-2]
        assert _stream_fits(256, K * R)
    # 128 stacked ranks: each program holds a 128-token tile's h, about one program per SM
    plan = _plan_stream(32, 256, 32, 4, 4096, 132, 2)
    assert plan[-2] and plan[5] == 128 and 32 * 2 * plan[-1] <= 132 and _stream_fits(256, 128)
    # one long request: its tokens are split so that the SMs get work
    t_per = _plan_stream(1, 8192, 8, 2, 4096, 132, 2)[-3]
    assert 64 <= t_per < 8192 and t_per % 64 == 0
    assert not _stream_fits(256, 4) and not _stream_fits(256, 256) and not _stream_fits(32, 16)
