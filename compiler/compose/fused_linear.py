"""Decode-sized linear layers with the atoms' delta folded into the base GEMM's pass (issue 7, round 5).

    y_m = x W_m^T + delta_m,   delta_m[b, t] = sum_k w[b, k] * B_m[idx[b, k]] @ (A[idx[b, k], off_m:off_m + r_m] @ x[b, t])

for every member m of a projection group that reads one input x (q/k/v, gate/up; or one linear
alone), idx < 0 adds 0. Two launches per group, whatever its size:

  shrink  the two-launch GEMV plan's shrink (triton_ops): fp32 partials of h = w * A_b x over
          (row, d_in slice, stacked-rank chunk), for all members at once (the group's A is the
          members' ranks concatenated per atom, as AtomPool stores it).
  linear  a Triton skinny GEMM: one program per (row block, output tile of any member) streams
          its W tile rows over all of d_in (tensor-core dots, software-pipelined loads), then
          streams the atoms' B rows of its row block in the same program:
              acc += H @ Bcat,  Bcat[(m, s), n] = B[slot(m, s), n, rank(s)] (gathered rows),
                                H[m', (m, s)] = h[m, s] if m' == m else 0 (block diagonal),
          one more tensor-core dot per chunk of stacked rows, and stores y once. So the atoms'
          B and the weights stream through one memory-bound kernel instead of two kernels
          competing for HBM, and y is written once (no separate add).
The linear kernel is launched with programmatic dependent launch (PDL): the shrink lets its
dependents start at once (griddepcontrol.launch_dependents) and the linear kernel waits for the
shrink's partials (griddepcontrol.wait) only after its W loop, so the shrink runs under the GEMM.
Without PDL (or where the launch attribute is not honoured) the wait returns at once and stream
order alone orders the two kernels: correctness never depends on the overlap.

Used by the GPU serving path (compiler.compose.grouped.serve_group / serve_linear) for calls of
at most `MAX_T` tokens per request when `mode` allows it (module attribute; env
DOC2ATOM_FUSED_LINEAR): "auto" (default) = bf16/fp16, at most AUTO_MAX_ROWS tokens, eager calls only
(grouped._take_fused: under CUDA-graph capture the round-4 side-stream path measured faster);
"always" = every eligible call, captured ones too, fp32 included; "never" = the round-4 paths.
Measured on one H200 (KERNEL_NOTES round 5): the Triton GEMM streams the weights at ~2.4 TB/s against
cuBLAS's ~3.1 TB/s at batch 32, which costs more than folding the delta in saves.
Kernels compile on first use; a CUDA-graph capture cannot compile, so run a shape eagerly first.
"""

from __future__ import annotations

import functools
import os
from collections import namedtuple
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from compiler.compose import triton_ops as _ops
from compiler.compose.triton_ops import (
    HAS_PDL,
    ComposeMeta,
    _check_slots,
    _gemv_h,
    _launch,
    _num_sms,
    _plan_gemv,
    _pow2_at_most,
    _rows_contiguous,
    _slots_of,
    _weights_of,
    gdc_launch_dependents,
    gdc_wait,
    gemv_knobs,
)

MODES = ("auto", "always", "never")
mode = os.environ.get("DOC2ATOM_FUSED_LINEAR", "auto")
# PDL off by default: round-5 run 1 measured it slower (265 vs 244 us per b32 layer, one-split kernel)
use_pdl = os.environ.get("DOC2ATOM_PDL", "0") == "1"
MAX_T = 4  # tokens per request up to which serving takes this path (decode, small drafts)
# "auto" takes the path up to this many rows (tokens of the batch): round-5 run 1 measured b128
# (128 rows) far slower than round 4's side-stream path (45.8 vs 30.4 ms per graphed step)
AUTO_MAX_ROWS = 64
_MAX_MEMBERS = 3
# tile overrides for benchmarks (block_m, block_n, block_k, block_c, warps, stages); empty = the plan's own
config: dict = {}


def wants(x: torch.Tensor) -> bool:
    """Whether input x (Bsz, T, d_in) is eligible for the fused linear under `mode` (grouped._take_fused
    adds, in "auto" mode, the eager-only rule)."""
    m = mode
    if m == "never" or not x.is_cuda or x.dim() != 3 or x.shape[1] > MAX_T or _ops._INTERPRET:
        return False
    if m == "auto":
        return x.dtype in (torch.bfloat16, torch.float16) and x.shape[0] * x.shape[1] <= AUTO_MAX_ROWS
    if m == "always":
        return x.dtype in _ops._FLOATS
    raise ValueError(f"fused_linear.mode must be one of {MODES}, got {m!r}")


# ---- kernels ---------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "K"])
def _shrink_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, hp_ptr, T, d_in, K, d_per, saN,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    # triton_ops._gemv_shrink_kernel, letting the dependent linear kernel start at once
    if PDL:
        gdc_launch_dependents()
    row = tl.program_id(0)
    sd = tl.program_id(1)
    sc = tl.program_id(2)
    n_sd = tl.num_programs(1)
    n_sc = tl.num_programs(2)
    b = row // T
    S = K * R
    slot, j, valid = _slots_of(idx_ptr + b * K, sc * BLOCK_S, S, R, BLOCK_S)
    wk = _weights_of(w_ptr + b * K, sc * BLOCK_S, S, valid, R, BLOCK_S)
    d_lo = sd * d_per
    d_hi = tl.minimum(d_lo + d_per, d_in)
    h = _gemv_h(x_ptr + row.to(tl.int64) * d_in, a_ptr, slot, j, valid, wk, d_lo, d_hi, d_in, saN, R, BLOCK_S,
                BLOCK_D)
    base = hp_ptr + ((row.to(tl.int64) * n_sc + sc) * n_sd + sd) * BLOCK_S  # hp layout (row, sc, sd, s)
    tl.store(base + tl.arange(0, BLOCK_S), h)


@triton.jit
def _linear_tile(
    x_ptr, w_ptr, hp_ptr, idx_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, rb, nt, tile, sk, rows, T, K, d_in, d_out, swN,
    sbN, sbO, sbR, split_d,
    R: tl.constexpr, OFF: tl.constexpr, RG: tl.constexpr, BLOCK_SG: tl.constexpr, SPLIT_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    SPLIT_K: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
):
    """Split sk of y[rows of block rb, columns of tile nt] = x W^T + this member's delta.

    Split sk takes 1/SPLIT_K of d_in and 1/SPLIT_K of the stacked-row chunks of the delta; with
    SPLIT_K > 1 each split writes its fp32 partial tile to ws and the last split to arrive (per-tile
    counter, reset by that split) sums them and stores y once."""
    offs_m = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < rows
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_out
    x_rows = x_ptr + offs_m.to(tl.int64) * d_in
    w_rows = w_ptr + offs_n.to(tl.int64) * swN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kb_per = tl.cdiv(tl.cdiv(d_in, BLOCK_K), SPLIT_K)
    k_lo = sk * kb_per * BLOCK_K
    k_hi = tl.minimum(k_lo + kb_per * BLOCK_K, d_in)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < d_in
        xt = tl.load(x_rows[:, None] + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wt = tl.load(w_rows[:, None] + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PREC)
    if PDL:
        gdc_wait()  # the shrink's partials are complete and visible from here on
    # the delta: stacked rows c = (local row, s) of this row block, BLOCK_C at a time
    S = K * R
    n_c = tl.minimum(rows - rb * BLOCK_M, BLOCK_M) * S
    cb_per = tl.cdiv(tl.cdiv(n_c, BLOCK_C), SPLIT_K)
    c_lo = sk * cb_per * BLOCK_C
    c_hi = tl.minimum(c_lo + cb_per * BLOCK_C, n_c)
    n_sc = tl.cdiv(K * RG, BLOCK_SG)
    lrow = tl.arange(0, BLOCK_M)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < c_hi
        lm = offs_c // S
        s = offs_c % S
        kk = s // R
        j = s % R
        row = rb * BLOCK_M + lm
        slot = tl.load(idx_ptr + (row // T) * K + kk, mask=c_ok, other=-1)
        valid = c_ok & (slot >= 0)
        sg = kk * RG + OFF + j  # the stacked row in the group's partials
        hrow = hp_ptr + ((row.to(tl.int64) * n_sc + sg // BLOCK_SG) * split_d) * BLOCK_SG + sg % BLOCK_SG
        if SPLIT_PAD > 0:  # all d_in partials in one 2-D load (L2 only: written by the other kernel)
            offs_sd = tl.arange(0, SPLIT_PAD)
            hp = tl.load(hrow[None, :] + offs_sd[:, None] * BLOCK_SG,
                         mask=(offs_sd < split_d)[:, None] & valid[None, :], other=0.0, cache_modifier=".cg")
            hv = tl.sum(hp, axis=0)
        else:
            hv = tl.load(hrow, mask=valid, other=0.0, cache_modifier=".cg")
            for sd in range(1, split_d):
                hv += tl.load(hrow + sd * BLOCK_SG, mask=valid, other=0.0, cache_modifier=".cg")
        bt = tl.load(b_ptr + tl.maximum(slot, 0).to(tl.int64)[:, None] * sbN + j[:, None] * sbR
                     + offs_n[None, :] * sbO, mask=valid[:, None] & n_mask[None, :], other=0.0)
        hm = tl.where(lm[None, :] == lrow[:, None], hv[None, :], 0.0)  # block diagonal (BLOCK_M, BLOCK_C)
        acc = tl.dot(hm.to(bt.dtype), bt, acc, input_precision=PREC)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * d_out + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        loc = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        ws_tile = ws_ptr + tile.to(tl.int64) * (SPLIT_K * BLOCK_M * BLOCK_N)
        tl.store(ws_tile + sk * (BLOCK_M * BLOCK_N) + loc, acc)
        tl.debug_barrier()  # every thread's partial is written before the count goes up
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:  # the last split of this tile: sum, store y, reset the counter
            tot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s2 in tl.static_range(SPLIT_K):
                tot += tl.load(ws_tile + s2 * (BLOCK_M * BLOCK_N) + loc, cache_modifier=".cg")
            tl.store(y_ptrs, tot.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit(do_not_specialize=["rows", "T", "K", "split_d"])
def _linear_group_kernel(
    x_ptr, hp_ptr, idx_ptr, ws_ptr, cnt_ptr, w0, w1, w2, b0, b1, b2, y0, y1, y2,
    rows, T, K, d_in, split_d, d0, d1, d2, sw0, sw1, sw2, sbN0, sbO0, sbR0, sbN1, sbO1, sbR1, sbN2, sbO2, sbR2,
    t1, t2,
    M: tl.constexpr, RG: tl.constexpr, BLOCK_SG: tl.constexpr, SPLIT_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    SPLIT_K: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
    R0: tl.constexpr, OFF0: tl.constexpr, R1: tl.constexpr, OFF1: tl.constexpr, R2: tl.constexpr,
    OFF2: tl.constexpr,
):
    # grid (row blocks, output tiles of member 0 | member 1 | member 2, K splits); t1, t2 = first tile of
    # members 1, 2; tile = the (row block, tile) index of the split-K workspace and counters
    rb = tl.program_id(0)
    t = tl.program_id(1)
    sk = tl.program_id(2)
    tile = t * tl.num_programs(0) + rb
    if M == 1:
        _linear_tile(x_ptr, w0, hp_ptr, idx_ptr, b0, y0, ws_ptr, cnt_ptr, rb, t, tile, sk, rows, T, K, d_in, d0,
                     sw0, sbN0, sbO0, sbR0, split_d, R0, OFF0, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M, BLOCK_N, BLOCK_K,
                     BLOCK_C, SPLIT_K, PREC, PDL)
    elif M == 2:
        if t < t1:
            _linear_tile(x_ptr, w0, hp_ptr, idx_ptr, b0, y0, ws_ptr, cnt_ptr, rb, t, tile, sk, rows, T, K, d_in,
                         d0, sw0, sbN0, sbO0, sbR0, split_d, R0, OFF0, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M, BLOCK_N,
                         BLOCK_K, BLOCK_C, SPLIT_K, PREC, PDL)
        else:
            _linear_tile(x_ptr, w1, hp_ptr, idx_ptr, b1, y1, ws_ptr, cnt_ptr, rb, t - t1, tile, sk, rows, T, K,
                         d_in, d1, sw1, sbN1, sbO1, sbR1, split_d, R1, OFF1, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M,
                         BLOCK_N, BLOCK_K, BLOCK_C, SPLIT_K, PREC, PDL)
    else:
        if t < t1:
            _linear_tile(x_ptr, w0, hp_ptr, idx_ptr, b0, y0, ws_ptr, cnt_ptr, rb, t, tile, sk, rows, T, K, d_in,
                         d0, sw0, sbN0, sbO0, sbR0, split_d, R0, OFF0, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M, BLOCK_N,
                         BLOCK_K, BLOCK_C, SPLIT_K, PREC, PDL)
        elif t < t2:
            _linear_tile(x_ptr, w1, hp_ptr, idx_ptr, b1, y1, ws_ptr, cnt_ptr, rb, t - t1, tile, sk, rows, T, K,
                         d_in, d1, sw1, sbN1, sbO1, sbR1, split_d, R1, OFF1, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M,
                         BLOCK_N, BLOCK_K, BLOCK_C, SPLIT_K, PREC, PDL)
        else:
            _linear_tile(x_ptr, w2, hp_ptr, idx_ptr, b2, y2, ws_ptr, cnt_ptr, rb, t - t2, tile, sk, rows, T, K,
                         d_in, d2, sw2, sbN2, sbO2, sbR2, split_d, R2, OFF2, RG, BLOCK_SG, SPLIT_PAD, BLOCK_M,
                         BLOCK_N, BLOCK_K, BLOCK_C, SPLIT_K, PREC, PDL)


# ---- plans -----------------------------------------------------------------------------------
FusedPlan = namedtuple("FusedPlan", "block_s n_sc block_d split_d d_per warps_s split_pad "
                                    "block_m row_blocks block_n block_k block_c warps stages split_k tiles")


@functools.lru_cache(maxsize=4096)
def _plan(rows: int, K: int, RG: int, d_in: int, d_outs: tuple, n_sm: int, esize: int, knobs: tuple,
          cfg: tuple) -> FusedPlan:
    """Tiles of both launches; a pure function of the shapes (and the overrides in cfg), cached.

    Round-5 run 1 (one H200, b32): one program per output tile (no split) streamed W at ~2 TB/s: too
    few bytes in flight per program, x re-read from L2 per 32-wide tile. Now 64-wide W tiles (x read
    once per 64 columns) and d_in split so that about 3 programs per SM stream at once."""
    gs = _plan_gemv(rows, max(K, 1), RG, d_in, max(d_outs), n_sm, None, knobs)  # the measured GEMV shrink
    c = dict(cfg)
    block_m = c.get("block_m") or (16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128)
    row_blocks = triton.cdiv(rows, block_m)
    block_n = c.get("block_n") or (64 if block_m <= 64 else 128)
    tiles = sum(triton.cdiv(d, block_n) for d in d_outs) * row_blocks
    warps = c.get("warps") or (4 if block_m * block_n <= 4096 else 8)
    stages = c.get("stages") or (4 if block_m <= 64 else 3)
    # x and W tiles of one pipeline stage within ~40 KB, the W tile within 16 KB
    bk = min(256, (16384 // esize) // block_n, (40960 // esize) // (block_m + block_n))
    block_k = c.get("block_k") or max(32, _pow2_at_most(bk))
    n_kb = triton.cdiv(d_in, block_k)
    split_k = c.get("split_k")
    if split_k is None:  # about 3 programs per SM, at least 4 K blocks per split
        split_k = max(1, min(8, n_kb // 4, triton.cdiv(3 * n_sm, tiles)))
    split_k = max(1, min(split_k, n_kb))
    return FusedPlan(gs.block_s, gs.n_sc, gs.block_dw, gs.split_d, gs.d_per, gs.warps_s, gs.split_pad,
                     block_m, row_blocks, block_n, block_k, c.get("block_c") or 128, warps, stages, split_k, tiles)


# ---- host side -------------------------------------------------------------------------------
_Fused = namedtuple("_Fused", "dev n_hp n_ws n_cnt layout launches")
_fused_calls: dict = {}
_ALIGN = 64  # elements: every member's output starts 128-byte aligned in the shared buffer


def _layout(rows: int, d_outs: Sequence[int]):
    offs, at = [], 0
    for d in d_outs:
        offs.append((at, d))
        at += -(-rows * d // _ALIGN) * _ALIGN
    return tuple(offs), max(at, 1)


def _alloc(rows, layout, dtype, device) -> list[torch.Tensor]:
    offs, total = layout
    buf = torch.empty(total, dtype=dtype, device=device)
    return [buf.as_strided((rows, d), (d, 1), o) for o, d in offs]


def _key(x, Ws, A, Bs, ranks, idx, pdl, capturing):
    return (x.shape, x.dtype, A.shape, A.stride(), A.dtype, tuple((W.shape, W.stride(), W.dtype) for W in Ws),
            tuple((B.shape, B.stride(), B.dtype) for B in Bs), ranks, idx.shape, pdl, capturing, x.get_device(),
            A.get_device(), tuple(W.get_device() for W in Ws), tuple(B.get_device() for B in Bs), idx.get_device(),
            gemv_knobs(), tuple(sorted(config.items())))


_ws_bufs: dict = {}  # (device, stream) -> fp32 split-K workspace (eager calls; a capture gets its own)
_cnt_bufs: dict = {}  # (device, stream) -> int32 per-tile counters, zero between launches (eager calls)
_cnt_pool: dict = {}  # device -> [zeroed int32 tensor, next free offset]: counters for captured launches


def _workspace(n: int, dev_index: int, stream: int) -> torch.Tensor:
    buf = _ws_bufs.get((dev_index, stream))
    if buf is None or buf.numel() < n:
        buf = torch.empty(max(n, 1 << 16), dtype=torch.float32, device=torch.device("cuda", dev_index))
        _ws_bufs[(dev_index, stream)] = buf
    return buf


def _counters(n: int, dev_index: int, stream: int) -> torch.Tensor:
    """Zeroed int32 counters for an eager launch on `stream` (each launch leaves them zero again)."""
    buf = _cnt_bufs.get((dev_index, stream))
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=torch.device("cuda", dev_index))
        _cnt_bufs[(dev_index, stream)] = buf
        if dev_index not in _cnt_pool:  # made outside any capture, for the captures to come
            _cnt_pool[dev_index] = [torch.zeros(1 << 20, dtype=torch.int32, device=buf.device), 0]
    return buf


def _captured_counters(n: int, dev) -> torch.Tensor:
    """Counters of their own for a launch being captured: a fresh slice of the zeroed pool (never handed out
    twice: the graph's replays leave it zero again), or, when the pool is short, zeros made inside the
    capture (a memset node)."""
    pool = _cnt_pool.get(dev.index if dev.index is not None else torch.cuda.current_device())
    if pool is not None and pool[1] + n <= pool[0].numel():
        t = pool[0][pool[1]:pool[1] + n]
        pool[1] += -(-n // 32) * 32
        return t
    return torch.zeros(n, dtype=torch.int32, device=dev)


def _fast(x, Ws, A, Bs, ranks, meta, pdl):
    """Replay the cached launches of a call shaped like an earlier checked one; None = take the full path."""
    capturing = torch.cuda.is_current_stream_capturing()
    call = _fused_calls.get(_key(x, Ws, A, Bs, ranks, meta.idx, pdl, capturing))
    if call is None or capturing or meta.max_slot >= A.shape[0] or not x.is_contiguous():
        return None
    return replay_call(call, x, Ws, A, Bs, meta)


def cached_call(x, Ws, A, Bs, ranks, meta, pdl: bool | None = None):
    """The launch record an earlier eager call with these operands left (None: none), for callers that keep
    it and check the operands' identity themselves (grouped's eager lane), then `replay_call` it."""
    if pdl is None:
        pdl = use_pdl
    pdl = bool(pdl) and HAS_PDL and not _ops._INTERPRET
    return _fused_calls.get(_key(x, Ws, A, Bs, tuple(int(r) for r in ranks), meta.idx, pdl, False))


def replay_call(call, x, Ws, A, Bs, meta, shaped: bool = False):
    """Launch a cached call's kernels on these operands (shaped, strided and typed as when it was recorded; x
    contiguous, meta.max_slot < A.shape[0], not capturing: the caller checked). None = take the full path.
    shaped: each output (Bsz, T, d_out) like x, else (Bsz * T, d_out)."""
    if torch._C._cuda_getDevice() != call.dev or _ops._hooks_active():
        return None
    if shaped:
        offs, total = call.layout
        bsz, T = x.shape[0], x.shape[1]
        buf = torch.empty(total, dtype=x.dtype, device=x.device)
        outs = [buf.as_strided((bsz, T, d), (T * d, d, 1), o) for o, d in offs]
    else:
        outs = _alloc(x.shape[0] * x.shape[1], call.layout, x.dtype, x.device)
    ptrs = [x.data_ptr(), A.data_ptr(), meta.idx.data_ptr(), meta.w.data_ptr(), 0, 0, 0]
    ptrs += [W.data_ptr() for W in Ws] + [B.data_ptr() for B in Bs] + [o.data_ptr() for o in outs]
    bad = 0
    for p in ptrs:
        bad |= p
    if bad & 15:
        return None
    stream = torch._C._cuda_getCurrentRawStream(call.dev)
    ptrs[4] = _ops._scratch(call.n_hp, call.dev, stream).data_ptr()
    if call.n_cnt:
        ptrs[5] = _workspace(call.n_ws, call.dev, stream).data_ptr()
        ptrs[6] = _counters(call.n_cnt, call.dev, stream).data_ptr()
    else:
        ptrs[5] = ptrs[6] = ptrs[4]
    for (fn, mid), grid, take, tail in call.launches:
        fn(grid[0], grid[1], grid[2], stream, *mid, *[ptrs[i] for i in take], *tail)
    return outs


def fused_linear_group(
    x: torch.Tensor,
    Ws: Sequence[torch.Tensor],
    A: torch.Tensor,
    Bs: Sequence[torch.Tensor],
    idx: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    *,
    meta: ComposeMeta | None = None,
    ranks: Sequence[int] | None = None,
    pdl: bool | None = None,
) -> list[torch.Tensor]:
    """Every member's y_m = x W_m^T + delta_m (module docstring) in two launches.

    Args:
        x:     (Bsz, T, d_in) CUDA activations, fp32/fp16/bf16. Not written (made contiguous if not).
        Ws:    per member the base weight (d_out_m, d_in) in x's dtype, rows contiguous. Not written.
        A:     (N, sum r_m, d_in) the members' shrink matrices concatenated per atom (one member: its
               (N, r, d_in) pool), rows contiguous. Not written.
        Bs:    per member (N, d_out_m, r_m): contiguous, or the transposed view of a contiguous
               (N, r_m, d_out_m) (AtomPool's layout). Not written.
        idx, w: (Bsz, K) slots (-1 = padding, each < N) and float weights; checked with one host sync.
        meta:  ComposeMeta instead of idx/w (validated once per forward, no sync here).
        ranks: r_m per member (each >= 1); default each B_m's rank. Must sum to A.shape[1].
        pdl:   launch the linear kernel with programmatic dependent launch (default: `use_pdl`).

    Returns per member a fresh (Bsz * T, d_out_m) tensor in x's dtype (all members one allocation).
    """
    if pdl is None:
        pdl = use_pdl
    pdl = bool(pdl) and HAS_PDL and not _ops._INTERPRET
    Ws, Bs = list(Ws), list(Bs)
    if ranks is None:
        ranks = [B.shape[2] if B.dim() == 3 else -1 for B in Bs]
    ranks = tuple(int(r) for r in ranks)
    if meta is not None and idx is None and w is None and _ops._FAST_LAUNCH:
        got = _fast(x, Ws, A, Bs, ranks, meta, pdl)
        if got is not None:
            return got
    if meta is not None:
        if idx is not None or w is not None:
            raise ValueError("pass either idx/w or meta, not both")
        idx, w, max_slot = meta.idx, meta.w, meta.max_slot
    else:
        if idx is None:
            raise ValueError("idx (or meta) is required")
        if w is None:
            w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
        max_slot = None
    M = len(Ws)
    if M == 0 or len(Bs) != M or len(ranks) != M:
        raise ValueError(f"one W, one B and one rank per member: got {M} W, {len(Bs)} B, {len(ranks)} ranks")
    if x.dim() != 3 or A.dim() != 3 or any(W.dim() != 2 for W in Ws) or any(B.dim() != 3 for B in Bs):
        raise ValueError("x (Bsz, T, d_in), W_m (d_out_m, d_in), A (N, sum r, d_in), B_m (N, d_out_m, r_m) expected")
    bsz, T, d_in = x.shape
    N, RG, a_d_in = A.shape
    if a_d_in != d_in or any(W.shape[1] != d_in for W in Ws):
        raise ValueError(f"x, A and every W must share d_in={d_in}")
    if sum(ranks) != RG or any(r < 1 for r in ranks):
        raise ValueError(f"member ranks {ranks} must be >= 1 and sum to A's {RG}")
    for W, B, r in zip(Ws, Bs, ranks):
        if B.shape[0] != N or B.shape[2] != r or B.shape[1] != W.shape[0]:
            raise ValueError(f"B {tuple(B.shape)} does not fit N={N}, W {tuple(W.shape)} and rank {r}")
        if not (B.is_contiguous() or B.transpose(1, 2).is_contiguous()):
            raise ValueError("every B must be contiguous (N, d_out, r) or the transposed view of a contiguous "
                             f"(N, r, d_out); got strides {B.stride()}")
        if W.stride(1) != 1 and W.shape[1] > 1:
            raise ValueError(f"every W must have contiguous rows; got strides {W.stride()}")
    if x.dtype not in _ops._FLOATS:
        raise TypeError(f"x must be one of {_ops._FLOATS}, got {x.dtype}")
    if any(t.dtype != x.dtype for t in [A, *Ws, *Bs]):
        raise TypeError(f"A, every W and every B must be in x's dtype {x.dtype}")
    if not _rows_contiguous(A):
        raise ValueError(f"A's rows must be contiguous (strides (*, d_in, 1)); got {A.stride()}")
    if idx.dim() != 2 or idx.shape[0] != bsz or tuple(w.shape) != tuple(idx.shape):
        raise ValueError(f"idx and w must be (Bsz={bsz}, K); got {tuple(idx.shape)}, {tuple(w.shape)}")
    if idx.dtype not in (torch.int32, torch.int64) or not w.is_floating_point():
        raise TypeError(f"idx must be int32/int64 and w float; got {idx.dtype}, {w.dtype}")
    dev = x.device
    if dev.type != "cuda" and not _ops._INTERPRET:  # CPU tensors only under TRITON_INTERPRET=1
        raise ValueError(f"fused_linear_group needs CUDA tensors, got x on {dev}")
    for name, t in [("A", A), ("idx", idx), ("w", w)] + [("W", W) for W in Ws] + [("B", B) for B in Bs]:
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {dev}")
    max_slot = _check_slots(idx, N, max_slot)
    d_outs = tuple(W.shape[0] for W in Ws)
    rows = bsz * T
    layout = _layout(rows, d_outs)
    outs = _alloc(rows, layout, x.dtype, dev)
    if rows == 0 or d_in == 0:
        for o in outs:
            o.zero_()
        return outs
    x_given = x
    x = x if x.is_contiguous() else x.contiguous()
    idx = idx if idx.is_contiguous() else idx.contiguous()
    w = w if w.is_contiguous() else w.contiguous()
    cuda = dev.type == "cuda"
    dev_index = dev.index if dev.index is not None else (torch.cuda.current_device() if cuda else 0)
    if cuda and dev_index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            return fused_linear_group(x, Ws, A, Bs, idx, w, ranks=ranks, pdl=pdl)
    K = idx.shape[1]
    n_sm = _num_sms(dev_index) if cuda else 8
    cfg = tuple(sorted(config.items()))
    p = _plan(rows, K, RG, d_in, d_outs, n_sm, x.element_size(), gemv_knobs(), cfg)
    in_capture = cuda and torch.cuda.is_current_stream_capturing()
    n_hp = max(1, rows * p.n_sc * p.split_d * p.block_s)
    if in_capture or not cuda:  # a graph gets scratch of its own
        hp = torch.empty(n_hp, dtype=torch.float32, device=dev)
    else:
        hp = _ops._scratch(n_hp, dev_index, torch._C._cuda_getCurrentRawStream(dev_index))
    # split-K workspace and counters (one per (row block, tile) of any member chunk)
    n_cnt = p.tiles if p.split_k > 1 else 0
    n_ws = p.tiles * p.split_k * p.block_m * p.block_n if n_cnt else 0
    if not n_cnt:
        ws = cnt = hp
    elif in_capture:
        ws = torch.empty(n_ws, dtype=torch.float32, device=dev)
        cnt = _captured_counters(n_cnt, dev)
    elif not cuda:
        ws = torch.empty(n_ws, dtype=torch.float32, device=dev)
        cnt = torch.zeros(n_cnt, dtype=torch.int32, device=dev)
    else:
        raw = torch._C._cuda_getCurrentRawStream(dev_index)
        ws, cnt = _workspace(n_ws, dev_index, raw), _counters(n_cnt, dev_index, raw)
    cache = (_ops._FAST_LAUNCH and meta is not None and x is x_given
             and not any(q % 16 for q in [x.data_ptr(), A.data_ptr(), idx.data_ptr(), w.data_ptr()]
                         + [t.data_ptr() for t in Ws + Bs + outs]))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    launches, ok = [], True
    # pointer list of a cached call: x, A, idx, w, hp, ws, cnt, W_0.., B_0.., y_0..
    if K > 0:
        a1 = (x, A, idx, w, hp, T, d_in, K, p.d_per, A.stride(0))
        c1 = dict(R=RG, BLOCK_S=p.block_s, BLOCK_D=p.block_d, PDL=pdl)
        g1 = (rows, p.split_d, p.n_sc)
        r1 = _launch(_shrink_kernel, g1, a1, c1, p.warps_s, 2, dev_index)
        ok = ok and bool(r1)
        launches.append((r1, g1, (0, 1, 2, 3, 4), a1[5:] + tuple(c1.values())))
    for ms in [list(range(c, min(c + _MAX_MEMBERS, M))) for c in range(0, M, _MAX_MEMBERS)]:
        pad = ms + [ms[0]] * (_MAX_MEMBERS - len(ms))
        tiles = [triton.cdiv(d_outs[m], p.block_n) for m in ms]
        starts = [sum(tiles[:i]) for i in range(1, len(ms))] + [sum(tiles)] * (_MAX_MEMBERS - len(ms))
        scal = [rows, T, K, d_in, p.split_d] + [d_outs[m] for m in pad] + [Ws[m].stride(0) for m in pad]
        for m in pad:
            scal += list(Bs[m].stride())
        scal += starts[:2]
        consts = dict(M=len(ms), RG=RG, BLOCK_SG=p.block_s, SPLIT_PAD=p.split_pad, BLOCK_M=p.block_m,
                      BLOCK_N=p.block_n, BLOCK_K=p.block_k, BLOCK_C=p.block_c, SPLIT_K=p.split_k, PREC=prec,
                      PDL=pdl and K > 0)
        offs = [sum(ranks[:m]) for m in range(M)]
        for i, m in enumerate(pad):
            consts.update({f"R{i}": ranks[m], f"OFF{i}": offs[m]})
        args = (x, hp, idx, ws, cnt, *[Ws[m] for m in pad], *[Bs[m] for m in pad], *[outs[m] for m in pad], *scal)
        grid = (p.row_blocks, sum(tiles), p.split_k)
        rec = _launch(_linear_group_kernel, grid, args, consts, p.warps, p.stages, dev_index, pdl=pdl and K > 0)
        ok = ok and bool(rec)
        take = (0, 4, 2, 5, 6) + tuple(7 + m for m in pad) + tuple(7 + M + m for m in pad) + tuple(
            7 + 2 * M + m for m in pad)
        launches.append((rec, grid, take, args[14:] + tuple(consts.values())))
    if cache and ok and not in_capture:
        key = _key(x, Ws, A, Bs, ranks, idx, pdl, False)
        if len(_fused_calls) > 4096:
            _fused_calls.clear()
        _fused_calls[key] = _Fused(dev_index, n_hp, n_ws, n_cnt, layout, tuple(launches))
    return outs


__all__ = ["MODES", "fused_linear_group", "mode", "use_pdl", "wants"]
