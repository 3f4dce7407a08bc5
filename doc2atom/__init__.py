"""doc2atom: knowledge a language model carries in its weights, one small atom at a time.

Importing this package stays light (no torch, spaCy or FAISS): `KnowledgeBase` and
`Answer` are re-exported lazily from `serving`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Answer", "KnowledgeBase", "__version__"]


def __getattr__(name: str):
    if name == "KnowledgeBase":
        from serving.pipeline import KnowledgeBase

        return KnowledgeBase
    if name == "Answer":
        from doc2atom.schemas import Answer

        return Answer
    raise AttributeError(f"module 'doc2atom' has no attribute {name!r}")
