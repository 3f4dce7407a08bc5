"""The split forward (lower layers once, upper layers replayed) against the model's own forward."""

from __future__ import annotations

import pytest
import torch

from compiler.layers import lower_states, run_layers, stack_right


def _model():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("L", [0, 1, 2, 4])
def test_split_forward_matches_model_forward_on_real_positions(L):
    model = _model()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (5, 11, 1, 8)]
    lower = lower_states(model, seqs, L, pad_id=0, max_tokens=16)  # small budget: several groups
    assert [t.shape[0] for t in lower] == [len(s) for s in seqs]
    with torch.no_grad():
        h = run_layers(model, stack_right(lower), L, None, final_norm=True)
        for j, s in enumerate(seqs):
            ref = model.model(input_ids=torch.tensor([s])).last_hidden_state[0]
            torch.testing.assert_close(h[j, :len(s)], ref, rtol=1e-5, atol=1e-5)
