"""CPU compile: the replayed upper layers of a Llama-style decoder as plain functions of bf16 weight copies,
optionally fused by torch.compile (inductor).

The compile loop's forward+backward through the top layers spent ~20% of its CPU time in unfused element-wise fp32
ops (norms, rotary, SiLU, residual sums) and ~11% in fp32<->bf16 casts around the bf16 matmuls (Bf16Linears). Here
each decoder layer is one function `_layer` (the same maths as transformers' LlamaDecoderLayer with SDPA, causal,
no mask); `_head` is the final norm, LM head and log-softmax at the answer-predicting positions only. With
compile=True both go through torch.compile, so inductor fuses the norm + cast + rotary + SiLU + residual work and
their backward; the frozen products stay aten bf16 matmuls (oneDNN, AMX here), attention stays fp32 SDPA. Without
compile the functions give the HF layers' numbers under Bf16Linears (tests/compiler/test_fused.py).

Used by compiler.train when CompileConfig.cpu_fused asks for it (the default "auto": compiled when a C++
compiler is found and the job has at least cpu_compile_min_atoms atoms, or once this process compiled). A
compile that fails (no working compiler, an inductor error) falls back to the plain functions with a warning,
before any result depends on it.

Only for models whose layers are LlamaDecoderLayer-shaped (`supports(model)`); the atoms' deltas are passed per
row as (a_cat (b, K*r, d_in), b_cat (b, K*r, d_out)), the weights already folded into b_cat.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import torch
import torch.nn.functional as F

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def supports(model) -> bool:
    """True for a HF decoder whose layers this module replays exactly (Llama maths, SiLU MLP, no biases, SDPA)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in ("llama",) or getattr(cfg, "hidden_act", None) != "silu":
        return False
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False
    return getattr(cfg, "_attn_implementation", None) == "sdpa"  # rotary comes from the model's own module


def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))


def _proj(x16: torch.Tensor, xf: torch.Tensor | None, w16: torch.Tensor, lora) -> torch.Tensor:
    """fp32 output of x @ W^T (bf16 product) plus the atoms' delta (fp32) when lora is given."""
    y = F.linear(x16, w16).float()
    if lora is not None:
        a, b = lora
        x = xf if xf is not None else x16.float()
        y = y + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b)
    return y


def _layer(h, cos, sin, w, lora, eps: float, nh: int, nkv: int):
    """One decoder layer. h: (b, T, d) fp32; cos/sin (1, T, hd) fp32;
    w = (ln1, q, k, v, o, ln2, gate, up, down), the projections bf16; lora: 7 entries (None or (a_cat, b_cat))."""
    ln1, wq, wk, wv, wo, ln2, wg, wu, wd = w
    lq, lk, lv, lo, lg, lu, ld = lora
    b, T, d = h.shape
    x = _norm(h, ln1, eps)
    x16 = x.to(torch.bfloat16)
    q = _proj(x16, x, wq, lq).view(b, T, nh, -1).transpose(1, 2)
    k = _proj(x16, x, wk, lk).view(b, T, nkv, -1).transpose(1, 2)
    v = _proj(x16, x, wv, lv).view(b, T, nkv, -1).transpose(1, 2)
    c, s = cos[:, None], sin[:, None]
    half = q.shape[-1] // 2
    q = q * c + torch.cat((-q[..., half:], q[..., :half]), -1) * s
    k = k * c + torch.cat((-k[..., half:], k[..., :half]), -1) * s
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o = o.transpose(1, 2).reshape(b, T, -1)
    o = _proj(o.to(torch.bfloat16), o if lo is not None else None, wo, lo)
    h = h + o
    x = _norm(h, ln2, eps)
    x16 = x.to(torch.bfloat16)
    m = F.silu(_proj(x16, x, wg, lg)) * _proj(x16, x, wu, lu)
    m = _proj(m.to(torch.bfloat16), m if ld is not None else None, wd, ld)
    return h + m


def _head(hsel, norm_w, lm16, tgt, eps: float):
    """log p(target) at the gathered positions: final norm, LM head (bf16 product), fp32 log-softmax."""
    x = _norm(hsel, norm_w, eps).to(torch.bfloat16)
    logits = F.linear(x, lm16).float()
    return torch.log_softmax(logits, -1).gather(1, tgt[:, None]).squeeze(1)


class Replay:
    """The upper layers [L, n) + final norm + LM head of `model` as functions of bf16 weight copies (made once)."""

    def __init__(self, model, L: int, compile: bool = False, bf16=None):
        """bf16: t -> t's bf16 copy (a Bf16Linears' `bf16`, to share its copies); default a copy made here."""
        inner = model.model
        cfg = model.config
        self.model, self.L = model, L
        self._bf16 = bf16 or (lambda t: t.detach().to(torch.bfloat16))
        self.eps = float(cfg.rms_norm_eps)
        self.nh, self.nkv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self._w: dict[int, tuple] = {}
        self.weights = [self.layer_weights(i) for i in range(L, len(inner.layers))]
        self.norm_w = inner.norm.weight.detach()
        self.lm16 = self._bf16(model.lm_head.weight)
        self.compiled = compile
        self.layer_fn, self.head_fn = _compiled() if compile else (_layer, _head)
        if compile:
            _SEEN.add(_signature(model))
        self._tried: set[str] = set()  # the methods whose compiled first call went through

    def _guarded(self, what: str, call):
        """call(); the first compiled call of each method, if compiling fails, falls back to the plain functions
        (a failed compile raises before anything is computed, so the call is simply made again)."""
        if not self.compiled or what in self._tried:
            return call()
        try:
            out = call()
        except Exception as e:  # noqa: BLE001 - inductor/C++ errors have no common base class
            print(f"doc2atom: torch.compile of the replayed layers failed ({type(e).__name__}: {str(e)[:200]}); "
                  "continuing without it (CompileConfig.cpu_fused='off' or 'eager' skips the attempt)",
                  file=sys.stderr, flush=True)
            global _BROKEN
            _BROKEN = True  # "auto" stops trying in this process
            _SEEN.discard(_signature(self.model))
            self.compiled = False
            self.layer_fn, self.head_fn = _layer, _head
            return call()
        self._tried.add(what)
        return out

    def layer_weights(self, i: int) -> tuple:
        """Layer i's (ln1, q, k, v, o, ln2, gate, up, down): norms as they are, projections as bf16 copies (once)."""
        if i not in self._w:
            layer = self.model.model.layers[i]
            at, mlp = layer.self_attn, layer.mlp
            lin = [at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            w16 = [self._bf16(getattr(m, "base", m).weight) for m in lin]
            self._w[i] = (layer.input_layernorm.weight.detach(), *w16[:4], layer.post_attention_layernorm.weight.detach(),
                          *w16[4:])
        return self._w[i]

    @torch.no_grad()
    def hidden(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Hidden states after layers [start, stop) without atoms (layers.run_layers' job, fp32 in and out)."""
        return self._guarded("hidden", lambda: self._hidden(h, start, stop))

    def _hidden(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        b, T = h.shape[:2]
        if self.compiled and b == 1:
            return self._hidden(h.expand(2, -1, -1).contiguous(), start, stop)[:1]
        cos, sin = self.model.model.rotary_emb(h, torch.arange(T, device=h.device)[None])
        if self.compiled:
            _dynamic(cos, 1), _dynamic(sin, 1)
        none = (None,) * len(PROJ)
        for i in range(start, stop):
            if self.compiled:
                _dynamic(h, 0, 1)
            h = self.layer_fn(h, cos, sin, self.layer_weights(i), none, self.eps, self.nh, self.nkv)
        return h

    def logp(self, h0: torch.Tensor, loras: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
             pos: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """log p of each target token. h0 (b, T, d) fp32 entering layer L; loras[(layer, proj)] = (a_cat, b_cat);
        pos (n, 2) (row, position) predicting tgt (n,)."""
        return self._guarded("logp", lambda: self._logp(h0, loras, pos, tgt))

    def _logp(self, h0, loras, pos, tgt) -> torch.Tensor:
        b, T = h0.shape[:2]
        if self.compiled and b == 1:  # one row: doubled, so that one dynamic graph (sizes >= 2) serves every pass
            h0 = h0.expand(2, -1, -1).contiguous()
            loras = {k: (a.expand(2, -1, -1).contiguous(), c.expand(2, -1, -1).contiguous())
                     for k, (a, c) in loras.items()}
        cos, sin = self.model.model.rotary_emb(h0, torch.arange(T, device=h0.device)[None])
        h = h0
        if self.compiled:
            _dynamic(cos, 1), _dynamic(sin, 1)
            for a, c in loras.values():
                _dynamic(a, 0), _dynamic(c, 0)
        for i, w in enumerate(self.weights):
            li = self.L + i
            lo = tuple(loras.get((li, p)) for p in PROJ)
            if self.compiled:
                _dynamic(h, 0, 1)
            h = self.layer_fn(h, cos, sin, w, lo, self.eps, self.nh, self.nkv)
        hs = h[pos[:, 0], pos[:, 1]]
        if self.compiled:
            _dynamic(hs, 0), _dynamic(tgt, 0)
        return self.head_fn(hs, self.norm_w, self.lm16, tgt, self.eps)


_COMPILED: dict = {}


def _dynamic(t: torch.Tensor, *dims: int) -> None:
    """Mark t's dims (rows, tokens) dynamic for torch.compile from the first call: no static graph compiled first."""
    import torch._dynamo

    for d in dims:
        torch._dynamo.maybe_mark_dynamic(t, d)


def _compiled():
    """torch.compile'd (_layer, _head), made once per process (their compiled code is kept across compile calls).
    Sizes are marked dynamic at the first call (_dynamic), not dynamic=True (measured slower to compile)."""
    import torch._dynamo

    # variants of _layer: first replayed layer (its input needs no gradient) or not, no-grad passes, the atoms on
    # other projections: more than the default limit of 8 in one process
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if not _COMPILED:
        _COMPILED["fns"] = (torch.compile(_layer), torch.compile(_head))
    return _COMPILED["fns"]


_BROKEN = False  # a compile failed in this process


def have_cxx() -> bool:
    """Whether a C++ compiler that inductor's CPU backend can use is on PATH (or named by $CXX), and no compile
    failed in this process."""
    if _BROKEN:
        return False
    cxx = os.environ.get("CXX")
    return any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"])


_SEEN: set = set()  # model signatures whose layers this process compiled


def _signature(model) -> tuple:
    c = model.config
    return (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            str(next(model.parameters()).dtype))


def compiled_before(model) -> bool:
    """Whether this process already compiled the functions for a model of these shapes (later compile calls of
    such a model reuse the graphs: nothing left to pay)."""
    return _signature(model) in _SEEN


_NAME = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")


def lora_inputs(pools: dict, idx: torch.Tensor, w: torch.Tensor) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """Per target module, (a_cat (b, K*r, d_in), b_cat (b, K*r, d_out)) for rows with slots idx (b, K) and weights
    w (b, K): delta = (x @ a_cat^T) @ b_cat, the same sum as compiler.compose.compose_delta_torch."""
    out = {}
    mask = idx >= 0
    safe = idx.clamp(min=0).long()
    for name, (A, B) in pools.items():
        m = _NAME.search(name)
        if m is None:
            raise ValueError(f"not a decoder projection name: {name}")
        b, K = idx.shape
        r = A.shape[1]
        a_cat = A[safe].reshape(b, K * r, A.shape[2])
        wm = (w.to(B.dtype) * mask.to(B.dtype)).repeat_interleave(r, dim=1)  # (b, K*r)
        b_cat = B[safe].permute(0, 1, 3, 2).reshape(b, K * r, B.shape[1]) * wm[:, :, None]
        out[(int(m.group(1)), m.group(2))] = (a_cat.contiguous(), b_cat.contiguous())  # one stride pattern for b=1
    return out
