"""An ingest killed with SIGKILL mid-way leaves a KB that opens, holds a consistent earlier
state, and completes on re-run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, fast_compile
from router.index import KeyIndex
from serving.pipeline import KnowledgeBase

SCRIPT = """
import sys
from compiler.config import CompileConfig
from serving.pipeline import KnowledgeBase
cfg = CompileConfig(min_steps=30, max_steps=30, questions=2, questions_per_step=1, batch_atoms=1)
KnowledgeBase(sys.argv[1], base_model=sys.argv[2], compile_config=cfg, progress=False).ingest([sys.argv[3]])
"""


def _docs_in(db):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_sigkill_mid_ingest_keeps_last_consistent_state(tmp_path, tiny_base):
    docs = tmp_path / "docs"
    docs.mkdir()
    n = 12
    for i in range(n):
        (docs / f"d{i:02d}.txt").write_text(f"The lighthouse number {i} was painted red in the year {1900 + i}.")
    kb = tmp_path / "kb"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(kb), str(tiny_base), str(docs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    killed_at = 0
    while time.time() < deadline and proc.poll() is None:
        killed_at = _docs_in(kb / "kb.sqlite")
        if killed_at >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed; make it slower"
    assert 2 <= killed_at < n

    k = KnowledgeBase(kb, base_model=str(tiny_base), create=False, compile_config=fast_compile(), progress=False)
    have = len(k.store.documents())
    assert killed_at <= have < n
    # every atom's weights load, and the key index holds exactly the store's atoms
    ids = [a.id for a in k.atoms()]
    assert len(ids) == have
    k.store.load_weights(ids)
    assert np.array_equal(k.index().ids(), k.store.rowids())
    assert np.array_equal(KeyIndex.open(kb, k.store, k.embedder().dim, write=False).ids(), k.store.rowids())

    rep = k.ingest([str(docs)])
    assert len(rep.unchanged) == have and len(rep.added) == n - have
    assert len(k.store.documents()) == n and len(k.atoms()) == n
    assert np.array_equal(k.index().ids(), k.store.rowids())
    # no orphan shard is left behind
    used = {k.atom(a.id)["shard"] for a in k.atoms()}
    assert {p.name for p in k.store.shards.iterdir()} == used
