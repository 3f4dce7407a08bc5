"""The router's gate on atoms a request carries beside its routed ones (`RouterConfig.gate`).

Tiny random base model: its answers are noise, so the tests check what is composed and with which weight,
and that a gated-out atom leaves the answer token-identical to the answer without it."""

from pathlib import Path

import pytest

from doc2atom import errors
from doc2atom.store import atom_id
from serving.evaluate.datasets import read_dataset, read_general
from serving.evaluate.runner import EvalConfig, evaluate, table

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eval_fixture.json"
GENERAL = ["What is the capital of France?", "How many legs does a spider have?", "Who painted the Mona Lisa?"]


@pytest.fixture()
def kb(eval_kb):
    return eval_kb


def _ungated(kb):
    kb.router_config = kb.router_config.model_copy(update={"gate": False})


def _own_and_foreign(kb, question: str):
    """(the routed atom, an atom of another document) for a question the router answers."""
    r = kb.route([question])[0]
    assert not r.refused and r.ids
    docs = kb.store.atom_docs()
    own = r.ids[0]
    foreign = next(a for a in sorted(docs) if not set(docs[a]) & set(docs[own]))
    return atom_id(own), atom_id(foreign)


def test_gate_scores_the_routed_atom_and_zeroes_a_foreign_one(kb):
    q = "Which island is the Orlanth Valley on?"
    own, foreign = _own_and_foreign(kb, q)
    router = kb.router()
    w = router.gate([q], [[int(own[1:]), int(foreign[1:])]])[0]
    assert 0.0 < w[0] <= 1.0
    assert w[1] == 0.0
    assert router.gate([q], [[]]) == [[]]


def test_gated_out_atom_leaves_the_answer_unchanged(kb):
    q = "Which island is the Orlanth Valley on?"
    own, foreign = _own_and_foreign(kb, q)
    plain = kb.ask_many([q], max_new_tokens=6)[0]
    gated = kb.ask_many([q], extra_atoms=[[foreign]], max_new_tokens=6)[0]
    assert gated.answer == plain.answer
    assert [a.id for a in gated.atoms] == [a.id for a in plain.atoms]  # the foreign atom did not fire
    _ungated(kb)
    forced = kb.ask_many([q], extra_atoms=[[foreign]], max_new_tokens=6)[0]
    assert foreign in [a.id for a in forced.atoms]
    assert [a.weight for a in forced.atoms if a.id == foreign] == [1.0]


def test_unrouted_asks_apply_only_the_given_atoms(kb):
    q = GENERAL[0]
    base = kb.ask_many([q], mode="base", max_new_tokens=6)[0]
    none = kb.ask_many([q], extra_atoms=[[]], routed=False, max_new_tokens=6)[0]
    assert not none.refused and none.answer == base.answer and none.atoms == []
    some = sorted(kb.store.atom_docs())[:3]
    gated = kb.ask_many([q], extra_atoms=[[atom_id(a) for a in some]], routed=False, max_new_tokens=6)[0]
    assert gated.atoms == [] and gated.answer == base.answer  # a general question: every atom gated out
    _ungated(kb)
    forced = kb.ask_many([q], extra_atoms=[[atom_id(a) for a in some]], routed=False, max_new_tokens=6)[0]
    assert [a.id for a in forced.atoms] == [atom_id(a) for a in some]


def test_unknown_extra_atom_is_a_clear_error(kb):
    with pytest.raises(errors.Doc2AtomError, match="a999999"):
        kb.ask_many(["Which island is the Orlanth Valley on?"], extra_atoms=[["a999999"]], max_new_tokens=2)


def test_eval_reports_gated_and_ungated_composition_and_leakage(kb):
    data = read_dataset(FIXTURE, "squad")
    cfg = EvalConfig(modes=["atoms"], compose_k=[1, 2], max_new_tokens=4, progress=False, gate="both",
                     general=GENERAL, leak_n=[1, 2])
    res = evaluate(kb, data, cfg)
    assert res["composition"]["gate"] is True and res["composition_ungated"]["gate"] is False
    assert res["composition"]["accuracy"][0] == res["composition_ungated"]["accuracy"][0]  # k=1: nothing added
    assert res["composition_ungated"]["applied"][1] > res["composition_ungated"]["applied"][0]
    lk = res["leakage"]
    assert lk["n"] == [1, 2] and lk["questions"] == 3
    assert lk["ungated"]["applied"] == [1.0, 2.0]
    assert lk["gated"]["applied"] == [0.0, 0.0] and lk["gated"]["unchanged"] == [1.0, 1.0]
    assert "general answers unchanged (gated" in table(res) and "gate off" in table(res)


def test_read_general_accepts_both_shapes_and_rejects_others(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text('["Q1?", " ", "Q2?"]')
    b.write_text('{"questions": ["Q1?"]}')
    c.write_text('{"questions": [1, 2]}')
    assert read_general(a) == ["Q1?", "Q2?"] and read_general(b) == ["Q1?"]
    with pytest.raises(errors.InputError):
        read_general(c)
    with pytest.raises(errors.Doc2AtomError):
        read_general(tmp_path / "missing.json")
