"""HTTP load benchmark: throughput and p50/p99 latency of POST /v1/chat/completions at 1, 4 and 16
concurrent clients, batched (--max-batch 16) vs one at a time (--max-batch 1), errors counted.

Loopback only: the server is `python -m serving.http.cli` on 127.0.0.1, started by this script
and stopped at the end. Bounded: each (max_batch, clients) run sends at most --requests-per-client
requests per client and stops issuing new ones after --seconds.

Needs a built knowledge base (default .kb/sample, the sample corpus with the embedded models):
    .venv/bin/python -c "from serving.pipeline import KnowledgeBase; KnowledgeBase('.kb/sample').ingest(['data/sample'])"
Run:  OMP_NUM_THREADS=2 .venv/bin/python bench/bench_http_load.py [--out bench/results/http_load_cpu.json]
Never run two torch benchmarks at once on a 2-core machine: the figures would be meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


class Server:
    """`doc2atom serve` in a subprocess on 127.0.0.1."""

    def __init__(self, kb: str, max_batch: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.http.cli", "--kb", kb, "--host", "127.0.0.1", "--port", str(self.port),
             "--max-batch", str(max_batch), "--queue-size", "256", "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, client, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                h = client.get(self.url + "/healthz", timeout=5).json()
                if h["status"] == "ok":
                    return h
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_load(url: str, questions: list[str], clients: int, per_client: int, seconds: float) -> dict:
    """`clients` threads, each sending up to `per_client` requests one after another, until `seconds` pass."""
    import httpx

    lat, errors, answers, timings, tokens = [], [], {}, [], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            for i in range(per_client):
                if time.monotonic() > deadline:
                    return
                q = questions[(c * per_client + i) % len(questions)]
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/v1/chat/completions",
                                  json={"model": "doc2atom-atoms", "messages": [{"role": "user", "content": q}]})
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code == 200:
                            lat.append(dt)
                            body = r.json()
                            answers[q] = body["choices"][0]["message"]["content"]
                            timings.append(body["timings_ms"])
                            tokens.append((body.get("usage") or {}).get("completion_tokens"))
                        else:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                except Exception as e:  # counted, never hidden
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(client_loop, range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
            "error_samples": errors[:3], "wall_s": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 3) if wall else None,
            "latency_s": {"p50": _r(percentile(lat, 50)), "p99": _r(percentile(lat, 99)),
                          "mean": _r(statistics.fmean(lat) if lat else None), "max": _r(max(lat, default=None))},
            # server side, per request (a batch's stage time divided by its size), mean over the run
            "server_ms_per_request": {k: round(statistics.fmean(t.get(k, 0.0) for t in timings), 1)
                                      for k in ("route_ms", "load_ms", "generate_ms", "total_ms")} if timings else None,
            "completion_tokens_mean": _r(statistics.fmean(t for t in tokens if t is not None))
            if any(t is not None for t in tokens) else None,
            "_answers": answers}


def _r(x):
    return None if x is None else round(x, 3)


def loadavg() -> float | None:
    """The 1-minute load average: other work on the machine skews the figures, so it is recorded."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return None


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "fastapi", "starlette", "uvicorn", "httpx", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def base_model(kb: str) -> str | None:
    from doc2atom.store import KBStore

    name = KBStore(kb).get_meta("base_name")
    return Path(name).name if name else None


def git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", default=str(ROOT / ".kb" / "sample"))
    ap.add_argument("--questions", default=str(ROOT / "data" / "sample_questions.json"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "http_load_cpu.json"))
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--batches", default="16,1", help="server --max-batch values to compare")
    ap.add_argument("--requests-per-client", default="1:8,4:6,16:3",
                    help="clients:requests each (bounds the count)")
    ap.add_argument("--seconds", type=float, default=240, help="stop issuing requests after this, per run")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. what else ran)")
    args = ap.parse_args()

    import httpx

    qs = json.loads(Path(args.questions).read_text())["questions"]
    questions = [q["question"] for q in qs if q["kind"] in ("direct", "paraphrase")]
    per_client = dict(tuple(map(int, x.split(":"))) for x in args.requests_per_client.split(","))
    clients = [int(c) for c in args.clients.split(",")]
    runs, answers_by_batch, health = [], {}, None
    logdir = Path("/tmp") / f"bench_http_load_{os.getpid()}"
    logdir.mkdir(exist_ok=True)
    for mb in [int(b) for b in args.batches.split(",")]:
        server = Server(args.kb, mb, logdir / f"server_mb{mb}.log")
        try:
            with httpx.Client() as http:
                t0 = time.perf_counter()
                health = server.wait_ready(http)
                startup = time.perf_counter() - t0
                http.post(server.url + "/v1/chat/completions", timeout=600,  # warm: first generate call
                          json={"messages": [{"role": "user", "content": questions[0]}]})
                for c in clients:
                    before = http.get(server.url + "/healthz").json()["batcher"]["batch_sizes"]
                    load_before = loadavg()
                    res = run_load(server.url, questions, c, per_client.get(c, 2), args.seconds)
                    res["loadavg_1min_before_after"] = [load_before, loadavg()]
                    after = http.get(server.url + "/healthz").json()["batcher"]["batch_sizes"]
                    res["batch_sizes"] = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
                    answers_by_batch.setdefault(mb, {}).update(res.pop("_answers"))
                    res.update(max_batch=mb, server_startup_s=round(startup, 1))
                    runs.append(res)
                    print(json.dumps(res), flush=True)
        finally:
            server.stop()

    same = None
    if len(answers_by_batch) == 2:
        a, b = answers_by_batch.values()
        common = sorted(set(a) & set(b))
        same = {"questions": len(common), "identical": sum(a[q] == b[q] for q in common)}

    def rps(mb, c):
        return next((r["throughput_rps"] for r in runs if r["max_batch"] == mb and r["clients"] == c), None)

    speedup = {str(c): round(rps(16, c) / rps(1, c), 2) for c in clients if rps(16, c) and rps(1, c)}
    out = {
        "benchmark": "http_load",
        "what": "POST /v1/chat/completions (mode atoms, 48 new tokens max, greedy) over loopback; each client "
                "sends its requests one after another; latency is per request, client side",
        "note": args.note,
        "commit": git_commit(), "machine": machine(), "versions": versions(),
        "settings": {"kb": os.path.relpath(args.kb, ROOT), "documents": health and health["documents"],
                     "atoms": health and health["atoms"], "base_model": base_model(args.kb),
                     "questions": "data/sample_questions.json, kinds direct + paraphrase",
                     "requests_per_client": per_client, "time_limit_s": args.seconds, "max_wait_ms": 5.0,
                     "queue_size": 256},
        "runs": runs,
        "throughput_speedup_batched_vs_one_at_a_time": speedup,
        "answers_batched_vs_one_at_a_time": same,
        "errors_total": sum(r["errors"] for r in runs),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
