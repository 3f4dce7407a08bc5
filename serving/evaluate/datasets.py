"""Read QA evaluation sets into documents to ingest and questions to ask.

Formats: SQuAD 1.1 / 2.0 JSON (`is_impossible` marks unanswerable questions) and HotpotQA
JSON (a list of questions, each with `context` as [title, sentences] pairs and
`supporting_facts` as [title, sentence index] pairs).

One document per paragraph (SQuAD) or per titled paragraph (HotpotQA). A document's key is
built from its title and a hash of its text, never from the dataset's file path, so running
eval again (from anywhere, or on another file holding the same paragraph) finds the
documents already compiled and the knowledge base skips them. This module must never load
a model or touch a knowledge base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from doc2atom import errors
from doc2atom.readers import document_from_text
from doc2atom.schemas import Document

FORMATS = ("squad", "hotpot", "questions")


@dataclass
class EvalQuestion:
    id: str  # the dataset's question id
    question: str
    answers: list[str]  # gold answers; empty when impossible
    impossible: bool  # SQuAD 2.0 unanswerable: the right output is a refusal
    docs: list[str]  # document ids of the question's own paragraph (SQuAD) or supporting paragraphs (HotpotQA)
    type: str | None = None  # HotpotQA question type (bridge, comparison)


@dataclass
class EvalSet:
    name: str
    format: str
    documents: list[Document]  # unique, in dataset order
    questions: list[EvalQuestion] = field(default_factory=list)

    def docs_for(self, questions: list[EvalQuestion]) -> list[Document]:
        """The documents the given questions need: their own paragraphs for SQuAD, every context
        paragraph (supporting and distractor) for HotpotQA, in dataset order."""
        if self.format == "questions":
            return list(self.documents)  # the corpus is the knowledge base, whichever questions are asked
        want = {d for q in questions for d in (q.docs if self.format == "squad" else self._context[q.id])}
        return [d for d in self.documents if d.id in want]

    _context: dict[str, list[str]] = field(default_factory=dict, repr=False)


def doc_key(fmt: str, title: str, text: str) -> str:
    """Stable document key: format, title and a content hash (independent of where the file lies)."""
    return f"{fmt}:{title}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _load_json(path: Path):
    if not path.exists():
        raise errors.path_missing(str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise errors.not_utf8(str(path), e.start) from None
    except json.JSONDecodeError as e:
        raise errors.InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); "
                                f"eval reads SQuAD, HotpotQA or doc2atom questions JSON files.") from None


def _bad(path: Path, fmt: str, where: str, what: str) -> errors.InputError:
    return errors.InputError(f"{path}: {where}: {what}; is this a {fmt} file? (pass --format squad|hotpot|questions)")


def read_squad(path: str | Path) -> EvalSet:
    """SQuAD 1.1/2.0: {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}."""
    path = Path(path)
    obj = _load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise _bad(path, "SQuAD", "top level", 'expected an object with a "data" list')
    docs: dict[str, Document] = {}
    qs: list[EvalQuestion] = []
    for a, art in enumerate(obj["data"]):
        title = str(art.get("title", "")) if isinstance(art, dict) else ""
        paras = art.get("paragraphs") if isinstance(art, dict) else None
        if not isinstance(paras, list):
            raise _bad(path, "SQuAD", f"data[{a}]", 'expected "paragraphs" (a list)')
        for p, para in enumerate(paras):
            ctx = para.get("context") if isinstance(para, dict) else None
            if not isinstance(ctx, str) or not isinstance(para.get("qas", []), list):
                raise _bad(path, "SQuAD", f"data[{a}].paragraphs[{p}]", 'expected "context" (text) and "qas" (a list)')
            if not ctx.strip():
                continue
            doc = document_from_text(doc_key("squad", title, ctx), ctx, title=title)
            docs.setdefault(doc.id, doc)
            for n, qa in enumerate(para.get("qas", [])):
                where = f"data[{a}].paragraphs[{p}].qas[{n}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    raise _bad(path, "SQuAD", where, 'expected "question" (text)')
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else [x["text"] for x in qa.get("answers", [])
                                                 if isinstance(x, dict) and isinstance(x.get("text"), str)]
                if not impossible and not answers:
                    raise _bad(path, "SQuAD", where, "an answerable question with no answers")
                if not qa["question"].strip():
                    continue
                qs.append(EvalQuestion(id=str(qa.get("id", where)), question=qa["question"].strip(),
                                       answers=list(dict.fromkeys(answers)), impossible=impossible, docs=[doc.id]))
    return EvalSet(name=path.name, format="squad", documents=list(docs.values()), questions=qs)


def read_hotpot(path: str | Path) -> EvalSet:
    """HotpotQA: [{"_id", "question", "answer", "type", "context": [[title, [sentences]]],
    "supporting_facts": [[title, sentence index]]}]."""
    path = Path(path)
    obj = _load_json(path)
    if not isinstance(obj, list):
        raise _bad(path, "HotpotQA", "top level", "expected a list of questions")
    docs: dict[str, Document] = {}
    qs: list[EvalQuestion] = []
    context: dict[str, list[str]] = {}
    for n, item in enumerate(obj):
        where = f"[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) \
                or not isinstance(item.get("context"), list):
            raise _bad(path, "HotpotQA", where, 'expected "question" (text) and "context" (a list)')
        by_title: dict[str, str] = {}
        for c, pair in enumerate(item["context"]):
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                    and isinstance(pair[1], list)):
                raise _bad(path, "HotpotQA", f"{where}.context[{c}]", "expected [title, [sentences]]")
            title, sents = pair
            text = "".join(str(s) for s in sents).strip()
            if not text:
                continue
            doc = document_from_text(doc_key("hotpot", title, text), text, title=title)
            docs.setdefault(doc.id, doc)
            by_title[title] = doc.id
        support = []
        for f in item.get("supporting_facts", []):
            if isinstance(f, list) and f and f[0] in by_title and by_title[f[0]] not in support:
                support.append(by_title[f[0]])
        answer = item.get("answer")
        answers = [answer] if isinstance(answer, str) and answer.strip() else []
        if not answers:
            raise _bad(path, "HotpotQA", where, 'expected "answer" (text)')
        qid = str(item.get("_id", item.get("id", where)))
        context[qid] = list(by_title.values())
        qs.append(EvalQuestion(id=qid, question=item["question"].strip(), answers=answers, impossible=False,
                               docs=support, type=item.get("type")))
    out = EvalSet(name=path.name, format="hotpot", documents=list(docs.values()), questions=qs)
    out._context = context
    return out


def read_questions(path: str | Path) -> EvalSet:
    """doc2atom's own question sets over a folder of documents (data/sample_questions.json):
    {"corpus": folder relative to the file, "questions": [{"question", "answers", "docs": [file names],
    "kind"}]}. The folder's files are read as `ingest` reads them; a question of kind "out_of_scope" (or
    with no answers) must be refused; "kind" is reported as the question type."""
    from doc2atom.readers import expand_paths, read_file

    path = Path(path)
    obj = _load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("corpus"), str) or not isinstance(obj.get("questions"), list):
        raise _bad(path, "questions", "top level", 'expected an object with "corpus" (a folder) and "questions"')
    folder = (path.parent / obj["corpus"]).resolve()
    if not folder.is_dir():
        raise errors.InputError(f"{path}: corpus folder {folder} does not exist")
    docs: list[Document] = []
    by_file: dict[str, list[str]] = {}
    for f in expand_paths([str(folder)]):
        for d in read_file(f):
            docs.append(d)
            by_file.setdefault(f.name, []).append(d.id)
    qs: list[EvalQuestion] = []
    for n, item in enumerate(obj["questions"]):
        where = f"questions[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise _bad(path, "questions", where, 'expected "question" (text)')
        answers = [a for a in item.get("answers", []) if isinstance(a, str) and a.strip()]
        kind = str(item.get("kind", "")) or None
        impossible = kind == "out_of_scope" or not answers
        own = []
        for name in item.get("docs", []) or []:
            if name not in by_file:
                raise _bad(path, "questions", where, f"document {name!r} is not in {folder}")
            own += by_file[name]
        qs.append(EvalQuestion(id=str(item.get("id", n)), question=item["question"].strip(),
                               answers=[] if impossible else answers, impossible=impossible, docs=own, type=kind))
    return EvalSet(name=path.name, format="questions", documents=docs, questions=qs)


def read_dataset(path: str | Path, fmt: str) -> EvalSet:
    if fmt not in FORMATS:
        raise errors.InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"squad": read_squad, "hotpot": read_hotpot, "questions": read_questions}[fmt](path)


def read_general(path: str | Path) -> list[str]:
    """General questions for the leakage test: a JSON list of strings, or an object with a "questions" list."""
    path = Path(path)
    obj = _load_json(path)
    qs = obj.get("questions") if isinstance(obj, dict) else obj
    if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
        raise errors.InputError(f'{path}: expected a JSON list of question strings or {{"questions": [...]}}')
    qs = [q.strip() for q in qs if q.strip()]
    if not qs:
        raise errors.InputError(f"{path}: no questions")
    return qs


def subsample(questions: list[EvalQuestion], limit: int | None) -> list[EvalQuestion]:
    """At most `limit` questions spread evenly over the dataset (deterministic), so that a
    limited run still sees every part of it rather than only its first paragraphs."""
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit < 1:
        raise errors.InputError(f"--limit must be at least 1, got {limit}")
    step = len(questions) / limit
    return [questions[int(i * step)] for i in range(limit)]


__all__ = ["FORMATS", "EvalQuestion", "EvalSet", "doc_key", "read_dataset", "read_general", "read_hotpot", "read_questions", "read_squad",
           "subsample"]
