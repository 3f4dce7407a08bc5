"""Distillation targets: what the base model answers with the atom's text in its context.

The teacher is the frozen base model prompted exactly as the `context` mode prompts it (the
atom's text as the only fact); the student is the base model plus the atom's micro-LoRA with no
context. Training the student on the teacher's greedy answer to each synthesised question
(sequence-level distillation) teaches the answer style of context mode: short answers to the
question asked, instead of the whole statement.

A 135M teacher sometimes ignores the fact it is given. An answer that shares no content word
with the atom's text is not taught: that question falls back to the statement itself.
"""

from __future__ import annotations

import re

_STOP = {"the", "a", "an", "of", "in", "on", "at", "to", "is", "was", "are", "were", "and", "or", "by", "for", "with",
         "it", "its", "this", "that", "as", "from", "be", "has", "had", "have", "i", "you", "not", "no", "yes"}


def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"\w+", s.lower()) if w not in _STOP}


def grounded(answer: str, fact: str) -> bool:
    """True when the answer has a content word that comes from the fact (the teacher used the fact
    rather than its own memory)."""
    aw = _words(answer)
    return bool(aw) and bool(aw & _words(fact))


def teacher_answers(model, tok, texts: list[str], questions: list[list[str]], max_new_tokens: int = 32,
                    batch_size: int = 32) -> tuple[list[list[str]], float]:
    """Per atom, per question: the teacher's answer, or the statement where the teacher ignored the fact.

    Returns (answers, share of questions answered by a grounded teacher answer)."""
    from serving.generate import generate

    flat = [(i, q) for i, qs in enumerate(questions) for q in qs]
    outs: list[str] = []
    for s in range(0, len(flat), batch_size):
        part = flat[s:s + batch_size]
        outs += generate(model, tok, [q for _, q in part], [[texts[i]] for i, _ in part],
                         max_new_tokens=max_new_tokens)
    answers: list[list[str]] = [[] for _ in texts]
    used = 0
    for (i, _), o in zip(flat, outs):
        if grounded(o, texts[i]):
            answers[i].append(o)
            used += 1
        else:
            answers[i].append(texts[i])
    return answers, used / max(len(flat), 1)
