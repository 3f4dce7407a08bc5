"""The eval logic behind `doc2atom eval`: ingest a QA set's paragraphs, ask its questions in
each mode with the same router, score, and measure the router and atom composition.

Everything here is measured the same way for every mode: the same questions, the same
router decisions (`context`, `atoms` and `hybrid` route identically), the same generation
settings, and the same answer post-step (if any). The headline scores are those of the raw
answers; post-processed ones are reported beside them, never instead of them.
This module must never change the knowledge base other than by ingesting the dataset.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from doc2atom import errors
from doc2atom.store import atom_id
from serving.evaluate.datasets import EvalQuestion, EvalSet, subsample
from serving.evaluate.scoring import Tally, contains, f1
from serving.pipeline import MODES

RECALL_K = 8  # recall@8 routes with top_k=8


@dataclass
class EvalConfig:
    """What one eval run measures and how."""

    modes: list[str] = field(default_factory=lambda: ["base", "context", "atoms"])  # ask modes, in run order
    compose_k: list[int] = field(default_factory=list)  # atoms per question for the composition curve; [] = none
    limit: int | None = None  # at most this many questions, spread evenly over the set
    top_k: int | None = None  # router top_k when answering (None = the router's default)
    seed: int = 0  # picks the unrelated atoms of the composition curve and of the leakage test
    gate: Literal["on", "off", "both"] = "on"  # composition and leakage with the router's gate on extra atoms
    general: list[str] = field(default_factory=list)  # leakage: questions no atom covers; [] = no leakage test
    leak_n: list[int] = field(default_factory=lambda: [1, 8])  # leakage: atoms applied to each general question
    max_new_tokens: int = 48  # as `ask`
    batch_size: int = 8  # questions generated together
    short: Callable[[str, str], str] | None = None  # (question, raw answer) -> short answer, the same for every mode
    progress: bool = True  # tqdm bars on stderr
    save: Path | None = None  # folder for per-question JSONL

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise errors.InputError(f"--modes must be a comma-separated subset of {','.join(MODES)}, "
                                    f"got {','.join(self.modes) or 'nothing'}")
        if len(set(self.modes)) != len(self.modes):
            raise errors.InputError(f"--modes names a mode twice: {','.join(self.modes)}")
        if self.gate not in ("on", "off", "both"):
            raise errors.InputError(f"--gate must be on, off or both, got {self.gate!r}")
        if any(k < 1 or k > 64 for k in self.leak_n):
            raise errors.InputError(f"--leak-n values must be between 1 and 64, got {self.leak_n}")
        if any(k < 1 or k > 64 for k in self.compose_k):
            raise errors.InputError(f"--compose-k values must be between 1 and 64, got {self.compose_k}")
        if self.limit is not None and self.limit < 1:
            raise errors.InputError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise errors.InputError(f"--batch-size must be at least 1, got {self.batch_size}")


def _bar(total: int, desc: str, enabled: bool):
    if not enabled or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"doc2atom eval: {desc}", unit="q", file=sys.stderr, leave=False)


def _ask(kb, questions: list[str], mode: str, cfg: EvalConfig, desc: str, extra: list[list[str]] | None = None,
         routed: bool = True):
    """kb.ask_many in chunks, with a progress bar; returns (answers, seconds)."""
    bar = _bar(len(questions), desc, cfg.progress)
    out = []
    t0 = time.perf_counter()
    step = cfg.batch_size * 4
    for s in range(0, len(questions), step):
        out.extend(kb.ask_many(questions[s:s + step], mode=mode, top_k=cfg.top_k,
                               extra_atoms=extra[s:s + step] if extra else None,
                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, routed=routed))
        if bar:
            bar.update(len(questions[s:s + step]))
    if bar:
        bar.close()
    return out, time.perf_counter() - t0


def router_recall(kb, questions: list[EvalQuestion], doc_of: dict[int, list[str]], fmt: str
                  ) -> tuple[dict, list[dict]]:
    """recall@1 and recall@8 on answerable questions, routing with top_k=8.

    doc_of: atom rowid -> every document that states it (a merged near-duplicate has several).
    A hit@1: the best routed atom comes from the question's own paragraph (SQuAD) or from a
    supporting paragraph (HotpotQA). A hit@8: a routed atom from the own paragraph (SQuAD),
    atoms from every supporting paragraph (HotpotQA). A refusal is a miss in recall@1/@8 (what `ask` does);
    `ranking` gives the same two figures for the router's ranking alone, the refusal threshold off, so
    that retrieval misses and refusals can be told apart."""
    qs = [q for q in questions if not q.impossible and q.docs]
    if not qs:
        return {"recall@1": None, "recall@8": None, "n": 0}, []
    texts = [q.question for q in qs]
    routes = kb.route(texts, top_k=RECALL_K)
    router = kb.router()
    old = router.config
    router.config = old.model_copy(update={"threshold": -1.0})  # never refuse: the ranking alone
    try:
        ranked = kb.route(texts, top_k=RECALL_K)
    finally:
        router.config = old

    def hits(q, r):
        docs = [_as_list(doc_of.get(i)) for i in r.ids]
        found = {d for ds in docs for d in ds}
        h1 = bool(docs) and any(d in q.docs for d in docs[0])
        h8 = set(q.docs) <= found if fmt in ("hotpot", "questions") else any(d in q.docs for d in found)
        return h1, h8

    hit1 = hit8 = rk1 = rk8 = 0
    rows = []
    for q, r, rr in zip(qs, routes, ranked):
        h1, h8 = hits(q, r)
        k1, k8 = hits(q, rr)
        hit1, hit8, rk1, rk8 = hit1 + h1, hit8 + h8, rk1 + k1, rk8 + k8
        rows.append({"id": q.id, "routed": [atom_id(i) for i in r.ids], "best": round(r.best, 4),
                     "refused": r.refused, "hit@1": h1, "hit@8": h8, "ranking_hit@1": k1, "ranking_hit@8": k8})
    n = len(qs)
    return {"recall@1": round(hit1 / n, 4), "recall@8": round(hit8 / n, 4), "n": n,
            "ranking": {"recall@1": round(rk1 / n, 4), "recall@8": round(rk8 / n, 4)}}, rows


def _as_list(d) -> list[str]:
    return [] if d is None else [d] if isinstance(d, str) else list(d)


def unrelated_atoms(q: EvalQuestion, routed: list[int], by_doc: dict[str, list[int]], exclude_docs: set[str],
                    n: int, seed: int) -> list[str]:
    """n atoms drawn at random (seeded per question) from documents other than the question's
    own, never one the router picked; the first n-1 of n are the same draw, so the curve is nested."""
    near = {a for d in exclude_docs for a in by_doc.get(d, [])}  # atoms also stated by an excluded document
    pool = sorted({a for d, ids in by_doc.items() if d not in exclude_docs for a in ids} - near - set(routed))
    rng = random.Random(f"{seed}:{q.id}")
    return [atom_id(a) for a in rng.sample(pool, min(n, len(pool)))]


def evaluate(kb, data: EvalSet, cfg: EvalConfig) -> dict:
    """Run the whole eval; returns the `eval --json` object (and writes cfg.save if set)."""
    t_all = time.perf_counter()
    questions = subsample(data.questions, cfg.limit)
    if not questions:
        raise errors.InputError(f"{data.name}: no questions to ask.")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    rep = kb.ingest_documents(data.docs_for(questions))
    timings["ingest"] = round(time.perf_counter() - t0, 2)
    if rep.added and cfg.progress:
        print(f"doc2atom eval: ingested {len(rep.added)} paragraph(s), {rep.atoms} atoms; "
              f"{len(rep.unchanged)} already in the knowledge base", file=sys.stderr)
    doc_of = kb.store.atom_docs()  # atom rowid -> every document that states it
    by_doc: dict[str, list[int]] = {}
    for a, ds in doc_of.items():
        for d in ds:
            by_doc.setdefault(d, []).append(a)

    t0 = time.perf_counter()
    router, route_rows = router_recall(kb, questions, doc_of, data.format)
    timings["router"] = round(time.perf_counter() - t0, 2)

    saved: list[dict] = []
    modes: dict[str, dict] = {}
    atoms_answers = None
    texts = [q.question for q in questions]
    for mode in cfg.modes:
        answers, secs = _ask(kb, texts, mode, cfg, mode)
        timings[mode] = round(secs, 2)
        raw, short = Tally(), Tally()
        for q, a in zip(questions, answers):
            s = raw.add(a.answer, a.refused, q.answers, q.impossible, q.type)
            row = {"mode": mode, "id": q.id, "question": q.question, "answers": q.answers,
                   "impossible": q.impossible, "type": q.type, "prediction": a.answer, "refused": a.refused,
                   "atoms": [x.id for x in a.atoms],
                   "atom_docs": [x.source.doc for x in a.atoms], **{k: v for k, v in s.items() if k != "refused"}}
            if cfg.short is not None:
                sa = "" if a.refused else cfg.short(q.question, a.answer)
                ss = short.add(sa, a.refused, q.answers, q.impossible, q.type)
                row["short"] = sa
                row.update({f"short_{k}": v for k, v in ss.items() if k in ("f1", "em", "acc")})
            saved.append(row)
        modes[mode] = raw.summary()
        if cfg.short is not None:
            ss = short.summary()
            modes[mode]["short"] = {k: ss[k] for k in ("f1", "em", "acc")}
            if "by_type" in ss:
                modes[mode]["short"]["by_type"] = {t: {k: v[k] for k in ("f1", "em", "acc")}
                                                   for t, v in ss["by_type"].items()}
        if mode == "atoms":
            atoms_answers = dict(zip((q.id for q in questions), answers))

    gates = {"on": [True], "off": [False], "both": [True, False]}[cfg.gate]
    composition, comp_rows = {"k": [], "accuracy": []}, []
    extra_out = {}
    if cfg.compose_k:
        for g in gates:
            t0 = time.perf_counter()
            with _gate(kb, g):
                comp, rows = _composition(kb, data, questions, by_doc, cfg, atoms_answers)
            comp["gate"] = g
            for r in rows:
                r["gate"] = g
            comp_rows += rows
            if g == gates[0]:
                composition = comp
                timings["compose"] = round(time.perf_counter() - t0, 2)
            else:
                extra_out["composition_ungated"] = comp
                timings["compose_ungated"] = round(time.perf_counter() - t0, 2)
    leak_rows: list[dict] = []
    if cfg.general:
        t0 = time.perf_counter()
        extra_out["leakage"], leak_rows = _leakage(kb, cfg, gates)
        timings["leakage"] = round(time.perf_counter() - t0, 2)

    timings["total"] = round(time.perf_counter() - t_all, 2)
    result = {"dataset": data.name, "n": len(questions), "modes": modes, "router": router,
              "composition": composition, **extra_out, "timings_s": timings}
    if cfg.save is not None:
        _save(cfg.save, result, saved, route_rows, comp_rows + leak_rows)
    return result


class _gate:
    """Within the block, the knowledge base weighs extra atoms by the router's gate (on) or by 1 (off)."""

    def __init__(self, kb, on: bool):
        self.kb, self.on = kb, on

    def __enter__(self):
        self.old = self.kb.router_config
        self.kb.router_config = self.old.model_copy(update={"gate": self.on})

    def __exit__(self, *exc):
        self.kb.router_config = self.old


def _leakage(kb, cfg: EvalConfig, gates: list[bool]) -> tuple[dict, list[dict]]:
    """What atoms do to questions they do not cover: each general question is answered by the base model and
    then with n random atoms of the knowledge base applied (no routing, no refusal); the share of answers
    token-identical to the base model's, for each n, with the gate on and/or off. `applied` is the mean
    number of atoms actually composed per question (the gate leaves out those the router scores under its
    threshold)."""
    qs = list(cfg.general)
    pool = sorted(kb.store.atom_docs())
    out = {"n": sorted(set(cfg.leak_n)), "questions": len(qs)}
    rows: list[dict] = []
    if not pool or not qs:
        return out, rows
    base, _ = _ask(kb, qs, "base", cfg, "leakage base", routed=False)
    for g in gates:
        key = "gated" if g else "ungated"
        out[key] = {"unchanged": [], "applied": []}
        for n in out["n"]:
            draws = [[atom_id(a) for a in random.Random(f"{cfg.seed}:leak:{i}").sample(pool, min(n, len(pool)))]
                     for i in range(len(qs))]
            with _gate(kb, g):
                ans, _ = _ask(kb, qs, "atoms", cfg, f"leakage n={n} gate {'on' if g else 'off'}", extra=draws,
                              routed=False)
            same = [a.answer == b.answer for a, b in zip(ans, base)]
            out[key]["unchanged"].append(round(sum(same) / len(qs), 4))
            out[key]["applied"].append(round(sum(len(a.atoms) for a in ans) / len(qs), 3))
            rows += [{"leak_n": n, "gate": g, "question": q, "base": b.answer, "prediction": a.answer,
                      "atoms": d, "applied": [x.id for x in a.atoms], "unchanged": sm}
                     for q, a, b, d, sm in zip(qs, ans, base, draws, same)]
    return out, rows


def _composition(kb, data: EvalSet, questions: list[EvalQuestion], by_doc: dict[str, list[int]], cfg: EvalConfig,
                 atoms_answers: dict | None) -> tuple[dict, list[dict]]:
    """Atoms-mode accuracy (containment, raw answers) on answerable questions when each
    question's routed atoms are composed with k-1 random unrelated atoms."""
    qs = [q for q in questions if not q.impossible]
    ks = sorted(set(cfg.compose_k))
    out = {"k": ks, "accuracy": [], "f1": [], "applied": [], "n": len(qs)}
    rows: list[dict] = []
    if not qs:
        out["accuracy"] = [None] * len(ks)
        out["f1"] = [None] * len(ks)
        out["applied"] = [None] * len(ks)
        return out, rows
    routes = kb.route([q.question for q in qs], top_k=cfg.top_k)  # the same decisions ask_many makes
    draws = []
    for q, r in zip(qs, routes):
        own = set(q.docs) | set(data._context.get(q.id, []))
        draws.append(unrelated_atoms(q, r.ids, by_doc, own, max(ks) - 1, cfg.seed))
    for k in ks:
        if k == 1 and atoms_answers is not None:
            answers = [atoms_answers[q.id] for q in qs]  # k=1 adds nothing: reuse the atoms-mode answers
        else:
            answers, _ = _ask(kb, [q.question for q in qs], "atoms", cfg, f"compose k={k}",
                              extra=[d[:k - 1] for d in draws])
        acc = f = 0.0
        for q, a, d in zip(qs, answers, draws):
            text = "" if a.refused else a.answer
            ca, cf = contains(text, q.answers), f1(text, q.answers)
            acc += ca
            f += cf
            rows.append({"k": k, "id": q.id, "prediction": a.answer, "refused": a.refused, "extra": d[:k - 1],
                         "acc": ca, "f1": cf})
        out["accuracy"].append(round(acc / len(qs), 4))
        out["f1"].append(round(f / len(qs), 4))
        out["applied"].append(round(sum(len(a.atoms) for a in answers) / len(qs), 3))  # atoms composed, mean
    return out, rows


def _save(folder: Path, result: dict, preds: list[dict], routes: list[dict], comp: list[dict]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("predictions.jsonl", preds), ("router.jsonl", routes), ("composition.jsonl", comp)):
        with open(folder / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (folder / "summary.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


def table(result: dict) -> str:
    """A readable summary of an eval result."""
    lines = [f"{result['dataset']}: {result['n']} questions"]
    rows = [("mode", "F1", "EM", "acc", "refusal acc", "false refusal", "short F1", "short EM", "time s")]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    for m, s in result["modes"].items():
        sh = s.get("short", {})
        rows.append((m, pct(s["f1"]), pct(s["em"]), pct(s["acc"]), pct(s["refusal_accuracy"]),
                     pct(s["false_refusal"]), pct(sh.get("f1")), pct(sh.get("em")),
                     f"{result['timings_s'].get(m, 0):.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    for m, s in result["modes"].items():
        for t, v in s.get("by_type", {}).items():
            lines.append(f"  {m} [{t}]: F1 {pct(v['f1'])}  EM {pct(v['em'])}  acc {pct(v['acc'])}  (n={v['answerable']})")
    r = result["router"]
    rk = r.get("ranking") or {}
    lines.append(f"router: recall@1 {pct(r['recall@1'])}  recall@8 {pct(r['recall@8'])} (a refusal is a miss)"
                 + (f"; ranking alone {pct(rk['recall@1'])} / {pct(rk['recall@8'])}" if rk else ""))
    c = result["composition"]
    if c["k"]:
        gate = "" if c.get("gate", True) else ", gate off"
        lines.append(f"composition (atoms-mode acc with k-1 unrelated atoms{gate}; atoms applied): "
                     + "  ".join(f"k={k}: {pct(a)} ({n})" for k, a, n in zip(c["k"], c["accuracy"], c.get("applied", c["k"]))))
    cu = result.get("composition_ungated")
    if cu and cu["k"]:
        lines.append("composition, gate off: " + "  ".join(f"k={k}: {pct(a)} ({n})"
                                                           for k, a, n in zip(cu["k"], cu["accuracy"], cu["applied"])))
    lk = result.get("leakage")
    if lk:
        for key in ("gated", "ungated"):
            if key in lk:
                lines.append(f"general answers unchanged ({key}, {lk['questions']} q): "
                             + "  ".join(f"{n} atom(s): {pct(u)} ({a} applied)"
                                         for n, u, a in zip(lk["n"], lk[key]["unchanged"], lk[key]["applied"])))
    lines.append("time s: " + "  ".join(f"{k} {v:.1f}" for k, v in result["timings_s"].items()))
    return "\n".join(lines)


__all__ = ["EvalConfig", "evaluate", "router_recall", "table", "unrelated_atoms"]
