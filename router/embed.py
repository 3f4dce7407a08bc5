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
        self.dim = int(model.get_sentence_embedding_dimension())

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(v, dtype=np.float32)
