"""The fewer-steps options of the compile loop: LoRA+ learning rates, data-aware A init, nonzero B init,
and the cycling stop rule (stop_questions)."""

import random

import pytest
import torch

from compiler.config import CompileConfig
from compiler.train import _MaskedAdam, _next_questions, _recent_above, compile_atoms, make_examples
from doc2atom.models import load_base


def _examples(tok):
    return make_examples(tok, ["Alpha is a letter.", "Beta is a letter too."],
                         [["What is alpha?", "Tell me of alpha.", "Alpha?"], ["What is beta?", "Tell me of beta.", "B?"]])


def test_config_validates_the_new_fields():
    with pytest.raises(ValueError):
        CompileConfig(stop_questions=-1)
    assert CompileConfig(questions=1).stop_questions == 2  # capped per atom at run time, not an error
    with pytest.raises(ValueError):
        CompileConfig(lr_b_ratio=0)
    with pytest.raises(ValueError):
        CompileConfig(init_a="pca")
    with pytest.raises(ValueError):
        CompileConfig(init_b_std=-1e-3)
    c = CompileConfig()
    assert (c.lr_b_ratio, c.init_a, c.init_b_std, c.stop_questions, c.questions_per_step) == (1.0, "data", 0.0, 2, 1)
    assert (c.modules, c.layers, c.rank) == (["down_proj"], list(range(-10, 0)), 3)


def test_masked_adam_lr_mult_scales_the_update_only():
    """A tensor with lr_mult m moves exactly m times as far as with 1 (same gradients, Adam's update is lr * m_hat / ...)."""
    torch.manual_seed(0)
    p1, p2 = torch.randn(3, 4, 2), None
    p2 = p1.clone()
    g = torch.randn(3, 4, 2)
    o1, o2 = _MaskedAdam([p1], 1e-2), _MaskedAdam([p2], 1e-2, lr_mult=[8.0])
    start = p1.clone()
    active = torch.tensor([True, False, True])
    for t in range(1, 4):
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step(active, torch.full((3,), t))
        o2.step(active, torch.full((3,), t))
    torch.testing.assert_close(p2 - start, 8.0 * (p1 - start))
    assert torch.equal(p1[1], start[1]) and torch.equal(p2[1], start[1])  # inactive atom untouched


def test_lr_b_ratio_one_is_the_plain_path_and_larger_moves_b_faster(tiny_base):
    model, tok = load_base(str(tiny_base))
    kw = dict(max_steps=3, min_steps=3, questions=3, questions_per_step=2, batch_atoms=2, seed=1, cpu_bf16=False)
    plain = compile_atoms(model, tok, _examples(tok), CompileConfig(**kw))
    same = compile_atoms(model, tok, _examples(tok), CompileConfig(lr_b_ratio=1.0, **kw))
    fast = compile_atoms(model, tok, _examples(tok), CompileConfig(lr_b_ratio=8.0, **kw))
    for a, b, c in zip(plain, same, fast):
        for n in a.weights:
            assert torch.equal(a.weights[n][0], b.weights[n][0]) and torch.equal(a.weights[n][1], b.weights[n][1])
            assert c.weights[n][1].abs().sum() > 2 * a.weights[n][1].abs().sum()


def test_data_init_rows_are_the_atoms_input_directions(tiny_base):
    """With init_a="data" and no training step (lr ~ 0), A's rows are orthonormal (x 1/sqrt 3) directions that
    hold more of the atom's own inputs than the uniform init's rows do."""
    from compiler.lora import attach, target_names

    model, tok = load_base(str(tiny_base))
    ex = _examples(tok)
    kw = dict(max_steps=1, min_steps=1, questions=3, questions_per_step=1, batch_atoms=2, seed=1, cpu_bf16=False,
              lr=1e-9, rank=2)
    data = compile_atoms(model, tok, ex, CompileConfig(init_a="data", **kw))
    unif = compile_atoms(model, tok, ex, CompileConfig(init_a="uniform", **kw))
    cfg = CompileConfig()
    names = target_names(model, cfg.modules, cfg.layers)
    # each atom's inputs at one module, by a hook on the base model (no atoms)
    attach(model, names)
    name = names[-1]
    caught = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, i: caught.append(i[0][0]))
    try:
        with torch.no_grad():
            for q in ex[0].prompts:
                model(input_ids=torch.tensor([q + ex[0].answer]))
    finally:
        h.remove()
    X = torch.cat([c[len(q) - 1:len(q) - 1 + len(ex[0].answer)] for c, q in zip(caught, ex[0].prompts)])
    A = data[0].weights[name][0]
    torch.testing.assert_close(A @ A.T * 3, torch.eye(2), atol=1e-3, rtol=0)
    Au = unif[0].weights[name][0]
    energy = lambda M: float((X @ (M / M.norm(dim=1, keepdim=True)).T).pow(2).sum())
    assert energy(A) > energy(Au)


def test_nonzero_b_init_changes_the_start_and_zero_is_the_plain_path(tiny_base):
    model, tok = load_base(str(tiny_base))
    kw = dict(max_steps=1, min_steps=1, questions=3, questions_per_step=1, batch_atoms=2, seed=1, cpu_bf16=False,
              lr=1e-9)
    zero = compile_atoms(model, tok, _examples(tok), CompileConfig(**kw))
    small = compile_atoms(model, tok, _examples(tok), CompileConfig(init_b_std=1e-2, **kw))
    for z, s in zip(zero, small):
        for n in z.weights:
            assert z.weights[n][1].abs().max() < 1e-6
            std = float((s.weights[n][1] / 2.0).std())  # scale 2 is folded into B
            assert 0.5e-2 < std < 2e-2


def test_question_cycle_and_recent_above_rule():
    class Ex:
        prompts = [[1], [2], [3]]

    chunk = [Ex()]
    cfg = CompileConfig(questions=3, questions_per_step=1, stop_questions=2, target_prob=0.6)
    rnd = random.Random(0)
    order, cursor, latest = [[2, 0, 1]], [0], [{}]
    seen = [_next_questions(chunk, 0, cfg, rnd, order, cursor)[0] for _ in range(4)]
    assert seen == [2, 0, 1, 2]  # a fixed cycle: every question once before any repeats
    latest[0] = {2: 0.9, 1: 0.7, 0: 0.1}
    assert _recent_above(chunk, 0, cfg, order, cursor, latest)  # last two seen: 1 and 2
    latest[0][1] = 0.5
    assert not _recent_above(chunk, 0, cfg, order, cursor, latest)
    all3 = cfg.model_copy(update={"stop_questions": 3})
    latest[0] = {2: 0.9, 1: 0.7, 0: 0.1}
    assert not _recent_above(chunk, 0, all3, order, cursor, latest)  # question 0 was last seen below target
    assert not _recent_above(chunk, 0, cfg, order, [1], latest)  # fewer than 2 questions seen yet
    # stop_questions 0: fresh random draws of questions_per_step questions
    plain = CompileConfig(questions=3, questions_per_step=2, stop_questions=0)
    qs = _next_questions(chunk, 0, plain, rnd, order, cursor)
    assert len(set(qs)) == 2


def test_stop_questions_compile_runs_and_sees_every_question(tiny_base):
    """With qps 1 and stop_questions = questions, no atom can stop before it has seen all its questions,
    and a stop requires every question's latest p above target (target ~0 makes it reachable)."""
    model, tok = load_base(str(tiny_base))
    cfg = CompileConfig(max_steps=20, min_steps=0, questions=3, questions_per_step=1, stop_questions=3,
                        target_prob=1e-6, extra_steps=0, batch_atoms=2, cpu_bf16=False)
    out = compile_atoms(model, tok, _examples(tok), cfg)
    assert [o.stats["steps"] for o in out] == [3, 3]
    assert all(o.stats["converged"] for o in out)
    cfg2 = cfg.model_copy(update={"stop_questions": 1})
    out = compile_atoms(model, tok, _examples(tok), cfg2)
    assert [o.stats["steps"] for o in out] == [1, 1]


def test_top_directions_match_the_svd_when_the_spectrum_has_gaps():
    from compiler.train import _top_directions

    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(40, 40, generator=g)).Q
    Vt = torch.linalg.qr(torch.randn(64, 64, generator=g)).Q.T
    s = torch.tensor([50.0, 20.0, 8.0] + [0.5] * 37)
    X = torch.stack([U[:, :40] @ torch.diag(s) @ Vt[:40], U[:, :40] @ torch.diag(s.flip(0).sort(descending=True).values) @ Vt[:40]])
    D = _top_directions(X, 2)
    assert D.shape == (2, 2, 64)
    for m in range(2):
        torch.testing.assert_close(D[m] @ D[m].T, torch.eye(2), atol=1e-4, rtol=0)
        ref = torch.linalg.svd(X[m], full_matrices=False).Vh[:2]
        assert (D[m] * ref).sum(-1).abs().min() > 0.999  # the same directions, up to sign


def test_pack_by_atom_matches_a_per_atom_loop():
    """The scatter that packs each atom's rows for the data init == the plain per-atom loop it replaced (rows of one
    atom in their original order, zero padding, atoms with no rows all zero, at least min_rows rows)."""
    from compiler.train import _pack_by_atom

    g = torch.Generator().manual_seed(1)
    M, d = 5, 7
    atom = torch.tensor([3, 0, 3, 1, 0, 3, 1, 3, 0])  # atoms 2 and 4 have no rows
    x = torch.randn(len(atom), d, generator=g)
    X = _pack_by_atom(x, atom, M, min_rows=2)
    n_max = max(int((atom == a).sum()) for a in range(M))
    ref = torch.zeros(M, n_max, d)
    for a in range(M):
        rows = x[atom == a]
        ref[a, :len(rows)] = rows
    torch.testing.assert_close(X, ref, rtol=0, atol=0)
    assert _pack_by_atom(x[:1], atom[:1], M, min_rows=3).shape == (M, 3, d)


def test_negative_layer_indices_count_from_the_top(tiny_base):
    from compiler.lora import target_names

    model, _ = load_base(str(tiny_base))
    n = int(model.config.num_hidden_layers)
    assert target_names(model, ["down_proj"], [-1]) == target_names(model, ["down_proj"], [n - 1])
    assert target_names(model, ["down_proj"], list(range(-10, 0))) == target_names(model, ["down_proj"], list(range(n)))
    assert target_names(model, ["o_proj"], None) == target_names(model, ["o_proj"], list(range(n // 2, n)))
