"""The eval runner's plumbing on a tiny random base model (its answers are noise: test shapes,
recall bookkeeping, composition draws and reuse of compiled atoms, not accuracy)."""

import json
from pathlib import Path

import pytest

from serving.evaluate import cli
from serving.evaluate.datasets import read_dataset
from serving.evaluate.runner import EvalConfig, evaluate, router_recall, table, unrelated_atoms

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eval_fixture.json"
MODE_KEYS = {"f1", "em", "acc", "refusal_accuracy", "false_refusal", "answerable", "unanswerable"}


@pytest.fixture()
def kb_dir(eval_kb_dir):
    return eval_kb_dir


@pytest.fixture()
def kb(eval_kb):
    return eval_kb


def test_result_shape_and_saved_predictions(kb, tmp_path):
    data = read_dataset(FIXTURE, "squad")
    cfg = EvalConfig(modes=["base", "context", "atoms"], compose_k=[1, 2, 4], max_new_tokens=4,
                     short=lambda q, a: a[:5], progress=False, save=tmp_path / "out")
    res = evaluate(kb, data, cfg)
    assert set(res) == {"dataset", "n", "modes", "router", "composition", "timings_s"}
    assert res["dataset"] == "eval_fixture.json" and res["n"] == 11
    for m in ("base", "context", "atoms"):
        s = res["modes"][m]
        assert MODE_KEYS <= set(s) and s["answerable"] == 9 and s["unanswerable"] == 2
        assert set(s["short"]) == {"f1", "em", "acc"}
        assert m in res["timings_s"]
    assert res["modes"]["base"]["refusal_accuracy"] == 0.0  # base never refuses
    assert res["modes"]["base"]["false_refusal"] == 0.0
    assert {"recall@1", "recall@8"} <= set(res["router"])
    assert res["composition"]["k"] == [1, 2, 4] and len(res["composition"]["accuracy"]) == 3
    assert res["timings_s"]["ingest"] >= 0 and "compose" in res["timings_s"]
    json.dumps(res)  # serialisable as is
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 33 and {r["mode"] for r in rows} == {"base", "context", "atoms"}
    assert all("short" in r and "prediction" in r for r in rows)
    comp = [json.loads(x) for x in (tmp_path / "out" / "composition.jsonl").read_text().splitlines()]
    assert len(comp) == 27 and all(len(r["extra"]) == r["k"] - 1 for r in comp)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == res
    assert "recall@1" in table(res)


def test_second_run_reuses_compiled_atoms(kb):
    before = {a.id for a in kb.atoms()}
    res = evaluate(kb, read_dataset(FIXTURE, "squad"), EvalConfig(modes=["base"], max_new_tokens=2,
                                                                  progress=False, limit=3))
    assert {a.id for a in kb.atoms()} == before
    assert res["n"] == 3


def test_recall_counts_own_paragraph_hits(kb):
    data = read_dataset(FIXTURE, "squad")
    doc_of = kb.store.atom_rowids_of_docs()
    rec, rows = router_recall(kb, data.questions, doc_of, "squad")
    assert rec["n"] == 9 and len(rows) == 9  # answerable only
    routes = kb.route([q.question for q in data.questions if not q.impossible], top_k=8)
    answerable = [q for q in data.questions if not q.impossible]
    want1 = sum(bool(r.ids) and doc_of[r.ids[0]] in q.docs for q, r in zip(answerable, routes)) / 9
    want8 = sum(any(doc_of[i] in q.docs for i in r.ids) for q, r in zip(answerable, routes)) / 9
    assert rec["recall@1"] == round(want1, 4) and rec["recall@8"] == round(want8, 4)
    assert rec["recall@8"] >= rec["recall@1"]
    # HotpotQA needs every supporting paragraph among the routed atoms for a hit@8
    q = answerable[0]
    other = next(d for d in (x.id for x in data.documents) if d not in q.docs)
    q2 = type(q)(id="both", question=q.question, answers=q.answers, impossible=False, docs=q.docs + [other])
    rec_h, _ = router_recall(kb, [q2], doc_of, "hotpot")
    r = kb.route([q.question], top_k=8)[0]
    assert rec_h["recall@8"] == float({doc_of[i] for i in r.ids} >= set(q2.docs))


def test_unrelated_atoms_are_seeded_nested_and_foreign(kb):
    data = read_dataset(FIXTURE, "squad")
    by_doc = {}
    for a, d in kb.store.atom_rowids_of_docs().items():
        by_doc.setdefault(d, []).append(a)
    q = data.questions[0]
    own = {f"a{a}" for a in by_doc[q.docs[0]]}
    seven = unrelated_atoms(q, [], by_doc, set(q.docs), 7, seed=0)
    three = unrelated_atoms(q, [], by_doc, set(q.docs), 3, seed=0)
    assert len(seven) == 7 and len(set(seven)) == 7 and not own & set(seven)
    assert three == seven[:3]  # nested: the k=4 draw is the start of the k=8 draw
    assert unrelated_atoms(q, [], by_doc, set(q.docs), 7, seed=1) != seven
    routed = [int(seven[0][1:])]
    assert seven[0] not in unrelated_atoms(q, routed, by_doc, set(q.docs), 7, seed=0)


def test_cli_json_prints_one_object(kb_dir, tiny_base, capsys):
    rc = cli.main([str(FIXTURE), "--kb", str(kb_dir), "--base-model", str(tiny_base), "--modes", "base,atoms",
                   "--compose-k", "1,2", "--limit", "4", "--max-new-tokens", "2", "--short", "none", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(out)
    assert out.count("\n") == 1 and list(res["modes"]) == ["base", "atoms"] and res["n"] == 4
    assert "short" not in res["modes"]["atoms"]


def test_cli_rejects_unknown_mode(kb_dir, tiny_base, capsys):
    rc = cli.main([str(FIXTURE), "--kb", str(kb_dir), "--base-model", str(tiny_base), "--modes", "base,rag"])
    assert rc == 2 and "--modes" in capsys.readouterr().err


def test_router_recall_counts_every_provenance_of_a_merged_atom():
    from types import SimpleNamespace

    from serving.evaluate.datasets import EvalQuestion

    from router.select import RouterConfig

    class FakeKB:
        _router = SimpleNamespace(config=RouterConfig())

        def router(self):
            return self._router

        def route(self, questions, top_k=None):
            return [SimpleNamespace(ids=[7, 9], best=0.9, refused=False) for _ in questions]

    q = EvalQuestion(id="q", question="?", answers=["x"], docs=["B"], impossible=False)
    # atom 7 was merged: first stated by A, also by B (the question's paragraph)
    rec, _ = router_recall(FakeKB(), [q], {7: ["A", "B"], 9: ["C"]}, "squad")
    assert rec["recall@1"] == 1.0 and rec["recall@8"] == 1.0
    rec, _ = router_recall(FakeKB(), [q], {7: "A", 9: "C"}, "squad")  # first provenance only: a miss
    assert rec["recall@1"] == 0.0 and rec["recall@8"] == 0.0
    # an atom also stated by the question's own paragraph is never drawn as "unrelated"
    assert "a7" not in unrelated_atoms(q, [], {"A": [7], "B": [7], "C": [9]}, {"B"}, 5, seed=0)


def test_router_recall_tells_refusals_from_ranking_misses():
    from types import SimpleNamespace

    from router.select import RouterConfig
    from serving.evaluate.datasets import EvalQuestion

    class RefusingKB:  # refuses at the calibrated threshold; its ranking alone finds the paragraph
        _router = SimpleNamespace(config=RouterConfig())

        def router(self):
            return self._router

        def route(self, questions, top_k=None):
            if self._router.config.threshold == -1.0:
                return [SimpleNamespace(ids=[7], best=0.01, refused=False) for _ in questions]
            return [SimpleNamespace(ids=[], best=0.01, refused=True) for _ in questions]

    kb = RefusingKB()
    q = EvalQuestion(id="q", question="?", answers=["x"], docs=["B"], impossible=False)
    rec, rows = router_recall(kb, [q], {7: ["B"]}, "squad")
    assert rec["recall@8"] == 0.0 and rec["ranking"] == {"recall@1": 1.0, "recall@8": 1.0}
    assert rows[0]["refused"] and rows[0]["ranking_hit@8"]
    assert kb.router().config.threshold is None  # the threshold is restored
