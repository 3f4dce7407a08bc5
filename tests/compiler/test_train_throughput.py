"""The throughput paths of the compile loop against the plain paths they replaced: batched tokenisation,
the vectorised question cycles, Gram-Schmidt in the data init, and the phase timer."""

import random

import torch

from compiler import train
from compiler.config import CompileConfig
from compiler.train import (_answer_ids_many, _Cycles, _next_questions, _orthonormal_columns, _prompt_ids_many,
                            _recent_above, _top_directions, compile_atoms, make_examples)
from doc2atom.models import load_base
from doc2atom.prompts import answer_ids, prompt_ids


def test_batched_prompt_and_answer_ids_equal_the_per_question_ones(tiny_base):
    _, tok = load_base(str(tiny_base))
    qs = ["What is alpha?", "  Tell me of beta.  ", "Ga?", "", "Why? é ü 東京", "A\nnew line?"]
    assert _prompt_ids_many(tok, qs) == [prompt_ids(tok, q) for q in qs]
    ans = ["Alpha is a letter.", "", "Beta é.", " x ", "Gamma."]
    assert _answer_ids_many(tok, ans) == [answer_ids(tok, a) for a in ans]
    ex = make_examples(tok, ans[:2], [qs[:3], qs[3:]], answers=[["a", "b", "c"], ["d", "e", "f"]])
    assert ex[0].prompts == [prompt_ids(tok, q) for q in qs[:3]] and ex[1].answer == answer_ids(tok, ans[1])
    assert ex[1].answers == [answer_ids(tok, a) for a in "def"]


def test_batched_prompt_ids_fall_back_when_the_template_rewrites_the_question(tiny_base):
    _, tok = load_base(str(tiny_base))
    old = tok.chat_template
    try:  # a template that upper-cases the content: the sentinel check fails, the plain path runs
        tok.chat_template = old.replace("{{ m['content'] }}", "{{ m['content'] | upper }}")
        qs = ["what is alpha?", "beta?", "gamma?", "delta?"]
        assert _prompt_ids_many(tok, qs) == [prompt_ids(tok, q) for q in qs]
    finally:
        tok.chat_template = old


def test_cycles_give_the_rows_and_decisions_of_the_per_atom_helpers():
    """_Cycles (vectorised) against _next_questions / _recent_above over random question counts, steps and p."""
    rnd = random.Random(0)
    for trial in range(30):
        M = rnd.randint(1, 9)

        class Ex:
            def __init__(self, n):
                self.prompts = [[0]] * n

        chunk = [Ex(rnd.randint(1, 6)) for _ in range(M)]
        cfg = CompileConfig(questions=6, questions_per_step=rnd.randint(1, 4), stop_questions=rnd.randint(1, 6),
                            target_prob=0.6)
        order = [rnd.sample(range(len(ex.prompts)), len(ex.prompts)) for ex in chunk]
        cyc = _Cycles(chunk, order, cfg)
        cursor, latest = [0] * M, [{} for _ in range(M)]
        active = list(range(M))
        for step in range(8):
            act = sorted(rnd.sample(active, rnd.randint(1, len(active))))
            want = [(a, q) for a in act for q in _next_questions(chunk, a, cfg, rnd, order, cursor)]
            got = cyc.next_rows(torch.tensor(act))
            assert got == want, (trial, step)
            p = torch.rand(len(got), generator=torch.Generator().manual_seed(trial * 100 + step))
            for (a, q), v in zip(got, p.tolist()):
                latest[a][q] = v
            cyc.record(got, p)
            ref = [_recent_above(chunk, a, cfg, order, cursor, latest) for a in act]
            assert cyc.recent_above(torch.tensor(act)).tolist() == ref, (trial, step)


def test_gram_schmidt_data_init_spans_what_qr_spans():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(40, 40, generator=g)).Q
    Vt = torch.linalg.qr(torch.randn(64, 64, generator=g)).Q.T
    s = torch.tensor([50.0, 20.0, 8.0, 4.0] + [0.5] * 36)
    X = torch.stack([U @ torch.diag(s) @ Vt[:40], 0.01 * U @ torch.diag(s.flip(0)) @ Vt[:40]])
    for r in (1, 3, 4):
        gs, qr = _top_directions(X, r), _top_directions(X, r, method="qr")
        for m in range(2):
            torch.testing.assert_close(gs[m] @ gs[m].T, torch.eye(r), atol=1e-5, rtol=0)
            assert (gs[m] * qr[m]).sum(-1).abs().min() > 0.9999  # the same directions, up to sign
    Y = torch.randn(5, 30, 4, generator=g)
    Q = _orthonormal_columns(Y)
    torch.testing.assert_close(Q.transpose(1, 2) @ Q, torch.eye(4).expand(5, 4, 4), atol=1e-5, rtol=0)
    Qr = torch.linalg.qr(Y).Q
    torch.testing.assert_close((Q * Qr).sum(1).abs(), torch.ones(5, 4), atol=1e-5, rtol=0)  # QR's Q up to signs
    # fewer rows than the rank: still r orthonormal directions (the first ones X's own)
    D = _top_directions(torch.randn(3, 2, 16, generator=g), 3)
    torch.testing.assert_close(D @ D.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)


def test_phase_times_are_collected_only_when_asked(tiny_base):
    model, tok = load_base(str(tiny_base))
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a letter too."],
                       [["What is alpha?", "Tell me of alpha."], ["What is beta?", "Tell me of beta."]])
    cfg = CompileConfig(max_steps=2, min_steps=2, questions=2, batch_atoms=2, cpu_bf16=False)
    assert train.PHASE_TIMES is None
    plain = compile_atoms(model, tok, ex, cfg)
    train.PHASE_TIMES = {}
    try:
        timed = compile_atoms(model, tok, ex, cfg)
        got = dict(train.PHASE_TIMES)
    finally:
        train.PHASE_TIMES = None
    assert {"lower", "init_forward", "init_directions", "step_fwd_bwd", "step_opt", "step_host"} <= set(got)
    assert all(v >= 0 for v in got.values())
    for a, b in zip(plain, timed):  # timing changes nothing
        for n in a.weights:
            assert torch.equal(a.weights[n][0], b.weights[n][0]) and torch.equal(a.weights[n][1], b.weights[n][1])


def test_lower_bank_equals_stacked_lower_states(tiny_base):
    from compiler.layers import lower_bank, lower_states, stack_right

    model, _ = load_base(str(tiny_base))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 17, 3, 9, 17, 1, 12)]
    for L in (0, 1, 2):
        for budget in (16, 40, 4096):  # one pass, several passes
            ref = stack_right(lower_states(model, seqs, L, pad_id=0, max_tokens=budget))
            got = lower_bank(model, seqs, L, pad_id=0, max_tokens=budget)
            assert torch.equal(got, ref), (L, budget)


def test_compiled_atoms_own_their_rows_and_stats(tiny_base):
    """finish() hands out views of one host copy: each atom's A/B is its own row, and pack() stacks them as before."""
    from compiler.weights import pack

    model, tok = load_base(str(tiny_base))
    ex = make_examples(tok, ["Alpha is a letter.", "Beta is a letter too.", "Ga."],
                       [["What is alpha?", "Alpha?"], ["What is beta?", "Beta?"], ["Ga?", "G?"]])
    out = compile_atoms(model, tok, ex, CompileConfig(max_steps=2, min_steps=2, questions=2, batch_atoms=3,
                                                      cpu_bf16=False))
    shard = pack(out)
    for i, c in enumerate(out):
        assert isinstance(c.stats["steps"], int) and isinstance(c.stats["converged"], bool)
        assert isinstance(c.stats["min_answer_prob"], float)
        for n, (A, B) in c.weights.items():
            assert torch.equal(shard[n + ".A"][i], A.half()) and torch.equal(shard[n + ".B"][i], B.half())


def test_to_host_on_the_cpu_is_cpu():
    t = torch.arange(10, dtype=torch.float32)
    assert train._to_host(t) is t.cpu()


def test_to_host_through_the_staging_buffer_equals_cpu():
    """The chunked pinned copy (GPU only) gives what .cpu() gives, for sizes around the chunk."""
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("the staging path needs CUDA")
    for n in (1, 1000, 4096, 4097, 40000):
        x = torch.randn(n, 3, device="cuda")
        assert torch.equal(train._to_host(x, chunk_bytes=4096 * 12), x.cpu())
    y = torch.randn(8, 5, 7, device="cuda").transpose(0, 2)  # not contiguous
    assert torch.equal(train._to_host(y, chunk_bytes=64), y.cpu())


def test_data_init_in_row_count_groups_spans_what_one_pack_spans():
    """_row_count_groups packs atoms by similar row counts; with each group given its slice of one noise draw,
    each atom's directions must be those of packing all atoms to the longest (only the zero padding differs)."""
    from compiler.train import _pack_by_atom, _row_count_groups

    g = torch.Generator().manual_seed(0)
    M, r, d = 11, 3, 24
    counts = [1, 2, 3, 5, 8, 13, 21, 4, 40, 6, 9]
    xs, atom = [], []
    for a, n in enumerate(counts):
        basis = torch.linalg.qr(torch.randn(d, r, generator=g)).Q.T  # (r, d) planted directions, clear gaps
        coef = torch.randn(n, r, generator=g) * torch.tensor([9.0, 3.0, 1.0])
        xs.append(coef @ basis + 0.01 * torch.randn(n, d, generator=g))
        atom += [a] * n
    perm = torch.randperm(len(atom), generator=g)  # rows arrive in any order
    x, atom = torch.cat(xs)[perm], torch.tensor(atom)[perm]
    full = _top_directions(_pack_by_atom(x, atom, M, r), r)
    grouped = torch.empty_like(full)
    groups = _row_count_groups(atom, M)
    assert sorted(int(i) for ids, _, _ in groups for i in ids) == list(range(M))
    noise = train._start_noise(M, d, r, x)
    for ids, rows, local in groups:
        grouped[ids] = _top_directions(_pack_by_atom(x[rows], local, len(ids), r), r, noise=noise[ids])
    # the same starting noise per atom: the same subspaces (directions up to sign and rounding): the top min(n, r)
    # directions inside the rows' span, and all r together (those outside the span come from the same noise)
    for a, n in enumerate(counts):
        for k in {min(n, r), r}:
            P = full[a, :k].T @ full[a, :k]
            Q = grouped[a, :k].T @ grouped[a, :k]
            assert torch.allclose(P, Q, atol=1e-3), (a, n, k, float((P - Q).abs().max()))


def test_tf32_block_restores_the_matmul_setting():
    m = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32"
    before = getattr(m, name)
    with train._tf32_matmuls():
        assert getattr(m, name) in ("tf32", True)
    assert getattr(m, name) == before
