"""Triton kernel for batched low-rank composition: every request its own atom set, one launch.

This is the fast GPU path behind `compiler.compose.compose_delta`; `reference.py` beside it
defines the semantics and stays the oracle. One fused kernel does the shrink
(x -> the request's stacked ranks h = w * (x A^T), kept on chip) and the expand
(h -> B h, written or added into the output) for all requests of a batch in a single
launch. It never writes the pool or the base weights, never synchronizes with the host when
given a `ComposeMeta`, and allocates only its output (and, for very many stacked ranks, a
small scratch buffer), so a decode step that calls it can be captured in a CUDA graph.

Importing this module raises ImportError when Triton is missing; the dispatcher relies on it.

Layout of one launch (grid = (Bsz * ceil(T / BLOCK_T), SPLIT)):
  program (b, t-block, split) gathers the A rows of request b's atoms (K atoms x R pool rank
  = S stacked rows, padding slots masked to zero), computes h = x_tile @ A_b^T scaled by w,
  then for its share of d_out computes h @ B_b^T and stores (or accumulates) the tile.
  SPLIT > 1 only when the batch is too small to fill the GPU (decode): each split program
  repeats the shrink for its request (from L2) and handles 1/SPLIT of d_out.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Stacked ranks (K * R) up to this many stay in registers; above it, h goes through a
# per-program scratch buffer in global memory (still one launch, no cross-program sync).
_S_REGISTERS = 128
_S_CHUNK = 64


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
def _plan(bsz: int, T: int, K: int, R: int, d_out: int, n_sm: int, split: int | None):
    """Tile sizes and grid for one call; pure function of the shapes, cached."""
    S = K * R
    block_t = 16 if T <= 16 else (32 if T <= 32 else 64)
    single = S <= _S_REGISTERS
    block_s = _pow2_at_least(S, 16) if single else _S_CHUNK
    # about 16 KB of operands per pipeline stage
    block_d = min(256, max(64, _pow2_at_most(8192 // (block_t + block_s))))
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
    x_rows, t_mask, a_ptr, idx_row, w_row, s0, S, d_in,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """h (BLOCK_T, BLOCK_S) fp32 = w * x_tile @ A_rows^T for stacked rows s0 .. s0 + BLOCK_S."""
    offs_s = s0 + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    k = offs_s // R
    j = offs_s % R
    slot = tl.load(idx_row + k, mask=s_mask, other=-1)
    valid = s_mask & (slot >= 0)
    wk = tl.load(w_row + k, mask=valid, other=0.0).to(tl.float32)
    a_rows = a_ptr + (tl.maximum(slot, 0).to(tl.int64) * R + j) * d_in
    acc = tl.zeros((BLOCK_T, BLOCK_S), dtype=tl.float32)
    for d0 in range(0, d_in, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < d_in
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


@triton.jit
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
        h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, 0, S, d_in, R, BLOCK_T, BLOCK_S, BLOCK_D, PREC)
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
            h = _shrink_chunk(x_rows, t_mask, a_ptr, idx_row, w_row, c * BLOCK_S, S, d_in,
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


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
        split: override of the d_out split per request (benchmarks, tuning).

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

    n_sm = _num_sms(dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else 8
    block_t, block_s, block_d, block_n, single, n_split, num_warps = _plan(bsz, T, K, R, d_out, n_sm, split)
    grid0 = bsz * triton.cdiv(T, block_t)
    if single:
        h = out  # unused by the kernel in this mode
    else:
        n_chunks = triton.cdiv(K * R, block_s)
        h = torch.empty(grid0 * n_split * n_chunks * block_t * block_s, dtype=torch.float32, device=dev)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    _compose_kernel[(grid0, n_split)](
        x, A, B, idx, w, out, h,
        T, d_in, d_out, K,
        R=R, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_D=block_d, BLOCK_N=block_n,
        SINGLE=single, ACCUMULATE=accumulate, PREC=prec,
        num_warps=num_warps, num_stages=3,
    )
    return out


__all__ = ["ComposeMeta", "compose_delta_triton"]
