"""Pad token-id lists into a batch, shared by training (right padding) and generation (left padding)."""

from __future__ import annotations

import torch


def pad(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (n, T) int64, attention mask (n, T) int64), T = the longest sequence.

    Left padding makes every prompt end at the same position, where generation continues.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        ids[r, sl] = torch.tensor(s, dtype=torch.long)
        mask[r, sl] = 1
    return ids, mask
