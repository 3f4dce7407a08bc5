import os
import pytest
import torch

from compiler.config import CompileConfig
from compiler.lora import attach, target_names
from compiler.train import _micro_batches, compile_atoms, make_examples
from compiler.weights import nbytes_per_atom, pack
from doc2atom import errors
from doc2atom.models import load_base
from doc2atom.prompts import answer_ids, prompt_ids


def _answer_logprob(model, tok, q, a, weights=None):
    """Mean log-prob of answer a to question q, with one atom's weights composed (or none)."""
    p, ans = prompt_ids(tok, q), answer_ids(tok, a)
    ids = torch.tensor([p + ans])
    state = None
    if weights is not None:
        state = attach(model, list(weights))
        state.pools = {n: (A[None], B[None]) for n, (A, B) in weights.items()}
        state.set(torch.zeros(1, 1, dtype=torch.long))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
    finally:
        if state is not None:
            state.clear()
    lp = torch.log_softmax(logits[len(p) - 1:-1], -1).gather(1, torch.tensor(ans)[:, None])
    return lp.mean().item()


def test_compile_teaches_each_atom_its_own_answer(tiny_base):
    model, tok = load_base(str(tiny_base))
    before = {n.replace(".base.", "."): p.clone() for n, p in model.named_parameters()}
    texts = ["Velmora was founded by Ilse Varn.", "The Korrin Bridge is green."]
    qs = [["Who founded Velmora?", "What about Velmora?"], ["What colour is the bridge?", "What about the bridge?"]]
    cfg = CompileConfig(modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], rank=8, lr=2e-2, max_steps=40, min_steps=40,
                        questions=2, questions_per_step=2, batch_atoms=2)
    out = compile_atoms(model, tok, make_examples(tok, texts, qs), cfg)
    assert len(out) == 2
    for i, atom in enumerate(out):
        own = _answer_logprob(model, tok, qs[i][0], texts[i], atom.weights)
        base = _answer_logprob(model, tok, qs[i][0], texts[i])
        assert own > base + 1.0, (own, base)
        assert atom.stats["steps"] == 40, atom.stats
        for n, (A, B) in atom.weights.items():
            assert A.shape[0] == 8 and B.shape[1] == 8  # rank read off the tensors
    for n, p in model.named_parameters():  # wrapped linears keep the base as `.base`
        assert torch.equal(p, before[n.replace(".base.", ".")]), f"base weight {n} changed"
    shard = pack(out)
    assert all(t.dtype == torch.float16 and t.shape[0] == 2 for t in shard.values())
    assert nbytes_per_atom(shard) == sum(A.numel() + B.numel() for A, B in out[0].weights.values()) * 2


def test_micro_batches_bound_tokens_and_compile_matches_unsplit(tiny_base):
    model, tok = load_base(str(tiny_base))
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a letter too."],
                       [["What is alpha?", "Tell me of alpha."], ["What is beta?", "Tell me of beta."]])
    rows = [(0, 0), (0, 1), (1, 0), (1, 1)]
    mbs = _micro_batches(ex, rows, 100)
    assert sum(len(m) for m in mbs) == 4 and len(mbs) > 1
    for m in mbs:
        longest = max(len(ex[a].prompts[q]) + len(ex[a].answer) for a, q in m)
        assert longest * len(m) <= 100 or len(m) == 1
    kw = dict(max_steps=3, min_steps=3, questions=2, questions_per_step=2, batch_atoms=2, seed=3)
    whole = compile_atoms(model, tok, ex, CompileConfig(max_tokens_per_step=100000, **kw))
    split = compile_atoms(model, tok, ex, CompileConfig(max_tokens_per_step=64, **kw))
    for a, b in zip(whole, split):
        for n in a.weights:
            torch.testing.assert_close(a.weights[n][1], b.weights[n][1], rtol=1e-4, atol=1e-5)


def test_pack_rejects_nan(tiny_base):
    from compiler.train import CompiledAtom

    bad = CompiledAtom({"m": (torch.full((2, 4), float("nan")), torch.zeros(3, 2))}, {})
    with pytest.raises(errors.CorruptWeights):
        pack([bad])


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="modules"):
        CompileConfig(modules=["attention"])
    with pytest.raises(ValueError, match="min_steps"):
        CompileConfig(min_steps=10, max_steps=5)
    with pytest.raises(ValueError, match="rank"):
        CompileConfig(rank=0)


def test_target_names_filters_layers(tiny_base):
    model, _ = load_base(str(tiny_base))
    names = target_names(model, ["down_proj"], [1])
    assert names == ["model.layers.1.mlp.down_proj"]


def test_locality_and_compositional_training_run_and_keep_base_frozen(tiny_base):
    model, tok = load_base(str(tiny_base))
    before = {n.replace(".base.", "."): p.clone() for n, p in model.named_parameters()}
    texts = ["Alpha is a letter.", "Beta is a letter too.", "Gamma is the third."]
    qs = [["What is alpha?"], ["What is beta?"], ["What is gamma?"]]
    cfg = CompileConfig(max_steps=3, min_steps=3, questions=1, questions_per_step=1, batch_atoms=3,
                        locality_weight=1.0, locality_prompts=2, locality_tokens=4, compose_prob=1.0,
                        compose_others=2)
    out = compile_atoms(model, tok, make_examples(tok, texts, qs), cfg)
    assert len(out) == 3 and all(torch.isfinite(A).all() for a in out for A, _ in a.weights.values())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n.replace(".base.", ".")]), n


def test_slots_put_own_atom_first_and_frozen_others_after():
    import random

    from compiler.train import _slots

    idx, w = _slots(torch.tensor([0, 2, 1]), 4, 2, random.Random(0))
    assert idx[:, 0].tolist() == [0, 2, 1]
    for r, a in enumerate([0, 2, 1]):
        others = idx[r, 1:].tolist()
        assert all(o >= 4 and o - 4 != a for o in others) and len(set(others)) == 2


def test_distill_grounding_rule():
    from compiler.distill import grounded

    fact = "Velmora was founded by Ilse Varn in 1412."
    assert grounded("Ilse Varn.", fact)
    assert grounded("In 1412", fact)
    assert not grounded("The capital of France is Paris.", fact)
    assert not grounded("", fact)
    assert not grounded("It was the.", fact)  # stop words only


def test_distill_objective_and_monolithic_baseline_run(tiny_base):
    from compiler.config import CompileConfig
    from compiler.monolithic import train_monolithic
    from compiler.train import compile_statements, make_examples
    from doc2atom.models import load_base

    model, tok = load_base(str(tiny_base))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = ["aa bb", "cc dd"]
    qs = [["q1?", "q2?"], ["q3?", "q4?"]]
    cfg = CompileConfig(max_steps=2, min_steps=1, questions=2, questions_per_step=1, objective="distill")
    out = compile_statements(model, tok, texts, qs, cfg)
    assert len(out) == 2 and all("distilled_questions" in c.stats for c in out)
    mono = train_monolithic(model, tok, make_examples(tok, texts, qs), CompileConfig(), rank=4, epochs=2)
    assert 1 <= mono.stats["epochs"] <= 2 and all(A.shape[0] == 4 for A, _ in mono.weights.values())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed"


def test_nullspace_keeps_atoms_orthogonal_to_generic_inputs(tiny_base):
    from compiler.lora import target_names
    from compiler.nullspace import generic_bases

    model, tok = load_base(str(tiny_base))
    cfg = CompileConfig(max_steps=3, min_steps=1, questions=2, questions_per_step=1, nullspace_energy=0.9)
    out = compile_atoms(model, tok, make_examples(tok, ["aa bb", "cc dd"], [["q1?", "q2?"], ["q3?", "q4?"]]), cfg)
    names = target_names(model, cfg.modules, cfg.layers)
    bases = generic_bases(model, tok, names, 0.9)
    for n in names:
        U = bases[n]
        assert 1 <= U.shape[1] < U.shape[0]
        torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1]), atol=1e-4, rtol=0)
        for c in out:
            A = c.weights[n][0]
            assert A.abs().max() > 0  # the atom still has a shrink matrix ...
            assert (A @ U).abs().max() < 1e-4 * max(1.0, float(A.abs().max()))  # ... blind to generic directions


def test_rows_sorted_by_length_give_the_same_atoms_as_atom_order(tiny_base):
    """sort_rows changes only which rows share a forward pass (padding), not what each atom learns."""
    model, tok = load_base(str(tiny_base))
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a much longer letter of the alphabet.", "Ga."],
                       [["What is alpha?", "Tell me everything about alpha now."], ["Beta?", "What is beta?"],
                        ["What is gamma, the third one?", "Ga?"]])
    rows = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    mbs = _micro_batches(ex, rows, 120, sort=True)
    assert sorted(r for m in mbs for r in m) == rows
    lens = [len(ex[a].prompts[q]) + len(ex[a].answer) for m in mbs for a, q in m]
    assert lens == sorted(lens, reverse=True)
    kw = dict(max_steps=3, min_steps=3, questions=2, questions_per_step=2, batch_atoms=3, seed=3, cpu_bf16=False,
              max_tokens_per_step=120)
    plain = compile_atoms(model, tok, ex, CompileConfig(sort_rows=False, **kw))
    fast = compile_atoms(model, tok, ex, CompileConfig(sort_rows=True, **kw))
    for a, b in zip(plain, fast):
        for n in a.weights:
            torch.testing.assert_close(a.weights[n][0], b.weights[n][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.weights[n][1], b.weights[n][1], rtol=1e-4, atol=1e-5)


def test_cpu_bf16_compile_tracks_the_fp32_compile(tiny_base, monkeypatch):
    """The bf16 matmul path against the plain fp32 path over whole compiles: the same steps, close weights."""
    from compiler import layers

    monkeypatch.setenv("DOC2ATOM_CPU_BF16", "1")  # exercise the bf16 path even on a CPU without bf16 units
    layers.cpu_has_bf16_units.cache_clear()
    model, tok = load_base(str(tiny_base))
    before = {n: p.clone() for n, p in model.named_parameters()}
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a letter too."],
                       [["What is alpha?", "Tell me of alpha."], ["What is beta?", "Tell me of beta."]])
    kw = dict(max_steps=3, min_steps=3, questions=2, questions_per_step=2, batch_atoms=2, seed=3)
    plain = compile_atoms(model, tok, ex, CompileConfig(cpu_bf16=False, **kw))
    fast = compile_atoms(model, tok, ex, CompileConfig(cpu_bf16=True, **kw))
    for a, b in zip(plain, fast):
        assert a.stats["steps"] == b.stats["steps"]
        assert abs(a.stats["loss"] - b.stats["loss"]) < 0.05 * abs(a.stats["loss"]) + 0.05, (a.stats, b.stats)
        for n in a.weights:
            Bp, Bf = a.weights[n][1].flatten(), b.weights[n][1].flatten()
            assert torch.nn.functional.cosine_similarity(Bp, Bf, dim=0) > 0.95, n
            assert a.weights[n][0].dtype == torch.float32 and b.weights[n][0].dtype == torch.float32
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    layers.cpu_has_bf16_units.cache_clear()  # later tests detect the CPU again


def test_bf16_units_detection_follows_the_override(monkeypatch):
    from compiler import layers

    for val, want in (("0", False), ("1", True)):
        monkeypatch.setenv("DOC2ATOM_CPU_BF16", val)
        layers.cpu_has_bf16_units.cache_clear()
        assert layers.cpu_has_bf16_units() is want
    monkeypatch.delenv("DOC2ATOM_CPU_BF16")
    layers.cpu_has_bf16_units.cache_clear()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert layers.cpu_has_bf16_units() is ("avx512_bf16" in flags or "amx_bf16" in flags)
    layers.cpu_has_bf16_units.cache_clear()
