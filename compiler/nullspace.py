"""Keep atoms out of the directions that ordinary inputs use (a null-space constraint).

An atom's delta on a linear layer is B (A x): it acts on an input x only through A x. If the rows
of A are orthogonal to the inputs that unrelated prompts produce at that layer, the atom leaves
those prompts alone by construction, whatever B learns. For each target module we collect its
inputs over a pool of generic prompts (the locality pool, with the base model's own short
continuation), take the principal directions that hold `energy` of their second moment, and
project every atom's A onto their orthogonal complement at initialisation and after every step.
The atom then has to find what is specific to its own questions.
"""

from __future__ import annotations

import torch

from compiler.padding import pad
from doc2atom.prompts import prompt_ids

_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


@torch.no_grad()
def generic_bases(model, tok, names: list[str], energy: float, new_tokens: int = 16) -> dict[str, torch.Tensor]:
    """module name -> U (d_in, k), orthonormal principal directions of its inputs on generic prompts."""
    from compiler.locality import LOCALITY_PROMPTS

    key = (id(model), tuple(names), round(energy, 6), new_tokens)
    if key in _CACHE:
        return _CACHE[key]
    dev = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = pad([prompt_ids(tok, q) for q in LOCALITY_PROMPTS], pad_id, left=True)
    seqs = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    full_mask = torch.cat([mask.to(dev), torch.ones(len(seqs), new_tokens, dtype=mask.dtype, device=dev)], 1)
    second: dict[str, torch.Tensor] = {}
    keep = full_mask.bool()
    hooks = []
    for n in names:
        mod = model.get_submodule(n)
        target = getattr(mod, "base", mod)  # AtomLinear wraps the frozen nn.Linear

        def hook(_m, args, n=n):
            x = args[0][keep].float()  # real (unpadded) positions only
            second[n] = second.get(n, 0) + x.T @ x

        hooks.append(target.register_forward_pre_hook(hook))
    try:
        model(input_ids=seqs, attention_mask=full_mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, S in second.items():
        vals, vecs = torch.linalg.eigh(S)  # ascending
        vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
        frac = torch.cumsum(vals, 0) / vals.sum().clamp(min=1e-12)
        k = int((frac < energy).sum()) + 1
        out[n] = vecs[:, :k].contiguous()
    _CACHE[key] = out
    return out


@torch.no_grad()
def project_out(A: torch.Tensor, U: torch.Tensor) -> None:
    """In place: A (M, r, d_in) <- A - (A U) U^T, so that A x = 0 for x in span(U)."""
    A.sub_((A @ U.to(A.dtype)) @ U.T.to(A.dtype))
