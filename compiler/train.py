"""Batched compile: many atoms trained in one step, each example through its own atom's LoRA.

The composition op (`compiler.compose`) with per-row atom indices is what makes one batch
hold many atoms: row i of the batch uses slot idx[i] of the trainable pools. Atoms that
reach the target stop updating (masked Adam) and leave the batch.
This module must never modify the base model's weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from compiler.config import CompileConfig
from compiler.fused import lora_inputs
from compiler.layers import Bf16Linears, cpu_has_bf16_units, lower_bank, run_layers
from compiler.lora import attach, first_layer, module_shapes, target_names
from compiler.padding import pad
from doc2atom.prompts import answer_ids, prompt_ids


PHASE_TIMES: dict[str, float] | None = None  # set to {} to collect wall seconds per compile phase (syncs the device)


@contextlib.contextmanager
def _phase(name: str, dev):
    """Add this block's wall time to PHASE_TIMES[name] when collecting (the device is synchronised on both ends)."""
    if PHASE_TIMES is None:
        yield
        return
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    try:
        yield
    finally:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        PHASE_TIMES[name] = PHASE_TIMES.get(name, 0.0) + time.perf_counter() - t


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
    """Token ids of each atom's questions and answer(s); `answers[i][j]` answers questions[i][j] (distillation).

    The same ids as doc2atom.prompts.prompt_ids / answer_ids, tokenised in a few batched calls (_prompt_ids_many)."""
    flat = [q for qs in questions for q in qs]
    pids = _prompt_ids_many(tok, flat)
    aids = _answer_ids_many(tok, list(texts))
    out, k = [], 0
    for i, (t, qs) in enumerate(zip(texts, questions)):
        per_q = _answer_ids_many(tok, list(answers[i])) if answers is not None else None
        out.append(AtomExample(pids[k:k + len(qs)], aids[i], per_q))
        k += len(qs)
    return out


_SENTINEL = "\u2063doc2atom-question\u2063"


def _encode_many(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens added: tok(texts) in one call, through the fast tokeniser's
    backend where there is one (the same ids, without the per-text Python objects transformers builds)."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def _prompt_ids_many(tok, questions: list[str]) -> list[list[int]]:
    """prompt_ids(tok, q) for every q, fast: the chat template is rendered once around a sentinel, the text before
    and after the question is tokenised once, and the questions alone in one batched call (rendering the template
    per question cost ~1 ms/atom, tokenising the whole rendered prompts ~0.1 ms/question).

    ids(pre) + ids(q) + ids(post) is the tokenisation of the rendered prompt where the template puts the question
    between token boundaries (SmolLM2's: a newline before it, a special token after it). Checked against
    prompt_ids on the first, the last and six questions in between; the per-question path is the fallback."""
    if len(questions) < 4:
        return [prompt_ids(tok, q) for q in questions]
    try:
        from doc2atom.prompts import messages

        text = tok.apply_chat_template(messages(_SENTINEL), add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str) or text.count(_SENTINEL) != 1:
            raise ValueError("sentinel not rendered once")
        pre, post = text.split(_SENTINEL)
        pre_ids, post_ids = _encode_many(tok, [pre, post]) if pre and post else (None, None)
        if pre_ids is None:
            raise ValueError("the question is not between two texts")
        ids = [pre_ids + q + post_ids for q in _encode_many(tok, [q.strip() for q in questions])]
        n = len(questions)
        for j in sorted({0, n - 1} | {n * i // 7 for i in range(1, 7)}):
            if ids[j] != prompt_ids(tok, questions[j]):
                raise ValueError("batched ids differ")
        return ids
    except Exception:  # any template the sentinel trick does not fit: the plain path
        return [prompt_ids(tok, q) for q in questions]


def _answer_ids_many(tok, answers: list[str]) -> list[list[int]]:
    """answer_ids(tok, a) for every a, in one batched tokeniser call."""
    if len(answers) < 4:
        return [answer_ids(tok, a) for a in answers]
    eos = answer_ids(tok, "")  # just the end-of-turn token (or nothing)
    out = [x + eos for x in _encode_many(tok, list(answers))]
    if out[0] != answer_ids(tok, answers[0]) or out[-1] != answer_ids(tok, answers[-1]):
        return [answer_ids(tok, a) for a in answers]
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


def _to_device(t: torch.Tensor, dev) -> torch.Tensor:
    """A host tensor on `dev`. To a GPU through pinned memory without blocking: a copy from pageable memory makes
    the host wait for the GPU's queue to drain, and a compile step made several (the GPU then idled while the host
    caught up)."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


def _to_host(t: torch.Tensor, chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """t on the CPU (ordinary memory). From a GPU, large tensors go through a pinned staging buffer in chunks: a
    copy into pageable memory ran at ~1.4 GB/s on the H200 machine (0.74 s for the weights of 4096 atoms)."""
    if not t.is_cuda or t.numel() * t.element_size() <= chunk_bytes:
        return t.cpu()
    src = t.contiguous().view(-1)
    out = torch.empty(src.numel(), dtype=t.dtype)
    n = max(1, chunk_bytes // t.element_size())
    stage = torch.empty(min(n, src.numel()), dtype=t.dtype, pin_memory=True)
    for i in range(0, src.numel(), n):
        m = min(n, src.numel() - i)
        stage[:m].copy_(src[i:i + m])  # into pinned memory: the DMA engine's speed
        out[i:i + m].copy_(stage[:m])
    return out.view(t.shape)


class _RowBank:
    """Every training sequence of a chunk, ready on the device: the hidden states entering layer L
    (right-padded), prompt and target lengths and target ids. A micro-batch is a gather, not a loop."""

    def __init__(self, h: torch.Tensor, seq_lens: list[int], prompt_lens: list[int], targets: list[list[int]], dev):
        """h: (rows, longest, d) hidden states entering layer L, right-padded (layers.lower_bank)."""
        self.h = h
        self.dev = dev
        seq = list(seq_lens)
        self.seq_cpu = seq
        self.plen_cpu = torch.tensor(prompt_lens, dtype=torch.long)
        self.alen_cpu = torch.tensor([len(t) for t in targets], dtype=torch.long)
        A = max(len(t) for t in targets)
        self.tgt = torch.tensor([list(t) + [0] * (A - len(t)) for t in targets], dtype=torch.long, device=dev)

    def batch(self, rows: list[int], T: int):
        """(h (b, T, d), target positions (n, 2), target ids (n,), row of each target (n,)) for bank rows.

        The index arrays are built on the host from the known lengths and sent in one non-blocking copy: no
        data-dependent shape on the device, so no wait for it."""
        r = torch.as_tensor(rows, dtype=torch.long)
        al = self.alen_cpu[r]
        trow = torch.repeat_interleave(torch.arange(len(r)), al)  # the batch row of each target token
        k = torch.arange(len(trow)) - torch.repeat_interleave(torch.cumsum(al, 0) - al, al)  # its place in the answer
        # logits at position j predict token j+1: answer token k sits at plen+k, predicted from plen+k-1
        p = self.plen_cpu[r][trow] - 1 + k
        packed = _to_device(torch.cat([r, trow, p, k]), self.dev)
        b, n = len(r), len(trow)
        r_d, trow_d, p_d, k_d = packed[:b], packed[b:b + n], packed[b + n:b + 2 * n], packed[b + 2 * n:]
        return self.h[r_d, :T], torch.stack([trow_d, p_d], 1), self.tgt[r_d[trow_d], k_d], trow_d


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
        seqs = [p + c for p, c, _ in self.items]
        self.bank = _RowBank(lower_bank(model, seqs, L, pad_id, cfg.max_tokens_per_step), [len(x) for x in seqs],
                             [len(p) for p, _, _ in self.items], [c for _, c, _ in self.items], dev)
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
        bank_rows = [i for _, i in part]
        ri = torch.tensor(bank_rows, device=dev)
        h0, pos, _, _ = bank.batch(bank_rows, max(bank.seq_cpu[i] for i in bank_rows))
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
                  progress: Callable[[int], None] | None = None, job_atoms: int | None = None) -> list[CompiledAtom]:
    """Train one micro-LoRA per example, `cfg.batch_atoms` at a time. Returns them in order.

    job_atoms: atoms of the whole job this call is part of (an ingest compiles in groups of documents), for
    cfg.cpu_fused="auto"; default len(examples)."""
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
    cfg = cfg.on(dev)  # a GPU takes gpu_batch_atoms and gpu_max_tokens_per_step
    # bf16 copies of the frozen weights, made once per call and dropped with it
    fast = Bf16Linears() if cfg.cpu_bf16 and dev.type == "cpu" and cpu_has_bf16_units() else None
    replay = _replay(model, names, cfg, fast, len(examples) if job_atoms is None else job_atoms)
    try:
        with _attention_backends(dev):
            for start in range(0, len(examples), cfg.batch_atoms):
                chunk = examples[start:start + cfg.batch_atoms]
                out.extend(_compile_chunk(model, tok, state, names, shapes, chunk, cfg, gen, rnd, pad_id, fast,
                                          replay))
                if progress:
                    progress(len(chunk))
    finally:
        state.clear()
        state.pools = {}
    return out


def _replay_mode(cfg: CompileConfig, cpu_fast: bool, supported: bool, job_atoms: int, cxx: bool,
                 compiled_before: bool = False) -> str:
    """What cfg.cpu_fused means for one compile call: "off", "eager" or "compile". "auto" compiles when the job
    (job_atoms: the whole ingest, not only this call's group) is large enough to repay the one-time compile, or
    when this process compiled already (nothing left to pay)."""
    if not cpu_fast or not supported or cfg.cpu_fused == "off":
        return "off"
    if cfg.cpu_fused == "auto":
        return "compile" if cxx and (compiled_before or job_atoms >= cfg.cpu_compile_min_atoms) else "off"
    return cfg.cpu_fused


def _replay(model, names, cfg: CompileConfig, fast, job_atoms: int):
    """compiler.fused.Replay for this call (cfg.cpu_fused; env DOC2ATOM_CPU_FUSED overrides it, e.g. for a knowledge
    base whose stored settings say otherwise), or None for the HF layers."""
    env = os.environ.get("DOC2ATOM_CPU_FUSED")
    if env:
        if env not in ("auto", "off", "eager", "compile"):
            raise ValueError(f"DOC2ATOM_CPU_FUSED must be auto, off, eager or compile; got {env!r}")
        cfg = cfg.model_copy(update={"cpu_fused": env})
    if fast is None or cfg.cpu_fused == "off":
        return None
    from compiler import fused

    before = fused.compiled_before(model)
    mode = _replay_mode(cfg, True, fused.supports(model), job_atoms, fused.have_cxx(), before)
    if mode == "off":
        return None
    if mode == "compile" and not before:
        log("compiling the replayed layers with torch.compile (once per process; ~40 s on 2 cores with a cold "
            "cache). CompileConfig.cpu_fused='off' skips it")
    return fused.Replay(model, first_layer(names), compile=mode == "compile", bf16=fast.bf16)


def _attention_backends(dev):
    """On a GPU, SDPA's flash and memory-efficient kernels before cuDNN's: the compile's passes change shape at
    every step, and cuDNN attention built a new plan per shape (~3 ms of host time a call, ~6 s of a 4096-atom
    Rhine compile on an H200, with the GPU waiting). Elsewhere: no change."""
    if dev.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def compile_statements(model, tok, texts: list[str], questions: list[list[str]], cfg: CompileConfig,
                       progress: Callable[[int], None] | None = None, job_atoms: int | None = None
                       ) -> list[CompiledAtom]:
    """Compile atoms from their statements and synthesised questions, with the configured objective
    (job_atoms: as in compile_atoms)."""
    answers = None
    if cfg.objective == "distill":
        from compiler.distill import teacher_answers

        answers, share = teacher_answers(model, tok, texts, questions)
    with _phase("tokenize", torch.device("cpu")):
        examples = make_examples(tok, texts, questions, answers)
    out = compile_atoms(model, tok, examples, cfg, progress, job_atoms)
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
        with _phase("init_forward", dev), _matmul_mode(fast):
            for part in groups:
                h0, pos, _, trow = bank.batch(part, max(bank.seq_cpu[j] for j in part))
                run_layers(model, h0, L, None)
                atoms.append(torch.tensor([row_atom[j] for j in part], device=dev)[trow])
                for n in names:
                    xs[n].append(cur[n][pos[:, 0], pos[:, 1]].float())
    finally:
        for h in hooks:
            h.remove()
    atom = torch.cat(atoms)
    with _phase("init_pack", dev):
        groups = _row_count_groups(atom, M)
    out = {}
    for n in names:
        x = torch.cat(xs[n])
        xs[n] = []
        D = x.new_empty(M, r, x.shape[1])
        noise = _start_noise(M, x.shape[1], r, x)  # one draw for all atoms, as one pack of them would take
        for ids, rows, local in groups:
            with _phase("init_pack", dev):
                X = _pack_by_atom(x[rows], local, len(ids), r)
            with _phase("init_directions", dev):
                # zero rows (atoms with fewer rows than the longest of the group) leave the directions alone
                D[ids] = _top_directions(X, r, noise=noise[ids]) / math.sqrt(3.0)  # the uniform init's norm
        out[n] = D
    return out


def _row_count_groups(atom: torch.Tensor, M: int, n_groups: int = 4):
    """The atoms split into up to n_groups groups of similar row counts, as [(atom ids, their rows in x, each row's
    atom index within the group)]. Packing each group to its own longest atom instead of all M atoms to the
    longest one: on Rhine the longest atom has ~3x the mean rows, and the padded fp32 block (12.8 GB per module at
    4096 atoms) was what the data init's products spent their time reading."""
    counts = torch.bincount(atom, minlength=M).cpu()
    order = torch.sort(counts, stable=True).indices
    pos = torch.empty(M, dtype=torch.long)
    out = []
    for part in torch.tensor_split(order, min(n_groups, M)):
        if not len(part):
            continue
        ids = part.to(atom.device)
        pos[part] = torch.arange(len(part))
        member = torch.zeros(M, dtype=torch.bool)
        member[part] = True
        rows = member.to(atom.device)[atom].nonzero().flatten()
        out.append((ids, rows, pos.to(atom.device)[atom[rows]]))
    return out


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


def _top_directions(X: torch.Tensor, r: int, iters: int = 8, method: str = "gs",
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """(M, r, d): orthonormal rows spanning (approximately) the top-r right singular vectors of each X[m] (n, d).

    Block subspace iteration on X^T X, batched over m: a few (n, d) products instead of M full SVDs
    (a full SVD per atom and module cost more than the training steps it saved). Each iteration multiplies by
    X^T X + c I (c = 1e-5 of the trace: the same eigenvectors, but a column outside X's row space stays a
    direction rather than rounding noise) and re-orthonormalises the r columns: method "gs" by classical
    Gram-Schmidt applied twice (a handful of batched element-wise ops for r <= 16), "qr" by torch.linalg.qr
    (the plain path; on CUDA a batched QR of 1024 tall matrices was the slow part of the data init). The
    final r x r Rayleigh-Ritz eigenproblem is solved on the CPU in float64.

    noise: (M, d, r), the small random part of the starting columns; None = drawn here (seed 0). A caller that
    splits the atoms into groups passes each group its slice of one draw, so the split changes nothing."""
    # on a GPU the products run in TF32: these are starting directions, not an exact SVD (fp32 GEMMs were ~1.3 of
    # the 1.7 s of a 4096-atom data init on an H200)
    with _tf32_matmuls() if X.is_cuda else contextlib.nullcontext():
        return _subspace_iteration(X, r, iters, method, noise)


@contextlib.contextmanager
def _tf32_matmuls():
    """fp32 matrix products on a GPU in TF32 inside the block (the setting is restored after)."""
    m = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(m, "fp32_precision") else ("allow_tf32", True)  # torch < 2.9
    old = getattr(m, name)
    setattr(m, name, value)
    try:
        yield
    finally:
        setattr(m, name, old)


def _subspace_iteration(X: torch.Tensor, r: int, iters: int, method: str, noise: torch.Tensor | None) -> torch.Tensor:
    """_top_directions' work, in the current matmul precision."""
    M, n, d = X.shape
    V = 1e-3 * (_start_noise(M, d, r, X) if noise is None else noise.to(X))
    k = min(n, r)
    V[:, :, :k] += X[:, :k].transpose(1, 2)  # start from the first rows (inside the row space), plus a little noise
    c = (1e-5 * X.pow(2).sum((1, 2)))[:, None, None]  # (M, 1, 1)
    Xt = X.transpose(1, 2)
    for _ in range(iters):
        Y = Xt @ (X @ V) + c * V
        V = torch.linalg.qr(Y).Q if method == "qr" else _orthonormal_columns(Y)
    # order the columns by captured energy (Rayleigh-Ritz on the small r x r problem)
    S = V.transpose(1, 2) @ (Xt @ (X @ V))
    _, U = torch.linalg.eigh(S.double().cpu())
    return (V @ U.flip(-1).to(V)).transpose(1, 2)


def _start_noise(M: int, d: int, r: int, like: torch.Tensor) -> torch.Tensor:
    """(M, d, r) standard normal, seed 0, on like's device: _top_directions' starting noise."""
    g = torch.Generator(device=like.device).manual_seed(0)
    return torch.randn(M, d, r, generator=g, device=like.device, dtype=like.dtype)


def _orthonormal_columns(Y: torch.Tensor) -> torch.Tensor:
    """(M, d, r) with orthonormal columns spanning Y's columns (M, d, r), column by column as QR's Q does (up to
    signs): classical Gram-Schmidt, twice per column for orthogonality in float32."""
    cols: list[torch.Tensor] = []
    for j in range(Y.shape[2]):
        v = Y[:, :, j]
        for _ in range(2):
            if cols:
                Q = torch.stack(cols, 2)  # (M, d, j)
                v = v - (Q @ (Q.transpose(1, 2) @ v[:, :, None]))[:, :, 0]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cols.append(v)
    return torch.stack(cols, 2)


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


class _Cycles:
    """stop_questions > 0, vectorised over the atoms of a chunk: each atom's fixed question cycle, its cursor and
    each question's latest min answer-token p. The same rows and decisions as _next_questions / _recent_above
    (tested against them); a Python loop over 1024 atoms a step cost more host time than the GPU's step."""

    def __init__(self, chunk, order: list[list[int]], cfg: CompileConfig):
        M = len(chunk)
        self.nq = torch.tensor([len(ex.prompts) for ex in chunk])
        self.order = torch.zeros(M, int(self.nq.max()), dtype=torch.long)
        for a, o in enumerate(order):
            self.order[a, :len(o)] = torch.tensor(o)
        self.cursor = torch.zeros(M, dtype=torch.long)
        self.latest = torch.zeros(self.order.shape, dtype=torch.float64)  # unseen: 0.0, as latest[a].get(q, 0.0)
        self.k = self.nq.clamp(max=cfg.questions_per_step)
        self.ks = self.nq.clamp(max=cfg.stop_questions)
        self.target = cfg.target_prob

    def next_rows(self, act: torch.Tensor) -> list[tuple[int, int]]:
        """[(atom, question)] of this step for the active atoms (ascending), each atom's next k questions."""
        k, nq, cur = self.k[act], self.nq[act], self.cursor[act]
        i = torch.arange(int(k.max()))[None]
        q = self.order[act[:, None], (cur[:, None] + i) % nq[:, None]]
        m = i < k[:, None]
        self.cursor[act] += k
        return list(zip(act[:, None].expand_as(q)[m].tolist(), q[m].tolist()))

    def record(self, rows: list[tuple[int, int]], p: torch.Tensor) -> None:
        """The latest min p of each (atom, question) row measured this step (rows in order; a later one wins)."""
        if rows:
            a = torch.tensor([r[0] for r in rows])
            q = torch.tensor([r[1] for r in rows])
            self.latest[a, q] = p.double()  # a row appears once a step (k <= questions), so no write conflict

    def recent_above(self, act: torch.Tensor) -> torch.Tensor:
        """(len(act),) bool: the latest p of each of the atom's last ks questions of its cycle >= target."""
        ks, nq, cur = self.ks[act], self.nq[act], self.cursor[act]
        j = torch.arange(int(ks.max()))[None]
        q = self.order[act[:, None], (cur[:, None] - 1 - j) % nq[:, None]]
        ok = (self.latest[act[:, None], q] >= self.target) | (j >= ks[:, None])
        return ok.all(1) & (cur >= ks)


def _compile_chunk(model, tok, state, names, shapes, chunk, cfg, gen, rnd, pad_id, fast=None, replay=None
                   ) -> list[CompiledAtom]:
    t0 = time.perf_counter()
    M, r = len(chunk), cfg.rank
    dev = next(model.parameters()).device
    params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    # the data init overwrites A: skip drawing it (gen then draws nothing else, unless B starts nonzero)
    draw_a = cfg.init_a != "data" or cfg.init_b_std > 0
    for name in names:
        d_in, d_out = shapes[name]
        bound = 1.0 / math.sqrt(d_in)
        if draw_a:
            A = (torch.rand(M, r, d_in, generator=gen) * 2 - 1).mul_(bound).to(dev).requires_grad_(True)
        else:
            A = torch.empty(M, r, d_in, device=dev).requires_grad_(True)
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
    with _phase("lower", dev), _matmul_mode(fast if replay is None else None):
        seqs = [chunk[a].prompts[q] + chunk[a].target(q) for a, q in keys]
        bank = _RowBank(lower_bank(model, seqs, L, pad_id, cfg.max_tokens_per_step, replay), [len(x) for x in seqs],
                        [len(chunk[a].prompts[q]) for a, q in keys], [chunk[a].target(q) for a, q in keys], dev)
        del seqs
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
    cyc = _Cycles(chunk, order, cfg) if cfg.stop_questions else None
    cursor = [0] * M  # stop_questions 0 only (the cycles keep their own cursor)
    off = [0] * M  # bank row of each atom's question 0
    for a in range(1, M):
        off[a] = off[a - 1] + len(chunk[a - 1].prompts)
    tlen = bank.alen_cpu.float()  # answer tokens of each bank row
    while bool(active.any()):
        with _phase("step_host", dev):
            act_t = active.nonzero().flatten()
            act = act_t.tolist()
            if cyc is not None:
                rows = cyc.next_rows(act_t)
            else:
                rows = []
                for a in act:
                    rows += [(a, q) for q in _next_questions(chunk, a, cfg, rnd, order, cursor)]
            ra = torch.tensor([a for a, _ in rows], dtype=torch.long)
            per_atom = torch.zeros(M, device=dev)
            pmin = torch.ones(M, device=dev)
            counts = torch.zeros(M).index_add_(0, ra, tlen[torch.tensor([off[a] + q for a, q in rows])])
            counts = _to_device(counts, dev)
            composing = M > 1 and rnd.random() < cfg.compose_prob
            prows, seen = [], []  # each row's min answer-token p (device) and its (atom, question)
            mbs = _micro_batches(chunk, rows, cfg.max_tokens_per_step, cfg.sort_rows)
        for mb in mbs:
            with _phase("step_fwd_bwd", dev):
                bank_rows = [off[a] + q for a, q in mb]
                h0, pos, tgt, trow = bank.batch(bank_rows, max(bank.seq_cpu[j] for j in bank_rows))
                row_atom = torch.tensor([a for a, _ in mb])
                idx, w = _slots(row_atom, M, cfg.compose_others if composing else 0, rnd)
                # the slots are built here, below the pools' size: no range check (a host sync) per pass
                state.set(_to_device(idx, dev), _to_device(w, dev), trusted_size=2 * M if composing else M)
                row_atom = _to_device(row_atom, dev)
                with torch.enable_grad(), _matmul_mode(fast if replay is None else None):
                    state.pools = _pools(params, cfg.scale, frozen_copy=composing)
                    if replay is not None:  # cfg.cpu_fused: the same maths as plain functions (compiler.fused)
                        logp = replay.logp(h0, lora_inputs(state.pools, state.idx, state.w), pos, tgt)
                    else:
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
                    if cyc is not None:
                        prows.append(torch.ones(len(mb), device=dev).scatter_reduce(
                            0, trow, logp.detach().exp(), reduce="amin", include_self=True))
                        seen += mb
        if cfg.locality_weight > 0:
            with _phase("step_locality", dev):
                _locality_step(model, state, params, chunk, act, cfg, rnd, negatives, L, fast)
        state.clear()
        with _phase("step_host", dev), torch.no_grad():
            # one device-to-host copy a step: min p and mean loss of every atom, min p of every row
            got = torch.cat([pmin, per_atom / counts] + prows).cpu()
            last_p[act_t] = got[:M][act_t]
            last_loss[act_t] = got[M:2 * M][act_t]
            if cyc is not None:
                cyc.record(seen, got[2 * M:])
            steps[act_t] += 1
            boost = None
            if cfg.warm_lr_steps > 0 and cfg.warm_lr_factor != 1.0:
                boost = _to_device(torch.where(steps <= cfg.warm_lr_steps, cfg.warm_lr_factor, 1.0), dev)
        with _phase("step_opt", dev):
            opt.step(_to_device(active, dev), _to_device(steps, dev), boost)
            if bases is not None:
                for n, (A, _) in params.items():
                    project_out(A.data, bases[n])
        with _phase("step_host", dev):
            above = cyc.recent_above(act_t) if cyc is not None else last_p[act_t] >= cfg.target_prob
            st, re = steps[act_t], reached[act_t]
            re = torch.where((re < 0) & above & (st >= cfg.min_steps), st, re)
            reached[act_t] = re
            done = ((re >= 0) & (st >= re + cfg.extra_steps)) | (st >= cfg.max_steps)
            active[act_t[done]] = False
    secs = (time.perf_counter() - t0) / M
    res = []
    with _phase("finish", dev), torch.no_grad():
        # each atom's tensors are views of one host copy per module (unbind: no per-atom copy, ~80k of them
        # cost seconds at 4096 atoms); the stats leave their tensors once
        host = {n: (_to_host(A.detach().float()).unbind(0), _to_host((B * cfg.scale).detach().float()).unbind(0))
                for n, (A, B) in params.items()}
        st, lp, ll, ok = steps.tolist(), last_p.tolist(), last_loss.tolist(), (reached >= 0).tolist()
        for a in range(M):
            w = {n: (As[a], Bs[a]) for n, (As, Bs) in host.items()}
            res.append(CompiledAtom(w, {"steps": st[a], "min_answer_prob": round(lp[a], 4), "loss": round(ll[a], 4),
                                        "converged": ok[a], "seconds": round(secs, 3)}))
    return res


def log(msg: str) -> None:
    print(f"doc2atom: {msg}", file=sys.stderr, flush=True)
