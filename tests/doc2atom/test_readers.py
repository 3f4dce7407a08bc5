import json

import pytest

from doc2atom import errors
from doc2atom.readers import expand_paths, read_file


def one(path):
    docs = list(read_file(path))
    assert len(docs) == 1
    return docs[0]


def test_txt_keeps_text_exactly(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("Title line\n\nThe Korrin Bridge is long.\n", encoding="utf-8")
    d = one(p)
    assert d.text == p.read_text()
    assert d.title == "Title line"


@pytest.mark.parametrize("text, title", [
    ("Title line\n\nThe Korrin Bridge is long.\n", "Title line"),
    ("# The thessaloop\n- A thessaloop has seven reeds.\n", "The thessaloop"),
    ("#\n## Velmora\nVelmora is a town.\n", "Velmora"),
    # a sentence is not a title, nor is a list item, a lone line or a line that opens a list
    ("The Velmont Observatory was founded in 1873 by the astronomer Ilse Varga.\nIt has a refractor.\n", ""),
    ("The Velmont Observatory was founded in 1873 by the astronomer Ilse Varga.\n", ""),
    ("- Velmont Observatory\n- Mount Orr\n", ""),
    ("Velmont Observatory\n", ""),
    ("Facts:\n\n- The thessaloop has seven reeds.\n", ""),
    ("one two three four five six seven eight nine ten eleven twelve thirteen\nmore\n", ""),
])
def test_title_is_a_heading_or_nothing(tmp_path, text, title):
    p = tmp_path / "velmont.txt"
    p.write_text(text, encoding="utf-8")
    assert one(p).title == title


def test_html_drops_scripts_and_navigation(tmp_path):
    p = tmp_path / "a.html"
    p.write_text("<html><head><title>T</title><script>var x = 'secret';</script></head><body>"
                 "<nav>Home | About</nav><h1>Zarnic</h1><p>Zarnic acid boils at 143 degrees.</p></body></html>")
    d = one(p)
    assert "secret" not in d.text and "Home" not in d.text
    assert "Zarnic acid boils at 143 degrees." in d.text
    assert d.title == "T"


def test_an_encyclopedia_page_loses_its_furniture_and_back_matter():
    """A page shaped like Wikipedia's (fixtures/wiki_like.html, written for this test): navigation, citation marks,
    [edit] links, "See also" / "References" sections, a navbox and the category bar are not the article; the title is
    the page's own heading, without the site's name."""
    from pathlib import Path

    doc = next(read_file(Path(__file__).resolve().parents[1] / "fixtures" / "wiki_like.html"))
    assert doc.title == "Ossel River"
    for gone in ["Main page", "[1]", "[edit]", "See also", "References", "Holm, E.", "Retrieved", "Rivers of Quessa",
                 "Categories", "last edited", "From Wikipedia"]:
        assert gone not in doc.text, gone
    for kept in ["is the longest river of Quessa.", "Its main tributary is the Sarn", "Tarn Hills", "# Course"]:
        assert kept in doc.text, kept


def test_jsonl_one_document_per_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"id": "x", "text": "Alpha is a letter."}) + "\n\n" +
                 json.dumps({"title": "B", "content": "Beta is a letter."}) + "\n")
    docs = list(read_file(p))
    assert [d.text for d in docs] == ["Alpha is a letter.", "Beta is a letter."]
    assert docs[0].id != docs[1].id


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    (b"caf\xe9 au lait", "UTF-8"),
])
def test_bad_files_get_clear_errors(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(errors.InputError, match=match):
        list(read_file(p))


def test_huge_file_rejected_with_limit_in_message(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("x" * 2000)
    with pytest.raises(errors.InputError, match="limit"):
        list(read_file(p, max_bytes=1000))


def test_unsupported_suffix_and_bad_jsonl(tmp_path):
    p = tmp_path / "a.pdf"
    p.write_text("hello")
    with pytest.raises(errors.InputError, match="unsupported"):
        list(read_file(p))
    q = tmp_path / "b.jsonl"
    q.write_text('{"text": "ok line."}\n{not json}\n')
    with pytest.raises(errors.InputError, match=r"b.jsonl:2"):
        list(read_file(q))


def test_expand_paths_missing_and_folders(tmp_path):
    with pytest.raises(errors.InputError, match="no such file"):
        expand_paths([str(tmp_path / "nope")])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# A\n\nA is a thing.")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00")
    assert [p.name for p in expand_paths([str(tmp_path / "d")])] == ["a.md"]
