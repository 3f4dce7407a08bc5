"""Batched composition of atoms onto linear layers: one entry point, several backends.

`compose_delta` is what every caller uses (training in the compiler, serving). It
dispatches to the pure-torch reference (CPU, training with gradients) or to a fast GPU
kernel when one is available and the inputs need no gradient. Tests force a backend with
`set_backend("torch")` / `set_backend("triton")` or the environment variable
`DOC2ATOM_COMPOSE_BACKEND`.

GPU serving only: `grouped.compose_group_triton` computes the deltas of projections that share
an input (q/k/v, gate/up) in one launch; compiler.lora.AtomLinear uses it once
ComposeState.set_groups has named the groups (see lora.py).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from compiler.compose.reference import compose_delta_loop, compose_delta_torch

BACKENDS = ("auto", "torch", "triton")
_backend = os.environ.get("DOC2ATOM_COMPOSE_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Select the composition backend for this process: one of BACKENDS."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"compose backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (for tests and benchmarks)."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def _triton_usable(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or A.requires_grad or B.requires_grad):
        return False
    try:
        from compiler.compose import triton_ops  # noqa: F401
    except ImportError:
        return False
    return True


def compose_delta(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    check_range: bool = True,
) -> torch.Tensor:
    """Semantics: delta[b, t] = sum_k w[b, k] * B[idx[b, k]] @ (A[idx[b, k]] @ x[b, t]), idx < 0 adds 0.

    Args:
        x:   (Bsz, T, d_in) activations; row b is request b. Not written.
        A:   (N, r, d_in) pool of shrink matrices. B: (N, d_out, r) pool of expand matrices.
        idx: (Bsz, K) int atom slots per request, -1 = padding; every value < N.
        w:   (Bsz, K) float weights.
        check_range: False skips the slot-range check (a device-to-host sync); only for a caller
             that has checked this very idx against a pool of N slots already (lora.AtomLinear does,
             once per forward instead of once per layer).

    Returns (Bsz, T, d_out) in x.dtype. Inputs are checked before any kernel runs.
    """
    check_inputs(x, A, B, idx, w, check_range)
    backend = _backend
    if backend == "triton" or (backend == "auto" and _triton_usable(x, A, B)):
        from compiler.compose import triton_ops

        return triton_ops.compose_delta_triton(x, A, B, idx, w)
    return compose_delta_torch(x, A, B, idx, w)


def check_inputs(x, A, B, idx, w, check_range: bool = True) -> None:
    """Validate shapes, dtypes and index ranges; an out-of-range slot never reaches a kernel."""
    if x.dim() != 3:
        raise ValueError(f"x must be (Bsz, T, d_in), got shape {tuple(x.shape)}")
    if A.dim() != 3 or B.dim() != 3:
        raise ValueError(f"A must be (N, r, d_in) and B (N, d_out, r); got {tuple(A.shape)}, {tuple(B.shape)}")
    N, r, d_in = A.shape
    if B.shape[0] != N or B.shape[2] != r:
        raise ValueError(f"A {tuple(A.shape)} and B {tuple(B.shape)} disagree on N or r")
    if x.shape[2] != d_in:
        raise ValueError(f"x has d_in={x.shape[2]} but A has d_in={d_in}")
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"idx must be (Bsz={x.shape[0]}, K), got {tuple(idx.shape)}")
    if w.shape != idx.shape:
        raise ValueError(f"w must have idx's shape {tuple(idx.shape)}, got {tuple(w.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"idx must be int32 or int64, got {idx.dtype}")
    if check_range and idx.numel():
        hi = int(idx.max())
        lo = int(idx.min())
        if hi >= N or lo < -1:
            raise IndexError(f"atom slot out of range: idx in [{lo}, {hi}] but the pool holds {N} slots")


__all__ = [
    "BACKENDS",
    "check_inputs",
    "compose_delta",
    "compose_delta_loop",
    "compose_delta_torch",
    "get_backend",
    "set_backend",
    "use_backend",
]
