import numpy as np
import pytest
import torch

from doc2atom import errors
from doc2atom.readers import document_from_text
from doc2atom.schemas import AtomDraft
from doc2atom.store import KBStore


def _doc(text="Alpha is first. Beta is second.", key="doc.txt"):
    return document_from_text(key, text)


def _drafts(doc):
    a = AtomDraft(type="statement", text=doc.text[0:15], key=doc.text[0:15], start=0, end=15)
    b = AtomDraft(type="statement", text=doc.text[16:31], key=doc.text[16:31], start=16, end=31)
    return [a, b]


def _tensors(n, fill=None):
    A = torch.randn(n, 2, 8)
    B = torch.randn(n, 4, 2)
    if fill is not None:
        A.fill_(fill)
    return {"m.A": A.half(), "m.B": B.half()}


def _commit(store, doc, tensors=None):
    drafts = _drafts(doc)
    shard = store.write_shard(tensors or _tensors(2), 2)
    return store.commit_document(doc, drafts, shard, [{}, {}], np.eye(2, 3, dtype=np.float32))


def test_missing_kb_is_a_clear_error(tmp_path):
    with pytest.raises(errors.NotFoundError, match="no knowledge base"):
        KBStore(tmp_path / "nope")


def test_commit_list_show_and_weights_roundtrip(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    doc = _doc()
    t = _tensors(2)
    ids = _commit(s, doc, t)
    assert [a.id for a in s.list_atoms()] == ids
    d = s.atom_detail(ids[1])
    assert d["source_text"] == "Beta is second." and d["source"]["line"] == 1
    w = s.load_weights([ids[1], ids[0]])
    assert torch.equal(w["m"][0][0], t["m.A"][1].float())
    assert torch.equal(w["m"][1][1], t["m.B"][0].float())
    assert s.is_current(doc)


def test_replace_and_forget_remove_rows_and_garbage_shards(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    doc = _doc()
    old = _commit(s, doc)
    new = _commit(s, _doc("Alpha is first. Beta is second!"))
    assert set(old).isdisjoint(new) and s.count_atoms() == 2
    assert s.gc_shards() == 1  # the replaced document's shard
    res = s.forget("doc.txt")
    assert res["atoms_removed"] == 2 and s.count_atoms() == 0
    assert s.gc_shards() == 1 and not list(s.shards.iterdir())
    with pytest.raises(errors.NotFoundError):
        s.forget("doc.txt")


def test_unknown_ids_and_bad_weights(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    ids = _commit(s, _doc(), _tensors(2, fill=float("nan")))
    with pytest.raises(errors.NotFoundError, match="a999"):
        s.atom_detail("a999")
    with pytest.raises(errors.NotFoundError):
        s.atom_detail("not-an-id")
    with pytest.raises(errors.CorruptWeights, match="NaN"):
        s.load_weights(ids)


def test_truncated_shard_is_reported(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    ids = _commit(s, _doc())
    shard = next(s.shards.iterdir())
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(errors.CorruptWeights):
        s.load_weights(ids)


def test_base_model_is_bound_once(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    s.bind_base("base-a", "a" * 64, {"x": 1})
    s.bind_base("base-a", "a" * 64, {"x": 1})
    with pytest.raises(errors.BaseModelMismatch, match="base-a"):
        s.check_base("base-b", "b" * 64)


def test_failed_transaction_leaves_previous_state(tmp_path):
    s = KBStore(tmp_path / "kb", create=True)
    doc = _doc()
    ids = _commit(s, doc)
    with pytest.raises(AssertionError):  # mismatched lengths are rejected before any write
        s.commit_document(doc, _drafts(doc), "x", [{}], np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(Exception):
        with s.transaction():
            s.conn.execute("DELETE FROM atoms")
            raise RuntimeError("crash in the middle")
    assert [a.id for a in s.list_atoms()] == ids
