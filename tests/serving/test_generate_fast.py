"""The fast decoding path (finished rows leave the batch) against the plain `model.generate` path:
the same answers, token for token, with and without atoms, with rows that stop at different steps."""

from __future__ import annotations

import pytest
import torch

import serving.generate as G

QUESTIONS = ["Who?", "Where is the bridge of the old town built?", "When", "What is the name of the captain?",
             "Why is the sky blue on most days of the year, and not green?"]


@pytest.fixture(scope="module")
def model_tok(tiny_base):
    from doc2atom.models import load_base

    return load_base(str(tiny_base), "cpu")


def _tokens(model, tok, questions, **kw):
    """The plain path's generated token ids per row (the reference decoding)."""
    seqs = {}

    def plain(ids, mask, pad, stops, state, idx, w):
        T = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=kw.get("max_new_tokens", 24),
                             do_sample=False, pad_token_id=pad, eos_token_id=stops)
        seqs["rows"] = [o[T:].tolist() for o in out]
        return seqs["rows"]

    G._run(model, tok, questions, kw.get("facts"), kw.get("pool"), kw.get("slots"), kw.get("weights"),
           kw.get("max_new_tokens", 24), plain)
    return seqs["rows"]


def _stops_at_different_steps(model, tok, monkeypatch, questions, **kw):
    """Make rows end early and at different steps: stop ids = tokens some rows emit a few steps in."""
    rows = _tokens(model, tok, questions, **kw)
    stops = {tok.eos_token_id}
    for r, step in ((0, 2), (2, 5), (3, 9)):
        stops.add(rows[r][step])
    monkeypatch.setattr(G, "_stop_ids", lambda tok: sorted(stops))
    return stops


def _ended_at(tok, answers_ids, stops):
    return [next((i for i, t in enumerate(s) if t in stops), None) for s in answers_ids]


def test_fast_path_matches_plain_generate_without_atoms(model_tok, monkeypatch):
    model, tok = model_tok
    stops = _stops_at_different_steps(model, tok, monkeypatch, QUESTIONS)
    ref = G.generate_reference(model, tok, QUESTIONS, max_new_tokens=24)
    fast = G.generate(model, tok, QUESTIONS, max_new_tokens=24)
    assert fast == ref
    ended = _ended_at(tok, _tokens(model, tok, QUESTIONS), stops)
    assert len({e for e in ended}) >= 3, f"rows should stop at different steps, got {ended}"


def _random_pool(model, n_atoms: int, rank: int = 2, scale: float = 0.5):
    from compiler.lora import target_names

    names = target_names(model, ["o_proj", "down_proj"], None)
    g = torch.Generator().manual_seed(0)
    pool = {}
    for name in names:
        lin = model.get_submodule(name)
        d_in, d_out = lin.in_features, lin.out_features
        pool[name] = (torch.randn(n_atoms, rank, d_in, generator=g) * scale,
                      torch.randn(n_atoms, d_out, rank, generator=g) * scale)
    return pool


def test_fast_path_matches_plain_generate_with_per_row_atoms(model_tok, monkeypatch):
    model, tok = model_tok
    pool = _random_pool(model, 4)
    slots = [[0], [1, 2], [], [3, 0, 1], [2]]
    weights = [[1.0], [0.7, 0.3], [], [1.0, 0.5, 0.25], [2.0]]
    kw = dict(pool=pool, slots=slots, weights=weights)
    without = G.generate_reference(model, tok, QUESTIONS, max_new_tokens=24)
    stops = _stops_at_different_steps(model, tok, monkeypatch, QUESTIONS, **kw)
    ref = G.generate_reference(model, tok, QUESTIONS, max_new_tokens=24, **kw)
    fast = G.generate(model, tok, QUESTIONS, max_new_tokens=24, **kw)
    assert fast == ref
    monkeypatch.undo()
    assert G.generate(model, tok, QUESTIONS, max_new_tokens=24, **kw) != without  # the atoms do act
    ended = _ended_at(tok, _tokens(model, tok, QUESTIONS, **kw), stops)
    assert len({e for e in ended}) >= 3, f"rows should stop at different steps, got {ended}"


def test_each_row_matches_its_answer_alone(model_tok, monkeypatch):
    """Batching is invisible: a row's answer in the batch is the answer it gets alone."""
    model, tok = model_tok
    pool = _random_pool(model, 3)
    slots, weights = [[0], [1], [2], [0, 1], []], [[1.0], [1.0], [1.0], [0.5, 0.5], []]
    _stops_at_different_steps(model, tok, monkeypatch, QUESTIONS, pool=pool, slots=slots, weights=weights)
    batch = G.generate(model, tok, QUESTIONS, pool=pool, slots=slots, weights=weights, max_new_tokens=24)
    alone = [G.generate(model, tok, [q], pool=pool, slots=[s], weights=[w], max_new_tokens=24)[0]
             for q, s, w in zip(QUESTIONS, slots, weights)]
    assert batch == alone


class Recorder:
    def __init__(self):
        self.prompts, self.tokens, self.text, self.finished = {}, {}, {}, {}

    def prompt(self, row, n):
        self.prompts[row] = n

    def token(self, row, token_id, delta):
        assert row not in self.finished, "no token after finish"
        self.tokens.setdefault(row, []).append(token_id)
        self.text[row] = self.text.get(row, "") + delta

    def finish(self, row, reason):
        self.finished[row] = reason


def test_hooks_see_every_token_and_the_text_as_it_grows(model_tok, monkeypatch):
    from doc2atom.prompts import prompt_ids

    model, tok = model_tok
    stops = _stops_at_different_steps(model, tok, monkeypatch, QUESTIONS)
    rec = Recorder()
    out = G.generate(model, tok, QUESTIONS, max_new_tokens=24, hooks=rec)
    ref_ids = _tokens(model, tok, QUESTIONS)
    for r, q in enumerate(QUESTIONS):
        assert rec.prompts[r] == len(prompt_ids(tok, q))
        end = next((i for i, t in enumerate(ref_ids[r]) if t in stops), None)
        want = ref_ids[r][:end + 1] if end is not None else ref_ids[r]
        assert rec.tokens[r] == want
        assert rec.finished[r] == ("stop" if end is not None else "length")
        assert rec.text[r] == out[r]


def test_row_map_renames_rows():
    rec = Recorder()
    m = G.RowMap(rec, [5, 2])
    m.prompt(0, 7)
    m.token(1, 3, "a")
    m.finish(1, "stop")
    assert rec.prompts == {5: 7} and rec.tokens == {2: [3]} and rec.finished == {2: "stop"}


def test_empty_batch_and_zero_budget(model_tok):
    model, tok = model_tok
    assert G.generate(model, tok, []) == []
    assert G.generate(model, tok, ["Who?"], max_new_tokens=0) == [""]
