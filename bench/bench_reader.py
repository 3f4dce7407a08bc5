"""Reader check (experiment): does an atom the router picked actually answer the question?

Signals computed with the base LM (SmolLM2-135M-Instruct, CPU, fp32) on (question, context), where
context = the top-1 routed atom's text, or the top-3 atoms' texts joined:

- pmi_*   conditional PMI per question word: log p(w | context, q_<w) - log p(w | q_<w), a word's
          tokens summed; aggregated over the question's content words (not stop/question words):
          pmi_min (the least supported word), pmi_mean, pmi_sum (all tokens: log p(q|ctx) - log p(q)),
          unexplained (minus the count of content words with PMI < 1 nat), surprisal (minus the largest
          -log p(w | context, q_<w) over content words); absent_pmi_min / absent_unexplained: the same
          over the content words the context does not literally contain (a synonym the LM should
          support, or an edited word it should not). Higher = more answerable for all of them.
- yesno   chat prompt "Text: ... Question: ... Can the question be answered from the text? Answer yes
          or no." -> logsumexp(yes tokens) - logsumexp(no tokens) at the assistant's first position.
- ans_*   chat prompt asking for a short answer from the text; greedy answer (<= 8 tokens):
          ans_p1 = max probability of the first answer token, ans_lp = mean log-prob of the greedy
          tokens, ans_support = share of the answer's content words found in the context.

Data (never used to fit anything here; AUCs only):
- Rhine (SQuAD 2.0 dev, the held-out measure): questions the current router ROUTES (its calibrated
  threshold, router.json as calibrated by `bench_router.py quality`), answerable vs unanswerable;
  context = the router's top atoms (learned score order, threshold off). A seeded subset per class.
- synthetic near misses (router/nearmiss.py) on the same KB, the data a threshold would be calibrated
  on: positives = the atoms' synthesised cloze questions that keep >= 3 of their atom's content words
  (the questions edits are made from) and their paraphrase-like variants (calibrate.paraphrase_like),
  negatives = the edits (entity/number swap, antonym, negation, word swap); context = the atom the
  question was made/edited from (top-1), or it plus its two nearest atoms by key (top-3).

    flock /tmp/doc2atom-cpu.lock env OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python \\
        bench/bench_reader.py --workdir /tmp/rt/work --cache /tmp/rt/emb.npz

Writes bench/results/reader_cpu.json (machine, versions, settings, commit, per-signal AUCs, timings).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = ROOT / "bench" / "results" / "reader_cpu.json"

_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")
YES = ("yes", "Yes", " yes", " Yes", "YES")
NO = ("no", "No", " no", " No", "NO")
ABSENT_NONE = 10.0  # absent_pmi_min when every content word of the question is in the context
UNEXPLAINED_NATS = 1.0  # a content word whose PMI is below this is "not explained" by the context (set a priori)


# -- the LM signals ------------------------------------------------------------------------------

class LMReader:
    def __init__(self, device: str = "cpu"):
        import torch

        from doc2atom.models import load_base, resolve_base
        from router.lexical import stopwords

        self.torch = torch
        self.info = resolve_base()
        self.model, self.tok = load_base(str(self.info.path), device)
        self.device = device
        self.stop = set(stopwords())
        self.yes = sorted({self.tok.encode(w)[0] for w in YES})
        self.no = sorted({self.tok.encode(w)[0] for w in NO})
        self.eos = {self.tok.eos_token_id, *self.tok.encode("\n")}
        self._qcache: dict[str, tuple] = {}

    # log p of each target token given everything before it
    def _token_logps(self, prefix_ids: list[int], target_ids: list[int]) -> np.ndarray:
        torch = self.torch
        ids = torch.tensor([prefix_ids + target_ids], device=self.device)
        with torch.no_grad():
            logits = self.model(ids).logits[0].float()
        lp = torch.log_softmax(logits[len(prefix_ids) - 1:-1], -1)
        return lp[torch.arange(len(target_ids)), torch.tensor(target_ids)].cpu().numpy()

    def _question(self, q: str):
        """Question token ids, content-word groups of token positions, and log p(token | q_<t) (no context)."""
        if q not in self._qcache:
            enc = self.tok(" " + q.strip(), add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = enc["input_ids"], enc["offset_mapping"]
            groups = []
            for m in _WORD.finditer(" " + q.strip()):
                if m.group(0).lower() in self.stop:
                    continue
                pos = [i for i, (a, b) in enumerate(offs) if a < m.end() and b > m.start()]
                if pos:
                    groups.append(pos)
            base = self._token_logps(self.tok.encode("Question:"), ids)
            if len(self._qcache) > 10_000:
                self._qcache.clear()
            self._qcache[q] = (ids, groups, base)
        return self._qcache[q]

    def pmi(self, q: str, context: str) -> dict:
        ids, groups, base = self._question(q)
        cond = self._token_logps(self.tok.encode(context.strip() + "\n\nQuestion:"), ids)
        pmi_t = cond - base
        if not groups:  # no content word: every token counts
            groups = [[i] for i in range(len(ids))]
        w_pmi = np.array([pmi_t[g].sum() for g in groups])
        w_sur = np.array([-cond[g].sum() for g in groups])
        # the words the context does not literally contain: a paraphrase's synonym (the LM should raise it) or
        # an edit's swapped word (it should not)
        ctx_words = {w.lower() for w in _WORD.findall(context)}
        qtext = self.tok.decode(ids)
        absent = [k for k, g in enumerate(groups) if not ({w.lower() for w in _WORD.findall(self.tok.decode(
            [ids[i] for i in g]))} <= ctx_words)] if qtext else []
        a_pmi = w_pmi[absent] if absent else np.array([])
        return {"pmi_min": float(w_pmi.min()), "pmi_mean": float(w_pmi.mean()), "pmi_sum": float(pmi_t.sum()),
                "unexplained": -float((w_pmi < UNEXPLAINED_NATS).sum()), "surprisal": -float(w_sur.max()),
                "absent_pmi_min": float(a_pmi.min()) if len(a_pmi) else ABSENT_NONE,
                "absent_unexplained": -float((a_pmi < UNEXPLAINED_NATS).sum())}

    def _chat(self, user: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                            add_generation_prompt=True)
        return self.tok.encode(text, add_special_tokens=False)

    def yesno(self, q: str, context: str) -> dict:
        torch = self.torch
        ids = self._chat(f"Text: {context.strip()}\nQuestion: {q.strip()}\n"
                         "Can the question be answered from the text? Answer yes or no.")
        with torch.no_grad():
            lp = torch.log_softmax(self.model(torch.tensor([ids], device=self.device)).logits[0, -1].float(), -1)
        return {"yesno": float(torch.logsumexp(lp[self.yes], 0) - torch.logsumexp(lp[self.no], 0))}

    def answer(self, q: str, context: str, max_new: int = 8) -> dict:
        torch = self.torch
        ids = self._chat(f"Text: {context.strip()}\nAnswer the question with a short phrase from the text.\n"
                         f"Question: {q.strip()}")
        x = torch.tensor([ids], device=self.device)
        past, out, lps, p1 = None, [], [], None
        with torch.no_grad():
            for _ in range(max_new):
                o = self.model(x, past_key_values=past, use_cache=True)
                past = o.past_key_values
                lp = torch.log_softmax(o.logits[0, -1].float(), -1)
                t = int(lp.argmax())
                if p1 is None:
                    p1 = float(lp[t].exp())
                if t in self.eos:
                    break
                out.append(t)
                lps.append(float(lp[t]))
                x = torch.tensor([[t]], device=self.device)
        text = self.tok.decode(out)
        cw = [w.lower() for w in _WORD.findall(text) if w.lower() not in self.stop]
        ctx_words = {w.lower() for w in _WORD.findall(context)}
        return {"ans_p1": p1 or 0.0, "ans_lp": float(np.mean(lps)) if lps else -20.0,
                "ans_support": float(np.mean([w in ctx_words for w in cw])) if cw else 0.0, "_answer": text}

    def all(self, q: str, context: str, signals: tuple[str, ...]) -> tuple[dict, dict]:
        """Signals and the ms each family took for this (question, context)."""
        vals, ms = {}, {}
        for fam in signals:
            t0 = time.perf_counter()
            vals.update(getattr(self, fam)(q, context))
            ms[fam] = (time.perf_counter() - t0) * 1000
        return vals, ms


# -- data ------------------------------------------------------------------------------------------

def open_router(workdir: Path, cache: Path | None):
    from bench_router import RHINE, CachedEmbedder, read_squad, reuse_or_build
    from doc2atom.store import KBStore
    from router.router import Router
    from router.select import RouterConfig

    emb = CachedEmbedder(cache)
    folder = workdir / "rhine"
    docs, squad = read_squad(RHINE)
    if (folder / "kb.sqlite").exists():
        store = KBStore(folder)
    else:  # build as bench_router quality does
        from doc2atom.models import load_spacy

        store = reuse_or_build(folder, docs, load_spacy(), emb, 6)
    router = Router.open(folder, store, emb, RouterConfig(), write=False)
    if not router.state.get("calibrated_atoms"):
        router.calibrate()
    return router, emb, squad


def top_atoms(router, questions: list[str], k: int = 3) -> list[list[int]]:
    """The router's best k atoms per question by its learned score (ties by RRF), threshold off."""
    from router.learned import rrf

    cands = router.candidates(router.embedder(questions), questions)
    out = []
    for c in cands:
        if not len(c.ids):
            out.append([])
            continue
        p = router.score(c)
        order = np.lexsort((-rrf(c.dense_rank, c.lex_rank, router.config.rrf_k), -p))
        out.append([int(c.ids[j]) for j in order[:k]])
    return out


def rhine_items(router, squad, n_per_class: int, rng) -> tuple[list[dict], dict]:
    qs = [q for q, _, _ in squad]
    routes = router.route(qs, top_k=1)
    tops = top_atoms(router, qs)
    doc_of = router.store.rows("doc_id")
    doc_of = {r: d for r, d in doc_of}
    items = {True: [], False: []}
    for (q, d, imp), r, t in zip(squad, routes, tops):
        if not r.refused and t:
            items[not imp].append({"q": q, "label": int(not imp), "kind": "unanswerable" if imp else "answerable",
                                   "atoms": t, "top1_own_doc": doc_of.get(t[0]) == d})
    stats = {"answerable_routed": len(items[True]), "unanswerable_routed": len(items[False]),
             "answerable_total": sum(not i for _, _, i in squad), "unanswerable_total": sum(i for _, _, i in squad)}
    out = []
    for lab in (True, False):
        sel = rng.permutation(len(items[lab]))[:n_per_class]
        out += [items[lab][i] for i in sorted(sel)]
    return out, stats


def synthetic_items(router, n_pos: int, n_para: int, n_per_kind: int, rng) -> list[dict]:
    from router import nearmiss
    from router.calibrate import paraphrase_like

    rows = router.store.rows("text, stats")
    atoms = [(rid, text, [q for q in (json.loads(s).get("questions") or []) if isinstance(q, str) and q.strip()])
             for rid, text, s in rows]
    atoms = [a for a in atoms if a[2]]
    # nearest atoms by key vector, for the top-3 context
    ids, vecs = router.store.embeddings()
    row = {int(r): i for i, r in enumerate(ids)}
    V = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    near3 = {}
    for rid, _, _ in atoms:
        s = V @ V[row[rid]]
        near3[rid] = [rid] + [int(ids[j]) for j in np.argsort(-s) if int(ids[j]) != rid][:2]
    edits = nearmiss.generate([(t, qs) for _, t, qs in atoms], rng, per_atom=5)
    pos = []
    for rid, text, qs in atoms:
        aw = nearmiss.words(text)
        pos += [(rid, q) for q in qs if nearmiss._content_count(q, aw) >= nearmiss.MIN_CONTEXT_WORDS]
    out = []
    for i in rng.permutation(len(pos))[:n_pos]:
        rid, q = pos[i]
        out.append({"q": q, "label": 1, "kind": "original", "atoms": near3[rid]})
    para = [(rid, paraphrase_like(q, rng)) for rid, q in pos]
    para = [(r, q) for r, q in para if q]
    for i in rng.permutation(len(para))[:n_para]:
        rid, q = para[i]
        out.append({"q": q, "label": 1, "kind": "paraphrase_like", "atoms": near3[rid]})
    by_kind: dict[str, list] = {}
    for a, kind, q in edits:
        by_kind.setdefault(kind, []).append((atoms[a][0], q))
    for kind, lst in sorted(by_kind.items()):
        for i in rng.permutation(len(lst))[:n_per_kind]:
            rid, q = lst[i]
            out.append({"q": q, "label": 0, "kind": kind, "atoms": near3[rid]})
    return out


# -- measures ------------------------------------------------------------------------------------

def auc(pos, neg) -> float | None:
    from router.calibrate import auc as mann_whitney_auc

    return mann_whitney_auc(pos, neg)


def oracle(pos, neg, routed: float = 0.95) -> float | None:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return None
    t = float(np.quantile(pos, 1 - routed, method="lower"))
    return round(float((neg < t).mean()), 4)


def score_items(reader: LMReader, router, items: list[dict], ks: tuple[int, ...], signals, log_every=50):
    texts = router.texts({a for it in items for a in it["atoms"]})
    ms_all: dict[str, list] = {}
    t_start = time.perf_counter()
    for n, it in enumerate(items):
        for k in ks:
            ctx = "\n".join(texts[a] for a in it["atoms"][:k])
            vals, ms = reader.all(it["q"], ctx, signals)
            it[f"top{k}"] = vals
            for fam, v in ms.items():
                ms_all.setdefault(f"{fam}@top{k}", []).append(v)
        if (n + 1) % log_every == 0:
            print(f"  {n + 1}/{len(items)} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    return {k: {"mean_ms": round(float(np.mean(v)), 1), "p50_ms": round(float(np.median(v)), 1)}
            for k, v in ms_all.items()}


def summarize(items: list[dict], ks, neg_kinds=None) -> dict:
    out = {}
    for k in ks:
        key = f"top{k}"
        names = [s for s in items[0][key] if not s.startswith("_")]
        for s in names:
            pos = [it[key][s] for it in items if it["label"] == 1]
            neg = [it[key][s] for it in items if it["label"] == 0]
            row = {"auc": auc(pos, neg), "refused_at_95_routed": oracle(pos, neg)}
            if neg_kinds:
                row["auc_by_kind"] = {kd: auc(pos, [it[key][s] for it in items if it["kind"] == kd])
                                      for kd in neg_kinds}
                row["auc_by_positive"] = {kd: auc([it[key][s] for it in items if it["kind"] == kd], neg)
                                          for kd in ("original", "paraphrase_like")}
            out[f"{s}@{key}"] = row
    return out


def machine(reader: LMReader) -> dict:
    import platform

    import torch
    import transformers
    from bench_router import _git as git, cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "base_model": reader.info.name, "base_sha256": reader.info.sha256[:16],
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty_tree": bool(git("status", "--porcelain", "router", "bench/bench_reader.py"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/rt/work", help="bench_router quality's kept stores (rhine/)")
    ap.add_argument("--cache", default="/tmp/rt/emb.npz", help="embedding cache of bench_router")
    ap.add_argument("--rhine-per-class", type=int, default=150)
    ap.add_argument("--synth-pos", type=int, default=100)
    ap.add_argument("--synth-para", type=int, default=50)
    ap.add_argument("--synth-per-kind", type=int, default=30)
    ap.add_argument("--ks", default="1,3", help="context sizes (top atoms joined)")
    ap.add_argument("--signals", default="pmi,yesno,answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", default=None, help="also write every item's values here (JSON)")
    ap.add_argument("--merge", action="store_true", help="add this run's signals to the tables already in the JSON "
                    "(same seed and subset sizes = the same items)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    ks = tuple(int(x) for x in args.ks.split(","))
    signals = tuple(args.signals.split(","))
    rng = np.random.default_rng(args.seed)
    router, emb, squad = open_router(Path(args.workdir), Path(args.cache) if args.cache else None)
    rh, rh_stats = rhine_items(router, squad, args.rhine_per_class, rng)
    syn = synthetic_items(router, args.synth_pos, args.synth_para, args.synth_per_kind, rng)
    print(f"rhine items {len(rh)} ({rh_stats}); synthetic items {len(syn)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    reader = LMReader()
    load_s = time.perf_counter() - t0
    syn_ms = score_items(reader, router, syn, ks, signals)
    syn_kinds = sorted({it["kind"] for it in syn if it["label"] == 0})
    res_syn = summarize(syn, ks, syn_kinds)
    print(json.dumps({k: v["auc"] for k, v in res_syn.items()}), file=sys.stderr, flush=True)
    rh_ms = score_items(reader, router, rh, ks, signals)
    res_rh = summarize(rh, ks)
    # the router's own best score on the same Rhine items, for comparison
    routes = router.route([it["q"] for it in rh], top_k=1)
    for it, r in zip(rh, routes):
        it["router_best"] = r.best
    res_rh["router_best_p"] = {"auc": auc([it["router_best"] for it in rh if it["label"]],
                                          [it["router_best"] for it in rh if not it["label"]]),
                               "refused_at_95_routed": oracle([it["router_best"] for it in rh if it["label"]],
                                                              [it["router_best"] for it in rh if not it["label"]])}
    # answerable items whose top-1 atom is not from their own paragraph: the reader cannot vouch for those
    wrong = [it for it in rh if it["label"] and not it["top1_own_doc"]]
    table = {s: {"rhine_auc": res_rh[s]["auc"], "synthetic_auc": res_syn[s]["auc"],
                 "rhine_refused_at_95_routed": res_rh[s]["refused_at_95_routed"]} for s in res_syn}
    for s, row in table.items():
        fam = {"pmi": "pmi", "unexplained": "pmi", "surprisal": "pmi",
               "absent": "pmi", "yesno": "yesno", "ans": "answer"}[
            s.split("_")[0].split("@")[0]]
        row["ms_per_question"] = rh_ms.get(f"{fam}@{s.split('@')[1]}", {}).get("mean_ms")
    for s, row in sorted(table.items()):
        print(f"{s:22s} rhine {row['rhine_auc']}  synth {row['synthetic_auc']}  "
              f"refused@95 {row['rhine_refused_at_95_routed']}  {row['ms_per_question']} ms", file=sys.stderr)
    result = {
        "machine": machine(reader),
        "settings": {"base_model_load_s": round(load_s, 1), "device": "cpu", "dtype": "float32",
                     "seed": args.seed, "contexts": [f"top{k}" for k in ks], "signals": list(signals),
                     "unexplained_nats": UNEXPLAINED_NATS,
                     "rhine": {"subset": f"up to {args.rhine_per_class} per class, seeded, of the routed questions",
                               **rh_stats, "answerable_scored": sum(it["label"] for it in rh),
                               "unanswerable_scored": sum(1 - it["label"] for it in rh),
                               "answerable_top1_not_own_paragraph": len(wrong),
                               "router_threshold": router.threshold},
                     "synthetic": {"originals": args.synth_pos, "paraphrase_like": args.synth_para,
                                   "per_edit_kind": args.synth_per_kind, "kinds": syn_kinds,
                                   "items": len(syn)},
                     "orientation": "every signal: higher = answerable; AUC = P(answerable > unanswerable)",
                     "refused_at_95_routed": "share of negatives below the score that keeps 95% of positives "
                                             "(on Rhine an oracle figure: the threshold is read off Rhine)"},
        "table": table,
        "rhine": res_rh,
        "synthetic": res_syn,
        "timing_ms": {"rhine": rh_ms, "synthetic": syn_ms},
        "examples": [{"q": it["q"], "label": it["label"], "answer_top1": it["top1"].get("_answer")}
                     for it in rh[:5] + rh[-5:]] if "answer" in signals else [],
    }
    if "pmi" in signals and 1 in ks:  # how much of absent_pmi_min is only "does the atom contain every word"
        conf = {}
        for name, its in (("rhine", rh), ("synthetic", syn)):
            v = {lab: [it["top1"]["absent_pmi_min"] for it in its if it["label"] == lab] for lab in (1, 0)}
            conf[name] = {"no_absent_word_answerable": round(float(np.mean([x == ABSENT_NONE for x in v[1]])), 4),
                          "no_absent_word_unanswerable": round(float(np.mean([x == ABSENT_NONE for x in v[0]])), 4),
                          "auc_among_items_with_an_absent_word": auc([x for x in v[1] if x != ABSENT_NONE],
                                                                     [x for x in v[0] if x != ABSENT_NONE]),
                          "items_with_an_absent_word": [sum(x != ABSENT_NONE for x in v[1]),
                                                        sum(x != ABSENT_NONE for x in v[0])]}
        result["absent_word_confound"] = conf
        print(json.dumps(conf), file=sys.stderr)
    out = Path(args.out)
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        for key in ("table", "rhine", "synthetic"):
            result[key] = {**old.get(key, {}), **result[key]}
        for key in ("rhine", "synthetic"):
            result["timing_ms"][key] = {**old.get("timing_ms", {}).get(key, {}), **result["timing_ms"][key]}
        result["settings"]["runs"] = old.get("settings", {}).get("runs", [old.get("settings", {}).get("signals")]) + [
            {"signals": list(signals), "contexts": [f"top{k}" for k in ks]}]
        result["examples"] = result["examples"] or old.get("examples", [])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if args.dump:
        Path(args.dump).write_text(json.dumps({"rhine": rh, "synthetic": syn}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
