"""Generation with atoms: a batch of questions, each with its own atoms composed, in one pass.

The base model is shared and frozen; each request's atoms act through the composition op
(unmerged deltas), so one batch can mix any atoms per request.

Decoding is greedy, with a KV cache, and a row that has emitted its stop token leaves the
batch at once: its row of the KV cache, of the attention mask and of the atom slots is
dropped, so that a batch costs what its live rows cost, not what its longest answer costs
times the batch size. Dropping rows changes nothing for the others (each row's computation
is independent of the other rows), so the answers are those of `generate_reference`, the
plain `model.generate` path, which the tests check token for token.

`hooks` (optional) observe the decoding per row: `prompt(row, n_tokens)` once, then
`token(row, token_id, text_delta)` per generated token (text_delta: what the answer's text,
stripped, grew by; "" while a multi-byte character or leading space is incomplete), then
`finish(row, reason)` with reason "stop" (a stop token ended it) or "length" (max_new_tokens).
They run on the calling thread, between decode steps; keep them cheap.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch

from compiler.lora import attach, target_names
from compiler.padding import pad as pad_batch
from doc2atom.prompts import prompt_ids


class GenerateHooks(Protocol):
    def prompt(self, row: int, n_tokens: int) -> None: ...

    def token(self, row: int, token_id: int, text_delta: str) -> None: ...

    def finish(self, row: int, reason: str) -> None: ...


class RowMap:
    """Hooks that forward to `hooks` with row i renamed rows[i] (a sub-batch inside a larger one)."""

    def __init__(self, hooks, rows: list[int]):
        self.hooks, self.rows = hooks, rows

    def prompt(self, row: int, n_tokens: int) -> None:
        self.hooks.prompt(self.rows[row], n_tokens)

    def token(self, row: int, token_id: int, text_delta: str) -> None:
        self.hooks.token(self.rows[row], token_id, text_delta)

    def finish(self, row: int, reason: str) -> None:
        self.hooks.finish(self.rows[row], reason)


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
             max_new_tokens: int = 48, hooks: GenerateHooks | None = None) -> list[str]:
    """Greedy answers for a batch. Request i sees facts[i] in its prompt and atoms slots[i] in its weights.

    Finished rows leave the batch (see the module docstring); `hooks` observe each row's tokens.
    """
    if not questions:
        return []
    return _run(model, tok, questions, facts, pool, slots, weights, max_new_tokens,
                lambda ids, mask, pad, stops, state, idx, w: _greedy(model, tok, ids, mask, max_new_tokens, stops,
                                                                    state, idx, w, hooks))


@torch.no_grad()
def generate_reference(model, tok, questions: list[str], facts: list[list[str] | None] | None = None,
                       pool: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                       slots: list[list[int]] | None = None, weights: list[list[float]] | None = None,
                       max_new_tokens: int = 48) -> list[str]:
    """The plain path: one `model.generate` call, every row computed until the longest answer ends.

    Same prompts, padding and atoms as `generate`; kept as the reference the fast path is tested against.
    """
    if not questions:
        return []

    def plain(ids, mask, pad, stops, state, idx, w):
        T = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=stops)
        return [o[T:].tolist() for o in out]

    return _run(model, tok, questions, facts, pool, slots, weights, max_new_tokens, plain)


def _run(model, tok, questions, facts, pool, slots, weights, max_new_tokens, decode) -> list[str]:
    facts = facts or [None] * len(questions)
    prompts = [prompt_ids(tok, q, f) for q, f in zip(questions, facts)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = pad_batch(prompts, pad, left=True)  # every prompt ends where its answer starts
    dev, dtype = model.device, model.dtype
    ids, mask = ids.to(dev), mask.to(dev)
    state = idx = w = None
    use_atoms = bool(pool) and slots is not None and any(slots)
    if use_atoms:
        state = attach(model, target_names_for_pool(model, pool))
        state.pools = {n: (A.to(dev, dtype).contiguous(), B.to(dev, dtype).contiguous()) for n, (A, B) in pool.items()}
        idx, w = pad_slots(slots, weights or [[1.0] * len(s) for s in slots])
        idx, w = idx.to(dev), w.to(dev)
        state.set(idx, w)
    try:
        seqs = decode(ids, mask, pad, _stop_ids(tok), state, idx, w)
    finally:
        if state is not None:
            state.clear()
    return [tok.decode(s, skip_special_tokens=True).strip() for s in seqs]


def _cache_arg(model) -> str:
    """The keyword the model's forward takes its KV cache under (transformers renamed it)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _greedy(model, tok, ids, mask, max_new_tokens, stops, state, idx, w, hooks) -> list[list[int]]:
    """Greedy decoding with a KV cache; rows that emitted a stop token are dropped from the batch."""
    n = ids.shape[0]
    stop_set = set(stops)
    gen: list[list[int]] = [[] for _ in range(n)]
    text = [""] * n  # for hooks: each row's decoded, stripped answer so far
    live = list(range(n))  # original row of each row still in the batch
    if hooks is not None:
        lens = mask.sum(1).tolist()
        for r in range(n):
            hooks.prompt(r, int(lens[r]))
    if max_new_tokens < 1:
        return gen
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = _new_cache(model)
    kw = {_cache_arg(model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1, :]
    pos = pos[:, -1:]
    for step in range(max_new_tokens):
        nxt = logits.float().argmax(-1)
        keep = []
        last = step == max_new_tokens - 1
        for j, t in enumerate(nxt.tolist()):
            r = live[j]
            gen[r].append(t)
            stopped = t in stop_set
            if hooks is not None:
                hooks.token(r, t, _delta(tok, gen[r], text, r, final=stopped or last))
                if stopped or last:
                    hooks.finish(r, "stop" if stopped else "length")
            if not stopped:
                keep.append(j)
        if not keep or last:
            break
        if len(keep) < len(live):  # drop the finished rows: cache, mask, positions and atom slots
            k = torch.tensor(keep, dtype=torch.long, device=ids.device)
            cache.batch_select_indices(k)
            mask, pos, nxt = mask[k], pos[k], nxt[k]
            if state is not None:
                idx, w = idx[k], w[k]
                state.set(idx, w)
            live = [live[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, **kw).logits[:, -1, :]
    return gen


def _delta(tok, ids: list[int], text: list[str], r: int, final: bool = False) -> str:
    """How much row r's stripped answer text grew with its latest token ("" if it did not, or not cleanly)."""
    cur = tok.decode(ids, skip_special_tokens=True).strip()
    if (cur.endswith("\ufffd") and not final) or not cur.startswith(text[r]):
        return ""  # an incomplete UTF-8 sequence (more bytes may come), or a decode that rewrote earlier text
    d, text[r] = cur[len(text[r]):], cur
    return d


def target_names_for_pool(model, pool: dict) -> list[str]:
    return list(pool.keys())


def _stop_ids(tok) -> list[int]:
    ids = {tok.eos_token_id}
    end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tok.unk_token_id:
        ids.add(end)
    return [i for i in ids if i is not None]


__all__ = ["GenerateHooks", "RowMap", "build_pool", "generate", "generate_reference", "pad_slots", "target_names"]
