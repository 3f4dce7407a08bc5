"""Translate between OpenAI chat-completions requests and doc2atom asks, and back.

No FastAPI here: a ChatRequest becomes (question, mode, top_k, max_new_tokens); an Answer
becomes a chat.completion object or chat.completion.chunk events. A `TokenSink` rides along
with the ask through the batcher and sees this request's row of the batch as it is decoded:
it counts tokens (`usage`) and holds the answer text so far, which `StreamText` turns into
chunks while the batch is still generating (tokens are streamed as they are produced; the
last chunk carries the atoms that fired).
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
                                  ChunkChoice, Delta, ModelCard, ModelList, Usage)

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
    include_usage: bool = False


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
                     model=req.model, stop=tuple(s for s in stop if s),
                     include_usage=bool(req.stream_options and req.stream_options.include_usage))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


class TokenSink:
    """Per-request generate hooks (row 0 is this request): token counts and the answer text so far.

    Called on the batcher's worker thread; `notify()` (optional) is called after every change, e.g.
    to wake the event loop that streams the answer. Never raises into the batch.
    """

    def __init__(self, notify=None):
        self._notify = notify
        self.restart()

    def restart(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.text = ""  # the answer's text so far (stripped, as the final answer is)
        self.finish_reason: str | None = None
        self.started = False

    def prompt(self, row: int, n_tokens: int) -> None:
        self.prompt_tokens, self.started = n_tokens, True
        self._wake()

    def token(self, row: int, token_id: int, text_delta: str) -> None:
        self.completion_tokens += 1
        if text_delta:
            self.text += text_delta
            self._wake()

    def finish(self, row: int, reason: str) -> None:
        self.finish_reason = reason
        self._wake()

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)

    def _wake(self) -> None:
        if self._notify is not None:
            try:
                self._notify()
            except Exception:  # e.g. the client left and its event loop is closed: nothing to wake
                pass


def finish_reason(sink: TokenSink | None, text: str, p: AskParams) -> str:
    if p.stop and cut_at_stop(text, p.stop) != text:
        return "stop"
    return "length" if sink is not None and sink.finish_reason == "length" else "stop"


def completion(ans: Answer, p: AskParams, sink: TokenSink | None = None) -> ChatCompletion:
    return ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=p.model,
                          choices=[Choice(message=ChoiceMessage(content=cut_at_stop(ans.answer, p.stop)),
                                          finish_reason=finish_reason(sink, ans.answer, p))],
                          usage=sink.usage() if sink is not None else None,
                          atoms=ans.atoms, refused=ans.refused, unsupported=ans.unsupported,
                          timings_ms=ans.timings_ms)


def pieces(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to `text` exactly."""
    return re.findall(r"\s*\S+|\s+", text)


class StreamText:
    """The server-sent events of one streamed answer, each 'data: ...\\n\\n': `start()`, then `feed(text)`
    with the answer so far as often as it grows, then `end(answer, sink)` (last content, the chunk with
    finish_reason, atoms and refused, the usage chunk if asked for, and [DONE]).

    Text that could be the beginning of a stop string is held back until it is known not to be one.
    """

    def __init__(self, p: AskParams):
        self.p = p
        self.cid, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.sent = ""  # content already sent
        self.hold = max((len(s) for s in p.stop), default=1) - 1

    def event(self, delta: Delta | None, finish=None, **extra) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish)]
        d = ChatCompletionChunk(id=self.cid, created=self.created, model=self.p.model, choices=choices,
                                **extra).model_dump()
        for k in ("atoms", "refused", "unsupported", "usage"):
            if d[k] is None:
                del d[k]
        if d["choices"]:
            d["choices"][0]["delta"] = {k: v for k, v in d["choices"][0]["delta"].items() if v is not None}
        return "data: " + json.dumps(d, ensure_ascii=False) + "\n\n"

    def start(self) -> str:
        return self.event(Delta(role="assistant", content=""))

    def _content(self, safe: str) -> list[str]:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return []
        new, self.sent = safe[len(self.sent):], safe
        return [self.event(Delta(content=new))]

    def feed(self, text: str) -> list[str]:
        cut = cut_at_stop(text, self.p.stop)
        safe = cut if cut != text else text[:max(0, len(text) - self.hold)]
        return self._content(safe)

    def end(self, ans: Answer, sink: TokenSink | None = None) -> list[str]:
        final = cut_at_stop(ans.answer, self.p.stop)
        if self.sent and not final.startswith(self.sent):  # cannot happen with a prefix-stable tokenizer
            out = []
        elif not self.sent:
            out = [self.event(Delta(content=piece)) for piece in pieces(final)]  # e.g. a refusal: nothing streamed
            self.sent = final
        else:
            out = self._content(final)
        out.append(self.event(Delta(), finish=finish_reason(sink, ans.answer, self.p), atoms=ans.atoms,
                              refused=ans.refused, unsupported=ans.unsupported))
        if self.p.include_usage and sink is not None:
            out.append(self.event(None, usage=sink.usage()))
        out.append("data: [DONE]\n\n")
        return out

    def error(self, status: int, code: str, message: str) -> list[str]:
        """An error after the stream began (the status line is already sent): one error event, then [DONE]."""
        body = {"error": {"code": code, "message": message, "status": status}}
        return ["data: " + json.dumps(body, ensure_ascii=False) + "\n\n", "data: [DONE]\n\n"]


def chunks(ans: Answer, p: AskParams, sink: TokenSink | None = None) -> list[str]:
    """All server-sent events of an answer that is already complete, ending with [DONE]."""
    s = StreamText(p)
    return [s.start()] + s.end(ans, sink)


def model_list() -> ModelList:
    return ModelList(data=[ModelCard(id=m) for m in MODEL_NAMES])
