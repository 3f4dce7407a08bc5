from doc2atom.atomizer import atomize, blocks
from doc2atom.readers import document_from_text


def _atoms(text, nlp):
    d = document_from_text("t.md", text)
    return d, atomize(d, nlp)


def test_spans_point_at_the_source_sentence(nlp):
    text = "# Velmora\n\nVelmora is a harbour town.  Velmora was founded in 1843.\nThe export is glass.\n"
    d, atoms = _atoms(text, nlp)
    assert [a.text for a in atoms] == ["Velmora is a harbour town.", "Velmora was founded in 1843.",
                                       "The export is glass."]
    for a in atoms:
        assert " ".join(d.text[a.start:a.end].split()) == a.text


def test_headings_and_code_are_context_not_atoms(nlp):
    text = "# The Bridge Is Green\n\n```\nx = 1 is code here\n```\n\nThe Korrin Bridge is green.\n"
    _, atoms = _atoms(text, nlp)
    assert [a.text for a in atoms] == ["The Korrin Bridge is green."]
    # the heading gives context to the key
    assert atoms[0].key.startswith("The Bridge Is Green: ")


def test_list_items_are_atoms_without_bullets(nlp):
    text = "Facts:\n\n- The thessaloop has seven reeds.\n* Oren Pask invented the thessaloop.\n1. Players use salt water.\n"
    d, atoms = _atoms(text, nlp)
    assert [a.text for a in atoms] == ["The thessaloop has seven reeds.", "Oren Pask invented the thessaloop.",
                                       "Players use salt water."]
    assert d.text[atoms[0].start] == "T"


def test_fragments_without_a_verb_are_dropped(nlp):
    _, atoms = _atoms("The Korrin Bridge\n\nThe Korrin Bridge opened in 1957.", nlp)
    assert [a.text for a in atoms] == ["The Korrin Bridge opened in 1957."]


def test_blocks_offsets():
    text = "a b c\nd e\n\n- item one\n"
    spans = list(blocks(text))
    assert [text[s:e] for s, e, _ in spans] == ["a b c\nd e", "item one"]
