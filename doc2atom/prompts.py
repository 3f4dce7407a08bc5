"""The prompts every mode shares, so that a comparison between modes isolates how knowledge
reaches the model (weights vs context), not what it was asked.

Used by the compiler (training prompts) and by serving (asking), so both see the same
template. Never put retrieved text in the `atoms` mode prompt.
"""

from __future__ import annotations

SYSTEM = "Answer the question with a short, factual answer."
CONTEXT_HEADER = "Use these facts:"


def messages(question: str, facts: list[str] | None = None) -> list[dict]:
    """Chat messages for one question; `facts` go in the user turn (context and hybrid modes)."""
    user = question.strip()
    if facts:
        user = CONTEXT_HEADER + "\n" + "\n".join(f"- {f}" for f in facts) + "\n\nQuestion: " + user
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def prompt_ids(tok, question: str, facts: list[str] | None = None) -> list[int]:
    """Token ids of the chat prompt, ending where the assistant's answer begins."""
    out = tok.apply_chat_template(messages(question, facts), add_generation_prompt=True, tokenize=True,
                                  return_dict=True)
    return list(out["input_ids"])


def answer_ids(tok, answer: str) -> list[int]:
    """Token ids of an assistant answer followed by the end-of-turn token."""
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    if eos is None or eos == tok.unk_token_id:
        eos = tok.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])
