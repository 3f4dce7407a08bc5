"""One atom, one fact: each split case on a hand-written passage, with its expected atoms and spans."""

import re

import pytest

from doc2atom.atomizer import atomize
from doc2atom.readers import document_from_text
from doc2atom.split import finish, split_sentence

CASES = [
    # (title, passage, [(atom text, exact source span)])
    ("coordinated verbs share their subject",
     "Ossel", "The Ossel rises in the Tarn Hills, crosses the city of Brantwick and flows into the Grey Sea.",
     [("The Ossel rises in the Tarn Hills.", "The Ossel rises in the Tarn Hills"),
      ("The Ossel crosses the city of Brantwick.", "crosses the city of Brantwick"),
      ("The Ossel flows into the Grey Sea.", "flows into the Grey Sea.")]),
    ("coordinated clauses",
     "Ossel", "The rate of flow increased and the water level fell.",
     [("The rate of flow increased.", "The rate of flow increased"),
      ("The water level fell.", "the water level fell.")]),
    ("verbs coordinated inside a relative clause on 'X is a N'",
     "Ossel", "The Ossel is a river that rises in the Tarn Hills, crosses Brantwick and flows into the Grey Sea.",
     [("The Ossel is a river that rises in the Tarn Hills.", "The Ossel is a river that rises in the Tarn Hills"),
      ("The Ossel crosses Brantwick.", "crosses Brantwick"),
      ("The Ossel flows into the Grey Sea.", "flows into the Grey Sea.")]),
    ("a relative clause the parser hangs on 'between X and Y' describes the noun before 'between'",
     "Velmora", "The ferry between Velmora and Holmstad, which carries about 600,000 passengers a year, remains busy.",
     [("The ferry between Velmora and Holmstad remains busy.",
       "The ferry between Velmora and Holmstad, which carries about 600,000 passengers a year, remains busy."),
      ("The ferry between Velmora and Holmstad carries about 600,000 passengers a year.",
       "The ferry between Velmora and Holmstad, which carries about 600,000 passengers a year")]),
    ("a passive auxiliary is repeated",
     "Velmora", "Velmora was founded in 1843 and renamed in 1901.",
     [("Velmora was founded in 1843.", "Velmora was founded in 1843"),
      ("Velmora was renamed in 1901.", "renamed in 1901.")]),
    ("a clause before the subject scopes over both verbs, with its comma",
     "Orvanite", "When heated above 600 °C, orvanite turns black and loses its water.",
     [("When heated above 600 °C, orvanite turns black.", "When heated above 600 °C, orvanite turns black"),
      ("When heated above 600 °C, orvanite loses its water.", "loses its water.")]),
    ("... but not one with a pronoun of its own",
     "Dask", "Though it is small, Dask has a port and hosts a fair.",
     [("Though it is small, Dask has a port.", "Though it is small, Dask has a port"),
      ("Dask hosts a fair.", "hosts a fair.")]),
    ("a participle the tagger calls a past tense takes the passive's auxiliary",
     "Harbour Hall", "It was designed by the architect Paul Arden and completed in 1862.",
     [("Harbour Hall was designed by the architect Paul Arden.", "It was designed by the architect Paul Arden"),
      ("Harbour Hall was completed in 1862.", "completed in 1862.")]),
    ("... but an intransitive verb after a passive stays active",
     "Confederation of Orl", "The Confederation of Orl was founded in 1806 and lasted until 1814.",
     [("The Confederation of Orl was founded in 1806.", "The Confederation of Orl was founded in 1806"),
      ("The Confederation of Orl lasted until 1814.", "lasted until 1814.")]),
    ("an apposition with a possessive after the place a clause happens at describes the event, not the place",
     "Drowned Orchard", "In 1987 the painting was lent to an exhibition in Tallow, its only journey abroad.",
     [("In 1987 the painting was lent to an exhibition in Tallow, its only journey abroad.",
       "In 1987 the painting was lent to an exhibition in Tallow, its only journey abroad.")]),
    ("descriptive apposition",
     "Brennholt", "The Venn Bridge, a cast-iron arch, carries the tram line.",
     [("The Venn Bridge carries the tram line.", "The Venn Bridge, a cast-iron arch, carries the tram line."),
      ("The Venn Bridge is a cast-iron arch.", "The Venn Bridge, a cast-iron arch")]),
    ("non-restrictive relative clause",
     "Velmora", "The Tarn Light, which stands on the northern cape, was built in 1901.",
     [("The Tarn Light was built in 1901.", "The Tarn Light, which stands on the northern cape, was built in 1901."),
      ("The Tarn Light stands on the northern cape.", "The Tarn Light, which stands on the northern cape")]),
    ("'whose' becomes a possessive",
     "Quessa", "Dask, whose harbour freezes in winter, trades mostly in timber.",
     [("Dask trades mostly in timber.", "Dask, whose harbour freezes in winter, trades mostly in timber."),
      ("Dask's harbour freezes in winter.", "Dask, whose harbour freezes in winter")]),
    ("a 'while' contrast is two facts",
     "Otters", "The Otters won the Northern Cup in 1999, while the Hawks won it in 2004.",
     [("The Otters won the Northern Cup in 1999.", "The Otters won the Northern Cup in 1999"),
      ("The Hawks won the Northern Cup in 2004.", "the Hawks won it in 2004.")]),
]

KEPT_WHOLE = [
    # a naming apposition is one fact (the sample corpus relies on it)
    ("Velmora", "The lighthouse of Velmora, the Tarn Light, was built in 1901."),
    # a restrictive relative clause belongs to its noun
    ("Zarnic acid", "Zarnic acid is a pale yellow liquid that smells of burnt almonds."),
    # verbs with nothing of their own are not split ("join" alone says little)
    ("Ossel", "The Anterior Ossel and the Posterior Ossel join and form the Ossel."),
    # regression: a split must not cut "re-occupied" into "re" and "occupied"
    ("Velmora", "The allies left the town in 1930 and the army re-occupied it in 1936."),
    # a list of names is one fact
    ("Delta", "The delta includes the towns of Gaisau, Hochst and Fussach."),
]


@pytest.mark.parametrize("name,title,text,expected", CASES, ids=[c[0] for c in CASES])
def test_split_cases(nlp, name, title, text, expected):
    d = document_from_text("t/" + title, text, title=title)
    atoms = atomize(d, nlp)
    assert [(a.text, d.text[a.start:a.end]) for a in atoms] == expected


@pytest.mark.parametrize("title,text", KEPT_WHOLE)
def test_kept_whole(nlp, title, text):
    d = document_from_text("t/" + title, text, title=title)
    atoms = atomize(d, nlp)
    assert [(a.text, d.text[a.start:a.end]) for a in atoms] == [(text, text)]


def _words(s):
    return {w.lower() for w in re.findall(r"\w+", s)} - {"and", "which", "whose", "while", "is", "was", "a", "its", "it"}


@pytest.mark.parametrize("name,title,text,expected", CASES, ids=[c[0] for c in CASES])
def test_splitting_loses_no_word(nlp, name, title, text, expected):
    """The union of a sentence's atoms still says everything the sentence said."""
    d = document_from_text("t/" + title, text, title=title)
    said = set().union(*(_words(a.text) for a in atomize(d, nlp)))
    assert _words(text) - said <= {"it"}


def test_pieces_of_a_parse(nlp):
    sent = next(nlp("The Ossel rises in the Tarn Hills and flows into the Grey Sea.").sents)
    pieces = split_sentence(sent)
    assert [p.kind for p in pieces] == ["sentence", "conjunct"]
    assert [sent.doc[i].text for i in pieces[1].lead] == ["The", "Ossel"]


def test_finish_balances_and_stops():
    assert finish("the Moselle contributes 300 m3/s (11,000 cu ft/s") == "The Moselle contributes 300 m3/s 11,000 cu ft/s."
    assert finish("it lies in Quessa (an island) ,") == "It lies in Quessa (an island)."
    assert finish('he wrote "The Rhine is a river."') == 'He wrote "The Rhine is a river."'
