"""The `doc2atom eval` command: parse, call runner.evaluate, print JSON or a table.

Wire it into the main CLI with `add_parser(subparsers)` and `COMMANDS["eval"] = run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from doc2atom import errors

DEFAULT_KB = os.environ.get("DOC2ATOM_KB", "doc2atom-kb")
SHORT = ("extract", "none")


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4,8, got {s!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="measure every mode, the router and composition on a QA set "
                                           "(SQuAD, HotpotQA or doc2atom questions JSON)")
    p.add_argument("dataset", metavar="DATASET", help="SQuAD 1.1/2.0 or HotpotQA JSON file")
    p.add_argument("--format", default="squad", choices=["squad", "hotpot", "questions"],
                   help="dataset format (default squad; questions: doc2atom's own, e.g. data/sample_questions.json)")
    p.add_argument("--modes", default="base,context,atoms",
                   help="comma-separated ask modes: base,context,atoms,hybrid (default base,context,atoms)")
    p.add_argument("--compose-k", type=_int_list, default=[], metavar="K,K,...",
                   help="composition curve: routed atoms plus k-1 random unrelated atoms, e.g. 1,2,4,8")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N questions, spread evenly over the set (only their paragraphs are ingested)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="router top-k when answering (default: router's)")
    p.add_argument("--short", default="extract", choices=SHORT,
                   help="answer post-step scored beside the raw answers, the same for every mode "
                        "(extract: the part of the answer that is not the question's own words; default)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the unrelated atoms of the composition curve and the leakage test")
    p.add_argument("--gate", default="on", choices=["on", "off", "both"],
                   help="composition curve and leakage test with the router's gate on the added atoms (on: what "
                        "`ask` does), without it (off: every added atom at weight 1), or both (default on)")
    p.add_argument("--general", default=None, metavar="FILE",
                   help="leakage test: JSON list of general questions (or {\"questions\": [...]}) no atom covers, "
                        "answered with --leak-n random atoms applied and compared token for token with the base model")
    p.add_argument("--leak-n", type=_int_list, default=[1, 8], metavar="N,N,...",
                   help="atoms applied per general question in the leakage test (default 1,8)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8, help="questions generated together")
    p.add_argument("--save", default=None, metavar="DIR", help="write per-question predictions (JSONL) to DIR")
    p.add_argument("--kb", default=DEFAULT_KB, metavar="DIR",
                   help=f"knowledge-base folder; the dataset's paragraphs are ingested into it if missing "
                        f"(default: $DOC2ATOM_KB or ./{DEFAULT_KB})")
    p.add_argument("--base-model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def run(args) -> int:
    from serving.evaluate.datasets import read_dataset, read_general
    from serving.evaluate.runner import EvalConfig, evaluate, table
    from serving.evaluate.short import short_answer
    from serving.pipeline import KnowledgeBase

    cfg = EvalConfig(modes=[m.strip() for m in args.modes.split(",") if m.strip()], compose_k=list(args.compose_k),
                     limit=args.limit, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens,
                     gate=args.gate, general=read_general(args.general) if args.general else [],
                     leak_n=list(args.leak_n),
                     batch_size=args.batch_size, short=short_answer if args.short == "extract" else None,
                     progress=True,
                     save=Path(args.save) if args.save else None)
    data = read_dataset(args.dataset, args.format)
    kb = KnowledgeBase(args.kb, base_model=args.base_model, create=True, progress=cfg.progress)
    try:
        result = evaluate(kb, data, cfg)
    finally:
        kb.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="doc2atom")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    add_parser(sub)
    args = ap.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except errors.Doc2AtomError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the knowledge base keeps its last consistent state", file=sys.stderr)
        return 130
