"""The micro-batcher alone, with a fake knowledge base: batching, grouping, ordering with writes,
back-pressure, cancellation, and one bad request not failing its batch-mates."""

from __future__ import annotations

import threading
import time

import pytest

from serving.http.batcher import Batcher, QueueFull


class FakeKB:
    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple] = []
        self.delay = delay
        self.log: list[str] = []

    def ask_many(self, questions, mode="atoms", top_k=None, max_new_tokens=48, batch_size=8):
        assert batch_size == len(questions)
        self.calls.append((tuple(questions), mode, top_k, max_new_tokens))
        self.log.extend(f"ask:{q}" for q in questions)
        time.sleep(self.delay)
        if any(q == "bad" for q in questions):
            raise ValueError("bad question")
        return [f"{mode}/{top_k}/{max_new_tokens}:{q}" for q in questions]


def make(kb, **kw) -> Batcher:
    b = Batcher(kb, reopen_store=False, **kw)
    b.start()
    return b


def hold(b: Batcher) -> threading.Event:
    """Keep the worker busy until the returned event is set."""
    started, release = threading.Event(), threading.Event()
    b.submit_job(lambda kb: (started.set(), release.wait(30)))
    assert started.wait(30)
    return release


def test_queued_asks_share_one_call_per_group():
    kb = FakeKB()
    b = make(kb, max_batch=8)
    release = hold(b)
    futs = [b.submit_ask(f"q{i}") for i in range(5)] + [b.submit_ask("c", mode="context"),
                                                        b.submit_ask("k", top_k=3), b.submit_ask("t", max_new_tokens=5)]
    release.set()
    assert [f.result(10) for f in futs] == [f"atoms/None/48:q{i}" for i in range(5)] + [
        "context/None/48:c", "atoms/3/48:k", "atoms/None/5:t"]
    b.stop()
    assert kb.calls[0] == (tuple(f"q{i}" for i in range(5)), "atoms", None, 48)
    assert len(kb.calls) == 4 and b.stats()["largest_batch"] == 5 and b.stats()["served"] == 8


def test_max_batch_caps_a_batch():
    kb = FakeKB()
    b = make(kb, max_batch=3)
    release = hold(b)
    futs = [b.submit_ask(f"q{i}") for i in range(7)]
    release.set()
    [f.result(10) for f in futs]
    b.stop()
    assert [len(c[0]) for c in kb.calls] == [3, 3, 1]


def test_one_at_a_time_when_max_batch_is_one():
    kb = FakeKB()
    b = make(kb, max_batch=1)
    release = hold(b)
    futs = [b.submit_ask(f"q{i}") for i in range(4)]
    release.set()
    [f.result(10) for f in futs]
    b.stop()
    assert [len(c[0]) for c in kb.calls] == [1, 1, 1, 1]


def test_a_waiting_batch_fills_up_within_max_wait():
    kb = FakeKB()
    b = make(kb, max_batch=4, max_wait_ms=300)
    futs = []
    for i in range(4):  # arrive one by one, while the first waits for company
        futs.append(b.submit_ask(f"q{i}"))
        time.sleep(0.02)
    [f.result(10) for f in futs]
    b.stop()
    assert [len(c[0]) for c in kb.calls] == [4]


def test_writes_keep_their_place_in_the_queue():
    kb = FakeKB()
    b = make(kb, max_batch=8)
    release = hold(b)
    f1 = b.submit_ask("before")
    w = b.submit_job(lambda kb: kb.log.append("write") or "done")
    f2 = b.submit_ask("after")
    release.set()
    assert (f1.result(10), w.result(10), f2.result(10)) == ("atoms/None/48:before", "done", "atoms/None/48:after")
    b.stop()
    assert kb.log == ["ask:before", "write", "ask:after"]


def test_a_failing_request_does_not_fail_its_batch_mates():
    kb = FakeKB()
    b = make(kb, max_batch=8)
    release = hold(b)
    good, bad, good2 = b.submit_ask("a"), b.submit_ask("bad"), b.submit_ask("b")
    release.set()
    assert good.result(10) == "atoms/None/48:a" and good2.result(10) == "atoms/None/48:b"
    with pytest.raises(ValueError, match="bad question"):
        bad.result(10)
    b.stop()
    assert b.stats()["failed"] == 1 and b.stats()["served"] == 2


def test_full_queue_raises_queue_full_and_cancelled_asks_are_skipped():
    kb = FakeKB()
    b = make(kb, max_batch=8, queue_size=3)
    release = hold(b)
    futs = [b.submit_ask(f"q{i}") for i in range(3)]
    with pytest.raises(QueueFull, match="retry"):
        b.submit_ask("one too many")
    assert futs[1].cancel()  # its client went away
    release.set()
    assert futs[0].result(10) and futs[2].result(10)
    b.stop()
    assert kb.calls == [(("q0", "q2"), "atoms", None, 48)]


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"queue_size": 0}, {"max_wait_ms": -1}])
def test_bad_settings_name_the_parameter(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Batcher(FakeKB(), **kw)


class HookKB(FakeKB):
    """ask_many that 'generates' each question's characters as tokens through the hooks."""

    def ask_many(self, questions, mode="atoms", top_k=None, max_new_tokens=48, batch_size=8, hooks=None):
        self.calls.append((tuple(questions), mode, top_k, max_new_tokens))
        if hooks is not None:
            for r, q in enumerate(questions):
                hooks.prompt(r, 10 + r)
            for step in range(max(len(q) for q in questions)):
                for r, q in enumerate(questions):
                    if step < len(q):
                        hooks.token(r, ord(q[step]), q[step])
                        if step == len(q) - 1:
                            hooks.finish(r, "stop")
        return list(questions)


class Sink:
    def __init__(self):
        self.rows, self.n, self.text, self.reason = set(), None, "", None

    def prompt(self, row, n):
        self.rows.add(row)
        self.n = n

    def token(self, row, tid, delta):
        self.rows.add(row)
        self.text += delta

    def finish(self, row, reason):
        self.reason = reason


def test_each_ask_sink_sees_only_its_own_row():
    kb = HookKB()
    b = make(kb, max_batch=8)
    release = hold(b)
    sinks = [Sink(), None, Sink()]
    futs = [b.submit_ask(q, sink=s) for q, s in zip(["abc", "de", "fghij"], sinks)]
    release.set()
    assert [f.result(10) for f in futs] == ["abc", "de", "fghij"]
    b.stop()
    assert len(kb.calls) == 1
    assert sinks[0].rows == {0} and sinks[0].text == "abc" and sinks[0].n == 10 and sinks[0].reason == "stop"
    assert sinks[2].rows == {0} and sinks[2].text == "fghij" and sinks[2].n == 12


def test_asks_without_sinks_pass_no_hooks():
    kb = FakeKB()  # its ask_many takes no hooks argument
    b = make(kb)
    assert b.submit_ask("q").result(10) == "atoms/None/48:q"
    b.stop()
