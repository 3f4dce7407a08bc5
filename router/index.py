"""The key index (`keys.faiss`): exact inner-product search over unit-norm key embeddings.

The index is derived data: the KB's SQLite rows are the truth. `KeyIndex.open` checks that
the file holds exactly the store's atom ids and rebuilds it from the stored embeddings
otherwise (after a crash between the SQLite commit and the index write, or a deleted file).
Writes go to a temp file renamed over `keys.faiss`, so a reader never sees half an index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INDEX_FILE = "keys.faiss"


class KeyIndex:
    def __init__(self, dim: int):
        import faiss

        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids) -> None:
        import faiss

        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n, k) float32, ids (n, k) int64; -1 where fewer than k atoms exist)."""
        k = max(1, min(k, max(1, self.ntotal)))
        if self.ntotal == 0:
            n = len(q)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        return self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)

    def save(self, folder: Path) -> None:
        import faiss

        tmp = folder / f".{INDEX_FILE}.tmp{os.getpid()}"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, folder / INDEX_FILE)

    @classmethod
    def build(cls, ids: np.ndarray, vecs: np.ndarray, dim: int) -> "KeyIndex":
        idx = cls(dim)
        idx.add(ids, vecs)
        return idx

    @classmethod
    def open(cls, folder: Path, store, dim: int, write: bool = True) -> "KeyIndex":
        """Load keys.faiss if it matches the store exactly, else rebuild it from the stored embeddings."""
        import faiss

        path = folder / INDEX_FILE
        want = store.rowids()
        if path.exists():
            try:
                idx = cls.__new__(cls)
                idx.dim = dim
                idx.index = faiss.read_index(str(path))
                if idx.index.d == dim and np.array_equal(idx.ids(), want):
                    return idx
            except RuntimeError:
                pass  # unreadable file: rebuilt below
        ids, vecs = store.embeddings()
        idx = cls.build(ids, vecs, dim)
        if write:
            idx.save(folder)
        return idx
