"""Run a decoder's layers in two parts: the frozen lower part once, the part with atoms many times.

Atoms only touch layers >= L, so the hidden states entering layer L do not depend on the atom
being trained: the compiler computes them once per training sequence and replays only the upper
layers at every optimiser step. The layers are called directly (no change to the model object,
so a model shared with a serving thread is safe) with an explicit additive causal mask, which
makes right padding harmless: a real position never attends to a later (padded) one. With SDPA the mask
is left out and SDPA's own causal flag does the same.
"""

from __future__ import annotations

import torch


def _causal_mask(T: int, dtype: torch.dtype, device) -> torch.Tensor:
    m = torch.full((T, T), torch.finfo(dtype).min, dtype=dtype, device=device).triu_(1)
    return m[None, None]  # (1, 1, T, T), broadcast over batch and heads


def run_layers(model, h: torch.Tensor, start: int, stop: int | None = None, final_norm: bool = False
               ) -> torch.Tensor:
    """Hidden states after layers [start, stop) of a HF decoder-only model, from those entering `start`.

    h: (b, T, d) right-padded hidden states (row positions 0..T-1). Returns (b, T, d)."""
    inner = model.model
    layers = inner.layers[start:stop]
    T = h.shape[1]
    pos = torch.arange(T, device=h.device)[None]
    pe = inner.rotary_emb(h, pos)
    # SDPA is causal by itself when given no mask (and then may use its fused kernels); other
    # attention implementations get the explicit causal mask
    impl = getattr(model.config, "_attn_implementation", None)
    mask = None if impl == "sdpa" else _causal_mask(T, h.dtype, h.device)
    for layer in layers:
        out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe, use_cache=False)
        h = out[0] if isinstance(out, tuple) else out
    return inner.norm(h) if final_norm else h


@torch.no_grad()
def lower_states(model, seqs: list[list[int]], L: int, pad_id: int, max_tokens: int = 4096
                 ) -> list[torch.Tensor]:
    """For each token sequence, the hidden states entering layer L, shape (len(seq), d), on the model's device."""
    from compiler.padding import pad

    dev = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    groups: list[list[int]] = [[]]
    for i in order:  # ascending length: the newest row is the longest of its group
        if groups[-1] and len(seqs[i]) * (len(groups[-1]) + 1) > max_tokens:
            groups.append([])
        groups[-1].append(i)
    for part in groups:
        if not part:
            continue
        ids, _ = pad([seqs[i] for i in part], pad_id)
        h = model.model.embed_tokens(ids.to(dev))
        if L > 0:
            h = run_layers(model, h, 0, L)
        for j, i in enumerate(part):
            out[i] = h[j, :len(seqs[i])].clone()
    return out  # type: ignore[return-value]


def stack_right(rows: list[torch.Tensor]) -> torch.Tensor:
    """(b, T, d) right-padded with zeros from rows of shape (t_i, d)."""
    T = max(r.shape[0] for r in rows)
    h = rows[0].new_zeros(len(rows), T, rows[0].shape[1])
    for j, r in enumerate(rows):
        h[j, :r.shape[0]] = r
    return h
