"""Embed atom keys and questions with the embedded default sentence encoder (all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np


class Embedder:
    """Unit-norm sentence embeddings, float32 (n, d)."""

    def __init__(self, model=None):
        if model is None:
            from doc2atom.models import load_embedder

            model = load_embedder()
        self.model = model
        # sentence-transformers renamed the method (the old name warns); accept both, >= 3.0 is pinned
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(v, dtype=np.float32)


def atom_key_vectors(embedder: Embedder, keys: list[str], questions: list[list[str]]) -> np.ndarray:
    """One unit vector per atom: its key plus the mean of its synthesised questions.

    Questions users ask resemble the synthesised questions more than the statement itself;
    on the sample corpus this centroid routed 21/23 paraphrased questions to the right atom
    against 19/23 for the key alone, with out-of-scope questions still scoring lower.
    """
    k = embedder(keys)
    flat = [q for qs in questions for q in qs]
    qv = embedder(flat)
    out = k.copy()
    pos = 0
    for i, qs in enumerate(questions):
        if qs:
            out[i] += qv[pos:pos + len(qs)].mean(axis=0)
        pos += len(qs)
    out /= np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
    return out.astype(np.float32)
