"""End to end on the real embedded models (SmolLM2-135M-Instruct, MiniLM, spaCy): ingest the
sample corpus once, then check what the product promises on it."""

import json
import re

import pytest

from conftest import ROOT
from serving.pipeline import KnowledgeBase

pytestmark = pytest.mark.slow
QUESTIONS = json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]


def norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def correct(answer, q) -> bool:
    return not answer.refused and any(norm(g) in norm(answer.answer) for g in q["answers"])


@pytest.fixture(scope="session")
def real_kb(tmp_path_factory):
    kb = KnowledgeBase(tmp_path_factory.mktemp("real") / "kb", progress=False)
    rep = kb.ingest([str(ROOT / "data" / "sample")])
    assert not rep.failed and len(rep.added) == 5
    return kb


@pytest.fixture(scope="session")
def paraphrases():
    return [q for q in QUESTIONS if q["kind"] == "paraphrase"]


def test_atoms_mode_answers_paraphrases_and_base_does_not(real_kb, paraphrases):
    qs = [q["question"] for q in paraphrases]
    atoms = real_kb.ask_many(qs, mode="atoms")
    base = real_kb.ask_many(qs, mode="base")
    acc_atoms = sum(correct(a, q) for a, q in zip(atoms, paraphrases)) / len(qs)
    acc_base = sum(correct(a, q) for a, q in zip(base, paraphrases)) / len(qs)
    print(f"paraphrase accuracy: atoms {acc_atoms:.2f}, base {acc_base:.2f}")
    assert acc_atoms >= 0.80
    assert acc_base < 0.20


def test_fired_atoms_come_from_the_right_document(real_kb, paraphrases):
    answers = real_kb.ask_many([q["question"] for q in paraphrases], mode="atoms")
    right = sum(bool(a.atoms) and a.atoms[0].source.path.split("#")[0].endswith(q["docs"][0])
                for a, q in zip(answers, paraphrases))
    assert right / len(paraphrases) >= 0.80


def test_out_of_scope_questions_are_refused(real_kb):
    oos = [q["question"] for q in QUESTIONS if q["kind"] == "out_of_scope"]
    answers = real_kb.ask_many(oos, mode="atoms")
    assert all(a.refused for a in answers), [(q, a.answer) for q, a in zip(oos, answers) if not a.refused]


def test_reopened_kb_answers_the_same(real_kb):
    q = "Which engineer was the designer of the Korrin Bridge?"
    first = real_kb.ask(q)
    again = KnowledgeBase(real_kb.path, create=False, progress=False).ask(q)
    assert again.answer == first.answer and "Maud Ellery" in again.answer
