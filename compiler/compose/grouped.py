"""One delta launch for a group of projections that read the same input (q/k/v of a layer, gate/up).

`compose_group_triton(x, A, [B_0, B_1, ...], meta=...)` computes every member's delta with the
kernels of `triton_ops` and a grouped expand. The group's A is the members' shrink matrices
concatenated along the rank axis per atom, (N, r_0 + r_1 + ..., d_in) (what AtomPool stores for
a group), so the shrink reads x and the gathered atoms once for all members: it is the plain
GEMV shrink with more stacked ranks. Member m owns ranks [off_m, off_m + r_m) of every atom
and its own B_m (N, d_out_m, r_m); its delta is

    out_m[b, t] (+)= sum_k w[b, k] * B_m[idx[b, k]] @ (A[idx[b, k], off_m:off_m + r_m] @ x[b, t]).

Plans (T <= 4 tokens per request; larger calls run one ungrouped call per member on the rank
slices of A, which the ungrouped kernels read through A's atom stride):
  wide   two launches whatever the group size: the shrink over (row, d_in slice, stacked chunk)
         into fp32 partials, then one expand over (row, output tile of any member); an expand
         program gathers its member's ranks from the partials, so each output segment reads
         only its own member's ranks.
  fused  one launch: the members' fused GEMV programs side by side in one grid (each computes
         its own member's h from its rank slice; x is re-read from L2 per member).
"auto" takes fused when every member's own plan would (triton_ops._plan_gemv), else wide.
Expand and fused launches carry at most three members each; larger groups take several
expand launches over the same partials.
"""

from __future__ import annotations

import functools
import os
from collections import namedtuple
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from compiler.compose import fused_linear as _fl
from compiler.compose import triton_ops as _ops
from compiler.compose.triton_ops import (
    ComposeMeta,
    _check_slots,
    _expand_tiles,
    _gemv_fused_row,
    _gemv_out,
    _gemv_shrink_kernel,
    _launch,
    _num_sms,
    _plan_gemv,
    _pow2_at_least,
    _rows_contiguous,
    _slots_of,
    _sum_partials_at,
    compose_delta_triton,
    gemv_knobs,
)

_MAX_MEMBERS = 3  # members per expand / fused launch
# the plan a call without an explicit path takes (AtomLinear's grouped path passes none): the
# bench switches it to compare plans; DOC2ATOM_GROUP_PATH sets it for a process
default_path = os.environ.get("DOC2ATOM_GROUP_PATH", "auto")


@triton.jit
def _gather_partials(hp_ptr, row64, s0, S, n_sc, split_d, R: tl.constexpr, OFF: tl.constexpr, RG: tl.constexpr,
                     BLOCK_SG: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT_PAD: tl.constexpr):
    """h of a member's stacked rows s0 .. s0 + BLOCK_S (row s = atom s // R, rank OFF + s % R of the group).

    The shrink wrote the group's partials as hp[row, sc, sd, s_g % BLOCK_SG] with s_g = k * RG + rank."""
    offs = s0 + tl.arange(0, BLOCK_S)
    m = offs < S
    sg = (offs // R) * RG + OFF + offs % R
    ptrs = hp_ptr + ((row64 * n_sc + sg // BLOCK_SG) * split_d) * BLOCK_SG + sg % BLOCK_SG
    return _sum_partials_at(ptrs, m, split_d, BLOCK_SG, SPLIT_PAD)


@triton.jit
def _expand_member(
    hp_ptr, idx_row, row64, gl, K, n_sc, split_d, b_ptr, out_ptr, d_out, sbN, sbO, sbR, n_per,
    R: tl.constexpr, OFF: tl.constexpr, RG: tl.constexpr, BLOCK_SG: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr, ONE_CHUNK: tl.constexpr, ACCUMULATE: tl.constexpr, SPLIT_PAD: tl.constexpr,
):
    """d_out columns [gl * n_per, (gl + 1) * n_per) of one row of one member."""
    S = K * R
    out_row = out_ptr + row64 * d_out
    n_lo = gl * n_per
    n_hi = tl.minimum(n_lo + n_per, d_out)
    if ONE_CHUNK:
        # independent loads together: slots | partials, then B | out
        slot, j, valid = _slots_of(idx_row, 0, S, R, BLOCK_S)
        h = _gather_partials(hp_ptr, row64, 0, S, n_sc, split_d, R, OFF, RG, BLOCK_SG, BLOCK_S, SPLIT_PAD)
        _expand_tiles(b_ptr + slot * sbN + j * sbR, valid, h, out_row, n_lo, n_hi, d_out, sbO, BLOCK_N, ACCUMULATE)
    else:
        n_c = tl.cdiv(S, BLOCK_S)
        for n0 in range(n_lo, n_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < d_out
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for c in range(0, n_c):
                slot, j, valid = _slots_of(idx_row, c * BLOCK_S, S, R, BLOCK_S)
                h = _gather_partials(hp_ptr, row64, c * BLOCK_S, S, n_sc, split_d, R, OFF, RG, BLOCK_SG, BLOCK_S,
                                     SPLIT_PAD)
                acc += _gemv_out(b_ptr, slot, j, valid, h, offs_n, n_mask, sbN, sbO, sbR)
            if ACCUMULATE:
                acc += tl.load(out_row + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            tl.store(out_row + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit(do_not_specialize=["T", "K", "split_d"])
def _gemv_expand_group_kernel(
    hp_ptr, idx_ptr, b0, b1, b2, o0, o1, o2, T, K, split_d,
    d0, d1, d2, sbN0, sbO0, sbR0, sbN1, sbO1, sbR1, sbN2, sbO2, sbR2, np0, np1, np2, g1, g2,
    M: tl.constexpr, RG: tl.constexpr, BLOCK_SG: tl.constexpr, ACCUMULATE: tl.constexpr,
    R0: tl.constexpr, OFF0: tl.constexpr, BS0: tl.constexpr, BN0: tl.constexpr, OC0: tl.constexpr, SP0: tl.constexpr,
    R1: tl.constexpr, OFF1: tl.constexpr, BS1: tl.constexpr, BN1: tl.constexpr, OC1: tl.constexpr, SP1: tl.constexpr,
    R2: tl.constexpr, OFF2: tl.constexpr, BS2: tl.constexpr, BN2: tl.constexpr, OC2: tl.constexpr, SP2: tl.constexpr,
):
    # grid (rows, groups of member 0 | of member 1 | of member 2): g1, g2 = first program of members 1, 2
    row = tl.program_id(0)
    g = tl.program_id(1)
    b = row // T
    row64 = row.to(tl.int64)
    idx_row = idx_ptr + b * K
    n_sc = tl.cdiv(K * RG, BLOCK_SG)
    if M == 1:
        _expand_member(hp_ptr, idx_row, row64, g, K, n_sc, split_d, b0, o0, d0, sbN0, sbO0, sbR0, np0,
                       R0, OFF0, RG, BLOCK_SG, BS0, BN0, OC0, ACCUMULATE, SP0)
    elif M == 2:
        if g < g1:
            _expand_member(hp_ptr, idx_row, row64, g, K, n_sc, split_d, b0, o0, d0, sbN0, sbO0, sbR0, np0,
                           R0, OFF0, RG, BLOCK_SG, BS0, BN0, OC0, ACCUMULATE, SP0)
        else:
            _expand_member(hp_ptr, idx_row, row64, g - g1, K, n_sc, split_d, b1, o1, d1, sbN1, sbO1, sbR1, np1,
                           R1, OFF1, RG, BLOCK_SG, BS1, BN1, OC1, ACCUMULATE, SP1)
    else:
        if g < g1:
            _expand_member(hp_ptr, idx_row, row64, g, K, n_sc, split_d, b0, o0, d0, sbN0, sbO0, sbR0, np0,
                           R0, OFF0, RG, BLOCK_SG, BS0, BN0, OC0, ACCUMULATE, SP0)
        elif g < g2:
            _expand_member(hp_ptr, idx_row, row64, g - g1, K, n_sc, split_d, b1, o1, d1, sbN1, sbO1, sbR1, np1,
                           R1, OFF1, RG, BLOCK_SG, BS1, BN1, OC1, ACCUMULATE, SP1)
        else:
            _expand_member(hp_ptr, idx_row, row64, g - g2, K, n_sc, split_d, b2, o2, d2, sbN2, sbO2, sbR2, np2,
                           R2, OFF2, RG, BLOCK_SG, BS2, BN2, OC2, ACCUMULATE, SP2)


@triton.jit(do_not_specialize=["T", "K"])
def _gemv_fused_group_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, b0, b1, b2, o0, o1, o2, T, d_in, K, saN,
    d0, d1, d2, sbN0, sbO0, sbR0, sbN1, sbO1, sbR1, sbN2, sbO2, sbR2, np0, np1, np2, p1, p2,
    M: tl.constexpr, ACCUMULATE: tl.constexpr,
    R0: tl.constexpr, OFF0: tl.constexpr, BS0: tl.constexpr, BD0: tl.constexpr, BN0: tl.constexpr,
    R1: tl.constexpr, OFF1: tl.constexpr, BS1: tl.constexpr, BD1: tl.constexpr, BN1: tl.constexpr,
    R2: tl.constexpr, OFF2: tl.constexpr, BS2: tl.constexpr, BD2: tl.constexpr, BN2: tl.constexpr,
):
    # grid (rows, shares of member 0 | 1 | 2): each program is a fused GEMV program of its member,
    # reading the member's rank slice of the group's A
    row = tl.program_id(0)
    p = tl.program_id(1)
    if M == 1:
        _gemv_fused_row(x_ptr, a_ptr + OFF0 * d_in, b0, idx_ptr, w_ptr, o0, row, p, T, d_in, d0, K,
                        sbN0, sbO0, sbR0, np0, saN, R0, BS0, BD0, BN0, ACCUMULATE)
    elif M == 2:
        if p < p1:
            _gemv_fused_row(x_ptr, a_ptr + OFF0 * d_in, b0, idx_ptr, w_ptr, o0, row, p, T, d_in, d0, K,
                            sbN0, sbO0, sbR0, np0, saN, R0, BS0, BD0, BN0, ACCUMULATE)
        else:
            _gemv_fused_row(x_ptr, a_ptr + OFF1 * d_in, b1, idx_ptr, w_ptr, o1, row, p - p1, T, d_in, d1, K,
                            sbN1, sbO1, sbR1, np1, saN, R1, BS1, BD1, BN1, ACCUMULATE)
    else:
        if p < p1:
            _gemv_fused_row(x_ptr, a_ptr + OFF0 * d_in, b0, idx_ptr, w_ptr, o0, row, p, T, d_in, d0, K,
                            sbN0, sbO0, sbR0, np0, saN, R0, BS0, BD0, BN0, ACCUMULATE)
        elif p < p2:
            _gemv_fused_row(x_ptr, a_ptr + OFF1 * d_in, b1, idx_ptr, w_ptr, o1, row, p - p1, T, d_in, d1, K,
                            sbN1, sbO1, sbR1, np1, saN, R1, BS1, BD1, BN1, ACCUMULATE)
        else:
            _gemv_fused_row(x_ptr, a_ptr + OFF2 * d_in, b2, idx_ptr, w_ptr, o2, row, p - p2, T, d_in, d2, K,
                            sbN2, sbO2, sbR2, np2, saN, R2, BS2, BD2, BN2, ACCUMULATE)


# ---- host side ------------------------------------------------------------------------------
# a cached call: device, scratch floats, output layout ((elements offset, d_out) per member, total
# elements), launches ((fn, fixed args), grid, indices into the pointer list, other args)
_GroupCall = namedtuple("_GroupCall", "dev n_hp out_layout launches")
_group_calls: dict = {}
_ALIGN = 64  # elements: every member's output starts 128-byte aligned in the shared buffer


def _out_layout(bsz: int, T: int, d_outs: Sequence[int]):
    offs, at = [], 0
    for d in d_outs:
        offs.append((at, d))
        at += -(-bsz * T * d // _ALIGN) * _ALIGN
    return tuple(offs), max(at, 1)


def _alloc_outs(bsz, T, layout, dtype, device) -> list[torch.Tensor]:
    """Fresh outputs from the caching allocator: one buffer, each member a contiguous (bsz, T, d_out) piece."""
    offs, total = layout
    buf = torch.empty(total, dtype=dtype, device=device)
    return [buf.as_strided((bsz, T, d), (T * d, d, 1), o) for o, d in offs]


def _group_key(x, A, Bs, ranks, idx, accumulate, path, capturing, outs_given):
    return (x.shape, x.dtype, A.shape, A.stride(), A.dtype, tuple((B.shape, B.stride(), B.dtype) for B in Bs), ranks,
            idx.shape, accumulate, path, capturing, outs_given, x.get_device(), A.get_device(),
            tuple(B.get_device() for B in Bs), idx.get_device(), gemv_knobs())


def _fast_group_call(x, A, Bs, ranks, meta, outs, accumulate, path, stream=None):
    """Replay the cached launches of a grouped call shaped like an earlier checked one; None = take the full path.

    stream: a raw CUDA stream to launch on instead of the current one."""
    capturing = torch.cuda.is_current_stream_capturing()
    call = _group_calls.get(_group_key(x, A, Bs, ranks, meta.idx, accumulate, path, capturing, outs is not None))
    if call is None or capturing or meta.max_slot >= A.shape[0] or not x.is_contiguous():
        return None
    if torch.cuda.current_device() != call.dev or _ops._hooks_active():
        return None
    if outs is None:
        outs = _alloc_outs(x.shape[0], x.shape[1], call.out_layout, x.dtype, x.device)
    elif not all(o.is_contiguous() and o.get_device() == call.dev for o in outs):
        return None
    ptrs = [x.data_ptr(), A.data_ptr(), meta.idx.data_ptr(), meta.w.data_ptr(), 0]
    ptrs += [B.data_ptr() for B in Bs]
    ptrs += [o.data_ptr() for o in outs]
    bad = 0
    for p in ptrs:
        bad |= p
    if bad & 15:
        return None
    if stream is None:
        stream = torch._C._cuda_getCurrentRawStream(call.dev)
    if call.n_hp:
        ptrs[4] = _ops._scratch(call.n_hp, call.dev, stream).data_ptr()
    for (fn, mid), grid, take, tail in call.launches:
        fn(grid[0], grid[1], grid[2], stream, *mid, *[ptrs[i] for i in take], *tail)
    return outs


def _member_args(ms: list[int], programs: list[int], d_outs: list[int], Bs: list[torch.Tensor],
                 n_per: list[int]) -> tuple[list[int], int, list[int]]:
    """One launch's member layout for the group kernels: the members padded to _MAX_MEMBERS (unused slots
    repeat member ms[0]), the grid's program count (members' programs side by side), and the kernels'
    scalar arguments: d_out per member, B's three strides per member, each member's columns per
    program, then where members 1 and 2 start in the grid."""
    pad = ms + [ms[0]] * (_MAX_MEMBERS - len(ms))
    starts, total = [], 0
    for m in ms:
        starts.append(total)
        total += programs[m]
    starts += [total] * (_MAX_MEMBERS - len(ms))
    scal = [d_outs[m] for m in pad]
    for m in pad:
        scal += list(Bs[m].stride())
    scal += [n_per[m] for m in pad]
    return pad, total, scal + starts[1:3]


def compose_group_triton(
    x: torch.Tensor,
    A: torch.Tensor,
    Bs: Sequence[torch.Tensor],
    idx: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    *,
    meta: ComposeMeta | None = None,
    ranks: Sequence[int] | None = None,
    outs: Sequence[torch.Tensor] | None = None,
    accumulate: bool = False,
    path: str | None = None,
    stream: torch.cuda.Stream | None = None,
) -> list[torch.Tensor]:
    """Deltas of every member of a projection group in one delta launch (two for the wide plan).

    Semantics (off_m = r_0 + ... + r_{m-1}):
        outs[m][b, t] (+)= sum_k w[b, k] * B_m[idx[b, k]] @ (A[idx[b, k], off_m:off_m + r_m] @ x[b, t]),
    idx < 0 adds 0.

    Args:
        x:     (Bsz, T, d_in) activations in fp32/fp16/bf16. Not written (made contiguous if not).
        A:     (N, sum r_m, d_in) the members' shrink matrices concatenated along the rank axis, x's
               dtype, rows contiguous (strides (*, d_in, 1)). Not written.
        Bs:    per member (N, d_out_m, r_m), contiguous or the transposed view of a contiguous
               (N, r_m, d_out_m) (what AtomPool gives). Not written.
        idx, w, meta: as in compose_delta_triton (meta: validated once per forward, no host sync).
        ranks: r_m per member; default each B_m's rank. Must sum to A.shape[1].
        outs:  optional per member contiguous (Bsz, T, d_out_m) buffers in x's dtype, WRITTEN:
               overwritten with the delta, or with accumulate=True, += delta.
        path:  "auto", "wide" or "fused" (module docstring); for T > 4 the per-member tile plans.
               None: the module's `default_path` ("auto" unless changed).
        stream: launch on this stream instead of the current one (the caller orders it against
               the current stream and allocates `outs` beforehand: serve_group does).

    Returns the list of outputs. Without `outs` they are fresh tensors of one new allocation from
    the caching allocator (each member a contiguous piece), never buffers reused across calls.
    """
    if path is None:
        path = default_path
    M = len(Bs)
    if M == 0:
        raise ValueError("a group needs at least one member")
    ranks = tuple(int(B.shape[2]) for B in Bs) if ranks is None else tuple(int(r) for r in ranks)
    if stream is not None and outs is None:  # allocated on the side stream, a buffer read on the current one
        raise ValueError("stream= needs outs= (allocated on the current stream)")  # could be reused too early
    if (meta is not None and idx is None and w is None and _ops._FAST_LAUNCH and x.is_cuda
            and len(ranks) == M and path in ("auto", "wide", "fused")):
        got = _fast_group_call(x, A, Bs, ranks, meta, outs, accumulate, path,
                               None if stream is None else stream.cuda_stream)
        if got is not None:
            return got
    if stream is not None:
        with torch.cuda.stream(stream):
            return _compose_group_triton(x, A, Bs, idx, w, meta=meta, ranks=ranks, outs=outs, accumulate=accumulate,
                                        path=path)
    if meta is not None:
        if idx is not None or w is not None:
            raise ValueError("pass either idx/w or meta, not both")
        idx, w, max_slot = meta.idx, meta.w, meta.max_slot
    else:
        if idx is None:
            raise ValueError("idx (or meta) is required")
        max_slot = None
    if x.dim() != 3 or A.dim() != 3 or any(B.dim() != 3 for B in Bs):
        raise ValueError(f"x (Bsz, T, d_in), A (N, R, d_in), B_m (N, d_out_m, r_m) expected; got "
                         f"{tuple(x.shape)}, {tuple(A.shape)}, {[tuple(B.shape) for B in Bs]}")
    bsz, T, d_in = x.shape
    N, RG, a_d_in = A.shape
    if len(ranks) != M or any(r < 0 for r in ranks) or sum(ranks) != RG:
        raise ValueError(f"ranks {ranks} must give one rank per member and sum to A's {RG}")
    if a_d_in != d_in:
        raise ValueError(f"x has d_in={d_in} but A has {a_d_in}")
    for m, (B, r) in enumerate(zip(Bs, ranks)):
        if B.shape[0] != N or B.shape[2] != r:
            raise ValueError(f"member {m}: B {tuple(B.shape)} must be (N={N}, d_out, r={r})")
        if B.dtype != x.dtype:
            raise TypeError(f"member {m}: B is {B.dtype}, x is {x.dtype}")
        if not (B.is_contiguous() or B.transpose(1, 2).is_contiguous()):
            raise ValueError(f"member {m}: B must be contiguous (N, d_out, r) or the transposed view of a contiguous "
                             f"(N, r, d_out); got strides {B.stride()}")
    if x.dtype not in _ops._FLOATS:
        raise TypeError(f"x must be one of {_ops._FLOATS}, got {x.dtype}")
    if A.dtype != x.dtype:
        raise TypeError(f"A is {A.dtype}, x is {x.dtype}")
    if not _rows_contiguous(A):
        raise ValueError(f"A's rows must be contiguous (strides (*, d_in, 1)); got {A.stride()}")
    if idx.dim() != 2 or idx.shape[0] != bsz or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be an int32/int64 (Bsz={bsz}, K) tensor, got {idx.dtype} {tuple(idx.shape)}")
    K = idx.shape[1]
    if w is None:
        w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
    if tuple(w.shape) != tuple(idx.shape) or not w.is_floating_point():
        raise ValueError(f"w must be a float tensor of idx's shape {tuple(idx.shape)}")
    dev = x.device
    if not _ops._INTERPRET and dev.type != "cuda":
        raise ValueError(f"compose_group_triton needs CUDA tensors, got x on {dev}")
    for name, t in [("A", A), ("idx", idx), ("w", w)] + [(f"B_{m}", B) for m, B in enumerate(Bs)]:
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {dev}")
    max_slot = _check_slots(idx, N, max_slot)
    d_outs = tuple(int(B.shape[1]) for B in Bs)
    layout = _out_layout(bsz, T, d_outs)
    if outs is None:
        if accumulate:
            raise ValueError("accumulate=True needs outs=")
        outs = _alloc_outs(bsz, T, layout, x.dtype, dev)
        outs_given = False
    else:
        outs = list(outs)
        if len(outs) != M:
            raise ValueError(f"outs must hold one tensor per member ({M}), got {len(outs)}")
        for m, (o, d) in enumerate(zip(outs, d_outs)):
            if tuple(o.shape) != (bsz, T, d) or o.dtype != x.dtype or not o.is_contiguous() or o.device != dev:
                raise ValueError(f"outs[{m}] must be a contiguous {x.dtype} tensor of shape {(bsz, T, d)} on {dev}")
        outs_given = True
    if path not in ("auto", "fused", "wide"):
        raise ValueError(f"path must be 'auto', 'fused' or 'wide', got {path!r}")
    if bsz == 0 or T == 0:
        return outs
    if K == 0 or N == 0 or RG == 0:
        if not accumulate:
            for o in outs:
                o.zero_()
        return outs
    x_given = x
    x = x if x.is_contiguous() else x.contiguous()
    idx = idx if idx.is_contiguous() else idx.contiguous()
    w = w if w.is_contiguous() else w.contiguous()
    dev_index = dev.index if dev.index is not None else (torch.cuda.current_device() if dev.type == "cuda" else 0)
    if dev.type == "cuda" and dev_index != torch.cuda.current_device():
        with torch.cuda.device(dev):
            return _compose_group_triton(x, A, Bs, idx, w, ranks=ranks, outs=outs, accumulate=accumulate, path=path)
    offs = [sum(ranks[:m]) for m in range(M)]
    rows = bsz * T
    n_sm = _num_sms(dev_index) if dev.type == "cuda" else 8
    knobs = gemv_knobs()
    member_plans = [_plan_gemv(rows, K, max(r, 1), d_in, max(d, 1), n_sm, None, knobs) for r, d in zip(ranks, d_outs)]
    if T > _ops._GEMV_MAX_T or any(r == 0 or d == 0 for r, d in zip(ranks, d_outs)) or (
            path == "fused" and any(gp.n_sc != 1 for gp in member_plans)):
        # prefill-sized calls (and odd groups): one ungrouped call per member on its rank slice of A
        for m in range(M):
            if d_outs[m] == 0:
                continue
            if ranks[m] == 0:
                if not accumulate:
                    outs[m].zero_()
                continue
            compose_delta_triton(x, A[:, offs[m]:offs[m] + ranks[m]], Bs[m], idx, w, out=outs[m],
                                 accumulate=accumulate, path=path)
        return outs
    path_asked = path
    if path == "auto":
        path = "fused" if all(gp.fused and gp.n_sc == 1 for gp in member_plans) else "wide"
    in_capture = dev.type == "cuda" and torch.cuda.is_current_stream_capturing()
    cache = (_ops._FAST_LAUNCH and meta is not None and x is x_given
             and not any(p % 16 for p in [x.data_ptr(), A.data_ptr(), idx.data_ptr(), w.data_ptr()]
                         + [B.data_ptr() for B in Bs] + [o.data_ptr() for o in outs]))
    # the pointer list of a cached call: x, A, idx, w, hp, B_0 .. B_{M-1}, out_0 .. out_{M-1}
    launches, n_hp, ok = [], 0, True
    chunks = [list(range(c, min(c + _MAX_MEMBERS, M))) for c in range(0, M, _MAX_MEMBERS)]

    if path == "wide":
        gs = _plan_gemv(rows, K, RG, d_in, max(d_outs), n_sm, None, knobs)
        n_hp = rows * gs.n_sc * gs.split_d * gs.block_s
        if in_capture or dev.type != "cuda":  # a graph gets scratch of its own
            hp = torch.empty(n_hp, dtype=torch.float32, device=dev)
        else:
            hp = _ops._scratch(n_hp, dev_index, torch._C._cuda_getCurrentRawStream(dev_index))
        a1 = (x, A, idx, w, hp, T, d_in, K, gs.d_per, A.stride(0))
        c1 = dict(R=RG, BLOCK_S=gs.block_s, BLOCK_D=gs.block_dw)
        r1 = _launch(_gemv_shrink_kernel, (rows, gs.split_d, gs.n_sc), a1, c1, gs.warps_s, 2, dev_index)
        ok = ok and bool(r1)
        launches.append((r1, (rows, gs.split_d, gs.n_sc), (0, 1, 2, 3, 4), a1[5:] + tuple(c1.values())))
        for ms in chunks:
            pad, g, scal = _member_args(ms, [gp.groups for gp in member_plans], d_outs, Bs,
                                        [gp.n_per_w for gp in member_plans])
            consts = dict(M=len(ms), RG=RG, BLOCK_SG=gs.block_s, ACCUMULATE=accumulate)
            for i, m in enumerate(pad):
                gp = member_plans[m]
                sp = _pow2_at_least(gs.split_d, 1)
                sp = sp if knobs[1] == "tile" and sp * gp.block_s <= 4096 else 0
                consts.update({f"R{i}": ranks[m], f"OFF{i}": offs[m], f"BS{i}": gp.block_s, f"BN{i}": gp.block_nw,
                               f"OC{i}": gp.n_sc == 1, f"SP{i}": sp})
            a2 = (hp, idx, *[Bs[m] for m in pad], *[outs[m] for m in pad], T, K, gs.split_d, *scal)
            warps = max(member_plans[m].warps_e for m in ms)
            grid = (rows, g, 1)
            r2 = _launch(_gemv_expand_group_kernel, grid, a2, consts, warps, 2, dev_index)
            ok = ok and bool(r2)
            take = (4, 2) + tuple(5 + m for m in pad) + tuple(5 + M + m for m in pad)
            launches.append((r2, grid, take, a2[8:] + tuple(consts.values())))
    else:
        for ms in chunks:
            pad, p, scal = _member_args(ms, [gp.p for gp in member_plans], d_outs, Bs,
                                        [gp.n_per_f for gp in member_plans])
            consts = dict(M=len(ms), ACCUMULATE=accumulate)
            for i, m in enumerate(pad):
                gp = member_plans[m]
                consts.update({f"R{i}": ranks[m], f"OFF{i}": offs[m], f"BS{i}": gp.block_s, f"BD{i}": gp.block_d,
                               f"BN{i}": gp.block_n})
            args = (x, A, idx, w, *[Bs[m] for m in pad], *[outs[m] for m in pad], T, d_in, K, A.stride(0), *scal)
            warps = max(member_plans[m].warps for m in ms)
            grid = (rows, p, 1)
            rec = _launch(_gemv_fused_group_kernel, grid, args, consts, warps, 2, dev_index)
            ok = ok and bool(rec)
            take = (0, 1, 2, 3) + tuple(5 + m for m in pad) + tuple(5 + M + m for m in pad)
            launches.append((rec, grid, take, args[10:] + tuple(consts.values())))
    if cache and ok and not in_capture:
        key = _group_key(x, A, Bs, ranks, idx, accumulate, path_asked, False, outs_given)
        if len(_group_calls) > 4096:
            _group_calls.clear()
        _group_calls[key] = _GroupCall(dev_index, n_hp, layout, tuple(launches))
    return outs


_compose_group_triton = compose_group_triton  # the entry's own re-entries (a caller may wrap the public name)


# ---- serving: the delta on a side stream, under the base GEMMs -------------------------------
# The delta needs only x, so on the GPU serving path (AtomLinear with ComposeState.meta) it runs
# on a side stream, forked from the current stream once x is ready, while the current stream
# runs the base GEMM(s); the current stream joins the side stream before the one add
# y += delta. At decode sizes the base GEMMs are memory-bound and the delta kernels
# latency-bound, so part of the delta's cost hides under the GEMMs (KERNEL_NOTES round 4 has
# how much: at b32, 72 -> 58 us per layer). Fork and join are event
# record/wait pairs, which a CUDA-graph capture turns into graph edges (the side stream joins
# the capture at the fork). Every buffer the current stream reads afterwards (outputs, deltas)
# is allocated on the current stream before the fork; the side stream's own scratch is per
# stream (eager) or the graph's (capture).
# `overlap`: "always", "capture" (only while a CUDA graph is being captured; the default) or
# "never" (DOC2ATOM_OVERLAP sets it for a process; the bench switches it to compare). Eager
# decode is host-bound, and the fork/join, the separate GEMMs and the add cost host time
# (H200 host: 84 us per module with overlap vs 54 without, KERNEL_NOTES round 4), so eager
# calls keep the one-stream path unless asked.
overlap = os.environ.get("DOC2ATOM_OVERLAP", "capture")
# priority of the side stream (lower = higher priority; -1 is CUDA's high priority), so that
# the delta programs are scheduled ahead of the GEMM's when both wait for an SM (measured: no
# difference against priority 0)
side_priority = int(os.environ.get("DOC2ATOM_SIDE_PRIORITY", "-1"))
_OVERLAP_MODES = ("always", "capture", "never")
_sides: dict = {}  # device index -> _Side
_warmed: set = set()  # keys of the eager calls that took the side stream once in "capture" mode


class _Side:
    """A device's side stream with its two reusable events (fork: current -> side, join: side -> current)."""

    __slots__ = ("stream", "fork", "join", "mains")

    def __init__(self, dev_index: int):
        self.stream = torch.cuda.Stream(dev_index, priority=side_priority)
        self.fork = torch.cuda.Event()
        self.join = torch.cuda.Event()
        self.mains: dict = {}  # raw current stream -> its torch.cuda.Stream (one Python object, not one per call)


def _side_for(x: torch.Tensor, warm_key=None) -> _Side | None:
    """The side stream to overlap on for a call with input x, or None (no overlap for this call).

    warm_key: in "capture" mode an eager call whose key is new takes the side stream once, so that
    the kernels a later capture launches are compiled by then (a capture cannot compile)."""
    mode = overlap
    if mode == "never" or not x.is_cuda or x.shape[1] > _ops._GEMV_MAX_T:
        return None  # prefill-sized calls keep the plain path (not measured with overlap)
    capturing = torch.cuda.is_current_stream_capturing()
    dev = x.get_device()
    side = _sides.get(dev)
    if side is None:
        if capturing:
            return None  # streams are made outside a capture (by the warm-up steps before it)
        side = _sides[dev] = _Side(dev)
    if mode == "always" or (mode == "capture" and capturing):
        return side
    if mode == "capture" and warm_key is not None and warm_key not in _warmed:
        if len(_warmed) > 65536:
            _warmed.clear()
        _warmed.add(warm_key)
        return side
    if mode not in _OVERLAP_MODES:
        raise ValueError(f"grouped.overlap must be one of {_OVERLAP_MODES}, got {mode!r}")
    return None


def _fork(side: _Side, dev: int) -> torch.cuda.Stream:
    raw = torch._C._cuda_getCurrentRawStream(dev)
    main = side.mains.get(raw)
    if main is None:
        main = torch.cuda.current_stream(dev)
        if len(side.mains) > 64:
            side.mains.clear()
        side.mains[raw] = main
    side.fork.record(main)
    side.stream.wait_event(side.fork)
    return main


def _join(side: _Side, main: torch.cuda.Stream) -> None:
    side.join.record(side.stream)
    main.wait_event(side.join)


_fused_seen: set = set()  # keys of the serving calls that ran eagerly once (fused_linear "auto" mode)


def _take_fused(x: torch.Tensor, key) -> bool:
    """Whether a serving call with input x takes the fused linear (compiler.compose.fused_linear).

    "always": whenever fl.wants(x). "auto" (the default): eager calls only, and only from the second
    eager call of a key on: the first takes the round-4 path, which compiles the kernels a later CUDA-graph
    capture launches (a capture cannot compile); under capture "auto" keeps the round-4 path (side-stream
    delta under cuBLAS GEMMs), measured faster there (KERNEL_NOTES round 5: b32 graphed 14.26 vs
    14.91 ms per step), while eagerly the fused path's fewer launches win (65.7 vs 44.6 ms per step)."""
    if not _fl.wants(x):
        return False
    if _fl.mode != "auto":
        return True
    if torch.cuda.is_current_stream_capturing():
        return False
    if key in _fused_seen:
        return True
    if len(_fused_seen) > 65536:
        _fused_seen.clear()
    _fused_seen.add(key)
    return False


def _hooked(base) -> bool:
    return bool(base._forward_hooks or base._forward_pre_hooks or torch.nn.modules.module._global_forward_hooks
                or torch.nn.modules.module._global_forward_pre_hooks)


def _linear(base, x: torch.Tensor) -> torch.Tensor:
    """base(x) without nn.Module's call machinery when the module has no hooks."""
    if _hooked(base):
        return base(x)
    return torch.nn.functional.linear(x, base.weight, base.bias)


# ---- the eager lane: a fused call's launches replayed with identity checks only ---------------
# An eager decode step is bound by host time (KERNEL_NOTES), and a fused call's full path re-derives, per
# call, what the previous step's call already established: that the pools are the group's slices, that
# every weight fits, the launch key. The lane keeps, per serving module (state.lanes, emptied at every
# ComposeState.set/clear), the operands and launch record of its last fused call, and replays the record
# when every one of them is the same object (or equal setting) again. Anything else takes the full path.
_LANE = os.environ.get("DOC2ATOM_EAGER_LANE", "1") != "0"
_Lane = namedtuple("_Lane", "shape dtype dev meta pools Ws A Bs call n mode pdl cfg knobs")


def _lane_make(state, names, x, Ws, A, Bs, ranks) -> _Lane | None:
    """The lane of a fused call just made eagerly with these operands (None: its launches were not cached)."""
    if not _LANE or torch.cuda.is_current_stream_capturing():
        return None
    call = _fl.cached_call(x, Ws, A, Bs, ranks, state.meta)
    if call is None:
        return None
    return _Lane(x.shape, x.dtype, x.get_device(), state.meta, tuple(state.pools.get(n) for n in names), tuple(Ws),
                 A, tuple(Bs), call, A.shape[0], _fl.mode, _fl.use_pdl, dict(_fl.config), gemv_knobs())


def _lane_run(lane: _Lane, state, names, x: torch.Tensor, Ws, shaped: bool = False) -> list[torch.Tensor] | None:
    """Every member's output through the lane's launches, or None when anything they depend on changed.

    shaped: outputs (Bsz, T, d_out) like x (else (Bsz * T, d_out))."""
    meta = state.meta
    if (not _LANE or meta is not lane.meta or x.shape != lane.shape or x.dtype != lane.dtype
            or x.get_device() != lane.dev or meta.max_slot >= lane.n
            or _fl.mode != lane.mode or _fl.use_pdl != lane.pdl or _fl.config != lane.cfg
            or gemv_knobs() != lane.knobs or not x.is_contiguous() or torch.cuda.is_current_stream_capturing()):
        return None
    pools = state.pools
    for n, p, W, W0 in zip(names, lane.pools, Ws, lane.Ws):
        if pools.get(n) is not p or W is not W0:
            return None
    return _fl.replay_call(lane.call, x, lane.Ws, lane.A, lane.Bs, meta, shaped)


def lane_forward(mod, state, x: torch.Tensor) -> torch.Tensor | None:
    """compiler.lora.AtomLinear's shortcut on the eager GPU serving path; None: take the full path.

    A module whose lane (its last fused call, or its group's) is still valid replays it; a group's sibling takes
    its output from the call its group's first member just made for this very input. The checks are those the
    full path makes before it reaches the lane (AtomLinear.forward -> _grouped -> serve_group, or serve_linear),
    without the layers of calls between: an eager decode step is bound by this host time (KERNEL_NOTES, stop 18).
    3-D inputs only; the output is (Bsz, T, d_out)."""
    name, base = mod.name, mod.base
    lane = state.lanes.get(name)
    W = base.weight
    if lane is None:  # a sibling: its share of the group call made for this x
        g = state.groups.get(name)
        pend = g.pending if g is not None else None
        if pend is None or pend[0] is not x or pend[1] is not state.meta:
            return None
        got = pend[2].get(name)
        if got is None or got[1] is not W or got[0].dim() != 3:
            return None
        del pend[2][name]
        if not pend[2]:
            g.pending = None
        return got[0]
    if (x.dim() != 3 or base.bias is not None or type(base) is not torch.nn.Linear
            or torch.is_autocast_enabled("cuda")
            or (torch.is_grad_enabled() and (x.requires_grad or W.requires_grad or lane.A.requires_grad))):
        return None
    g = state.groups.get(name)
    if g is not None:
        if g.names[0] != name or g.weights.get(name) is not W:
            return None
        ys = _lane_run(lane, state, g.names, x, tuple(g.weights.get(n) for n in g.names), True)
        return None if ys is None else _hold_siblings(g, x, state.meta, ys, lane.Ws)
    if _hooked(base):
        return None
    ys = _lane_run(lane, state, (name,), x, (W,), True)
    return None if ys is None else ys[0]


def serve_linear(base, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, meta: ComposeMeta, state=None,
                 name: str | None = None) -> torch.Tensor | None:
    """base(x) + delta with the delta on a side stream under the base GEMM; None: the caller takes its own path.

    base: the frozen nn.Linear; x (..., d_in) on CUDA in base's dtype; A, B, meta as in
    compose_delta_triton. Used by AtomLinear on the GPU serving path (no gradients). state, name:
    the ComposeState (meta is state.meta) and the module's name, for the eager lane."""
    if type(base) is not torch.nn.Linear or x.dtype != base.weight.dtype or x.dim() != 3:
        return None
    if base.bias is None and not torch.is_autocast_enabled("cuda") and not _hooked(base):
        W = base.weight
        lane = state.lanes.get(name) if state is not None else None
        if lane is not None:
            ys = _lane_run(lane, state, (name,), x, (W,))
            if ys is not None:
                return ys[0].view(x.shape[0], x.shape[1], ys[0].shape[1])
        if _take_fused(x, ("lin", B.data_ptr(), B.shape, x.shape, x.dtype)):
            # round 5: the base GEMM and the delta in one pass (compiler.compose.fused_linear)
            if W.device == x.device and (W.stride(1) == 1 or W.shape[1] <= 1):
                y = _fl.fused_linear_group(x, [W], A, [B], meta=meta)[0]
                pool = state.pools.get(name) if state is not None else None
                if pool is not None and state.meta is meta and pool[0] is A and pool[1] is B:
                    state.lanes[name] = _lane_make(state, (name,), x, (W,), A, (B,), (B.shape[2],))
                return y.view(x.shape[0], x.shape[1], y.shape[1])
    # the side-stream delta is a non-accumulating kernel variant, unlike AtomLinear's own path
    side = _side_for(x, (B.data_ptr(), B.shape, x.shape, x.dtype))
    if side is None or torch.is_autocast_enabled("cuda"):
        return None
    d = torch.empty((x.shape[0], x.shape[1], B.shape[1]), dtype=x.dtype, device=x.device)  # current stream
    main = _fork(side, x.get_device())
    compose_delta_triton(x, A, B, meta=meta, out=d, stream=side.stream)
    y = _linear(base, x)
    _join(side, main)
    return y.add_(d)


_layout = functools.lru_cache(maxsize=1024)(_out_layout)


def _group_B(group, state):
    """group.member_B(state), re-checked only when a member's pool entry is another object."""
    pools = state.pools
    got = tuple(pools.get(n) for n in group.names)
    cached = getattr(group, "_serve_b", None)
    if cached is not None and all(a is b for a, b in zip(cached[0], got)):
        return cached[1]
    Bs = group.member_B(state)
    group._serve_b = (got, Bs)
    return Bs


def _hold_siblings(group, x: torch.Tensor, meta, ys, Ws) -> torch.Tensor:
    """Every member's whole output made with weights Ws: the siblings' wait in group.pending for their own calls;
    returns the first member's."""
    if len(ys) > 1:
        group.pending = (x, meta, {n: (y, w) for n, y, w in zip(group.names[1:], ys[1:], Ws[1:])})
    return ys[0]


def serve_group(group, name: str, x: torch.Tensor, W: torch.Tensor, state) -> torch.Tensor | None:
    """Output x W^T + delta of member `name` of a projection group (compiler.lora.ComposeGroup); None: not here.

    x (Bsz, T, d_in) CUDA, W the member's frozen weight (d_out, d_in) in x's dtype, no bias;
    state the ComposeState (meta, pools). Returns (Bsz * T, d_out). The group's first member
    computes for every member: with overlap, the deltas on the side stream and, on the current
    stream, every member's base GEMM whose weight the group has seen (group.weights, recorded at
    each member's call), then one add over all outputs; the siblings' outputs wait in
    group.pending for their own calls. Without overlap (or before every sibling's weight is
    known): the deltas in one launch, and each member adds its base GEMM to its delta (addmm,
    beta = 1) at its own call."""
    ws = group.weights
    if ws.get(name) is not W:
        ws[name] = W
    pend = group.pending
    if pend is not None and pend[0] is x and pend[1] is state.meta and name in pend[2]:
        t, w_used = pend[2].pop(name)
        if not pend[2]:
            group.pending = None
        if w_used is None:  # a delta: add the base GEMM to it
            return t.view(-1, t.shape[-1]).addmm_(x.view(-1, x.shape[-1]), W.t())
        return t if w_used is W else None  # an output made with another weight: the caller recomputes
    if name != group.names[0]:
        return None
    names = group.names
    lane = state.lanes.get(name)
    if lane is not None:
        ys = _lane_run(lane, state, names, x, tuple(ws.get(n) for n in names))
        if ys is not None:
            return _hold_siblings(group, x, state.meta, ys, lane.Ws)
    Bs = _group_B(group, state)
    if Bs is None:
        return None
    if _take_fused(x, ("grp", id(group), x.shape, x.dtype)):
        # round 5: every member's base GEMM and delta in one pass (compiler.compose.fused_linear),
        # once every sibling's weight is known (recorded at its last call)
        Ws = [ws.get(n) for n in names]
        if all(w is not None and w.shape == (B.shape[1], x.shape[2]) and w.dtype == x.dtype
               and w.device == x.device and (w.stride(1) == 1 or w.shape[1] <= 1) for w, B in zip(Ws, Bs)):
            ys = _fl.fused_linear_group(x, Ws, group.A, Bs, meta=state.meta, ranks=group.ranks)
            state.lanes[name] = _lane_make(state, names, x, Ws, group.A, Bs, group.ranks)
            return _hold_siblings(group, x, state.meta, ys, Ws)
    side = _side_for(x)
    if side is not None:
        Ws = [ws.get(n) for n in names]
        if not all(w is not None and w.shape == (B.shape[1], x.shape[2]) and w.dtype == x.dtype
                   and w.device == x.device for w, B in zip(Ws, Bs)):
            side = None
    if side is not None:
        bsz, T, d_in = x.shape
        rows = bsz * T
        offs, total = _layout(bsz, T, tuple(B.shape[1] for B in Bs))
        ybuf = torch.empty(2 * total, dtype=x.dtype, device=x.device)  # current stream, before the fork
        ys = [ybuf.as_strided((rows, d), (d, 1), o) for o, d in offs]
        ds = [ybuf.as_strided((bsz, T, d), (T * d, d, 1), total + o) for o, d in offs]
        main = _fork(side, x.get_device())
        compose_group_triton(x, group.A, Bs, meta=state.meta, ranks=group.ranks, outs=ds, stream=side.stream)
        x2 = x.view(rows, d_in)
        for w, y in zip(Ws, ys):
            torch.mm(x2, w.t(), out=y)
        _join(side, main)
        ybuf[:total].add_(ybuf[total:])  # every member's delta in one add (same layout)
        return _hold_siblings(group, x, state.meta, ys, Ws)
    outs = compose_group_triton(x, group.A, Bs, meta=state.meta, ranks=group.ranks)
    rest = {n: (o, None) for n, o in zip(names[1:], outs[1:])}
    group.pending = (x, state.meta, rest) if rest else None
    d = outs[0]
    return d.view(-1, d.shape[-1]).addmm_(x.view(-1, x.shape[-1]), W.t())


import compiler.lora as _lora  # noqa: E402  (lora must not import Triton: it learns of the shortcut here)

_lora._lane_forward = lane_forward

__all__ = ["compose_group_triton", "lane_forward", "serve_group", "serve_linear"]
