"""The atom weight format: per target module an A (r, d_in) and a B (d_out, r), scale folded
into B, stored fp16, many atoms stacked per shard (`<module>.A` (n, r, d_in), `<module>.B`
(n, d_out, r)). An atom's rank and feature sizes are read off its tensors, never stored twice.
"""

from __future__ import annotations

import torch

from compiler.train import CompiledAtom
from doc2atom import errors

FP16_MAX = 65504.0


def pack(atoms: list[CompiledAtom]) -> dict[str, torch.Tensor]:
    """Stack compiled atoms into shard tensors (fp16). Rejects NaN/inf and fp16 overflow."""
    if not atoms:
        return {}
    modules = sorted(atoms[0].weights)
    out: dict[str, torch.Tensor] = {}
    for m in modules:
        A = torch.stack([a.weights[m][0] for a in atoms])
        B = torch.stack([a.weights[m][1] for a in atoms])
        for name, t in ((m + ".A", A), (m + ".B", B)):
            if not torch.isfinite(t).all():
                raise errors.bad_weights(name, "NaN or infinite values after compilation")
            if t.abs().max() > FP16_MAX:
                raise errors.bad_weights(name, "values overflow fp16")
            out[name] = t.to(torch.float16).contiguous()
    return out


def nbytes_per_atom(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes one atom takes in a shard (all its rows across modules)."""
    n = next(iter(tensors.values())).shape[0]
    return sum(t.numel() * t.element_size() for t in tensors.values()) // max(n, 1)
