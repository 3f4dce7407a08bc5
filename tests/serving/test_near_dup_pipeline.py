"""Near-duplicates through the pipeline (tiny random base, real atomizer, embedder, store and
index): a fact stated by several documents is compiled once and keeps every provenance."""

import numpy as np
import pytest

from conftest import fast_compile
from router.index import KeyIndex
from serving.cli import explain_table
from serving.pipeline import KnowledgeBase

BRIDGE = "The Korrin Bridge is 412 metres long."
TEXTS = {
    "a.txt": f"Korrin Bridge\n\n{BRIDGE} The Korrin Bridge crosses the Ossel River.\n",
    "b.txt": f"Velmora\n\nVelmora is a port town on the Ossel River. {BRIDGE}\n",
    "c.txt": f"{BRIDGE}\n",
}


@pytest.fixture()
def files(tmp_path):
    out = {}
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text)
        out[name] = str((tmp_path / name).resolve())
    return out


def _kb(tmp_path, tiny_base):
    return KnowledgeBase(tmp_path / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)


def _consistent(k: KnowledgeBase) -> None:
    disk = KeyIndex.open(k.path, k.store, k.embedder().dim, write=False)
    assert np.array_equal(disk.ids(), k.store.rowids())
    assert np.array_equal(k.index().ids(), k.store.rowids())


def _bridges(k):
    return [a for a in k.atoms() if a.text == BRIDGE]


def _spans_ok(k, atom):
    for s in atom.sources:
        assert k.store.document(s.doc)["text"][s.start:s.end].rstrip(".") == BRIDGE[:-1]


def test_shared_sentence_is_one_atom_until_its_last_document_goes(tmp_path, tiny_base, files):
    k = _kb(tmp_path, tiny_base)
    k.ingest([files["a.txt"]])
    rep = k.ingest([files["b.txt"]])
    assert rep.merged == 1 and rep.as_dict()["merged"] == 1
    [atom] = _bridges(k)
    assert [s.path for s in atom.sources] == [files["a.txt"], files["b.txt"]] and atom.source == atom.sources[0]
    _spans_ok(k, atom)
    assert atom.id in {a.id for a in k.atoms(doc=files["b.txt"])}
    assert "a.txt:3, b.txt:3" in explain_table(k.store.atoms_out([atom.id], [0.9], [1.0]))
    _consistent(k)

    rep = k.ingest([files["c.txt"]])  # nothing new to compile: only a provenance
    assert rep.atoms == 0 and rep.merged == 1 and rep.added == [files["c.txt"]]
    assert len(_bridges(k)) == 1 and len(_bridges(k)[0].sources) == 3

    res = k.forget(files["a.txt"])
    assert set(res) == {"doc", "path", "atoms_removed"}  # the HTTP ForgetResult shape
    [left] = _bridges(k)
    assert left.id == atom.id and [s.path for s in left.sources] == [files["b.txt"], files["c.txt"]]
    _spans_ok(k, left)
    _consistent(k)
    k.atom_weights([left.id])  # its shard (a's) is kept while it lives

    k.forget(files["b.txt"])
    assert [s.path for s in _bridges(k)[0].sources] == [files["c.txt"]]
    res = k.forget(files["c.txt"])
    assert res["atoms_removed"] == 1 and not _bridges(k) and k.store.count_atoms() == 0
    _consistent(k)
    assert not list(k.store.shards.iterdir())


def test_one_ingest_compiles_a_shared_sentence_once(tmp_path, tiny_base, files):
    k = _kb(tmp_path, tiny_base)
    rep = k.ingest([files["a.txt"], files["b.txt"]])
    assert rep.merged == 1 and rep.atoms == k.store.count_atoms()
    [atom] = _bridges(k)
    assert [s.path for s in atom.sources] == [files["a.txt"], files["b.txt"]]
    _spans_ok(k, atom)
    _consistent(k)
    assert k.ingest([files["a.txt"], files["b.txt"]]).added == []  # unchanged: a no-op
