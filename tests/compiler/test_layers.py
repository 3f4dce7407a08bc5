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


def test_bf16_linears_match_fp32_forward_and_input_gradient_and_leave_the_model_alone():
    """The bf16 fast path of the compile loop against the plain fp32 path: same hidden states and the same
    gradients for an atom-like trainable tensor, within bf16 rounding; the model's weights stay fp32 and equal."""
    from compiler.layers import Bf16Linears

    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen, as the compiler's base model is (weights that train are left alone)
    before = {n: p.clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 50, (n,), generator=g).tolist() for n in (9, 6)]
    lower = stack_right(lower_states(model, seqs, 2, pad_id=0))

    def run(fast):
        x = (lower * 1.0).requires_grad_(True)  # stands in for an upstream atom's output
        ctx = fast if fast is not None else torch.enable_grad()
        with ctx:
            h = run_layers(model, x, 2, None, final_norm=True)
            logits = model.lm_head(h)
            loss = torch.log_softmax(logits.float(), -1)[..., 3].sum()
            loss.backward()
        return h.detach(), x.grad

    h32, g32 = run(None)
    fast = Bf16Linears()
    h16, g16 = run(fast)
    assert h16.dtype == torch.float32 and g16.dtype == torch.float32
    assert not torch.equal(h16, h32)  # the fast path really ran in bf16
    torch.testing.assert_close(h16, h32, rtol=0.05, atol=0.05)
    cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert cos > 0.99, cos
    assert len(fast._cache) > 0
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
