"""Split a Document into typed, self-contained atoms, one fact each, with exact source spans.

The document is cut into blocks (paragraphs, list items, table rows; markdown headings and
code are context, not atoms). Each prose block is cleaned of markup (links, emphasis,
citation marks like "[note 1]") through an offset map, parsed by spaCy, and every sentence
is split into one piece per fact (split.py), its pronouns and descriptions resolved against
the document's discourse (resolve.py), rendered as a sentence and typed (atom_types.py).
Every atom keeps `start`/`end` offsets into `document.text` covering the clause it came
from; its text is the resolved statement ("It flows north." -> "The Rhine flows north.").

This module must never change the document text it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from doc2atom.atom_types import classify, key_context, make_key
from doc2atom.lexicon import BACK_MATTER
from doc2atom.readers import titled
from doc2atom.resolve import Discourse, topic_title
from doc2atom.schemas import AtomDraft, Document
from doc2atom.split import finish, render, split_sentence, subject_of

_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s")
_EDIT_HEADING = re.compile(r"([^\s.!?][^.!?]{0,60}?)\s*\[edit\]")
_WIKI_HEADING = re.compile(r"(={2,6})\s*([^=\n]{1,80}?)\s*\1")  # "== History ==" in a copy of a wiki's source
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
# markup dropped from atom text (kept in the document): links keep their label
_MARKUP = re.compile(r"!?\[([^\]\n]+)\]\([^)\n]*\)|\[(?:note \w+|\d+|citation needed|[a-z])\]|\*\*|__|`|\s+"
                     # single-character emphasis in pairs: *Ardent Atlas*, _Ardent Atlas_ (the text kept; not
                     # 2 * 3, not snake_case, not a reconstructed form such as *Rīnaz)
                     r"|(?<![\w*])\*([^\s*](?:[^*\n]*[^\s*])?)\*(?![\w*])|(?<!\w)_([^\s_](?:[^_\n]*[^\s_])?)_(?!\w)")
# a person's life dates after their name: "Orrin Vale (born 12 March 1891 in Pemberly; died 1968)"
_LIFE = re.compile(r"((?:[A-Z][\w'’.-]*\s+){0,5}[A-Z][\w'’.-]*)\s*\(\s*(?:born|b\.)\s+([^();]+?)\s*"
                   r"(?:;\s*(?:died|d\.)\s+([^();]+?)\s*)?\)")
_MONTH_WORDS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
# the encyclopedic lead form: "Amos Pelling (14 June 1751 – 2 February 1819) was ...", "**Ada Lark** (1790–1852) is
# ...": a name opening a sentence (bold allowed, lowercase particles inside: "Ludwig van Beethoven"), two dates
# joined by a dash, then was/is/were, and a he/she/his/her later in the block; "Calloway (1802–1806)" in mid-sentence
# and "World War II (1939–1945) was ..." are periods, not lives
_DATE = (rf"(?:(?:c\.|ca\.|circa)\s*)?(?:\d{{1,2}}\s+{_MONTH_WORDS}\s+|{_MONTH_WORDS}\s+\d{{1,2}},?\s+)?\d{{3,4}}"
         r"(?:\s*(?:BC|BCE|AD|CE)\b)?")
_NAME_WORD = r"[A-Z][\w'’.-]*"
_PARTICLES = r"(?:van|von|de|der|den|da|di|du|la|le|del|della|bin|ibn|al)"
_LIFE_SPAN = re.compile(rf"(?:^|(?<=[.!?]\s))(?:\*\*|__)?((?:{_NAME_WORD}\s+(?:{_PARTICLES}\s+)*){{0,5}}{_NAME_WORD})"
                        rf"(?:\*\*|__)?\s*\(\s*({_DATE})\s*[–—-]\s*({_DATE})\s*\)(?=\s+(?:was|is|were)\b)")
MIN_CHARS = 12
# a full stop after these does not end a sentence
_ABBREV = {"ca", "c", "e.g", "i.e", "eg", "ie", "cf", "vs", "approx", "st", "mt", "mr", "mrs", "ms", "dr", "prof",
           "nos", "fig", "figs", "jr", "sr", "inc", "ltd", "co", "gen", "col", "lt", "capt", "sgt", "rev", "fl",
           "u.s", "u.k", "al", "ed", "eds", "vol", "pp", "ch", "sec", "dept", "jan", "feb", "apr", "jun", "jul",
           "aug", "sep", "sept", "oct", "nov", "dec", "av", "ave", "blvd"}
_SENT_END = re.compile(r"[.!?][\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9ÀÁÂÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÖØÙÚÛÜÝĀ-ž])")


@dataclass
class Block:
    kind: str  # "prose", "item", "table"
    start: int
    end: int
    heading: str | None
    intro: str | None = None  # for items: the line that introduces the list ("Exports include:")
    rows: list[list[tuple[int, int]]] = field(default_factory=list)  # for tables: cell spans per row


def _cells(text: str, start: int, end: int) -> list[tuple[int, int]]:
    line = text[start:end]
    cells, pos = [], 0
    parts = line.split("|")
    if line.strip().startswith("|"):
        pos = line.index("|") + 1
        parts = parts[1:]
    if line.strip().endswith("|"):
        parts = parts[:-1]
    for p in parts:
        lead = len(p) - len(p.lstrip())
        s, e = start + pos + lead, start + pos + len(p.rstrip())
        cells.append((s, max(s, e)))
        pos += len(p) + 1
    return cells


def segment(text: str) -> list[Block]:
    """Blocks of a markdown-ish text: paragraphs, list items (with their intro), tables; headings set context."""
    out: list[Block] = []
    heading: str | None = None
    back_level = False  # the heading is of a level that may open back matter (not a "# " title)
    pos, in_code = 0, False
    para: list[int] | None = None  # [start, end]
    table: Block | None = None
    lines = text.splitlines(keepends=True)

    def close_para():
        nonlocal para
        if para is not None and not back():
            out.append(Block("prose", para[0], para[1], heading))
        para = None

    def back() -> bool:  # under "## References", "See also", ...: sources and links, no facts
        return back_level and heading is not None and heading.lower().rstrip(":") in BACK_MATTER

    def close_table():
        nonlocal table
        if table is not None and not back():
            out.append(table)
        table = None

    for line in lines:
        start, end = pos, pos + len(line.rstrip("\r\n"))
        pos += len(line)
        stripped = line.strip()
        if stripped.startswith("```"):
            close_para(), close_table()
            in_code = not in_code
            continue
        if in_code:
            continue
        if stripped.startswith("|") and stripped.count("|") >= 2:
            close_para()
            if table is None:
                table = Block("table", start, end, heading)
            table.end = end
            if not _TABLE_SEP.match(stripped):
                table.rows.append(_cells(text, start, end))
            continue
        close_table()
        if not stripped:
            close_para()
            continue
        edit = _EDIT_HEADING.fullmatch(stripped) if para is None else None
        if edit:  # "History[edit]": a heading in text copied from a wiki page
            close_para()
            heading, back_level = edit.group(1), True
            continue
        wiki = _WIKI_HEADING.fullmatch(stripped)
        if wiki:  # "== History ==": a heading in a wiki's own markup
            close_para()
            heading, back_level = wiki.group(2), True
            continue
        if _HEADING.match(line) or (para is None and stripped.lower().rstrip(":") in BACK_MATTER):
            # (a plain-text "References" line alone is that section's heading; a "# ..." title is never back matter)
            close_para()
            heading = stripped.lstrip("#").strip()
            back_level = not stripped.startswith("#") or stripped.startswith("##")
            continue
        m = _BULLET.match(line)
        if m:
            close_para()
            intro = None
            prev = out[-1] if out else None
            if prev is not None and prev.kind == "item":
                intro = prev.intro
            elif prev is not None and prev.kind == "prose" and text[prev.start:prev.end].rstrip().endswith(":"):
                intro = _last_line(text[prev.start:prev.end])
            if not back():
                out.append(Block("item", start + m.end(), end, heading, intro))
            continue
        if para is None:
            para = [start + (len(line) - len(line.lstrip())), end]
        para[1] = end
    close_para(), close_table()
    return out


def _last_line(s: str) -> str:
    s = " ".join(s.split())
    parts = re.split(r"(?<=[.!?])\s+", s)
    return parts[-1].rstrip(":").strip()


def blocks(text: str) -> Iterator[tuple[int, int, str | None]]:
    """(start, end, heading) of each prose block and list item (tables excluded)."""
    for b in segment(text):
        if b.kind != "table":
            yield b.start, b.end, b.heading


def _when(phrase: str) -> str:
    """'12 March 1891 in Pemberly' -> 'on 12 March 1891 in Pemberly'; '1968' -> 'in 1968'; 'c. 1850' kept."""
    p = " ".join(phrase.split())
    if re.match(rf"(\d{{1,2}}\s+{_MONTH_WORDS}|{_MONTH_WORDS}\s+\d{{1,2}}\b)", p):
        return "on " + p
    if re.match(r"\d{3,4}\b", p):
        return "in " + p
    return p


def life_dates(raw: str) -> list[tuple[int, int, str, list[tuple[str, int, int]]]]:
    """Life-date parentheticals in a block's raw text: (start, end) of the parenthesis (its leading space
    included), the name before it, and one (statement, start, end) per date: "X was born on ...", "X died in ..."."""
    out = []
    spans = [(m, False) for m in _LIFE.finditer(raw)] + [(m, True) for m in _LIFE_SPAN.finditer(raw)]
    taken: list[tuple[int, int]] = []
    for m, dash in sorted(spans, key=lambda x: x[0].start()):
        name = m.group(1).strip()
        if len(name) < 2 or name.split()[0].lower() in ("the", "a", "an", "in", "on", "at", "by", "of"):
            continue
        if any(a < m.end() and m.start() < b for a, b in taken):
            continue
        if dash and not re.search(r"\b(?:he|she|his|her|him)\b", raw[m.end():], flags=re.I):
            continue  # "World War II (1939–1945) was ...": dates are a life only when the text says he or she
        born, died = m.group(2), m.group(3)
        era = re.search(r"\s(BC|BCE)$", died or "")
        if dash and era and not re.search(r"\s(BC|BCE|AD|CE)$", born):  # "(c. 570 – c. 495 BC)"
            born = f"{born} {era.group(1)}"
        facts = [(finish(f"{name} was born {_when(born)}"), m.start(2), m.end(2))]
        if died:
            facts.append((finish(f"{name} died {_when(died)}"), m.start(3), m.end(3)))
        lo = raw.index("(", m.end(1))
        while lo > m.end(1) and raw[lo - 1] in " \t\n*_":  # the closing bold stays with the name
            lo -= 1
        while raw[lo] in "*_":
            lo += 1
        taken.append((m.start(), m.end()))
        out.append((lo, m.end(), name, facts))
    return out


def clean_map(raw: str) -> tuple[str, list[int]]:
    """Raw block text without markup and with whitespace collapsed, and each clean char's raw offset."""
    chars: list[str] = []
    offs: list[int] = []
    pos = 0
    for m in _MARKUP.finditer(raw):
        for k in range(pos, m.start()):
            chars.append(raw[k])
            offs.append(k)
        g = m.group(0)
        if g[0].isspace():
            if chars and chars[-1] != " ":
                chars.append(" ")
                offs.append(m.start())
        elif m.lastindex is not None:  # a link's text or an emphasised phrase: kept without its markup
            for k in range(m.start(m.lastindex), m.end(m.lastindex)):
                chars.append(raw[k])
                offs.append(k)
        pos = m.end()
    for k in range(pos, len(raw)):
        chars.append(raw[k])
        offs.append(k)
    return "".join(chars), offs


def sentence_starts(clean: str, raw: str, offs: list[int]) -> set[int]:
    """Where sentences begin in a cleaned block: after . ! ? (not after an abbreviation or an
    initial) before a capital or digit, and at a line break after a short line without a stop
    (a title line glued to its text). spaCy's own guesses split 'a UNESCO World Heritage Site'."""
    starts = {0}
    for m in _SENT_END.finditer(clean):
        word = re.search(r"([\w.]+)\.[\"'”’)\]]*\s+$", clean[max(0, m.start() - 12):m.end()])
        w = word.group(1).lower() if word else ""
        initial = word is not None and len(word.group(1)) == 1 and word.group(1).isupper()  # "J. Smith"
        if clean[m.start()] == "." and (w in _ABBREV or initial):
            continue
        starts.add(m.end())
    line_start = 0
    for k, ch in enumerate(clean):
        if ch == " " and "\n" in raw[offs[k]:offs[k + 1] if k + 1 < len(offs) else len(raw)]:
            prev = clean[line_start:k].rstrip()
            if prev and prev[-1] not in ".!?:;," and len(prev) < 50 and k + 1 < len(clean) and clean[k + 1].isupper():
                starts.add(k + 1)
            line_start = k + 1
    return starts


def titled_spans(raw: str, offs: list[int]) -> list[tuple[int, int]]:
    """Clean-text spans of the emphasised phrases in a raw block that read as titles of several words ("*Salt and
    Iron*", "_The Grey Harbour_"): every word capitalised but small ones, at most 8 words."""
    at = {r: c for c, r in enumerate(offs)}
    out = []
    for m in _MARKUP.finditer(raw):
        g = next((k for k in (2, 3) if m.group(k) is not None), None) if m.lastindex in (2, 3) else None
        if g is None:
            continue
        words = m.group(g).split()
        if not titled(words):
            continue
        start = m.start(g)
        if words[0].lower() in ("the", "a", "an"):  # "*The Grey Harbour*": the article stays a word of its own
            rest = m.group(g)[len(words[0]):]
            start += len(words[0]) + len(rest) - len(rest.lstrip())
        lo, hi = at.get(start), at.get(m.end(g) - 1)
        if lo is not None and hi is not None and lo < hi:
            out.append((lo, hi + 1))
    return out


def _presegmented(nlp, clean: str, starts: set[int], titles: list[tuple[int, int]] = ()):
    """A tokenized Doc whose sentence boundaries are fixed (the parser respects them), each titled span one token
    (so that "*Salt and Iron*, which sold ..." is not parsed as "Salt" and "Iron, which sold ...")."""
    d = nlp.make_doc(clean)
    spans = [sp for lo, hi in titles if (sp := d.char_span(lo, hi)) is not None and len(sp) > 1]
    if spans:
        with d.retokenize() as r:
            for sp in spans:
                r.merge(sp)
    for t in d:
        t.is_sent_start = t.i == 0 or t.idx in starts
    return d


def _title_tokens(doc) -> None:
    """After parsing: a merged title is a proper noun, whatever the tagger made of the one odd token."""
    for t in doc:
        if " " in t.text and t.text[:1].isupper():
            t.tag_, t.pos_ = "NNP", "PROPN"


def _clean(s: str) -> str:
    return clean_map(s)[0].strip()


class _DocState:
    """Per-document state while its blocks stream past."""

    def __init__(self, doc: Document, topic: str, title_doc):
        self.doc = doc
        self.disc = Discourse(topic, doc.text, title_doc)
        self.atoms: list[AtomDraft] = []
        self.heading: str | None = None
        # "Under the treaty:" before a list whose items are sentences: said again before each item's atoms
        self.item_lead: str | None = None


def _piece_atoms(st: _DocState, block: Block, offs: list[int], sent, analysis, context: list[str],
                 frame: str | None = None) -> list[AtomDraft]:
    """The atoms of one parsed sentence; `frame` ("Under the Treaty of Ostvale") is said before each."""
    doc = sent.doc
    out: list[AtomDraft] = []
    prev: AtomDraft | None = st.atoms[-1] if st.atoms and st.atoms[-1].start >= block.start else None
    for p in split_sentence(sent):
        lead = list(p.lead)
        verb = doc[p.verb] if p.verb is not None else None
        if p.kind == "sentence" and not p.lead and subject_of(sent.root) is None:
            lead = st.disc.elided_subject(verb)
        seen: set[int] = set()
        names = frozenset(x for x in lead if isinstance(x, str))

        def rep(i: int) -> str | None:
            r = analysis.replacement(i, seen, names)
            first = not seen and not any(isinstance(x, str) for x in lead[:1])
            seen.add(i)
            t = doc[i]
            if r is None and not first and i == sent.start and t.pos_ != "PROPN" and t.text[:1].isupper() \
                    and not t.text.isupper():
                return t.text[0].lower() + t.text[1:]
            return r

        segments = p.order if p.order is not None else lead + list(p.own)
        body = finish(render(segments, doc, rep))
        first_tok = next((x for x in segments if isinstance(x, int)), None)
        lo, hi = _span(p, doc, offs, block.start)
        if first_tok in analysis.event and first_tok == p.own[0] and not lead:
            base = out[-1] if out else prev
            if base is not None:  # "This caused ..." -> "<what it points back to>, and this caused ..."
                body = base.text.rstrip(".!? ") + ", and " + body[0].lower() + body[1:]
                lo = min(lo, base.start)
        if len(body) < MIN_CHARS or not any(c.isalpha() for c in body):
            continue
        plain = body  # the key's context and head are chosen against the unframed statement
        if frame:  # "- Veldt received the town of Lessing." -> "Under the Treaty of Ostvale, Veldt received ..."
            keep = sent[0].pos_ == "PROPN" and body.startswith(sent[0].text) or body.split(" ", 1)[0][:2].isupper()
            body = f"{frame}, {body if keep else body[:1].lower() + body[1:]}"
        subj_ids = p.subj if p.subj else []
        subject = render(subj_ids, doc, _replacer(analysis)) if subj_ids else (lead[0] if lead and isinstance(lead[0], str) else "")
        topic = st.disc.topic()

        def named(i: int) -> bool:
            e = analysis.mention.get(i)
            return e is not None and e.proper

        typed = classify(doc, p.own, p.verb, p.kind, subject or (topic.name if topic else ""), named)
        key = make_key(typed.head, plain, context)  # '<context>; <head>; <statement>': the statement ends it
        atom = AtomDraft(type=typed.type, text=body, key=key[:len(key) - len(plain)] + body, start=lo, end=hi)
        out.append(atom)
    return out


def _span(p, doc, offs: list[int], base: int) -> tuple[int, int]:
    """Source span of a piece: its own clause; an apposition or relative clause with its anchor
    ("the Venn Bridge, a cast-iron arch"); a piece that ends its sentence takes the full stop."""
    ids = sorted(i for i in p.own if not doc[i].is_space) or sorted(p.own)
    lead = sorted(x for x in p.lead if isinstance(x, int))
    if p.kind in ("apposition", "relative") and lead and max(lead) < ids[0] and ids[0] - max(lead) <= 3:
        ids = lead + ids
    while len(ids) > 1 and doc[ids[-1]].text in (".", ",", ";", ":"):
        ids.pop()
    first, last = doc[ids[0]], doc[ids[-1]]
    end = last.i + 1
    while end < last.sent.end and doc[end].text in ('"', "'", ")", "”", "’"):
        end += 1
    if end == last.sent.end - 1 and doc[end].text in (".", "!", "?"):
        last = doc[end]
    return base + offs[first.idx], base + offs[last.idx + len(last.text) - 1] + 1


def _replacer(analysis):
    """render()'s replace for tokens read in order: each token's resolved text given the tokens before it."""
    seen: set[int] = set()

    def rep(i: int) -> str | None:
        r = analysis.replacement(i, seen)
        seen.add(i)
        return r

    return rep


def _lead_phrase(sent, analysis) -> str | None:
    """A list's intro that frames each item ("Under the treaty:", "According to the 2011 census:"), resolved ("Under
    the Treaty of Ostvale"); None for an intro that is a sentence of its own ("The treaty had three terms:")."""
    toks = [t for t in sent if not t.is_space]
    while toks and toks[-1].is_punct:
        toks = toks[:-1]
    if not toks or len(toks) > 12 or not (toks[0].pos_ == "ADP" or toks[0].lower_ == "according"):
        return None
    if any(t.pos_ in ("VERB", "AUX") for t in toks[1:]):
        return None
    return render([t.i for t in toks], sent.doc, _replacer(analysis))


def _prose_atoms(st: _DocState, block: Block, parsed, offs: list[int], intro_next: bool) -> None:
    context = key_context(block.heading, st.doc.title)
    sents = list(parsed.sents)
    if block.kind != "item":
        st.item_lead = None
    for n, sent in enumerate(sents):
        analysis = st.disc.analyse(sent)
        text = sent.text.strip()
        is_intro = intro_next and n == len(sents) - 1 and text.endswith(":")
        if is_intro:
            st.item_lead = _lead_phrase(sent, analysis)
        # a verbless parse of a long sentence is a tagging error ("the branches ... discharge"), not a title
        has_verb = any(t.pos_ in ("VERB", "AUX") for t in sent) or (
            len([t for t in sent if t.is_alpha]) >= 3 and text[-1:] in ".!?")
        if block.kind == "item" and has_verb and not _clause(sent):
            has_verb = False  # "Photochemistry, led by Dr. Irena Salk since 2015": a participle is no sentence
        if block.kind == "item" and (not has_verb or len(text) < MIN_CHARS):
            _item_atom(st, block, sent, offs)
        elif not is_intro and has_verb and len(text) >= MIN_CHARS and any(c.isalpha() for c in text):
            frame = st.item_lead if block.kind == "item" and block.intro else None
            st.atoms.extend(_piece_atoms(st, block, offs, sent, analysis, context, frame))
        st.disc.observe(analysis)


def _clause(sent) -> bool:
    """The sentence has a finite clause: a subject, or a root verb that is not a bare participle."""
    return any(t.dep_ in ("nsubj", "nsubjpass", "expl") for t in sent) or any(
        t.dep_ == "ROOT" and t.pos_ in ("VERB", "AUX") and t.tag_ not in ("VBN", "VBG") for t in sent)


_IRREGULAR_PLURALS = {"people", "children", "men", "women", "alumni", "staff", "clergy", "media", "data"}
_NO_OWNER = {"see also", "references", "notes", "sources", "external links", "further reading", "bibliography",
             "works cited", "footnotes", "citations", "contents"}


def _list_context(st: _DocState, heading: str | None) -> str:
    """What a list under `heading` lists: "Departments of the Lumen Institute" when the heading is a short plural
    noun phrase that does not name the document's topic itself, else the heading (or the title)."""
    topic = st.disc.title
    if not heading:
        return st.doc.title
    words = heading.split()
    if (topic is None or not 1 <= len(words) <= 3 or heading.lower() in _NO_OWNER
            or topic.key in heading.lower() or not (re.fullmatch(r"[A-Za-z-]*[a-rt-z]s", words[-1])
                                                    or words[-1].lower() in _IRREGULAR_PLURALS)):
        return heading
    return f"{heading} of {topic.name}"


def _item_atom(st: _DocState, block: Block, sent, offs: list[int]) -> None:
    item = " ".join(sent.text.split()).rstrip(" .;,")
    if len(item) < 2:
        return
    first = sent[0]
    when = dated(item)
    if when is not None:
        text = head = when
    elif block.intro:
        intro = block.intro.rstrip(":").strip()
        text = finish(f"{intro} {item[0].lower() + item[1:] if first.pos_ != 'PROPN' and not item[:2].isupper() else item}")
        head = f"{intro}: {item}"
    else:
        ctx = _list_context(st, block.heading)
        text = finish(f"{ctx}: {item}")
        head = f"{ctx}: {item}"
    lo = block.start + offs[sent[0].idx]
    last = sent[-1]
    while last.is_punct and last.i > sent.start:
        last = sent.doc[last.i - 1]
    hi = block.start + offs[last.idx + len(last.text) - 1] + 1
    st.atoms.append(AtomDraft(type="event" if when else "list_member", text=text, key=make_key(head, text, None),
                              start=lo, end=hi))


# a timeline entry: "1843: Ilse Varn founds the town.", "12 May 1901 – The Tarn Light is lit."
_WHEN_LEAD = re.compile(rf"^((?:[cC]\.\s*)?(?:\d{{1,2}}\s+{_MONTH_WORDS}\s+|{_MONTH_WORDS}\s+\d{{1,2}},?\s+)?\d{{3,4}}s?)"
                        r"\s*[:–—-]\s+(\S.*)$")


def dated(text: str) -> str | None:
    """"1843: Ilse Varn founds the town." -> "In 1843, Ilse Varn founds the town." (None: not a timeline entry)."""
    m = _WHEN_LEAD.match(text)
    if m is None:
        return None
    rest = m.group(2)
    if re.match(r"(The|A|An)\s", rest):
        rest = rest[0].lower() + rest[1:]
    lead = " ".join(m.group(1).split())
    if lead.endswith("s"):
        when = f"in the {lead}"  # a decade: "1950s: ..."
    elif lead[:2] in ("c.", "C."):
        when = "around " + lead[2:].strip()
    else:
        when = _when(lead)
    return finish(f"{when[0].upper() + when[1:]}, {rest}")


def _table_atoms(st: _DocState, block: Block) -> None:
    """One attribute per cell: 'The <column> of <row name> is <cell>.', spanning the cell."""
    text = st.doc.text
    if not block.rows:
        return
    header = [_clean(text[s:e]) for s, e in block.rows[0]]
    rows = block.rows[1:] if len(block.rows) > 1 else []
    context = key_context(block.heading, st.doc.title)
    # a table keyed by year ("Year | Students", "1900 | 1,200") is about the topic at each time, not about "1900"
    firsts = [_clean(text[r[0][0]:r[0][1]]) for r in rows if r]
    topic = st.disc.topic()
    results = (any(h.strip().lower() in _RESULT_HEADERS for h in header[1:]) and topic is not None
               and re.search(_EVENT_TITLE, topic.name, flags=re.I) is not None)
    timeline = (topic is not None and len(header) > 1 and firsts and (
        header[0].strip().lower() in _TIME_HEADERS or all(re.fullmatch(_YEAR, f) for f in firsts if f)
        or all(re.fullmatch(_MONTH, f) for f in firsts if f)))
    for row in rows:
        cells = [_clean(text[s:e]) for s, e in row]
        if not cells or not cells[0]:
            continue
        name = cells[0]
        if timeline and len(row) > 1:
            for j in range(1, min(len(row), len(header))):
                h, v = header[j], cells[j]
                if not h or not v:
                    continue
                s = _time_sentence(topic.name, name, h, v)
                st.atoms.append(AtomDraft(type=_value_type(v), text=s,
                                          key=make_key(f"{topic.name}: {h.lower()} in {name}", s, context),
                                          start=row[j][0], end=row[j][1]))
            continue
        if len(row) == 1:
            ctx = context[-1] if context else header[0]  # no title or heading: the column's header
            st.atoms.append(AtomDraft(type="list_member", text=finish(f"{ctx}: {name}"),
                                      key=make_key(f"{ctx}: {name}", name, None), start=row[0][0], end=row[0][1]))
            continue
        # a results table ("Party | Votes | Seats") in an event's article: each row's figures are the event's
        event = results and topic is not None and topic.key not in name.lower()
        for j in range(1, min(len(row), len(header))):
            h, v = header[j], cells[j]
            if not h or not v:
                continue
            s = _cell_sentence(name, h, v, at=f"In {topic.name}," if event else None)
            st.atoms.append(AtomDraft(type=_value_type(v), text=s, key=make_key(f"{name}: {h.lower()}", s, context),
                                      start=row[j][0], end=row[j][1]))


# an infobox written as lines: "Capital: Velmora", "**Highest point:** Mount Orl (1,204 m)"
_FIELD = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?(?:\*\*|__)?([A-Z][\w'’ ()/-]{0,40}?)[ \t]*(?:\*\*|__)?:"
                    r"[ \t]*(?:\*\*|__)?[ \t]*(\S[^\n]*?)[ \t]*$")


def key_values(raw: str, least: int = 2) -> list[tuple[str, str, int, int]] | None:
    """A block of at least `least` "Key: value" lines and nothing else: (key, value, value start, value end) per
    line (offsets in raw); None for anything else. A list item's bullet is allowed. Keys of at most four words;
    values of at most twelve words that do not read as sentences (no final full stop): "Anna: Hello there." lines
    of a dialogue stay prose."""
    out = []
    pos = 0
    for line in raw.split("\n"):
        start, pos = pos, pos + len(line) + 1
        if not line.strip():
            continue
        m = _FIELD.match(line)
        if m is None:
            return None
        key, value = m.group(1).strip(), m.group(2).strip().rstrip("*_").strip()
        if not value or len(key.split()) > 4 or len(value.split()) > 12 or value[-1] in ".!?":
            return None
        out.append((key, value, start + m.start(2), start + m.start(2) + len(value)))
    return out if len(out) >= least else None


def _field_atoms(st: _DocState, block: Block, fields) -> None:
    """One attribute per "Key: value" line, about the section's or the document's topic, as a table cell is."""
    topic = st.disc.topic()
    name = topic.name[:1].upper() + topic.name[1:] if topic is not None else None
    context = key_context(block.heading, st.doc.title)
    for key, value, lo, hi in fields:
        value = _clean(value)
        text = _cell_sentence(name, key, value) if name else finish(f"{key}: {value}")  # no topic: as written
        st.atoms.append(AtomDraft(type=_value_type(value), text=text,
                                  key=make_key(f"{name or (context[-1] if context else key)}: {key.lower()}", text,
                                               context),
                                  start=block.start + lo, end=block.start + hi))


def _value_type(value: str) -> str:
    """The atom type of a table cell or field: a year is an event, a number a quantity, else an attribute."""
    if re.fullmatch(r"(c\. )?\d{3,4}( (BC|AD|BCE|CE))?", value):
        return "event"
    return "quantity" if re.search(r"\d", value) else "attribute"


def _lower_header(h: str) -> str:
    """A header as it reads mid-sentence: "Founded" -> "founded"; an acronym ("GDP") or a name of several
    capitalised words ("Northern Cup") as written."""
    words = h.split()
    if h[:2].isupper() or (len(words) > 1 and all(w[:1].isupper() for w in words)):
        return h
    return h[0].lower() + h[1:]


def _cell_sentence(name: str, header: str, value: str, at: str | None = None) -> str:
    """One table cell or field as a sentence about `name`. at: an opening that places it ("In the 1994 Quessa
    general election,"), which also puts a count in the past."""
    h = header.strip()
    low = _lower_header(h)
    words = h.split()
    pre = f"{at} " if at else ""
    adverb = len(words) > 1 and words[0].lower() in ("first", "last", "originally")
    part = words[1].lower() if adverb else words[0].lower() if words else ""
    if part and (part.endswith(("ed", "en", "wn", "lt")) or adverb and part in _IRREGULAR_PARTICIPLES) \
            and len(words) <= 3:
        # "Founded", "Designed by", "Last won" (an honours table: "League champions was last won in 1975")
        prep = "" if words[-1].lower() in ("by", "in", "at", "on", "from", "for") else (
            " in" if re.fullmatch(r"(c\. )?\d{3,4}( (BC|AD))?", value) or re.fullmatch(_MONTH + r" \d{3,4}", value)
            else " on" if re.fullmatch(r"\d{1,2} " + _MONTH + r" \d{3,4}", value)
            or re.fullmatch(_MONTH + r" \d{1,2}, \d{3,4}", value) else "")  # "Launched: 14 March 1998"
        return finish(f"{pre}{name} was {low}{prep} {value}")
    if words and words[-1].lower() in ("by", "in", "at", "on", "from", "of"):
        return finish(f"{pre}{name}, {low} {value}")
    noun = _count(h, value)
    if noun is not None:  # "Platforms" 3 -> "X has 3 platforms."
        return finish(f"{pre}{name} {'had' if at else 'has'} {value} {noun}")
    return finish(f"{pre}{'the' if at else 'The'} {low} of {name} is {value}")


_IRREGULAR_PARTICIPLES = {"won", "held", "run", "set", "built", "sold", "made", "lost", "hit", "met"}
_TIME_HEADERS = {"year", "years", "date", "season", "census", "period", "decade", "month"}
# columns of a results table (an election's, a competition's): the figures belong to the event the article is about
_RESULT_HEADERS = {"votes", "seats", "points", "goals", "wins", "losses", "draws", "medals", "gold", "silver", "bronze",
                   "score", "rank", "position", "vote share", "share", "result"}
_EVENT_TITLE = (r"\b(elections?|referendum|championships?|cup|tournament|games|olympics|season|race|marathon|"
                r"grand prix|contest|final|league|rally)\b")
_YEAR = r"(c\. )?\d{3,4}( (BC|AD|BCE|CE))?(s)?"
_MONTH = (r"(?i:jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|sep(t(ember)?)?|oct(ober)?"
          r"|nov(ember)?|dec(ember)?)")


def _count(header: str, value: str) -> str | None:
    """The counted noun when a cell is a bare count under a one-word plural header ("Platforms" 3 -> "platforms",
    1 -> "platform"); None for anything else."""
    h = header.strip()
    if (len(h.split()) == 1 and re.fullmatch(r"[A-Za-z]+[^su]s", h) and h.lower() not in _NOT_PLURAL
            and re.fullmatch(r"\d[\d,]*(\.\d+)?", value)):
        low = _lower_header(h)
        return low[:-1] if value == "1" else low
    return None


def _time_sentence(topic: str, when: str, header: str, value: str) -> str:
    """A cell of a table keyed by time: "In 1900, the University of Tallow had 1,200 students." / "In 1900, the
    population of Velmora was 4,200." """
    year = re.fullmatch(_YEAR, when) is not None
    # a year is a time past; a month ("January | 2 °C" in a climate table) recurs
    at = f"In {when}," if year or re.fullmatch(_MONTH, when) else f"In {when[:1].lower() + when[1:]},"
    has, be = ("had", "was") if year else ("has", "is")
    noun = _count(header, value)
    if noun is not None:
        return finish(f"{at} {topic} {has} {value} {noun}")
    return finish(f"{at} the {_lower_header(header.strip())} of {topic} {be} {value}")


# one-word headers that end in -s but do not name a count of things
# (words ending in -ss or -us never match the pattern)
_NOT_PLURAL = {"series", "species", "means", "news", "physics", "mathematics", "economics", "gas", "chaos", "lens",
               "atlas", "canvas"}


def atomize(doc: Document, nlp) -> list[AtomDraft]:
    """Typed, self-contained atoms of one document."""
    return next(iter(atomize_many([doc], nlp)))


def atomize_many(docs: Iterable[Document], nlp, batch_size: int = 64) -> Iterator[list[AtomDraft]]:
    """Atomize several documents, sharing spaCy batches; yields one list of atoms per document."""
    docs = list(docs)
    plans: list[list[Block]] = [segment(d.text) for d in docs]
    topics = [topic_title(d.title, d.text) for d in docs]  # the name each title gives its topic in the prose

    def stream():
        for n, (d, bl) in enumerate(zip(docs, plans)):
            yield (topics[n] or " ", (n, "title", None, None))
            heading = None
            for k, b in enumerate(bl):
                if b.heading != heading:
                    heading = b.heading
                    yield (heading or " ", (n, "heading", b, None))
                if b.kind == "table":
                    yield (" ", (n, "table", b, None))
                    continue
                raw = d.text[b.start:b.end]
                if b.kind != "item":
                    fields = key_values(raw)
                else:  # "- Capital: Velmora": a list whose items next to this one are fields too
                    fields = key_values(raw, least=1)
                    near = [bl[j] for j in (k - 1, k + 1) if 0 <= j < len(bl) and bl[j].kind == "item"]
                    if fields and not any(key_values(d.text[x.start:x.end], least=1) for x in near):
                        fields = None
                if fields:
                    yield (" ", (n, "fields", b, fields))
                    continue
                # a person's life dates become atoms of their own; the sentence is parsed without them
                lives = life_dates(raw) if b.kind != "item" else []
                for lo, hi, _, _ in lives:
                    raw = raw[:lo] + " " * (hi - lo) + raw[hi:]  # same length: offsets still map to the source
                clean, offs = clean_map(raw)
                nxt = bl[k + 1] if k + 1 < len(bl) else None
                doc = _presegmented(nlp, clean, sentence_starts(clean, raw, offs), titled_spans(raw, offs))
                yield (doc, (n, "block", b, (offs, nxt is not None and nxt.kind == "item", lives)))

    cur: _DocState | None = None
    for parsed, (n, what, b, extra) in nlp.pipe(stream(), batch_size=batch_size, as_tuples=True):
        if what == "title":  # every document streams its title first
            if cur is not None:
                yield cur.atoms
            cur = _DocState(docs[n], topics[n], parsed)
        elif what == "heading":
            cur.disc.set_section(b.heading, docs[n].text, parsed if b.heading else None)
        elif what == "table":
            _table_atoms(cur, b)
        elif what == "fields":
            _field_atoms(cur, b, extra)
        else:
            offs, intro_next, lives = extra
            context = key_context(b.heading, cur.doc.title)
            for _, _, name, facts in lives:
                cur.disc.life_of(name)
                for text, lo, hi in facts:
                    cur.atoms.append(AtomDraft(type="event", text=text, key=make_key(f"{name}: life", text, context),
                                               start=b.start + lo, end=b.start + hi))
            n_before = len(cur.atoms)
            _title_tokens(parsed)
            _prose_atoms(cur, b, parsed, offs, intro_next)
            # a timeline entry, "- 1843: Ilse Varn founds the town." or a line of them: "In 1843, Ilse Varn founds
            # Velmora."
            for a in cur.atoms[n_before:]:
                when = dated(a.text) if a.text[:1].isdigit() or a.text[:2] == "C." else None
                if when is not None:
                    a.text, a.type = when, "event"
    if cur is not None:
        yield cur.atoms
