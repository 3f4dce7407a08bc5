"""The knowledge base on disk: SQLite manifest + safetensors weight shards.

Layout of a KB folder:
  kb.sqlite            documents, atoms (with their key embeddings), atom_sources (every document
                       span that states an atom: near-duplicates across documents are one atom
                       with several provenances), meta (base model, settings, schema version)
  shards/*.safetensors atom weights, many atoms per file, fp16; tensors `<module>.A` (n, r, d_in)
                       and `<module>.B` (n, d_out, r); an atom is one row (its `offset`) of each
  keys.faiss           the key index (owned by the router; rebuilt from the embeddings here
                       whenever it disagrees with kb.sqlite)

SQLite is the source of truth. A shard is written completely (temp name, fsync, rename)
before the transaction that references it, so a crash at any point leaves either the old
state or the new one; unreferenced shards are garbage and are removed by the next writer.
An atom lives while it has a provenance: forgetting (or replacing) a document removes its
provenance rows, and deletes only the atoms left with none. The atom row's own doc_id/start/end
mirror its first provenance (the `source` of AtomOut).
This module must never import torch at module level, nor anything from compiler/router/serving.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from doc2atom import errors
from doc2atom.merge import signature_key
from doc2atom.schemas import AtomDraft, AtomOut, Document, Source

SCHEMA_VERSION = "2"  # 2: atom_sources (several provenances per atom) and atoms.sig; 1 is migrated on open
SHARD_FORMAT = "doc2atom-shard/1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, title TEXT NOT NULL, sha256 TEXT NOT NULL,
    text TEXT NOT NULL, status TEXT NOT NULL, n_atoms INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS atoms (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    type TEXT NOT NULL, text TEXT NOT NULL, key TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    shard TEXT NOT NULL, offset INTEGER NOT NULL,
    stats TEXT NOT NULL, embedding BLOB NOT NULL,
    sig TEXT
);
CREATE TABLE IF NOT EXISTS atom_sources (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    atom_id INTEGER NOT NULL REFERENCES atoms(rowid) ON DELETE CASCADE,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    path TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    UNIQUE (atom_id, doc_id, start, "end")
);
"""
# after the migration (an old atoms table gets its sig column first)
_INDEXES = """
CREATE INDEX IF NOT EXISTS atoms_doc ON atoms(doc_id);
CREATE INDEX IF NOT EXISTS atoms_shard ON atoms(shard);
CREATE INDEX IF NOT EXISTS atoms_sig ON atoms(sig);
CREATE INDEX IF NOT EXISTS atom_sources_doc ON atom_sources(doc_id);
"""
# 1-based line of a source's start, counted in SQL so that document texts stay in the database
_LINE = "length(substr(d.text, 1, s.start)) - length(replace(substr(d.text, 1, s.start), char(10), '')) + 1"


class Committed(NamedTuple):
    ids: list[str]  # ids of the atoms the commit created, in draft order
    removed: list[int]  # rowids of the atoms it deleted (their last provenance went)


def atom_id(rowid: int) -> str:
    return f"a{rowid}"


def parse_atom_id(aid: str) -> int:
    if not isinstance(aid, str) or not aid.startswith("a") or not aid[1:].isdigit():
        raise errors.unknown_atom(str(aid))
    return int(aid[1:])


class KBStore:
    """One knowledge-base folder. Open read-only for asking, or with `create=True` to ingest."""

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = Path(path).expanduser().resolve()
        db = self.path / "kb.sqlite"
        if not db.exists():
            if not create:
                raise errors.no_kb(str(path))
            if self.path.exists() and not self.path.is_dir():
                raise errors.InputError(f"--kb {path}: exists and is not a folder.")
            (self.path / "shards").mkdir(parents=True, exist_ok=True)
        self.shards = self.path / "shards"
        self.conn = sqlite3.connect(str(db), isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)
            if self.get_meta("schema") is None:
                self._set_meta("schema", SCHEMA_VERSION)
            if self.get_meta("schema") == "1":
                self._migrate_from_1()
            if self.get_meta("schema") == SCHEMA_VERSION:
                for stmt in _INDEXES.split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
        if self.get_meta("schema") != SCHEMA_VERSION:
            raise errors.KBError(f"{self.path}: knowledge-base schema {self.get_meta('schema')} is not supported "
                                 f"(this doc2atom reads {SCHEMA_VERSION}); re-ingest into a new --kb.")

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2, inside the opening transaction: every atom gets one provenance row from its
        own columns, and its signature key (computed from its text; no model is needed)."""
        if "sig" not in {r[1] for r in self.conn.execute("PRAGMA table_info(atoms)")}:
            self.conn.execute("ALTER TABLE atoms ADD COLUMN sig TEXT")
        self.conn.execute(
            'INSERT OR IGNORE INTO atom_sources(atom_id, doc_id, path, start, "end") '
            'SELECT a.rowid, a.doc_id, d.path, a.start, a."end" FROM atoms a JOIN documents d ON d.id = a.doc_id '
            "ORDER BY a.rowid")
        sigs = [(signature_key(text), rid) for rid, text in self.conn.execute("SELECT rowid, text FROM atoms")]
        self.conn.executemany("UPDATE atoms SET sig = ? WHERE rowid = ?", sigs)
        self._set_meta("schema", SCHEMA_VERSION)

    # -- transactions and locking ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Exclusive writer lock across processes (ingest, forget)."""
        with open(self.path / "kb.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def close(self) -> None:
        self.conn.close()

    # -- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._set_meta(key, value)

    def bind_base(self, name: str, sha: str, settings: dict) -> None:
        """Record the base model and compile settings on first use; refuse another base later."""
        kb_sha = self.get_meta("base_sha256")
        if kb_sha is None:
            with self.transaction():
                self._set_meta("base_name", name)
                self._set_meta("base_sha256", sha)
                self._set_meta("settings", json.dumps(settings, sort_keys=True))
            return
        self.check_base(name, sha)

    def check_base(self, name: str, sha: str) -> None:
        kb_sha = self.get_meta("base_sha256")
        if kb_sha is not None and kb_sha != sha:
            raise errors.base_mismatch(str(self.path), self.get_meta("base_name") or "?", kb_sha, name, sha)

    def settings(self) -> dict:
        s = self.get_meta("settings")
        return json.loads(s) if s else {}

    # -- documents ------------------------------------------------------------------------

    def document(self, doc: str) -> dict | None:
        """A document row by id or by path."""
        row = self.conn.execute(
            "SELECT id, path, title, sha256, text, status, n_atoms FROM documents WHERE id = ? OR path = ?",
            (doc, doc)).fetchone()
        if row is None and os.path.exists(doc):
            row = self.conn.execute(
                "SELECT id, path, title, sha256, text, status, n_atoms FROM documents WHERE path = ?",
                (str(Path(doc).resolve()),)).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "path", "title", "sha256", "text", "status", "n_atoms"), row))

    def documents(self) -> list[dict]:
        rows = self.conn.execute("SELECT id, path, title, sha256, n_atoms FROM documents ORDER BY path").fetchall()
        return [dict(zip(("id", "path", "title", "sha256", "n_atoms"), r)) for r in rows]

    def is_current(self, doc: Document) -> bool:
        row = self.conn.execute("SELECT sha256 FROM documents WHERE id = ? AND status = 'ready'", (doc.id,)).fetchone()
        return row is not None and row[0] == doc.sha256

    # -- shards ---------------------------------------------------------------------------

    def write_shard(self, tensors: dict[str, "object"], n: int) -> str:
        """Write one shard atomically; returns its file name. tensors: name -> torch fp16 tensor with n rows."""
        from safetensors.torch import save_file

        name = f"{uuid.uuid4().hex}.safetensors"
        tmp = self.shards / f".{name}.tmp"
        modules = sorted({k.rsplit(".", 1)[0] for k in tensors})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": SHARD_FORMAT, "n": str(n), "modules": json.dumps(modules)})
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.shards / name)
        return name

    def gc_shards(self) -> int:
        """Delete shard files no atom row references (left by a crash or a forget). Call under writer()."""
        used = {r[0] for r in self.conn.execute("SELECT DISTINCT shard FROM atoms")}
        n = 0
        for f in self.shards.iterdir():
            if f.name not in used and (f.suffix == ".safetensors" or f.name.endswith(".tmp")):
                f.unlink(missing_ok=True)
                n += 1
        return n

    def load_weights(self, ids: list[str]) -> dict[str, tuple["object", "object"]]:
        """Stack the named atoms' weights: module -> (A (n, r, d_in), B (n, d_out, r)), fp32, in `ids` order."""
        import torch
        from safetensors import safe_open

        rows = self._rows_by_ids(ids, "shard, offset")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, (shard, off) in enumerate(rows):
            by_shard.setdefault(shard, []).append((pos, off))
        out: dict[str, list] = {}
        for shard, items in by_shard.items():
            path = self.shards / shard
            if not path.exists():
                raise errors.bad_weights(str(path), "shard file missing")
            try:
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        sl = f.get_slice(key)
                        for pos, off in items:
                            t = sl[off:off + 1][0].float()
                            if not torch.isfinite(t).all():
                                raise errors.bad_weights(f"{path}[{key}][{off}]", "NaN or infinite values")
                            out.setdefault(key, [None] * len(ids))[pos] = t
            except errors.Doc2AtomError:
                raise
            except Exception as e:  # truncated or malformed file
                raise errors.bad_weights(str(path), f"{type(e).__name__}: {e}") from None
        modules = sorted({k.rsplit(".", 1)[0] for k in out})
        return {m: (torch.stack(out[m + ".A"]), torch.stack(out[m + ".B"])) for m in modules}

    # -- atoms ----------------------------------------------------------------------------

    def commit_document(self, doc: Document, drafts: list[AtomDraft], shard: str | None,
                        stats: list[dict], embeddings: np.ndarray) -> list[str]:
        """Replace `doc` and its atoms in one transaction; returns the new atom ids (see `commit`)."""
        return self.commit(doc, drafts, shard, stats, embeddings).ids

    def commit(self, doc: Document, drafts: list[AtomDraft], shard: str | None, stats: list[dict],
               embeddings: np.ndarray, spans: list[list[tuple[int, int]]] | None = None,
               links: list[tuple[str, int, int]] = ()) -> Committed:
        """Replace `doc`'s provenance in one transaction.

        drafts: atoms `doc` introduces (row i of `shard`, with stats[i] and embeddings[i]);
        spans[i]: every span of `doc` that states drafts[i] (default: the draft's own span);
        links: (existing atom id, start, end) spans of `doc` that state an atom already stored.
        The document's previous provenance is dropped first; atoms left without any are deleted.
        """
        assert len(drafts) == len(stats) == len(embeddings)
        spans = spans if spans is not None else [[(d.start, d.end)] for d in drafts]
        assert len(spans) == len(drafts) and all(spans), "each new atom needs at least one span"
        with self.transaction():
            old = self._atoms_of(doc.id)
            self.conn.execute("DELETE FROM atom_sources WHERE doc_id = ?", (doc.id,))
            if self.conn.execute("SELECT 1 FROM documents WHERE id = ?", (doc.id,)).fetchone():
                self.conn.execute(
                    "UPDATE documents SET path = ?, title = ?, sha256 = ?, text = ?, status = 'ready', created = ? "
                    "WHERE id = ?", (doc.path, doc.title, doc.sha256, doc.text, time.time(), doc.id))
            else:
                self.conn.execute(
                    "INSERT INTO documents(id, path, title, sha256, text, status, n_atoms, created) "
                    "VALUES (?, ?, ?, ?, ?, 'ready', 0, ?)", (doc.id, doc.path, doc.title, doc.sha256, doc.text,
                                                               time.time()))
            ids = []
            for i, (d, st, emb, sp) in enumerate(zip(drafts, stats, embeddings, spans)):
                cur = self.conn.execute(
                    'INSERT INTO atoms(doc_id, type, text, key, start, "end", shard, offset, stats, embedding, sig) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (doc.id, d.type, d.text, d.key, sp[0][0], sp[0][1], shard or "", i, json.dumps(st),
                     np.asarray(emb, dtype=np.float32).tobytes(), signature_key(d.text)))
                ids.append(atom_id(cur.lastrowid))
                self._add_sources(cur.lastrowid, doc, sp)
            for aid, start, end in links:
                rid = parse_atom_id(aid)
                if self.conn.execute("SELECT 1 FROM atoms WHERE rowid = ?", (rid,)).fetchone() is None:
                    raise errors.unknown_atom(aid)  # rolls the whole document back
                self._add_sources(rid, doc, [(start, end)])
            removed = self._settle(old)
            self.conn.execute(
                "UPDATE documents SET n_atoms = (SELECT COUNT(DISTINCT atom_id) FROM atom_sources WHERE doc_id = ?) "
                "WHERE id = ?", (doc.id, doc.id))
        return Committed(ids, removed)

    def _atoms_of(self, doc_id: str) -> set[int]:
        rows = self.conn.execute("SELECT atom_id FROM atom_sources WHERE doc_id = ? UNION "
                                 "SELECT rowid FROM atoms WHERE doc_id = ?", (doc_id, doc_id))
        return {r[0] for r in rows}

    def _add_sources(self, rid: int, doc: Document, spans: list[tuple[int, int]]) -> None:
        for start, end in spans:
            if not 0 <= start <= end <= len(doc.text):
                raise errors.InputError(f"{doc.path}: span {start}:{end} is outside the document "
                                        f"({len(doc.text)} characters)")
            self.conn.execute('INSERT OR IGNORE INTO atom_sources(atom_id, doc_id, path, start, "end") '
                              "VALUES (?, ?, ?, ?, ?)", (rid, doc.id, doc.path, start, end))

    def _settle(self, rowids) -> list[int]:
        """Delete the given atoms that have no provenance left; point the others at their first one."""
        removed = []
        for rid in sorted(rowids):
            first = self.conn.execute('SELECT doc_id, start, "end" FROM atom_sources WHERE atom_id = ? '
                                      "ORDER BY rowid LIMIT 1", (rid,)).fetchone()
            if first is None:
                if self.conn.execute("DELETE FROM atoms WHERE rowid = ?", (rid,)).rowcount:
                    removed.append(rid)
            else:
                self.conn.execute('UPDATE atoms SET doc_id = ?, start = ?, "end" = ? WHERE rowid = ?', (*first, rid))
        return removed

    def atoms_by_signature(self, keys: list[str], exclude_docs=()) -> dict[str, str]:
        """signature key -> id of a stored atom with that key (the oldest) that has a provenance in a
        document outside `exclude_docs` (those being replaced by the same ingest, whose atoms may go)."""
        exclude = set(exclude_docs)
        out: dict[str, str] = {}
        keys = list(keys)
        for c in range(0, len(keys), 500):
            part = keys[c:c + 500]
            q = (f"SELECT a.sig, a.rowid, s.doc_id FROM atoms a JOIN atom_sources s ON s.atom_id = a.rowid "
                 f"WHERE a.sig IN ({','.join('?' * len(part))}) ORDER BY a.rowid")
            for sig, rid, did in self.conn.execute(q, part):
                if sig not in out and did not in exclude:
                    out[sig] = atom_id(rid)
        return out

    def own_atoms(self, doc_id: str) -> dict[tuple[str, str], str]:
        """(text, key) -> atom id of the atoms whose only provenance is `doc_id` (a document about to be replaced
        may keep them; an atom other documents state too is found by atoms_by_signature instead)."""
        rows = self.conn.execute(
            "SELECT a.rowid, a.text, a.key FROM atoms a WHERE a.rowid IN (SELECT atom_id FROM atom_sources "
            "WHERE doc_id = ?) AND NOT EXISTS (SELECT 1 FROM atom_sources s WHERE s.atom_id = a.rowid AND "
            "s.doc_id != ?) ORDER BY a.rowid", (doc_id, doc_id))
        out: dict[tuple[str, str], str] = {}
        for rid, text, key in rows:
            out.setdefault((text, key), atom_id(rid))
        return out

    def remove_document(self, doc: str) -> tuple[dict, list[int]]:
        """Forget `doc` in one transaction: its provenance goes, and every atom left without one.
        Returns (the forget report, rowids of the deleted atoms)."""
        row = self.document(doc)
        if row is None:
            raise errors.unknown_document(doc)
        with self.transaction():
            old = self._atoms_of(row["id"])
            self.conn.execute("DELETE FROM atom_sources WHERE doc_id = ?", (row["id"],))
            removed = self._settle(old)
            self.conn.execute("DELETE FROM documents WHERE id = ?", (row["id"],))
        return {"doc": row["id"], "path": row["path"], "atoms_removed": len(removed)}, removed

    def forget(self, doc: str) -> dict:
        return self.remove_document(doc)[0]

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(rowids int64 (n,), embeddings float32 (n, d)) of every atom, for rebuilding the key index."""
        rows = self.conn.execute("SELECT rowid, embedding FROM atoms ORDER BY rowid").fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def rowids(self) -> np.ndarray:
        return np.array([r[0] for r in self.conn.execute("SELECT rowid FROM atoms ORDER BY rowid")], dtype=np.int64)

    def count_atoms(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM atoms").fetchone()[0]

    def _rows_by_ids(self, ids: list[str], cols: str) -> list[tuple]:
        rowids = [parse_atom_id(a) for a in ids]
        found = {}
        for chunk in range(0, len(rowids), 500):
            part = rowids[chunk:chunk + 500]
            q = f"SELECT rowid, {cols} FROM atoms WHERE rowid IN ({','.join('?' * len(part))})"
            for r in self.conn.execute(q, part):
                found[r[0]] = r[1:]
        missing = [a for a, r in zip(ids, rowids) if r not in found]
        if missing:
            raise errors.unknown_atom(missing[0])
        return [found[r] for r in rowids]

    _ATOM_COLS = 'a.rowid, a.type, a.text, a.key, a.start, a."end", a.stats, a.doc_id, a.shard, a.offset'

    def sources(self, rowids: list[int], with_text: bool = False) -> dict[int, list]:
        """rowid -> every provenance of that atom, first (oldest) first: Source, or (Source, span text)."""
        out: dict[int, list] = {}
        rowids = list(dict.fromkeys(rowids))
        text = ', substr(d.text, s.start + 1, s."end" - s.start)' if with_text else ""
        for c in range(0, len(rowids), 500):
            part = rowids[c:c + 500]
            q = (f'SELECT s.atom_id, s.doc_id, s.path, s.start, s."end", {_LINE}{text} FROM atom_sources s '
                 f"JOIN documents d ON d.id = s.doc_id WHERE s.atom_id IN ({','.join('?' * len(part))}) "
                 f"ORDER BY s.rowid")
            for r in self.conn.execute(q, part):
                src = Source(doc=r[1], path=r[2], start=r[3], end=r[4], line=r[5])
                out.setdefault(r[0], []).append((src, r[6]) if with_text else src)
        return out

    def _atom_out(self, r: tuple, sources: list[Source], score: float | None = None,
                  weight: float | None = None) -> AtomOut:
        rowid, typ, text = r[:3]
        if not sources:  # cannot happen in a consistent KB; report the atom's own columns rather than fail
            sources = [Source(doc=r[7], path="", start=r[4], end=r[5])]
        return AtomOut(id=atom_id(rowid), type=typ, score=score, weight=weight, text=text,
                       source=sources[0], sources=sources)

    def atoms_out(self, ids: list[str], scores: list[float] | None = None,
                  weights: list[float] | None = None) -> list[AtomOut]:
        rowids = [parse_atom_id(a) for a in ids]
        found = {}
        for c in range(0, len(rowids), 500):
            part = rowids[c:c + 500]
            q = f"SELECT {self._ATOM_COLS} FROM atoms a WHERE a.rowid IN ({','.join('?' * len(part))})"
            found.update({r[0]: r for r in self.conn.execute(q, part)})
        srcs = self.sources([r for r in rowids if r in found])
        out = []
        for i, (aid, rid) in enumerate(zip(ids, rowids)):
            if rid not in found:
                raise errors.unknown_atom(aid)
            out.append(self._atom_out(found[rid], srcs.get(rid, []), scores[i] if scores else None,
                                      weights[i] if weights else None))
        return out

    def atom_detail(self, aid: str) -> dict:
        rid = parse_atom_id(aid)
        r = self.conn.execute(f"SELECT {self._ATOM_COLS} FROM atoms a WHERE a.rowid = ?", (rid,)).fetchone()
        if r is None:
            raise errors.unknown_atom(aid)
        srcs = self.sources([rid], with_text=True).get(rid, [])
        out = self._atom_out(r, [s for s, _ in srcs]).model_dump()
        out.update(key=r[3], stats=json.loads(r[6]), shard=r[8], offset=r[9],
                   source_text=srcs[0][1] if srcs else "", source_texts=[t for _, t in srcs])
        return out

    def list_atoms(self, doc: str | None = None, type: str | None = None) -> list[AtomOut]:
        """Atoms in rowid order; with `doc`, those that document states (as any of their provenances)."""
        q = f"SELECT {self._ATOM_COLS} FROM atoms a"
        cond, args = [], []
        if doc is not None:
            row = self.document(doc)
            if row is None:
                raise errors.unknown_document(doc)
            cond.append("a.rowid IN (SELECT atom_id FROM atom_sources WHERE doc_id = ?)")
            args.append(row["id"])
        if type is not None:
            cond.append("a.type = ?")
            args.append(type)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY a.rowid"
        rows = self.conn.execute(q, args).fetchall()
        srcs = self.sources([r[0] for r in rows])
        return [self._atom_out(r, srcs.get(r[0], [])) for r in rows]

    def atom_rowids_of_docs(self) -> dict[int, str]:
        """atom rowid -> the document of its first provenance (see `atom_docs` for all of them)."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT rowid, doc_id FROM atoms")}

    def atom_docs(self) -> dict[int, list[str]]:
        """atom rowid -> every document that states it, first provenance first."""
        out: dict[int, list[str]] = {}
        for rid, did in self.conn.execute("SELECT atom_id, doc_id FROM atom_sources ORDER BY rowid"):
            if did not in out.setdefault(rid, []):
                out[rid].append(did)
        return out
