"""The taxonomy: one hand-written passage per type, with its expected type and key."""

import pytest

from doc2atom.atom_types import TYPE_DOCS, key_context, make_key
from doc2atom.atomizer import atomize
from doc2atom.readers import document_from_text
from doc2atom.schemas import ATOM_TYPES

CASES = [
    # (title, sentence, type, expected key)
    ("Thessaloop", "A thessaloop is a wind instrument with seven glass reeds.", "definition",
     "A thessaloop: definition; A thessaloop is a wind instrument with seven glass reeds."),
    ("Ossel", "The Ossel is also known as the Grey River.", "definition",
     "The Ossel: definition; The Ossel is also known as the Grey River."),
    ("Velmora", "Velmora was founded in 1843 by the glassmaker Ilse Varn.", "event",
     "Velmora founded: 1843; Velmora was founded in 1843 by the glassmaker Ilse Varn."),
    ("Velmora", "The Lantern Fair of Velmora is held every October.", "event",
     "The Lantern Fair of Velmora held: October; The Lantern Fair of Velmora is held every October."),
    ("Korrin Bridge", "The Korrin Bridge is 412 metres long.", "quantity",
     "The Korrin Bridge long: 412 metres; The Korrin Bridge is 412 metres long."),
    ("Zarnic acid", "Zarnic acid boils at 143 degrees Celsius.", "quantity",
     "Zarnic acid boil: 143 degrees Celsius; Zarnic acid boils at 143 degrees Celsius."),
    ("Korrin Bridge", "The Korrin Bridge crosses the Ossel River at Brantwick.", "relation",
     "The Korrin Bridge cross the Ossel River; The Korrin Bridge crosses the Ossel River at Brantwick."),
    ("Velmora", "The main export of Velmora is cobalt-blue glass.", "attribute",
     "The main export of Velmora: glass; The main export of Velmora is cobalt-blue glass."),
    ("Velmora", "The harbour of Velmora is deep and sheltered.", "attribute",
     "The harbour of Velmora: deep; The harbour of Velmora is deep and sheltered."),
    ("Thessaloop", "Thessaloop players tune their instruments with warm salt water.", "statement",
     "Thessaloop players tune their instruments with warm salt water."),
]


@pytest.mark.parametrize("title,text,typ,key", CASES, ids=[f"{c[2]}:{c[1][:30]}" for c in CASES])
def test_type_and_key(nlp, title, text, typ, key):
    d = document_from_text("t/" + title, text, title=title)
    atoms = atomize(d, nlp)
    assert [(a.type, a.key) for a in atoms] == [(typ, key)]


def test_list_member_type(nlp):
    text = "# Velmora\n\nThe port of Velmora exports:\n\n- cobalt glass\n- dried eels\n"
    d = document_from_text("t.md", text)
    atoms = atomize(d, nlp)
    assert [(a.type, a.text, d.text[a.start:a.end]) for a in atoms] == [
        ("list_member", "The port of Velmora exports cobalt glass.", "cobalt glass"),
        ("list_member", "The port of Velmora exports dried eels.", "dried eels")]
    assert atoms[0].key == "The port of Velmora exports: cobalt glass; The port of Velmora exports cobalt glass."


def test_every_type_is_documented():
    assert set(TYPE_DOCS) == set(ATOM_TYPES)
    assert "statement" in ATOM_TYPES  # the fallback keeps its v1 name


def test_key_leaves_out_what_the_text_already_says():
    assert make_key("Velmora founded: 1843", "Velmora was founded in 1843.", "Velmora") == \
        "Velmora founded: 1843; Velmora was founded in 1843."
    assert make_key("The town: deep", "The harbour is deep.", "Velmora") == "Velmora; The town: deep; The harbour is deep."
    assert make_key("x y", "X y z.", None) == "X y z."


def test_key_context_is_title_then_heading():
    assert key_context("Uses", "Orvanite") == ["Orvanite", "Uses"]
    assert key_context("Orvanite in art", "Orvanite") == ["Orvanite in art"]
    assert key_context(None, "Orvanite") == ["Orvanite"]
    assert key_context("Uses", "") == ["Uses"]
    assert make_key("crystal keep: Museum", "The crystal is kept at the Museum.", ["Orvanite", "Uses"]) == \
        "Orvanite; Uses; crystal keep: Museum; The crystal is kept at the Museum."
    assert make_key("x", "Orvanite is green.", ["Orvanite", "Uses"]) == "Uses; x; Orvanite is green."
