"""CompileConfig.on: a GPU compiles in larger chunks and passes; the CPU keeps the stored settings."""

import pytest
import torch

from compiler.config import CompileConfig


def test_cpu_keeps_the_settings():
    cfg = CompileConfig(batch_atoms=8, max_tokens_per_step=512)
    assert cfg.on(torch.device("cpu")) is cfg
    assert cfg.on("cpu") is cfg


def test_gpu_takes_the_gpu_values():
    cfg = CompileConfig(batch_atoms=8, max_tokens_per_step=512, gpu_batch_atoms=2048, gpu_max_tokens_per_step=65536)
    g = cfg.on("cuda")
    assert (g.batch_atoms, g.max_tokens_per_step) == (2048, 65536)
    assert (cfg.batch_atoms, cfg.max_tokens_per_step) == (8, 512)  # the stored settings are not touched
    assert g.model_dump(exclude={"batch_atoms", "max_tokens_per_step"}) == \
        cfg.model_dump(exclude={"batch_atoms", "max_tokens_per_step"})  # nothing else changes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_token_budget_follows_memory():
    g = CompileConfig().on(torch.device("cuda", 0))
    gib = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    assert g.max_tokens_per_step == (131072 if gib >= 64 else 32768 if gib >= 16 else 8192)


def test_bad_gpu_values_are_rejected():
    with pytest.raises(ValueError):
        CompileConfig(gpu_batch_atoms=0)
    with pytest.raises(ValueError):
        CompileConfig(gpu_max_tokens_per_step=10)
