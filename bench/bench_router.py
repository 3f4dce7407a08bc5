"""Router benchmark: key-index latency and recall at 10k/100k/1M synthetic keys, and routing quality.

    # latency (CPU, 2 threads; hold the shared CPU lock):
    flock /tmp/doc2atom-cpu.lock env OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_router.py latency
    # quality on the SQuAD 2.0 Rhine article and data/sample (no compilation: atomize, synthesise, key, route):
    flock /tmp/doc2atom-cpu.lock env OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_router.py quality
    # one-document knowledge bases: the calibrated fit, the uncalibrated defaults, and calibration's choice
    flock /tmp/doc2atom-cpu.lock env OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_router.py small

Both update bench/results/router_cpu.json (one section each) with the machine, versions and settings.

Synthetic keys (latency): 384-d unit vectors drawn as topic clusters (one centre per 50 keys,
a key = centre + noise of the same norm, both with a power-law spectrum lambda_i ~ i^-0.5
like sentence embeddings), queries = a random key + noise (cosine to it ~0.8). recall_at_10 =
overlap of the approximate top-10 with the exact top-10. Latency is one query per call, the
way `ask` searches, timed per call over 1000 queries after 50 warm-up queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "router_cpu.json"
RHINE = ROOT.parent / "shared" / "datasets" / "squad2_dev_rhine.json"


# -- shared ---------------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def machine() -> dict:
    import faiss

    out = {"cpu": cpu_name(), "cores": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
           "python": platform.python_version(), "faiss": faiss.__version__, "numpy": np.__version__,
           "commit": _git("rev-parse", "--short", "HEAD"), "dirty_tree": bool(_git("status", "--porcelain", "router"))}
    try:
        import bm25s

        out["bm25s"] = bm25s.__version__
    except ImportError:
        pass
    return out


def rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)


def write_section(name: str, obj: dict, out: Path = OUT) -> None:
    data = json.loads(out.read_text()) if out.exists() else {}
    data["machine"] = machine()
    data[name] = obj
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} [{name}]", file=sys.stderr)


# -- latency on synthetic keys ---------------------------------------------------------------

def synthetic(n: int, d: int, rng, per_topic: int = 50) -> np.ndarray:
    lam = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    sd = np.sqrt(lam / lam.sum() * d).astype(np.float32)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    centres = unit(rng.standard_normal((max(1, n // per_topic), d), dtype=np.float32) * sd)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        t = rng.integers(0, len(centres), e - s)
        X[s:e] = unit(centres[t] + 0.9 * unit(rng.standard_normal((e - s, d), dtype=np.float32) * sd))
    return X, sd


def queries(X: np.ndarray, sd: np.ndarray, nq: int, rng) -> np.ndarray:
    idx = rng.integers(0, len(X), nq)
    noise = rng.standard_normal((nq, X.shape[1]), dtype=np.float32) * sd
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    Q = X[idx] + 0.7 * noise
    return (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)


def exact_top(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by chunked matrix products (no second copy of X)."""
    best_s = np.full((len(Q), k), -np.inf, np.float32)
    best_i = np.zeros((len(Q), k), np.int64)
    for s in range(0, len(X), 50_000):
        S = Q @ X[s:s + 50_000].T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(S, part, 1)], 1)
        ci = np.concatenate([best_i, part + s], 1)
        o = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_i


def time_search(idx, Q: np.ndarray, truth: np.ndarray, k: int = 10) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)  # one query per call: threads only add overhead
    for q in Q[:50]:
        idx.search(q[None], k)
    lat, rec = [], []
    for q, t in zip(Q, truth):
        t0 = time.perf_counter()
        _, ids = idx.search(q[None], k)
        lat.append(time.perf_counter() - t0)
        rec.append(len(set(ids[0].tolist()) & set(t.tolist())) / k)
    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    lat = np.array(lat) * 1000
    return {"p50_ms": round(float(np.percentile(lat, 50)), 4), "p99_ms": round(float(np.percentile(lat, 99)), 4),
            "recall_at_10": round(float(np.mean(rec)), 4)}


def cmd_latency(args) -> None:
    import faiss

    from router.index import KeyIndex, ivf_nlist

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    if args.rows_from:  # rows an earlier run printed (its JSON lines on stderr), e.g. one that was killed
        for line in Path(args.rows_from).read_text().splitlines():
            if line.startswith("{") and '"keys"' in line:
                rows.append({"data": "clustered", **json.loads(line)})
    if args.append and OUT.exists():  # keep earlier rows, except those this run measures again
        again = {(int(x), "clustered", k) for x in args.sizes.split(",") if x for k in args.kinds.split(",")}
        again |= {(int(x), "unclustered", k) for x in args.hard_sizes.split(",") if x for k in args.kinds.split(",")}
        rows += [r for r in json.loads(OUT.read_text()).get("latency", {}).get("rows", [])
                 if (r["keys"], r.get("data", "clustered"), r["index"]) not in again]
    want_kinds = set(args.kinds.split(","))
    runs = [(int(x), 50) for x in args.sizes.split(",") if x] + [(int(x), 0) for x in args.hard_sizes.split(",") if x]
    for n, per_topic in runs:
        rng = np.random.default_rng(n)
        X, sd = synthetic(n, 384, rng, per_topic=per_topic or n)
        Q = queries(X, sd, args.queries, rng)
        truth = exact_top(X, Q, 10)
        ids = np.arange(n, dtype=np.int64)
        kinds = ["flat", "ivf"] if n <= 200_000 else ["ivf"]
        if per_topic == 0:
            kinds = ["ivf"]
        if args.hnsw and n <= args.hnsw_max:
            kinds.append("hnsw")
        kinds = [k for k in kinds if k in want_kinds]
        for kind in kinds:
            rss0 = rss_gb()
            t0 = time.perf_counter()
            if kind == "flat":
                idx = KeyIndex.build(ids, X, 384, exact_max=n)
            elif kind == "ivf":
                idx = KeyIndex.build(ids, X, 384, exact_max=0)
            else:
                idx = faiss.IndexHNSWFlat(384, 32, faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efConstruction = 40
                idx.add(X)
            build_s = time.perf_counter() - t0
            if kind == "flat":
                settings = {}
            elif kind == "ivf":
                settings = {"nlist": ivf_nlist(n)}
            else:
                settings = {"M": 32, "efConstruction": 40}
            sweep = [None] if kind == "flat" else ([8, 16, 32, 64] + ([128] if not per_topic else [])
                                                   if kind == "ivf" else [int(e) for e in args.ef.split(",")])
            for s in sweep:
                if kind == "ivf":
                    idx.nprobe = s
                elif kind == "hnsw":
                    idx.hnsw.efSearch = s
                r = time_search(idx, Q, truth)
                row = {"keys": n, "data": "clustered" if per_topic else "unclustered", "index": kind, **settings,
                       **({"nprobe": s} if kind == "ivf" else {}),
                       **({"efSearch": s} if kind == "hnsw" else {}), **r, "build_s": round(build_s, 2),
                       "index_bytes": int(faiss.serialize_index(idx.index if kind != "hnsw" else idx).nbytes)
                       if n <= 200_000 else None, "peak_rss_gb": rss_gb(), "rss_before_gb": rss0}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del idx
        del X
        write_latency(rows, load_start, args, lexical=None)  # after each size, so a killed run keeps its rows
    write_latency(rows, load_start, args, lexical=lexical_latency(args.lexical_sizes))


def write_latency(rows: list[dict], load_start, args, lexical) -> None:
    if not lexical and args.append and OUT.exists():  # --append without lexical sizes keeps the lexical rows
        lexical = json.loads(OUT.read_text()).get("latency", {}).get("lexical")
    chosen = [r for r in rows if r["index"] == "flat" and r["keys"] <= 20_000] + \
             [r for r in rows if r["index"] == "hnsw" and r.get("efSearch") == 256 and r["data"] == "clustered"]
    write_section("latency", {
        "rows": rows, "default_rows": chosen,
        "loadavg_1_5_15": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"dim": 384, "queries": args.queries, "k": 10, "per_call": "one query per search call, 1 thread",
                     "keys": "topic clusters of 50, power-law spectrum i^-0.5, key = centre + 0.9 noise",
                     "queries_from": "random key + 0.7 noise (cosine ~0.8 to it)",
                     "note": args.note,
                     "router_defaults": "exact (IndexIDMap2(IndexFlatIP)) up to 20,000 keys; HNSW beyond "
                                        "(M 32, efConstruction 40, efSearch 256); IVF (nlist 2^round(log2(4 sqrt(n))), "
                                        "nprobe 32) on request"},
        "lexical": lexical,
    })


def lexical_latency(sizes: str) -> list[dict]:
    """bm25s build and query time on synthetic atom texts (Zipf words), the router's lexical stage."""
    from router.lexical import LexicalIndex, tokenize

    out = []
    for n in [int(x) for x in sizes.split(",") if x]:
        rng = np.random.default_rng(n)
        vocab = np.array([f"w{i}" for i in range(50_000)])
        p = 1.0 / np.arange(1, len(vocab) + 1)
        p /= p.sum()
        texts = [" ".join(vocab[rng.choice(len(vocab), 18, p=p)]) for _ in range(n)]
        t0 = time.perf_counter()
        lex = LexicalIndex.build(np.arange(n), texts)
        build = time.perf_counter() - t0
        qs = [tokenize([" ".join(vocab[rng.choice(len(vocab), 5, p=p)])])[0] for _ in range(200)]
        lat = []
        for q in qs:
            t0 = time.perf_counter()
            lex.search([q], 16)
            lat.append((time.perf_counter() - t0) * 1000)
        out.append({"atoms": n, "build_s": round(build, 2), "p50_ms": round(float(np.percentile(lat, 50)), 3),
                    "p99_ms": round(float(np.percentile(lat, 99)), 3)})
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


# -- routing quality ----------------------------------------------------------------------------

class CachedEmbedder:
    """The real embedder with an on-disk cache by text hash, so reruns skip recomputing vectors."""

    def __init__(self, path: Path | None):
        from router.embed import Embedder

        self.inner = Embedder()
        self.dim = self.inner.dim
        self.path = path
        self.cache: dict[str, np.ndarray] = {}
        if path and path.exists():
            z = np.load(path)
            self.cache = dict(zip(z["keys"].tolist(), z["vecs"]))

    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        miss = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self.cache))
        if miss:
            for t, v in zip(miss, self.inner(miss)):
                self.cache[hashlib.sha1(t.encode()).hexdigest()] = v
        return np.stack([self.cache[k] for k in keys]) if texts else np.zeros((0, self.dim), np.float32)

    def save(self) -> None:
        if self.path:
            np.savez(self.path, keys=np.array(list(self.cache)), vecs=np.stack(list(self.cache.values())))


def build_store(folder: Path, docs, nlp, emb, n_questions: int):
    """A KB store with atoms, synthesised questions and key vectors, and no weights (routing needs none)."""
    from compiler.synth import key_questions
    from compiler.synth import questions as synth
    from doc2atom.atomizer import atomize_many
    from doc2atom.store import KBStore
    from router.embed import atom_key_vectors

    store = KBStore(folder, create=True)
    for d, drafts in zip(docs, atomize_many(docs, nlp)):
        qs = [key_questions(a.text, nlp, synth(a.text, nlp, n_questions)) for a in drafts]
        vecs = atom_key_vectors(emb, [a.key for a in drafts], qs) if drafts else np.zeros((0, emb.dim), np.float32)
        store.commit_document(d, drafts, None, [{"questions": q} for q in qs], vecs)
    return store


def reuse_or_build(folder: Path, docs, nlp, emb, n_questions: int):
    from doc2atom.store import KBStore

    if (folder / "kb.sqlite").exists():
        store = KBStore(folder)
        if len(store.documents()) == len(docs):
            return store
        store.close()
        import shutil

        shutil.rmtree(folder)
    return build_store(folder, docs, nlp, emb, n_questions)


def read_squad(path: Path):
    """(documents, questions) of a SQuAD 2.0 file: one document per paragraph; question = (text, doc id, impossible)."""
    import hashlib as _h

    from doc2atom.readers import document_from_text

    obj = json.loads(path.read_text())
    docs, qs = [], []
    for art in obj["data"]:
        for p in art["paragraphs"]:
            ctx = p["context"]
            d = document_from_text(f"squad:{art['title']}#{_h.sha256(ctx.encode()).hexdigest()[:16]}", ctx,
                                   title=art["title"])
            docs.append(d)
            qs += [(qa["question"].strip(), d.id, bool(qa.get("is_impossible"))) for qa in p["qas"]]
    return docs, qs


def eval_routes(router, store, qs: list[tuple[str, list[str], str]], answers: list[list[str]] | None = None) -> dict:
    """qs: (question, gold doc ids, kind) with kind in answerable/unanswerable/direct/paraphrase/multihop/out_of_scope.

    answers (optional, per question): gold answer strings; adds `answer_atom_routed`, the share of a kind's
    questions for which an atom routed at the default settings (top_k 1 plus a second-hop atom, refusal on) states
    one of them: the right atom, not only the right document."""
    doc_of = store.atom_rowids_of_docs()
    texts = [q for q, _, _ in qs]
    r8 = router.route(texts, top_k=8)
    r1 = router.route(texts, top_k=1)
    cfg = router.config
    router.config = cfg.model_copy(update={"threshold": 0.0})  # ranking alone: never refuse
    rr = router.route(texts, top_k=8)
    router.config = cfg
    text_of = router.texts(sorted({i for b in r1 for i in b.ids})) if answers is not None else {}
    by: dict[str, dict] = {}
    for j, ((q, gold, kind), a, b, c) in enumerate(zip(qs, r8, r1, rr)):
        s = by.setdefault(kind, {"n": 0, "routed": 0, "hit1": 0, "hit8": 0, "rank_hit1": 0, "rank_hit8": 0,
                                 "all_docs_k1": 0, "two_atoms_k1": 0, "answer_atom1": 0, "best": []})
        if answers is not None and answers[j]:
            said = [text_of[i].casefold() for i in b.ids]
            s["answer_atom1"] += any(x.casefold() in t for x in answers[j] for t in said)
        s["n"] += 1
        s["best"].append(a.best)
        s["routed"] += not a.refused
        if gold:
            docs8 = [doc_of[i] for i in a.ids[:8]]
            rank8 = [doc_of[i] for i in c.ids[:8]]
            s["hit1"] += bool(docs8) and docs8[0] in gold
            s["hit8"] += any(d in gold for d in docs8)
            s["rank_hit1"] += bool(rank8) and rank8[0] in gold
            s["rank_hit8"] += any(d in gold for d in rank8)
            s["all_docs_k1"] += set(gold) <= {doc_of[i] for i in b.ids}
        s["two_atoms_k1"] += len(b.ids) > 1
    out = {}
    for kind, s in by.items():
        n = s["n"]
        out[kind] = {"n": n, "routed": round(s["routed"] / n, 4), "refused": round(1 - s["routed"] / n, 4),
                     "second_atom_at_k1": round(s["two_atoms_k1"] / n, 4)}
        if any(g for _, g, k in qs if k == kind):
            out[kind].update({"recall@1": round(s["hit1"] / n, 4), "recall@8": round(s["hit8"] / n, 4),
                              "ranking_recall@1": round(s["rank_hit1"] / n, 4),
                              "ranking_recall@8": round(s["rank_hit8"] / n, 4),
                              "all_gold_docs_at_k1": round(s["all_docs_k1"] / n, 4)})
        if answers is not None and any(answers[j] for j, x in enumerate(qs) if x[2] == kind):
            out[kind]["answer_atom_routed"] = round(s["answer_atom1"] / n, 4)
    return out, {k: np.array(s["best"]) for k, s in by.items()}


def ablation(router, store, qs) -> dict:
    """Ranking recall@1/@8 (own document, no refusal) of each signal alone and of the fusions."""
    from router.learned import rrf

    doc_of = store.atom_rowids_of_docs()
    qs = [(q, g) for q, g, _ in qs if g]
    cands = router.candidates(router.embedder([q for q, _ in qs]), [q for q, _ in qs])
    hits = {k: [0, 0] for k in ("dense", "bm25", "rrf", "learned")}
    for (q, gold), c in zip(qs, cands):
        if not len(c.ids):
            continue
        orders = {"dense": np.argsort(-np.where(c.dense_rank > 0, c.dense, -9), kind="stable"),
                  "bm25": np.argsort(-np.where(c.lex_rank > 0, c.bm25, -9), kind="stable"),
                  "rrf": np.argsort(-rrf(c.dense_rank, c.lex_rank, router.config.rrf_k), kind="stable"),
                  "learned": np.argsort(-router.score(c), kind="stable")}
        for k, o in orders.items():
            docs = [doc_of[int(c.ids[j])] for j in o[:8]]
            hits[k][0] += docs[0] in gold
            hits[k][1] += any(d in gold for d in docs)
    return {k: {"recall@1": round(h1 / len(qs), 4), "recall@8": round(h8 / len(qs), 4)} for k, (h1, h8) in hits.items()}


def route_latency(router, questions: list[str], n: int = 100) -> dict:
    """Wall time of route() for one question per call (embedding, both searches, features, multi-hop),
    with the real embedder (not the bench's cache)."""
    router.embedder = getattr(router.embedder, "inner", router.embedder)
    router.route(questions[:5])
    lat = []
    for q in questions[:n]:
        t0 = time.perf_counter()
        router.route([q])
        lat.append((time.perf_counter() - t0) * 1000)
    return {"questions": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def refusal_tradeoff(pos: np.ndarray, neg: np.ndarray, routed: float = 0.95) -> dict:
    """What the best possible threshold on the same score would give: refusals at >= `routed` answerable routed."""
    t = float(np.quantile(pos, 1 - routed, method="lower"))
    from router.calibrate import auc

    return {"auc_answerable_vs_unanswerable": auc(pos, neg), "oracle_threshold": round(t, 4),
            "oracle_refused_unanswerable": round(float((neg < t).mean()), 4)}


def cmd_quality(args) -> None:
    from doc2atom.models import load_spacy
    from doc2atom.readers import expand_paths, read_file
    from router.router import Router
    from router.select import RouterConfig

    nlp = load_spacy()
    emb = CachedEmbedder(Path(args.cache) if args.cache else None)
    result = {"settings": {"questions_per_atom": args.questions, "router": RouterConfig().model_dump(),
                           "embedder": "all-MiniLM-L6-v2", "note": "no compilation: atoms, synthesised questions "
                           "and keys as ingest makes them; routing needs no weights"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.workdir or tmp  # a kept workdir reuses its built stores (reruns only route)
        # data/sample: every question kind
        docs = [d for f in expand_paths([str(ROOT / "data" / "sample")]) for d in read_file(f)]
        store = reuse_or_build(Path(tmp) / "sample", docs, nlp, emb, args.questions)
        router = Router.open(Path(tmp) / "sample", store, emb, RouterConfig())
        cal = router.calibrate()
        path_of = {d["id"]: Path(d["path"].split("#")[0]).name for d in store.documents()}
        id_of = {}
        for did, name in path_of.items():
            id_of.setdefault(name, []).append(did)
        sq = json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
        qs = [(q["question"], [i for name in q["docs"] for i in id_of[name]], q["kind"]) for q in sq]
        metrics, _ = eval_routes(router, store, qs, answers=[q.get("answers") or [] for q in sq])
        result["sample"] = {"atoms": store.count_atoms(), "calibration": cal.get("metrics"),
                            "threshold": router.threshold, "by_kind": metrics,
                            "ranking_by_signal": ablation(router, store, [x for x in qs if x[2] != "multihop"])}
        emb.save()
        print(json.dumps(result["sample"], indent=1), file=sys.stderr, flush=True)
        # the Rhine article: 44 paragraphs, 290 answerable + 208 unanswerable questions
        docs, squad = read_squad(Path(args.dataset))
        t0 = time.perf_counter()
        store = reuse_or_build(Path(tmp) / "rhine", docs, nlp, emb, args.questions)
        build_s = time.perf_counter() - t0
        emb.save()
        router = Router.open(Path(tmp) / "rhine", store, emb, RouterConfig())
        t0 = time.perf_counter()
        cal = router.calibrate()
        cal_s = time.perf_counter() - t0
        emb.save()
        qs = [(q, [d] if not imp else [], "unanswerable" if imp else "answerable") for q, d, imp in squad]
        metrics, best = eval_routes(router, store, qs)
        # recall on unanswerable questions' own paragraphs is not asked; their routing is a refusal or not
        result["rhine"] = {"atoms": store.count_atoms(), "paragraphs": len(docs), "build_s": round(build_s, 1),
                           "calibrate_s": round(cal_s, 1), "calibration": cal.get("metrics"),
                           "threshold": router.threshold, "weights": router.model.as_dict(), **metrics,
                           "tradeoff": refusal_tradeoff(best["answerable"], best["unanswerable"]),
                           "ranking_by_signal": ablation(router, store, qs),
                           "route_one_question": route_latency(router, [q for q, _, _ in qs])}
        emb.save()
        print(json.dumps(result["rhine"], indent=1), file=sys.stderr, flush=True)
    write_section("quality", result)


def cmd_small(args) -> None:
    """Knowledge bases of one document each (every file of data/sample, every `--rhine-every`th Rhine paragraph):
    per KB, the share of its own in-scope questions routed and of out-of-scope questions refused (the sample's 8
    plus data/general_questions.json), with the calibrated fit (kept whatever it scores), with the uncalibrated
    defaults, and with what calibration now chooses between them (router/calibrate.py KEEP_MARGIN)."""
    import math

    from doc2atom.models import load_spacy
    from doc2atom.readers import expand_paths, read_file
    from router.learned import LearnedRouter
    from router.router import Router
    from router.select import RouterConfig

    nlp = load_spacy()
    emb = CachedEmbedder(Path(args.cache) if args.cache else None)
    sq = json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
    general = json.loads((ROOT / "data" / "general_questions.json").read_text())["questions"]
    outside = [q["question"] for q in sq if q["kind"] == "out_of_scope"] + [
        q["question"] if isinstance(q, dict) else q for q in general]
    cases = []
    for f in expand_paths([str(ROOT / "data" / "sample")]):
        inside = [q["question"] for q in sq if q["docs"] == [Path(f).name]]
        cases.append((f"sample/{Path(f).name}", list(read_file(f)), inside))
    docs, squad = read_squad(Path(args.dataset))
    for i in range(0, len(docs), args.rhine_every):
        inside = [q for q, d, imp in squad if d == docs[i].id and not imp]
        if inside:
            cases.append((f"rhine/p{i}", [docs[i]], inside))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kb_docs, inside in cases:
            folder = Path(tmp) / name.replace("/", "_")
            store = build_store(folder, kb_docs, nlp, emb, args.questions)
            router = Router.open(folder, store, emb, RouterConfig())
            row = {"kb": name, "atoms": store.count_atoms(), "in_scope": len(inside), "out_of_scope": len(outside)}
            for variant in ("fit", "defaults", "chosen"):
                if variant == "fit":
                    st = router.calibrate(keep_margin=math.inf)
                    row["heldout"] = {k: st["metrics"].get(k) for k in
                                      ("heldout_balanced_calibrated", "heldout_balanced_default", "heldout_routed",
                                       "oos_refused", "near_refused")} if st else None
                elif variant == "defaults":
                    router.state, router.model = {}, LearnedRouter()
                else:
                    st = router.calibrate()
                    row["chosen"] = st["metrics"]["chosen"] if st else "uncalibrated (too few atoms)"
                routes = router.route(inside + outside)
                n = len(inside)
                routed = sum(not r.refused for r in routes[:n]) / n
                refused = sum(r.refused for r in routes[n:]) / len(outside)
                row[variant] = {"threshold": round(router.threshold, 4), "in_scope_routed": round(routed, 4),
                                "out_of_scope_refused": round(refused, 4), "balanced": round((routed + refused) / 2, 4)}
            store.close()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        emb.save()
    summary = {v: {"mean_balanced": round(float(np.mean([r[v]["balanced"] for r in rows])), 4),
                   "min_balanced": round(float(np.min([r[v]["balanced"] for r in rows])), 4)}
               for v in ("fit", "defaults", "chosen")}
    write_section("small_kbs", {"settings": {"questions_per_atom": args.questions, "rhine_every": args.rhine_every,
                                             "note": "one document per KB; no compilation (atoms, synthesised "
                                                     "questions and keys as ingest makes them)"},
                                "summary": summary, "rows": rows})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("latency", help="key index latency/recall on synthetic keys")
    p.add_argument("--sizes", default="10000,50000,100000,1000000")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--hard-sizes", default="", help="also these sizes with unclustered keys (one Gaussian, "
                   "power-law spectrum): the hard case for an IVF")
    p.add_argument("--hnsw", action="store_true", help="also measure HNSW (M=32) for comparison")
    p.add_argument("--hnsw-max", type=int, default=1_000_000)
    p.add_argument("--kinds", default="flat,ivf,hnsw", help="index kinds to measure (hnsw also needs --hnsw)")
    p.add_argument("--ef", default="32,64,128,256", help="HNSW efSearch values to sweep")
    p.add_argument("--note", default="", help="how this JSON's rows were measured (kept in settings)")
    p.add_argument("--append", action="store_true", help="add to the rows already in the JSON")
    p.add_argument("--rows-from", default=None, help="start from the rows an earlier run printed (its stderr log)")
    p.add_argument("--lexical-sizes", default="10000,100000")
    p.set_defaults(fn=cmd_latency)
    p = sub.add_parser("quality", help="routing quality on data/sample and the SQuAD 2.0 Rhine article")
    p.add_argument("--dataset", default=str(RHINE))
    p.add_argument("--questions", type=int, default=6, help="synthesised questions per atom (compile default 6)")
    p.add_argument("--cache", default=None, help="embedding cache .npz (speeds up reruns)")
    p.add_argument("--workdir", default=None, help="keep the built stores here and reuse them on reruns")
    p.set_defaults(fn=cmd_quality)
    p = sub.add_parser("small", help="one-document knowledge bases: calibrated fit vs defaults vs the choice")
    p.add_argument("--dataset", default=str(RHINE))
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--rhine-every", type=int, default=4, help="every n-th Rhine paragraph becomes a KB")
    p.add_argument("--cache", default=None, help="embedding cache .npz (speeds up reruns)")
    p.set_defaults(fn=cmd_small)
    args = ap.parse_args()
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
