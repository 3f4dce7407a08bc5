"""Pipeline benchmark: atomize throughput, compile seconds per atom, KB bytes per atom, and ask
latency per mode, measured in one run on the sample corpus with the embedded default models.

Run:  .venv/bin/python bench/bench_pipeline.py [--out bench/results/pipeline_cpu.json]
Never run two torch benchmarks at once on a 2-core machine: the figures would be meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def versions() -> dict:
    import faiss
    import spacy
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "spacy": spacy.__version__, "faiss": faiss.__version__}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline_cpu.json"))
    ap.add_argument("--corpus", default=str(ROOT / "data" / "sample"))
    ap.add_argument("--questions", default=str(ROOT / "data" / "sample_questions.json"))
    ap.add_argument("--latency-questions", type=int, default=12, help="questions timed per mode")
    ap.add_argument("--note", default="", help="free text stored with the figures (e.g. other load on the machine)")
    args = ap.parse_args()

    from doc2atom.atomizer import atomize_many
    from doc2atom.models import load_spacy
    from doc2atom.readers import expand_paths, read_file
    from serving.pipeline import KnowledgeBase

    docs = [d for f in expand_paths([args.corpus]) for d in read_file(f)]
    nlp = load_spacy()
    list(atomize_many(docs, nlp))  # warm-up
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        atoms = [a for per in atomize_many(docs, nlp) for a in per]
    atomize_s = (time.perf_counter() - t) / reps
    sentences = sum(len(list(nlp(d.text).sents)) for d in docs)

    tmp = Path(tempfile.mkdtemp(prefix="doc2atom-bench-"))
    try:
        kb = KnowledgeBase(tmp / "kb", progress=False)
        kb.model()
        kb.embedder()
        rep = kb.ingest([args.corpus])
        n_atoms = kb.store.count_atoms()
        shard_bytes = sum(p.stat().st_size for p in kb.store.shards.iterdir())
        kb_bytes = sum(p.stat().st_size for p in (tmp / "kb").rglob("*") if p.is_file())
        qs = [q["question"] for q in json.loads(Path(args.questions).read_text())["questions"]
              if q["kind"] in ("paraphrase", "out_of_scope")][:args.latency_questions]
        latency = {}
        for mode in ("base", "context", "atoms", "hybrid"):
            kb.ask(qs[0], mode=mode)  # warm-up
            per = []
            for q in qs:
                t = time.perf_counter()
                kb.ask(q, mode=mode)
                per.append((time.perf_counter() - t) * 1000)
            latency[mode] = {"p50_ms": round(statistics.median(per), 1),
                             "p90_ms": round(sorted(per)[int(0.9 * (len(per) - 1))], 1), "n": len(per)}
        stats = [kb.atom(a.id)["stats"] for a in kb.atoms()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "pipeline", "git": git_commit(), "note": args.note, "machine": machine(), "versions": versions(),
        "settings": {"corpus": os.path.relpath(args.corpus, ROOT), "compile": kb.compile_config.model_dump(),
                     "router": kb.router_config.model_dump(), "latency_questions": len(qs),
                     "ask_max_new_tokens": 48},
        "atomize": {"documents": len(docs), "sentences": sentences, "atoms": len(atoms),
                    "seconds": round(atomize_s, 4), "sentences_per_s": round(sentences / atomize_s, 1)},
        "compile": {"atoms": n_atoms, "seconds_total": round(rep.compile_seconds, 2),
                    "seconds_per_atom": round(rep.compile_seconds / max(n_atoms, 1), 3),
                    "mean_steps": round(statistics.mean(s["steps"] for s in stats), 2),
                    "converged": sum(s["converged"] for s in stats)},
        "kb": {"shard_bytes_per_atom": shard_bytes // max(n_atoms, 1), "kb_bytes_per_atom": kb_bytes // max(n_atoms, 1),
               "kb_bytes_total": kb_bytes},
        "ask_latency": latency,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
