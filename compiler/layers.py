"""Run a decoder's layers in two parts: the frozen lower part once, the part with atoms many times.

Atoms only touch layers >= L, so the hidden states entering layer L do not depend on the atom
being trained: the compiler computes them once per training sequence and replays only the upper
layers at every optimiser step. The layers are called directly (no change to the model object,
so a model shared with a serving thread is safe) with an explicit additive causal mask, which
makes right padding harmless: a real position never attends to a later (padded) one. With SDPA the mask
is left out and SDPA's own causal flag does the same.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
    for part in _length_groups(seqs, max_tokens):
        ids, _ = pad([seqs[i] for i in part], pad_id)
        h = model.model.embed_tokens(ids.to(dev))
        if L > 0:
            h = run_layers(model, h, 0, L)
        for j, i in enumerate(part):
            out[i] = h[j, :len(seqs[i])].clone()
    return out  # type: ignore[return-value]


def _length_groups(seqs: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Indices of seqs in passes of at most max_tokens padded tokens, ascending length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    groups: list[list[int]] = [[]]
    for i in order:  # ascending length: the newest row is the longest of its group
        if groups[-1] and len(seqs[i]) * (len(groups[-1]) + 1) > max_tokens:
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if g]


@torch.no_grad()
def lower_bank(model, seqs: list[list[int]], L: int, pad_id: int, max_tokens: int = 4096, replay=None) -> torch.Tensor:
    """stack_right(lower_states(...)) without a copy per sequence: (len(seqs), longest, d) on the model's device,
    row i the hidden states entering layer L of seqs[i], zero beyond its length. Each pass is written in one op
    (tens of thousands of per-sequence copies cost seconds at a 4096-atom chunk on a GPU)."""
    dev = next(model.parameters()).device
    lens = torch.tensor([len(s) for s in seqs], device=dev)
    out = None
    for part in _length_groups(seqs, max_tokens):
        T = max(len(seqs[i]) for i in part)
        ids = torch.tensor([seqs[i] + [pad_id] * (T - len(seqs[i])) for i in part], dtype=torch.long)  # right padding
        h = model.model.embed_tokens(ids.to(dev))
        if L > 0:  # replay: compiler.fused.Replay (cfg.cpu_fused), the same layers as plain functions
            h = run_layers(model, h, 0, L) if replay is None else replay.hidden(h, 0, L)
        if out is None:
            out = h.new_zeros(len(seqs), int(lens.max()), h.shape[-1])
        rows = torch.tensor(part, device=dev)
        keep = torch.arange(h.shape[1], device=dev)[None] < lens[rows][:, None]
        out[rows, :h.shape[1]] = torch.where(keep[..., None], h, torch.zeros((), dtype=h.dtype, device=dev))
    return out


def stack_right(rows: list[torch.Tensor]) -> torch.Tensor:
    """(b, T, d) right-padded with zeros from rows of shape (t_i, d)."""
    T = max(r.shape[0] for r in rows)
    h = rows[0].new_zeros(len(rows), T, rows[0].shape[1])
    for j, r in enumerate(rows):
        h[j, :r.shape[0]] = r
    return h


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX; Linux /proc/cpuinfo flags).

    Without them oneDNN emulates bf16 products, which is slower than fp32: Bf16Linears is then skipped.
    `DOC2ATOM_CPU_BF16=0/1` overrides the detection."""
    env = os.environ.get("DOC2ATOM_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Bf16Linears(torch.overrides.TorchFunctionMode):
    """Inside this mode, a linear layer with a frozen fp32 weight multiplies in bf16 and hands back fp32.

    For compiling on a CPU with bf16 matrix units (AMX): the weight's bf16 copy is made once and
    kept for the life of the mode (the model itself is not touched), the input is rounded to bf16
    for the product, and the output (and, through autograd, the input gradient) returns to fp32,
    so norms, attention, residual sums, the atoms' own low-rank products and every loss stay fp32.
    Weights that require grad are left alone."""

    def __init__(self):
        super().__init__()
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._last: tuple | None = None  # (input, version, bf16 copy, grad mode): q/k/v and gate/up share an input

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        last = self._last
        grad = torch.is_grad_enabled()
        if last is not None and last[0] is x and last[1] == x._version and last[3] == grad:
            return last[2]
        xb = x.to(torch.bfloat16)
        self._last = (x, x._version, xb, grad)
        return xb

    def bf16(self, t: torch.Tensor) -> torch.Tensor:
        """t's bf16 copy, made once for the life of the mode (compiler.fused.Replay takes its weights from here
        too, so the data init's HF pass and the replay share one copy)."""
        hit = self._cache.get(id(t))
        if hit is None or hit[0] is not t:
            hit = (t, t.detach().to(torch.bfloat16))
            self._cache[id(t)] = hit
        return hit[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dtype == torch.float32 and w.dtype == torch.float32 and not w.requires_grad and (
                    b is None or not b.requires_grad):
                out = func(self._input(x), self.bf16(w), None if b is None else self.bf16(b))
                return out.to(torch.float32)
        return func(*args, **kwargs)

    def __exit__(self, *exc):
        self._last = None  # do not keep the last activation alive between uses
        return super().__exit__(*exc)
