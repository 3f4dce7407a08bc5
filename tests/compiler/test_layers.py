"""The split forward (lower layers once, upper layers replayed) against the model's own forward."""

from __future__ import annotations

import pytest
import torch

from compiler.layers import lower_states, run_layers, stack_right


def _model(attn: str = "sdpa"):
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # sdpa: causal flag, no mask; eager: explicit mask
@pytest.mark.parametrize("L", [0, 1, 2, 4])
def test_split_forward_matches_model_forward_on_real_positions(L, attn):
    model = _model(attn)
    assert model.config._attn_implementation == attn
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (5, 11, 1, 8)]
    lower = lower_states(model, seqs, L, pad_id=0, max_tokens=16)  # small budget: several groups
    assert [t.shape[0] for t in lower] == [len(s) for s in seqs]
    with torch.no_grad():
        h = run_layers(model, stack_right(lower), L, None, final_norm=True)
        for j, s in enumerate(seqs):
            ref = model.model(input_ids=torch.tensor([s])).last_hidden_state[0]
            torch.testing.assert_close(h[j, :len(s)], ref, rtol=1e-5, atol=1e-5)


def test_slot_range_is_checked_once_per_forward_and_still_caught():
    from compiler.lora import attach, target_names

    model = _model()
    names = target_names(model, ["o_proj"], None)
    state = attach(model, names)
    d = model.config.hidden_size
    state.pools = {n: (torch.zeros(2, 1, d), torch.zeros(2, d, 1)) for n in names}
    state.set(torch.tensor([[5]]))  # slot 5 of a 2-slot pool
    with pytest.raises(IndexError, match="out of range"):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    state.set(torch.tensor([[1]]))
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert state.checked is not None and state.checked[1] == 2
    state.clear()
