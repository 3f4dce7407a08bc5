"""The HTTP server: an OpenAI-compatible API over a knowledge base, with batching, and the inspector page.

Importing this package is light (the CLI imports `serving.http.cli` for `doc2atom --help`);
FastAPI and uvicorn are imported only by `serving.http.app` and when the server runs.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from serving.http.app import create_app

        return create_app
    raise AttributeError(f"module 'serving.http' has no attribute {name!r}")
