"""The `doc2atom` command line. Thin: parse, call one function of the packages, format.

Heavy libraries (torch, spaCy, FAISS, transformers) are imported only inside commands, so
`doc2atom --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from doc2atom import __version__, errors

DEFAULT_KB = os.environ.get("DOC2ATOM_KB", "doc2atom-kb")
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SAMPLE_QUESTIONS = SAMPLE.parent / "sample_questions.json"


def _kb_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kb", default=DEFAULT_KB, metavar="DIR",
                   help=f"knowledge-base folder (default: $DOC2ATOM_KB or ./{DEFAULT_KB})")
    p.add_argument("--base-model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM folder (default: the embedded SmolLM2-135M-Instruct)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="doc2atom", description="Compile documents into composable knowledge atoms "
                                 "(micro-LoRAs) and answer questions with them.")
    ap.add_argument("--version", action="version", version=f"doc2atom {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ingest", help="atomize, compile and index files or folders (txt, md, html, jsonl)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--max-bytes", type=int, default=None, help="per-file size limit in bytes (default 20 MB)")
    p.add_argument("--compile-config", default=None, metavar="JSON",
                   help="compile settings, as JSON text or a .json file (fields of compiler.config.CompileConfig); "
                        "a knowledge base keeps the settings of its first ingest, except speed settings "
                        "(batch sizes, cpu_bf16, cpu_fused, ...), which later runs may change")
    _kb_arg(p)
    _json_arg(p)

    p = sub.add_parser("atomize", help="show the atoms a document yields (no compile, no knowledge base)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    _json_arg(p)

    p = sub.add_parser("ask", help="answer a question with the knowledge base")
    p.add_argument("question")
    p.add_argument("--mode", default="atoms", choices=["atoms", "context", "hybrid", "base"],
                   help="atoms: composed micro-LoRAs (default); context: atom text in the prompt; "
                        "hybrid: both; base: no knowledge")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="most atoms to compose (default 1)")
    p.add_argument("--explain", action="store_true", help="print a table of the atoms that fired")
    p.add_argument("--allow-base", action="store_true",
                   help="when no atom covers the question, let the base model answer instead of refusing")
    p.add_argument("--with", dest="with_atoms", default="", metavar="ID,ID,...",
                   help="compose these atoms too, beside the routed ones; each is weighed by the router's score "
                        "for the question and left out when it does not cover it (see --no-gate)")
    p.add_argument("--no-gate", action="store_true",
                   help="apply the --with atoms at weight 1 whatever the question (to see what an atom does "
                        "where it does not belong)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    _kb_arg(p)
    _json_arg(p)

    p = sub.add_parser("atoms", help="list or show atoms")
    asub = p.add_subparsers(dest="atoms_command", metavar="list|show")
    pl = asub.add_parser("list", help="list atoms")
    pl.add_argument("--doc", default=None, help="only atoms of this document (id or path)")
    pl.add_argument("--type", default=None, help="only atoms of this type")
    _kb_arg(pl)
    _json_arg(pl)
    ps = asub.add_parser("show", help="show one atom with its source span and compile stats")
    ps.add_argument("id")
    _kb_arg(ps)
    _json_arg(ps)

    p = sub.add_parser("forget", help="remove a document and all its atoms")
    p.add_argument("doc", help="document id or path")
    _kb_arg(p)
    _json_arg(p)

    from serving.evaluate import cli as eval_cli

    eval_cli.add_parser(sub)
    from serving.http import cli as http_cli

    http_cli.add_parser(sub)

    p = sub.add_parser("demo", help="ingest the sample corpus shipped in data/, ask its questions, show the atoms")
    _kb_arg(p)
    p.add_argument("--mode", default="atoms", choices=["atoms", "context", "hybrid", "base"])
    return ap


def _compile_config(spec: str | None):
    if not spec:
        return None
    from pydantic import ValidationError

    from compiler.config import CompileConfig

    text = Path(spec).read_text() if spec.endswith(".json") and Path(spec).exists() else spec
    try:
        return CompileConfig(**json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise errors.InputError(f"--compile-config: not a JSON object ({e})") from None
    except ValidationError as e:
        raise errors.InputError(f"--compile-config: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None


def _open(args, create: bool = False):
    from router.select import RouterConfig
    from serving.pipeline import KnowledgeBase

    return KnowledgeBase(args.kb, base_model=args.base_model, create=create,
                         router_config=RouterConfig(allow_base=getattr(args, "allow_base", False)),
                         compile_config=_compile_config(getattr(args, "compile_config", None)),
                         progress=not getattr(args, "json", False))


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def _where(s) -> str:
    return f"{Path(s.path.split('#')[0]).name}:{s.line}"


def explain_table(atoms) -> str:
    """A readable table per fired atom: id, type, the router's signals (learned score, dense cosine,
    BM25, word cover, retrieval round), composition weight, text, source file:line (every provenance)."""
    rows = [("atom", "type", "score", "dense", "bm25", "cover", "hop", "weight", "text", "source")]
    for a in atoms:
        text = a.text if len(a.text) <= 60 else a.text[:57] + "..."
        src = ", ".join(_where(s) for s in (a.sources or [a.source]))
        g = a.signals
        rows.append((a.id, a.type, f"{a.score:.3f}" if a.score is not None else "-",
                     f"{g.dense:.3f}" if g else "-", f"{g.lexical:.2f}" if g else "-",
                     f"{g.cover:.2f}" if g else "-", str(g.hop) if g else "-",
                     f"{a.weight:.2f}" if a.weight is not None else "-", text, src))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def refusal_reason(kb, question: str, top_k: int | None) -> str:
    """Why a question was refused: its best candidate's score against the calibrated threshold."""
    from doc2atom.store import atom_id

    route = kb.route([question], top_k)[0]  # the same decision again (deterministic), for its numbers
    if not route.details:
        return "(no atoms fired: the knowledge base has no candidate for this question)"
    d = route.details[0]
    return (f"(no atoms fired: best candidate {atom_id(d.id)} scored {route.best:.3f} < threshold "
            f"{route.threshold:.3f}; dense {d.dense:.3f}, bm25 {d.lexical:.2f}, cover {d.cover:.2f})")


def cmd_ingest(args) -> int:
    kb = _open(args, create=True)
    rep = kb.ingest(args.paths, max_bytes=args.max_bytes)
    if args.json:
        _print_json(rep.as_dict())
    else:
        kept = f", {rep.reused} kept from earlier versions" if rep.reused else ""
        print(f"ingested {len(rep.added)} document(s) ({rep.atoms} atoms compiled{kept}) in {rep.seconds:.1f} s; "
              f"{len(rep.unchanged)} unchanged; {len(rep.failed)} failed")
        for path, msg in rep.failed:
            print(f"  failed: {msg}")
    return 1 if rep.failed and not rep.added and not rep.unchanged else 0


def cmd_atomize(args) -> int:
    from doc2atom.atomizer import atomize_many
    from doc2atom.models import load_spacy
    from doc2atom.readers import expand_paths, read_file

    docs, failed = [], []
    for f in expand_paths(args.paths):
        try:
            docs.extend(read_file(f))
        except errors.InputError as e:
            failed.append(e.message)
            print(f"doc2atom: skipped: {e.message}", file=sys.stderr)
    out = []
    nlp = load_spacy()
    for doc, drafts in zip(docs, atomize_many(docs, nlp)):
        for n, a in enumerate(drafts):
            out.append({"id": f"{doc.id}:{n}", "type": a.type, "text": a.text, "key": a.key,
                        "source": {"path": doc.path, "start": a.start, "end": a.end}})
    if args.json:
        _print_json({"atoms": out, "failed": failed})
    else:
        for a in out:
            print(f"{a['id']}  [{a['type']}]  {a['text']}")
        print(f"{len(out)} atoms from {len(docs)} document(s)")
    return 1 if failed and not docs else 0


def cmd_ask(args) -> int:
    kb = _open(args)
    extra = [a.strip() for a in args.with_atoms.split(",") if a.strip()]
    if args.no_gate:
        kb.router_config = kb.router_config.model_copy(update={"gate": False})
    if extra:
        ans = kb.ask_many([args.question], mode=args.mode, top_k=args.top_k, extra_atoms=[extra],
                          max_new_tokens=args.max_new_tokens)[0]
    else:
        ans = kb.ask(args.question, mode=args.mode, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    if args.json:
        _print_json(ans.model_dump())
        return 0
    print(ans.answer)
    if args.explain:
        print()
        print(explain_table(ans.atoms) if ans.atoms else refusal_reason(kb, args.question, args.top_k))
    elif ans.atoms:
        print("atoms: " + ", ".join(f"{a.id} ({Path(a.source.path.split('#')[0]).name}:{a.source.line})"
                                    for a in ans.atoms))
    if ans.unsupported:
        print("not in the atoms that fired: " + ", ".join(ans.unsupported))
    return 0


def cmd_atoms(args) -> int:
    if args.atoms_command not in ("list", "show"):
        raise errors.InputError("usage: doc2atom atoms list|show ...")
    from doc2atom.store import KBStore

    store = KBStore(args.kb)
    if args.atoms_command == "list":
        atoms = store.list_atoms(doc=args.doc, type=args.type)
        if args.json:
            _print_json({"atoms": [a.model_dump() for a in atoms]})
        else:
            for a in atoms:
                print(f"{a.id}\t{a.type}\t{Path(a.source.path.split('#')[0]).name}:{a.source.line}\t{a.text}")
            print(f"{len(atoms)} atoms")
    else:
        d = store.atom_detail(args.id)
        if args.json:
            _print_json(d)
        else:
            for k in ("id", "type", "text", "key", "source", "source_text", "stats", "shard", "offset"):
                print(f"{k}: {d[k]}")
            if len(d["sources"]) > 1:  # stated by several documents (near-duplicates): every provenance
                print(f"sources: {len(d['sources'])}")
                for s, t in zip(d["sources"], d["source_texts"]):
                    print(f"  {s['path']} [{s['start']}:{s['end']}] line {s['line']}: {t}")
    return 0


def cmd_forget(args) -> int:
    kb = _open(args)
    res = kb.forget(args.doc)
    if args.json:
        _print_json(res)
    else:
        print(f"forgot {res['path']} ({res['atoms_removed']} atoms)")
    return 0


def cmd_demo(args) -> int:
    if not SAMPLE.exists():
        raise errors.InputError(f"the sample corpus is not at {SAMPLE}; run the demo from a clone of the repository.")
    args.json = False
    kb = _open(args, create=True)
    rep = kb.ingest([str(SAMPLE)])
    print(f"ingested {SAMPLE}: {len(rep.added)} new, {len(rep.unchanged)} unchanged document(s), "
          f"{kb.store.count_atoms()} atoms in {args.kb}\n")
    qs = json.loads(SAMPLE_QUESTIONS.read_text())["questions"]
    picked = [q for q in qs if q["kind"] in ("paraphrase", "out_of_scope")]
    answers = kb.ask_many([q["question"] for q in picked], mode=args.mode)
    for q, a in zip(picked, answers):
        print(f"Q: {q['question']}")
        print(f"A: {a.answer}")
        if a.atoms:
            print("   atoms fired:")
            for x in a.atoms:
                print(f"     {x.id} score={x.score:.3f} {Path(x.source.path.split('#')[0]).name}:{x.source.line}  {x.text}")
        if a.unsupported:
            print("   not in the atoms that fired: " + ", ".join(a.unsupported))
        print()
    return 0


def cmd_eval(args) -> int:
    from serving.evaluate import cli as eval_cli

    return eval_cli.run(args)


def cmd_serve(args) -> int:
    from serving.http import cli as http_cli

    return http_cli.run(args)


COMMANDS = {"serve": cmd_serve, "ingest": cmd_ingest, "atomize": cmd_atomize, "ask": cmd_ask, "atoms": cmd_atoms,
            "forget": cmd_forget, "demo": cmd_demo, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except errors.Doc2AtomError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the knowledge base keeps its last consistent state", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
