"""`doc2atom serve`: run the HTTP API and the inspector page on uvicorn.

Light at import (argparse only), so that `doc2atom --help` never loads FastAPI or torch.
`add_parser(subparsers)` registers the command; `run(args)` runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from doc2atom import errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve the knowledge base over HTTP (OpenAI-compatible API + inspector page)",
                              description="Serve a knowledge base: POST /v1/chat/completions, /v1/atoms, /v1/documents, "
                                          "/healthz, and the inspector page at /.")
    p.add_argument("--kb", default=os.environ.get("DOC2ATOM_KB", "doc2atom-kb"), metavar="DIR",
                   help="knowledge-base folder (default: $DOC2ATOM_KB or ./doc2atom-kb)")
    p.add_argument("--base-model", default=None, metavar="PATH",
                   help="local Hugging Face causal-LM folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="where the model runs: auto, cpu, cuda, cuda:N (default: $DOC2ATOM_DEVICE or auto = a GPU if "
                        "one is visible)")
    p.add_argument("--create", action="store_true",
                   help="start with an empty knowledge base if DIR has none (add documents with POST /v1/documents)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, metavar="T",
                   help="bearer token that enables POST/DELETE /v1/documents (default: $DOC2ATOM_TOKEN; "
                        "none: writes are disabled)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="most questions answered in one forward pass (default 16; 1 = one at a time)")
    p.add_argument("--queue-size", type=int, default=256, metavar="N",
                   help="queued requests before the server answers 429 (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=2_000_000, metavar="N",
                   help="largest request body; larger ones get 413 (default 2000000)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long a batch that is not full waits for more questions (default 5)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def run(args) -> int:
    token = args.token or os.environ.get("DOC2ATOM_TOKEN") or None
    for name, lo in (("--port", 0), ("--max-batch", 1), ("--queue-size", 1), ("--max-body-bytes", 1024)):
        value = getattr(args, name[2:].replace("-", "_"))
        if value < lo or (name == "--port" and value > 65535):
            raise errors.InputError(f"{name} must be at least {lo}{' and at most 65535' if name == '--port' else ''}, "
                                    f"got {value}")
    try:
        import uvicorn

        from serving.http.app import create_app
    except ImportError as e:
        raise errors.InputError(f"`doc2atom serve` needs the serve extra ({e.name} is missing): "
                                "pip install 'doc2atom[serve]'") from None
    from serving.pipeline import KnowledgeBase

    from doc2atom.models import resolve_device

    device = resolve_device(getattr(args, "device", None))  # a bad --device is an error now, not at first request
    kb = KnowledgeBase(args.kb, base_model=args.base_model, create=args.create, progress=False, device=device)
    app = create_app(kb, token=token, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     queue_size=args.queue_size, max_wait_ms=args.max_wait_ms, warmup=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    writes = "enabled (bearer token)" if token else "disabled (start with --token or $DOC2ATOM_TOKEN to enable)"
    print(f"doc2atom: serving {kb.path} at http://{host}:{args.port}/ (inspector at /, API under /v1); "
          f"writes {writes}", file=sys.stderr, flush=True)
    if args.host not in LOOPBACK:
        print(f"doc2atom: warning: listening on {args.host}: anyone who can reach it can read this knowledge base",
              file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.http.cli --kb DIR ...`: the serve command alone."""
    ap = argparse.ArgumentParser(prog="doc2atom")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = ap.parse_args(["serve"] + (sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except errors.Doc2AtomError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
