"""Batched compile: many atoms trained in one step, each example through its own atom's LoRA.

The composition op (`compiler.compose`) with per-row atom indices is what makes one batch
hold many atoms: row i of the batch uses slot idx[i] of the trainable pools. Atoms that
reach the target stop updating (masked Adam) and leave the batch.
This module must never modify the base model's weights.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from compiler.config import CompileConfig
from compiler.layers import Bf16Linears, cpu_has_bf16_units, lower_states, run_layers, stack_right
from compiler.lora import attach, first_layer, module_shapes, target_names
from compiler.padding import pad
from doc2atom.prompts import answer_ids, prompt_ids


@dataclass
class AtomExample:
    """What one atom is trained on: question prompts (token ids) and the answer (token ids).

    answers, when given, holds one answer per prompt (the distillation objective: the base model's
    own answer with the atom's text in context); otherwise every prompt is taught `answer`."""

    prompts: list[list[int]]
    answer: list[int]
    answers: list[list[int]] | None = None

    def target(self, q: int) -> list[int]:
        return self.answers[q] if self.answers is not None else self.answer


@dataclass
class CompiledAtom:
    """An atom's weights (module -> (A (r, d_in), B (d_out, r)), scale folded into B) and stats."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    stats: dict


def make_examples(tok, texts: list[str], questions: list[list[str]],
                  answers: list[list[str]] | None = None) -> list[AtomExample]:
    """Token ids of each atom's questions and answer(s); `answers[i][j]` answers questions[i][j] (distillation)."""
    out = []
    for i, (t, qs) in enumerate(zip(texts, questions)):
        per_q = [answer_ids(tok, a) for a in answers[i]] if answers is not None else None
        out.append(AtomExample([prompt_ids(tok, q) for q in qs], answer_ids(tok, t), per_q))
    return out


class _MaskedAdam:
    """Adam whose update touches only the rows (atoms) that are still training."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8,
                 lr_mult: list[float] | None = None):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, betas[0], betas[1], eps
        self.lr_mult = lr_mult or [1.0] * len(params)  # per tensor (LoRA+: B's lr a multiple of A's)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, active: torch.Tensor, t: torch.Tensor, lr_scale: torch.Tensor | None = None) -> None:
        """active: (M,) bool; t: (M,) per-atom step count (after this step); lr_scale: (M,) per-atom lr factor."""
        bc1 = (1 - self.b1 ** t.float()).clamp(min=1e-8)
        bc2 = (1 - self.b2 ** t.float()).clamp(min=1e-8)
        act = active.float() if lr_scale is None else active.float() * lr_scale
        for p, m, v, mult in zip(self.params, self.m, self.v, self.lr_mult):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            a = active.view(shape).to(p.dtype)
            g = p.grad
            m.mul_(1 - a * (1 - self.b1)).add_(a * (1 - self.b1) * g)
            v.mul_(1 - a * (1 - self.b2)).add_(a * (1 - self.b2) * g * g)
            upd = (m / bc1.view(shape)) / ((v / bc2.view(shape)).sqrt() + self.eps)
            p.sub_(act.view(shape).to(p.dtype) * (self.lr * mult) * upd)
            p.grad = None


def _micro_batches(chunk: list[AtomExample], rows: list[tuple[int, int]], max_tokens: int, sort: bool = False):
    """Split a step's rows so that no forward pass holds more than max_tokens (padded) tokens.

    sort: take the rows longest first, so that each pass pads its rows to a similar length."""
    if sort:
        rows = sorted(rows, key=lambda aq: -(len(chunk[aq[0]].prompts[aq[1]]) + len(chunk[aq[0]].target(aq[1]))))
    out, cur, longest = [], [], 0
    for a, q in rows:
        n = len(chunk[a].prompts[q]) + len(chunk[a].target(q))
        if cur and max(longest, n) * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append((a, q))
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def _matmul_mode(fast: Bf16Linears | None):
    """The frozen linears in bf16 (cfg.cpu_bf16 on a CPU), else fp32 as the model is."""
    return fast if fast is not None else contextlib.nullcontext()


def _pools(params, scale: float, frozen_copy: bool):
    """Trainable pools; with frozen_copy, slots M..2M-1 hold detached copies of the same atoms,
    so an atom can be trained with other (frozen) atoms summed in."""
    out = {}
    for n, (A, B) in params.items():
        Bs = B * scale
        out[n] = (torch.cat([A, A.detach()]), torch.cat([Bs, Bs.detach()])) if frozen_copy else (A, Bs)
    return out


def _slots(row_atom: torch.Tensor, M: int, others: int, rnd: random.Random):
    """idx (rows, 1 + others): each row's own atom, then `others` other atoms' frozen copies (slots M..2M-1)."""
    if others == 0:
        return row_atom[:, None], torch.ones(len(row_atom), 1)
    k = min(others, M - 1)
    g = torch.Generator().manual_seed(rnd.randrange(1 << 62))
    if M - 1 <= 4 * k:  # few atoms: exact distinct draws
        pick = torch.stack([torch.randperm(M - 1, generator=g)[:k] for _ in range(len(row_atom))])
    else:  # many atoms: independent draws (a repeat is rare and harmless)
        pick = torch.randint(0, M - 1, (len(row_atom), k), generator=g)
    pick = pick + (pick >= row_atom[:, None]).long()  # skip the row's own atom
    idx = torch.cat([row_atom[:, None], pick + M], 1)
    return idx, torch.ones(idx.shape)


class _RowBank:
    """Every training sequence of a chunk, ready on the device: the hidden states entering layer L
    (right-padded), prompt and target lengths and target ids. A micro-batch is a gather, not a loop."""

    def __init__(self, lower: list[torch.Tensor], prompt_lens: list[int], targets: list[list[int]], dev):
        self.h = stack_right(lower)
        self.seq = torch.tensor([t.shape[0] for t in lower], device=dev)
        self.plen = torch.tensor(prompt_lens, device=dev)
        self.alen = torch.tensor([len(t) for t in targets], device=dev)
        A = max(len(t) for t in targets)
        self.tgt = torch.tensor([list(t) + [0] * (A - len(t)) for t in targets], dtype=torch.long, device=dev)
        self.seq_cpu = [t.shape[0] for t in lower]

    def batch(self, rows: torch.Tensor, T: int):
        """(h (b, T, d), target positions (n, 2), target ids (n,), row of each target (n,)) for bank rows."""
        A = self.tgt.shape[1]
        ar = torch.arange(A, device=rows.device)
        m = ar[None] < self.alen[rows][:, None]
        # logits at position j predict token j+1: answer token k sits at plen+k, predicted from plen+k-1
        p = self.plen[rows][:, None] - 1 + ar[None]
        r = torch.arange(len(rows), device=rows.device)[:, None].expand_as(p)
        pos = torch.stack([r[m], p[m]], 1)
        return self.h[rows, :T], pos, self.tgt[rows][m], r[m]


class _Negatives:
    """Unrelated prompts with the base model's own continuation and distribution, computed once.

    The pool is the built-in locality prompts plus the other atoms' questions of the chunk:
    an atom must leave the base model's behaviour unchanged on both.
    """

    def __init__(self, model, tok, state, chunk, cfg, pad_id, L: int):
        from compiler.locality import LOCALITY_PROMPTS

        self.items: list[tuple[list[int], list[int], torch.Tensor]] = []  # prompt, continuation, base logp
        self.owner: list[int] = []  # -1 built-in, else the atom whose question it is
        prompts, owners = [], []
        for q in LOCALITY_PROMPTS:
            prompts.append(prompt_ids(tok, q))
            owners.append(-1)
        for a, ex in enumerate(chunk):
            for p in ex.prompts:
                prompts.append(p)
                owners.append(a)
        state.clear()
        n = cfg.locality_tokens
        with torch.no_grad():
            dev = next(model.parameters()).device
            step = 16 if dev.type == "cpu" else 256
            for s in range(0, len(prompts), step):
                part = prompts[s:s + step]
                ids, mask = pad(part, pad_id, left=True)
                T = ids.shape[1]
                out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=n,
                                     min_new_tokens=n,
                                     do_sample=False, pad_token_id=pad_id, output_scores=True,
                                     return_dict_in_generate=True)
                cont = out.sequences[:, T:]
                logp = torch.stack([torch.log_softmax(sc.float(), -1) for sc in out.scores], 1)  # (b, n, V)
                for i, p in enumerate(part):
                    self.items.append((p, cont[i].tolist(), logp[i].to(torch.float16)))  # stays on the model's device
        self.owner = owners
        # hidden states entering the first layer with atoms, computed once (the lower layers are frozen)
        lower = lower_states(model, [p + c for p, c, _ in self.items], L, pad_id, cfg.max_tokens_per_step)
        self.bank = _RowBank(lower, [len(p) for p, _, _ in self.items], [c for _, c, _ in self.items], dev)
        self.base = torch.stack([lp for _, _, lp in self.items])  # (rows, n, V) fp16 base log-probs
        self.items = []

    def sample(self, a: int, k: int, rnd: random.Random) -> list[int]:
        """k distinct prompts that are not atom a's own questions."""
        n_own = sum(1 for o in self.owner if o == a)
        k = min(k, len(self.owner) - n_own)
        out: set[int] = set()
        while len(out) < k:  # rejection sampling: an atom owns only a few of the prompts
            i = rnd.randrange(len(self.owner))
            if self.owner[i] != a:
                out.add(i)
        return sorted(out)


def _locality_step(model, state, params, chunk, act, cfg, rnd, negatives, L: int, fast=None) -> None:
    """Accumulate grads of locality_weight * KL(base || base+atom) on unrelated prompts."""
    rows = [(a, i) for a in act for i in negatives.sample(a, cfg.locality_prompts, rnd)]
    n = cfg.locality_tokens
    dev = next(model.parameters()).device
    V = negatives.base.shape[-1]
    bank = negatives.bank
    # bound each pass by tokens and by the (rows * n, V) fp32 log-prob tensors it holds
    T_all = max(bank.seq_cpu[i] for _, i in rows)
    g = max(1, min(cfg.max_tokens_per_step // T_all, (1 << 27) // (n * V)))
    for s in range(0, len(rows), g):
        part = rows[s:s + g]
        ri = torch.tensor([i for _, i in part], device=dev)
        h0, pos, _, _ = bank.batch(ri, max(bank.seq_cpu[i] for _, i in part))
        state.set(torch.tensor([a for a, _ in part], device=dev)[:, None], torch.ones(len(part), 1, device=dev))
        with torch.enable_grad(), _matmul_mode(fast):
            state.pools = _pools(params, cfg.scale, frozen_copy=False)
            h = run_layers(model, h0, L, None, final_norm=True)
            student = torch.log_softmax(model.lm_head(h[pos[:, 0], pos[:, 1]]).float(), -1)
            base = negatives.base[ri].reshape(-1, V).float()  # rows in order, n positions each
            kl = (base.exp() * (base - student)).sum(-1)  # (rows * n,)
            loss = cfg.locality_weight * kl.view(len(part), n).mean(1).sum() / cfg.locality_prompts
            loss.backward()
    state.clear()


def compile_atoms(model, tok, examples: list[AtomExample], cfg: CompileConfig,
                  progress: Callable[[int], None] | None = None) -> list[CompiledAtom]:
    """Train one micro-LoRA per example, `cfg.batch_atoms` at a time. Returns them in order."""
    names = target_names(model, cfg.modules, cfg.layers)
    if not names:
        raise ValueError(f"no linear layers match modules={cfg.modules} layers={cfg.layers} in this base model")
    state = attach(model, names)
    shapes = module_shapes(model, names)
    out: list[CompiledAtom] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    rnd = random.Random(cfg.seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    # bf16 copies of the frozen weights, made once per call and dropped with it
    fast = Bf16Linears() if cfg.cpu_bf16 and dev.type == "cpu" and cpu_has_bf16_units() else None
    try:
        for start in range(0, len(examples), cfg.batch_atoms):
            chunk = examples[start:start + cfg.batch_atoms]
            out.extend(_compile_chunk(model, tok, state, names, shapes, chunk, cfg, gen, rnd, pad_id, fast))
            if progress:
                progress(len(chunk))
    finally:
        state.clear()
        state.pools = {}
    return out


def compile_statements(model, tok, texts: list[str], questions: list[list[str]], cfg: CompileConfig,
                       progress: Callable[[int], None] | None = None) -> list[CompiledAtom]:
    """Compile atoms from their statements and synthesised questions, with the configured objective."""
    answers = None
    if cfg.objective == "distill":
        from compiler.distill import teacher_answers

        answers, share = teacher_answers(model, tok, texts, questions)
    out = compile_atoms(model, tok, make_examples(tok, texts, questions, answers), cfg, progress)
    if answers is not None:
        for c, a, t in zip(out, answers, texts):
            c.stats["distilled_questions"] = sum(x != t for x in a)  # questions taught the teacher's answer
    return out


@torch.no_grad()
def _input_directions(model, state, names, bank, row_atom: list[int], M: int, r: int, max_tokens: int, L: int,
                      fast=None) -> dict[str, torch.Tensor]:
    """Per target module, (M, r, d_in): the top-r right singular vectors of each atom's inputs to that module
    at the positions that predict its answer tokens (base model, no atoms), for cfg.init_a == "data"."""
    cur: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, inp):
            cur[name] = inp[0]
        return fn

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in names}  # answer-predicting inputs, pass by pass
    atoms: list[torch.Tensor] = []  # the atom of each of those rows
    dev = bank.h.device
    order = sorted(range(len(row_atom)), key=lambda j: -bank.seq_cpu[j])
    groups, cur_rows = [], []
    for j in order:  # token-bounded passes, longest rows first
        if cur_rows and bank.seq_cpu[cur_rows[0]] * (len(cur_rows) + 1) > max_tokens:
            groups.append(cur_rows)
            cur_rows = []
        cur_rows.append(j)
    if cur_rows:
        groups.append(cur_rows)
    state.clear()
    try:
        with _matmul_mode(fast):
            for part in groups:
                h0, pos, _, trow = bank.batch(torch.tensor(part, device=dev), max(bank.seq_cpu[j] for j in part))
                run_layers(model, h0, L, None)
                atoms.append(torch.tensor([row_atom[j] for j in part], device=dev)[trow])
                for n in names:
                    xs[n].append(cur[n][pos[:, 0], pos[:, 1]].float())
    finally:
        for h in hooks:
            h.remove()
    atom = torch.cat(atoms)
    # zero rows (atoms with fewer rows than the longest) leave the directions alone
    return {n: _top_directions(_pack_by_atom(torch.cat(xs[n]), atom, M, r), r) / math.sqrt(3.0)  # uniform init's norm
            for n in names}


def _pack_by_atom(x: torch.Tensor, atom: torch.Tensor, M: int, min_rows: int = 1) -> torch.Tensor:
    """(M, n_max, d) zero-padded: row i of x goes to its atom atom[i], rows of one atom kept in their order.

    One stable sort and one scatter: a loop of per-atom masked copies costs a device sync per atom on a GPU."""
    order = torch.sort(atom, stable=True).indices
    counts = torch.bincount(atom, minlength=M)
    a_sorted = atom[order]
    within = torch.arange(len(atom), device=atom.device) - (torch.cumsum(counts, 0) - counts)[a_sorted]
    X = x.new_zeros(M, max(int(counts.max()) if len(atom) else 0, min_rows), x.shape[1])
    X[a_sorted, within] = x[order]
    return X


def _top_directions(X: torch.Tensor, r: int, iters: int = 8) -> torch.Tensor:
    """(M, r, d): orthonormal rows spanning (approximately) the top-r right singular vectors of each X[m] (n, d).

    Block subspace iteration on X^T X, batched over m: a few (n, d) products instead of M full SVDs
    (a full SVD per atom and module cost more than the training steps it saved)."""
    M, n, d = X.shape
    V = 1e-3 * torch.randn(M, d, r, generator=torch.Generator().manual_seed(0)).to(X)
    k = min(n, r)
    V[:, :, :k] += X[:, :k].transpose(1, 2)  # start from the first rows (inside the row space), plus a little noise
    for _ in range(iters):
        V = torch.linalg.qr(X.transpose(1, 2) @ (X @ V)).Q
    # order the columns by captured energy (Rayleigh-Ritz on the small r x r problem)
    S = V.transpose(1, 2) @ (X.transpose(1, 2) @ (X @ V))
    _, U = torch.linalg.eigh(S)
    return (V @ U.flip(-1)).transpose(1, 2)


def _next_questions(chunk, a: int, cfg: CompileConfig, rnd: random.Random, order, cursor) -> list[int]:
    """This step's questions of atom a: a fresh random draw (stop_questions 0), or the next ones of its cycle."""
    nq = len(chunk[a].prompts)
    if cfg.stop_questions == 0:
        qs = list(range(nq))
        rnd.shuffle(qs)
        return qs[:cfg.questions_per_step]
    k = min(cfg.questions_per_step, nq)
    qs = [order[a][(cursor[a] + i) % nq] for i in range(k)]
    cursor[a] += k
    return qs


def _recent_above(chunk, a: int, cfg: CompileConfig, order, cursor, latest) -> bool:
    """stop_questions > 0: the latest p of each of atom a's last stop_questions questions (of its cycle) >= target."""
    nq = len(chunk[a].prompts)
    k = min(cfg.stop_questions, nq)
    if cursor[a] < k:
        return False
    recent = [order[a][(cursor[a] - 1 - j) % nq] for j in range(k)]
    return all(latest[a].get(q, 0.0) >= cfg.target_prob for q in recent)


def _compile_chunk(model, tok, state, names, shapes, chunk, cfg, gen, rnd, pad_id, fast=None) -> list[CompiledAtom]:
    t0 = time.perf_counter()
    M, r = len(chunk), cfg.rank
    dev = next(model.parameters()).device
    params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        d_in, d_out = shapes[name]
        bound = 1.0 / math.sqrt(d_in)
        A = (torch.rand(M, r, d_in, generator=gen) * 2 - 1).mul_(bound).to(dev).requires_grad_(True)
        if cfg.init_b_std > 0:
            B = (torch.randn(M, d_out, r, generator=gen) * cfg.init_b_std).to(dev).requires_grad_(True)
        else:
            B = torch.zeros(M, d_out, r, device=dev, requires_grad=True)
        params[name] = (A, B)
    bases = None
    if cfg.nullspace_energy > 0:
        from compiler.nullspace import generic_bases, project_out

        state.clear()
        bases = generic_bases(model, tok, names, cfg.nullspace_energy)
        for n, (A, _) in params.items():
            project_out(A.data, bases[n])
    flat = [t for ab in params.values() for t in ab]
    opt = _MaskedAdam(flat, cfg.lr, lr_mult=[1.0, cfg.lr_b_ratio] * len(params))
    active = torch.ones(M, dtype=torch.bool)
    steps = torch.zeros(M, dtype=torch.long)
    reached = torch.full((M,), -1, dtype=torch.long)
    last_p = torch.zeros(M)
    last_loss = torch.zeros(M)
    L = first_layer(names)
    state.clear()
    # hidden states entering layer L for every (atom, question) sequence: computed once, replayed each step
    keys = [(a, q) for a in range(M) for q in range(len(chunk[a].prompts))]
    key_row = {k: j for j, k in enumerate(keys)}
    with _matmul_mode(fast):
        lower = lower_states(model, [chunk[a].prompts[q] + chunk[a].target(q) for a, q in keys], L, pad_id,
                             cfg.max_tokens_per_step)
    bank = _RowBank(lower, [len(chunk[a].prompts[q]) for a, q in keys], [chunk[a].target(q) for a, q in keys], dev)
    if cfg.init_a == "data":
        dirs = _input_directions(model, state, names, bank, [a for a, _ in keys], M, r, cfg.max_tokens_per_step, L,
                                 fast)
        for n, (A, _) in params.items():
            A.data.copy_(dirs[n])
        if bases is not None:
            for n, (A, _) in params.items():
                project_out(A.data, bases[n])
    negatives = _Negatives(model, tok, state, chunk, cfg, pad_id, L) if cfg.locality_weight > 0 else None
    # stop_questions > 0: each atom's fixed question cycle, its position, and each question's latest min p
    order = [rnd.sample(range(len(ex.prompts)), len(ex.prompts)) for ex in chunk] if cfg.stop_questions else []
    cursor = [0] * M
    latest: list[dict[int, float]] = [{} for _ in range(M)]
    while bool(active.any()):
        act = active.nonzero().flatten().tolist()
        rows = []
        for a in act:
            rows += [(a, q) for q in _next_questions(chunk, a, cfg, rnd, order, cursor)]
        per_atom = torch.zeros(M, device=dev)
        pmin = torch.ones(M, device=dev)
        counts = torch.zeros(M)
        for a, q in rows:
            counts[a] += len(chunk[a].target(q))
        counts = counts.to(dev)
        composing = M > 1 and rnd.random() < cfg.compose_prob
        for mb in _micro_batches(chunk, rows, cfg.max_tokens_per_step, cfg.sort_rows):
            bank_rows = [key_row[r] for r in mb]
            h0, pos, tgt, trow = bank.batch(torch.tensor(bank_rows, device=dev),
                                            max(bank.seq_cpu[j] for j in bank_rows))
            row_atom = torch.tensor([a for a, _ in mb])
            idx, w = _slots(row_atom, M, cfg.compose_others if composing else 0, rnd)
            state.set(idx.to(dev), w.to(dev))
            row_atom = row_atom.to(dev)
            with torch.enable_grad(), _matmul_mode(fast):
                state.pools = _pools(params, cfg.scale, frozen_copy=composing)
                h = run_layers(model, h0, L, None, final_norm=True)
                logits = model.lm_head(h[pos[:, 0], pos[:, 1]])
                logp = F.log_softmax(logits.float(), dim=-1).gather(1, tgt[:, None]).squeeze(1)
                tok_atom = row_atom[trow]
                # mean over each atom's answer tokens in this step, so each atom weighs the same
                loss = (-logp / counts[tok_atom]).sum()
                loss.backward()
            with torch.no_grad():
                per_atom.index_add_(0, tok_atom, -logp.detach())
                pmin = pmin.scatter_reduce(0, tok_atom, logp.detach().exp(), reduce="amin", include_self=True)
                if cfg.stop_questions:
                    prow = torch.ones(len(mb), device=dev).scatter_reduce(0, trow, logp.detach().exp(), reduce="amin",
                                                                          include_self=True).tolist()
                    for (a, q), p in zip(mb, prow):
                        latest[a][q] = p
        if cfg.locality_weight > 0:
            _locality_step(model, state, params, chunk, act, cfg, rnd, negatives, L, fast)
        state.clear()
        with torch.no_grad():
            last_p[act] = pmin[act].cpu()
            last_loss[act] = (per_atom[act] / counts[act]).cpu()
        steps[act] += 1
        boost = None
        if cfg.warm_lr_steps > 0 and cfg.warm_lr_factor != 1.0:
            boost = torch.where(steps <= cfg.warm_lr_steps, cfg.warm_lr_factor, 1.0).to(dev)
        opt.step(active.to(dev), steps.to(dev), boost)
        if bases is not None:
            for n, (A, _) in params.items():
                project_out(A.data, bases[n])
        for a in act:
            above = (_recent_above(chunk, a, cfg, order, cursor, latest) if cfg.stop_questions
                     else last_p[a] >= cfg.target_prob)
            if reached[a] < 0 and above and steps[a] >= cfg.min_steps:
                reached[a] = steps[a]
            done_extra = reached[a] >= 0 and steps[a] >= reached[a] + cfg.extra_steps
            if done_extra or steps[a] >= cfg.max_steps:
                active[a] = False
    secs = (time.perf_counter() - t0) / M
    res = []
    with torch.no_grad():
        host = {n: (A.detach().float().cpu(), (B * cfg.scale).detach().float().cpu()) for n, (A, B) in params.items()}
        for a in range(M):
            w = {n: (A[a].clone(), B[a].clone()) for n, (A, B) in host.items()}
            res.append(CompiledAtom(w, {"steps": int(steps[a]), "min_answer_prob": round(float(last_p[a]), 4),
                                        "loss": round(float(last_loss[a]), 4), "converged": bool(reached[a] >= 0),
                                        "seconds": round(secs, 3)}))
    return res


def log(msg: str) -> None:
    print(f"doc2atom: {msg}", file=sys.stderr, flush=True)
