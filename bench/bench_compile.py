"""Compile recipes compared side by side: composition curve, leakage, size and compile time.

For each recipe (a set of CompileConfig fields) the sample corpus is compiled into a fresh
KB with the real base model, then, with routing bypassed so that only the atoms' weights
are measured:
  - composition curve: each paraphrased question with its own (gold) atom plus k-1 random
    atoms of other documents summed in, k in --ks; accuracy = the answer contains a gold answer;
  - leakage: the held-out general questions (data/general_questions.json) answered with 1 and
    with 8 random atoms composed; share of answers token-identical to the base model's;
  - bytes per atom (fp16 shard) and compile seconds per atom.

Run:  .venv/bin/python bench/bench_compile.py --recipes default,kl,kl_compose [--out FILE]
One recipe takes a few minutes on 2 CPU cores. Never run two torch benchmarks at once.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPES: dict[str, dict] = {
    "default": {},
    "kl": {"locality_weight": 10.0, "locality_prompts": 2},
    "kl_compose": {"locality_weight": 10.0, "locality_prompts": 2, "compose_prob": 0.5, "compose_others": 3},
    "compose": {"compose_prob": 0.5, "compose_others": 3},
    "rank1": {"rank": 1},
    "down_only": {"modules": ["down_proj"], "rank": 2},
}


def norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def gold_atom(kb, q) -> str | None:
    """The atom of the question's document whose text contains a gold answer."""
    for a in kb.atoms():
        if a.source.path.split("#")[0].endswith(q["docs"][0]) and any(norm(g) in norm(a.text) for g in q["answers"]):
            return a.id
    return None


def answers_with(kb, questions: list[str], atom_sets: list[list[str]], max_new_tokens: int = 40) -> list[str]:
    from serving.generate import build_pool, generate

    model, tok = kb.model()
    out = []
    for s in range(0, len(questions), 8):
        qs, sets = questions[s:s + 8], atom_sets[s:s + 8]
        uniq = list(dict.fromkeys(a for st in sets for a in st))
        pool = build_pool(kb.atom_weights(uniq)) if uniq else None
        slot = {a: i for i, a in enumerate(uniq)}
        out += generate(model, tok, qs, None, pool, [[slot[a] for a in st] for st in sets],
                        max_new_tokens=max_new_tokens)
    return out


def run_recipe(name: str, fields: dict, ks: list[int], seed: int) -> dict:
    from compiler.config import CompileConfig
    from serving.pipeline import KnowledgeBase

    cfg = CompileConfig(**fields)
    tmp = Path(tempfile.mkdtemp(prefix=f"doc2atom-recipe-{name}-"))
    try:
        kb = KnowledgeBase(tmp / "kb", compile_config=cfg, progress=False)
        kb.model()
        rep = kb.ingest([str(ROOT / "data" / "sample")])
        atoms = kb.atoms()
        n_atoms = len(atoms)
        shard_bytes = sum(p.stat().st_size for p in kb.store.shards.iterdir())
        qs = [q for q in json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
              if q["kind"] == "paraphrase"]
        golds = [gold_atom(kb, q) for q in qs]
        keep = [(q, g) for q, g in zip(qs, golds) if g]
        rng = random.Random(seed)
        curve = {}
        doc_of = {a.id: a.source.doc for a in atoms}
        for k in ks:
            sets = []
            for q, g in keep:
                others = [a.id for a in atoms if doc_of[a.id] != doc_of[g]]
                sets.append([g] + rng.sample(others, min(k - 1, len(others))))
            outs = answers_with(kb, [q["question"] for q, _ in keep], sets)
            curve[k] = sum(any(norm(x) in norm(o) for x in q["answers"]) for (q, _), o in zip(keep, outs)) / len(keep)
        general = json.loads((ROOT / "data" / "general_questions.json").read_text())["questions"]
        base = answers_with(kb, general, [[] for _ in general], max_new_tokens=24)
        leak = {}
        for n in (1, 8):
            sets = [rng.sample([a.id for a in atoms], n) for _ in general]
            outs = answers_with(kb, general, sets, max_new_tokens=24)
            leak[n] = sum(o == b for o, b in zip(outs, base)) / len(general)
        stats = [kb.atom(a.id)["stats"] for a in atoms]
        return {
            "recipe": name, "fields": fields, "atoms": n_atoms, "questions": len(keep),
            "compile_s_per_atom": round(rep.compile_seconds / max(n_atoms, 1), 2),
            "bytes_per_atom": shard_bytes // max(n_atoms, 1),
            "mean_steps": round(sum(s["steps"] for s in stats) / len(stats), 1),
            "converged": sum(s["converged"] for s in stats),
            "composition_accuracy": {str(k): round(v, 3) for k, v in curve.items()},
            "k8_over_k1": round(curve[max(ks)] / curve[1], 3) if curve.get(1) else None,
            "general_unchanged": {str(n): round(v, 3) for n, v in leak.items()},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from bench_pipeline import git_commit, machine, versions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="default,kl,kl_compose")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_recipes_cpu.json"))
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update({"benchmark": "compile_recipes", "git": git_commit(), "machine": machine(),
                   "versions": versions(), "corpus": "data/sample", "seed": args.seed})
    rows = {r["recipe"]: r for r in result.get("recipes", [])}
    for name in args.recipes.split(","):
        t = time.perf_counter()
        row = run_recipe(name, RECIPES[name], ks, args.seed)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows[name] = row
        print(json.dumps(row), flush=True)
        result["recipes"] = list(rows.values())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
