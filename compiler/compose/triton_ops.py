"""Triton kernels for batched low-rank composition: every request its own atom set.

This is the fast GPU path behind `compiler.compose.compose_delta`; `reference.py` beside it
defines the semantics and stays the oracle. The kernels never write the pool or the base
weights, never synchronize with the host when given a `ComposeMeta`, and allocate at most a
scratch buffer (fp32 partials; the stream plan's h), so a decode step that calls them can be
captured in a CUDA graph.

Importing this module raises ImportError when Triton is missing; the dispatcher relies on it.

Plans (S = K atoms x R pool rank stacked rows per request; a "row" is one token of one request):
  gemv fused  (T <= 4 tokens per request, S <= 128) one launch, grid (rows, P): each program
              computes the row's h = w * A_b x over all of d_in (plain FMA, no tensor-core
              tile padded to 16 tokens), then B_b h for its 1/P share of d_out. The P programs of
              a row re-read the row's A from L2; P is capped so that this stays cheap.
  gemv wide   (T <= 4) two launches: h partials over (row, d_in slice, S chunk), then the
              expand over (row, d_out tile) summing them; each program one memory round trip.
  tile fused  (T > 4, small eager calls) one launch of tensor-core tiles, as gemv fused.
  tile wide   (T > 4, large calls) shrink partials then expand, tensor-core tiles.
  stream      (T > 4, S <= 128) two launches that move each byte once: the shrink over
              (request, 64-token tile) writes h (x's dtype) over all of d_in; the expand over
              (request's token chunk, d_out tile) reads its B tile once, then h and writes y tile
              by tile; with 128 stacked ranks it instead holds one token tile's h and streams the
              request's B tiles over a share of d_out. The expand is launched with programmatic
              dependent launch (PDL): it starts (and loads B tiles) while the shrink still runs,
              and waits for h (env DOC2ATOM_STREAM_PDL=0 turns PDL off). More stacked ranks take
              the tile-fused plan.
"auto" takes, for T <= 4, the GEMV plan measured faster for the shape on an H200 (the same
eager and under capture); for T > 4, when 32-token blocks of the batch fill the GPU (e.g.
prefill), the stream plan for >= 64 tokens per request and 8..128 stacked ranks, else tile fused
with its large-call tiles; smaller calls take tile wide above 256 tokens or under capture, else
tile fused. Kernels are compiled on first use, which a CUDA-graph capture does not allow: run each
shape once (each path it may take, for T > 4) before capturing.
B is read through its strides: the pool keeps B as a transposed view of a contiguous
(N, R, d_out) tensor, so the expand reads each stacked rank as one contiguous row. A is read through
its atom stride: contiguous, or a rank slice of a projection group's concatenated A (grouped.py
computes a whole group's deltas in one launch; AtomPool stores group members that way).
Knobs of the two-launch GEMV (`set_gemv_knobs`, env DOC2ATOM_GEMV_WIDE_TILES / _PARTIALS / _WARPS): tile
width ("max": 16K-element tiles, <= 1024 wide, the default; "sm": about one program per SM per
pass), how the expand sums the d_in partials of h ("tile": one 2-D load, the default; "loop") and
the warps of its two passes ("4", the default; "auto": 8 for tiles of >= 8K elements).
Under TRITON_INTERPRET=1 every launch goes through Triton's own dispatch (no fast launch), and
CPU tensors are accepted.
"""

from __future__ import annotations

import functools
import os
from collections import namedtuple

import torch
import triton
import triton.language as tl
from triton import knobs

try:  # PDL intrinsics (Triton >= 3.3); no-ops in a kernel launched without launch_pdl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except (ImportError, AttributeError):  # pragma: no cover - older Triton
    HAS_PDL = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


# Stacked ranks (K * R) up to this many stay in registers in the fused plans; above it the
# tile-fused kernel keeps h in a per-program scratch buffer (still one launch).
_S_REGISTERS = 128
_S_CHUNK = 64
_GEMV_MAX_T = 4  # tokens per request up to which the GEMV plans are used (decode, small drafts)
# Eager tile calls up to this many tokens take the one-launch fused plan (host launch cost rules there).
_FUSED_MAX_TOKENS = 256


class ComposeMeta:
    """Per-forward composition metadata, validated once, shared by every layer of a forward.

    Holds the batch's atom slots and weights as static device buffers: `idx` (Bsz, K) int32
    and `w` (Bsz, K) float32. Building it (or `update_`) costs one host sync for the range
    check; the kernel then trusts `max_slot` and never syncs again, which is what makes the
    composed decode step capturable in a CUDA graph. Refill between graph replays with
    `update_` (same shapes, in place).
    """

    def __init__(self, idx: torch.Tensor, w: torch.Tensor | None = None, n_slots: int | None = None):
        if idx.dim() != 2:
            raise ValueError(f"idx must be (Bsz, K), got shape {tuple(idx.shape)}")
        self.idx = idx.to(torch.int32).contiguous().clone()
        if w is None:
            w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
        self.w = w.to(device=idx.device, dtype=torch.float32).contiguous().clone()
        self.max_slot = -1
        self._validate(n_slots)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.idx.shape)  # type: ignore[return-value]

    def update_(self, idx: torch.Tensor, w: torch.Tensor | None = None, n_slots: int | None = None) -> None:
        """Copy a new batch's slots and weights into the same buffers (graph-safe), re-validate."""
        if tuple(idx.shape) != self.shape:
            raise ValueError(f"update_ needs idx of shape {self.shape}, got {tuple(idx.shape)}")
        self.idx.copy_(idx)
        if w is None:
            self.w.fill_(1.0)
        else:
            if tuple(w.shape) != self.shape:
                raise ValueError(f"update_ needs w of shape {self.shape}, got {tuple(w.shape)}")
            self.w.copy_(w)
        self._validate(n_slots)

    def _validate(self, n_slots: int | None) -> None:
        if tuple(self.w.shape) != self.shape:
            raise ValueError(f"w must have idx's shape {self.shape}, got {tuple(self.w.shape)}")
        lo, hi = _slot_range(self.idx)
        if lo < -1:
            raise IndexError(f"atom slot out of range: idx min is {lo}, only -1 (padding) may be negative")
        if n_slots is not None and hi >= n_slots:
            raise IndexError(f"atom slot out of range: idx max is {hi} but the pool holds {n_slots} slots")
        self.max_slot = hi


def _rows_contiguous(A: torch.Tensor) -> bool:
    """A (N, R, d_in) whose atoms' rows are contiguous: each atom at A.stride(0), its ranks d_in apart."""
    N, R, d_in = A.shape
    return (A.stride(2) == 1 or d_in <= 1) and (A.stride(1) == d_in or R <= 1) and A.stride(0) >= 0


def _slot_range(idx: torch.Tensor) -> tuple[int, int]:
    """(min, max) of idx with one host sync; (-1, -1) when empty."""
    if idx.numel() == 0:
        return -1, -1
    lo, hi = torch.aminmax(idx)
    lo_hi = torch.stack([lo, hi]).tolist()
    return int(lo_hi[0]), int(lo_hi[1])


def _check_slots(idx: torch.Tensor, n_slots: int, max_slot: int | None = None) -> int:
    """The largest slot in idx (max_slot if the caller already knows it), after checking that every slot is -1
    (padding) or one of the pool's n_slots: an out-of-range slot would read another tensor's memory."""
    if max_slot is None:
        lo, max_slot = _slot_range(idx)
        if lo < -1:
            raise IndexError(f"atom slot out of range: idx min is {lo}, only -1 (padding) may be negative")
    if max_slot >= n_slots:
        raise IndexError(f"atom slot out of range: idx max is {max_slot} but the pool holds {n_slots} slots")
    return max_slot


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def _pow2_at_most(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


# ---- shared pieces ---------------------------------------------------------------------------
@triton.jit
def _slots_of(idx_row, s0, S, R: tl.constexpr, BLOCK_S: tl.constexpr):
    """Stacked rows s0 .. s0 + BLOCK_S of one request: (slot (int64, 0 for padding), rank j, valid)."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    slot = tl.load(idx_row + offs_s // R, mask=s_mask, other=-1)
    valid = s_mask & (slot >= 0)
    return tl.maximum(slot, 0).to(tl.int64), offs_s % R, valid


@triton.jit
def _weights_of(w_row, s0, S, valid, R: tl.constexpr, BLOCK_S: tl.constexpr):
    # masked by the row range only, so the load need not wait for the slots; padding -> 0 after
    offs_s = s0 + tl.arange(0, BLOCK_S)
    wk = tl.load(w_row + offs_s // R, mask=offs_s < S, other=0.0).to(tl.float32)
    return tl.where(valid, wk, 0.0)


# ---- GEMV plans (decode: a few tokens per request) -----------------------------------------
@triton.jit
def _gemv_h(x_row, a_ptr, slot, j, valid, wk, d_lo, d_hi, d_in, saN,
            R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """h (BLOCK_S,) fp32 = w * A_rows[:, d_lo:d_hi] @ x_row[d_lo:d_hi] (d_lo a multiple of BLOCK_D).

    A's rows are read as a_ptr + slot * saN + j * d_in: a contiguous (N, R, d_in) pool (saN = R * d_in)
    or a rank slice of a group's concatenated (N, R_group, d_in) pool."""
    a_rows = a_ptr + slot * saN + j * d_in
    acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
    # Triton does not software-pipeline loads that feed no dot: each iteration waits for its
    # tile, so the tile is large (~32 KB) and reduced at once, to keep many bytes in flight.
    for d0 in range(d_lo, d_hi, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < d_in  # slices end on BLOCK_D multiples except the last: keeps loads 16-byte wide
        xv = tl.load(x_row + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        at = tl.load(a_rows[:, None] + offs_d[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(at.to(tl.float32) * xv[None, :], axis=1)
    return acc * wk


@triton.jit
def _gemv_out(b_ptr, slot, j, valid, h, offs_n, n_mask, sbN, sbO, sbR):
    """(BLOCK_N,) fp32 = sum_s h[s] * B[slot_s, offs_n, j_s]; rows of B^T are contiguous when sbO == 1."""
    b_rows = b_ptr + slot * sbN + j * sbR
    bt = tl.load(b_rows[:, None] + offs_n[None, :] * sbO, mask=valid[:, None] & n_mask[None, :], other=0.0)
    return tl.sum(bt.to(tl.float32) * h[:, None], axis=0)


@triton.jit
def _expand_tiles(b_rows, valid, h, out_row, n_lo, n_hi, d_out, sbO, BLOCK_N: tl.constexpr, ACCUMULATE: tl.constexpr):
    """out_row[n] (+)= sum_s h[s] * B row s [n] for n in [n_lo, n_hi), BLOCK_N columns at a time.

    b_rows: (BLOCK_S,) pointers to each stacked rank's B row (column stride sbO); the expand loop
    shared by the fused GEMV program and both two-launch expands (plain and grouped)."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < d_out
        bt = tl.load(b_rows[:, None] + offs_n[None, :] * sbO, mask=valid[:, None] & n_mask[None, :], other=0.0)
        if ACCUMULATE:  # issued before the first use of B: one latency for both
            y = tl.load(out_row + offs_n, mask=n_mask, other=0.0)
        acc = tl.sum(bt.to(tl.float32) * h[:, None], axis=0)
        if ACCUMULATE:
            acc += y.to(tl.float32)
        tl.store(out_row + offs_n, acc.to(out_row.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemv_fused_row(
    x_ptr, a_ptr, b_ptr, idx_ptr, w_ptr, out_ptr, row, p, T, d_in, d_out, K, sbN, sbO, sbR, n_per, saN,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACCUMULATE: tl.constexpr,
):
    """One program of the fused GEMV plan: row's h over all of d_in, then d_out columns [p * n_per, (p + 1) * n_per)."""
    b = row // T
    row64 = row.to(tl.int64)
    S = K * R
    slot, j, valid = _slots_of(idx_ptr + b * K, 0, S, R, BLOCK_S)
    wk = _weights_of(w_ptr + b * K, 0, S, valid, R, BLOCK_S)
    h = _gemv_h(x_ptr + row64 * d_in, a_ptr, slot, j, valid, wk, 0, d_in, d_in, saN, R, BLOCK_S, BLOCK_D)
    out_row = out_ptr + row64 * d_out
    n_lo = p * n_per
    n_hi = tl.minimum(n_lo + n_per, d_out)
    _expand_tiles(b_ptr + slot * sbN + j * sbR, valid, h, out_row, n_lo, n_hi, d_out, sbO, BLOCK_N, ACCUMULATE)


@triton.jit(do_not_specialize=["T", "K"])  # token and atom counts change per batch: no recompiles
def _gemv_fused_kernel(
    x_ptr, a_ptr, b_ptr, idx_ptr, w_ptr, out_ptr,
    T, d_in, d_out, K, sbN, sbO, sbR, n_per, saN,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    # grid (Bsz * T, P): row = b * T + t; program p writes d_out columns [p * n_per, (p + 1) * n_per)
    _gemv_fused_row(x_ptr, a_ptr, b_ptr, idx_ptr, w_ptr, out_ptr, tl.program_id(0), tl.program_id(1), T, d_in,
                    d_out, K, sbN, sbO, sbR, n_per, saN, R, BLOCK_S, BLOCK_D, BLOCK_N, ACCUMULATE)


@triton.jit(do_not_specialize=["T", "K"])
def _gemv_shrink_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, hp_ptr, T, d_in, K, d_per, saN,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # grid (rows, SPLIT_D, n_sc): partial h of one d_in slice and one chunk of stacked rows
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
    # hp layout (row, sc, sd, s)
    base = hp_ptr + ((row.to(tl.int64) * n_sc + sc) * n_sd + sd) * BLOCK_S
    tl.store(base + tl.arange(0, BLOCK_S), h)


@triton.jit
def _sum_partials_at(ptrs, mask, split_d, stride, SPLIT_PAD: tl.constexpr):
    """sum over sd < split_d of ptrs[s] + sd * stride (the d_in partials of h).

    SPLIT_PAD > 0 (a power of two >= split_d): one 2-D load, all partials in flight at once;
    0: a loop, one dependent L2 round trip per partial."""
    if SPLIT_PAD > 0:
        offs_sd = tl.arange(0, SPLIT_PAD)
        t = tl.load(ptrs[None, :] + offs_sd[:, None] * stride, mask=(offs_sd < split_d)[:, None] & mask[None, :],
                    other=0.0)
        h = tl.sum(t, axis=0)
    else:
        h = tl.load(ptrs, mask=mask, other=0.0)
        for sd in range(1, split_d):
            h += tl.load(ptrs + sd * stride, mask=mask, other=0.0)
    return h


@triton.jit(do_not_specialize=["T", "K", "split_d"])
def _gemv_expand_kernel(
    hp_ptr, b_ptr, idx_ptr, out_ptr, T, d_out, K, split_d, sbN, sbO, sbR, n_per,
    R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, ONE_CHUNK: tl.constexpr,
    ACCUMULATE: tl.constexpr, SPLIT_PAD: tl.constexpr,
):
    # grid (rows, groups): d_out columns [g * n_per, (g + 1) * n_per) of one row.
    # A warp issues loads in program order and stalls at the first use of a result, so the
    # independent loads are written next to each other: (slots | partials), then (B | out).
    row = tl.program_id(0)
    g = tl.program_id(1)
    b = row // T
    row64 = row.to(tl.int64)
    S = K * R
    n_sc = tl.cdiv(S, BLOCK_S)
    out_row = out_ptr + row64 * d_out
    n_lo = g * n_per
    n_hi = tl.minimum(n_lo + n_per, d_out)
    if ONE_CHUNK:
        slot, j, valid = _slots_of(idx_ptr + b * K, 0, S, R, BLOCK_S)
        offs_s = tl.arange(0, BLOCK_S)
        h = _sum_partials_at(hp_ptr + row64 * split_d * BLOCK_S + offs_s, offs_s >= 0, split_d, BLOCK_S, SPLIT_PAD)
        _expand_tiles(b_ptr + slot * sbN + j * sbR, valid, h, out_row, n_lo, n_hi, d_out, sbO, BLOCK_N, ACCUMULATE)
    else:
        for n0 in range(n_lo, n_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for sc in range(0, n_sc):
                slot, j, valid = _slots_of(idx_ptr + b * K, sc * BLOCK_S, S, R, BLOCK_S)
                offs_s = tl.arange(0, BLOCK_S)
                h = _sum_partials_at(hp_ptr + (row64 * n_sc + sc) * split_d * BLOCK_S + offs_s, offs_s >= 0,
                                     split_d, BLOCK_S, SPLIT_PAD)
                acc += _gemv_out(b_ptr, slot, j, valid, h, offs_n, n_mask, sbN, sbO, sbR)
            if ACCUMULATE:
                acc += tl.load(out_row + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(out_row + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


GemvPlan = namedtuple("GemvPlan", "block_s n_sc block_d block_n warps p n_per_f "
                                   "block_dw split_d d_per warps_s block_nw groups n_per_w warps_e fused split_pad")

# Knobs of the two-launch GEMV plan, so that one process (the bench) can measure the variants
# side by side. wide_tiles: "max" = the largest tiles (16K elements, <= 1024 wide; run 1 of
# round 2), "sm" = tiles shrunk to about one program per SM per pass (run 2: 512-wide at batch
# 32, measured 2-3 us slower per call). partials: "tile" = the expand loads all d_in partials of
# h in one 2-D load, "loop" = one dependent load per partial (runs 1 and 2). warps: "e2" (the default since
# stop 20): the shrink at 4 warps, the expand at 2. Graphed decode (b32, K=8 r=2, base and composed graphs replayed
# in alternated rounds, bench --graphed-pairs): 0.900-0.909 of base over five processes against 0.893 at "4"
# (KERNEL_NOTES stop 20). "4" (the default of stops 17-19) = 4 warps for both passes of the wide plan (and
# fused_linear's shrink): fewer registers per program,
# so more programs and more bytes in flight per SM (expand 64 -> 49 registers, 4 -> 10 programs per SM by
# registers); one H200 run, b32: the gate/up expand alone 18.5 -> 10.2 us, graphed decode 14.33 -> 13.91 ms per
# step. "auto" = the earlier rule, 8 warps for tiles of >= 8K elements, else 4. "e2": smaller expand programs, which
# find room beside the base GEMM's blocks on the side stream.
# "e2n": the expand at 2 warps only where d_out <= d_in (q/k/v, o, down of a Llama layer; gate/up keep 4): stop 18
# measured 2 warps faster for o and down beside cuBLAS and slower for gate/up (a probe). "s8e2": the shrink by the
# "auto" rule (8 warps for 16K-element tiles), the expand at 2 (a probe). "e1": the expand at 1 warp (a probe).
_GEMV_KNOBS = {"wide_tiles": os.environ.get("DOC2ATOM_GEMV_WIDE_TILES", "max"),
               "partials": os.environ.get("DOC2ATOM_GEMV_PARTIALS", "tile"),
               "warps": os.environ.get("DOC2ATOM_GEMV_WARPS", "e2")}
_KNOB_VALUES = {"wide_tiles": ("max", "sm"), "partials": ("tile", "loop"),
                "warps": ("auto", "4", "e2", "e2n", "s8e2", "e1")}
for _k, _v in _GEMV_KNOBS.items():
    if _v not in _KNOB_VALUES[_k]:
        raise ValueError(f"DOC2ATOM_GEMV_{_k.upper()} must be one of {_KNOB_VALUES[_k]}, got {_v!r}")


def set_gemv_knobs(wide_tiles: str | None = None, partials: str | None = None, warps: str | None = None) -> dict:
    """Set the two-launch GEMV knobs for this process (None keeps one); returns the previous values."""
    old = dict(_GEMV_KNOBS)
    for k, v in (("wide_tiles", wide_tiles), ("partials", partials), ("warps", warps)):
        if v is not None:
            if v not in _KNOB_VALUES[k]:
                raise ValueError(f"{k} must be one of {_KNOB_VALUES[k]}, got {v!r}")
            _GEMV_KNOBS[k] = v
    return old


def gemv_knobs() -> tuple[str, str, str]:
    return _GEMV_KNOBS["wide_tiles"], _GEMV_KNOBS["partials"], _GEMV_KNOBS["warps"]


def _warps(elements: int) -> int:
    return 8 if elements >= 8192 else 4


@functools.lru_cache(maxsize=4096)
def _plan_gemv(rows: int, K: int, R: int, d_in: int, d_out: int, n_sm: int, split: int | None,
               knobs: tuple[str, str, str] = ("max", "tile", "e2")) -> GemvPlan:
    """Tiles and grids of both GEMV plans and which one "auto" takes; pure function of the shapes, cached."""
    S = K * R
    block_s = min(_S_REGISTERS, _pow2_at_least(S, 16))
    n_sc = triton.cdiv(S, block_s)
    # fused: 16K-element tiles, 32 KB (bf16) in flight per program and iteration
    block_d = min(max(16384 // block_s, 64), 1024, _pow2_at_least(d_in, 64))
    block_n = min(max(16384 // block_s, 64), 1024, _pow2_at_least(d_out, 64))
    n_nb = triton.cdiv(d_out, block_n)
    # P d_out shares per row; every share re-reads the row's A (L2 hits): keep that L2
    # traffic within ~2x the bytes the row must read anyway
    p = split if split is not None else min(triton.cdiv(2 * n_sm, rows), (2 * (d_in + d_out)) // d_in)
    p = max(1, min(p, n_nb))
    n_per_f = triton.cdiv(n_nb, p) * block_n
    p = triton.cdiv(d_out, n_per_f)
    # wide: one tile per program (each program is then one memory round trip; measured on the
    # H200 to beat the fused plan whenever the fused one has few rows or a long d_in loop).
    # "max": the fused plan's 16K-element tiles (run 1); "sm": shrunk so that each pass has about
    # one program per SM (run 2, slower at batch 32)
    if knobs[0] == "sm":
        block_dw = min(block_d, max(256 if block_s <= 32 else 64, _pow2_at_most(max(1, rows * d_in * n_sc // n_sm))))
        block_nw = min(block_n, max(64, _pow2_at_most(max(1, rows * d_out // n_sm))))
    else:
        block_dw, block_nw = block_d, block_n
    n_db = triton.cdiv(d_in, block_dw)
    split_d = n_db
    d_per = block_dw
    # the expand sums the split_d partials of h in one 2-D load when they fit in registers
    split_pad = _pow2_at_least(split_d, 1) if knobs[1] == "tile" and _pow2_at_least(split_d, 1) * block_s <= 4096 else 0
    groups = triton.cdiv(d_out, block_nw)
    n_per_w = block_nw
    # auto: the fused plan only where it measured faster (batch 128 q/k/v/o shapes): enough rows
    # to fill the GPU, a short d_in loop, and no more output than input per row
    fused = (n_sc == 1 and rows >= n_sm // 2 and d_out <= d_in and triton.cdiv(d_in, block_d) <= 4)
    four = knobs[2] in ("4", "e2", "e2n", "e1")
    two = knobs[2] in ("e2", "s8e2") or (knobs[2] == "e2n" and d_out <= d_in)
    warps_e = 1 if knobs[2] == "e1" else 2 if two else 4 if four else _warps(block_s * block_nw)
    return GemvPlan(block_s, n_sc, block_d, block_n, _warps(block_s * max(block_d, block_n)), p, n_per_f,
                    block_dw, split_d, d_per, 4 if four else _warps(block_s * block_dw), block_nw, groups, n_per_w,
                    warps_e, fused, split_pad)


# ---- tile plans (tensor cores; prefill-sized calls) ----------------------------------------
@triton.jit
def _shrink_chunk(
    x_rows, t_mask, a_ptr, idx_row, w_row, s0, S, d_in, d_lo, d_hi, saN,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """h (BLOCK_T, BLOCK_S) fp32 = w * x_tile[:, d_lo:d_hi] @ A_rows[:, d_lo:d_hi]^T, rows s0 .. s0 + BLOCK_S."""
    slot, j, valid = _slots_of(idx_row, s0, S, R, BLOCK_S)
    wk = _weights_of(w_row, s0, S, valid, R, BLOCK_S)
    a_rows = a_ptr + slot * saN + j * d_in
    acc = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < d_in
        xt = tl.load(x_rows[:, None] + offs_d[None, :], mask=t_mask[:, None] & d_mask[None, :], other=0.0)
        at = tl.load(a_rows[:, None] + offs_d[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(xt, tl.trans(at), acc, input_precision=PREC)
    return acc * wk[None, :]


@triton.jit
def _expand_tile(b_ptr, idx_row, s0, S, offs_n, n_mask, sbN, sbO, sbR, R: tl.constexpr, BLOCK_S: tl.constexpr):
    """B^T tile (BLOCK_S, BLOCK_N): row s = B[slot_s, offs_n, j_s], zero for padding slots."""
    slot, j, valid = _slots_of(idx_row, s0, S, R, BLOCK_S)
    b_rows = b_ptr + slot * sbN + j * sbR
    return tl.load(b_rows[:, None] + offs_n[None, :] * sbO, mask=valid[:, None] & n_mask[None, :], other=0.0)


@triton.jit(do_not_specialize=["T", "K"])
def _compose_kernel(
    x_ptr, a_ptr, b_ptr, idx_ptr, w_ptr, out_ptr, h_ptr,
    T, d_in, d_out, K, sbN, sbO, sbR, saN,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, ACCUMULATE: tl.constexpr, PREC: tl.constexpr,
):
    # grid (Bsz * ceil(T / BLOCK_T), SPLIT): shrink over all of d_in, then a 1/SPLIT share of d_out
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_split = tl.num_programs(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    S = K * R
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    rows = (b * T + offs_t).to(tl.int64)
    x_rows = x_ptr + rows * d_in
    out_rows = out_ptr + rows * d_out
    idx_row = idx_ptr + b * K
    w_row = w_ptr + b * K
    n_nb = tl.cdiv(d_out, BLOCK_N)
    per = tl.cdiv(n_nb, n_split)
    nb_lo = pid_n * per
    nb_hi = tl.minimum(nb_lo + per, n_nb)
    if SINGLE:
        h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, 0, S, d_in, 0, d_in, saN,
                          R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
        hq = h.to(x_ptr.dtype.element_ty)
        for nb in range(nb_lo, nb_hi):
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            bt = _expand_tile(b_ptr, idx_row, 0, S, offs_n, n_mask, sbN, sbO, sbR, R, BLOCK_S)
            acc = tl.dot(hq, bt, input_precision=PREC)
            o_ptrs = out_rows[:, None] + offs_n[None, :]
            o_mask = t_mask[:, None] & n_mask[None, :]
            if ACCUMULATE:
                acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
            tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)
    else:
        # many stacked ranks: h in this program's own scratch rows, chunk by chunk
        n_chunks = tl.cdiv(S, BLOCK_S)
        h_base = h_ptr + (pid * n_split + pid_n).to(tl.int64) * (n_chunks * BLOCK_T * BLOCK_S)
        tile = tl.arange(0, BLOCK_T)[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
        for c in range(0, n_chunks):
            h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, c * BLOCK_S, S, d_in, 0, d_in, saN,
                              R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
            tl.store(h_base + c * (BLOCK_T * BLOCK_S) + tile, h)
        tl.debug_barrier()  # the scratch tiles are re-read by other threads of this program
        for nb in range(nb_lo, nb_hi):
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
            for c in range(0, n_chunks):
                hq = tl.load(h_base + c * (BLOCK_T * BLOCK_S) + tile).to(x_ptr.dtype.element_ty)
                bt = _expand_tile(b_ptr, idx_row, c * BLOCK_S, S, offs_n, n_mask, sbN, sbO, sbR, R, BLOCK_S)
                acc = tl.dot(hq, bt, acc, input_precision=PREC)
            o_ptrs = out_rows[:, None] + offs_n[None, :]
            o_mask = t_mask[:, None] & n_mask[None, :]
            if ACCUMULATE:
                acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
            tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["T", "K"])
def _shrink_partial_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, hp_ptr, T, d_in, K, d_per, saN,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
):
    # grid (Bsz * n_tb, SPLIT_D, n_sc): partial h of one d_in slice and one chunk of stacked rows
    pid = tl.program_id(0)
    sd = tl.program_id(1)
    sc = tl.program_id(2)
    n_sd = tl.num_programs(1)
    n_sc = tl.num_programs(2)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    x_rows = x_ptr + (b * T + offs_t).to(tl.int64) * d_in
    d_lo = sd * d_per
    d_hi = tl.minimum(d_lo + d_per, d_in)
    h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_ptr + b * K, w_ptr + b * K, sc * BLOCK_S, K * R, d_in, d_lo, d_hi,
                      saN, R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
    # hp layout (pid, sc, sd, t, s)
    base = hp_ptr + ((pid * n_sc + sc) * n_sd + sd).to(tl.int64) * (BLOCK_T * BLOCK_S)
    tile = tl.arange(0, BLOCK_T)[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
    tl.store(base + tile, h, mask=t_mask[:, None])


@triton.jit
def _sum_partials(hp_ptr, pid, sc, n_sc, split_d, tile, t_mask, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr):
    base = hp_ptr + ((pid * n_sc + sc) * split_d).to(tl.int64) * (BLOCK_T * BLOCK_S)
    h = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    for sd in range(0, split_d):
        h += tl.load(base + sd * (BLOCK_T * BLOCK_S) + tile, mask=t_mask[:, None], other=0.0)
    return h


@triton.jit(do_not_specialize=["T", "K", "split_d"])
def _expand_partial_kernel(
    hp_ptr, b_ptr, idx_ptr, out_ptr, T, d_out, K, split_d, sbN, sbO, sbR, n_per,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_CHUNK: tl.constexpr, ACCUMULATE: tl.constexpr, PREC: tl.constexpr,
):
    # grid (Bsz * n_tb, groups): d_out columns [g * n_per, (g + 1) * n_per) of one token block
    pid = tl.program_id(0)
    g = tl.program_id(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    S = K * R
    n_sc = tl.cdiv(S, BLOCK_S)
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    idx_row = idx_ptr + b * K
    tile = tl.arange(0, BLOCK_T)[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
    out_rows = out_ptr + (b * T + offs_t).to(tl.int64)[:, None] * d_out
    n_lo = g * n_per
    n_hi = tl.minimum(n_lo + n_per, d_out)
    if ONE_CHUNK:  # h summed once, reused for every output tile of the group
        hq = _sum_partials(hp_ptr, pid, 0, 1, split_d, tile, t_mask, BLOCK_T, BLOCK_S).to(b_ptr.dtype.element_ty)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < d_out
        if ONE_CHUNK:
            bt = _expand_tile(b_ptr, idx_row, 0, S, offs_n, n_mask, sbN, sbO, sbR, R, BLOCK_S)
            acc = tl.dot(hq, bt, input_precision=PREC)
        else:
            acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
            for sc in range(0, n_sc):
                h = _sum_partials(hp_ptr, pid, sc, n_sc, split_d, tile, t_mask, BLOCK_T, BLOCK_S)
                bt = _expand_tile(b_ptr, idx_row, sc * BLOCK_S, S, offs_n, n_mask, sbN, sbO, sbR, R, BLOCK_S)
                acc = tl.dot(h.to(b_ptr.dtype.element_ty), bt, acc, input_precision=PREC)
        o_ptrs = out_rows + offs_n[None, :]
        o_mask = t_mask[:, None] & n_mask[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["T", "K"])
def _stream_shrink_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, h_ptr, T, d_in, K, saN,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    PDL: tl.constexpr,
):
    # grid (Bsz * ceil(T / BLOCK_T),): h rows of one token tile over all of d_in, stored in x's dtype
    if PDL:
        gdc_launch_dependents()  # the expand may start now and load its B tiles under this pass
    pid = tl.program_id(0)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    rows = (b * T + offs_t).to(tl.int64)
    h = _shrink_chunk(x_ptr + rows * d_in, t_mask, a_ptr, idx_ptr + b * K, w_ptr + b * K, 0, K * R, d_in, 0, d_in,
                      saN, R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
    h_ptrs = h_ptr + rows[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=t_mask[:, None])


@triton.jit(do_not_specialize=["T", "K", "t_per"])
def _stream_expand_kernel(
    h_ptr, b_ptr, idx_ptr, out_ptr, T, d_out, K, sbN, sbO, sbR, t_per,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    ACCUMULATE: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
):
    # grid (Bsz * ceil(T / t_per), ceil(d_out / BLOCK_N)): the request's B tile read once, then its
    # tokens t_per at a time in BLOCK_T-token tiles
    pid = tl.program_id(0)
    nb = tl.program_id(1)
    n_tc = tl.cdiv(T, t_per)
    b = pid // n_tc
    t_lo = (pid % n_tc) * t_per
    t_hi = tl.minimum(t_lo + t_per, T)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_out
    bt = _expand_tile(b_ptr, idx_ptr + b * K, 0, K * R, offs_n, n_mask, sbN, sbO, sbR, R, BLOCK_S)
    if PDL:
        gdc_wait()  # the shrink's h is complete and visible from here on (B was read under it)
    offs_s = tl.arange(0, BLOCK_S)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < t_hi
        rows = (b * T + offs_t).to(tl.int64)
        hq = tl.load(h_ptr + rows[:, None] * BLOCK_S + offs_s[None, :], mask=t_mask[:, None], other=0.0)
        acc = tl.dot(hq, bt, input_precision=PREC)
        o_ptrs = out_ptr + rows[:, None] * d_out + offs_n[None, :]
        o_mask = t_mask[:, None] & n_mask[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["T", "K"])  # n_per stays specialized: it offsets the columns (16-aligned loads)
def _stream_expand_h_kernel(
    h_ptr, b_ptr, idx_ptr, out_ptr, T, d_out, K, sbN, sbO, sbR, n_per,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    ACCUMULATE: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr,
):
    # grid (Bsz * ceil(T / BLOCK_T), groups): one token tile's h loaded once, the request's B tiles streamed
    # (pipelined) over the group's n_per output columns; for many stacked ranks, where a B tile held
    # through a token loop (_stream_expand_kernel) costs more than re-reading B from L2
    pid = tl.program_id(0)
    g = tl.program_id(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    S = K * R
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    rows = (b * T + offs_t).to(tl.int64)
    slot, j, valid = _slots_of(idx_ptr + b * K, 0, S, R, BLOCK_S)
    b_rows = b_ptr + slot * sbN + j * sbR
    if PDL:
        gdc_wait()  # the shrink's h is complete and visible from here on
    hq = tl.load(h_ptr + rows[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :], mask=t_mask[:, None], other=0.0)
    n_lo = g * n_per
    n_hi = tl.minimum(n_lo + n_per, d_out)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < d_out
        bt = tl.load(b_rows[:, None] + offs_n[None, :] * sbO, mask=valid[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(hq, bt, input_precision=PREC)
        o_ptrs = out_ptr + rows[:, None] * d_out + offs_n[None, :]
        o_mask = t_mask[:, None] & n_mask[None, :]
        if ACCUMULATE:
            acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def _fills_gpu(bsz: int, T: int, n_sm: int) -> bool:
    """Whether 32-token blocks of the batch alone give every SM a program: the tile-fused plan's
    large regime, which "auto" takes for any T > 4 (a 32-row x tile read once, h kept in registers,
    y written once: the delta's bytes in one pass, no partials)."""
    return bsz * triton.cdiv(T, 32) >= n_sm


def _large_call(bsz: int, T: int, n_sm: int, esize: int) -> bool:
    """The large regime for 16-bit inputs (fp32 tiles this size overflow shared memory)."""
    return esize <= 2 and _fills_gpu(bsz, T, n_sm)


@functools.lru_cache(maxsize=4096)
def _plan(bsz: int, T: int, K: int, R: int, d_out: int, n_sm: int, split: int | None, esize: int):
    """Tile-fused plan: tile sizes, grid and pipeline depth; pure function of the shapes, cached.

    Large calls (`_fills_gpu`): the tiles found by bench_kernel.py --layer-tune 256 on an H200
    (KERNEL_NOTES "Stop 15"): 32-token tiles and a 5-deep pipeline while the stacked ranks are
    few (S <= 32); 128-token tiles above (the gathered A and B rows are then re-read per token
    tile: fewer, taller tiles read them fewer times), wide output tiles."""
    S = K * R
    single = S <= _S_REGISTERS
    block_s = _pow2_at_least(S, 16) if single else _S_CHUNK
    if T > _GEMV_MAX_T and _large_call(bsz, T, n_sm, esize):
        block_t = 32 if S <= 32 or T <= 32 else (64 if T <= 64 else 128)
        block_n = 128 if S <= 16 else 256
        block_d = 128
        # pipeline depth within ~200 KB of shared memory (the H200 has 227 KB per block): 5 stages of
        # 32-token tiles; 128-token tiles with 128 stacked ranks take 64 KB a stage, so 3
        stage = max((block_t + block_s) * block_d, block_s * block_n) * esize
        num_stages = max(2, min(5 if block_t <= 32 else 4, (200 * 1024) // stage))
    else:
        block_t = 16 if T <= 16 else (32 if T <= 32 else 64)
        block_n = min(128, max(64, _pow2_at_most(8192 // (block_t + block_s))))
        num_stages = 3
        # about 32 KB of operands per pipeline stage (x tile + gathered A rows)
        block_d = min(512, max(64, _pow2_at_most((32768 // esize) // (block_t + block_s))))
    n_prog = bsz * triton.cdiv(T, block_t)
    n_nb = triton.cdiv(d_out, block_n)
    if split is None:
        split = max(1, n_sm // max(1, n_prog))  # one program per SM when the batch alone cannot fill the GPU
    split = max(1, min(split, n_nb))
    num_warps = 4 if block_t * block_s <= 2048 else 8
    return block_t, block_s, block_d, block_n, single, split, num_warps, num_stages


@functools.lru_cache(maxsize=4096)
def _plan_wide(bsz: int, T: int, K: int, R: int, d_in: int, d_out: int, n_sm: int, esize: int):
    """Tile-wide plan: tiles and grids of the two passes; pure function of the shapes, cached."""
    S = K * R
    block_t = 16 if T <= 16 else (32 if T <= 32 else 64)
    block_s = min(_S_REGISTERS, _pow2_at_least(S, 16))  # x is read once per chunk: keep chunks few
    n_sc = triton.cdiv(S, block_s)
    block_d = min(256, max(32, _pow2_at_most((32768 // esize) // (block_t + block_s))))
    n_prog = bsz * triton.cdiv(T, block_t)
    n_db = triton.cdiv(d_in, block_d)
    # ~4 shrink programs per SM; the expand sums the d_in partials in a loop, once per group
    want = triton.cdiv(4 * n_sm, n_prog * n_sc)
    split_d = max(1, min(_pow2_at_most(want), _pow2_at_most(n_db), 16))
    d_per = triton.cdiv(n_db, split_d) * block_d
    split_d = triton.cdiv(d_in, d_per)
    block_n = 128
    n_nb = triton.cdiv(d_out, block_n)
    groups = max(1, min(n_nb, triton.cdiv(4 * n_sm, n_prog)))
    n_per = triton.cdiv(n_nb, groups) * block_n
    groups = triton.cdiv(d_out, n_per)
    warps_s = 8 if block_t * block_s >= 4096 else 4
    warps_e = 8 if block_t * max(block_s, block_n) >= 8192 else 4
    return block_t, block_s, n_sc, block_d, split_d, d_per, n_per, groups, block_n, warps_s, warps_e


# the stream plan: large calls with this many tokens per request and stacked ranks (KERNEL_NOTES "Stop 19")
_STREAM_MIN_T = 64
_STREAM_S = (8, _S_REGISTERS)
_STREAM_PDL = os.environ.get("DOC2ATOM_STREAM_PDL", "1") == "1"


def _stream_fits(T: int, S: int) -> bool:
    """Whether "auto" takes the stream plan for a large call (`_large_call`) of T tokens per request."""
    return T >= _STREAM_MIN_T and _STREAM_S[0] <= S <= _STREAM_S[1]


@functools.lru_cache(maxsize=4096)
def _plan_stream(bsz: int, T: int, K: int, R: int, d_out: int, n_sm: int, esize: int):
    """Stream plan tiles (H200 probe, bench/probe_two_pass.py, KERNEL_NOTES "Stop 19"): 64-token shrink tiles
    over 128-wide d_in chunks 4 deep. The expand: up to 64 stacked ranks, each program holds one 128-wide B tile
    of a request and takes t_per of its tokens (all of them, so each B tile is read once, unless that leaves
    fewer than ~2 programs per SM); 128 stacked ranks (16-bit), each program holds one 128-token tile's h and
    streams the request's B tiles over 1/groups of d_out (h_once), about one program per SM.
    Returns (block_t, block_s, block_d, warps_s, stages_s, block_te, block_n, warps_e, stages_e, t_per, h_once,
    groups)."""
    S = K * R
    block_s = _pow2_at_least(S, 16)
    block_t = 64
    block_d = 256 // esize  # 128 for 16-bit inputs
    warps_s = 8 if block_s >= 128 else 4
    stages_s = 4 if esize <= 2 else 3
    h_once = block_s >= 128 and esize <= 2
    block_n = 128
    if h_once:
        block_te, warps_e, stages_e = 128, 8, 4
        n_tb = triton.cdiv(T, block_te)
        groups = max(1, min(triton.cdiv(d_out, block_n), n_sm // (bsz * n_tb)))
        return block_t, block_s, block_d, warps_s, stages_s, block_te, block_n, warps_e, stages_e, 0, True, groups
    block_te, warps_e, stages_e = 64, 8, 3
    n_nb = triton.cdiv(d_out, block_n)
    tiles = triton.cdiv(T, block_te)
    chunks = min(tiles, max(1, (2 * n_sm) // (bsz * n_nb)))
    t_per = triton.cdiv(tiles, chunks) * block_te
    return block_t, block_s, block_d, warps_s, stages_s, block_te, block_n, warps_e, stages_e, t_per, False, 1

_FUSED_TUNE_KEYS = ("block_t", "block_d", "block_n", "num_warps", "num_stages", "split")
_WIDE_TUNE_KEYS = ("block_t", "block_s", "block_d", "split_d", "groups", "block_n", "warps_s", "warps_e",
                   "stages_s", "stages_e")
_STREAM_TUNE_KEYS = ("block_t", "block_d", "warps_s", "stages_s", "block_te", "block_n", "warps_e", "stages_e",
                     "t_per", "h_once", "groups", "pdl")


def _tiles(tune: dict, known: tuple, plan: str, **tiles: int) -> tuple:
    """The tile sizes `tiles` (name=plan value) with `tune`'s overrides; unknown keys and tiles that are not powers
    of two >= 16 raise."""
    bad = set(tune) - set(known)
    if bad:
        raise ValueError(f"unknown tune keys for the {plan} plan: {sorted(bad)}; known: {known}")
    out = []
    for name, v in tiles.items():
        v = tune.get(name, v)
        if v < 16 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {v}")
        out.append(v)
    return tuple(out)


def _tune_wide(tune: dict, S: int, d_in: int, d_out: int, block_t: int, block_s: int, block_d: int, split_d: int,
               groups: int, block_n: int, warps_s: int, warps_e: int, stages_s: int, stages_e: int) -> tuple:
    """The tile-wide plan with benchmark overrides applied (`tune` keys: _WIDE_TUNE_KEYS); derived sizes recomputed."""
    block_t, block_s, block_d, block_n = _tiles(tune, _WIDE_TUNE_KEYS, "wide", block_t=block_t, block_s=block_s,
                                                block_d=block_d, block_n=block_n)
    n_sc = triton.cdiv(S, block_s)
    n_db = triton.cdiv(d_in, block_d)
    split_d = max(1, min(tune.get("split_d", split_d), n_db))
    d_per = triton.cdiv(n_db, split_d) * block_d
    split_d = triton.cdiv(d_in, d_per)
    n_nb = triton.cdiv(d_out, block_n)
    groups = max(1, min(tune.get("groups", groups), n_nb))
    n_per = triton.cdiv(n_nb, groups) * block_n
    groups = triton.cdiv(d_out, n_per)
    return (block_t, block_s, n_sc, block_d, split_d, d_per, n_per, groups, block_n,
            tune.get("warps_s", warps_s), tune.get("warps_e", warps_e), tune.get("stages_s", stages_s),
            tune.get("stages_e", stages_e))


# ---- launching -------------------------------------------------------------------------------
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_FAST_LAUNCH = os.environ.get("DOC2ATOM_TRITON_FAST_LAUNCH", "1") == "1" and not _INTERPRET
_compiled: dict = {}  # launch key -> (launch fn, fixed launcher args) or False
_calls: dict = {}  # compose call key -> _Call (the eager decode fast path)
# launches: ((launch fn, fixed args), grid, which of (x, A, B, idx, w, out, hp) it takes, other args)
_Call = namedtuple("_Call", "dev n_hp launches")
_scratch_bufs: dict = {}


def _remember(key, call) -> None:
    if len(_calls) > 4096:
        _calls.clear()
    _calls[key] = call


def _scratch(n: int, dev_index: int, stream: int) -> torch.Tensor:
    """fp32 scratch of at least n floats, one per (device, stream), reused by every eager call.

    Safe because calls on one stream run in order (a call's shrink writes the partials only
    after the previous call's expand has read them); graph captures allocate their own.
    """
    buf = _scratch_bufs.get((dev_index, stream))
    if buf is None or buf.numel() < n:
        buf = torch.empty(max(n, 1 << 15), dtype=torch.float32, device=torch.device("cuda", dev_index))
        _scratch_bufs[(dev_index, stream)] = buf
    return buf


def _hooks_active() -> bool:
    """True when a profiler hooks Triton launches (then every launch goes through Triton)."""
    rt = knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # Triton 3.6: an empty HookChain = none
            return True
    return False


def _replay_record(ck):
    """(launch fn, fixed args) of a compiled kernel, to launch it without Triton's per-call dispatch."""
    try:
        launcher = ck.run
        if launcher.global_scratch_size or launcher.profile_scratch_size:
            return False
        mid = (ck.function, launcher.launch_cooperative_grid, launcher.launch_pdl, None, None,
               ck.packed_metadata, None, None, None)
        return launcher.launch, mid
    except AttributeError:
        return False


def _launch(kernel, grid, args: tuple, consts: dict, num_warps: int, num_stages: int, device_index: int,
            pdl: bool = False):
    """Launch `kernel`; after the first launch of a specialization, straight through its compiled launcher.

    Triton's own per-call dispatch (binding, specialization, cache key, launch metadata) costs
    tens of microseconds on a slow host, paid 224 times per decode step of an 8B model. The
    key here is at least as fine as Triton's specialization (dtype and 16-byte alignment of
    every pointer, exact value of every integer), so a hit runs exactly the kernel Triton
    would pick. Pointers are passed as integers (no driver query per pointer). Returns the
    replay record (for the per-call cache of compose_delta_triton) or None.
    Set DOC2ATOM_TRITON_FAST_LAUNCH=0 to always go through Triton.
    pdl: launch with programmatic dependent launch (the kernel may start while the previous
    kernel on the stream still runs; it must call gdc_wait before reading that kernel's output).
    """
    extra = {"launch_pdl": True} if pdl else {}
    if not _FAST_LAUNCH:
        kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages, **extra)
        return None
    vals, spec = [], []
    for a in args:
        if isinstance(a, torch.Tensor):
            p = a.data_ptr()
            vals.append(p)
            spec.append((a.dtype, p % 16 == 0))
        else:
            vals.append(a)
            spec.append(a)
    key = (kernel, num_warps, num_stages, tuple(consts.values()), tuple(spec), pdl)
    rec = _compiled.get(key)
    if rec is None:
        ck = kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages, **extra)
        usable = list(kernel.arg_names) == list(kernel.arg_names[: len(args)]) + list(consts)
        if len(_compiled) > 8192:
            _compiled.clear()
        _compiled[key] = rec = _replay_record(ck) if usable else False
        return rec or None
    if rec is False or _hooks_active():
        kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages, **extra)
        return None
    fn, mid = rec
    fn(grid[0], grid[1], grid[2], torch._C._cuda_getCurrentRawStream(device_index), *mid, *vals, *consts.values())
    return rec


def _fast_call(x, A, B, meta, out, accumulate: bool, path: str, stream: int | None = None) -> bool:
    """Replay the cached GEMV launches of a call shaped like an earlier checked one; False = take the full path.

    Everything the full path checked is either part of the key (shapes, strides, dtypes,
    devices, flags) or re-checked here (contiguity, 16-byte alignment, the slot range,
    the current device), so a hit launches exactly what the full path would. `stream`: a raw
    CUDA stream to launch on instead of the current one (grouped.serve_* side stream).
    """
    capturing = path == "auto" and torch.cuda.is_current_stream_capturing()
    idx = meta.idx
    key = (x.shape, x.dtype, A.shape, A.stride(), A.dtype, B.shape, B.stride(), B.dtype, out.shape, out.dtype,
           idx.shape, accumulate, path, capturing,
           x.get_device(), A.get_device(), B.get_device(), out.get_device(), idx.get_device(), gemv_knobs())
    call = _calls.get(key)
    if call is None or meta.max_slot >= A.shape[0] or not (x.is_contiguous() and out.is_contiguous()):
        return False
    ptrs = [x.data_ptr(), A.data_ptr(), B.data_ptr(), idx.data_ptr(), meta.w.data_ptr(), out.data_ptr(), 0]
    if (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4] | ptrs[5]) & 15 or _hooks_active():
        return False
    if torch.cuda.current_device() != call.dev:
        return False
    if stream is None:
        stream = torch._C._cuda_getCurrentRawStream(call.dev)
    if call.n_hp:
        if torch.cuda.is_current_stream_capturing():  # a graph gets scratch of its own
            return False
        ptrs[6] = _scratch(call.n_hp, call.dev, stream).data_ptr()
    for (fn, mid), grid, take, tail in call.launches:
        fn(grid[0], grid[1], grid[2], stream, *mid, *[ptrs[i] for i in take], *tail)
    return True


def compose_delta_triton(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    idx: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    *,
    meta: ComposeMeta | None = None,
    out: torch.Tensor | None = None,
    accumulate: bool = False,
    split: int | None = None,
    tune: dict | None = None,
    path: str = "auto",
    stream: torch.cuda.Stream | None = None,
) -> torch.Tensor:
    """Semantics: out[b, t] (+)= sum_k w[b, k] * B[idx[b, k]] @ (A[idx[b, k]] @ x[b, t]), idx < 0 adds 0.

    Args:
        x:    (Bsz, T, d_in) fp32/fp16/bf16 activations, row b is request b. Not written.
              Made contiguous if it is not (a copy).
        A:    (N, R, d_in) shrink matrices of the pool, x's dtype, contiguous. Not written.
        B:    (N, d_out, R) expand matrices of the pool, x's dtype: contiguous, or (fastest, what
              AtomPool gives) the transposed view of a contiguous (N, R, d_out). Not written.
        idx:  (Bsz, K) int32/int64 atom slots per request, -1 = padding, each < N. Not written.
              Checked here with one host sync; pass `meta` instead to skip the sync.
        w:    (Bsz, K) float weights per (request, atom); None = all ones. Not written.
        meta: ComposeMeta holding idx and w, validated once per forward; replaces idx and w.
        out:  optional (Bsz, T, d_out) contiguous buffer in x's dtype, WRITTEN IN PLACE:
              every element is overwritten with the delta, or, with accumulate=True,
              out += delta (e.g. out = the base layer's output y).
        split, tune: overrides for benchmarks and tuning: the d_out split per row of the fused
              plans; any of `_FUSED_TUNE_KEYS` of the tile-fused plan (split: its d_out split);
              any of `_WIDE_TUNE_KEYS` of the tile-wide plan, `_STREAM_TUNE_KEYS` of the stream
              plan (T > 4).
        path: "fused" (one launch), "wide" (two launches, fills the GPU), "stream" (two launches,
              each byte moved once; for T <= 4 the same as "wide", above 128 stacked ranks as
              "fused") or "auto" (the module docstring says which; per shape for T <= 4 tokens
              per request).
        stream: launch on this stream instead of the current one (the caller orders it against
              the current stream: grouped.serve_linear forks and joins it).

    Returns `out` (allocated as (Bsz, T, d_out) in x's dtype when not given). Everything is
    checked before the launch; no check reads device memory when `meta` is given.
    """
    if stream is not None and out is None:  # allocated on the side stream, a buffer read on the current one
        raise ValueError("stream= needs out= (allocated on the current stream)")  # could be reused too early
    if (meta is not None and out is not None and idx is None and w is None and split is None and tune is None
            and _FAST_LAUNCH and _fast_call(x, A, B, meta, out, accumulate, path,
                                            None if stream is None else stream.cuda_stream)):
        return out
    if stream is not None:
        with torch.cuda.stream(stream):
            return compose_delta_triton(x, A, B, idx, w, meta=meta, out=out, accumulate=accumulate, split=split,
                                        tune=tune, path=path)
    if meta is not None:
        if idx is not None or w is not None:
            raise ValueError("pass either idx/w or meta, not both")
        idx, w = meta.idx, meta.w
        max_slot = meta.max_slot
    else:
        if idx is None:
            raise ValueError("idx (or meta) is required")
        max_slot = None
    if x.dim() != 3 or A.dim() != 3 or B.dim() != 3:
        raise ValueError(f"x (Bsz, T, d_in), A (N, R, d_in), B (N, d_out, R) expected; got "
                         f"{tuple(x.shape)}, {tuple(A.shape)}, {tuple(B.shape)}")
    bsz, T, d_in = x.shape
    N, R, a_d_in = A.shape
    if a_d_in != d_in or B.shape[0] != N or B.shape[2] != R:
        raise ValueError(f"x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)} disagree on d_in, N or R")
    d_out = B.shape[1]
    if idx.dim() != 2 or idx.shape[0] != bsz:
        raise ValueError(f"idx must be (Bsz={bsz}, K), got {tuple(idx.shape)}")
    K = idx.shape[1]
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"idx must be int32 or int64, got {idx.dtype}")
    if w is None:
        w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
    if tuple(w.shape) != tuple(idx.shape) or not w.is_floating_point():
        raise ValueError(f"w must be a float tensor of idx's shape {tuple(idx.shape)}, got {w.dtype} {tuple(w.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be one of {_FLOATS}, got {x.dtype}")
    if A.dtype != x.dtype or B.dtype != x.dtype:
        raise TypeError(f"the pool must be in x's dtype {x.dtype}; got A {A.dtype}, B {B.dtype}")
    if not _rows_contiguous(A):
        raise ValueError("the pool tensor A must be contiguous (N, R, d_in), or a rank slice of a contiguous "
                         f"(N, R', d_in) (strides (*, d_in, 1)); got strides {A.stride()}")
    if not (B.is_contiguous() or B.transpose(1, 2).is_contiguous()):
        raise ValueError("the pool tensor B must be contiguous (N, d_out, R) or the transposed view of a "
                         f"contiguous (N, R, d_out); got strides {B.stride()}")
    dev = x.device
    if not _INTERPRET and dev.type != "cuda":
        raise ValueError(f"compose_delta_triton needs CUDA tensors, got x on {dev}")
    for name, t in (("A", A), ("B", B), ("idx", idx), ("w", w)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {dev}")
    max_slot = _check_slots(idx, N, max_slot)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out=")
        out = torch.empty((bsz, T, d_out), dtype=x.dtype, device=dev)
    elif tuple(out.shape) != (bsz, T, d_out) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(bsz, T, d_out)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    if out.device != dev:
        raise ValueError(f"out is on {out.device} but x is on {dev}")
    if path not in ("auto", "fused", "wide", "stream"):
        raise ValueError(f"path must be 'auto', 'fused', 'wide' or 'stream', got {path!r}")
    if bsz == 0 or T == 0 or d_out == 0:
        return out
    if K == 0 or R == 0 or N == 0:
        if not accumulate:
            out.zero_()
        return out
    x_given = x
    x = x if x.is_contiguous() else x.contiguous()
    idx = idx if idx.is_contiguous() else idx.contiguous()
    w = w if w.is_contiguous() else w.contiguous()

    dev_index = dev.index if dev.index is not None else (torch.cuda.current_device() if dev.type == "cuda" else 0)
    if dev.type == "cuda" and dev_index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            if meta is not None:
                return compose_delta_triton(x, A, B, meta=meta, out=out, accumulate=accumulate, split=split,
                                            tune=tune, path=path)
            return compose_delta_triton(x, A, B, idx, w, out=out, accumulate=accumulate, split=split, tune=tune,
                                        path=path)
    n_sm = _num_sms(dev_index) if dev.type == "cuda" else 8
    capturing = path == "auto" and dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    path_given = path
    sbN, sbO, sbR = B.stride()
    saN = A.stride(0)
    S = K * R
    rows = bsz * T

    if T <= _GEMV_MAX_T:
        if path == "stream":
            path = "wide"  # GEMV sizes: the two-launch GEMV plan
        knobs = gemv_knobs()
        gp = _plan_gemv(rows, K, R, d_in, d_out, n_sm, split, knobs)
        if path == "auto":
            path = "fused" if gp.fused else "wide"
        in_capture = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
        cache = (_FAST_LAUNCH and meta is not None and split is None and tune is None and x is x_given
                 and not any(p % 16 for p in (x.data_ptr(), A.data_ptr(), B.data_ptr(), idx.data_ptr(),
                                              w.data_ptr(), out.data_ptr())))
        key = (x.shape, x.dtype, A.shape, A.stride(), A.dtype, B.shape, B.stride(), B.dtype, out.shape, out.dtype,
               idx.shape, accumulate, path_given, capturing,
               x.get_device(), A.get_device(), B.get_device(), out.get_device(), idx.get_device(),
               knobs) if cache else None
        if path == "wide":
            n_hp = rows * gp.n_sc * gp.split_d * gp.block_s
            if in_capture or dev.type != "cuda":  # a graph gets scratch of its own
                hp = torch.empty(n_hp, dtype=torch.float32, device=dev)
            else:
                hp = _scratch(n_hp, dev_index, torch._C._cuda_getCurrentRawStream(dev_index))
            a1 = (x, A, idx, w, hp, T, d_in, K, gp.d_per, saN)
            c1 = dict(R=R, BLOCK_S=gp.block_s, BLOCK_D=gp.block_dw)
            r1 = _launch(_gemv_shrink_kernel, (rows, gp.split_d, gp.n_sc), a1, c1, gp.warps_s, 2, dev_index)
            a2 = (hp, B, idx, out, T, d_out, K, gp.split_d, sbN, sbO, sbR, gp.n_per_w)
            c2 = dict(R=R, BLOCK_S=gp.block_s, BLOCK_N=gp.block_nw, ONE_CHUNK=gp.n_sc == 1, ACCUMULATE=accumulate,
                      SPLIT_PAD=gp.split_pad)
            r2 = _launch(_gemv_expand_kernel, (rows, gp.groups, 1), a2, c2, gp.warps_e, 2, dev_index)
            if cache and r1 and r2 and not in_capture:
                _remember(key, _Call(dev_index, n_hp, (
                    (r1, (rows, gp.split_d, gp.n_sc), (0, 1, 3, 4, 6), a1[5:] + tuple(c1.values())),
                    (r2, (rows, gp.groups, 1), (6, 2, 3, 5), a2[4:] + tuple(c2.values())))))
            return out
        if gp.n_sc == 1:
            args = (x, A, B, idx, w, out, T, d_in, d_out, K, sbN, sbO, sbR, gp.n_per_f, saN)
            consts = dict(R=R, BLOCK_S=gp.block_s, BLOCK_D=gp.block_d, BLOCK_N=gp.block_n, ACCUMULATE=accumulate)
            rec = _launch(_gemv_fused_kernel, (rows, gp.p, 1), args, consts, gp.warps, 2, dev_index)
            if cache and rec:
                _remember(key, _Call(dev_index, 0, (
                    (rec, (rows, gp.p, 1), (0, 1, 2, 3, 4, 5), args[6:] + tuple(consts.values())),)))
            return out
        # more stacked ranks than registers hold: the tile-fused kernel with scratch (one launch)

    if path == "auto":
        large = _large_call(bsz, T, n_sm, x.element_size())
        if large and _stream_fits(T, S):
            path = "stream"
        else:
            path = "fused" if large else ("wide" if rows > _FUSED_MAX_TOKENS or capturing else "fused")
    if path == "stream" and S > _STREAM_S[1]:
        path = "fused"  # more stacked ranks than one tile holds: the tile-fused plan (h in scratch)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    if path == "stream":
        (block_t, block_s, block_d, warps_s, stages_s, block_te, block_n, warps_e, stages_e, t_per, h_once,
         groups) = _plan_stream(bsz, T, K, R, d_out, n_sm, x.element_size())
        pdl = _STREAM_PDL
        if tune:
            block_t, block_d, block_te, block_n = _tiles(tune, _STREAM_TUNE_KEYS, "stream", block_t=block_t,
                                                         block_d=block_d, block_te=block_te, block_n=block_n)
            warps_s, stages_s = tune.get("warps_s", warps_s), tune.get("stages_s", stages_s)
            warps_e, stages_e = tune.get("warps_e", warps_e), tune.get("stages_e", stages_e)
            t_per, h_once, groups = tune.get("t_per", t_per), bool(tune.get("h_once", h_once)), tune.get("groups", groups)
            pdl = bool(tune.get("pdl", pdl))
        pdl = pdl and HAS_PDL and not _INTERPRET and dev.type == "cuda"
        h = torch.empty(bsz * T * block_s, dtype=x.dtype, device=dev)
        _launch(_stream_shrink_kernel, (bsz * triton.cdiv(T, block_t), 1, 1), (x, A, idx, w, h, T, d_in, K, saN),
                dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, PREC=prec, PDL=pdl), warps_s, stages_s,
                dev_index)
        consts = dict(R=R, BLOCK_T=block_te, BLOCK_S=block_s, BLOCK_N=block_n, ACCUMULATE=accumulate, PREC=prec,
                      PDL=pdl)
        if h_once:
            n_nb = triton.cdiv(d_out, block_n)
            n_per = triton.cdiv(n_nb, max(1, min(int(groups), n_nb))) * block_n
            _launch(_stream_expand_h_kernel, (bsz * triton.cdiv(T, block_te), triton.cdiv(d_out, n_per), 1),
                    (h, B, idx, out, T, d_out, K, sbN, sbO, sbR, n_per), consts, warps_e, stages_e, dev_index, pdl=pdl)
        else:
            t_per = triton.cdiv(max(1, t_per), block_te) * block_te
            _launch(_stream_expand_kernel, (bsz * triton.cdiv(T, t_per), triton.cdiv(d_out, block_n), 1),
                    (h, B, idx, out, T, d_out, K, sbN, sbO, sbR, t_per), consts, warps_e, stages_e, dev_index, pdl=pdl)
        return out
    if path == "wide":
        (block_t, block_s, n_sc, block_d, split_d, d_per, n_per, groups, block_n, warps_s,
         warps_e) = _plan_wide(bsz, T, K, R, d_in, d_out, n_sm, x.element_size())
        stages_s, stages_e = 3, 2
        if tune:
            (block_t, block_s, n_sc, block_d, split_d, d_per, n_per, groups, block_n, warps_s, warps_e, stages_s,
             stages_e) = _tune_wide(tune, S, d_in, d_out, block_t, block_s, block_d, split_d, groups, block_n,
                                    warps_s, warps_e, stages_s, stages_e)
        grid0 = bsz * triton.cdiv(T, block_t)
        hp = torch.empty(grid0 * n_sc * split_d * block_t * block_s, dtype=torch.float32, device=dev)
        _launch(_shrink_partial_kernel, (grid0, split_d, n_sc), (x, A, idx, w, hp, T, d_in, K, d_per, saN),
                dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, PREC=prec), warps_s, stages_s,
                dev_index)
        _launch(_expand_partial_kernel, (grid0, groups, 1),
                (hp, B, idx, out, T, d_out, K, split_d, sbN, sbO, sbR, n_per),
                dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_N=block_n, ONE_CHUNK=n_sc == 1,
                     ACCUMULATE=accumulate, PREC=prec), warps_e, stages_e, dev_index)
        return out

    block_t, block_s, block_d, block_n, single, n_split, num_warps, num_stages = _plan(
        bsz, T, K, R, d_out, n_sm, split, x.element_size())
    if tune:
        block_t, block_d, block_n = _tiles(tune, _FUSED_TUNE_KEYS, "tile-fused", block_t=block_t, block_d=block_d,
                                           block_n=block_n)
        num_warps = tune.get("num_warps", num_warps)
        num_stages = tune.get("num_stages", num_stages)
        if split is None and "split" in tune:
            n_split = max(1, min(int(tune["split"]), triton.cdiv(d_out, block_n)))
        elif split is None and "block_t" in tune:
            n_split = max(1, min(n_sm // max(1, bsz * triton.cdiv(T, block_t)), triton.cdiv(d_out, block_n)))
    grid0 = bsz * triton.cdiv(T, block_t)
    if single:
        h = out  # unused by the kernel in this mode
    else:
        n_chunks = triton.cdiv(S, block_s)
        h = torch.empty(grid0 * n_split * n_chunks * block_t * block_s, dtype=torch.float32, device=dev)
    _launch(_compose_kernel, (grid0, n_split, 1), (x, A, B, idx, w, out, h, T, d_in, d_out, K, sbN, sbO, sbR, saN),
            dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, BLOCK_N=block_n,
                 SINGLE=single, ACCUMULATE=accumulate, PREC=prec),
            num_warps, num_stages, dev_index)
    return out


__all__ = ["ComposeMeta", "compose_delta_triton", "gemv_knobs", "set_gemv_knobs"]
