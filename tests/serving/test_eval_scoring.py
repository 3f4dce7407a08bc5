"""The eval scorer against hand-computed cases (official SQuAD normalisation, F1, EM, acc, refusals)."""

import pytest

from serving.evaluate.scoring import Tally, contains, exact, f1, normalize


@pytest.mark.parametrize("raw, norm", [
    ("The Danube", "danube"),
    ("  a  North   Sea. ", "north sea"),
    ("An apple, the pear & a plum!", "apple pear plum"),
    ("Theory", "theory"),  # "the" inside a word is kept
    ("Cologne, Germany", "cologne germany"),
    ("1,230 km", "1230 km"),  # punctuation inside numbers goes too, as in the official script
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


@pytest.mark.parametrize("pred, golds, want", [
    ("the Danube", ["Danube"], 1.0),
    ("Danube river", ["Danube"], 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # p=1/2, r=1 -> 2/3
    ("The Danube is larger than the Rhine.", ["Danube"], 2 * (1 / 5) * 1 / (1 / 5 + 1)),  # 5 tokens after articles go
    ("North Sea", ["the North Sea in the Netherlands", "North Sea"], 1.0),  # best over golds
    ("in the Netherlands", ["the North Sea in the Netherlands"], 2 * 1 * (2 / 4) / (1 + 2 / 4)),
    ("Rhine", ["Danube"], 0.0),
    ("", ["Danube"], 0.0),  # empty prediction
    ("Danube", [], 0.0),  # no gold: nothing to match
    ("a the an", ["Danube"], 0.0),  # only articles: empty after normalisation
])
def test_f1(pred, golds, want):
    assert f1(pred, golds) == pytest.approx(want)


@pytest.mark.parametrize("pred, golds, em, acc", [
    ("The North Sea.", ["North Sea"], 1.0, 1.0),
    ("It flows into the North Sea.", ["North Sea"], 0.0, 1.0),
    ("It is 100 km long", ["10"], 0.0, 0.0),  # whole tokens only
    ("Cologne, Germany", ["Cologne", "Cologne, Germany"], 1.0, 1.0),
    ("", ["Cologne"], 0.0, 0.0),
    ("anything", ["the"], 0.0, 0.0),  # a gold that normalises to nothing never counts
])
def test_exact_and_contains(pred, golds, em, acc):
    assert exact(pred, golds) == em
    assert contains(pred, golds) == acc


def test_tally_refusals_and_averages():
    t = Tally()
    t.add("The Danube.", False, ["Danube"], False)  # f1 1, em 1, acc 1
    t.add("It is the Danube river", True, ["Danube"], False)  # refused: scored as empty, a false refusal
    t.add("no idea", False, ["Cologne"], False)  # wrong
    t.add("whatever", True, [], True)  # unanswerable, refused: right
    t.add("Bonn", False, [], True)  # unanswerable, answered: wrong
    s = t.summary()
    assert s["answerable"] == 3 and s["unanswerable"] == 2
    assert s["f1"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["em"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["acc"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["false_refusal"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["refusal_accuracy"] == 0.5
    assert "by_type" not in s


def test_tally_empty_sides_are_none_and_types_are_split():
    t = Tally()
    assert t.summary()["f1"] is None and t.summary()["refusal_accuracy"] is None
    t.add("Paris", False, ["Paris"], False, "bridge")
    t.add("yes", False, ["no"], False, "comparison")
    s = t.summary()
    assert s["refusal_accuracy"] is None and s["unanswerable"] == 0
    assert s["by_type"]["bridge"]["em"] == 1.0 and s["by_type"]["comparison"]["em"] == 0.0
    assert s["f1"] == 0.5
