"""Near-duplicate atoms across documents merge into one atom that keeps every provenance."""

import pytest

from doc2atom.atomizer import atomize_many
from doc2atom.merge import merge_near_duplicates, near_duplicate
from doc2atom.readers import document_from_text
from doc2atom.schemas import AtomDraft


def _a(text, start=0, typ="statement"):
    return AtomDraft(type=typ, text=text, key=text, start=start, end=start + len(text))


@pytest.mark.parametrize("a,b,same", [
    ("The Korrin Bridge is 412 metres long.", "The Korrin Bridge is 412 metres long", True),
    ("The Korrin Bridge is 412 metres long.", "the korrin bridge is 412 metres long.", True),
    ("The Korrin Bridge is 412 metres long.", "The Korrin Bridge is 413 metres long.", False),  # numbers must match
    ("The Korrin Bridge opened in 1957.", "The Korrin Bridge did not open in 1957.", False),  # negation must match
    ("Velmora exports cobalt glass.", "Velmora exports salted fish.", False),
    ("Velmora was founded in 1843 by Ilse Varn.", "In 1843 Velmora was founded by Ilse Varn.", True),
])
def test_near_duplicate(a, b, same):
    assert near_duplicate(a, b) is same


def test_merge_keeps_every_provenance_in_order():
    merged = merge_near_duplicates([
        ("d1", [_a("The Korrin Bridge is 412 metres long."), _a("The bridge opened in 1957.", 40)]),
        ("d2", [_a("The Korrin Bridge is 412 metres long", 7), _a("The Korrin Bridge is 413 metres long.", 60)]),
        ("d3", []),
        ("d4", [_a("The Korrin Bridge is 412 metres long.", 3)]),
    ])
    assert [(m.text, [(s.doc, s.start) for s in m.sources]) for m in merged] == [
        ("The Korrin Bridge is 412 metres long.", [("d1", 0), ("d2", 7), ("d4", 3)]),
        ("The bridge opened in 1957.", [("d1", 40)]),
        ("The Korrin Bridge is 413 metres long.", [("d2", 60)]),
    ]


def test_merge_is_a_partition():
    atoms = [("d%d" % (i % 3), [_a(f"Fact number {i % 7} about Velmora.", i)]) for i in range(30)]
    merged = merge_near_duplicates(atoms)
    assert sum(len(m.sources) for m in merged) == 30
    assert len(merged) == 7


def test_merge_on_real_atoms(nlp):
    docs = [document_from_text("a", "Velmora is a harbour town. It was founded in 1843.", title="Velmora"),
            document_from_text("b", "Velmora was founded in 1843. Velmora exports glass.", title="Velmora")]
    per_doc = list(atomize_many(docs, nlp))
    merged = merge_near_duplicates([(d.id, atoms) for d, atoms in zip(docs, per_doc)])
    founded = [m for m in merged if m.text == "Velmora was founded in 1843."]
    assert len(founded) == 1 and [s.doc for s in founded[0].sources] == [docs[0].id, docs[1].id]
    assert len(merged) == 3


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold"):
        merge_near_duplicates([], threshold=0)
