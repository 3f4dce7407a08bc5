"""The HTTP API and the inspector page, on FastAPI: `create_app(kb, ...)`.

Handlers are thin: validate the body (serving/http/schemas.py), call one function (the
batcher for anything that touches the model or writes the KB, a per-thread read-only store
for listings), format the answer. Every bad input is a 4xx with a typed body
`{"error": {"code", "message"}}`; a 5xx is a bug.

Auth: writes (POST/DELETE /v1/documents) need `Authorization: Bearer <token>`, with the token
given at start-up; with no token, writes are refused (403) and reads stay open.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from doc2atom import errors
from serving.http import openai_compat
from serving.http.batcher import Batcher, QueueFull
from serving.http.schemas import (AtomList, ChatCompletion, ChatRequest, DocumentDetail, DocumentIn, DocumentList,
                                  DocumentSummary, ErrorBody, ForgetResult, Health, IngestResult, ModelList)

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("doc2atom.http")

# Doc2AtomError class -> HTTP status (first match along the class's MRO)
_STATUS = {errors.InputError: 400, errors.NotFoundError: 404, errors.BaseModelMismatch: 409,
           errors.KBError: 409, errors.CorruptWeights: 409, errors.ModelUnavailable: 503,
           errors.Doc2AtomError: 400}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "body_too_large",
               415: "unsupported_media_type", 429: "queue_full"}
WRITES_DISABLED = ("writes are disabled on this server: restart it with --token T (or $DOC2ATOM_TOKEN=T) and send "
                   "'Authorization: Bearer T' with POST and DELETE /v1/documents.")


class ApiError(Exception):
    """An HTTP error with a typed body; raised by handlers and dependencies."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = ErrorBody.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        e = next(e for e in errs if e.get("type") == "json_invalid")
        return "malformed_json", f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})."
    if len(errs) == 1 and tuple(errs[0].get("loc", ())) == ("body",):
        if errs[0].get("type") == "missing":
            return "invalid_request", "the request needs a JSON body (Content-Type: application/json)."
        return "invalid_request", "the request body must be a JSON object (Content-Type: application/json)."
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return "invalid_request", "; ".join(parts) + more


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, before any handler reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(413, "body_too_large", f"the request body is over the limit of {self.limit:,} bytes; "
                                 "send less (split the document) or restart the server with a larger --max-body-bytes.")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        chunks, total, more = [], 0, True
        while more:  # read the body here, bounded, then hand it on
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            body = msg.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await too_big(scope, receive, send)
            chunks.append(body)
            more = msg.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _ReadStores:
    """One read-only KBStore per handler thread: SQLite connections cannot cross threads."""

    def __init__(self, path: Path):
        self.path = path
        self.local = threading.local()

    def get(self):
        from doc2atom.store import KBStore

        s = getattr(self.local, "store", None)
        if s is None:
            s = self.local.store = KBStore(self.path)
        return s


def _summary(row: dict) -> DocumentSummary:
    return DocumentSummary(**{k: row[k] for k in ("id", "path", "title", "sha256", "n_atoms")})


def create_app(kb, token: str | None = None, max_body_bytes: int = 2_000_000, max_batch: int = 16,
               queue_size: int = 256, max_wait_ms: float = 5.0, warmup: bool = False) -> FastAPI:
    """The API for one KnowledgeBase. The app's lifespan starts and stops the batcher's worker thread.

    token: bearer token for writes (None: writes disabled); max_body_bytes: larger bodies get 413;
    max_batch: most asks answered in one generate call (1 = one at a time); queue_size: queued
    requests before 429; max_wait_ms: how long a non-full batch waits for more; warmup: load
    the models before serving the first request. From start-up on, the server's worker thread owns
    `kb` (it re-opens kb.store in that thread): use the API, not `kb`, while the app runs.
    """
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an integer >= 1024, got {max_body_bytes!r}")
    if token is not None and not token.strip():
        raise ValueError("token must be a non-empty string, or None to disable writes")
    batcher = Batcher(kb, max_batch=max_batch, queue_size=queue_size, max_wait_ms=max_wait_ms, warmup=warmup)
    reads = _ReadStores(kb.path)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="doc2atom", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    app.state.batcher = batcher
    app.state.kb = kb
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    # -- errors -------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(errors.Doc2AtomError)
    async def _doc2atom_error(request, exc: errors.Doc2AtomError):
        status = next(_STATUS[c] for c in type(exc).__mro__ if c in _STATUS)
        return error_response(status, exc.code, exc.message)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, exc: QueueFull):
        return error_response(429, "queue_full", exc.message, {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        code, message = _validation_message(exc)
        return error_response(400, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no endpoint {request.method} {request.url.path}; the API is under /v1 (see /openapi.json)."
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}."
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), msg,
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); this is a bug in "
                              "doc2atom, please report it with the server log.")

    def require_token(request: Request) -> None:
        if token is None:
            raise ApiError(403, "writes_disabled", WRITES_DISABLED)
        auth = request.headers.get("authorization", "")
        scheme, _, cred = auth.partition(" ")
        if scheme.lower() != "bearer" or not cred.strip():
            raise ApiError(401, "unauthorized", "this endpoint needs 'Authorization: Bearer <token>' "
                           "(the token the server was started with).", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(cred.strip().encode(), token.encode()):
            raise ApiError(403, "forbidden", "wrong bearer token.")

    async def on_worker(fut):
        return await asyncio.wrap_future(fut)

    # -- pages and health -----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health)
    def healthz():
        store = reads.get()
        err = batcher.startup_error
        status = "error" if err is not None else ("ok" if batcher.ready.is_set() else "starting")
        body = Health(status=status, kb=str(kb.path), documents=len(store.documents()), atoms=store.count_atoms(),
                      writes_enabled=token is not None, batcher=batcher.stats(),
                      error=getattr(err, "message", None) or (repr(err) if err else None))
        return JSONResponse(body.model_dump(), status_code=503 if err is not None else 200)

    # -- asking -------------------------------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList)
    def models():
        return openai_compat.model_list()

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(req: ChatRequest):
        p = openai_compat.ask_params(req)
        if not req.stream:
            sink = openai_compat.TokenSink()
            ans = await on_worker(batcher.submit_ask(p.question, p.mode, p.top_k, p.max_new_tokens, sink=sink))
            return openai_compat.completion(ans, p, sink)
        # streaming: the answer's tokens are sent as the batch decodes them
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        sink = openai_compat.TokenSink(notify=lambda: loop.call_soon_threadsafe(wake.set))
        fut = batcher.submit_ask(p.question, p.mode, p.top_k, p.max_new_tokens, sink=sink)
        fut.add_done_callback(lambda f: sink._wake())
        # until generation starts, errors (bad input, routing failures) keep their HTTP status
        while not fut.done() and not sink.started:
            await wake.wait()
            wake.clear()
        if fut.done():
            fut.result()  # raises the request's error, answered as a typed 4xx/5xx
        return StreamingResponse(_stream(fut, sink, wake, p), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _stream(fut, sink, wake, p):
        st = openai_compat.StreamText(p)
        yield st.start()
        try:
            while not fut.done():
                await wake.wait()
                wake.clear()
                for e in st.feed(sink.text):
                    yield e
            ans = fut.result()
        except errors.Doc2AtomError as e:
            status = next(_STATUS[c] for c in type(e).__mro__ if c in _STATUS)
            for e2 in st.error(status, e.code, e.message):
                yield e2
            return
        except Exception as e:
            log.exception("internal error while streaming an answer")
            for e2 in st.error(500, "internal_error", f"internal error ({type(e).__name__}); this is a bug in "
                               "doc2atom, please report it with the server log."):
                yield e2
            return
        for e in st.end(ans, sink):
            yield e

    # -- atoms and documents ------------------------------------------------------------------

    @app.get("/v1/atoms", response_model=AtomList)
    def list_atoms(doc: str | None = Query(None, description="document id or path"),
                   type: str | None = Query(None, description="atom type"),
                   offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)):
        from doc2atom.schemas import ATOM_TYPES

        if type is not None and type not in ATOM_TYPES:
            raise errors.InputError(f"unknown atom type {type!r}; types are {', '.join(ATOM_TYPES)}.")
        atoms = reads.get().list_atoms(doc=doc, type=type)
        return AtomList(atoms=atoms[offset:offset + limit], total=len(atoms))

    @app.get("/v1/atoms/{atom_id}")
    def get_atom(atom_id: str) -> dict:
        return reads.get().atom_detail(atom_id)

    @app.get("/v1/documents", response_model=DocumentList)
    def list_documents():
        return DocumentList(documents=[_summary(r) for r in reads.get().documents()])

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentDetail)
    def get_document(doc_id: str):
        row = reads.get().document(doc_id)
        if row is None:
            raise errors.unknown_document(doc_id)
        return DocumentDetail(**{k: row[k] for k in DocumentDetail.model_fields})

    @app.post("/v1/documents", response_model=IngestResult, status_code=201,
              dependencies=[Depends(require_token)])
    async def ingest_document(body: DocumentIn):
        from doc2atom.readers import document_from_text

        doc = document_from_text(body.key, body.text, body.title or "")

        def job(kb):
            rep = kb.ingest_documents([doc])
            return IngestResult(document=_summary(kb.store.document(doc.id)), changed=bool(rep.added),
                                atoms=rep.atoms, seconds=round(rep.seconds, 3))

        res = await on_worker(batcher.submit_job(job))
        return JSONResponse(res.model_dump(), status_code=201 if res.changed else 200)

    @app.delete("/v1/documents/{doc_id:path}", response_model=ForgetResult, dependencies=[Depends(require_token)])
    async def forget_document(doc_id: str):
        return ForgetResult(**await on_worker(batcher.submit_job(lambda kb: kb.forget(doc_id))))

    return app


def _version() -> str:
    from doc2atom import __version__

    return __version__
