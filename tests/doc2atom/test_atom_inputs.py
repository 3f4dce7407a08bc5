"""Real inputs: markdown lists and tables become atoms, headings give context, odd documents do not crash."""

from doc2atom.atomizer import atomize, atomize_many, segment
from doc2atom.readers import document_from_text, read_file

TABLE_DOC = """# Brennholt

## Bridges

| Bridge | Length | Opened | Designed by |
| --- | --- | --- | --- |
| Venn Bridge | 212 metres | 1887 | Ida Kross |
| Salt Bridge | 90 metres | 1902 | Aldo Venn |
"""


def test_table_cells_become_attribute_atoms_spanning_the_cell(nlp):
    d = document_from_text("t.md", TABLE_DOC)
    atoms = atomize(d, nlp)
    assert [(a.type, a.text, d.text[a.start:a.end]) for a in atoms] == [
        ("quantity", "The length of Venn Bridge is 212 metres.", "212 metres"),
        ("event", "Venn Bridge was opened in 1887.", "1887"),
        ("attribute", "Venn Bridge was designed by Ida Kross.", "Ida Kross"),
        ("quantity", "The length of Salt Bridge is 90 metres.", "90 metres"),
        ("event", "Salt Bridge was opened in 1902.", "1902"),
        ("attribute", "Salt Bridge was designed by Aldo Venn.", "Aldo Venn"),
    ]
    # the document's title, then the section's heading: whose bridges
    assert atoms[0].key == "Brennholt; Bridges; Venn Bridge: length; The length of Venn Bridge is 212 metres."


def test_segment_finds_the_table_rows_and_list_intro():
    text = "Exports:\n\n- glass\n- eels\n\n| A | B |\n|---|---|\n| x | y |\n"
    kinds = [(b.kind, b.intro) for b in segment(text)]
    assert kinds == [("prose", None), ("item", "Exports"), ("item", "Exports"), ("table", None)]
    table = segment(text)[-1]
    assert [[text[s:e] for s, e in row] for row in table.rows] == [["A", "B"], ["x", "y"]]


def test_list_item_fragments_under_a_heading(nlp):
    d = document_from_text("t.md", "# Velmora\n\n## Exports\n\n- cobalt glass\n")
    atoms = atomize(d, nlp)
    # the heading is a plural noun that does not name the topic: the list is the topic's (stop 18; was "Exports:")
    assert [(a.type, a.text) for a in atoms] == [("list_member", "Exports of Velmora: cobalt glass.")]


def test_list_items_with_a_participle_are_list_members(nlp):
    # "led by ..." is no sentence: every item of the list keeps the list's context, named after the topic; a
    # heading that names the topic is used as it stands; a "See also" list is back matter and gives no atom (stop 20)
    d = document_from_text("t.md", "# Lumen Institute\n\nThe Lumen Institute is a research institute.\n\n"
                                   "## Departments\n\n- Photochemistry, led by Irena Salk "
                                   "since 2015\n- Optics\n\n## Lumen Institute today\n\n- a museum\n\n"
                                   "## See also\n\n- Lens making\n")
    texts = [(a.type, a.text) for a in atomize(d, nlp)]
    assert texts == [("definition", "The Lumen Institute is a research institute."),
                     ("list_member", "Departments of the Lumen Institute: Photochemistry, led by Irena Salk since 2015."),
                     ("list_member", "Departments of the Lumen Institute: Optics."),
                     ("list_member", "Lumen Institute today: a museum.")], texts


def test_html_paragraphs_are_atomized(nlp, tmp_path):
    p = tmp_path / "dask.html"
    p.write_text("<html><head><title>Dask</title><script>var x=1;</script></head><body><nav>Home</nav>"
                 "<h1>Dask</h1><p>Dask is a timber port on Quessa. It was founded in 1790.</p></body></html>")
    d = next(read_file(p))
    assert [a.text for a in atomize(d, nlp)] == ["Dask is a timber port on Quessa.", "Dask was founded in 1790."]


def test_documents_without_facts_yield_empty_lists(nlp):
    docs = [document_from_text("a", "# Only a heading\n"), document_from_text("b", "```\ncode only\n```\n"),
            document_from_text("c", "Velmora lies on Quessa.")]
    assert [[a.text for a in atoms] for atoms in atomize_many(docs, nlp)] == [[], [], ["Velmora lies on Quessa."]]


def test_jsonl_documents_use_their_title(nlp, tmp_path):
    p = tmp_path / "towns.jsonl"
    p.write_text('{"id": "dask", "title": "Dask", "text": "It trades mostly in timber."}\n')
    d = next(read_file(p))
    assert [a.text for a in atomize(d, nlp)] == ["Dask trades mostly in timber."]


def test_key_value_lines_are_facts_about_the_topic(nlp):
    # an infobox written as lines (plain or bold keys) gives one attribute per line, spanning the value; lines of a
    # dialogue (values that end as sentences) and a single "Note: ..." line stay prose
    text = ("# Quessa\n\nQuessa is an island in the Gulf of Sarn.\n\nCapital: Velmora\n**Founded:** 1843\n"
            "Highest point: Mount Orl (1,204 m)\n\nAnna: Hello there.\nBen: We sail at noon.\n")
    d = document_from_text("q.md", text)
    atoms = atomize(d, nlp)
    by = {a.text: a for a in atoms}
    assert "The capital of Quessa is Velmora." in by, list(by)
    assert "Quessa was founded in 1843." in by, list(by)
    assert "The highest point of Quessa is Mount Orl (1,204 m)." in by, list(by)
    a = by["The capital of Quessa is Velmora."]
    assert d.text[a.start:a.end] == "Velmora"
    assert not any(t.startswith(("The anna", "The ben")) for t in by), list(by)
    # the same as list items; a lone "Key: value" item among other items stays a list member
    d = document_from_text("q.md", "# Quessa\n\nQuessa is an island.\n\n## Facts\n\n- Capital: Velmora\n"
                                   "- Area: 412 km²\n\n## Ports\n\n- Velmora\n- Note: closed in winter\n- Dask\n")
    texts = [a.text for a in atomize(d, nlp)]
    assert "The capital of Quessa is Velmora." in texts and "The area of Quessa is 412 km²." in texts, texts
    assert "Ports of Quessa: Note: closed in winter." in texts, texts


def test_timeline_entries_read_as_dated_events(nlp):
    # "YEAR: event" list items or lines (with or without a clause of their own) become "In YEAR, event."
    d = document_from_text("t.md", "# Velmora\n\nVelmora is a harbour town.\n\n## Timeline\n\n"
                                   "- 1843: Ilse Varn founds the town.\n- 1901 – The Tarn Light is built.\n"
                                   "- 1958: The glassworks close\n- 1950s: A fishing boom\n- c. 1970: A ferry starts\n\n"
                                   "12 May 1960: The harbour opens.\n2004: A museum opens.\n")
    got = [(a.type, a.text) for a in atomize(d, nlp)][1:]
    assert got == [("event", "In 1843, Ilse Varn founds Velmora."), ("event", "In 1901, the Tarn Light is built."),
                   ("event", "In 1958, the glassworks close."), ("event", "In the 1950s, a fishing boom."),
                   ("event", "Around 1970, a ferry starts."),
                   ("event", "On 12 May 1960, the harbour of Velmora opens."),  # a town's harbour (RELATIONAL)
                   ("event", "In 2004, a museum opens.")], got


def test_an_html_definition_list_gives_facts_about_the_topic(nlp, tmp_path):
    p = tmp_path / "orl.html"
    p.write_text("<html><head><title>Mount Orl</title></head><body><h1>Mount Orl</h1><p>Mount Orl is a mountain on "
                 "Quessa.</p><dl><dt>Elevation</dt><dd>1,204 m</dd><dt>Easiest route</dt><dd>the north ridge</dd>"
                 "</dl></body></html>")
    texts = [a.text for a in atomize(next(read_file(p)), nlp)]
    assert texts == ["Mount Orl is a mountain on Quessa.", "The elevation of Mount Orl is 1,204 m.",
                     "The easiest route of Mount Orl is the north ridge."], texts


def test_a_list_under_an_irregular_plural_heading_is_the_topics(nlp):
    d = document_from_text("v.md", "# Velmora\n\nVelmora is a harbour town.\n\n## Notable people\n\n"
                                   "- Ilse Varn (1811–1879), glassmaker\n- Jonas Rook, ice hockey player\n")
    texts = [a.text for a in atomize(d, nlp)]
    assert texts[1:] == ["Notable people of Velmora: Ilse Varn (1811–1879), glassmaker.",
                         "Notable people of Velmora: Jonas Rook, ice hockey player."], texts
