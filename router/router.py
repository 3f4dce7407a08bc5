"""`Router`: the one object the pipeline calls to route questions and to keep the indices in sync.

route(q) = hybrid candidates (dense key index top-C  ∪  BM25 top-C)
           -> features -> learned probability p per candidate (router/learned.py)
           -> refuse when the best p is under the calibrated threshold (or let the base answer)
           -> keep the top_k by p, composition weight p / p_best
           -> multi-hop: a second round conditioned on the best atom (router/multihop.py)

Files it owns in the KB folder, all derived from kb.sqlite and rebuilt when they disagree
with it (the store is the truth): keys.faiss (+ keys.json), lexical/, router.json (the
learned weights and the calibrated threshold). The router only reads the store, through its own
per-thread SQLite connections (StoreReader).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np

from router import nearmiss
from router.index import KeyIndex
from router.learned import DEFAULT_WEIGHTS, FEATURES, Candidates, LearnedRouter, features, rrf
from router.lexical import LexicalIndex, special_tokens, tokenize
from router.select import AtomScore, Route, RouterConfig

ROUTER_FILE = "router.json"
DEFAULT_THRESHOLD = 0.5  # used until a knowledge base is calibrated (fewer than MIN_CALIBRATION_ATOMS atoms)
MIN_CALIBRATION_ATOMS = 4
RECALIBRATE_GROWTH = 0.25  # recalibrate once the atom count moved by this share since the last calibration


def _log(msg: str) -> None:
    print(f"doc2atom: {msg}", file=sys.stderr, flush=True)


class StoreReader:
    """Read-only access to the KB's atoms through one SQLite connection per thread.

    The router is called from whichever thread routes (the HTTP server routes on its worker
    thread, which swaps in its own KBStore), and an SQLite connection may only be used by the
    thread that opened it; so the router never uses the pipeline's connection after `open`."""

    def __init__(self, folder: Path):
        self.db = Path(folder) / "kb.sqlite"
        self.local = threading.local()

    def conn(self) -> sqlite3.Connection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = sqlite3.connect(str(self.db), timeout=30)
        return c

    def rowids(self) -> np.ndarray:
        return np.array([r[0] for r in self.conn().execute("SELECT rowid FROM atoms ORDER BY rowid")], dtype=np.int64)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.conn().execute("SELECT rowid, embedding FROM atoms ORDER BY rowid").fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return (np.array([r[0] for r in rows], dtype=np.int64),
                np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))

    def rows(self, cols: str, rowids=None) -> list[tuple]:
        """(rowid, cols...) of all atoms or of the given rowids, by rowid."""
        if rowids is None:
            return self.conn().execute(f"SELECT rowid, {cols} FROM atoms ORDER BY rowid").fetchall()
        rowids = [int(r) for r in rowids]
        out = []
        for s in range(0, len(rowids), 500):
            part = rowids[s:s + 500]
            out += self.conn().execute(
                f"SELECT rowid, {cols} FROM atoms WHERE rowid IN ({','.join('?' * len(part))})", part).fetchall()
        return sorted(out)


class Router:
    """Routing for one knowledge base: dense + lexical indices, the learned reranker, refusal, multi-hop."""

    def __init__(self, folder: Path, store, embedder, config: RouterConfig, dense: KeyIndex,
                 lexical: LexicalIndex | None, state: dict, write: bool = True):
        self.folder = Path(folder)
        self.store = StoreReader(self.folder)  # never the caller's connection (see StoreReader)
        self.embedder = embedder
        self.config = config
        self.dense = dense
        self._tune_dense()
        self.lexical = lexical  # None = stale, rebuilt on next use
        self.state = state
        self.model = LearnedRouter.from_dict(state["weights"]) if "weights" in state else LearnedRouter()
        self.write = write
        self._texts: dict[int, str] = {}  # rowid -> atom text, for multi-hop (small LRU-less cache)
        self._words: dict[int, tuple[set[str], bool]] = {}  # rowid -> (lower-cased words, negated), near-miss signals

    # -- opening and persistence ------------------------------------------------------------

    @classmethod
    def open(cls, folder, store, embedder, config: RouterConfig | None = None, write: bool = True) -> "Router":
        """Open the KB's router files, rebuilding whichever disagrees with the store.

        store: the KB's KBStore; only its folder's kb.sqlite is read, through the router's own
        per-thread connections, so the router may be used from any thread."""
        config = config or RouterConfig()
        folder = Path(folder)
        store = StoreReader(folder)
        dense = KeyIndex.open(folder, store, embedder.dim, write=write, exact_max=config.exact_max,
                              approx=config.approx)
        lexical = LexicalIndex.load(folder)
        if lexical is not None and not np.array_equal(lexical.rowids, store.rowids()):
            lexical = None
        state = {}
        try:
            state = json.loads((folder / ROUTER_FILE).read_text())
            LearnedRouter.from_dict(state["weights"])
        except (OSError, ValueError, KeyError, TypeError):
            state = {}
        r = cls(folder, store, embedder, config, dense, lexical, state, write)
        r._ensure_lexical()
        return r

    def _tune_dense(self) -> None:
        self.dense.nprobe = self.config.nprobe
        self.dense.ef_search = self.config.ef_search

    def _ensure_lexical(self) -> LexicalIndex:
        if self.lexical is None:
            rows = self.store.rows("key")
            self.lexical = LexicalIndex.build(np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows])
            if self.write:
                self.lexical.save(self.folder)
        return self.lexical

    def _save_state(self) -> None:
        tmp = self.folder / f".{ROUTER_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(tmp, self.folder / ROUTER_FILE)

    @property
    def threshold(self) -> float:
        if self.config.threshold is not None:
            return float(self.config.threshold)
        return float(self.state.get("threshold", DEFAULT_THRESHOLD))

    # -- keeping in sync with the store -----------------------------------------------------

    def on_commit(self, added, removed, vecs) -> None:
        """Apply one committed store change: atoms `removed` (rowids) are gone, `added` (rowids) with key
        vectors `vecs` (len(added), dim) float32 are new. Call after the SQLite commit.

        The dense index is updated and saved now (temp file + rename); the BM25 index is marked
        stale and rebuilt once, at the next query or `flush()`. If the save fails the exception
        propagates, this router keeps serving from memory (which matches the store), and the
        stale file on disk is rebuilt from the store by the next `open`."""
        added = np.asarray(list(added), dtype=np.int64)
        removed = np.asarray(list(removed), dtype=np.int64)
        self.dense.remove(removed)
        if len(added):
            self.dense.add(added, np.asarray(vecs, dtype=np.float32).reshape(len(added), -1))
        for r in removed:
            self._texts.pop(int(r), None)
            self._words.pop(int(r), None)
        if self.dense.wants_rebuild(self.config.exact_max):
            ids, v = self.store.embeddings()
            self.dense = KeyIndex.build(ids, v if len(ids) else np.zeros((0, self.embedder.dim), np.float32),
                                        self.embedder.dim, self.config.exact_max, approx=self.config.approx)
            self._tune_dense()
        if len(added) or len(removed):
            self.lexical = None
        if self.write:
            self.dense.save(self.folder)

    def flush(self, calibrate: bool = True) -> None:
        """After a batch of commits: rebuild and save the BM25 index, and recalibrate if the KB changed enough."""
        self._ensure_lexical()
        if calibrate and self.needs_calibration():
            self.calibrate()

    def needs_calibration(self) -> bool:
        n = self.dense.ntotal
        done = int(self.state.get("calibrated_atoms", 0))
        if n < MIN_CALIBRATION_ATOMS:
            return False
        # a calibration from before the fit was checked against the defaults ("chosen" in its metrics) is redone
        # at the next write, so that a saturated fit of a small KB does not stay
        stale = done > 0 and "chosen" not in self.state.get("metrics", {})
        return done == 0 or stale or abs(n - done) > RECALIBRATE_GROWTH * done

    def calibrate(self, seed: int = 0, max_atoms: int = 400, **fit) -> dict:
        """Fit the learned router and the refusal threshold on this KB's synthesised questions; save router.json.

        fit: `prior` and `l2` for LearnedRouter.fit (defaults: DEFAULT_WEIGHTS, 1.0)."""
        from router.calibrate import calibrate

        state = calibrate(self, seed=seed, max_atoms=max_atoms, **fit)
        if state is None:
            return {}
        self.state = state
        self.model = LearnedRouter.from_dict(state["weights"])
        if self.write:
            self._save_state()
        return state

    # -- routing ----------------------------------------------------------------------------

    def candidates(self, qvecs: np.ndarray, qtexts: list[str], force: list[list[int]] | None = None,
                   dense_override: list[dict[int, float]] | None = None, exclude: list[set[int]] | None = None,
                   extra_tokens: list[list[str]] | None = None,
                   name_texts: list[str] | None = None) -> list[Candidates]:
        """Hybrid candidates per question: dense top-C ∪ BM25 top-C, with every raw signal.

        qvecs (n, dim) float32 unit question vectors; qtexts the question texts. force[i]: atoms added
        whatever their ranks; dense_override[i]: {atom: cosine} used instead of the index's (calibration
        scores an atom against its leave-one-out key); exclude[i]: atoms left out; extra_tokens[i]: lexical
        tokens added to the query; name_texts[i]: the text whose names and numbers the atom must have (default
        the question; the second multi-hop round passes the original question, not the one with bridge words)."""
        lex = self._ensure_lexical()
        C = self.config.candidates
        n = len(qtexts)
        qtoks = tokenize(qtexts)
        if extra_tokens:
            qtoks = [t + e for t, e in zip(qtoks, extra_tokens)]
        ds, di = self.dense.search(qvecs, C + (max(len(e) for e in exclude) if exclude else 0))
        ls, li = lex.search(qtoks, C)
        out = []
        for q in range(n):
            ex = exclude[q] if exclude else set()
            dl = [(float(s), int(i)) for s, i in zip(ds[q], di[q]) if i >= 0 and int(i) not in ex]
            if dense_override and dense_override[q]:
                ov = dense_override[q]
                dl = [(ov.get(i, s), i) for s, i in dl]
                have = {i for _, i in dl}
                dl += [(s, i) for i, s in ov.items() if i not in have]
                dl.sort(key=lambda t: -t[0])
            dl = dl[:C]
            ll = [int(i) for s, i in zip(ls[q], li[q]) if i >= 0 and int(i) not in ex]
            ids = list(dict.fromkeys([i for _, i in dl] + ll + [i for i in (force[q] if force else []) if i not in ex]))
            if not ids:
                out.append(_empty())
                continue
            ids_a = np.array(ids, dtype=np.int64)
            drank = {i: r + 1 for r, (_, i) in enumerate(dl)}
            lrank = {i: r + 1 for r, i in enumerate(ll)}
            dscore = {i: s for s, i in dl}
            miss = [i for i in ids if i not in dscore]
            if miss:
                vv = self.dense.vectors(miss) @ qvecs[q]
                for i, s in zip(miss, vv):
                    dscore[i] = float((dense_override[q] if dense_override else {}).get(i, s))
            out.append(self._signals(ids_a, np.array([dscore[i] for i in ids], np.float32),
                                     np.array([drank.get(i, 0) for i in ids]),
                                     np.array([lrank.get(i, 0) for i in ids]), qtoks[q],
                                     name_texts[q] if name_texts else qtexts[q]))
        return out

    def _signals(self, ids, dense, drank, lrank, qtok: list[str], qtext: str) -> Candidates:
        lex = self.lexical
        m = len(ids)
        toks = list(dict.fromkeys(qtok))
        names = special_tokens(qtext)
        ts = lex.term_scores(toks, ids)  # (T, m)
        idf = lex.idf(toks)
        present = ts > 0
        cover = (idf @ present) / idf.sum() if len(toks) and idf.sum() > 0 else np.zeros(m, np.float32)
        if names:
            nts = lex.term_scores(names, ids) > 0
            known_n = lex.known(names)
            name_miss = 1.0 - nts.mean(axis=0)
            name_miss_kb = (~nts & known_n[:, None]).mean(axis=0)
            name_oov = float(1.0 - known_n.mean())
        else:
            name_miss = name_miss_kb = np.zeros(m, np.float32)
            name_oov = 0.0
        other = [t for t in toks if t not in names]
        if other:
            oidf = lex.idf(other)
            word_oov = float((oidf * ~lex.known(other)).sum() / max(oidf.sum(), 1e-9))
        else:
            word_oov = 0.0
        qw, qneg = nearmiss.words(qtext), nearmiss.negated(qtext)
        aw = self.atom_words(ids)
        neg = np.array([aw[int(i)][1] != qneg for i in ids], np.float32)
        ant = np.array([nearmiss.antonym_clash(qw, aw[int(i)][0]) for i in ids], np.float32)
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return Candidates(ids=ids, dense=dense, bm25=ts.sum(axis=0).astype(np.float32), cover=f32(cover),
                          name_miss=f32(name_miss), dense_rank=drank, lex_rank=lrank, name_oov=name_oov,
                          word_oov=word_oov, name_miss_kb=f32(name_miss_kb), neg_mismatch=neg, antonym=ant)

    def atom_words(self, rowids) -> dict[int, tuple[set[str], bool]]:
        """(lower-cased words, negated) of each atom's text, cached: the near-miss signals' view of an atom."""
        want = [int(r) for r in rowids if int(r) not in self._words]
        if want:
            if len(self._words) > 100_000:
                self._words.clear()
            for rid, text in self.store.rows("text", want):
                self._words[rid] = (nearmiss.words(text), nearmiss.negated(text))
        return {int(r): self._words.get(int(r), (set(), False)) for r in rowids}

    def score(self, c: Candidates) -> np.ndarray:
        """Learned probability per candidate (m,) float32."""
        if not len(c.ids):
            return np.zeros(0, np.float32)
        return self.model.prob(features(c, self.config.rrf_k))

    def route(self, questions: list[str], top_k: int | None = None) -> list[Route]:
        """One Route per question: atoms best first with weights, or a refusal."""
        if not questions:
            return []
        k = top_k or self.config.top_k
        thr = self.threshold
        qv = self.embedder(questions)
        cands = self.candidates(qv, questions)
        routes = []
        pending = {}  # question -> its refused Route, kept only if the second round finds the missing names
        hop = self.config.multihop and self.config.max_hop_atoms
        for q, c in enumerate(cands):
            p = self.score(c)
            if not len(p):
                routes.append(Route([], [], [], True, float("-inf"), self.config.allow_base, thr))
                continue
            order = np.lexsort((-rrf(c.dense_rank, c.lex_rank, self.config.rrf_k), -p))
            best = float(p[order[0]])
            if best < thr:
                j = order[0]
                refusal = Route([], [], [], True, best, self.config.allow_base, thr, [self._detail(c, p, j, 0.0)])
                # A question may name things that live in two atoms ("home to both the Korrin Bridge and the
                # Mirefield Otters"): for one atom that looks like a swapped name. Scored as if its names were
                # covered, it is routed, provided the second round then finds an atom, linked to the first by
                # a bridge word, that has the missing words; otherwise it stays refused.
                pp = self.score_names_covered(c) if hop else p
                if float(pp.max()) >= thr:
                    p = pp
                    order = np.lexsort((-rrf(c.dense_rank, c.lex_rank, self.config.rrf_k), -p))
                    best = float(p[order[0]])
                    pending[q] = refusal
                else:
                    routes.append(refusal)
                    continue
            # a rescued question is answered by its best atom and the second round's partner, nothing else
            keep = [order[0]] if q in pending else [j for j in order[:k] if p[j] >= best - self.config.margin]
            details = [self._detail(c, p, j, float(p[j]) / best) for j in keep]
            routes.append(Route([int(c.ids[j]) for j in keep], [float(p[j]) for j in keep],
                                [d.weight for d in details], False, best, False, thr, details))
        if hop:
            from router.multihop import second_round

            second_round(self, questions, routes)
        for q, refusal in pending.items():
            if not any(d.hop == 2 for d in routes[q].details):
                routes[q] = refusal
        return routes

    def gate(self, questions: list[str], atoms: list[list[int]], routes: list[Route] | None = None) -> list[list[float]]:
        """Composition weight of each atom in atoms[i] for question i, from its learned score p for the question:
        0 when p is under the refusal threshold (the atom is left out), else min(1, p / reference), where the
        reference is the question's best routed score (or the threshold when nothing was routed). An atom the
        router would not pick for a question therefore cannot change its answer, and one it would pick weighs
        what a routed atom of that score weighs."""
        out: list[list[float]] = [[] for _ in questions]
        todo = [i for i, a in enumerate(atoms) if a]
        if not todo:
            return out
        thr = self.threshold
        texts = [questions[i] for i in todo]
        cands = self.candidates(self.embedder(texts), texts, force=[[int(a) for a in atoms[i]] for i in todo])
        for i, c in zip(todo, cands):
            p = dict(zip((int(x) for x in c.ids), (float(x) for x in self.score(c))))
            ref = thr
            if routes is not None and not routes[i].refused and routes[i].ids:
                ref = max(routes[i].best, thr)
            ref = max(ref, 1e-9)
            out[i] = [round(min(1.0, p.get(int(a), 0.0) / ref), 4) if p.get(int(a), 0.0) >= thr else 0.0
                      for a in atoms[i]]
        return out

    def score_names_covered(self, c: Candidates) -> np.ndarray:
        """Learned probability per candidate (m,) with the in-KB missing-name signal off (`route` uses it only
        when the second round supplies the missing names)."""
        if not len(c.ids) or c.name_miss_kb is None:
            return self.score(c)
        F = features(c, self.config.rrf_k)
        F[:, FEATURES.index("name_miss_kb")] = 0.0
        return self.model.prob(F)

    @staticmethod
    def _detail(c: Candidates, p: np.ndarray, j: int, weight: float, hop: int = 1) -> AtomScore:
        return AtomScore(id=int(c.ids[j]), dense=round(float(c.dense[j]), 4), lexical=round(float(c.bm25[j]), 4),
                         cover=round(float(c.cover[j]), 4), learned=round(float(p[j]), 4),
                         weight=round(weight, 4), hop=hop)

    def texts(self, rowids) -> dict[int, str]:
        """Atom texts by rowid (cached)."""
        want = [int(r) for r in rowids if int(r) not in self._texts]
        if want:
            if len(self._texts) > 100_000:
                self._texts.clear()
            for rid, text in self.store.rows("text", want):
                self._texts[rid] = text
        return {int(r): self._texts[int(r)] for r in rowids if int(r) in self._texts}

    def info(self) -> dict:
        return {"atoms": self.dense.ntotal, "index": self.dense.kind, "threshold": round(self.threshold, 4),
                "calibrated": bool(self.state.get("calibrated_atoms")), "weights": self.model.as_dict(),
                "calibration": self.state.get("metrics", {})}


def _empty() -> Candidates:
    z = np.zeros(0, np.float32)
    return Candidates(np.zeros(0, np.int64), z, z, z, z, np.zeros(0, int), np.zeros(0, int), 0.0, 0.0)


__all__ = ["Router", "RouterConfig", "Route", "AtomScore", "DEFAULT_WEIGHTS", "StoreReader"]
