"""HTML tables and lists keep their structure: readers.html_to_text renders a table as a pipe
table and an item as "- item", so the atomizer's table and list handling apply."""

import pytest

from doc2atom.atomizer import atomize
from doc2atom.readers import html_to_text, read_file

PAGE = """<html><head><title>Port of Velmora</title><style>td { color: red }</style>
<script>var secret = 'x';</script></head><body>
<header>Site header</header><nav><ul><li>Home</li><li>About</li></ul></nav>
<h1>Velmora harbour</h1>
<p>The port of Velmora exports:</p>
<ul><li>cobalt <b>glass</b></li><li>dried cod</li></ul>
<table>
  <thead><tr><th>Quay</th><th>Length</th></tr></thead>
  <tbody><tr><td>North Quay</td><td>300 metres</td></tr>
         <tr><td>South Quay</td><td>210 metres</td></tr></tbody>
</table>
<footer>Copyright Velmora</footer></body></html>"""


def _doc(tmp_path, html, name="page.html"):
    p = tmp_path / name
    p.write_text(html)
    docs = list(read_file(p))
    assert len(docs) == 1
    return docs[0]


def test_table_rows_and_list_items_keep_their_structure():
    text, title = html_to_text(PAGE)
    assert title == "Port of Velmora"
    assert text.split("\n\n") == [
        "# Velmora harbour",
        "The port of Velmora exports:",
        "- cobalt glass",
        "- dried cod",
        "| Quay | Length |\n| --- | --- |\n| North Quay | 300 metres |\n| South Quay | 210 metres |",
    ]
    for dropped in ("secret", "color", "Site header", "Home", "About", "Copyright"):
        assert dropped not in text


def test_html_table_and_list_become_atoms_with_spans_in_the_text(nlp, tmp_path):
    doc = _doc(tmp_path, PAGE)
    atoms = atomize(doc, nlp)
    by_text = {a.text: a for a in atoms}
    for text, span in [("The length of North Quay is 300 metres.", "300 metres"),
                       ("The length of South Quay is 210 metres.", "210 metres"),
                       ("The port of Velmora exports cobalt glass.", "cobalt glass"),
                       ("The port of Velmora exports dried cod.", "dried cod")]:
        assert text in by_text, [a.text for a in atoms]
        a = by_text[text]
        assert 0 <= a.start < a.end <= len(doc.text) and doc.text[a.start:a.end] == span
    assert by_text["The length of North Quay is 300 metres."].type == "quantity"
    assert {by_text[t].type for t in ("The port of Velmora exports cobalt glass.",
                                      "The port of Velmora exports dried cod.")} == {"list_member"}


def test_key_value_table_is_one_row_about_its_subject(nlp, tmp_path):
    html = ("<html><body><h2>Korrin Bridge</h2><table><tr><th>Length</th><td>412 m</td></tr>"
            "<tr><th>Opened</th><td>1902</td></tr></table></body></html>")
    text, _ = html_to_text(html)
    assert text.split("\n\n")[1] == "|  | Length | Opened |\n| --- | --- | --- |\n| Korrin Bridge | 412 m | 1902 |"
    doc = _doc(tmp_path, html)
    atoms = {a.text: a for a in atomize(doc, nlp)}
    assert doc.text[atoms["The length of Korrin Bridge is 412 m."].start:][:5] == "412 m"
    assert atoms["Korrin Bridge was opened in 1902."].type == "event"


@pytest.mark.parametrize("header, value, sentence", [
    ("Platforms", "3", "Velmora has 3 platforms."),
    ("Platforms", "1", "Velmora has 1 platform."),
    ("Employees", "1,200", "Velmora has 1,200 employees."),
    ("Platforms", "3 (2 in use)", "The platforms of Velmora is 3 (2 in use)."),  # not a bare count
    ("Status", "2", "The status of Velmora is 2."),
    ("Length", "300 metres", "The length of Velmora is 300 metres."),
    ("Opened", "1911", "Velmora was opened in 1911."),
    ("Northern Cup", "1987", "The Northern Cup of Velmora is 1987."),  # a name keeps its capitals
    ("Launched", "14 March 1998", "Velmora was launched on 14 March 1998."),
    ("Launched", "March 1998", "Velmora was launched in March 1998."),
    ("Last won", "1975", "Velmora was last won in 1975."),  # an honours table's column
    ("First awarded", "1 May 1921", "Velmora was first awarded on 1 May 1921."),
    ("Last title", "1975", "The last title of Velmora is 1975."),  # a noun after the adverb: not a participle
])
def test_cell_sentences(header, value, sentence):
    from doc2atom.atomizer import _cell_sentence

    assert _cell_sentence("Velmora", header, value) == sentence


def test_caption_names_the_subject_and_pipes_in_cells_are_escaped():
    html = ("<table><caption>Tarn Light</caption><tr><th>Height</th><td>31 m | 102 ft</td></tr>"
            "<tr><th>Lit</th><td>1871</td></tr></table>")
    text, _ = html_to_text(html)
    assert text.splitlines()[-1] == "| Tarn Light | 31 m / 102 ft | 1871 |"


@pytest.mark.parametrize("html, expected", [
    # ordered lists are numbered, nested items indented under their parent
    ("<ol><li>Rise</li><li>Flow<ul><li>west</li></ul></li></ol>", ["1. Rise", "2. Flow", "  - west"]),
    # an item's paragraphs are its text, not separate paragraphs
    ("<ul><li><p>One.</p><p>Two.</p></li></ul>", ["- One. Two."]),
    # a one-column (layout) table is paragraphs, and its inner paragraphs are not repeated
    ("<table><tr><td><p>Zarnic acid boils at 143 degrees.</p></td></tr><tr><td>It is blue.</td></tr></table>",
     ["Zarnic acid boils at 143 degrees.", "It is blue."]),
    # a nested table stays inside its outer cell
    ("<table><tr><th>A</th><th>B</th></tr><tr><td>x</td><td><table><tr><td>y</td></tr></table></td></tr></table>",
     ["| A | B |\n| --- | --- |\n| x | y |"]),
    # a definition list is "term: description" lines (several descriptions of a term joined), in one block
    ("<dl><dt>Elevation</dt><dd>1,204 m</dd><dt>Routes</dt><dd>north ridge</dd><dd>west face</dd></dl>",
     ["Elevation: 1,204 m\nRoutes: north ridge; west face"]),
])
def test_html_structure_cases(html, expected):
    text, _ = html_to_text(f"<html><body>{html}</body></html>")
    assert text.split("\n\n") == expected


def _md_atoms(md: str, nlp) -> list[str]:
    """The atoms' texts of a markdown document."""
    from doc2atom.atomizer import atomize
    from doc2atom.readers import document_from_text

    return [a.text for a in atomize(document_from_text("t.md", md), nlp)]


def test_a_table_keyed_by_year_is_about_the_topic_under_a_generic_heading(nlp):
    """"| 1900 | 1,200 |" under "Year | Students" is the topic's figure in 1900, not "1900 has 1,200 students"; the
    heading "## Organisation" names a part of the article, not the table's subject."""
    md = ("# University of Tallow\n\nThe University of Tallow is a public university in Tallow.\n\n## Organisation\n\n"
          "| Year | Students | Population |\n| --- | --- | --- |\n| 1900 | 1,200 | 40,000 |\n")
    texts = _md_atoms(md, nlp)
    assert texts[1:] == ["In 1900, the University of Tallow had 1,200 students.",
                         "In 1900, the population of the University of Tallow was 40,000."]


def test_a_climate_table_keyed_by_month_speaks_in_the_present(nlp):
    md = ("# Holmstad\n\nHolmstad is a port city on Quessa.\n\n## Climate\n\n| Month | Mean temperature |\n"
          "| --- | --- |\n| January | 2 °C |\n| July | 17 °C |\n")
    texts = _md_atoms(md, nlp)
    assert texts[1:] == ["In January, the mean temperature of Holmstad is 2 °C.",
                         "In July, the mean temperature of Holmstad is 17 °C."]


def test_a_results_table_in_an_event_article_says_which_event(nlp):
    """"Party | Votes" rows in an election's article are that election's figures; in another article, as they stand."""
    table = "| Party | Votes |\n| --- | --- |\n| Harbour Party | 48,210 |\n"
    md = "# 1994 Quessa general election\n\nThe 1994 Quessa general election was held in October 1994.\n\n" + table
    texts = _md_atoms(md, nlp)
    assert texts[-1] == "In the 1994 Quessa general election, Harbour Party had 48,210 votes."
    md = "# Harbour Party\n\nThe Harbour Party is a party on Quessa.\n\n" + table
    texts = _md_atoms(md, nlp)
    assert texts[-1] == "Harbour Party has 48,210 votes."



def test_an_italic_title_in_html_is_one_name(nlp, tmp_path):
    html = ("<html><body><h1>The Lanterns</h1><p>The Lanterns are a folk rock band. They are best known for their "
            "1999 album <i>Salt and Iron</i>, which sold over 300,000 copies, and for songs about "
            "<i>hope</i>.</p></body></html>")
    doc = _doc(tmp_path, html)
    assert "*Salt and Iron*" in doc.text and "*hope*" not in doc.text  # one word: no title
    texts = [a.text for a in atomize(doc, nlp)]
    assert any(t.startswith("The Lanterns' 1999 album Salt and Iron sold over 300,000 copies") for t in texts), texts
