"""The kernel bench's helpers that run on any machine: the cache rewind of --graphed-pairs, the variant settings."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def bk():
    spec = importlib.util.spec_from_file_location("bench_kernel_under_test", ROOT / "bench" / "bench_kernel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rewind_sets_every_layer_counter_and_ignores_layers_without_one(bk):
    """transformers 5's StaticLayer writes at its own counter: a replayed graph must start from the prompt again."""
    layers = [SimpleNamespace(cumulative_length=torch.tensor(150)), SimpleNamespace(cumulative_length=torch.tensor(7)),
              SimpleNamespace()]  # an older cache layer: no counter
    bk._rewind(SimpleNamespace(layers=layers), 128)
    assert [int(layer.cumulative_length) for layer in layers[:2]] == [128, 128]
    bk._rewind(SimpleNamespace(), 128)  # a cache without layers (older transformers): nothing to do


def test_median_of(bk):
    assert bk._median_of([3.0, 1.0, 2.0]) == 2.0
    assert bk._median_of([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert bk._median_of([]) is None


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (the variants set the Triton paths' knobs)")
def test_variant_sets_and_restores_the_knobs(bk):
    import compiler.compose.grouped as grouped
    from compiler.compose.triton_ops import gemv_knobs

    before = (gemv_knobs(), grouped.default_path, grouped.overlap, grouped.side_priority)
    with bk._variant("e2n+path=wide+overlap=never"):
        assert gemv_knobs()[2] == "e2n"
        assert (grouped.default_path, grouped.overlap) == ("wide", "never")
    with bk._variant("4"):  # a bare value is the warps knob
        assert gemv_knobs()[2] == "4"
    with bk._variant("default"):
        assert gemv_knobs() == before[0]
    assert (gemv_knobs(), grouped.default_path, grouped.overlap, grouped.side_priority) == before
    with pytest.raises(ValueError, match="unknown variant keys"):
        with bk._variant("warps=e2+colour=blue"):
            pass
    with pytest.raises(ValueError, match="warps"):
        with bk._variant("warps=7"):
            pass
    assert (gemv_knobs(), grouped.default_path, grouped.overlap, grouped.side_priority) == before
