"""Near-duplicate atoms across documents in the KB store: one atom, every provenance.

No model is needed: drafts are written by hand, `plan_ingest` decides what to compile, and
random fp16 tensors stand in for compiled weights (the pipeline does the same with real ones).
"""

import sqlite3

import numpy as np
import pytest
import torch

from doc2atom import errors
from doc2atom.merge import plan_ingest, signature_key
from doc2atom.readers import document_from_text
from doc2atom.schemas import AtomDraft
from doc2atom.store import KBStore

BRIDGE = "The Korrin Bridge is 412 metres long."
A_TEXT = f"Alpha is the first letter. {BRIDGE} It was painted red."
B_TEXT = f"Velmora is a port town.\n\n{BRIDGE[:-1]}"  # the same fact without its full stop


def _draft(doc, sentence, text=None):
    start = doc.text.index(sentence)
    t = text or sentence
    return AtomDraft(type="statement", text=t, key=t, start=start, end=start + len(sentence))


def _docs():
    a = document_from_text("a.txt", A_TEXT)
    b = document_from_text("b.txt", B_TEXT)
    da = [_draft(a, "Alpha is the first letter."), _draft(a, BRIDGE), _draft(a, "It was painted red.",
                                                                              "The Korrin Bridge was painted red.")]
    db = [_draft(b, "Velmora is a port town."), _draft(b, BRIDGE[:-1])]
    return (a, da), (b, db)


def _ingest(store, pairs):
    """What KnowledgeBase._ingest does, with fake weights: plan, then one commit per document."""
    docs = [d for d, _ in pairs]
    plans = plan_ingest([drafts for _, drafts in pairs],
                        lambda keys: store.atoms_by_signature(keys, exclude_docs=[d.id for d in docs]),
                        own=[store.own_atoms(d.id) for d in docs])
    made, removed = {}, []
    for j, (doc, plan) in enumerate(zip(docs, plans)):
        n = len(plan.new)
        shard = store.write_shard({"m.A": torch.randn(n, 2, 8).half(), "m.B": torch.randn(n, 4, 2).half()}, n) \
            if n else None
        links = [(made[r] if isinstance(r, tuple) else r, s, e) for r, s, e in plan.links]
        ids, gone = store.commit(doc, plan.new, shard, [{}] * n, np.eye(n, 3, dtype=np.float32), spans=plan.spans,
                                 links=links)
        made.update({(j, k): a for k, a in enumerate(ids)})
        removed += gone
    return plans, removed


def _bridge(store):
    hits = [a for a in store.list_atoms() if "412" in a.text]
    assert len(hits) == 1
    return hits[0]


def _check_spans(store, atom):
    for s in atom.sources:
        text = store.document(s.doc)["text"]
        assert text[s.start:s.end].rstrip(".") == BRIDGE[:-1]
        assert s.line == text.count("\n", 0, s.start) + 1


@pytest.mark.parametrize("one_call", [True, False])
def test_two_documents_one_atom_two_provenances(tmp_path, one_call):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), (b, db) = _docs()
    if one_call:
        plans, _ = _ingest(s, [(a, da), (b, db)])
        assert [len(p.new) for p in plans] == [3, 1] and plans[1].links == [((0, 1), 25, 61)]
    else:
        _ingest(s, [(a, da)])
        plans, _ = _ingest(s, [(b, db)])
        assert len(plans[0].new) == 1 and len(plans[0].links) == 1
    assert s.count_atoms() == 4
    atom = _bridge(s)
    assert [x.doc for x in atom.sources] == [a.id, b.id] and atom.source == atom.sources[0]
    assert atom.text == BRIDGE  # the more informative text (ties: the earliest) represents the group
    _check_spans(s, atom)
    assert atom.sources[1].line == 3
    # every reader sees every provenance
    assert s.atoms_out([atom.id])[0].sources == atom.sources
    d = s.atom_detail(atom.id)
    assert [x["doc"] for x in d["sources"]] == [a.id, b.id]
    assert [t.rstrip(".") for t in d["source_texts"]] == [BRIDGE[:-1]] * 2 and d["source_text"] == BRIDGE
    assert atom.id in {x.id for x in s.list_atoms(doc="b.txt")} and len(s.list_atoms(doc="b.txt")) == 2
    assert s.document("a.txt")["n_atoms"] == 3 and s.document("b.txt")["n_atoms"] == 2
    assert s.atom_docs()[int(atom.id[1:])] == [a.id, b.id]


def test_forget_removes_provenance_then_the_atom(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), (b, db) = _docs()
    _ingest(s, [(a, da), (b, db)])
    atom = _bridge(s)
    res, removed = s.remove_document("a.txt")
    assert res == {"doc": a.id, "path": "a.txt", "atoms_removed": 2} and len(removed) == 2
    assert int(atom.id[1:]) not in removed
    left = _bridge(s)
    assert left.id == atom.id and [x.doc for x in left.sources] == [b.id] and left.source.doc == b.id
    _check_spans(s, left)
    assert s.atom_rowids_of_docs()[int(atom.id[1:])] == b.id
    # the shard the atom was compiled into stays while the atom does; its weights still load
    assert s.gc_shards() == 0 and s.load_weights([atom.id])["m"][0].shape == (1, 2, 8)
    assert sorted(s.rowids().tolist()) == sorted(int(x.id[1:]) for x in s.list_atoms())
    res, removed = s.remove_document("b.txt")
    assert res["atoms_removed"] == 2 and int(atom.id[1:]) in removed
    assert s.count_atoms() == 0 and not s.conn.execute("SELECT COUNT(*) FROM atom_sources").fetchone()[0]
    assert s.gc_shards() == 2 and not list(s.shards.iterdir())
    with pytest.raises(errors.NotFoundError):
        s.forget("b.txt")


def test_replacing_a_document_keeps_atoms_other_documents_state(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), (b, db) = _docs()
    _ingest(s, [(a, da), (b, db)])
    atom = _bridge(s)
    a2 = document_from_text("a.txt", "Alpha is the first letter.")
    _, removed = _ingest(s, [(a2, [_draft(a2, "Alpha is the first letter.")])])
    # a's own atom it no longer states goes; the shared one stays, and so does "Alpha ...", which a2 states
    # again with the same text and key (kept, not compiled again)
    assert int(atom.id[1:]) not in removed and len(removed) == 1
    assert [x.doc for x in _bridge(s).sources] == [b.id]
    assert s.count_atoms() == 3 and s.document("a.txt")["n_atoms"] == 1
    # the changed document states the fact again: it links to the atom b keeps alive, nothing is compiled
    a3 = document_from_text("a.txt", A_TEXT)
    plans, removed = _ingest(s, [(a3, [_draft(a3, BRIDGE)])])
    assert plans[0].new == [] and plans[0].links == [(atom.id, 27, 64)] and len(removed) == 1
    assert [x.doc for x in _bridge(s).sources] == [b.id, a3.id]
    _check_spans(s, _bridge(s))


def test_atoms_only_stated_by_documents_being_replaced_are_not_reused(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), _ = _docs()
    _ingest(s, [(a, da)])
    key = signature_key(BRIDGE)
    assert s.atoms_by_signature([key]) == {key: _bridge(s).id}
    assert s.atoms_by_signature([key], exclude_docs=[a.id]) == {}  # a is being replaced: its atoms may go
    assert s.atoms_by_signature([signature_key("The Korrin Bridge is 413 metres long.")]) == {}


def test_a_replaced_document_keeps_its_unchanged_atoms(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), _ = _docs()
    _ingest(s, [(a, da)])
    before = {x.text: x.id for x in s.list_atoms()}
    assert s.own_atoms(a.id) == {(x.text, x.key): before[x.text] for x in da}
    # edited: a sentence added in front, one changed, one kept, one dropped
    a2 = document_from_text("a.txt", f"New first line. Alpha is the first letter. {BRIDGE}")
    plans, removed = _ingest(s, [(a2, [_draft(a2, "New first line."), _draft(a2, "Alpha is the first letter."),
                                       _draft(a2, BRIDGE)])])
    assert [d.text for d in plans[0].new] == ["New first line."] and plans[0].reused == 2
    after = {x.text: x for x in s.list_atoms()}
    assert after["Alpha is the first letter."].id == before["Alpha is the first letter."]
    assert after[BRIDGE].id == before[BRIDGE]
    assert [(x.start, x.end) for x in after[BRIDGE].sources] == [(43, 80)]  # its span in the new text
    assert removed == [int(before["The Korrin Bridge was painted red."][1:])]
    _check_spans(s, after[BRIDGE])
    # the same text under another key (a changed heading, say) is compiled again
    a3 = document_from_text("a.txt", "Alpha is the first letter.")
    plans, _ = _ingest(s, [(a3, [AtomDraft(type="statement", text="Alpha is the first letter.", key="Greek; Alpha",
                                           start=0, end=26)])])
    assert len(plans[0].new) == 1 and plans[0].reused == 0


def test_an_atom_two_replaced_documents_state_is_not_taken_from_either(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), (b, db) = _docs()
    _ingest(s, [(a, da), (b, db)])
    assert all("412" not in t for t, _ in s.own_atoms(b.id))  # b states the bridge, but a does too
    # both replaced in one call, each still stating the fact: one group over two documents, compiled once
    a2, b2 = document_from_text("a.txt", BRIDGE), document_from_text("b.txt", BRIDGE)
    plans, _ = _ingest(s, [(a2, [_draft(a2, BRIDGE)]), (b2, [_draft(b2, BRIDGE)])])
    assert len(plans[0].new) == 1 and plans[0].reused == 0 and plans[1].links == [((0, 0), 0, 37)]
    _check_spans(s, _bridge(s))


def test_within_one_document_near_duplicates_are_one_atom(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    text = f"{BRIDGE} Then more. {BRIDGE}"
    d = document_from_text("c.txt", text)
    drafts = [_draft(d, BRIDGE), _draft(d, "Then more."), AtomDraft(type="statement", text=BRIDGE, key=BRIDGE,
                                                                     start=len(text) - len(BRIDGE), end=len(text))]
    plans, _ = _ingest(s, [(d, drafts)])
    assert len(plans[0].new) == 2 and plans[0].spans[0] == [(0, 37), (49, 86)] and plans[0].links == []
    atom = _bridge(s)
    assert [(x.start, x.end) for x in atom.sources] == [(0, 37), (49, 86)]
    _check_spans(s, atom)
    assert s.document("c.txt")["n_atoms"] == 2


def test_link_to_a_missing_atom_rolls_the_document_back(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    (a, da), (b, db) = _docs()
    _ingest(s, [(a, da)])
    before = [(x.id, x.sources) for x in s.list_atoms()]
    with pytest.raises(errors.NotFoundError):
        s.commit(b, [], None, [], np.zeros((0, 3), np.float32), links=[("a999", 25, 61)])
    assert s.document("b.txt") is None and [(x.id, x.sources) for x in s.list_atoms()] == before


# schema 1, as doc2atom wrote it before atom_sources existed (frozen copy)
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, title TEXT NOT NULL, sha256 TEXT NOT NULL,
    text TEXT NOT NULL, status TEXT NOT NULL, n_atoms INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE atoms (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    type TEXT NOT NULL, text TEXT NOT NULL, key TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    shard TEXT NOT NULL, offset INTEGER NOT NULL,
    stats TEXT NOT NULL, embedding BLOB NOT NULL
);
CREATE INDEX atoms_doc ON atoms(doc_id);
CREATE INDEX atoms_shard ON atoms(shard);
"""


def test_schema_1_kb_is_migrated_on_open(tmp_path):
    (a, da), (b, db) = _docs()
    kb = tmp_path / "kb"
    (kb / "shards").mkdir(parents=True)
    con = sqlite3.connect(kb / "kb.sqlite")
    con.executescript(_SCHEMA_1)
    con.execute("INSERT INTO meta VALUES ('schema', '1')")
    con.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, 'ready', 3, 0)", (a.id, a.path, a.title, a.sha256, a.text))
    for i, d in enumerate(da):
        con.execute('INSERT INTO atoms(doc_id, type, text, key, start, "end", shard, offset, stats, embedding) '
                    "VALUES (?, ?, ?, ?, ?, ?, 'x.safetensors', ?, '{}', ?)",
                    (a.id, d.type, d.text, d.key, d.start, d.end, i, np.zeros(3, np.float32).tobytes()))
    con.commit()
    con.close()

    s = KBStore(kb)
    assert s.get_meta("schema") == "2"
    atoms = s.list_atoms()
    assert [(x.text, x.source.start, x.source.end) for x in atoms] == [(d.text, d.start, d.end) for d in da]
    assert all(len(x.sources) == 1 and x.sources[0] == x.source and x.source.doc == a.id for x in atoms)
    assert [r[0] for r in s.conn.execute("SELECT sig FROM atoms ORDER BY rowid")] == [signature_key(d.text) for d in da]
    s.close()
    s = KBStore(kb)  # opening again changes nothing
    assert s.conn.execute("SELECT COUNT(*) FROM atom_sources").fetchone()[0] == 3
    # a migrated atom is found by its signature: a new document's near-duplicate adds a provenance
    plans, _ = _ingest(s, [(b, db)])
    assert plans[0].links == [(atoms[1].id, 25, 61)]
    assert [x.doc for x in _bridge(s).sources] == [a.id, b.id]
    res = s.forget(a.id)
    assert res["atoms_removed"] == 2 and [x.doc for x in _bridge(s).sources] == [b.id]


def test_unknown_schema_is_refused(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    s.set_meta("schema", "99")
    s.close()
    with pytest.raises(errors.KBError, match="schema 99"):
        KBStore(tmp_path / "kb")
