"""Triton kernel for batched low-rank composition: every request its own atom set, one launch.

This is the fast GPU path behind `compiler.compose.compose_delta`; `reference.py` beside it
defines the semantics and stays the oracle. One fused kernel does the shrink
(x -> the request's stacked ranks h = w * (x A^T), kept on chip) and the expand
(h -> B h, written or added into the output) for all requests of a batch in a single
launch. It never writes the pool or the base weights, never synchronizes with the host when
given a `ComposeMeta`, and allocates only its output (and, for very many stacked ranks, a
small scratch buffer), so a decode step that calls it can be captured in a CUDA graph.

Importing this module raises ImportError when Triton is missing; the dispatcher relies on it.

Two plans, one semantics (S = K atoms x R pool rank stacked rows per request):
  fused  one launch, grid (Bsz * ceil(T / BLOCK_T), SPLIT): program (b, t-block, split)
         gathers request b's A rows, computes h = w * x_tile A_b^T over all of d_in in
         registers, then h B_b^T for its 1/SPLIT share of d_out. Cheapest to launch; its
         serial loops make it latency-bound. Used for small eager calls (decode), where the
         host's launch cost, not the GPU, sets the pace.
  wide   two launches: shrink partials over (request, t-block, d_in slice, S chunk), then
         expand over (request, t-block, d_out tile) summing the partials. Every program
         does about one round of loads, so the GPU is filled and the step stays near its
         memory bound. Used for large calls and whenever a CUDA graph is being captured
         (launch cost is then paid once, at capture).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton import knobs

# Stacked ranks (K * R) up to this many stay in registers; above it, h goes through a
# per-program scratch buffer in global memory (still one launch, no cross-program sync).
_S_REGISTERS = 128
_S_CHUNK = 64
# Eager calls up to this many tokens take the one-launch fused plan (host launch cost rules there).
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


def _slot_range(idx: torch.Tensor) -> tuple[int, int]:
    """(min, max) of idx with one host sync; (-1, -1) when empty."""
    if idx.numel() == 0:
        return -1, -1
    lo, hi = torch.aminmax(idx)
    lo_hi = torch.stack([lo, hi]).tolist()
    return int(lo_hi[0]), int(lo_hi[1])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def _pow2_at_most(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


@functools.lru_cache(maxsize=4096)
def _plan(bsz: int, T: int, K: int, R: int, d_out: int, n_sm: int, split: int | None, esize: int):
    """Tile sizes and grid for one call; pure function of the shapes, cached."""
    S = K * R
    block_t = 16 if T <= 16 else (32 if T <= 32 else 64)
    single = S <= _S_REGISTERS
    block_s = _pow2_at_least(S, 16) if single else _S_CHUNK
    # about 32 KB of operands per pipeline stage (x tile + gathered A rows)
    block_d = min(512, max(64, _pow2_at_most((32768 // esize) // (block_t + block_s))))
    block_n = min(128, max(64, _pow2_at_most(8192 // (block_t + block_s))))
    n_tb = triton.cdiv(T, block_t)
    n_prog = bsz * n_tb
    n_nb = triton.cdiv(d_out, block_n)
    if split is None:
        # one program per SM when the batch alone cannot fill the GPU (decode)
        split = max(1, n_sm // max(1, n_prog))
    split = max(1, min(split, n_nb))
    num_warps = 4 if block_t * block_s <= 2048 else 8
    return block_t, block_s, block_d, block_n, single, split, num_warps


@triton.jit
def _shrink_chunk(
    x_rows, t_mask, a_ptr, idx_row, w_row, s0, S, d_in, d_lo, d_hi,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """h (BLOCK_T, BLOCK_S) fp32 = w * x_tile[:, d_lo:d_hi] @ A_rows[:, d_lo:d_hi]^T, rows s0 .. s0 + BLOCK_S."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    k = offs_s // R
    j = offs_s % R
    slot = tl.load(idx_row + k, mask=s_mask, other=-1)
    valid = s_mask & (slot >= 0)
    wk = tl.load(w_row + k, mask=valid, other=0.0).to(tl.float32)
    a_rows = a_ptr + (tl.maximum(slot, 0).to(tl.int64) * R + j) * d_in
    acc = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < d_hi
        xt = tl.load(x_rows[:, None] + offs_d[None, :], mask=t_mask[:, None] & d_mask[None, :], other=0.0)
        at = tl.load(a_rows[:, None] + offs_d[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(xt, tl.trans(at), acc, input_precision=PREC)
    return acc * wk[None, :]


@triton.jit
def _expand_tile(
    b_ptr, idx_row, s0, S, offs_n, n_mask, d_out,
    R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """B^T tile (BLOCK_S, BLOCK_N): row s = B[slot_s, offs_n, j_s], zero for padding slots."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    k = offs_s // R
    j = offs_s % R
    slot = tl.load(idx_row + k, mask=s_mask, other=-1)
    valid = s_mask & (slot >= 0)
    # B is (N, d_out, R): element (slot, n, j) at (slot * d_out + n) * R + j
    b_rows = b_ptr + tl.maximum(slot, 0).to(tl.int64) * d_out * R + j
    return tl.load(b_rows[:, None] + offs_n[None, :] * R, mask=valid[:, None] & n_mask[None, :], other=0.0)


@triton.jit(do_not_specialize=["T", "K"])  # token and atom counts change per batch: no recompiles
def _compose_kernel(
    x_ptr, a_ptr, b_ptr, idx_ptr, w_ptr, out_ptr, h_ptr,
    T, d_in, d_out, K,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, ACCUMULATE: tl.constexpr, PREC: tl.constexpr,
):
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
        h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, 0, S, d_in, 0, d_in,
                          R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
        hq = h.to(x_ptr.dtype.element_ty)
        for nb in range(nb_lo, nb_hi):
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            bt = _expand_tile(b_ptr, idx_row, 0, S, offs_n, n_mask, d_out, R, BLOCK_S)
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
            h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, c * BLOCK_S, S, d_in, 0, d_in,
                              R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
            tl.store(h_base + c * (BLOCK_T * BLOCK_S) + tile, h)
        tl.debug_barrier()  # the scratch tiles are re-read by other threads of this program
        for nb in range(nb_lo, nb_hi):
            offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
            for c in range(0, n_chunks):
                hq = tl.load(h_base + c * (BLOCK_T * BLOCK_S) + tile).to(x_ptr.dtype.element_ty)
                bt = _expand_tile(b_ptr, idx_row, c * BLOCK_S, S, offs_n, n_mask, d_out, R, BLOCK_S)
                acc = tl.dot(hq, bt, acc, input_precision=PREC)
            o_ptrs = out_rows[:, None] + offs_n[None, :]
            o_mask = t_mask[:, None] & n_mask[None, :]
            if ACCUMULATE:
                acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
            tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["T", "K"])
def _shrink_partial_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, hp_ptr,
    T, d_in, K, d_per,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT_D: tl.constexpr, PREC: tl.constexpr,
):
    # grid (Bsz * n_tb, SPLIT_D, n_sc): partial h of one d_in slice and one chunk of stacked rows
    pid = tl.program_id(0)
    sd = tl.program_id(1)
    sc = tl.program_id(2)
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
                      R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
    # hp layout (pid, sc, sd, t, s): the expand reads the SPLIT_D partials of a chunk as one tile
    base = hp_ptr + ((pid * n_sc + sc) * SPLIT_D + sd).to(tl.int64) * (BLOCK_T * BLOCK_S)
    tile = tl.arange(0, BLOCK_T)[:, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
    tl.store(base + tile, h, mask=t_mask[:, None])


@triton.jit(do_not_specialize=["T", "K"])
def _expand_partial_kernel(
    hp_ptr, b_ptr, idx_ptr, out_ptr,
    T, d_out, K,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_D: tl.constexpr, ACCUMULATE: tl.constexpr, PREC: tl.constexpr,
):
    # grid (Bsz * n_tb, ceil(d_out / BLOCK_N)): one output tile, summing the shrink partials
    pid = tl.program_id(0)
    nb = tl.program_id(1)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = pid // n_tb
    tb = pid % n_tb
    S = K * R
    n_sc = tl.cdiv(S, BLOCK_S)
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_out
    idx_row = idx_ptr + b * K
    part = (tl.arange(0, SPLIT_D)[:, None, None] * (BLOCK_T * BLOCK_S)
            + tl.arange(0, BLOCK_T)[None, :, None] * BLOCK_S + tl.arange(0, BLOCK_S)[None, None, :])
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for sc in range(0, n_sc):
        base = hp_ptr + ((pid * n_sc + sc) * SPLIT_D).to(tl.int64) * (BLOCK_T * BLOCK_S)
        h = tl.sum(tl.load(base + part, mask=t_mask[None, :, None], other=0.0), axis=0)
        bt = _expand_tile(b_ptr, idx_row, sc * BLOCK_S, S, offs_n, n_mask, d_out, R, BLOCK_S)
        acc = tl.dot(h.to(b_ptr.dtype.element_ty), bt, acc, input_precision=PREC)
    o_ptrs = out_ptr + (b * T + offs_t).to(tl.int64)[:, None] * d_out + offs_n[None, :]
    o_mask = t_mask[:, None] & n_mask[None, :]
    if ACCUMULATE:
        acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


@functools.lru_cache(maxsize=4096)
def _plan_wide(bsz: int, T: int, K: int, R: int, d_in: int, d_out: int, n_sm: int, esize: int):
    """Tiles and grids of the two-pass plan; pure function of the shapes, cached."""
    S = K * R
    block_t = 16 if T <= 16 else (32 if T <= 32 else 64)
    block_s = min(64, _pow2_at_least(S, 16))
    n_sc = triton.cdiv(S, block_s)
    # ~16 KB per stage: several shrink programs share an SM
    block_d = min(256, max(64, _pow2_at_most((16384 // esize) // (block_t + block_s))))
    n_prog = bsz * triton.cdiv(T, block_t)
    n_db = triton.cdiv(d_in, block_d)
    # fill the GPU with shrink programs: ~4 per SM for decode-sized tiles, ~2 for big ones
    want = triton.cdiv((4 if block_t == 16 else 2) * n_sm, n_prog * n_sc)
    split_d = max(1, min(_pow2_at_most(max(1, want)), _pow2_at_most(n_db), 16))
    # the expand holds all partials of a chunk at once: keep that tile at <= 4096 floats
    split_d = max(1, min(split_d, _pow2_at_most(max(1, 4096 // (block_t * block_s)))))
    d_per = triton.cdiv(n_db, split_d) * block_d
    block_n = 128
    warps_expand = 4 if block_t <= 32 else 8
    return block_t, block_s, n_sc, block_d, split_d, d_per, block_n, warps_expand


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_FAST_LAUNCH = os.environ.get("DOC2ATOM_TRITON_FAST_LAUNCH", "1") == "1" and not _INTERPRET
_compiled: dict = {}


def _launch(kernel, grid, args: tuple, consts: dict, num_warps: int, num_stages: int, device_index: int) -> None:
    """Launch `kernel`; after the first launch of a specialization, straight through its compiled launcher.

    Triton's own per-call dispatch (binding, specialization, cache key) costs tens of
    microseconds on a slow host, paid 224 times per decode step of an 8B model. The key here
    is at least as fine as Triton's specialization (dtype and 16-byte alignment of every
    tensor, exact value of every integer), so a hit runs exactly the kernel Triton would pick.
    Set DOC2ATOM_TRITON_FAST_LAUNCH=0 to always go through Triton.
    """
    if not _FAST_LAUNCH or knobs.runtime.launch_enter_hook is not None:
        kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        return
    key = (kernel, num_warps, num_stages, tuple(consts.values()),
           tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args))
    ck = _compiled.get(key)
    if ck is None:
        ck = kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        usable = (hasattr(ck, "function") and hasattr(ck, "packed_metadata")
                  and list(kernel.arg_names) == list(kernel.arg_names[: len(args)]) + list(consts))
        if len(_compiled) > 8192:
            _compiled.clear()
        _compiled[key] = ck if usable else False
        return
    if ck is False:
        kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        return
    stream = torch._C._cuda_getCurrentRawStream(device_index)
    ck.run(grid[0], grid[1], grid[2], stream, ck.function, ck.packed_metadata, None, None,
           knobs.runtime.launch_exit_hook, *args, *consts.values())


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
) -> torch.Tensor:
    """Semantics: out[b, t] (+)= sum_k w[b, k] * B[idx[b, k]] @ (A[idx[b, k]] @ x[b, t]), idx < 0 adds 0.

    Args:
        x:    (Bsz, T, d_in) fp32/fp16/bf16 activations, row b is request b. Not written.
              Made contiguous if it is not (a copy).
        A:    (N, R, d_in) shrink matrices of the pool, x's dtype, contiguous. Not written.
        B:    (N, d_out, R) expand matrices of the pool, x's dtype, contiguous. Not written.
        idx:  (Bsz, K) int32/int64 atom slots per request, -1 = padding, each < N. Not written.
              Checked here with one host sync; pass `meta` instead to skip the sync.
        w:    (Bsz, K) float weights per (request, atom); None = all ones. Not written.
        meta: ComposeMeta holding idx and w, validated once per forward; replaces idx and w.
        out:  optional (Bsz, T, d_out) contiguous buffer in x's dtype, WRITTEN IN PLACE:
              every element is overwritten with the delta, or, with accumulate=True,
              out += delta (e.g. out = the base layer's output y).
        split, tune: overrides of the fused plan (benchmarks, tuning): the d_out split per
              request; any of block_t, block_d, block_n, num_warps, num_stages.
        path: "fused" (one launch), "wide" (two launches, fills the GPU) or "auto": wide for
              more than 256 tokens or while a CUDA graph is being captured, else fused.

    Returns `out` (allocated as (Bsz, T, d_out) in x's dtype when not given). Everything is
    checked before the launch; no check reads device memory when `meta` is given.
    """
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
    if not (A.is_contiguous() and B.is_contiguous()):
        raise ValueError("the pool tensors A and B must be contiguous")
    dev = x.device
    if not _INTERPRET and dev.type != "cuda":
        raise ValueError(f"compose_delta_triton needs CUDA tensors, got x on {dev}")
    for name, t in (("A", A), ("B", B), ("idx", idx), ("w", w)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {dev}")
    if max_slot is None:
        lo, max_slot = _slot_range(idx)
        if lo < -1:
            raise IndexError(f"atom slot out of range: idx min is {lo}, only -1 (padding) may be negative")
    if max_slot >= N:
        raise IndexError(f"atom slot out of range: idx max is {max_slot} but the pool holds {N} slots")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out=")
        out = torch.empty((bsz, T, d_out), dtype=x.dtype, device=dev)
    elif tuple(out.shape) != (bsz, T, d_out) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(bsz, T, d_out)}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    if bsz == 0 or T == 0 or d_out == 0:
        return out
    if K == 0 or R == 0 or N == 0:
        if not accumulate:
            out.zero_()
        return out
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
    if path == "auto":
        big = bsz * T > _FUSED_MAX_TOKENS
        path = "wide" if big or (dev.type == "cuda" and torch.cuda.is_current_stream_capturing()) else "fused"
    elif path not in ("fused", "wide"):
        raise ValueError(f"path must be 'auto', 'fused' or 'wide', got {path!r}")
    n_sm = _num_sms(dev_index) if dev.type == "cuda" else 8
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    if path == "wide":
        block_t, block_s, n_sc, block_d, split_d, d_per, block_n, warps_e = _plan_wide(bsz, T, K, R, d_in, d_out, n_sm, x.element_size())
        grid0 = bsz * triton.cdiv(T, block_t)
        hp = torch.empty(grid0 * n_sc * split_d * block_t * block_s, dtype=torch.float32, device=dev)
        _launch(_shrink_partial_kernel, (grid0, split_d, n_sc), (x, A, idx, w, hp, T, d_in, K, d_per),
                dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, SPLIT_D=split_d, PREC=prec),
                4, 2, dev_index)
        _launch(_expand_partial_kernel, (grid0, triton.cdiv(d_out, block_n)), (hp, B, idx, out, T, d_out, K),
                dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_N=block_n, SPLIT_D=split_d,
                     ACCUMULATE=accumulate, PREC=prec),
                warps_e, 2, dev_index)
        return out

    block_t, block_s, block_d, block_n, single, n_split, num_warps = _plan(bsz, T, K, R, d_out, n_sm, split, x.element_size())
    num_stages = 3
    if tune:
        block_t = tune.get("block_t", block_t)
        block_d = tune.get("block_d", block_d)
        block_n = tune.get("block_n", block_n)
        num_warps = tune.get("num_warps", num_warps)
        num_stages = tune.get("num_stages", num_stages)
        if split is None and "block_t" in tune:
            n_split = max(1, min(n_sm // max(1, bsz * triton.cdiv(T, block_t)), triton.cdiv(d_out, block_n)))
    grid0 = bsz * triton.cdiv(T, block_t)
    if single:
        h = out  # unused by the kernel in this mode
    else:
        n_chunks = triton.cdiv(K * R, block_s)
        h = torch.empty(grid0 * n_split * n_chunks * block_t * block_s, dtype=torch.float32, device=dev)
    _launch(_compose_kernel, (grid0, n_split), (x, A, B, idx, w, out, h, T, d_in, d_out, K),
            dict(R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, BLOCK_N=block_n,
                 SINGLE=single, ACCUMULATE=accumulate, PREC=prec),
            num_warps, num_stages, dev_index)
    return out


__all__ = ["ComposeMeta", "compose_delta_triton"]
