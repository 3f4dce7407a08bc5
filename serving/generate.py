"""Generation with atoms: a batch of questions, each with its own atoms composed, in one pass.

The base model is shared and frozen; each request's atoms act through the composition op
(unmerged deltas), so one batch can mix any atoms per request.
"""

from __future__ import annotations

import torch

from compiler.lora import attach, target_names
from compiler.padding import pad as pad_batch
from doc2atom.prompts import prompt_ids


def build_pool(weights: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stack per-atom weights into per-module pools: module -> (A (N, r, d_in), B (N, d_out, r))."""
    if not weights:
        return {}
    modules = weights[0].keys()
    return {m: (torch.stack([w[m][0] for w in weights]), torch.stack([w[m][1] for w in weights])) for m in modules}


def pad_slots(slot_lists: list[list[int]], weight_lists: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-request slot lists -> idx (Bsz, K) int64 padded with -1, w (Bsz, K) float32."""
    K = max((len(s) for s in slot_lists), default=0)
    idx = torch.full((len(slot_lists), K), -1, dtype=torch.long)
    w = torch.zeros((len(slot_lists), K), dtype=torch.float32)
    for i, (s, ws) in enumerate(zip(slot_lists, weight_lists)):
        if s:
            idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            w[i, :len(s)] = torch.tensor(ws, dtype=torch.float32)
    return idx, w


@torch.no_grad()
def generate(model, tok, questions: list[str], facts: list[list[str] | None] | None = None,
             pool: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
             slots: list[list[int]] | None = None, weights: list[list[float]] | None = None,
             max_new_tokens: int = 48) -> list[str]:
    """Greedy answers for a batch. Request i sees facts[i] in its prompt and atoms slots[i] in its weights."""
    if not questions:
        return []
    facts = facts or [None] * len(questions)
    prompts = [prompt_ids(tok, q, f) for q, f in zip(questions, facts)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = pad_batch(prompts, pad, left=True)  # every prompt ends where its answer starts
    T = ids.shape[1]
    dev, dtype = model.device, model.dtype
    ids, mask = ids.to(dev), mask.to(dev)
    state = None
    use_atoms = bool(pool) and slots is not None and any(slots)
    if use_atoms:
        state = attach(model, target_names_for_pool(model, pool))
        state.pools = {n: (A.to(dev, dtype).contiguous(), B.to(dev, dtype).contiguous()) for n, (A, B) in pool.items()}
        idx, w = pad_slots(slots, weights or [[1.0] * len(s) for s in slots])
        state.set(idx.to(dev), w.to(dev))
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=_stop_ids(tok))
    finally:
        if state is not None:
            state.clear()
    return [tok.decode(o[T:], skip_special_tokens=True).strip() for o in out]


def target_names_for_pool(model, pool: dict) -> list[str]:
    return list(pool.keys())


def _stop_ids(tok) -> list[int]:
    ids = {tok.eos_token_id}
    end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tok.unk_token_id:
        ids.add(end)
    return [i for i in ids if i is not None]


__all__ = ["build_pool", "generate", "pad_slots", "target_names"]
