"""Near-miss questions and the signals that see them: what an atom almost, but does not, answer.

SQuAD 2.0's unanswerable questions (Rajpurkar, Jia and Liang 2018, "Know What You Don't
Know") were written by editing answerable ones: a negation inserted or removed, an antonym,
an entity or a number swapped for another, a mutually exclusive or impossible condition.
They reuse the paragraph's words, so retrieval scores them as high as the real thing.
`calibrate` makes such edits of every atom's synthesised questions, with replacements taken
from OTHER atoms of the same knowledge base (same spaCy entity label, same part of speech),
and trains the learned router to refuse them. The edits follow the paper's categories and
generic English rules (the word lists below); nothing in them is specific to a corpus.

The signals (router/learned.py features) that can see an edit, per (question, atom):
- names or content words of the question that the atom lacks but other atoms have (a swap
  inside the knowledge base; a word no atom has is already `name_oov`/`word_oov`);
- the rarest such word (one swapped specific word matters more than several common ones);
- a negation on one side only; a word whose antonym the atom has instead.
This module must never touch the store or the indices.
"""

from __future__ import annotations

import re
from functools import lru_cache

NEGATIONS = frozenset(("not", "no", "never", "none", "nor", "neither", "nobody", "nothing", "nowhere",
                       "cannot", "without", "n't"))
# Generic English antonyms (both directions are used). Comparatives and superlatives are where an
# edited question most often flips a fact ("largest" -> "smallest").
_PAIRS = (
    ("large", "small"), ("larger", "smaller"), ("largest", "smallest"), ("big", "small"), ("bigger", "smaller"),
    ("biggest", "smallest"), ("long", "short"), ("longer", "shorter"), ("longest", "shortest"),
    ("high", "low"), ("higher", "lower"), ("highest", "lowest"), ("tall", "short"), ("tallest", "shortest"),
    ("old", "new"), ("older", "newer"), ("oldest", "newest"), ("early", "late"), ("earlier", "later"),
    ("earliest", "latest"), ("first", "last"), ("before", "after"), ("north", "south"), ("east", "west"),
    ("northern", "southern"), ("eastern", "western"), ("upper", "lower"), ("inner", "outer"),
    ("increase", "decrease"), ("increased", "decreased"), ("rise", "fall"), ("more", "less"), ("most", "least"),
    ("many", "few"), ("major", "minor"), ("maximum", "minimum"), ("wide", "narrow"), ("wider", "narrower"),
    ("widest", "narrowest"), ("deep", "shallow"), ("deepest", "shallowest"), ("fast", "slow"),
    ("fastest", "slowest"), ("strong", "weak"), ("strongest", "weakest"), ("warm", "cold"), ("hot", "cold"),
    ("wet", "dry"), ("heavy", "light"), ("rich", "poor"), ("open", "closed"), ("start", "end"),
    ("begin", "end"), ("begins", "ends"), ("enter", "leave"), ("import", "export"), ("win", "lose"),
    ("won", "lost"), ("above", "below"), ("inside", "outside"), ("upstream", "downstream"), ("top", "bottom"),
    ("same", "different"), ("common", "rare"), ("private", "public"), ("true", "false"), ("positive", "negative"),
    ("ancient", "modern"), ("internal", "external"), ("always", "never"), ("all", "none"), ("allowed", "forbidden"),
    ("success", "failure"), ("successful", "unsuccessful"), ("legal", "illegal"), ("possible", "impossible"),
)
ANTONYMS: dict[str, frozenset[str]] = {}
for _a, _b in _PAIRS:
    ANTONYMS[_a] = ANTONYMS.get(_a, frozenset()) | {_b}
    ANTONYMS[_b] = ANTONYMS.get(_b, frozenset()) | {_a}

_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
_AUX = re.compile(r"\b(is|are|was|were|does|do|did|can|could|will|would|has|have|had|should|may|might|must)\b",
                  re.IGNORECASE)
_NEG_IN = re.compile(r"\s+(?:not|never)\b|n't\b", re.IGNORECASE)
# Entity labels whose mentions are names or quantities: a swap changes what is asked about.
SWAP_LABELS = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
               "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")
# A content word swapped for another atom's looks, to word-overlap signals, like a user's paraphrase (a synonym
# the atom lacks): without a synonym model no feature separates them, and training on them made the router refuse
# real paraphrased questions. They are generated and their refusal is reported, but they do not train the model.
REPORT_ONLY = frozenset(("word_swap",))
MIN_CONTEXT_WORDS = 3  # a near miss must keep this many content words of its atom, or it is not "near"


def words(text: str) -> set[str]:
    """Lower-cased words of a text (apostrophe forms kept: "isn't" -> {"isn't"}; "n't" is seen by `negated`)."""
    return set(_WORDS.findall(text.lower()))


def negated(text: str) -> bool:
    t = text.lower()
    return "n't" in t or bool(words(t) & NEGATIONS)


def antonym_clash(q_words: set[str], atom_words: set[str]) -> bool:
    """True when the question has a word the atom lacks while the atom has one of its antonyms."""
    return any(w not in atom_words and ANTONYMS[w] & atom_words for w in q_words if w in ANTONYMS)


@lru_cache(maxsize=1)
def _nlp():
    """spaCy for entity labels and parts of speech of atom texts (None when the model is not installed)."""
    try:
        from doc2atom.models import load_spacy

        return load_spacy()
    except Exception:  # noqa: BLE001 (no spaCy: fall back to the capitalisation and digit rules)
        return None


_NAME = re.compile(r"\b[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*|\b\d[\d,.]*\b")


def inventory(texts: list[str], nlp=None) -> list[dict]:
    """Per atom text: {"ents": [(text, label)], "nouns": [word], "adjs": [word]}.

    With spaCy: its entity labels and parts of speech; without: capitalised spans and numbers,
    labelled NAME / NUMBER, and no nouns."""
    nlp = nlp if nlp is not None else _nlp()
    out = []
    if nlp is None:
        for t in texts:
            ents = [(m.group(0), "NUMBER" if m.group(0)[0].isdigit() else "NAME") for m in _NAME.finditer(t)
                    if m.start() > 0]
            out.append({"ents": ents, "nouns": [], "adjs": []})
        return out
    for doc in nlp.pipe(texts, batch_size=64):
        ent_tok = {i for e in doc.ents for i in range(e.start, e.end)}
        out.append({"ents": [(e.text, e.label_) for e in doc.ents if e.label_ in SWAP_LABELS],
                    "nouns": [t.text for t in doc if t.pos_ == "NOUN" and t.i not in ent_tok and t.is_alpha
                              and len(t.text) > 2 and not t.is_stop],
                    "adjs": [t.text for t in doc if t.pos_ == "ADJ" and t.i not in ent_tok and t.is_alpha
                             and len(t.text) > 2 and not t.is_stop]})
    return out


def _replace_word(q: str, old: str, new: str) -> str | None:
    m = re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", q)
    if not m:
        return None
    if old[:1].isupper() and not new[:1].isupper():
        new = new[:1].upper() + new[1:]
    return q[:m.start()] + new + q[m.end():]


def _content_count(q: str, atom_words: set[str]) -> int:
    return len([w for w in words(q) if w in atom_words and len(w) > 3])


def edits(question: str, atom_text: str, inv: dict, pools: dict, rng) -> list[tuple[str, str]]:
    """Near-miss edits of one synthesised question of an atom: [(kind, edited question)], at most one per kind.

    inv: the atom's `inventory` entry; pools: {"ents": {label: [(text, atom index)]}, "nouns": [(word, atom
    index)], "adjs": [...], "self": this atom's index}; replacements come from other atoms and must be absent
    from this atom's text. Kinds: entity_swap, number_swap, word_swap, antonym, negation."""
    aw = words(atom_text)
    me = pools["self"]
    out = []
    if _content_count(question, aw) < MIN_CONTEXT_WORDS:  # "What do you know about X?": nothing pins the atom
        return out
    low_atom = atom_text.lower()

    def other(cands):
        cands = [t for t, a in cands if a != me and t.lower() not in low_atom]
        return cands[int(rng.integers(len(cands)))] if cands else None

    present = [(t, lab) for t, lab in inv["ents"] if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", question)]
    rng.shuffle(present)
    for kind, numeric in (("entity_swap", False), ("number_swap", True)):
        for t, lab in present:
            if any(c.isdigit() for c in t) != numeric:
                continue
            new = other(pools["ents"].get(lab, []))
            q2 = _replace_word(question, t, new) if new else None
            if q2 and q2 != question:
                out.append((kind, q2))
                break
    for pos in ("nouns", "adjs"):
        mine = [w for w in inv[pos] if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", question)]
        if mine:
            w = mine[int(rng.integers(len(mine)))]
            new = other(pools[pos])
            q2 = _replace_word(question, w, new) if new else None
            if q2:
                out.append(("word_swap", q2))
                break
    qw = [w for w in _WORDS.findall(question.lower()) if w in ANTONYMS]
    for w in qw:
        ants = sorted(a for a in ANTONYMS[w] if a not in aw)
        if ants:
            q2 = _replace_word(question, w, ants[int(rng.integers(len(ants)))])
            if q2 is None:  # capitalised at the start of the question
                q2 = _replace_word(question, w.capitalize(), ants[0])
            if q2:
                out.append(("antonym", q2))
                break
    if _NEG_IN.search(question):
        out.append(("negation", _NEG_IN.sub("", question, count=1)))
    else:
        m = _AUX.search(question)
        if m:
            out.append(("negation", question[:m.end()] + " not" + question[m.end():]))
    return out


def build_pools(invs: list[dict]) -> dict:
    ents: dict[str, list] = {}
    for a, inv in enumerate(invs):
        for t, lab in inv["ents"]:
            ents.setdefault(lab, []).append((t, a))
    return {"ents": ents, "nouns": [(w, a) for a, inv in enumerate(invs) for w in inv["nouns"]],
            "adjs": [(w, a) for a, inv in enumerate(invs) for w in inv["adjs"]]}


def generate(atoms: list[tuple[str, list[str]]], rng, per_atom: int = 3, nlp=None) -> list[tuple[int, str, str]]:
    """Near misses for a knowledge base: [(atom index, kind, question)], at most `per_atom` per atom, of distinct
    kinds where possible. atoms: (atom text, its synthesised questions)."""
    invs = inventory([t for t, _ in atoms], nlp)
    pools = build_pools(invs)
    out = []
    for a, ((text, qs), inv) in enumerate(zip(atoms, invs)):
        pools["self"] = a
        found: dict[str, str] = {}
        for i in rng.permutation(len(qs)):
            for kind, q2 in edits(qs[i], text, inv, pools, rng):
                found.setdefault(kind, q2)
        kinds = list(found)
        rng.shuffle(kinds)
        out += [(a, k, found[k]) for k in kinds[:per_atom]]
    return out
