"""Router test helpers: synthetic keys, a fake store, and a knowledge-base store of data/sample built
without compiling (atoms, synthesised questions and keys exactly as ingest makes them, no weights:
routing needs none). Not a conftest.py: a second module named `conftest` would shadow tests/conftest.py
for the `from conftest import ...` that other test folders use."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE


def clustered_keys(n: int, d: int = 384, seed: int = 0, per_topic: int = 50) -> np.ndarray:
    """(n, d) float32 unit keys in topic clusters, the shape real atom keys have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_topic), d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + 0.9 * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FakeStore:
    """The two store calls KeyIndex.open makes."""

    def __init__(self, ids, vecs):
        self.ids, self.vecs = np.asarray(ids, np.int64), np.asarray(vecs, np.float32)

    def rowids(self):
        return np.sort(self.ids)

    def embeddings(self):
        o = np.argsort(self.ids)
        return self.ids[o], self.vecs[o]


def commit_docs(store, paths: list[Path], nlp, emb, n_questions: int = 6) -> tuple[list[int], np.ndarray]:
    """Atomize, synthesise and key the documents under `paths` and commit them as ingest does (no weights).

    Returns the new atom rowids and their key vectors (n, d), what `Router.on_commit` takes."""
    from compiler.synth import questions as synth
    from doc2atom.atomizer import atomize_many
    from doc2atom.readers import expand_paths, read_file
    from router.embed import atom_key_vectors

    docs = [d for f in expand_paths([str(p) for p in paths]) for d in read_file(f)]
    ids, vecs = [], []
    for d, drafts in zip(docs, atomize_many(docs, nlp)):
        qs = [synth(a.text, nlp, n_questions) for a in drafts]
        v = atom_key_vectors(emb, [a.key for a in drafts], qs)
        ids += [int(a[1:]) for a in store.commit_document(d, drafts, None, [{"questions": q} for q in qs], v)]
        vecs.append(v)
    return ids, np.concatenate(vecs) if vecs else np.zeros((0, emb.dim), np.float32)


def build_store(folder: Path, paths: list[Path], nlp, emb, n_questions: int = 6):
    from doc2atom.store import KBStore

    store = KBStore(folder, create=True)
    commit_docs(store, paths, nlp, emb, n_questions)
    return store


@pytest.fixture(scope="session")
def embedder():
    from router.embed import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def sample_kb_master(tmp_path_factory, nlp, embedder) -> Path:
    """data/sample as a store plus calibrated router files, built once per session."""
    from router.router import Router

    folder = tmp_path_factory.mktemp("router_kb") / "kb"
    store = build_store(folder, [SAMPLE], nlp, embedder)
    Router.open(folder, store, embedder).calibrate()
    store.close()
    return folder


@pytest.fixture()
def sample_kb(sample_kb_master, tmp_path) -> Path:
    """A private copy of the sample KB folder (tests may change it)."""
    dest = tmp_path / "kb"
    shutil.copytree(sample_kb_master, dest)
    return dest
