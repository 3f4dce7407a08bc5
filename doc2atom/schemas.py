"""Typed records that cross package boundaries: documents, atoms, answers.

Strict pydantic models (`extra="forbid"`); the JSON contracts of DESIGN.md are these
models' dumps, so changing a field here changes a public contract.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# the atom taxonomy; doc2atom/atom_types.py documents each type and how its key is formed
ATOM_TYPES = ("definition", "attribute", "relation", "event", "quantity", "list_member", "statement")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Document(_Strict):
    """One ingested document: its text as doc2atom read it, spans index into `text`."""

    id: str = Field(description="Stable document id: hash of the resolved path")
    path: str = Field(description="Path the document was read from (absolute) or a dataset key")
    title: str = Field(description="Title or first heading, used as context for its atoms; empty when the "
                       "document has none (its first line is a sentence)")
    text: str = Field(description="Decoded text; atom spans are offsets into it")
    sha256: str = Field(description="Content hash of `text`; re-ingesting unchanged content is a no-op")


class AtomDraft(_Strict):
    """An atom as the atomizer proposes it, before compilation."""

    type: str = Field(description="Atom type, one of the documented taxonomy")
    text: str = Field(description="Self-contained statement the atom teaches")
    key: str = Field(description="Text embedded for retrieval")
    start: int = Field(ge=0, description="Start offset of the source span in the document text")
    end: int = Field(ge=0, description="End offset (exclusive) of the source span")


class Source(_Strict):
    doc: str = Field(description="Document id")
    path: str = Field(description="Document path")
    start: int = Field(description="Span start (character offset in the document text)")
    end: int = Field(description="Span end (exclusive)")
    line: int | None = Field(default=None, description="1-based line of the span start, for people")


class Signals(_Strict):
    """The router's evidence for one atom on one question (`ask --explain`, `ask --json`)."""

    dense: float = Field(description="Cosine similarity of the question and the atom's retrieval key")
    lexical: float = Field(description="BM25 score of the atom's key text for the question")
    cover: float = Field(description="IDF-weighted share of the question's content words found in the atom")
    learned: float = Field(description="Learned router probability (the final score)")
    hop: int = Field(description="1 = first retrieval round, 2 = found by the multi-hop round")


class AtomOut(_Strict):
    """An atom as `ask --json` and `atoms show` report it."""

    id: str = Field(description="Atom id")
    type: str = Field(description="Atom type")
    score: float | None = Field(default=None, description="Router score for this question (None outside ask)")
    weight: float | None = Field(default=None, description="Composition weight used (None outside ask)")
    text: str = Field(description="Statement the atom teaches")
    source: Source = Field(description="The atom's first provenance (the same as sources[0])")
    sources: list[Source] = Field(default_factory=list, description="Every document span that states this atom "
                                  "(near-duplicates across documents are one atom), first provenance first")
    signals: Signals | None = Field(default=None, description="Router signals for this question (None outside ask "
                                    "and for atoms the caller forced)")


class Answer(_Strict):
    """The object `doc2atom ask --json` prints and `KnowledgeBase.ask` returns."""

    answer: str = Field(description="Generated answer, or the refusal message")
    refused: bool = Field(description="True when no atom covered the question")
    atoms: list[AtomOut] = Field(description="Atoms that fired (routed and composed or put in context)")
    unsupported: list[str] = Field(default_factory=list, description="Numbers and names of the answer that neither "
                                   "the question nor the atoms that fired contain (doc2atom.grounding): where the "
                                   "answer strays from its sources; empty for refusals and in base mode")
    timings_ms: dict[str, float] = Field(description="Wall time per stage in milliseconds")
