"""The micro-batcher: one worker thread owns the knowledge base; concurrent asks share forward passes.

HTTP handlers never touch the model. They put work on a bounded queue and wait on a future:
- an *ask* joins the next batch: the worker takes up to `max_batch` queued asks (waiting up to
  `max_wait_ms` for more when the queue runs dry), groups them by (mode, top_k, max_new_tokens)
  and answers each group with ONE `kb.ask_many` call, in which every request keeps its own
  routed atoms (the composition op adds a different atom set per row of the batch). A row that
  finishes leaves the batch's decoding at once (serving/generate.py), so a batch costs what its
  live rows cost. An ask may carry a `sink` (prompt/token/finish, as serving.generate's hooks):
  it sees its own row's token counts and text as they are generated (usage, streaming);
- a *job* (ingest, forget) runs alone, in queue order, between batches, so that no answer
  is ever computed from a half-written knowledge base.

A full queue is back-pressure (`QueueFull`, HTTP 429), never an unbounded backlog.

The worker is the only thread that uses the model and the KB's own SQLite connection: the
model is not thread-safe (atoms attach to its layers per batch) and an SQLite connection may
only be used by the thread that opened it, so the worker re-opens the KB's store on start.
This module must never import FastAPI: it is plain threads and futures, testable alone.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The request queue holds `queue_size` items already; the client should retry later."""

    def __init__(self, size: int):
        super().__init__(f"the server is busy: {size} requests are already queued; retry in a moment.")
        self.message = str(self)


@dataclass
class _Ask:
    question: str
    mode: str
    top_k: int | None
    max_new_tokens: int
    future: Future
    sink: Any = None  # per-request GenerateHooks (row 0 = this request), or None
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple:
        return (self.mode, self.top_k, self.max_new_tokens)


@dataclass
class _Job:
    fn: Callable[[Any], Any]  # called with the KnowledgeBase, on the worker thread
    future: Future


class Batcher:
    """Queue + worker thread in front of one KnowledgeBase. start() before use, stop() at the end."""

    def __init__(self, kb, max_batch: int = 16, queue_size: int = 256, max_wait_ms: float = 5.0,
                 warmup: bool = False, reopen_store: bool = True):
        if not isinstance(max_batch, int) or not 1 <= max_batch <= 1024:
            raise ValueError(f"max_batch must be an integer in 1..1024, got {max_batch!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in 0..1000, got {max_wait_ms!r}")
        self.kb = kb
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.max_wait = max_wait_ms / 1000
        self.warmup = warmup
        self.reopen_store = reopen_store
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once the worker owns the KB (and warmed up, if asked)
        self.startup_error: BaseException | None = None
        # statistics, written by the worker only
        self.batch_sizes: collections.Counter = collections.Counter()  # ask_many call size -> count
        self.served = 0
        self.failed = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        assert self._thread is None, "Batcher.start() called twice"
        self._thread = threading.Thread(target=self._run, name="doc2atom-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- submitting ---------------------------------------------------------------------------

    def _put(self, item) -> Future:
        with self._cv:
            if self._stopping:
                raise QueueFull(len(self._q))
            if len(self._q) >= self.queue_size:
                raise QueueFull(len(self._q))
            self._q.append(item)
            self._cv.notify()
        return item.future

    def submit_ask(self, question: str, mode: str = "atoms", top_k: int | None = None,
                   max_new_tokens: int = 48, sink=None) -> Future:
        """Queue one question; the future resolves to its doc2atom.schemas.Answer. Raises QueueFull.

        sink: optional object with prompt(row, n), token(row, token_id, text_delta), finish(row, reason),
        called on the worker thread with row 0 while this question is generated (a refused question
        generates nothing). If its batch fails and it is retried alone, `sink.restart()` (if defined) runs first.
        """
        return self._put(_Ask(question, mode, top_k, max_new_tokens, Future(), sink))

    def submit_job(self, fn: Callable[[Any], Any]) -> Future:
        """Queue fn(kb) to run alone on the worker (writes). Raises QueueFull."""
        return self._put(_Job(fn, Future()))

    def depth(self) -> int:
        with self._cv:
            return len(self._q)

    def stats(self) -> dict:
        sizes = dict(sorted(self.batch_sizes.items()))
        return {"max_batch": self.max_batch, "queue_size": self.queue_size, "queued": self.depth(),
                "served": self.served, "failed": self.failed, "batches": sum(sizes.values()),
                "largest_batch": max(sizes, default=0), "batch_sizes": {str(k): v for k, v in sizes.items()}}

    # -- the worker ---------------------------------------------------------------------------

    def _own_kb(self) -> None:
        if self.reopen_store:
            from doc2atom.store import KBStore

            # The caller's connection belongs to the thread that opened it; this thread needs its own.
            self.kb.store = KBStore(self.kb.path)
        if self.warmup:
            self.kb.model()
            self.kb.embedder()
            self.kb.index()

    def _run(self) -> None:
        try:
            self._own_kb()
        except BaseException as e:  # reported by /healthz and to every request
            self.startup_error = e
        self.ready.set()
        while True:
            with self._cv:
                while not self._q and not self._stopping:
                    self._cv.wait()
                if not self._q:
                    return  # stopping, and nothing left to do
                first = self._q.popleft()
            if isinstance(first, _Job):
                self._run_job(first)
                continue
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            with self._cv:
                while len(batch) < self.max_batch:
                    if self._q:
                        if isinstance(self._q[0], _Job):
                            break  # a write waits its turn: answer what came before it first
                        batch.append(self._q.popleft())
                        continue
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._stopping:
                        break
                    self._cv.wait(left)
            self._run_batch(batch)

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if self.startup_error is not None:
            job.future.set_exception(self.startup_error)
            return
        try:
            job.future.set_result(job.fn(self.kb))
        except BaseException as e:
            job.future.set_exception(e)

    def _run_batch(self, batch: list[_Ask]) -> None:
        live = [a for a in batch if a.future.set_running_or_notify_cancel()]  # drop clients that left
        if self.startup_error is not None:
            for a in live:
                a.future.set_exception(self.startup_error)
            return
        groups: dict[tuple, list[_Ask]] = {}
        for a in live:
            groups.setdefault(a.group, []).append(a)
        for (mode, top_k, max_new), asks in groups.items():
            try:
                answers = self._ask_many(asks, mode, top_k, max_new)
            except BaseException as e:
                if len(asks) == 1:
                    self.failed += 1
                    asks[0].future.set_exception(e)
                    continue
                # one request's problem must not fail the others: answer them one by one
                for a in asks:
                    try:
                        if a.sink is not None and hasattr(a.sink, "restart"):
                            a.sink.restart()
                        a.future.set_result(self._ask_many([a], mode, top_k, max_new)[0])
                        self.served += 1
                    except BaseException as e1:
                        self.failed += 1
                        a.future.set_exception(e1)
                continue
            for a, ans in zip(asks, answers):
                a.future.set_result(ans)
            self.served += len(asks)

    def _ask_many(self, asks: list[_Ask], mode, top_k, max_new):
        self.batch_sizes[len(asks)] += 1
        kw = {}
        if any(a.sink is not None for a in asks):
            kw["hooks"] = _Sinks([a.sink for a in asks])
        return self.kb.ask_many([a.question for a in asks], mode=mode, top_k=top_k, max_new_tokens=max_new,
                                batch_size=len(asks), **kw)


class _Sinks:
    """Generate hooks for a batch: row i goes to sinks[i] as its row 0 (None: nobody listens)."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def prompt(self, row: int, n_tokens: int) -> None:
        if self.sinks[row] is not None:
            self.sinks[row].prompt(0, n_tokens)

    def token(self, row: int, token_id: int, text_delta: str) -> None:
        if self.sinks[row] is not None:
            self.sinks[row].token(0, token_id, text_delta)

    def finish(self, row: int, reason: str) -> None:
        if self.sinks[row] is not None:
            self.sinks[row].finish(0, reason)
