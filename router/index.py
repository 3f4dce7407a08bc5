"""The key index (`keys.faiss`): inner-product search over unit-norm atom keys, exact or approximate by size.

- up to `exact_max` atoms (default 20,000): exact search, `IndexIDMap2(IndexFlatIP)`;
- beyond: HNSW (`IndexIDMap2(IndexHNSWFlat)`, M 32, efConstruction 40, efSearch 256), or IVF
  (`IndexIVFFlat`, nlist about 4*sqrt(n), nprobe 32) on request. Chosen by measurement
  (bench/bench_router.py, 384-d synthetic keys, one query per call on this 2-core CPU): up to
  100k keys both reach recall@10 >= 0.99 under 0.5 ms; at 1M keys IVF reached only 0.76 (nprobe
  32) / 0.81 (nprobe 64, p99 9.6 ms) while HNSW reached 0.93 at efSearch 128 with p99 under 1 ms.
  HNSW cannot remove vectors in place: removed ids are tombstones, filtered out of every search
  and kept in keys.json, and the index is rebuilt from the store once they pass 20%.

Ids are the atoms' SQLite rowids (AUTOINCREMENT, never reused), so an id means one atom for
the life of the KB, across additions and `forget`. The index is derived data: `KeyIndex.open`
checks that the file holds exactly the store's atom ids and rebuilds it from the stored
embeddings otherwise (after a crash between the SQLite commit and the index write, or a
deleted file). Writes go to a temp file renamed over `keys.faiss`, so a reader never sees
half an index. This module must never write to the store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

INDEX_FILE = "keys.faiss"
META_FILE = "keys.json"  # kind, the size the IVF quantizer was trained at, HNSW tombstones
EXACT_MAX = 20_000  # exact search up to here: one query ~1 ms on this CPU (10k 0.27 ms, 50k 2.4 ms p50)
DEFAULT_NPROBE = 32  # IVF lists visited per query (recall@10 >= 0.95 at 1M synthetic keys; bench_router.py)
HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 40
DEFAULT_EF = 256  # HNSW candidates explored per query (bench_router.py: recall@10 at 1M keys)
APPROX_KIND = "hnsw"  # the approximate index beyond exact_max (bench_router.py decided)
RETRAIN_GROWTH = 4.0  # retrain the IVF quantizer when the index has grown this many times past its training


def ivf_nlist(n: int) -> int:
    """Inverted lists for n keys: the power of two nearest 4*sqrt(n), in [64, 65536], and at most n/39
    (k-means wants 39 training points per list)."""
    target = 4.0 * np.sqrt(max(n, 1))
    return int(max(1, min(np.clip(2 ** round(np.log2(target)), 64, 65536), n // 39)))


KINDS = ("flat", "ivf", "hnsw")


class KeyIndex:
    """Atom keys by rowid. `kind` is "flat" (exact), "ivf" or "hnsw" (approximate); search is the same call.

    HNSW cannot remove vectors: `remove` tombstones ids (kept in keys.json, filtered out of every
    search by an id selector) and the index is rebuilt from the store once they pass 20%."""

    def __init__(self, dim: int, kind: str = "flat", nlist: int = 0):
        import faiss

        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.dim = dim
        self.nprobe = DEFAULT_NPROBE
        self.ef_search = DEFAULT_EF
        self.deleted: set[int] = set()  # HNSW tombstones
        if kind == "flat":
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.index = faiss.IndexIDMap2(inner)
            self.index.own_fields = True
            inner.this.disown()
        else:
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.own_fields = True
            quantizer.this.disown()
            # a hash map id -> (list, offset): reconstruct(id) for lexical-only candidates, remove_ids by id
            self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.trained_n = 0  # keys the IVF quantizer was trained on

    @property
    def kind(self) -> str:
        import faiss

        if isinstance(self.index, faiss.IndexIVF):
            return "ivf"
        return "hnsw" if isinstance(faiss.downcast_index(self.index.index), faiss.IndexHNSW) else "flat"

    @property
    def ntotal(self) -> int:
        """Live keys (tombstoned HNSW keys excluded)."""
        return int(self.index.ntotal) - len(self.deleted)

    def ids(self) -> np.ndarray:
        """Sorted ids (int64) of every key in the index."""
        import faiss

        if self.kind != "ivf":
            ids = np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
            return np.setdiff1d(ids, np.fromiter(self.deleted, np.int64), assume_unique=True) if self.deleted else ids
        inv = self.index.invlists
        parts = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                 for lst in range(inv.nlist) if inv.list_size(lst)]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """ids (n,) int64 atom rowids; vecs (n, dim) float32 unit rows. Appends; ids must be new."""
        if len(ids):
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            assert vecs.shape == (len(ids), self.dim), f"vecs {vecs.shape} for {len(ids)} ids of dim {self.dim}"
            self.index.add_with_ids(vecs, np.asarray(ids, dtype=np.int64))

    def vectors(self, ids) -> np.ndarray:
        """(len(ids), dim) float32 stored key vectors of these atom ids (each must be in the index)."""
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def remove(self, ids) -> None:
        import faiss

        ids = np.ascontiguousarray(list(ids), dtype=np.int64)
        if len(ids):
            if self.kind == "hnsw":
                self.deleted |= set(ids.tolist()) & set(faiss.vector_to_array(self.index.id_map).tolist())
            elif self.kind == "ivf":  # the IVF's id hash map removes by an explicit id array only
                self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
            else:
                self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q (n, dim) float32 -> (scores (n, k) float32, ids (n, k) int64; -1 where fewer than k atoms exist)."""
        k = max(1, min(k, max(1, self.ntotal)))
        if self.ntotal == 0:
            n = len(q)
            return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.kind == "ivf":
            self.index.nprobe = min(self.nprobe, self.index.nlist)
        elif self.kind == "hnsw":
            import faiss

            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            if self.deleted:
                dead = np.fromiter(sorted(self.deleted), np.int64)
                batch = faiss.IDSelectorBatch(dead)
                params.sel = faiss.IDSelectorNot(batch)  # IndexIDMap2 maps the selector to its own ids
                scores, ids = self.index.search(q, k, params=params)
                del batch, dead
                return scores, ids
            return self.index.search(q, k, params=params)
        return self.index.search(q, k)

    def save(self, folder: Path) -> None:
        """Write keys.faiss atomically (temp file + rename), then its advisory sidecar keys.json."""
        import faiss

        tmp = Path(folder) / f".{INDEX_FILE}.tmp{os.getpid()}"
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, Path(folder) / INDEX_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        meta = Path(folder) / META_FILE
        tmp = meta.with_name(f".{META_FILE}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"kind": self.kind, "ntotal": self.ntotal, "trained_n": self.trained_n,
                                   "deleted": sorted(self.deleted)}))
        os.replace(tmp, meta)

    def wants_rebuild(self, exact_max: int = EXACT_MAX) -> bool:
        """True when the index kind no longer fits its size (crossed exact_max, or the IVF outgrew its training)."""
        n = self.ntotal
        if self.kind == "flat":
            return n > exact_max
        if self.kind == "hnsw":
            return n < exact_max // 2 or len(self.deleted) > 0.2 * self.index.ntotal
        return n < exact_max // 2 or n > RETRAIN_GROWTH * max(self.trained_n, 1)

    @classmethod
    def build(cls, ids: np.ndarray, vecs: np.ndarray, dim: int, exact_max: int = EXACT_MAX,
              seed: int = 0, approx: str = APPROX_KIND) -> "KeyIndex":
        """An index of the kind that fits len(ids): exact up to exact_max, else `approx` (HNSW, or IVF trained
        on these keys)."""
        n = len(ids)
        if n <= exact_max:
            idx = cls(dim, "flat")
        elif approx == "hnsw":
            idx = cls(dim, "hnsw")
        else:
            nlist = ivf_nlist(n)
            idx = cls(dim, "ivf", nlist)
            rng = np.random.default_rng(seed)
            sample = vecs if n <= 64 * nlist else vecs[np.sort(rng.choice(n, 64 * nlist, replace=False))]
            idx.index.train(np.ascontiguousarray(sample, dtype=np.float32))
            idx.trained_n = n
        idx.add(ids, vecs)
        return idx

    @classmethod
    def open(cls, folder: Path, store, dim: int, write: bool = True, exact_max: int = EXACT_MAX,
             approx: str = APPROX_KIND) -> "KeyIndex":
        """Load keys.faiss if it matches the store exactly, else rebuild it from the stored embeddings."""
        import faiss

        path = Path(folder) / INDEX_FILE
        want = store.rowids()
        if path.exists():
            try:
                idx = cls.__new__(cls)
                idx.dim = dim
                idx.nprobe = DEFAULT_NPROBE
                idx.ef_search = DEFAULT_EF
                idx.index = faiss.read_index(str(path))
                idx.deleted = set()
                idx.trained_n = idx.ntotal
                try:
                    meta = json.loads((Path(folder) / META_FILE).read_text())
                    idx.trained_n = int(meta["trained_n"]) or idx.ntotal
                    idx.deleted = {int(i) for i in meta.get("deleted", [])}
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # without its tombstones an HNSW file disagrees with the store and is rebuilt
                if idx.index.d == dim and np.array_equal(idx.ids(), want) and not idx.wants_rebuild(exact_max):
                    return idx
            except RuntimeError:
                pass  # unreadable file: rebuilt below
        ids, vecs = store.embeddings()
        idx = cls.build(ids, vecs if len(ids) else np.zeros((0, dim), np.float32), dim, exact_max, approx=approx)
        if write:
            idx.save(folder)
        return idx
