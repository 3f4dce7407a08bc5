"""Near misses (router/nearmiss.py): the edits calibration trains the router to refuse, and the signals that see them."""

import numpy as np
import pytest
from router_helpers import embedder, sample_kb, sample_kb_master  # noqa: F401 (fixtures)

from router import nearmiss

# a tiny fictional knowledge base: atom texts and their synthesised (cloze) questions
ATOMS = [
    ("The Korrin Bridge in Brantwick was designed by Maud Ellery in 1957.",
     ["The Korrin Bridge in Brantwick was designed by who in 1957?",
      "The Korrin Bridge in Brantwick was designed by Maud Ellery in when?"]),
    ("Velmora is the largest town on the Tarn coast and was founded by Ilse Varn in 1843.",
     ["Velmora is the largest town on the Tarn coast and was founded by who in 1843?"]),
]


def test_edits_swap_names_and_numbers_from_other_atoms_and_flip_negation_and_antonyms():
    rng = np.random.default_rng(0)
    invs = [{"ents": [("Korrin Bridge", "FAC"), ("Brantwick", "GPE"), ("1957", "DATE")], "nouns": [], "adjs": []},
            {"ents": [("Velmora", "GPE"), ("Tarn", "LOC"), ("1843", "DATE")], "nouns": ["town", "coast"],
             "adjs": ["largest"]}]
    pools = nearmiss.build_pools(invs)
    pools["self"] = 1
    out = dict(nearmiss.edits(ATOMS[1][1][0], ATOMS[1][0], invs[1], pools, rng))
    assert out["entity_swap"].startswith("Brantwick is the largest town")  # a GPE of the other atom
    assert "1957" in out["number_swap"] and "1843" not in out["number_swap"]
    assert "smallest town" in out["antonym"]
    assert out["negation"].startswith("Velmora is not the largest")
    # "What do you know about X?" keeps nothing that pins the atom: no near miss is made of it
    assert nearmiss.edits("What do you know about Velmora?", ATOMS[1][0], invs[1], pools, rng) == []


def test_negation_and_antonym_signals():
    assert nearmiss.negated("Which town was not founded in 1843?") and nearmiss.negated("It isn't open.")
    assert not nearmiss.negated("Which town was founded in 1843?")
    atom = nearmiss.words(ATOMS[1][0])
    assert nearmiss.antonym_clash(nearmiss.words("What is the smallest town on the Tarn coast?"), atom)
    assert not nearmiss.antonym_clash(nearmiss.words("What is the largest town on the Tarn coast?"), atom)


def test_generate_uses_only_other_atoms_words():
    rng = np.random.default_rng(1)
    out = nearmiss.generate(ATOMS, rng, per_atom=5, nlp=None)  # capitalisation/number fallback, no spaCy
    assert out and all(0 <= a < len(ATOMS) for a, _, _ in out)
    for a, kind, q in out:
        assert q not in ATOMS[a][1]
        if kind in ("entity_swap", "number_swap"):
            other = ATOMS[1 - a][0]
            assert any(w in other for w in q.rstrip("?").split() if w[:1].isupper() or w[:1].isdigit())


@pytest.mark.slow
def test_router_sees_an_entity_swap_and_a_negation(sample_kb, embedder):
    from doc2atom.store import KBStore
    from router.router import Router

    r = Router.open(sample_kb, KBStore(sample_kb), embedder)
    real, swapped = "Who designed the Korrin Bridge?", "Who designed the Mirefield Otters?"
    c_real, c_swap = r.candidates(embedder([real, swapped]), [real, swapped])
    assert c_real.name_miss_kb[np.argmax(r.score(c_real))] == 0
    korrin = [j for j, i in enumerate(c_swap.ids) if "Maud Ellery" in r.texts([i])[int(i)]]
    assert korrin and c_swap.name_miss_kb[korrin[0]] == 1.0  # the bridge atom lacks a name another atom has
    routes = r.route([real, swapped, "Who did not design the Korrin Bridge?"])
    assert not routes[0].refused
    # not refused here (the Otters atom has the name and lacks only "designed"), but scored well below
    assert routes[1].best < 0.75 * routes[0].best
    assert routes[2].best < routes[0].best  # a negation the atom lacks lowers the score


def test_old_weights_without_near_miss_features_still_load():
    from router.learned import FEATURES, LATE_FEATURES, LearnedRouter

    old = {k: 1.0 for k in (*FEATURES, "bias") if k not in LATE_FEATURES}
    m = LearnedRouter.from_dict(old)
    assert all(m.as_dict()[k] == 0.0 for k in LATE_FEATURES)


def test_auc_matches_pairwise_counting_with_ties():
    import numpy as np

    from router.calibrate import auc

    rng = np.random.default_rng(0)
    for _ in range(100):
        pos = rng.integers(0, 5, rng.integers(1, 9)).astype(float)  # small integers: many ties
        neg = rng.integers(0, 5, rng.integers(1, 9)).astype(float)
        pairs = [[1.0 if a > b else 0.5 if a == b else 0.0 for b in neg] for a in pos]
        assert auc(pos, neg) == round(float(np.mean(pairs)), 4)
    assert auc(np.array([]), np.array([1.0])) is None
