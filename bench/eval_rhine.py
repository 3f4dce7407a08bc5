"""Baseline of `doc2atom eval` on the SQuAD 2.0 "Rhine" article: base, context and atoms
modes, router recall, the composition curve (with and without the router's gate) and the
leakage test on general questions, with wall time per mode.

The same script runs the fictional sample corpus (`--dataset data/sample_questions.json --format questions
--kb .kb/sample --out bench/results/eval_sample.json`).

Run (CPU; the first run compiles the article's ~210 atoms into --kb, later runs reuse them):
    flock /tmp/doc2atom-cpu.lock env OMP_NUM_THREADS=2 PYTHONPATH=. \
        .venv/bin/python bench/eval_rhine.py [--limit N] [--kb .kb/rhine]
Writes bench/results/eval_rhine.json: the eval object plus the machine, versions, settings
and git commit it was measured with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = ROOT.parent / "shared" / "datasets" / "squad2_dev_rhine.json"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_paragraphs(path: Path, p: int) -> Path:
    """A SQuAD file holding only the first p paragraphs of the (single-article) dataset."""
    import tempfile

    src = json.loads(path.read_text())
    art = src["data"][0]
    sub = {"version": src.get("version"), "data": [{"title": art["title"], "paragraphs": art["paragraphs"][:p]}]}
    out = Path(tempfile.mkdtemp()) / f"{path.stem}_first{p}of{len(art['paragraphs'])}.json"
    out.write_text(json.dumps(sub))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(DATASET))
    ap.add_argument("--kb", default=str(ROOT / ".kb" / "rhine"))
    ap.add_argument("--modes", default="base,context,atoms")
    ap.add_argument("--format", default="squad", choices=["squad", "hotpot", "questions"])
    ap.add_argument("--compose-k", default="1,2,4,8")
    ap.add_argument("--gate", default="both", choices=["on", "off", "both"])
    ap.add_argument("--general", default=str(ROOT / "data" / "general_questions.json"),
                    help="general questions for the leakage test ('' = none)")
    ap.add_argument("--leak-n", default="1,8")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_rhine.json"))
    ap.add_argument("--save", default=None, help="per-question JSONL folder (not committed)")
    ap.add_argument("--paragraphs", type=int, default=None, metavar="P",
                    help="evaluate on the article's first P paragraphs only (all their questions), for a KB "
                         "that holds only those (the subset goes to a temp file)")
    ap.add_argument("--note", default="", help="free text stored with the result (what was run and why)")
    args = ap.parse_args()

    import torch
    import transformers

    from doc2atom import __version__
    from serving.evaluate.datasets import read_dataset
    from serving.evaluate.runner import EvalConfig, evaluate, table
    from serving.evaluate.short import short_answer
    from serving.pipeline import KnowledgeBase

    dataset = Path(args.dataset)
    if args.paragraphs:
        dataset = _first_paragraphs(dataset, args.paragraphs)
    from serving.evaluate.datasets import read_general

    cfg = EvalConfig(modes=args.modes.split(","), compose_k=[int(k) for k in args.compose_k.split(",")],
                     gate=args.gate, general=read_general(args.general) if args.general else [],
                     leak_n=[int(k) for k in args.leak_n.split(",")],
                     limit=args.limit, batch_size=args.batch_size, short=short_answer,
                     save=Path(args.save) if args.save else None)
    kb = KnowledgeBase(args.kb)
    t0 = time.time()
    commit, dirty = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "-uno").splitlines()  # as the run starts
    result = evaluate(kb, read_dataset(dataset, args.format), cfg)
    out = {
        "bench": Path(args.out).stem,
        "command": " ".join(["bench/eval_rhine.py", *sys.argv[1:]]),
        "equivalent_cli": (f"doc2atom eval {dataset.name} --format {args.format} --kb {args.kb} "
                           f"--modes {args.modes} --compose-k {args.compose_k} --gate {args.gate}"
                           + (f" --general {Path(args.general).name} --leak-n {args.leak_n}" if args.general else "")
                           + (f" --limit {args.limit}" if args.limit else "") + " --json"),
        "note": args.note,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "git": {"commit": commit, "dirty_files": dirty},
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "platform": platform.platform()},
        "versions": {"doc2atom": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {"modes": cfg.modes, "compose_k": cfg.compose_k, "gate": cfg.gate, "leak_n": cfg.leak_n,
                     "general_questions": len(cfg.general), "limit": cfg.limit, "seed": cfg.seed,
                     "top_k": cfg.top_k, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
                     "short_answer": "serving.evaluate.short.short_answer (reported beside raw scores)",
                     "router": kb.router_config.model_dump(), "compile": kb.compile_config.model_dump(),
                     "kb_documents": len(kb.store.documents()), "kb_atoms": kb.store.count_atoms(),
                     "base_model": kb.store.get_meta("base_name")},
        "result": result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(table(result))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
