"""A real uvicorn server on 127.0.0.1 (a free port) in a background thread, for the HTTP tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

from conftest import SAMPLE, fast_compile


class LiveServer:
    """Runs `app` with uvicorn on a socket bound to 127.0.0.1:0; `url` is its address."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


def build_kb(folder: Path, tiny_base: Path, files: list[str] | None = None):
    """A KnowledgeBase on the tiny random model with the sample corpus (or some of its files) ingested."""
    from serving.pipeline import KnowledgeBase

    src = folder / "sample"
    src.mkdir(parents=True)
    for f in sorted(SAMPLE.iterdir()):
        if f.is_file() and (files is None or f.name in files):
            shutil.copy(f, src / f.name)
    kb = KnowledgeBase(folder / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    kb.ingest([str(src)])
    return kb
