"""SQuAD and HotpotQA readers on tiny files written here; stable document keys; --limit sampling."""

import json

import pytest

from doc2atom import errors
from serving.evaluate.datasets import read_dataset, subsample
from serving.evaluate.short import short_answer

SQUAD = {"version": "v2.0", "data": [
    {"title": "Zell", "paragraphs": [
        {"context": "Zell is a town on the Orla river. It has 3,000 people.",
         "qas": [{"id": "q1", "question": "Which river is Zell on?", "is_impossible": False,
                  "answers": [{"text": "Orla river", "answer_start": 22}, {"text": "the Orla river", "answer_start": 18},
                              {"text": "Orla river", "answer_start": 22}]},
                 {"id": "q2", "question": "Who founded Zell?", "is_impossible": True, "answers": [],
                  "plausible_answers": [{"text": "Zell", "answer_start": 0}]}]},
        {"context": "The Orla flows into Lake Menn.",
         "qas": [{"id": "q3", "question": "Where does the Orla flow?", "answers": [{"text": "Lake Menn", "answer_start": 20}]}]},
    ]}]}

HOTPOT = [
    {"_id": "h1", "question": "Which river flows through the town where Ada Brill was born?", "answer": "Orla",
     "type": "bridge", "level": "easy",
     "supporting_facts": [["Ada Brill", 0], ["Zell", 1]],
     "context": [["Ada Brill", ["Ada Brill was born in Zell.", " She painted rivers."]],
                 ["Zell", ["Zell is a town.", " The Orla flows through Zell."]],
                 ["Menn", ["Lake Menn is deep."]]]},
    {"_id": "h2", "question": "Is Lake Menn deeper than Lake Orr?", "answer": "yes", "type": "comparison",
     "supporting_facts": [["Menn", 0], ["Orr", 0]],
     "context": [["Menn", ["Lake Menn is deep."]], ["Orr", ["Lake Orr is shallow."]]]},
]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_squad_reader(tmp_path):
    s = read_dataset(_write(tmp_path / "s.json", SQUAD), "squad")
    assert s.format == "squad" and s.name == "s.json"
    assert len(s.documents) == 2 and len(s.questions) == 3
    q1, q2, q3 = s.questions
    assert q1.answers == ["Orla river", "the Orla river"]  # duplicates dropped, order kept
    assert not q1.impossible and q2.impossible and q2.answers == []
    assert not q3.impossible  # SQuAD 1.1 style: no is_impossible field
    assert q1.docs == q2.docs == [s.documents[0].id] and q3.docs == [s.documents[1].id]
    assert s.documents[0].title == "Zell" and s.documents[0].text.startswith("Zell is a town")
    assert s.docs_for([q3]) == [s.documents[1]]


def test_document_keys_do_not_depend_on_the_file(tmp_path):
    a = read_dataset(_write(tmp_path / "a.json", SQUAD), "squad")
    (tmp_path / "elsewhere").mkdir()
    b = read_dataset(_write(tmp_path / "elsewhere" / "b.json", SQUAD), "squad")
    assert [d.id for d in a.documents] == [d.id for d in b.documents]
    assert [d.sha256 for d in a.documents] == [d.sha256 for d in b.documents]
    changed = json.loads(json.dumps(SQUAD))
    changed["data"][0]["paragraphs"][0]["context"] += " It rains."
    c = read_dataset(_write(tmp_path / "c.json", changed), "squad")
    assert c.documents[0].id != a.documents[0].id and c.documents[1].id == a.documents[1].id


def test_hotpot_reader(tmp_path):
    s = read_dataset(_write(tmp_path / "h.json", HOTPOT), "hotpot")
    titles = [d.title for d in s.documents]
    assert titles == ["Ada Brill", "Zell", "Menn", "Orr"]  # "Menn" appears twice, kept once
    by_title = {d.title: d for d in s.documents}
    assert by_title["Zell"].text == "Zell is a town. The Orla flows through Zell."
    h1, h2 = s.questions
    assert h1.type == "bridge" and h2.type == "comparison"
    assert h1.answers == ["Orla"] and not h1.impossible
    assert h1.docs == [by_title["Ada Brill"].id, by_title["Zell"].id]
    assert h2.docs == [by_title["Menn"].id, by_title["Orr"].id]
    # a HotpotQA question needs its distractor paragraphs in the KB too
    assert [d.title for d in s.docs_for([h1])] == ["Ada Brill", "Zell", "Menn"]


@pytest.mark.parametrize("fmt, obj, msg", [
    ("squad", [1, 2], '"data" list'),
    ("squad", {"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}, '"context"'),
    ("squad", {"data": [{"title": "x", "paragraphs": [{"context": "Some text.", "qas": [
        {"id": "q", "question": "What?", "answers": []}]}]}]}, "no answers"),
    ("hotpot", {"data": []}, "list of questions"),
    ("hotpot", [{"question": "q?", "answer": "a", "context": [["t", "not a list"]]}], "[title, [sentences]]"),
])
def test_malformed_files_say_what_is_wrong(tmp_path, fmt, obj, msg):
    with pytest.raises(errors.InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        read_dataset(_write(tmp_path / "bad.json", obj), fmt)


def test_bad_format_and_missing_file(tmp_path):
    with pytest.raises(errors.InputError, match="--format"):
        read_dataset(tmp_path / "x.json", "csv")
    with pytest.raises(errors.Doc2AtomError):
        read_dataset(tmp_path / "missing.json", "squad")
    (tmp_path / "notjson.json").write_text("{oops")
    with pytest.raises(errors.InputError, match="not valid JSON"):
        read_dataset(tmp_path / "notjson.json", "squad")


def test_subsample_spreads_evenly():
    qs = list(range(10))
    assert subsample(qs, None) == qs and subsample(qs, 50) == qs
    assert subsample(qs, 5) == [0, 2, 4, 6, 8]
    assert subsample(qs, 1) == [0]


@pytest.mark.parametrize("question, reply, want", [
    ("What river is larger than the Rhine?", "The Danube is larger than the Rhine.", "Danube"),
    ("When was the Tarn Light built?", "The Tarn Light was built in 1887 by the harbour board.", "1887"),
    ("Who founded Velmora?", "Ilse Varn", "Ilse Varn"),  # already short: kept
    ("Where does the Rhine empty?", "", ""),
])
def test_short_answer_extraction(nlp, question, reply, want):
    assert short_answer(question, reply, nlp) == want


def test_questions_format_reads_the_sample_corpus():
    from pathlib import Path

    from serving.evaluate.datasets import read_dataset

    path = Path(__file__).resolve().parents[2] / "data" / "sample_questions.json"
    data = read_dataset(path, "questions")
    assert data.format == "questions" and len(data.documents) >= 5
    kinds = {q.type for q in data.questions}
    assert {"direct", "paraphrase", "multihop", "out_of_scope"} <= kinds
    oos = [q for q in data.questions if q.type == "out_of_scope"]
    assert oos and all(q.impossible and not q.answers and not q.docs for q in oos)
    hop = [q for q in data.questions if q.type == "multihop" and len(q.docs) >= 2]
    ids = {d.id for d in data.documents}
    assert hop and all(set(q.docs) <= ids for q in data.questions)
    assert data.docs_for(data.questions[:1]) == data.documents  # the whole corpus is ingested


def test_the_dev_set_reads_every_document_it_names():
    from pathlib import Path

    from serving.evaluate.datasets import read_dataset

    data = read_dataset(Path(__file__).resolve().parents[2] / "data" / "dev_questions.json", "questions")
    assert len(data.documents) == 20
    ids = {d.id for d in data.documents}
    assert all(set(q.docs) <= ids and (q.impossible or q.docs) for q in data.questions)
    assert {"paraphrase", "multihop", "out_of_scope"} == {q.type for q in data.questions}


def test_questions_format_rejects_unknown_documents(tmp_path):
    import json

    import pytest

    from doc2atom import errors
    from serving.evaluate.datasets import read_dataset

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.md").write_text("# A\n\nThe Arlen stone was found in 1901.\n")
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"corpus": "c", "questions": [{"question": "When?", "answers": ["1901"],
                                                             "docs": ["missing.md"]}]}))
    with pytest.raises(errors.InputError, match="missing.md"):
        read_dataset(f, "questions")
    f.write_text(json.dumps({"corpus": "nowhere", "questions": []}))
    with pytest.raises(errors.InputError, match="does not exist"):
        read_dataset(f, "questions")
