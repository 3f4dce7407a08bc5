"""The monolithic baseline: one LoRA for the whole corpus, trained on every atom's questions.

This is the comparison users ask about (one adapter per corpus, as in document-to-LoRA work):
same target modules and training sequences as the atoms, one larger rank, trained for whole
epochs over all (question, answer) pairs with Adam until its training loss stops falling.
It cannot forget one document or show which fact answered; it is here to be measured beside atoms.
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F

from compiler.config import CompileConfig
from compiler.layers import lower_bank, run_layers
from compiler.lora import attach, first_layer, module_shapes, target_names
from compiler.train import AtomExample, CompiledAtom, _RowBank


def train_monolithic(model, tok, examples: list[AtomExample], cfg: CompileConfig, rank: int = 32, lr: float = 1e-3,
                     epochs: int = 30, batch_rows: int = 32, patience: int = 3, log=None) -> CompiledAtom:
    """One LoRA (rank `rank`) on cfg.modules/cfg.layers over all examples. Returns it as one 'atom'."""
    names = target_names(model, cfg.modules, cfg.layers)
    state = attach(model, names)
    shapes = module_shapes(model, names)
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    params = {}
    for n in names:
        d_in, d_out = shapes[n]
        A = ((torch.rand(1, rank, d_in, generator=gen) * 2 - 1) / math.sqrt(d_in)).to(dev).requires_grad_(True)
        B = torch.zeros(1, d_out, rank, device=dev, requires_grad=True)
        params[n] = (A, B)
    opt = torch.optim.Adam([t for ab in params.values() for t in ab], lr=lr)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    L = first_layer(names)
    keys = [(a, q) for a, ex in enumerate(examples) for q in range(len(ex.prompts))]
    state.clear()
    seqs = [examples[a].prompts[q] + examples[a].target(q) for a, q in keys]
    bank = _RowBank(lower_bank(model, seqs, L, pad_id, cfg.max_tokens_per_step), [len(x) for x in seqs],
                    [len(examples[a].prompts[q]) for a, q in keys], [examples[a].target(q) for a, q in keys], dev)
    rows = list(range(len(keys)))
    rnd = random.Random(cfg.seed)
    scale = cfg.scale  # the same alpha/r as the atoms
    t0 = time.perf_counter()
    best, bad, history = float("inf"), 0, []
    grad_was = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(True)
        for ep in range(epochs):
            rnd.shuffle(rows)
            total, ntok = 0.0, 0
            for s in range(0, len(rows), batch_rows):
                mb = rows[s:s + batch_rows]
                h0, pos, tgt, _ = bank.batch(mb, max(bank.seq_cpu[j] for j in mb))
                state.set(torch.zeros(len(mb), 1, dtype=torch.long, device=dev),
                          torch.ones(len(mb), 1, device=dev))
                state.pools = {n: (A, B * scale) for n, (A, B) in params.items()}
                h = run_layers(model, h0, L, None, final_norm=True)
                logp = F.log_softmax(model.lm_head(h[pos[:, 0], pos[:, 1]]).float(), -1).gather(1, tgt[:, None])
                loss = -logp.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(tgt)
                ntok += len(tgt)
            ep_loss = total / max(ntok, 1)
            history.append(round(ep_loss, 4))
            if log:
                log(f"monolithic epoch {ep + 1}: loss {ep_loss:.4f}")
            if ep_loss < best - 1e-3:
                best, bad = ep_loss, 0
            else:
                bad += 1
                if bad >= patience:
                    break
    finally:
        torch.set_grad_enabled(grad_was)
        state.clear()
        state.pools = {}
    w = {n: (A[0].detach().float().cpu().clone(), (B[0] * scale).detach().float().cpu().clone())
         for n, (A, B) in params.items()}
    return CompiledAtom(w, {"epochs": len(history), "loss_history": history, "rank": rank,
                            "seconds": round(time.perf_counter() - t0, 2)})
