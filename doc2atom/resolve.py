"""Make atoms self-contained: resolve pronouns, definite descriptions and elided subjects.

A small salience model of the discourse, after Lappin and Leass (1994): every noun phrase of
a document becomes (or is linked to) an entity that remembers how recently and in which
role (subject, object, other) it was mentioned, which nouns name its class ("river" from "a
European river" or "the river Rhine"), and whether it is plural, a person or a place. A
pronoun goes to the most salient compatible entity of the last two sentences, of its own
sentence, or the document's topic (its title, or a section heading that names something);
"the river" goes to the named entity whose class is "river"; "the former" / "the latter" to the second last /
last of the names before them (in their sentence, else in the last one).

Resolution decides what a token means; whether an atom's text shows the resolved name is
asked per piece through `Analysis.replacement`: a pronoun that the piece itself already
gives an antecedent for ("The Rhine encounters its tributaries") stays as written.
Expletive "it" ("It is expected that ...") is left alone; a demonstrative subject ("This
caused ...") points at a statement, not an entity, and is marked for the atomizer to join
with that statement.
This module must never change token text other than through `replacement`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from doc2atom.clues import (bracketed, cataphor, classes_of, clause_subject, copula_noun, is_expletive, later_mentions,
                            life_dates, near, norm, partitive_object, role_weight, same_clause_subjects,
                            source_text)
from doc2atom.lexicon import (DEMONSTRATIVES, GENERIC, LABEL_CLASSES, MEASURE_NOUNS, NAMED, NOT_ENTITIES, NUMERIC,
                              PRONOUNS, RELATIONAL, STATIVE_PASSIVES, TAXON_NOUNS, LIFE_STAGES, GENERIC_HEADINGS,
                              BODY_PARTS, CLASS_FAMILIES, CLIMATE_NOUNS, FEMALE_TITLES, MALE_TITLES, ORGANISM_NOUNS,
                              SETTLEMENTS, VESSELS, WORKS, person_noun)

_TOPIC, _SECTION = 2.5, 3.0  # while a section names its subject, that subject leads


_GENDER = {"she": "f", "her": "f", "hers": "f", "herself": "f", "he": "m", "him": "m", "his": "m", "himself": "m"}


@dataclass(eq=False)
class Entity:
    """Something the discourse talks about."""

    name: str  # how an atom names it mid-sentence: "the Rhine", "Maud Ellery"
    key: str  # identity for linking mentions: "rhine"
    classes: set[str] = field(default_factory=set)  # nouns that describe it: {"river"}
    plural: bool = False
    votes: int = 0  # evidence that it is a person (PERSON tags, person nouns) minus evidence against
    place: bool = False
    proper: bool = False
    topic: float = 0.0  # salience it always has (document title, section heading)
    last: int = -100  # sentence number of the last mention
    role: float = 0.0  # weight of the role of the last mention
    count: int = 0
    patient: bool = False  # last mentioned as an object or passive subject
    clean: bool = False  # name is just "the" + proper nouns
    gender: str | None = None  # "f" / "m" once a she/he pronoun was resolved to it
    # first mentioned with "a"/"an" and an of-phrase: "the expedition of eleven people up the Ardent River", what a
    # later "the expedition" is replaced by
    description: str = ""
    # classes the text gave it (a word of its name: "Lake Constance"; "X is a village", "X, a village", "the village
    # of X"), not the tagger's label ("GPE": city, town, village ...)
    said: set[str] = field(default_factory=set)

    @property
    def person(self) -> bool:
        return self.votes > 0


@dataclass
class Ref:
    entity: Entity
    tokens: list[int]  # the tokens the name replaces
    possessive: bool = False
    kind: str = "pronoun"  # "pronoun", "description", "latter", "cataphor" (named later in the sentence)
    local: set[int] = field(default_factory=set)  # earlier tokens of this sentence it could also point at


@dataclass
class Analysis:
    """What one sentence's tokens refer to."""

    refs: dict[int, Ref] = field(default_factory=dict)  # every replaced token -> its Ref
    mention: dict[int, Entity] = field(default_factory=dict)  # token -> entity it mentions
    mentions: list[tuple[list[int], Entity, float]] = field(default_factory=list)  # (tokens, entity, role)
    expletive: set[int] = field(default_factory=set)
    event: set[int] = field(default_factory=set)  # demonstrative subjects that point at a statement
    classes: list[tuple[Entity, str]] = field(default_factory=list)  # learned "X is a N" facts
    patients: set[int] = field(default_factory=set)  # ids of entities mentioned as objects or passive subjects

    def replacement(self, i: int, before: set[int], names: frozenset[str] = frozenset()) -> str | None:
        """Text to show for token i in a piece whose earlier tokens are `before` (and whose added
        words name `names`); None keeps the token as written."""
        ref = self.refs.get(i)
        if ref is None or ref.kind == "cataphor" or ref.entity.name in names:
            return None
        if any(self.mention.get(j) is ref.entity for j in before if j not in ref.tokens):
            return None  # the piece has already named it: "The Rhine encounters its tributaries"
        if ref.kind == "pronoun" and before & ref.local:
            return None  # the piece gives the pronoun an antecedent of its own: leave it as written
        if i != ref.tokens[0]:
            return ""
        name = ref.entity.description if ref.kind == "description" and ref.entity.description else ref.entity.name
        if ref.possessive:
            return name + ("'" if name.endswith("s") and not name.endswith("ss") else "'s")
        return name


def topic_title(title: str, text: str) -> str:
    """The name a document's title gives its topic in the prose: without a disambiguating bracket ("Orvan (town)"
    -> "Orvan"), and with a closing abbreviation spelled out where the text spells it ("Harrowgate Rovers F.C." ->
    "Harrowgate Rovers Football Club", when the article says so)."""
    t = " ".join(title.split())
    bare = re.sub(r"\s*\([^()]+\)$", "", t)
    if bare and bare != t:
        t = bare
    m = re.match(r"^(.*?\S)\s+((?:[A-Z]\.){2,}|[A-Z]{2,4})$", t)
    if m and not re.search(r"(?<!\w)" + re.escape(t) + r"(?!\w)", text.replace(f"# {title}", "", 1)):
        head, letters = m.group(1), re.sub(r"[^A-Z]", "", m.group(2))
        spelled = re.search(r"(?<!\w)" + re.escape(head) + "".join(rf"\s+{c}[\w'-]*" for c in letters) + r"(?!\w)",
                            text)
        if spelled:
            t = " ".join(spelled.group(0).split())
        return t
    # the name the article's first sentence opens with, when it is the title shortened ("Aldric III of Veldt" ->
    # "Aldric III (1590 - 1641) was King ...", "Tessic language" -> "Tessic is a language ...")
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "|", "<"))), "")
    first = re.sub(r"^[\s*_\"'“]*(?:the\s+)?[*_]*", "", first, flags=re.I)
    words = t.split()
    for k in range(len(words) - 1, 0, -1):
        short = " ".join(words[:k])
        if first.startswith(short) and re.match(r"[*_]*(?:\s+\(|\s+(?:is|was|are|were|has|had)\b|,)", first[len(short):]) \
                and short[:1].isupper():
            return short
    return t


class Discourse:
    """Entities of one document, updated sentence by sentence (call `analyse` then `observe`)."""

    def __init__(self, title: str, text: str, title_doc=None):
        self.entities: list[Entity] = []
        self.by_key: dict[str, Entity] = {}
        self.sent = 0
        self.prev_mentions: list[tuple[int, Entity, bool]] = []  # (position, entity, proper) of the last sentence
        self.prev_people: list[Entity] = []  # distinct people the last sentence named, in order
        self.title = self._topic_entity(title, text, title_doc, _TOPIC) if title.strip() else None
        self.section: Entity | None = None
        # an article about an organism names its taxon somewhere ("The species was first described ..."): its
        # "Adults" and "the flowers" are the organism's
        self.organism = bool(re.search(r"\b(?:species|subspecies|genus)\b", text, flags=re.I))

    # -- topic ----------------------------------------------------------------------------

    def _topic_entity(self, title: str, text: str, tdoc, weight: float) -> Entity:
        title = " ".join(title.split())
        bare = re.sub(r"^(the|a|an)\s+", "", title, flags=re.I)
        hits = [m.start() for m in re.finditer(r"(?<!\w)" + re.escape(bare) + r"(?!\w)", text, flags=re.I)]
        # the name in a heading line ("# Lumen Institute", "## Lumen Institute today") or alone on its line (a
        # plain-text title) says nothing of the article the prose uses
        lines = [(text.rfind("\n", 0, h) + 1, text.find("\n", h)) for h in hits]
        hits = [h for h, (a, b) in zip(hits, lines) if not (
            text[a:h].lstrip().startswith("#") or text[a:b if b >= 0 else len(text)].strip(" \t*_#").lower()
            in (bare.lower(), title.lower()))]
        before = [text[max(0, h - 12):h] for h in hits]
        # "The **Harrowgate Canal** is ...": emphasis, link or code markup between "the" and the name
        with_the = sum(1 for b in before if re.search(r"(?<!\w)the\s+[*_\[`]*$", b, flags=re.I))
        # "Zarnite" as a title, "zarnite dissolves in ..." in the prose: a common noun keeps the prose's case
        mid = [text[h:h + len(bare)] for h, b in zip(hits, before)
               if (pre := b.rstrip(" \t\"'“(*_[`")) and pre[-1] not in ".!?\n"]
        if bare[:1].isupper() and mid and sum(m == bare.lower() for m in mid) * 2 > len(mid):
            bare = bare.lower()
        if re.match(r"^the\s", title, flags=re.I) or (with_the and with_the * 2 >= len(hits)):
            name = "the " + bare
        else:
            name = bare
        plural = place = False
        person: bool | None = None
        key = bare.lower()
        classes: set[str] = set()
        if tdoc is not None and len(tdoc):
            root = tdoc[-1]
            plural = root.tag_ in ("NNS", "NNPS") and not bare.lower().endswith(("ss", "us", "is"))
            if plural and re.search(r"(?<!\w)" + re.escape(bare) + r"[*_]*\s+(?:is|was|has)\b", text, flags=re.I):
                plural = False  # "*The Salt Roads* is a choral cycle": a work's title, singular
            # a title alone is often mis-tagged PERSON ("Rhine"): believe it only if the text says he or she
            tagged = any(t.ent_type_ == "PERSON" for t in tdoc)
            person = tagged and bool(re.search(r"\b(he|she|his|him|her)\b", text, flags=re.I)) or (
                None if tagged else False)
            place = any(t.ent_type_ in ("GPE", "LOC") for t in tdoc)
            # every word of the title (a title alone is often mis-tagged: "Ellery" as a noun)
            words = [t.text for t in tdoc if not t.is_punct and not (t.i == 0 and t.lower_ in ("the", "a", "an"))]
            if words:
                key = norm(words)
            classes = classes_of(tdoc)
            if person and classes and not any(person_noun(c) for c in classes):
                person = False  # "Battle of Kessel Ford" tagged PERSON, and a "his" about someone else in the text
        e = Entity(name=name, key=key, classes=classes, plural=plural, votes={True: 2, None: 0, False: -1}[person], place=place,
                   proper=bare[:1].isupper(), topic=weight, clean=True)
        self._add(e)
        return e

    def set_section(self, heading: str | None, text: str, hdoc=None) -> None:
        """A heading that names something (and is mentioned in the text) becomes the section's topic."""
        if self.section is not None and self.section is not self.title:
            self.section.topic = 0.0
        self.section = None
        self.sent += 2  # a heading starts a new stretch of discourse: what came before is no longer recent
        self.prev_mentions, self.prev_people = [], []
        if not heading or (self.title and heading.strip().lower() in (self.title.key, self.title.name.lower())):
            return
        if heading.strip().strip("#*_ ").lower() in GENERIC_HEADINGS:
            return  # "## Organisation" names a part of the article
        if hdoc is None or not len(hdoc):
            return
        words = [t for t in hdoc if not t.is_punct]
        # a one-word heading the tagger cannot place ("Dask" as a verb) is a name; "Exports" is a noun
        # ("Visiting", "Breeding": a gerund heading names an activity, not a thing)
        name_like = (all(t.pos_ in ("PROPN", "DET") for t in words) and len(words) <= 5) or (
            len(words) == 1 and words[0].text[:1].isupper() and words[0].pos_ not in ("NOUN", "ADJ", "ADV", "ADP")
            and not (words[0].pos_ == "VERB" and words[0].lower_.endswith("ing")))
        if not name_like and not any(t.pos_ == "PROPN" for t in hdoc):
            return
        bare = re.sub(r"^(the|a|an)\s+", "", heading.strip(), flags=re.I)
        if not name_like and bare.lower() not in text.lower().replace(heading.lower(), "", 1):
            return  # "Life in the Town" is no entity; "## Dask" or a heading named in the text is
        key = norm(t.text for t in hdoc if t.pos_ == "PROPN")
        e = self.by_key.get(key) or self._topic_entity(heading, text, hdoc, _SECTION)
        e.topic = max(e.topic, _SECTION)
        self.section = e

    def topic(self) -> Entity | None:
        return self.section or self.title

    def _add(self, e: Entity) -> None:
        self.entities.append(e)
        self.by_key.setdefault(e.key, e)

    # -- one sentence ---------------------------------------------------------------------

    def analyse(self, sent) -> Analysis:
        a = Analysis()
        chunks = {c.root.i: c for c in sent.noun_chunks}
        starts = {c.start: c for c in chunks.values()}
        local: list[tuple[int, Entity, float, bool]] = []  # (position, entity, role, proper) in this sentence
        pair: list[Entity] | None = None  # what "the former" / "the latter" choose between, fixed at the first one
        for t in sent:
            if t.i in starts and t.i not in a.mention and t.tag_ != "PRP$":
                self._mention(starts[t.i], local, a)
            low = t.lower_
            if t.dep_ == "poss" and t.tag_ in ("NN", "NNS") and [c.lower_ for c in t.children if c.dep_ != "case"] == [
                    "the"]:
                ent = self._described(t.lemma_.lower(), t.tag_ == "NNS")  # "the company's product"
                if ent is not None and ent.name.lower() != "the " + low:
                    toks = [t.i - 1, t.i] + [c.i for c in t.children if c.dep_ == "case"]
                    for x in toks:  # "the company's" -> "the Korrin Works'"
                        a.refs[x], a.mention[x] = Ref(ent, toks, len(toks) > 2, "description"), ent
                    a.mentions.append((toks, ent, 1.0))
                continue
            nxt = t.doc[t.i + 1] if t.i + 1 < sent.end else None
            if low in ("latter", "former") and t.i > sent.start and t.doc[t.i - 1].lower_ == "the" and not (
                    nxt is not None and nxt.pos_ in ("NOUN", "PROPN", "ADJ")):  # not "the former bay"
                if pair is None:
                    pair = self._pair(local)
                ent = (pair[-2] if len(pair) > 1 else None) if low == "former" else (pair[-1] if pair else None)
                if ent is not None:
                    toks = [t.i - 1, t.i]
                    for x in toks:
                        a.refs[x] = Ref(ent, toks, False, "latter")
                        a.mention[x] = ent
                continue
            if t.tag_ in ("WDT", "WP") and t.dep_ in ("nsubj", "nsubjpass") and t.head.dep_ == "relcl":
                head = t.head.head
                near = max((x for x in head.children if x.dep_ == "conj" and x.i < t.i), key=lambda x: x.i,
                           default=head)  # "Waal and Pannerdens Kanaal, which ...": the nearest noun
                ant = a.mention.get(near.i) or a.mention.get(head.i)  # "which" stands for its antecedent
                if ant is not None:
                    a.mention[t.i] = ant
                continue
            if t.pos_ == "PRON" and low in DEMONSTRATIVES and t.dep_ in ("nsubj", "nsubjpass") and t.tag_ == "DT":
                a.event.add(t.i)
            elif low in PRONOUNS and t.pos_ == "PRON":
                if is_expletive(t):
                    a.expletive.add(t.i)
                    continue
                ref = self._resolve_pronoun(t, local, sent, a, chunks)
                if ref is not None:
                    a.refs[t.i] = ref
                    if ref.kind == "pronoun" and ref.entity.gender is None and low in _GENDER:
                        ref.entity.gender = _GENDER[low]  # later pronouns of the other gender are not this one
                    if ref.kind != "cataphor":
                        a.mention[t.i] = ref.entity
                        role = role_weight(t)
                        a.mentions.append(([t.i], ref.entity, role))
                        local.append((t.i, ref.entity, role, ref.entity.proper))
                if t.i in starts and t.tag_ == "PRP$":  # "Their guild": known once "Their" is
                    self._mention(starts[t.i], local, a)
        self._learn_classes(sent, a)
        return a

    def _mention(self, c, local, a: Analysis) -> None:
        ent = self._link(c, local, a)
        if ent is None:
            return
        role = role_weight(c.root)
        if c.root.dep_ in ("dobj", "nsubjpass") or partitive_object(c.root):
            a.patients.add(id(ent))
        toks = [x.i for x in c if x.lower_ not in PRONOUNS and x.tag_ != "PRP$"
                and not (x.dep_ == "nummod" and x.head.pos_ == "PROPN")]  # "By 1935 Kessler": 1935 names no one
        for x in toks:
            a.mention[x] = ent
        a.mentions.append((toks, ent, role))
        local.append((c.start, ent, role, ent.proper and not bracketed(c.root)))
        r = c.root
        conj = [x for x in r.children if x.dep_ == "conj" and x.pos_ in ("NOUN", "PROPN")]
        if conj and r.dep_ in ("nsubj", "nsubjpass"):  # "Britain and France ... they"
            last = max(conj, key=lambda x: x.i)
            span = r.doc[c.start:last.i + 1]
            key = "+" + norm(x.text for x in span if not x.is_punct)
            g = self.by_key.get(key)
            if g is None:
                g = Entity(name=source_text(span, skip_det=False), key=key, plural=True, proper=ent.proper)
                if g.name[:4] == "The ":
                    g.name = "the " + g.name[4:]
                self._add(g)
            a.mentions.append(([c.start], g, role))
            local.append((c.start, g, role, g.proper))

    def _link(self, c, local, a: Analysis) -> Entity | None:
        """The entity a noun chunk mentions (a new one if it names something new), or None."""
        r = c.root
        if r.pos_ == "PRON" or r.ent_type_ in NUMERIC or r.like_num or r.lower_ in ("which", "who", "that"):
            return None
        owner = a.refs.get(c[0].i) if c[0].tag_ == "PRP$" else None
        if owner is not None and owner.kind != "cataphor" and r.pos_ == "NOUN" and len(c) > 1 and not any(
                x.lower_ in PRONOUNS for x in c[1:]):
            rest = source_text(c[1:], skip_det=False)  # "their guild" -> "the workers' guild"
            key = owner.entity.key + "'s " + norm(x.lemma_ for x in c[1:])
            ent = self.by_key.get(key)
            if ent is None:
                ent = Entity(name=owner.entity.name + ("'" if owner.entity.name.endswith("s") else "'s") + " " + rest,
                             key=key, classes={r.lemma_.lower()}, plural=r.tag_ == "NNS", votes=-1)
                self._add(ent)
            return ent
        if any(x.tag_ == "PRP$" or (x.lower_ in PRONOUNS and x.pos_ == "PRON") for x in c):
            return None
        words = [x for x in c if not (x.dep_ in ("det", "predet") and x.pos_ == "DET")]
        if not words:
            return None
        det = c[0].lower_ if c[0].dep_ == "det" else ""
        if r.dep_ == "attr" and r.head.lemma_ == "be" and r.pos_ == "NOUN":
            s = next((x for x in r.head.children if x.dep_ in ("nsubj", "nsubjpass")), None)
            return a.mention.get(s.i) if s is not None else None  # "X is a river": the river is X
        topic = self.topic()  # (the same for every rule below: nothing in this call changes the section)
        if (r.lower_ in ("turnout", "attendance") and det in ("", "the") and r.dep_ in ("nsubj", "nsubjpass")
                and len(c) == 1 + bool(det) and topic is not None and not topic.person and topic.count > 0):
            # "Turnout was 71 per cent." in an election's article (a sentence's first word, tagged a name)
            return self._of_topic(c, a, "in " + r.lower_ + " " + topic.key, r.lower_, "in", topic, False, -1)
        propn = [x for x in words if x.pos_ == "PROPN"]
        proper = r.pos_ == "PROPN" or (bool(propn) and r.ent_type_ in NAMED)
        if proper:
            key = norm(x.text for x in (propn or words))
            of = next((x for x in r.children if x.dep_ == "prep" and x.lower_ == "of"), None)
            tail = [x for x in of.children if x.dep_ == "pobj" and x.pos_ == "PROPN"] if of is not None else []
            if tail and tail[0].right_edge.i - of.i <= 3:  # "the Gulf of Sarn", parsed as "the Gulf" + "of Sarn"
                full = key + " of " + norm(x.text for x in r.doc[of.i + 1:tail[0].right_edge.i + 1] if not x.is_punct)
                if full in self.by_key:
                    key = full
            ent = self.by_key.get(key)
            if ent is None and self._by_surname(key) is not None:  # "Varn" -> "Ilse Varn"
                ent = self._by_surname(key)
                t = self.title
                if t is not None and t.proper and not t.person and len(t.key.split()) > 1 and t.key.split()[0] == key:
                    ent = t  # "Kessler" in Kessler Instruments' article is the firm, though its founder is a Kessler
                toks = [x.i for x in c if x.pos_ == "PROPN"]  # not "1935" in "By 1935 Kessler supplied ..."
                a.refs.update({x: Ref(ent, toks, False, "description") for x in toks})
                return ent
            clean = all(x.pos_ == "PROPN" or (x.lower_ == "the" and x.i == c.start) for x in c)
            text = source_text(c, skip_det=False)
            if not clean and propn and any(person_noun(w) for w in classes_of(words)) and all(
                    x.pos_ == "PROPN" for x in r.doc[propn[0].i:c.end]):
                # "the watchmaker Otto Kessler": a later "his sister" is "Otto Kessler's sister"
                text, clean = source_text(r.doc[propn[0].i:c.end], skip_det=False), True
            if text[:4] == "The ":
                text = "the " + text[4:]
            if ent is None:
                ent = Entity(name=text, key=key, proper=True, clean=clean,
                             plural=r.tag_ == "NNPS" and not r.text.endswith(("ss", "us")),
                             place=r.ent_type_ in ("GPE", "LOC"))
                self._add(ent)
            elif clean and not ent.clean and ent.topic == 0:
                ent.name, ent.clean = text, True
            ent.classes |= classes_of(words) | LABEL_CLASSES.get(r.ent_type_, set())
            ent.said |= classes_of(words)
            if any(person_noun(w) for w in classes_of(words)):
                ent.votes += 2  # "the engineer Maud Ellery"
            lead = words[0].lower_
            if words[0].pos_ == "PROPN" and len(words) > 1 and (lead in FEMALE_TITLES or lead in MALE_TITLES):
                ent.votes += 2  # "Queen Maren", "King Osric II": a person, and which
                ent.gender = ent.gender or ("f" if lead in FEMALE_TITLES else "m")
            if life_dates(c):
                ent.votes += 2  # "Ilse Varn (1811–1879)"
            if r.ent_type_ == "PERSON":
                ent.votes += 1
            elif r.ent_type_ in NAMED or classes_of(words) & GENERIC:
                ent.votes -= 1
            after = r.doc[c.end:c.end + 3]
            if (len(after) == 3 and after[0].text == "(" and after[2].text == ")"
                    and re.fullmatch(r"[A-Z]{2,6}", after[1].text)
                    and after[1].text == "".join(x.text[0] for x in c if x.text[:1].isupper() and x.lower_ != "the")):
                # "The Brask Shipping Company (BSC)": a later "BSC" is the company
                self.by_key.setdefault(after[1].lower_, ent)
            return ent
        people = [e for e in self.prev_people if e.person]
        if (det == "the" and len(c) == 2 and r.lower_ in ("couple", "pair") and r.dep_ in ("nsubj", "nsubjpass")
                and len(people) == 2):
            # "In 1902 she married the painter Jonas Eck. The couple had no children."
            g = self._group(people)
            toks = [x.i for x in c]
            a.refs.update({x: Ref(g, toks, False, "description") for x in toks})
            return g
        t = self.title
        if (t is not None and r.pos_ == "NOUN" and norm(x.text for x in words if not x.is_punct) == t.key):
            # "The grey-crested tern (Sterna ...) is a seabird": a common-noun title, mentioned; "The Velmora
            # lady's-slipper (...) is a species of orchid": a name the tagger heads with a common noun
            return t
        if r.pos_ != "NOUN" or (r.lower_ in NOT_ENTITIES and not (
                det in DEMONSTRATIVES and r.dep_ in ("nsubj", "nsubjpass", "dobj"))):
            return None  # "part", "number" ... name nothing, but "this number" points at something
        lemma = r.lemma_.lower()
        if det in ("the", "this", "these", "that", "those") and len(c) == 2 and r.tag_ in ("NN", "NNS") and not (
                det == "the" and any(x.dep_ == "prep" and x.lower_ == "of" for x in r.children)):
            # ("the capital of the region" is a relation, not a name's description; "this flow of the water" still
            # points back)
            # "the river" -> a named river; "these streams" -> whatever streams were just mentioned
            ent = self._described(lemma, r.tag_ == "NNS", common=det in DEMONSTRATIVES)
            if (ent is None and (r.lower_ in TAXON_NOUNS or (self.organism and r.lower_ in ORGANISM_NOUNS))
                    and det == "the" and topic is not None and not topic.person and topic.count > 0):
                # "The species was first described in 1998" in the Marrow glass frog's article; "The plant grows to
                # 45 centimetres" in an orchid's
                toks = [x.i for x in c]
                a.refs.update({x: Ref(topic, toks, False, "description") for x in toks})
                return topic
            if ent is not None:
                if (ent.proper or det in DEMONSTRATIVES or ent is self.title) and ent.name.lower() != c.text.lower():
                    toks = [x.i for x in c]
                    a.refs.update({x: Ref(ent, toks, False, "description") for x in toks})
                return ent
        if (det == "the" and lemma in RELATIONAL and r.tag_ == "NN" and r.dep_ in ("nsubj", "nsubjpass")
                and all(x.i == r.i or x.dep_ == "det" or x.pos_ in ("ADJ", "NUM") for x in c)  # "the first winner"
                and not any(x.dep_ in ("poss", "appos", "compound") or (x.dep_ == "prep" and x.lower_ == "of")
                            for x in r.children)
                and topic is not None and (topic.proper or self.organism) and not topic.person and topic.count > 0
                and lemma not in topic.classes):
            # "The first winner was the Lumen Institute" in the Orrery Prize's article: the winner of the prize
            return self._of_topic(c, a, "rel " + norm(x.lemma_ for x in words) + " of " + topic.key, lemma, "of",
                                  topic, False, 2 if person_noun(lemma) else -1)
        part = (lemma in LIFE_STAGES and (det in ("", "the") if r.tag_ == "NNS" else det == "the")) or (
            lemma in BODY_PARTS and det == "the")
        if (self.organism and part and r.tag_ in ("NN", "NNS")
                and r.dep_ in ("nsubj", "nsubjpass") and all(x.i == r.i or x.dep_ == "det" for x in c)
                and not any(x.dep_ in ("poss", "appos", "compound", "amod") or (x.dep_ == "prep" and x.lower_ == "of")
                            for x in r.children)
                and topic is not None and not topic.person and topic.count > 0 and lemma not in topic.classes):
            # "Adults are 21 to 25 millimetres long" in the Marrow glass frog's article: the frog's adults
            return self._of_topic(c, a, "rel " + lemma + " of " + topic.key, lemma, "of", topic, r.tag_ == "NNS", -1)
        if (lemma in CLIMATE_NOUNS and det in ("", "the") and r.dep_ in ("nsubj", "nsubjpass")
                and len(c) == 1 + bool(det) and not any(x.dep_ == "prep" for x in r.children) and topic is not None
                and not topic.person and topic.count > 0 and (topic.place or topic.classes & SETTLEMENTS)):
            # "Summers are cool" in Holmstad's article: the summers in Holmstad
            return self._of_topic(c, a, "in " + lemma + " " + topic.key, lemma, "in", topic, r.tag_ == "NNS", -1)
        key = (det + " " if det in DEMONSTRATIVES else "") + norm(x.lemma_ for x in words)
        ent = self.by_key.get(key)
        if (ent is not None and ent.description and det == "the" and len(c) == 2 and r.tag_ == "NN"
                and ent.last >= self.sent - 2):
            # "an expedition of eleven people ... The expedition lasted two years": the description it came with
            toks = [x.i for x in c]
            a.refs.update({x: Ref(ent, toks, False, "description") for x in toks})
            return ent
        if ent is None:
            name = source_text(c, skip_det=True)
            if words[0].is_sent_start and words[0].pos_ != "PROPN" and not words[0].text.isupper():
                name = name[:1].lower() + name[1:]  # "Symptoms usually begin ... They include": "the symptoms"
            of = next((x for x in r.children if x.dep_ == "prep" and x.lower_ == "of"), None)
            if of is not None and of.right_edge.i - of.i <= 4 and not any(
                    x.lower_ in PRONOUNS or x.tag_ == "PRP$" for x in of.subtree):
                name += " " + source_text(r.doc[of.i:of.right_edge.i + 1], skip_det=False)
            if det in DEMONSTRATIVES:
                name = det + " " + name
            elif r.tag_ in ("NN", "NNS") and (det == "the" or not any(x.tag_ == "POS" for x in c)):
                # (a possessive is definite as written: "Emil Brask's grandson", not "the Emil Brask's grandson"; but
                # "the company's director", "the Rhine's current course")
                name = "the " + name
            ent = Entity(name=name, key=key, classes={lemma},
                         plural=r.tag_ == "NNS", votes=2 if person_noun(lemma) else -1)
            if (det in ("a", "an") and of is not None and r.tag_ == "NN" and not person_noun(lemma)
                    and of.right_edge.i - of.i <= 8 and not any(x.lower_ in PRONOUNS or x.tag_ == "PRP$"
                                                                 for x in of.subtree)):
                ent.description = "the " + source_text(r.doc[r.i:of.right_edge.i + 1], skip_det=False)
            self._add(ent)
        return ent

    def _of_topic(self, c, a: Analysis, key: str, lemma: str, link: str, topic: Entity, plural: bool,
                  votes: int) -> Entity:
        """Noun chunk c as "<c> <link> <topic>", an entity of its own ("the first winner of the Orrery Prize",
        "summers in Holmstad"), with c's tokens replaced by it."""
        ent = self.by_key.get(key)
        if ent is None:
            text = source_text(c, skip_det=False)
            ent = Entity(name=text[:1].lower() + text[1:] + f" {link} " + topic.name, key=key, classes={lemma},
                         plural=plural, votes=votes)
            self._add(ent)
        toks = [x.i for x in c]
        a.refs.update({x: Ref(ent, toks, False, "description") for x in toks})
        return ent

    def _described(self, lemma: str, plural: bool, common: bool = False) -> Entity | None:
        """'the river' -> the most salient named entity whose class is 'river' (with `common`, a
        recent unnamed one will do: 'these streams' -> 'the smaller streams')."""
        best, score, told = None, 0.0, False
        for e in self.entities:
            # (the document's title names a thing even where the prose writes it in lower case: "the mineral" in
            # the article on orvanite)
            named = e.proper or (e is self.title and e.count > 0)
            # "the town" in the article on a city is that city, though a place the tagger labelled GPE has "town"
            # among its generic classes too
            family = next((f for f in CLASS_FAMILIES if lemma in f), {lemma}) if e is self.title else {lemma}
            if not (family & e.classes) or (e.plural != plural and not (named and not plural)) or not (named or (
                    common and e.last >= self.sent - 2 and not e.key.split()[0] in DEMONSTRATIVES)):
                continue
            # a name the text called a village beats one the tagger's label calls a village too ("the village"
            # after "above the village of Orlen", not Arnsmark)
            said = bool(family & e.said) or e is self.title  # (the title by its family: "the city" in Brantwick's
            # article is Brantwick, not its nickname "the Grey City")
            s = self._salience(e)
            if (said, s) > (told, score):
                best, score, told = e, s, said
        if best is None and not plural:  # a name whose head word is the noun: "the Velmont Observatory",
            for e in self.entities:      # "the University of Brantwick" for "the observatory", "the university"
                words = e.name.split()
                if words and words[0].lower() == "the":
                    words = words[1:]
                low = [w.lower() for w in words]
                if not e.proper or e.plural or e.person or len(words) < 2 or not (  # not "the rook" -> "Jonas Rook"
                        (low[-1] == lemma and "of" not in low)  # "the ford" is not "the Battle of Kessel Ford"
                        or (low[0] == lemma and "of" in low[1:-1])):
                    continue
                s = self._salience(e)
                if s > score:
                    best, score = e, s
        return best

    def _salience(self, e: Entity) -> float:
        """How readily a description points at e: its topic weight, how recently and how often it was mentioned."""
        return e.topic + (2.0 if e.last >= self.sent - 1 else 1.0 if e.last >= 0 else 0) + min(e.count, 4) * 0.2

    def _pair(self, local) -> list[Entity]:
        """The names "the former" and "the latter" point back at: the distinct names mentioned so far in this
        sentence, else in the last one, in order (the former is the second last, the latter the last). Fixed at a
        sentence's first such word, so that in "The former ..., while the latter ..." the names the sentence
        mentions in between are not candidates."""
        names = [(p, e) for p, e, _, proper in local if proper] or [(p, e) for p, e, proper in self.prev_mentions
                                                                     if proper]
        names.sort(key=lambda x: x[0])
        return list(dict.fromkeys(e for _, e in names))

    def _resolve_pronoun(self, p, local, sent, a: Analysis, chunks) -> Ref | None:
        plural, person, poss = PRONOUNS[p.lower_]
        poss = poss or p.tag_ == "PRP$"
        gender = _GENDER.get(p.lower_)

        def ok(e: Entity) -> bool:
            return e.plural == plural and (gender is None or e.gender is None or e.gender == gender)

        def vessel(e: Entity) -> bool:
            return gender == "f" and bool(e.classes & VESSELS)  # "She entered service in June 1998": the ferry

        def fit(e: Entity) -> float:
            """Named-entity tags are noisy ('the Rhine' as PERSON): person agreement is a preference."""
            if person is None or e.person == person or vessel(e):
                return 0.0
            return -2.5 if person else -1.5

        s_cat = cataphor(p)
        if s_cat is not None and s_cat.i in chunks:
            c = chunks[s_cat.i]
            if (c.root.tag_ in ("NNS", "NNPS")) == plural and c.root.pos_ in ("NOUN", "PROPN"):
                e = self._peek(c) or Entity(name=c.text, key="")
                return Ref(e, [p.i], poss, "cataphor")
        blocked = same_clause_subjects(p, a.mention)
        # a participle opening the pronoun's clause has the pronoun for its subject: "Founded in 1871 by the brothers
        # Emil and Otto Brask, it operates ferries" (not the brothers), "Based on the novel ..., it follows ..."
        opener: set[int] = set()
        if p.dep_ in ("nsubj", "nsubjpass"):
            for c in p.head.children:
                if (c.dep_ == "advcl" and c.i < p.i and c.tag_ in ("VBN", "VBG")
                        and not any(x.dep_ in ("nsubj", "nsubjpass", "mark") for x in c.children)):
                    opener |= {x.i for x in c.subtree}
        scores: dict[int, float] = {}
        ents: dict[int, Entity] = {}
        for e in self.entities:
            if not ok(e) or id(e) in blocked:
                continue
            s = e.topic
            if e.last == self.sent - 1:
                s += 2.0 + e.role
            elif e.last == self.sent - 2:
                s += 0.7 + e.role * 0.3
            elif e.topic == 0:
                continue
            s += min(e.count, 4) * 0.25
            scores[id(e)], ents[id(e)] = s, e
        here: set[int] = set()
        for pos, e, role, _ in local:
            if pos < p.i and ok(e) and id(e) not in blocked and pos not in opener:
                scores[id(e)] = max(scores.get(id(e), 0.0), 5.0 + role + e.topic + self._parallel(p, e, a))
                ents[id(e)] = e
                here.add(pos)
        own_subject = clause_subject(p, a.mention, self.topic()) if poss else None
        attr = copula_noun(p)
        later = later_mentions(p, chunks.values(), self.by_key)
        people = [e for e in self.prev_people if e.person]
        if plural and len(people) >= 2:  # "Varn married Tomas Rook. They had three children."
            g = self._group(people[:2])
            scores[id(g)] = max(scores.get(id(g), 0.0), 4.5)
            ents[id(g)] = g
        for k, e in ents.items():
            scores[k] += fit(e) - (e.topic if person is True and not e.person and not vessel(e) else 0.0)
            if (p.dep_ == "nsubjpass" and e.patient and e.last == self.sent - 1
                    and p.head.lemma_ not in STATIVE_PASSIVES):
                scores[k] += 2.0  # parallel roles: "a flood destroyed the wall. It was rebuilt" -> the wall (but "The
                # course crosses the Old Bridge ... It is known for being flat" describes the course)
            if poss and not e.proper and e.classes & MEASURE_NOUNS:
                scores[k] -= 3.0  # "its main competitor" is not the revenue's
            if own_subject is e and not (person is True and not e.person):
                scores[k] += 3.0  # "The Rhine is joined by its tributary": its = the Rhine (but "It was founded by the
                # watchmaker Otto Kessler and his sister": his is not the firm's)
            if attr:
                if attr in e.classes:
                    scores[k] += 3.0
                elif e.classes and not e.proper:
                    scores[k] -= 2.0
            if k in later:
                scores[k] -= 3.0  # "Its water ... than the Rhine": not the Rhine
        if not scores:
            return None
        # a tie goes to the one that agrees in person, when more than a tagger's guess says it is one ("Rome accepted as
        # her frontier the Rhine and upper Danube. Beyond these rivers she ...": not the upper Danube)
        k = max(scores, key=lambda x: (scores[x], fit(ents[x]) == 0 and (person is not True or ents[x].votes >= 2)))
        if scores[k] < 2.0 or (person is True and fit(ents[k]) < 0):
            return None  # "She designed it" with no person in sight: better unresolved than wrong
        local_tokens = set()  # earlier mentions in this sentence that were nearly as good a reading
        for toks, e, _ in a.mentions:
            if toks and min(toks) < p.i and min(toks) not in opener and fit(e) == 0 and \
                    scores.get(id(e), -99.0) >= scores[k] - 1.5:
                local_tokens |= set(toks)
        return Ref(ents[k], [p.i], poss, "pronoun", local_tokens)

    def _group(self, members: list[Entity]) -> Entity:
        key = "+" + "+".join(e.key for e in members)
        g = self.by_key.get(key)
        if g is None:
            g = Entity(name=" and ".join(e.name for e in members), key=key, plural=True, proper=True, votes=1)
            self._add(g)
        return g

    @staticmethod
    def _parallel(p, e: Entity, a: Analysis) -> float:
        """3.0 when pronoun p is the subject of a clause coordinated with an earlier clause whose subject (or that
        subject's apposition) is e: "Their son, Karl Moll, became a geologist; he later mapped ..." -> Karl Moll."""
        v = p.head
        if p.dep_ not in ("nsubj", "nsubjpass"):
            return 0.0
        # the earlier clause: the verb this one is conjoined to, or one spaCy hangs under it ("X became ...; he
        # mapped" is parsed with "became" as a ccomp of "mapped")
        others = ([v.head] if v.dep_ == "conj" else []) + [
            c for c in v.children if c.dep_ in ("ccomp", "parataxis", "conj") and c.i < p.i]
        for t in (t for o in others for t in o.children):
            if any(c.tag_ == "PRP$" and c.lower_ in PRONOUNS and PRONOUNS[c.lower_][0] == PRONOUNS[p.lower_][0]
                   and _GENDER.get(c.lower_) == _GENDER.get(p.lower_) for c in t.children):
                continue  # "Its area is 412 km², and it had ...": "it" is whom "Its" means, not the area
            if t.dep_ in ("nsubj", "nsubjpass") and t.i < p.i and (
                    a.mention.get(t.i) is e or any(c.dep_ == "appos" and a.mention.get(c.i) is e for c in t.children)):
                return 3.0
        return 0.0

    def life_of(self, name: str) -> None:
        """The atomizer took a life-dates parenthesis ("Amos Pelling (14 June 1751 – 2 February 1819) was ...") out of
        the text before parsing: the name it followed is a person (the evidence the parenthesis gave is gone)."""
        key = norm(name.split())
        ent = self.by_key.get(key)
        if ent is None:
            ent = Entity(name=name, key=key, proper=True, clean=True)
            self._add(ent)
        # outweighs a title the tagger did not read as a name plus one tagger's guess in the prose ("Ana Sollberg (born
        # 3 June 1961) is a Veldtish former long-distance runner.": her "She" was left unresolved)
        ent.votes += 3

    def _by_surname(self, key: str) -> Entity | None:
        """'Varn' after 'Ilse Varn': a one-word name that ends a longer known name."""
        if " " in key:
            return None
        hits = [e for e in self.entities if e.proper and e.person and not e.key.startswith("+")
                and 1 < len(e.key.split()) <= 3 and e.key.split()[-1] == key]  # only people go by surname
        return max(hits, key=lambda e: (e.topic, e.last)) if hits else None

    def _peek(self, c) -> Entity | None:
        """The known entity a proper-name chunk mentions, without creating one."""
        propn = [x.text for x in c if x.pos_ == "PROPN"]
        return self.by_key.get(norm(propn)) if propn else None

    def _learn_classes(self, sent, a: Analysis) -> None:
        for t in sent:
            if t.dep_ == "attr" and t.pos_ == "NOUN" and t.head.lemma_ == "be" and t.lower_ not in NOT_ENTITIES:
                s = next((c for c in t.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
                if s is not None and a.mention.get(s.i) is not None:
                    a.classes.append((a.mention[s.i], t.lemma_.lower()))
            if t.dep_ == "appos" and t.pos_ == "NOUN" and a.mention.get(t.head.i) is not None and near(t.head, t):
                a.classes.append((a.mention[t.head.i], t.lemma_.lower()))
            if (t.dep_ == "pobj" and t.pos_ == "PROPN" and t.head.lower_ == "of" and t.head.head.pos_ == "NOUN"
                    and t.head.head.lemma_.lower() in GENERIC | SETTLEMENTS
                    and any(d.lower_ == "the" for d in t.head.head.children if d.dep_ == "det")
                    and a.mention.get(t.i) is not None and a.mention[t.i].proper):
                a.classes.append((a.mention[t.i], t.head.head.lemma_.lower()))  # "the village of Orlen"

    def observe(self, a: Analysis) -> None:
        """Record the sentence's mentions; the next sentence sees them as recent."""
        seen: dict[int, float] = {}
        order = []
        for toks, e, role in a.mentions:
            seen[id(e)] = max(seen.get(id(e), 0.0), role)
            e.count += 1
            order.append((min(toks), e, e.proper and len(toks) > 1 or e.proper))
        for e in self.entities:
            if id(e) in seen:
                e.last, e.role, e.patient = self.sent, seen[id(e)], id(e) in a.patients
        for e, cls in a.classes:
            e.classes.add(cls)
            e.said.add(cls)
            if person_noun(cls):
                e.votes += 3  # "X was a glassmaker" outweighs a tagger's guesses
            elif cls in WORKS or cls in GENERIC or cls in VESSELS:
                e.votes = min(e.votes, -1)  # "X is a 1958 drama film", though the tagger read "Grey" as a name
        self.prev_mentions = order
        self.prev_people = list(dict.fromkeys(e for _, e, proper in sorted(order, key=lambda x: x[0])
                                              if proper and e.person and not e.plural))
        self.sent += 1

    def elided_subject(self, verb) -> list[str]:
        """Headline-style sentences without a subject ('Founded in 1843 by ...'): the topic is meant."""
        e = self.topic()
        if e is None or verb is None or verb.tag_ not in ("VBN", "VBD", "VBZ") or any(
                c.dep_ in ("nsubj", "nsubjpass", "csubj", "expl") for c in verb.children):
            return []
        if any(t.i < verb.i and (t.pos_ not in ("ADV", "PUNCT", "CCONJ", "PART") or t.ent_type_ or t.text.istitle())
               for t in verb.sent):
            return []  # only a sentence that opens with its verb lacks a subject ("Founded in 1843 ...")
        if verb.tag_ == "VBN" and not any(c.dep_ in ("aux", "auxpass") for c in verb.children):
            be = ("are" if e.plural else "is") if verb.lemma_ in ("know", "locate", "situate", "call") else (
                "were" if e.plural else "was")
            return [e.name, be]
        return [e.name]
