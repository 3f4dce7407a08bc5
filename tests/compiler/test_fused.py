"""compiler.fused (cfg.cpu_fused experiment): the replayed layers as plain functions against the HF layers."""

from __future__ import annotations

import shutil

import pytest
import torch

from compiler import fused
from compiler.compose import compose_delta_torch
from compiler.layers import Bf16Linears, run_layers
from compiler.lora import attach, target_names


def _model():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _case(model, names, b, T, K=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    d, M, r = model.config.hidden_size, 3, 2
    pools = {}
    for n in names:
        lin = model.get_submodule(n)
        pools[n] = ((torch.randn(M, r, lin.in_features, generator=g) * 0.3).requires_grad_(),
                    (torch.randn(M, lin.out_features, r, generator=g) * 0.3).requires_grad_())
    h0 = torch.randn(b, T, d, generator=g)
    pos = torch.stack([torch.arange(b).repeat_interleave(3), torch.randint(0, T, (3 * b,), generator=g)], 1)
    tgt = torch.randint(0, 50, (3 * b,), generator=g)
    idx = torch.randint(0, M, (b, K), generator=g)
    w = torch.rand(b, K, generator=g)
    return pools, h0, pos, tgt, idx, w


def _grads(pools, fn):
    for A, B in pools.values():
        A.grad = B.grad = None
    lp = fn()
    lp.sum().backward()
    return lp.detach(), torch.cat([t.grad.flatten() for ab in pools.values() for t in ab])


def _hf(model, state, pools, h0, pos, tgt, idx, w, L):
    state.pools = pools
    state.set(idx, w)
    with Bf16Linears():
        h = run_layers(model, h0, L, None, final_norm=True)
        lp = torch.log_softmax(model.lm_head(h[pos[:, 0], pos[:, 1]]).float(), -1).gather(1, tgt[:, None]).squeeze(1)
    state.clear()
    return lp


@pytest.mark.parametrize("modules,K", [(["down_proj"], 1), (["q_proj", "v_proj", "o_proj", "up_proj"], 2)])
def test_eager_replay_matches_hf_layers_with_bf16_linears(modules, K):
    model = _model()
    L = 2
    names = target_names(model, modules, [2, 3])
    state = attach(model, names)
    assert fused.supports(model)
    rep = fused.Replay(model, L)
    for b, T in ((3, 9), (1, 5)):
        pools, h0, pos, tgt, idx, w = _case(model, names, b, T, K)
        lr, gr = _grads(pools, lambda: _hf(model, state, pools, h0, pos, tgt, idx, w, L))
        lm, gm = _grads(pools, lambda: rep.logp(h0, fused.lora_inputs(pools, idx, w), pos, tgt))
        torch.testing.assert_close(lm, lr, rtol=1e-4, atol=1e-4)
        assert float((gm - gr).norm() / gr.norm()) < 1e-3
        h1 = rep.hidden(h0, 0, L)
        with torch.no_grad(), Bf16Linears():
            torch.testing.assert_close(h1, run_layers(model, h0, 0, L), rtol=1e-5, atol=1e-5)


def test_lora_inputs_give_compose_delta():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 2, 6, generator=g), torch.randn(4, 5, 2, generator=g)
    x = torch.randn(3, 7, 6, generator=g)
    idx = torch.tensor([[0, 2], [3, -1], [1, 1]])
    w = torch.rand(3, 2, generator=g)
    (a, c), = fused.lora_inputs({"model.layers.1.mlp.down_proj": (A, B)}, idx, w).values()
    torch.testing.assert_close(torch.bmm(torch.bmm(x, a.transpose(1, 2)), c), compose_delta_torch(x, A, B, idx, w))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_replay_tracks_eager_without_recompiling_per_shape(monkeypatch):
    """torch.compile'd layers: bf16-rounding close to the eager functions, and new (rows, tokens) shapes, one row
    included, reuse the graphs of the first calls."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(fused, "_SEEN", set())  # later tests' "auto" must not see this model as compiled

    model = _model()
    L = 2
    names = target_names(model, ["down_proj"], [2, 3])
    attach(model, names)
    eager, comp = fused.Replay(model, L), fused.Replay(model, L, compile=True)

    def run(rep, b, T):
        pools, h0, pos, tgt, idx, w = _case(model, names, b, T, seed=b * 100 + T)
        return _grads(pools, lambda: rep.logp(h0, fused.lora_inputs(pools, idx, w), pos, tgt))

    run(comp, 3, 9)
    comp.hidden(torch.randn(3, 9, 32), 0, L)
    graphs = counters["stats"]["unique_graphs"]
    for b, T in ((5, 12), (2, 4), (1, 7)):
        le, ge = run(eager, b, T)
        lc, gc = run(comp, b, T)
        torch.testing.assert_close(lc, le, rtol=0.05, atol=0.05)
        assert torch.nn.functional.cosine_similarity(gc, ge, dim=0) > 0.99
        h = torch.randn(b, T, 32)
        torch.testing.assert_close(comp.hidden(h, 0, L), eager.hidden(h, 0, L), rtol=0.02, atol=0.02)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile for new shapes


@pytest.mark.parametrize("mode", ["eager"])
def test_compile_atoms_with_fused_replay_tracks_the_default(tiny_base, monkeypatch, mode):
    from compiler import layers
    from compiler.config import CompileConfig
    from compiler.train import compile_atoms, make_examples
    from doc2atom.models import load_base

    monkeypatch.setenv("DOC2ATOM_CPU_BF16", "1")
    layers.cpu_has_bf16_units.cache_clear()
    model, tok = load_base(str(tiny_base))
    assert fused.supports(model)  # the fused path really runs
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a letter too."],
                       [["What is alpha?", "Tell me of alpha."], ["What is beta?", "Tell me of beta."]])
    kw = dict(max_steps=3, min_steps=3, questions=2, batch_atoms=2, seed=3, layers=[-1])
    ref = compile_atoms(model, tok, ex, CompileConfig(**kw))
    got = compile_atoms(model, tok, ex, CompileConfig(cpu_fused=mode, **kw))
    for a, b in zip(ref, got):
        assert a.stats["steps"] == b.stats["steps"]
        assert abs(a.stats["loss"] - b.stats["loss"]) < 1e-3 * abs(a.stats["loss"]) + 1e-3, (a.stats, b.stats)
        for n in a.weights:
            torch.testing.assert_close(b.weights[n][1], a.weights[n][1], rtol=1e-3, atol=1e-4)
    layers.cpu_has_bf16_units.cache_clear()


def test_replay_mode_policy():
    """'auto' compiles only large calls with a C++ compiler; nothing acts without bf16 units or a supported model."""
    from compiler.config import CompileConfig
    from compiler.train import _replay_mode

    auto = CompileConfig()
    assert auto.cpu_fused == "auto"
    n = auto.cpu_compile_min_atoms
    assert _replay_mode(auto, True, True, n, True) == "compile"
    assert _replay_mode(auto, True, True, n - 1, True) == "off"  # a small job: the one-time compile costs more
    assert _replay_mode(auto, True, True, 1, True, compiled_before=True) == "compile"  # nothing left to pay
    assert _replay_mode(auto, True, True, 1, False, compiled_before=True) == "off"
    assert _replay_mode(auto, True, True, n, False) == "off"  # no C++ compiler
    assert _replay_mode(auto, False, True, n, True) == "off"  # no bf16 units (or a GPU)
    assert _replay_mode(auto, True, False, n, True) == "off"  # not a Llama-style SDPA model
    for mode in ("eager", "compile", "off"):
        cfg = CompileConfig(cpu_fused=mode)
        assert _replay_mode(cfg, True, True, 1, False) == mode
        assert _replay_mode(cfg, True, False, 10**6, True) == "off"


def test_failed_compile_falls_back_to_the_plain_functions(monkeypatch, capsys):
    """No usable C++ compiler (or any inductor error) at the first compiled call: a warning, then the eager
    functions' results, and later calls never try again."""
    model = _model()
    L = 2
    names = target_names(model, ["down_proj"], [2, 3])
    attach(model, names)
    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("InductorError: CppCompileError: C++ compile error (simulated)")

    monkeypatch.setattr(fused, "_compiled", lambda: (broken, broken))
    monkeypatch.setattr(fused, "_SEEN", set())
    monkeypatch.setattr(fused, "_BROKEN", False)
    comp, eager = fused.Replay(model, L, compile=True), fused.Replay(model, L)
    pools, h0, pos, tgt, idx, w = _case(model, names, 3, 6)
    with torch.no_grad():
        got = comp.logp(h0, fused.lora_inputs(pools, idx, w), pos, tgt)
        ref = eager.logp(h0, fused.lora_inputs(pools, idx, w), pos, tgt)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(comp.hidden(h0, 0, L), eager.hidden(h0, 0, L))
    assert calls == [1] and not comp.compiled
    assert "torch.compile of the replayed layers failed" in capsys.readouterr().err
    assert not fused.have_cxx()  # "auto" does not try again in this process


def test_env_overrides_cpu_fused(monkeypatch):
    from compiler.config import CompileConfig
    from compiler.layers import Bf16Linears
    from compiler.train import _replay

    model = _model()
    names = target_names(model, ["down_proj"], [2, 3])
    monkeypatch.setenv("DOC2ATOM_CPU_FUSED", "eager")
    rep = _replay(model, names, CompileConfig(cpu_fused="off"), Bf16Linears(), 1)
    assert isinstance(rep, fused.Replay) and not rep.compiled
    monkeypatch.setenv("DOC2ATOM_CPU_FUSED", "off")
    assert _replay(model, names, CompileConfig(cpu_fused="eager"), Bf16Linears(), 1) is None
    monkeypatch.setenv("DOC2ATOM_CPU_FUSED", "fast")
    with pytest.raises(ValueError, match="DOC2ATOM_CPU_FUSED"):
        _replay(model, names, CompileConfig(), Bf16Linears(), 1)
