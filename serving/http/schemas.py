"""Request and response bodies of the HTTP API: strict pydantic models (`extra="forbid"`).

The chat models follow OpenAI's chat-completions format closely enough for its clients; the
fields doc2atom adds (`mode`, `top_k` in, `atoms`, `refused`, `unsupported`, `timings_ms` out) are documented
here. Generation is greedy, so sampling fields are accepted for compatibility and ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from doc2atom.schemas import AtomOut

Mode = Literal["atoms", "context", "hybrid", "base"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- errors -----------------------------------------------------------------------------------

class ErrorDetail(_Strict):
    code: str = Field(description="Stable machine-readable code, e.g. bad_input, not_found, queue_full")
    message: str = Field(description="What went wrong and what to do about it")


class ErrorBody(_Strict):
    error: ErrorDetail


# -- chat completions -------------------------------------------------------------------------

class TextPart(_Strict):
    type: Literal["text"] = Field(description="Only text parts are understood")
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(default=None, description="Text, or a list of text parts")
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = Field(default=False, description="Send one more chunk, before [DONE], with the token usage")


class ChatRequest(_Strict):
    """POST /v1/chat/completions. The last user message is the question; earlier turns are not used."""

    model: str = Field(default="doc2atom", description="doc2atom, or doc2atom-<mode> to pick the mode")
    messages: list[ChatMessage] = Field(min_length=1, description="Chat turns; the last user turn is asked")
    mode: Mode | None = Field(default=None, description="doc2atom extension: atoms, context, hybrid or base")
    top_k: int | None = Field(default=None, ge=1, le=64, description="doc2atom extension: most atoms composed")
    max_tokens: int | None = Field(default=None, ge=1, le=1024, description="Most answer tokens (default 48)")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1024, description="Same as max_tokens")
    stream: bool = Field(default=False, description="Send the answer as server-sent events")
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request")
    stop: str | list[str] | None = Field(default=None, description="The answer is cut before the first of these")
    # sampling fields: accepted so that OpenAI clients work unchanged; decoding is greedy
    temperature: float | None = Field(default=None, ge=0, le=2, description="Ignored: decoding is greedy")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Ignored: decoding is greedy")
    seed: int | None = Field(default=None, description="Ignored: decoding is deterministic")
    presence_penalty: float | None = Field(default=None, description="Ignored")
    frequency_penalty: float | None = Field(default=None, description="Ignored")
    user: str | None = Field(default=None, description="Ignored")

    @model_validator(mode="after")
    def _one_token_limit(self):
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; pass one of them")
        return self


class ChoiceMessage(_Strict):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(_Strict):
    index: int = 0
    message: ChoiceMessage
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(_Strict):
    prompt_tokens: int = Field(description="Tokens of the prompt (0 when the question was refused: nothing ran)")
    completion_tokens: int = Field(description="Tokens generated, including the end-of-turn token that ended the answer")
    total_tokens: int


class ChatCompletion(_Strict):
    """The OpenAI chat.completion object plus doc2atom's `atoms`, `refused` and `timings_ms`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = Field(default=None, description="Token counts of this request")
    atoms: list[AtomOut] = Field(description="Atoms that fired, with score, weight, type, text and source span")
    refused: bool = Field(description="True when no atom covered the question (the answer is then a refusal)")
    unsupported: list[str] = Field(default_factory=list, description="Numbers and names of the answer that neither "
                                   "the question nor the atoms that fired contain (doc2atom's Answer.unsupported)")
    timings_ms: dict[str, float] = Field(description="Wall time per stage, per request of the batch")


class Delta(_Strict):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Strict):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(_Strict):
    """One server-sent event of a streamed answer; the last one carries `atoms`, `refused` and `unsupported`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    atoms: list[AtomOut] | None = None
    refused: bool | None = None
    unsupported: list[str] | None = None
    usage: Usage | None = None


class ModelCard(_Strict):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "doc2atom"


class ModelList(_Strict):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- documents and atoms ----------------------------------------------------------------------

class DocumentIn(_Strict):
    """POST /v1/documents: a text to ingest under a key (`path` or `id`, exactly one)."""

    path: str | None = Field(default=None, min_length=1, max_length=1000,
                             description="Key the document is known by, e.g. notes/bridge.md")
    id: str | None = Field(default=None, min_length=1, max_length=1000, description="Same as path")
    text: str = Field(min_length=1, description="Document text (UTF-8); atom spans index into it")
    title: str | None = Field(default=None, max_length=500, description="Title (default: first line)")

    @model_validator(mode="after")
    def _one_key(self):
        if (self.path is None) == (self.id is None):
            raise ValueError("give exactly one of path or id: the key the document is known by")
        return self

    @property
    def key(self) -> str:
        return self.path if self.path is not None else self.id


class DocumentSummary(_Strict):
    id: str
    path: str
    title: str
    sha256: str
    n_atoms: int


class DocumentList(_Strict):
    documents: list[DocumentSummary]


class DocumentDetail(DocumentSummary):
    text: str = Field(description="The text atom spans index into")
    status: str


class IngestResult(_Strict):
    document: DocumentSummary
    changed: bool = Field(description="False when the same text was already ingested under this key")
    atoms: int = Field(description="Atoms compiled by this request")
    seconds: float


class ForgetResult(_Strict):
    doc: str
    path: str
    atoms_removed: int


class AtomList(_Strict):
    atoms: list[AtomOut]
    total: int = Field(description="Atoms matching the filters, before offset and limit")


class Health(_Strict):
    status: Literal["ok", "starting", "error"]
    kb: str
    documents: int
    atoms: int
    writes_enabled: bool
    batcher: dict
    error: str | None = None
