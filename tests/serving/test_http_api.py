"""The HTTP API against a real uvicorn server on 127.0.0.1: OpenAI client compatibility, streaming,
auth on writes, every class of bad input, ingest/forget through the API, and batching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from http_helpers import LiveServer, build_kb  # noqa: E402

TOKEN = "test-token-123"
BODY_LIMIT = 64_000
QUEUE = 64
IN_SCOPE = "Which island is the town of Velmora on?"
OUT_OF_SCOPE = "Who painted the Mona Lisa?"
NEW_DOC = ("# The Quorvane Lighthouse\n\nThe Quorvane Lighthouse was built by the engineer Oda Pelling in 1872. "
           "Its lamp burns whale-free olive oil and can be seen from forty kilometres away.\n")
NEW_QUESTION = "Who built the Quorvane Lighthouse?"


@pytest.fixture(scope="module")
def server(tiny_base, tmp_path_factory):
    from serving.http.app import create_app

    kb = build_kb(tmp_path_factory.mktemp("http_api"), tiny_base)
    # a long fill wait makes batch formation in the concurrency test independent of scheduling luck
    app = create_app(kb, token=TOKEN, max_body_bytes=BODY_LIMIT, max_batch=8, queue_size=QUEUE, max_wait_ms=100)
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def questions():
    qs = json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
    return [q["question"] for q in qs]


def chat(client, question, **extra):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], **extra})
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- OpenAI compatibility -----------------------------------------------------------------------

def test_openai_client_gets_answer_atoms_and_refusal(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {"doc2atom", "doc2atom-atoms", "doc2atom-context"} <= {m.id for m in client.models.list()}

    res = client.chat.completions.create(model="doc2atom-atoms", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": IN_SCOPE}])
    assert res.object == "chat.completion" and res.model == "doc2atom-atoms"
    assert isinstance(res.choices[0].message.content, str) and res.choices[0].finish_reason in ("stop", "length")
    assert res.usage.prompt_tokens > 0 and 0 < res.usage.completion_tokens <= 48
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    extra = res.model_extra
    assert extra["refused"] is False and extra["atoms"]
    atom = extra["atoms"][0]
    assert {"id", "type", "score", "weight", "text", "source"} <= set(atom)
    assert {"doc", "path", "start", "end"} <= set(atom["source"]) and "velmora" in atom["source"]["path"]

    res = client.chat.completions.create(model="doc2atom", messages=[{"role": "user", "content": OUT_OF_SCOPE}])
    assert res.model_extra["refused"] is True and res.model_extra["atoms"] == []
    assert res.choices[0].message.content.startswith("I don't know")

    # the mode as an extra body field, the question as a list of text parts
    res = client.chat.completions.create(model="doc2atom", messages=[
        {"role": "user", "content": [{"type": "text", "text": IN_SCOPE}]}], extra_body={"mode": "context"})
    assert res.model_extra["atoms"] and res.model_extra["refused"] is False


def test_openai_client_streaming_matches_non_streaming(server, client):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    whole = chat(client, IN_SCOPE)
    stream = oc.chat.completions.create(model="doc2atom", messages=[{"role": "user", "content": IN_SCOPE}],
                                        stream=True)
    parts = list(stream)
    assert parts and all(p.object == "chat.completion.chunk" for p in parts)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == whole["choices"][0]["message"]["content"]
    assert parts[-1].choices[0].finish_reason == whole["choices"][0]["finish_reason"]
    assert [a["id"] for a in parts[-1].model_extra["atoms"]] == [a["id"] for a in whole["atoms"]]
    assert parts[-1].model_extra["refused"] is False


def test_raw_stream_is_server_sent_events_ending_with_done(client):
    with client.stream("POST", "/v1/chat/completions",
                       json={"stream": True, "messages": [{"role": "user", "content": IN_SCOPE}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "atoms" in last
    assert "usage" not in last  # only sent when stream_options.include_usage asks for it


def test_stream_sends_tokens_as_produced_and_usage_when_asked(client):
    body = {"stream": True, "stream_options": {"include_usage": True}, "max_tokens": 12,
            "messages": [{"role": "user", "content": IN_SCOPE}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line and line != "data: [DONE]"]
    whole = chat(client, IN_SCOPE, max_tokens=12)
    contents = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    assert "".join(c or "" for c in contents) == whole["choices"][0]["message"]["content"]
    assert len([c for c in contents if c]) > 1  # several pieces, sent as the answer grew
    usage = events[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert whole["usage"]["completion_tokens"] <= 12
    if whole["choices"][0]["finish_reason"] == "length":
        assert whole["usage"]["completion_tokens"] == 12


def test_usage_of_a_refusal_counts_nothing(client):
    res = chat(client, OUT_OF_SCOPE)
    assert res["refused"] is True
    assert res["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_stream_errors_before_generation_keep_their_status(client):
    r = client.post("/v1/chat/completions", json={"stream": True, "model": "nope",
                                                   "messages": [{"role": "user", "content": IN_SCOPE}]})
    assert_error(r, 400)


def test_mode_by_model_name_and_field(client):
    base = chat(client, IN_SCOPE, model="doc2atom-base")
    assert base["atoms"] == [] and base["refused"] is False  # base mode uses no knowledge, refuses nothing
    assert chat(client, IN_SCOPE, model="doc2atom", mode="base")["atoms"] == []
    assert chat(client, IN_SCOPE, mode="hybrid", top_k=2, max_tokens=8)["atoms"]


# -- reads ----------------------------------------------------------------------------------------

def test_health_documents_atoms(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["documents"] >= 5 and h["atoms"] > 0 and h["writes_enabled"] is True
    docs = client.get("/v1/documents").json()["documents"]
    velmora = next(d for d in docs if d["path"].endswith("velmora.md"))
    doc = client.get(f"/v1/documents/{velmora['id']}").json()
    assert doc["text"].startswith("#") and doc["n_atoms"] == velmora["n_atoms"] > 0
    atoms = client.get("/v1/atoms", params={"doc": velmora["id"]}).json()
    assert atoms["total"] == velmora["n_atoms"] and all(a["source"]["doc"] == velmora["id"] for a in atoms["atoms"])
    a = atoms["atoms"][0]
    detail = client.get(f"/v1/atoms/{a['id']}").json()
    assert detail["source_text"] == doc["text"][a["source"]["start"]:a["source"]["end"]]
    typed = client.get("/v1/atoms", params={"type": a["type"]}).json()
    assert typed["total"] >= 1 and all(x["type"] == a["type"] for x in typed["atoms"])
    page = client.get("/v1/atoms", params={"limit": 2, "offset": 1}).json()
    assert len(page["atoms"]) == 2 and page["total"] == client.get("/v1/atoms").json()["total"]


def test_inspector_page_and_assets_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "doc2atom inspector" in r.text and "/static/app.js" in r.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert "/v1/chat/completions" in client.get("/openapi.json").json()["paths"]


# -- bad input: every class is a typed 4xx --------------------------------------------------------

@pytest.mark.parametrize("body, code", [
    (b"{not json", "malformed_json"),
    (b"", "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (json.dumps({"messages": "hello"}).encode(), "invalid_request"),
    (json.dumps({"messages": []}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_k": "3"}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_k": 0}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "mode": "magic"}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "colour": "red"}).encode(), "invalid_request"),
    (json.dumps({"messages": [{"role": "system", "content": "hi"}]}).encode(), "bad_input"),
    (json.dumps({"messages": [{"role": "user", "content": "   "}]}).encode(), "bad_input"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode(), "bad_input"),
    (json.dumps({"model": "doc2atom-base", "mode": "atoms",
                 "messages": [{"role": "user", "content": "hi"}]}).encode(), "bad_input"),
])
def test_bad_chat_bodies_are_400(client, body, code):
    err = assert_error(client.post("/v1/chat/completions", content=body,
                                   headers={"Content-Type": "application/json"}), 400, code)
    assert "Traceback" not in err["message"]


def test_validation_message_names_the_field(client):
    err = assert_error(client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "top_k": "3"}), 400)
    assert "top_k" in err["message"]
    err = assert_error(client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [
        {"role": "user", "content": "hi"}]}), 400)
    assert "doc2atom-atoms" in err["message"]


def test_unknown_ids_are_404(client):
    for path in ("/v1/atoms/a999999", "/v1/atoms/not-an-id", "/v1/documents/dnothere", "/no/such/endpoint"):
        assert_error(client.get(path), 404, "not_found")
    assert_error(client.get("/v1/atoms", params={"doc": "dnothere"}), 404, "not_found")
    assert_error(client.delete("/v1/documents/dnothere", headers=AUTH), 404, "not_found")
    assert_error(client.put("/v1/atoms"), 405, "method_not_allowed")


def test_bad_query_parameters_are_400(client):
    err = assert_error(client.get("/v1/atoms", params={"type": "gossip"}), 400, "bad_input")
    assert "definition" in err["message"]  # lists the valid types
    assert_error(client.get("/v1/atoms", params={"limit": 0}), 400, "invalid_request")
    assert_error(client.get("/v1/atoms", params={"offset": "x"}), 400, "invalid_request")


def test_body_over_limit_is_413(client):
    big = {"messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]}
    err = assert_error(client.post("/v1/chat/completions", json=big), 413, "body_too_large")
    assert "--max-body-bytes" in err["message"]
    # no Content-Length (chunked): counted while it is read
    data = json.dumps(big).encode()
    chunks = (data[i:i + 8192] for i in range(0, len(data), 8192))
    assert_error(client.post("/v1/chat/completions", content=chunks,
                             headers={"Content-Type": "application/json"}), 413, "body_too_large")
    big_doc = {"path": "big.txt", "text": "y " * BODY_LIMIT}
    assert_error(client.post("/v1/documents", json=big_doc, headers=AUTH), 413, "body_too_large")


def test_full_queue_is_429_then_recovers(server, client):
    batcher = server.app.state.batcher
    started, release = threading.Event(), threading.Event()
    blocker = batcher.submit_job(lambda kb: (started.set(), release.wait(60)))
    try:
        assert started.wait(60)  # the worker is busy; nothing leaves the queue until release
        fillers = []
        while batcher.depth() < batcher.queue_size:
            fillers.append(batcher.submit_job(lambda kb: None))
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": IN_SCOPE}]})
        err = assert_error(r, 429, "queue_full")
        assert r.headers["Retry-After"] == "1" and "retry" in err["message"]
    finally:
        release.set()
    blocker.result(60)
    for f in fillers:
        f.result(60)
    assert chat(client, IN_SCOPE)["refused"] is False


# -- writes: auth, ingest, forget ----------------------------------------------------------------

def test_writes_need_the_bearer_token(client):
    doc = {"path": "notes/auth.md", "text": "Nothing to see."}
    r = client.post("/v1/documents", json=doc)
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_error(client.post("/v1/documents", json=doc, headers={"Authorization": "Basic abc"}), 401)
    assert_error(client.post("/v1/documents", json=doc, headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    assert_error(client.delete("/v1/documents/anything"), 401, "unauthorized")
    assert_error(client.delete("/v1/documents/anything", headers={"Authorization": "Bearer wrong"}), 403)


@pytest.mark.parametrize("body", [
    {"text": "no key"},
    {"path": "a.md", "id": "b", "text": "two keys"},
    {"path": "a.md", "text": "   "},
    {"path": "a.md", "text": 5},
    {"path": "a.md"},
    {"path": "a.md", "text": "x", "author": "me"},
])
def test_bad_document_bodies_are_400(client, body):
    assert_error(client.post("/v1/documents", json=body, headers=AUTH), 400)


def test_ingest_then_ask_then_forget_then_ask(client):
    r = client.post("/v1/documents", json={"path": "notes/quorvane.md", "text": NEW_DOC}, headers=AUTH)
    assert r.status_code == 201, r.text
    res = r.json()
    doc_id = res["document"]["id"]
    assert res["changed"] is True and res["atoms"] == res["document"]["n_atoms"] > 0
    assert res["document"]["title"] == "The Quorvane Lighthouse"

    again = client.post("/v1/documents", json={"path": "notes/quorvane.md", "text": NEW_DOC}, headers=AUTH)
    assert again.status_code == 200 and again.json()["changed"] is False

    assert doc_id in {d["id"] for d in client.get("/v1/documents").json()["documents"]}
    assert client.get("/v1/documents/notes/quorvane.md").json()["id"] == doc_id  # by path, slashes and all
    ans = chat(client, NEW_QUESTION)
    assert not ans["refused"] and doc_id in {a["source"]["doc"] for a in ans["atoms"]}

    r = client.delete(f"/v1/documents/{doc_id}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"doc": doc_id, "path": "notes/quorvane.md",
                                                "atoms_removed": res["atoms"]}
    ans = chat(client, NEW_QUESTION)
    assert doc_id not in {a["source"]["doc"] for a in ans["atoms"]}
    assert_error(client.get(f"/v1/documents/{doc_id}"), 404)
    assert client.get("/v1/atoms", params={"limit": 10000}).json()["total"] == client.get("/healthz").json()["atoms"]


def test_server_without_token_refuses_writes_and_serves_an_empty_kb(tiny_base, tmp_path):
    from serving.http.app import create_app
    from serving.pipeline import KnowledgeBase

    kb = KnowledgeBase(tmp_path / "empty", base_model=str(tiny_base), create=True, progress=False)
    with LiveServer(create_app(kb)) as s, httpx.Client(base_url=s.url, timeout=120) as c:
        err = assert_error(c.post("/v1/documents", json={"path": "a.md", "text": "A fact."}, headers=AUTH),
                           403, "writes_disabled")
        assert "--token" in err["message"] and "DOC2ATOM_TOKEN" in err["message"]
        assert_error(c.delete("/v1/documents/x", headers=AUTH), 403, "writes_disabled")
        h = c.get("/healthz").json()
        assert h["writes_enabled"] is False and h["documents"] == 0 and h["atoms"] == 0
        assert chat(c, IN_SCOPE)["refused"] is True


# -- batching ---------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_answer_as_alone(server, client, questions):
    qs = questions[:12]
    alone = [chat(client, q) for q in qs]  # one at a time: each a batch of one
    before = dict(server.app.state.batcher.batch_sizes)
    with ThreadPoolExecutor(len(qs)) as ex:
        together = list(ex.map(lambda q: chat(client, q), qs))
    after = server.app.state.batcher.batch_sizes
    grew = {k for k in after if after[k] > before.get(k, 0)}
    assert max(grew) > 1, f"no batch formed: {dict(after)}"
    for q, a, b in zip(qs, alone, together):
        assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"], q
        assert [x["id"] for x in b["atoms"]] == [x["id"] for x in a["atoms"]] and b["refused"] == a["refused"], q
    stats = client.get("/healthz").json()["batcher"]
    assert stats["largest_batch"] > 1 and stats["failed"] == 0


def test_batcher_mixes_modes_in_one_drain(server, client):
    """Requests with different modes queued together are answered per mode, each correctly."""
    jobs = [(IN_SCOPE, "atoms"), (IN_SCOPE, "base"), (OUT_OF_SCOPE, "atoms"), (IN_SCOPE, "context")]
    with ThreadPoolExecutor(len(jobs)) as ex:
        res = list(ex.map(lambda j: chat(client, j[0], mode=j[1]), jobs))
    assert res[0]["atoms"] and res[1]["atoms"] == [] and res[2]["refused"] and res[3]["atoms"]


# -- the CLI entry point --------------------------------------------------------------------------

def test_serve_cli_parses_and_stays_light():
    code = ("import argparse, sys\nfrom serving.http import cli\n"
            "ap = argparse.ArgumentParser(); sub = ap.add_subparsers(dest='command'); cli.add_parser(sub)\n"
            "a = ap.parse_args(['serve', '--kb', 'K', '--port', '9', '--max-batch', '4', '--device', 'cpu'])\n"
            "print('ARGS', a.kb, a.host, a.port, a.max_batch, a.token, a.device)\n"
            "heavy = [m for m in ('fastapi', 'uvicorn', 'torch', 'starlette') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "ARGS K 127.0.0.1 9 4 None cpu" in r.stdout and "HEAVY=\n" in r.stdout


def test_serve_cli_errors_are_messages(tmp_path, capsys):
    from serving.http import cli

    assert cli.main(["--kb", str(tmp_path / "nokb")]) == 3
    assert "no knowledge base" in capsys.readouterr().err
    assert cli.main(["--kb", str(tmp_path / "nokb"), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_serve_cli_device_is_checked(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from serving.http import cli

    assert cli.main(["--kb", str(tmp_path / "nokb"), "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_stream_text_holds_back_a_possible_stop_string():
    from doc2atom.schemas import Answer
    from serving.http.openai_compat import AskParams, StreamText, TokenSink

    p = AskParams(question="q", mode="atoms", top_k=None, max_new_tokens=48, model="doc2atom", stop=("END",))
    st = StreamText(p)
    got = []
    for text in ["Hel", "Hello E", "Hello EN", "Hello ENx", "Hello ENx wor", "Hello ENx world EN", "Hello ENx world END!"]:
        got += [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in st.feed(text)]
    assert "".join(got) == "Hello ENx world " and all(got)
    sink = TokenSink()
    sink.prompt(0, 5)
    for t in "abc":
        sink.token(0, 1, t)
    sink.finish(0, "length")
    tail = st.end(Answer(answer="Hello ENx world END!", refused=False, atoms=[], timings_ms={}), sink)
    last = json.loads(tail[-2][6:])
    assert last["choices"][0]["finish_reason"] == "stop" and tail[-1] == "data: [DONE]\n\n"
