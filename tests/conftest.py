"""Shared fixtures: a tiny random Llama and a byte-level tokenizer (no downloads), and the
real embedded models for tests marked `slow`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_base(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny random Llama with a byte-level tokenizer and a chat template, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    specials = ["<|im_start|>", "<|im_end|>", "<|pad|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|pad|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|pad|>"], tie_word_embeddings=True,
                      initializer_range=0.3)  # large enough that logits can become confident
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def other_tiny_base(tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("other_base"), seed=1)


@pytest.fixture()
def sample_copy(tmp_path) -> Path:
    dest = tmp_path / "sample"
    shutil.copytree(SAMPLE, dest)
    return dest


@pytest.fixture(scope="session")
def nlp():
    from doc2atom.models import load_spacy

    return load_spacy()


def fast_compile():
    from compiler.config import CompileConfig

    return CompileConfig(max_steps=3, min_steps=1, questions=2, questions_per_step=1, batch_atoms=4)


EVAL_FIXTURE = ROOT / "tests" / "fixtures" / "eval_fixture.json"


@pytest.fixture(scope="session")
def eval_kb_master(tmp_path_factory, tiny_base) -> Path:
    """A knowledge base of the eval fixture's paragraphs on the tiny base, compiled once per session.
    Tests take a copy (`eval_kb_dir`), so that none sees another's changes."""
    from serving.evaluate.datasets import read_dataset
    from serving.pipeline import KnowledgeBase

    path = tmp_path_factory.mktemp("evalkb") / "kb"
    kb = KnowledgeBase(path, base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    kb.ingest_documents(read_dataset(EVAL_FIXTURE, "squad").documents)
    kb.close()
    return path


@pytest.fixture(scope="module")
def eval_kb_dir(eval_kb_master, tmp_path_factory) -> Path:
    """This test module's copy of `eval_kb_master`."""
    path = tmp_path_factory.mktemp("evalkb_copy") / "kb"
    shutil.copytree(eval_kb_master, path)
    return path


@pytest.fixture()
def eval_kb(eval_kb_dir, tiny_base):
    """The module's eval-fixture knowledge base, opened for one test (its settings changes die with it)."""
    from serving.pipeline import KnowledgeBase

    k = KnowledgeBase(eval_kb_dir, base_model=str(tiny_base), progress=False)
    yield k
    k.close()
