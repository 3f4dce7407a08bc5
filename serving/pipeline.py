"""The pipeline: ingest = read -> atomize -> compile -> index; ask = route -> compose -> generate.

`KnowledgeBase` is the Python API (re-exported lazily as `doc2atom.KnowledgeBase`); the CLI
and the HTTP server are thin layers over it. Every write to the KB goes through the store's
transactions, so a crash at any point leaves the last consistent state.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.config import SPEED_FIELDS, CompileConfig
from doc2atom import errors
from doc2atom.grounding import repetition_start, unsupported
from doc2atom.readers import expand_paths, read_file
from doc2atom.schemas import Answer, Document, Signals
from doc2atom.store import KBStore, atom_id, parse_atom_id
from router.select import RouterConfig

MODES = ("atoms", "context", "hybrid", "base")
REFUSAL = "I don't know: no knowledge atom in this knowledge base covers that question."


def _log(msg: str) -> None:
    print(f"doc2atom: {msg}", file=sys.stderr, flush=True)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)  # paths of new or changed documents
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    atoms: int = 0  # atoms compiled (new)
    merged: int = 0  # spans that became a provenance of an atom already stored or compiled in this call
    reused: int = 0  # atoms a changed document kept unchanged from its previous version (not compiled again)
    seconds: float = 0.0
    compile_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"added": self.added, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": m} for p, m in self.failed], "atoms": self.atoms,
                "merged": self.merged, "reused": self.reused,
                "seconds": round(self.seconds, 2), "compile_seconds": round(self.compile_seconds, 2)}


def _merge_settings(stored: CompileConfig, given: CompileConfig | None) -> CompileConfig:
    """The settings an existing knowledge base compiles with: its stored ones, except that the speed settings
    (compiler.config.SPEED_FIELDS) the caller gave explicitly apply to this run (never stored). Explicitly given
    settings that would change what atoms become are refused with a warning: every atom of a knowledge base is
    compiled the same way."""
    if given is None:
        return stored
    speed = set(SPEED_FIELDS)
    if stored.compose_prob > 0:  # the summed-in atoms come from the batch: its size changes the atoms
        speed -= {"batch_atoms", "gpu_batch_atoms"}
    asked = {k: getattr(given, k) for k in given.model_fields_set if getattr(given, k) != getattr(stored, k)}
    fixed = sorted(k for k in asked if k not in speed)
    if fixed:
        _log(f"warning: this knowledge base was compiled with other settings for {', '.join(fixed)}; keeping the "
             "stored ones (only speed settings can change after the first ingest)")
    return stored.model_copy(update={k: v for k, v in asked.items() if k in speed})


class KnowledgeBase:
    """A knowledge base folder plus the models that serve it.

    KnowledgeBase(path).ingest(paths) compiles documents into atoms; .ask(question, mode=...)
    answers with them. Models load lazily, on first use.
    """

    def __init__(self, path: str | Path, base_model: str | None = None, create: bool = True,
                 compile_config: CompileConfig | None = None, router_config: RouterConfig | None = None,
                 progress: bool = True, device: str | None = None):
        self.store = KBStore(path, create=create)
        self.path = self.store.path
        self.base_model_arg = base_model
        self.progress = progress
        self.device_arg = device
        saved = self.store.settings()
        self.compile_config = (_merge_settings(CompileConfig(**saved["compile"]), compile_config)
                               if saved.get("compile") else compile_config or CompileConfig())
        self.router_config = router_config or RouterConfig()
        self._base = None
        self._model = None
        self._index = None
        self._embedder = None
        self._weights: OrderedDict[str, dict] = OrderedDict()
        self._weights_cap = 4096
        recorded = self.store.get_meta("base_name")
        if recorded is not None:
            self.base_info()  # refuses another base model early, before any work

    # -- lazy components --------------------------------------------------------------------

    def base_info(self):
        if self._base is None:
            from doc2atom.models import DEFAULT_BASE, resolve_base

            arg = self.base_model_arg
            recorded = self.store.get_meta("base_name")
            if arg is None and recorded is not None and recorded != DEFAULT_BASE:
                arg = recorded
            info = resolve_base(arg)
            self.store.check_base(info.name, info.sha256)
            self._base = info
        return self._base

    def model(self):
        if self._model is None:
            from doc2atom.models import load_base, resolve_device

            self._model = load_base(str(self.base_info().path), resolve_device(self.device_arg))
        return self._model

    def embedder(self):
        if self._embedder is None:
            from router.embed import Embedder

            self._embedder = Embedder()
        return self._embedder

    def router(self):
        """The KB's router (dense + BM25 indices, learned reranker, calibrated refusal), opened lazily."""
        if self._index is None:
            from router.router import Router

            self._index = Router.open(self.path, self.store, self.embedder(), self.router_config)
        return self._index

    def index(self):
        """The dense key index (router/index.py KeyIndex)."""
        return self.router().dense

    # -- ingest -----------------------------------------------------------------------------

    def ingest(self, paths: list[str], max_bytes: int | None = None) -> IngestReport:
        """Ingest files or folders; unchanged documents are skipped, changed ones replaced."""
        files = expand_paths([str(p) for p in paths])
        if not files:
            raise errors.InputError(f"no supported files under {', '.join(map(str, paths))}")
        report = IngestReport()
        docs: list[Document] = []
        for f in files:
            try:
                kw = {"max_bytes": max_bytes} if max_bytes else {}
                docs.extend(read_file(f, **kw))
            except errors.InputError as e:
                report.failed.append((str(f), e.message))
                _log(f"skipped: {e.message}")
        return self.ingest_documents(docs, report)

    def ingest_documents(self, docs: list[Document], report: IngestReport | None = None) -> IngestReport:
        report = report or IngestReport()
        t0 = time.perf_counter()
        with self.store.writer():
            self.store.gc_shards()
            todo = []
            for d in docs:
                if self.store.is_current(d):
                    report.unchanged.append(d.path)
                else:
                    todo.append(d)
            if todo:
                self._ingest(todo, report)
        report.seconds = time.perf_counter() - t0
        return report

    def _ingest(self, docs: list[Document], report: IngestReport) -> None:
        from compiler.synth import key_questions
        from compiler.synth import questions as synth_questions
        from compiler.train import compile_statements
        from compiler.weights import pack
        from doc2atom.atomizer import atomize_many
        from doc2atom.merge import plan_ingest
        from doc2atom.models import load_spacy
        from router.embed import atom_key_vectors

        info = self.base_info()
        self.store.bind_base(info.name, info.sha256, {"compile": self.compile_config.model_dump()})
        nlp = load_spacy()
        model, tok = self.model()
        cfg = self.compile_config.on(next(model.parameters()).device)  # a GPU compiles in larger groups
        router = self.router()
        # near-duplicates (within this call, or already stored for another document) are compiled once:
        # a document's plan lists the atoms it introduces and the spans that only add a provenance
        # a changed document keeps its atoms whose text and key did not change (they are not compiled again)
        plans = plan_ingest(list(atomize_many(docs, nlp)),
                            lambda keys: self.store.atoms_by_signature(keys, exclude_docs=[d.id for d in docs]),
                            own=[self.store.own_atoms(d.id) for d in docs])
        drafts_per_doc = [p.new for p in plans]
        made: dict[tuple[int, int], str] = {}  # (doc index, position in its plan) -> atom id, once committed
        total = sum(len(d) for d in drafts_per_doc)
        bar = _Progress(total, "compiling atoms", enabled=self.progress)
        # Compile in groups of whole documents of about batch_atoms atoms; commit each document alone.
        group: list[int] = []
        for i in range(len(docs) + 1):
            if i < len(docs):
                group.append(i)
                if sum(len(drafts_per_doc[j]) for j in group) < cfg.batch_atoms and i < len(docs) - 1:
                    continue
            if not group:
                continue
            drafts = [a for j in group for a in drafts_per_doc[j]]
            tc = time.perf_counter()
            qs = [synth_questions(a.text, nlp, cfg.questions) for a in drafts]
            compiled = compile_statements(model, tok, [a.text for a in drafts], qs, cfg,
                                          progress=bar.update, job_atoms=total)
            report.compile_seconds += time.perf_counter() - tc
            # the routing key adds questions in the order people ask them ("What did Veldt receive ...?")
            qs = [key_questions(a.text, nlp, q) for a, q in zip(drafts, qs)]
            embs = atom_key_vectors(self.embedder(), [a.key for a in drafts], qs)
            pos = 0
            for j in group:
                n = len(drafts_per_doc[j])
                part = compiled[pos:pos + n]
                shard = self.store.write_shard(pack(part), n) if n else None
                stats = [dict(c.stats, questions=q) for c, q in zip(part, qs[pos:pos + n])]
                links = [(made[r] if isinstance(r, tuple) else r, s, e) for r, s, e in plans[j].links]
                ids, old = self.store.commit(docs[j], drafts_per_doc[j], shard, stats, embs[pos:pos + n],
                                             spans=plans[j].spans, links=links)
                made.update({(j, k): a for k, a in enumerate(ids)})
                report.merged += len(links) - plans[j].reused + sum(len(sp) - 1 for sp in plans[j].spans)
                report.reused += plans[j].reused
                router.on_commit(np.array([int(a[1:]) for a in ids], dtype=np.int64), old, embs[pos:pos + n])
                for a in old:
                    self._weights.pop(atom_id(a), None)
                report.added.append(docs[j].path)
                report.atoms += n
                pos += n
            group = []
        bar.close()
        router.flush()
        self.store.gc_shards()

    # -- forget -----------------------------------------------------------------------------

    def forget(self, doc: str) -> dict:
        with self.store.writer():
            row = self.store.document(doc)
            if row is None:
                raise errors.unknown_document(doc)
            res, old = self.store.remove_document(row["id"])  # old: atoms whose last provenance went
            router = self.router()
            router.on_commit([], old, None)
            router.flush()
            for a in old:
                self._weights.pop(atom_id(a), None)
            self.store.gc_shards()
        return res

    # -- ask --------------------------------------------------------------------------------

    def route(self, questions: list[str], top_k: int | None = None):
        """Router decisions for a batch of questions (list of router.select.Route)."""
        return self.router().route(questions, top_k)

    def atom_weights(self, ids: list[str]) -> list[dict]:
        """Per-atom weights (module -> (A, B), fp32), cached (LRU)."""
        missing = [a for a in dict.fromkeys(ids) if a not in self._weights]
        if missing:
            loaded = self.store.load_weights(missing)
            for n, aid in enumerate(missing):
                self._weights[aid] = {m: (A[n], B[n]) for m, (A, B) in loaded.items()}
        for aid in ids:
            self._weights.move_to_end(aid)
        while len(self._weights) > self._weights_cap:
            self._weights.popitem(last=False)
        return [self._weights[a] for a in ids]

    def ask(self, question: str, mode: str = "atoms", top_k: int | None = None,
            max_new_tokens: int = 48) -> Answer:
        return self.ask_many([question], mode=mode, top_k=top_k, max_new_tokens=max_new_tokens)[0]

    def ask_many(self, questions: list[str], mode: str = "atoms", top_k: int | None = None,
                 extra_atoms: list[list[str]] | None = None, max_new_tokens: int = 48,
                 batch_size: int = 8, hooks=None, routed: bool = True) -> list[Answer]:
        """Answer a batch of questions; extra_atoms[i] are composed in beside question i's routed atoms.

        With the router's `gate` on (the default), each extra atom is weighed by its learned score for the
        question (Router.gate): one the router would not pick for it is left out, so it cannot change the
        answer. routed=False composes the extra atoms alone and answers every question (no routed atoms, no
        refusal): how `eval` measures what atoms do to questions they do not cover.
        hooks (serving.generate.GenerateHooks, optional) see question i's prompt size and tokens as row i.
        """
        if mode not in MODES:
            raise errors.InputError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise errors.InputError("the question is empty; ask something.")
        out: list[Answer] = []
        for s in range(0, len(questions), batch_size):
            chunk = questions[s:s + batch_size]
            extra = extra_atoms[s:s + batch_size] if extra_atoms else None
            out.extend(self._ask_batch(chunk, mode, top_k, extra, max_new_tokens, hooks, s, routed))
        return out

    def _ask_batch(self, questions, mode, top_k, extra, max_new_tokens, hooks=None, offset=0,
                   routed: bool = True) -> list[Answer]:
        from serving.generate import RowMap, build_pool, generate

        t0 = time.perf_counter()
        n = len(questions)
        timings = {}
        if mode == "base":
            routes = None
        else:
            routes = self.route(questions, top_k)
        timings["route_ms"] = (time.perf_counter() - t0) * 1000
        # the routes that choose atoms: none in base mode or when only the given atoms are to be composed
        chosen = routes if routes and routed else None
        fired: list[list[str]] = []
        adds: list[list[str]] = []  # the given atoms each question adds to its routed ones
        for i in range(n):
            ids = [atom_id(r) for r in chosen[i].ids] if chosen else []
            adds.append([a for a in dict.fromkeys(extra[i]) if a not in ids] if extra and extra[i] else [])
            fired.append(ids + adds[i])
        extra_w: list[dict[str, float]] = [{} for _ in range(n)]  # added atom -> its composition weight
        if extra and mode != "base":
            self.store.atoms_out(list(dict.fromkeys(a for ad in adds for a in ad)))  # unknown ids: a clear error
            if self.router_config.gate:
                g = self.router().gate(questions, [[parse_atom_id(a) for a in ad] for ad in adds], chosen)
            else:
                g = [[1.0] * len(ad) for ad in adds]
            for i, ad in enumerate(adds):
                extra_w[i] = dict(zip(ad, g[i]))
                fired[i] = [a for a in fired[i] if extra_w[i].get(a, 1.0) > 0.0]  # gated out: not composed
            timings["gate_ms"] = (time.perf_counter() - t0) * 1000 - timings["route_ms"]
        # refused questions are not answered, unless the router lets the base model answer (allow_base)
        answerable = [i for i in range(n) if mode == "base" or not routed or not routes[i].refused
                      or routes[i].use_base]
        t1 = time.perf_counter()
        facts = slots = pool = weights = None
        if answerable and mode in ("context", "hybrid"):
            texts = {a.id: a.text for i in answerable for a in self.store.atoms_out(fired[i])}
            facts = [[texts[a] for a in fired[i]] for i in answerable]
        if answerable and mode in ("atoms", "hybrid"):
            uniq = list(dict.fromkeys(a for i in answerable for a in fired[i]))
            pool = build_pool(self.atom_weights(uniq))
            slot_of = {a: k for k, a in enumerate(uniq)}
            slots = [[slot_of[a] for a in fired[i]] for i in answerable]
            weights = [self._weights_for(chosen[i] if chosen else None, fired[i], extra_w[i]) for i in answerable]
        timings["load_ms"] = (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        texts_out = {}
        if answerable:
            model, tok = self.model()
            rows = RowMap(hooks, [offset + i for i in answerable]) if hooks is not None else None
            gen = generate(model, tok, [questions[i] for i in answerable], facts, pool, slots, weights,
                           max_new_tokens=max_new_tokens, hooks=rows)
            texts_out = dict(zip(answerable, gen))
            if hooks is None:  # (streamed tokens cannot be taken back)
                self._mend_loops(questions, answerable, texts_out, fired, facts, pool, slots, weights,
                                 max_new_tokens)
        timings["generate_ms"] = (time.perf_counter() - t2) * 1000
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        answers = []
        for i in range(n):
            refused = i not in texts_out
            atoms = []
            if fired[i] and mode != "base":
                r = chosen[i] if chosen else None
                score_of = {atom_id(a): s for a, s in zip(r.ids, r.scores)} if r else {}
                w = self._weights_for(r, fired[i], extra_w[i])
                atoms = self.store.atoms_out(fired[i], [score_of.get(a, 0.0) for a in fired[i]], w)
                sig = {atom_id(d.id): d for d in r.details} if r else {}
                for a in atoms:
                    d = sig.get(a.id)
                    if d is not None:
                        a.signals = Signals(dense=float(d.dense), lexical=float(d.lexical), cover=float(d.cover),
                                            learned=float(d.learned), hop=int(d.hop))
            stray = [] if refused or not atoms else unsupported(texts_out[i],
                                                                    [questions[i]] + [a.text for a in atoms])
            answers.append(Answer(answer=REFUSAL if refused else texts_out[i], refused=refused,
                                  atoms=[] if refused else atoms, unsupported=stray,
                                  timings_ms={k: round(v / max(1, n), 2) for k, v in timings.items()}))
        return answers

    def _mend_loops(self, questions, answerable, texts_out, fired, facts, pool, slots, weights,
                    max_new_tokens) -> None:
        """Answers caught in a decoding loop ("General Brenn Brenn Brenn ..."), in place: a question that composed
        several atoms is answered again from its top atom alone (which then is the one atom it reports), and a loop
        that remains is cut after its first copy."""
        from serving.generate import generate

        row_of = {i: j for j, i in enumerate(answerable)}
        again = [i for i in answerable if len(fired[i]) > 1 and repetition_start(texts_out[i]) is not None]
        if again:
            model, tok = self.model()
            top = [row_of[i] for i in again]
            gen = generate(model, tok, [questions[i] for i in again],
                           [facts[j][:1] for j in top] if facts is not None else None, pool,
                           [slots[j][:1] for j in top] if slots is not None else None,
                           [weights[j][:1] for j in top] if weights is not None else None,
                           max_new_tokens=max_new_tokens)
            for i, text in zip(again, gen):
                texts_out[i] = text
                fired[i] = fired[i][:1]
        for i in answerable:
            cut = repetition_start(texts_out[i])
            if cut is not None:
                texts_out[i] = texts_out[i][:cut].rstrip(" ,;:")

    @staticmethod
    def _weights_for(route, fired: list[str], extra: dict[str, float] | None = None) -> list[float]:
        """Composition weight per fired atom: the router's for routed atoms, the gate's for extra ones."""
        w_of = dict(extra or {})
        if route is not None:
            w_of.update({atom_id(a): w for a, w in zip(route.ids, route.weights)})
        return [w_of.get(a, 1.0) for a in fired]

    # -- inspect ----------------------------------------------------------------------------

    def atoms(self, doc: str | None = None, type: str | None = None):
        return self.store.list_atoms(doc=doc, type=type)

    def atom(self, aid: str) -> dict:
        return self.store.atom_detail(aid)

    def close(self) -> None:
        self.store.close()


class _Progress:
    """A tqdm bar on stderr when enabled, else nothing."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"doc2atom: {desc}", unit="atom", file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
