"""The Router on data/sample with the real embedder: hybrid routing, refusal, allow_base, multi-hop,
calibration, id stability across forget/add, and the index staying consistent with SQLite on failure."""

import json

import faiss
import numpy as np
import pytest
from router_helpers import commit_docs, embedder, sample_kb, sample_kb_master  # noqa: F401 (fixtures)

from conftest import SAMPLE
from doc2atom.store import KBStore
from router.index import INDEX_FILE
from router.router import ROUTER_FILE, Router
from router.select import RouterConfig

pytestmark = pytest.mark.slow


def _open(folder, embedder, **cfg):
    store = KBStore(folder)
    return store, Router.open(folder, store, embedder, RouterConfig(**cfg))


def _texts(store, ids):
    return [store.atom_detail(f"a{i}")["text"] for i in ids]


def test_routes_direct_questions_and_finds_names_and_numbers(sample_kb, embedder):
    store, r = _open(sample_kb, embedder)
    qs = {"Who designed the Korrin Bridge?": "Maud Ellery designed",
          "What opened to traffic in 1957?": "opened to traffic in 1957",
          "How many people live in Velmora?": "4,200",
          "What did Petra Lindqvist isolate?": "Petra Lindqvist",
          "Tell me about the Calder Dome.": "Calder Dome"}
    for (q, want), route in zip(qs.items(), r.route(list(qs))):
        assert not route.refused, q
        assert want in _texts(store, route.ids[:1])[0], q
        d = route.details[0]
        assert d.learned == pytest.approx(route.scores[0], abs=1e-4) and d.weight == 1.0 and d.hop == 1
        assert d.dense > 0 and d.lexical > 0 and 0 < d.cover <= 1


def test_refuses_out_of_scope_and_allow_base_flags_it(sample_kb, embedder):
    qs = ["What is the capital of Japan?", "Who painted the Mona Lisa?", "How do I bake sourdough bread?",
          "What year did the Second World War end?"]
    _, r = _open(sample_kb, embedder)
    for route in r.route(qs):
        assert route.refused and route.ids == [] and not route.use_base
        assert route.best < route.threshold
        assert len(route.details) == 1 and route.details[0].weight == 0.0  # the nearest miss, for --explain
    _, rb = _open(sample_kb, embedder, allow_base=True)
    assert all(x.refused and x.use_base for x in rb.route(qs))


def test_two_hop_question_composes_both_atoms(sample_kb, embedder):
    store, r = _open(sample_kb, embedder)
    route = r.route(["Who founded the town where the thessaloop was invented?"], top_k=1)[0]
    texts = _texts(store, route.ids)
    assert len(texts) == 2, texts
    assert any("thessaloop was invented" in t for t in texts) and any("founded in 1843" in t for t in texts)
    assert sorted(d.hop for d in route.details) == [1, 2] and min(route.weights) > 0.2
    # a single-hop question keeps one atom
    assert len(r.route(["Who founded Velmora?"], top_k=1)[0].ids) == 1


def test_calibration_is_saved_and_reported(sample_kb, embedder):
    state = json.loads((sample_kb / ROUTER_FILE).read_text())
    m = state["metrics"]
    assert 0.0 < state["threshold"] < 1.0 and state["calibrated_atoms"] >= 20
    assert m["heldout_routed"] >= 0.95 and m["oos_refused"] >= 0.8 and m["questions"] > 50
    _, r = _open(sample_kb, embedder)
    assert r.threshold == pytest.approx(state["threshold"]) and not r.needs_calibration()
    _, fixed = _open(sample_kb, embedder, threshold=0.99)
    assert fixed.threshold == 0.99


def test_ids_stable_across_forget_and_add(sample_kb, embedder, nlp):
    store, r = _open(sample_kb, embedder)
    doc = next(d for d in store.documents() if d["path"].endswith("velmora.md"))
    old = [int(a.id[1:]) for a in store.list_atoms(doc=doc["id"])]
    keep = {int(a.id[1:]): a.text for a in store.list_atoms() if int(a.id[1:]) not in old}
    store.forget(doc["id"])
    r.on_commit([], old, None)
    route = r.route(["Who founded Velmora?"], top_k=8)[0]
    assert not set(route.ids) & set(old)
    assert np.array_equal(r.dense.ids(), store.rowids())
    # re-ingest: new atoms get new ids, every other atom keeps its id and text
    before = set(store.rowids().tolist())
    new_ids, vecs = commit_docs(store, [SAMPLE / "velmora.md"], nlp, embedder)
    assert min(new_ids) > max(before | set(old))
    r.on_commit(new_ids, [], vecs)
    assert {i: t for i, t in ((int(a.id[1:]), a.text) for a in store.list_atoms()) if i in keep} == keep
    route = r.route(["Who founded Velmora?"])[0]
    assert route.ids[0] in new_ids
    store2, again = _open(sample_kb, embedder)
    assert np.array_equal(again.dense.ids(), store2.rowids())
    assert np.array_equal(again.lexical.rowids, store2.rowids())


def test_index_write_failure_leaves_sqlite_truth_and_a_consistent_rebuild(sample_kb, embedder, monkeypatch):
    store, r = _open(sample_kb, embedder)
    doc = next(d for d in store.documents() if d["path"].endswith("korrin_bridge.txt"))
    old = [int(a.id[1:]) for a in store.list_atoms(doc=doc["id"])]
    on_disk_before = faiss.read_index(str(sample_kb / INDEX_FILE)).ntotal
    store.forget(doc["id"])  # the SQLite transaction commits ...

    def boom(index, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(RuntimeError, match="No space"):
        r.on_commit([], old, None)  # ... and the index write fails
    monkeypatch.undo()
    assert store.document(doc["id"]) is None  # SQLite is the truth and keeps the commit
    assert faiss.read_index(str(sample_kb / INDEX_FILE)).ntotal == on_disk_before  # old file, whole
    assert not set(r.route(["How long is the Korrin Bridge?"], top_k=8)[0].ids) & set(old)  # memory is right
    store2, again = _open(sample_kb, embedder)  # the next open sees the stale file and rebuilds it
    assert np.array_equal(again.dense.ids(), store2.rowids()) and not set(again.dense.ids()) & set(old)
    assert faiss.read_index(str(sample_kb / INDEX_FILE)).ntotal == len(store2.rowids())
    assert np.array_equal(again.lexical.rowids, store2.rowids())


def test_crash_before_index_write_is_rebuilt_on_open(sample_kb, embedder):
    store = KBStore(sample_kb)
    doc = next(d for d in store.documents() if d["path"].endswith("zarnic_acid.html"))
    store.forget(doc["id"])  # committed, and the process "dies" before the router hears of it
    store2, r = _open(sample_kb, embedder)
    assert np.array_equal(r.dense.ids(), store2.rowids()) and np.array_equal(r.lexical.rowids, store2.rowids())
    assert r.route(["What does zarnic acid smell of?"])[0].refused or \
        "zarnic" not in " ".join(_texts(store2, r.route(["What does zarnic acid smell of?"])[0].ids)).lower()


def test_router_serves_a_kb_the_pipeline_built(tmp_path, tiny_base, sample_copy, embedder):
    from conftest import fast_compile
    from serving.pipeline import KnowledgeBase

    kb = KnowledgeBase(tmp_path / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    kb.ingest([str(sample_copy)])
    r = Router.open(kb.path, kb.store, embedder)
    assert np.array_equal(r.dense.ids(), kb.store.rowids()) and np.array_equal(r.lexical.rowids, kb.store.rowids())
    state = r.calibrate()  # on the questions compilation stored in each atom's stats
    assert state["metrics"]["questions"] >= 2 * state["metrics"]["atoms"] > 0
    route = r.route(["Who designed the Korrin Bridge?", "What is the capital of Japan?"])
    assert "Maud Ellery" in _texts(kb.store, route[0].ids[:1])[0] and route[1].refused


def test_routes_from_another_thread(sample_kb, embedder):
    # the HTTP server opens the router on one thread and routes on its worker thread
    import threading

    _, r = _open(sample_kb, embedder)
    r.lexical = None  # stale: the worker thread must rebuild it from kb.sqlite on its own connection
    out = {}
    t = threading.Thread(target=lambda: out.update(route=r.route(["Who founded the town where the thessaloop "
                                                                 "was invented?"], top_k=1)[0]))
    t.start()
    t.join()
    assert len(out["route"].ids) == 2


@pytest.mark.parametrize("approx", ["ivf", "hnsw"])
def test_approximate_index_path_end_to_end(sample_kb, embedder, approx):
    # exact_max below the KB's size: the router opens (rebuilds) an approximate index and keeps ids through forget
    store, r = _open(sample_kb, embedder, exact_max=5, approx=approx)
    assert r.dense.kind == approx and np.array_equal(r.dense.ids(), store.rowids())
    doc = next(d for d in store.documents() if d["path"].endswith("korrin_bridge.txt"))
    old = [int(a.id[1:]) for a in store.list_atoms(doc=doc["id"])]
    store.forget(doc["id"])
    r.on_commit([], old, None)
    assert np.array_equal(r.dense.ids(), store.rowids())
    route = r.route(["Who captains the Mirefield Otters?"])[0]
    assert "Jonas Rook" in _texts(store, route.ids[:1])[0]
    store2, again = _open(sample_kb, embedder, exact_max=5, approx=approx)
    assert again.dense.kind == approx and np.array_equal(again.dense.ids(), store2.rowids())


def test_a_calibration_that_refuses_nothing_gives_way_to_the_defaults(tmp_path, nlp, embedder):
    """Five atoms (data/sample/korrin_bridge.txt): the fit saturates, every held-out question in scope or not
    scores p = 1 and the threshold lands at 1.0, so nothing would be refused. The uncalibrated router does
    better on the same held-out questions and is kept."""
    from router_helpers import build_store

    from router.calibrate import KEEP_MARGIN
    from router.router import DEFAULT_THRESHOLD

    store = build_store(tmp_path / "kb", [SAMPLE / "korrin_bridge.txt"], nlp, embedder)
    r = Router.open(tmp_path / "kb", store, embedder)
    state = r.calibrate()
    m = state["metrics"]
    assert m["chosen"] == "default"
    assert m["heldout_balanced_default"] > m["heldout_balanced_calibrated"] + KEEP_MARGIN
    assert state["threshold"] == DEFAULT_THRESHOLD == r.threshold
    route = r.route(["Who designed the Korrin Bridge?", "What is the capital of Japan?", "Who painted the Mona Lisa?"])
    assert [x.refused for x in route] == [False, True, True]
    assert "Maud Ellery" in _texts(store, route[0].ids[:1])[0]


def test_calibration_is_kept_unless_the_defaults_do_clearly_better(sample_kb, embedder, monkeypatch):
    import router.calibrate as cal
    from router.learned import LearnedRouter

    _, r = _open(sample_kb, embedder)
    state = r.calibrate()
    assert state["metrics"]["chosen"] == "calibrated"  # 23 atoms: the fit holds
    real_fit = LearnedRouter.fit

    def saturated(*a, **k):  # a fit whose every score is 1: it routes everything
        m = real_fit(*a, **k)
        m.w = m.w * 0.0
        m.w[-1] = 40.0
        return m

    monkeypatch.setattr(cal.LearnedRouter, "fit", staticmethod(saturated))
    state = r.calibrate()
    assert state["metrics"]["chosen"] == "default" and state["metrics"]["heldout_balanced_calibrated"] <= 0.5
    assert r.route(["What is the capital of Japan?"])[0].refused


def test_a_calibration_from_before_the_defaults_check_is_redone(sample_kb, embedder):
    _, r = _open(sample_kb, embedder)
    assert not r.needs_calibration() and "chosen" in r.state["metrics"]
    r.state["metrics"].pop("chosen")  # as router.json was written before stop 17
    assert r.needs_calibration()
    r.flush()
    assert "chosen" in r.state["metrics"] and not r.needs_calibration()
