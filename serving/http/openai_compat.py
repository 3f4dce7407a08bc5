"""Translate between OpenAI chat-completions requests and doc2atom asks, and back.

Pure functions, no FastAPI: a ChatRequest becomes (question, mode, top_k, max_new_tokens); an
Answer becomes a chat.completion object or a list of chat.completion.chunk events. The whole
answer is generated before the first event is sent (generation is batched across requests),
so streaming splits a finished answer into word-sized pieces rather than emitting tokens live.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

from doc2atom import errors
from doc2atom.schemas import Answer
from serving.http.schemas import (ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChoiceMessage,
                                  ChunkChoice, Delta, ModelCard, ModelList)

MODEL = "doc2atom"
MODES = ("atoms", "context", "hybrid", "base")
DEFAULT_MODE = "atoms"
DEFAULT_MAX_NEW_TOKENS = 48
MODEL_NAMES = (MODEL,) + tuple(f"{MODEL}-{m}" for m in MODES)


@dataclass(frozen=True)
class AskParams:
    question: str
    mode: str
    top_k: int | None
    max_new_tokens: int
    model: str
    stop: tuple[str, ...]


def mode_of_model(model: str) -> str | None:
    """'doc2atom' -> None (no preference); 'doc2atom-<mode>' -> mode; anything else is an error."""
    if model == MODEL:
        return None
    if model.startswith(MODEL + "-") and model[len(MODEL) + 1:] in MODES:
        return model[len(MODEL) + 1:]
    raise errors.InputError(f"unknown model {model!r}; use one of {', '.join(MODEL_NAMES)} "
                            "(GET /v1/models lists them), or 'doc2atom' with a 'mode' field.")


def ask_params(req: ChatRequest) -> AskParams:
    model_mode = mode_of_model(req.model)
    if req.mode is not None and model_mode is not None and req.mode != model_mode:
        raise errors.InputError(f"model {req.model!r} asks for mode {model_mode!r} but the mode field says "
                                f"{req.mode!r}; pass one of them.")
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise errors.InputError("messages has no user message; the last user message is the question.")
    question = users[-1].text().strip()
    if not question:
        raise errors.InputError("the last user message is empty; ask something.")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return AskParams(question=question, mode=req.mode or model_mode or DEFAULT_MODE, top_k=req.top_k,
                     max_new_tokens=req.max_tokens or req.max_completion_tokens or DEFAULT_MAX_NEW_TOKENS,
                     model=req.model, stop=tuple(s for s in stop if s))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


def completion(ans: Answer, p: AskParams) -> ChatCompletion:
    return ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=p.model,
                          choices=[Choice(message=ChoiceMessage(content=cut_at_stop(ans.answer, p.stop)))],
                          atoms=ans.atoms, refused=ans.refused, timings_ms=ans.timings_ms)


def pieces(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to `text` exactly."""
    return re.findall(r"\s*\S+|\s+", text)


def chunks(ans: Answer, p: AskParams) -> list[str]:
    """The server-sent events of one streamed answer, each 'data: ...\\n\\n', ending with [DONE]."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: Delta, finish=None, **extra) -> str:
        c = ChatCompletionChunk(id=cid, created=created, model=p.model,
                                choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        d = c.model_dump()
        for k in ("atoms", "refused"):
            if d[k] is None:
                del d[k]
        d["choices"][0]["delta"] = {k: v for k, v in d["choices"][0]["delta"].items() if v is not None}
        return "data: " + json.dumps(d, ensure_ascii=False) + "\n\n"

    out = [event(Delta(role="assistant", content=""))]
    out += [event(Delta(content=piece)) for piece in pieces(cut_at_stop(ans.answer, p.stop))]
    out.append(event(Delta(), finish="stop", atoms=ans.atoms, refused=ans.refused))
    out.append("data: [DONE]\n\n")
    return out


def model_list() -> ModelList:
    return ModelList(data=[ModelCard(id=m) for m in MODEL_NAMES])
