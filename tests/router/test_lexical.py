"""The lexical signal: names, numbers and rare words are found; the index round-trips and addresses atoms by rowid."""

import numpy as np

from router.lexical import LexicalIndex, special_tokens, tokenize

TEXTS = {
    11: "Velmora was founded in 1843 by the glassmaker Ilse Varn.",
    12: "About 4,200 people live in Velmora.",
    13: "The thessaloop was invented by the musician Oren Pask in Velmora.",
    14: "The Korrin Bridge is 412 metres long.",
    15: "The Korrin Bridge opened to traffic in 1957.",
    20: "A thessaloop is a wind instrument with 7 glass reeds.",
}


def _index():
    return LexicalIndex.build(np.array(list(TEXTS)), list(TEXTS.values()))


def test_names_numbers_and_rare_words_are_found():
    lex = _index()
    for query, want in [("What opened in 1957?", 15), ("How many people, 4200?", 12), ("Who is Oren Pask?", 13),
                        ("Which founder was a glassmaker?", 11), ("How many reeds, 7?", 20),
                        ("What was invented?", 13)]:
        _, ids = lex.search(tokenize([query]), 3)
        assert ids[0, 0] == want, query


def test_tokens_drop_question_words_and_keep_digits():
    assert tokenize(["How many people live in Velmora, 4,200 or 7?"]) == [["peopl", "live", "velmora", "4200", "7"]]
    assert special_tokens("Who founded the town where the Korrin Bridge opened in 1957?") == ["1957", "bridg", "korrin"]
    assert special_tokens("Where is it?") == []


def test_term_scores_idf_and_unknown_words():
    lex = _index()
    ts = lex.term_scores(["velmora", "1957", "zzz"], np.array([11, 15, 99]))
    assert ts.shape == (3, 3)
    assert ts[0, 0] > 0 and ts[0, 1] == 0 and ts[1, 1] > 0 and not ts[2].any() and not ts[:, 2].any()
    idf = lex.idf(["velmora", "1957", "zzz"])
    assert idf[2] > idf[1] > idf[0]  # unknown > rare > common
    assert lex.known(["velmora", "zzz"]).tolist() == [True, False]


def test_save_load_round_trip(tmp_path):
    lex = _index()
    lex.save(tmp_path)
    again = LexicalIndex.load(tmp_path)
    assert np.array_equal(again.rowids, lex.rowids)
    q = tokenize(["Korrin Bridge length in metres"])
    assert np.array_equal(again.search(q, 2)[1], lex.search(q, 2)[1])
    assert LexicalIndex.load(tmp_path / "nowhere") is None


def test_empty_corpus():
    lex = LexicalIndex.build(np.zeros(0, np.int64), [])
    assert (lex.search(tokenize(["anything"]), 3)[1] == -1).all()
