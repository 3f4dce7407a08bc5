"""Pure-torch batched low-rank composition: the definition of what atoms do to a linear layer.

This file is the reference every fast path is checked against, the CPU path used in
serving, and the differentiable path used by the compiler for training. It must never
modify its inputs or the base weights.
"""

from __future__ import annotations

import torch


def compose_delta_torch(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """Semantics: delta[b, t] = sum_k w[b, k] * B[idx[b, k]] @ (A[idx[b, k]] @ x[b, t]), idx < 0 adds 0.

    Args:
        x:   (Bsz, T, d_in) float activations of the batch; row b is request b. Not written.
        A:   (N, r, d_in) shrink matrices of the pool, one per atom slot (zero-padded ranks).
        B:   (N, d_out, r) expand matrices of the pool.
        idx: (Bsz, K) integer atom slots per request, -1 for padding. Values must be < N.
        w:   (Bsz, K) float composition weight per (request, atom); ignored where idx < 0.

    Returns:
        (Bsz, T, d_out) delta in x.dtype. Differentiable w.r.t. x, A, B and w.
    """
    Bsz, T, d_in = x.shape
    K = idx.shape[1]
    if K == 0:
        return x.new_zeros(Bsz, T, B.shape[1])
    mask = idx >= 0
    safe = idx.clamp(min=0).long()
    r = A.shape[1]
    a_sel = A[safe].to(x.dtype)  # (Bsz, K, r, d_in)
    b_sel = B[safe].to(x.dtype)  # (Bsz, K, d_out, r)
    wm = (w.to(x.dtype) * mask.to(x.dtype))  # (Bsz, K)
    # shrink: (Bsz, T, d_in) x (Bsz, d_in, K*r) -> (Bsz, T, K*r)
    h = torch.bmm(x, a_sel.reshape(Bsz, K * r, d_in).transpose(1, 2))
    h = h * wm.repeat_interleave(r, dim=1)[:, None, :]
    # expand: (Bsz, T, K*r) x (Bsz, K*r, d_out) -> (Bsz, T, d_out)
    b_cat = b_sel.permute(0, 1, 3, 2).reshape(Bsz, K * r, B.shape[1])
    return torch.bmm(h, b_cat)


def compose_delta_loop(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """Semantics: same as compose_delta_torch, computed in fp32 with explicit loops.

    The slow, obviously-correct oracle for tests of every other path. Shapes as in
    compose_delta_torch; returns fp32.
    """
    Bsz, T, _ = x.shape
    out = torch.zeros(Bsz, T, B.shape[1], dtype=torch.float32, device=x.device)
    xf = x.float()
    for b in range(Bsz):
        for k in range(idx.shape[1]):
            a = int(idx[b, k])
            if a < 0:
                continue
            out[b] += float(w[b, k]) * (xf[b] @ A[a].float().T) @ B[a].float().T
    return out
