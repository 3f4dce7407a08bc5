"""Attach atom composition to a frozen causal LM: every target linear gets an unmerged delta.

The base weights are never modified. Which atoms act on which request is one piece of
state shared by all wrapped layers (`ComposeState`), set once per forward, so that
per-step metadata is built once and not per layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from compiler.compose import compose_delta, get_backend


@dataclass
class ComposeState:
    """What the wrapped layers read on each forward.

    pools: module name -> (A (N, r, d_in), B (N, d_out, r)); the atom pool of that module.
    idx:   (Bsz, K) slots into the pools per request (-1 = padding), or None for no atoms.
    w:     (Bsz, K) composition weights.
    """

    pools: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    idx: torch.Tensor | None = None
    w: torch.Tensor | None = None
    meta: object | None = None  # triton_ops.ComposeMeta on CUDA: validated once per set(), no sync per layer
    checked: tuple | None = None  # (idx, pool size) whose slot range was checked: later layers skip the sync

    def set(self, idx: torch.Tensor | None, w: torch.Tensor | None = None) -> None:
        if idx is not None and w is None:
            w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
        self.idx, self.w = idx, w
        self.meta = None
        self.checked = None
        if idx is not None and idx.is_cuda and get_backend() != "torch":
            try:
                from compiler.compose.triton_ops import ComposeMeta
            except ImportError:
                return
            self.meta = ComposeMeta(idx, w)

    def clear(self) -> None:
        self.idx, self.w, self.meta, self.checked = None, None, None, None


class AtomLinear(nn.Module):
    """A frozen nn.Linear plus the composed deltas of the current batch's atoms."""

    def __init__(self, base: nn.Linear, name: str, state: ComposeState):
        super().__init__()
        self.base = base
        self.name = name
        self.state = state

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        st = self.state
        if st.idx is None or self.name not in st.pools:
            return y
        A, B = st.pools[self.name]
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1]) if x.dim() != 3 else x
        if st.meta is not None and not (torch.is_grad_enabled() and (A.requires_grad or x.requires_grad)):
            from compiler.compose.triton_ops import compose_delta_triton

            # the kernel adds the delta into the base output in place: no extra buffer, no sync
            y3 = y.reshape(x3.shape[0], x3.shape[1], -1)
            compose_delta_triton(x3, A, B, meta=st.meta, out=y3, accumulate=True)
            return y3.reshape(*shape[:-1], y3.shape[-1])
        N = A.shape[0]
        first = st.checked is None or st.checked[0] is not st.idx or st.checked[1] != N
        delta = compose_delta(x3, A, B, st.idx, st.w, check_range=first)
        if first:
            st.checked = (st.idx, N)
        return y + delta.reshape(*shape[:-1], delta.shape[-1])


def default_layers(model: nn.Module) -> list[int]:
    """The upper half of the decoder layers."""
    n = int(model.config.num_hidden_layers)
    return list(range(n // 2, n))


def target_names(model: nn.Module, modules: list[str], layers: list[int] | None) -> list[str]:
    """Names of the linear layers matching `modules` (suffixes such as 'down_proj') in `layers`
    (None: default_layers)."""
    if layers is None:
        layers = default_layers(model)
    names = []
    pat = re.compile(r"\.layers\.(\d+)\.")
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, AtomLinear)):
            continue
        if name.rsplit(".", 1)[-1] not in modules:
            continue
        m = pat.search(name)
        if m is None:
            continue
        if layers is not None and int(m.group(1)) not in layers:
            continue
        names.append(name)
    return names


def attach(model: nn.Module, names: list[str]) -> ComposeState:
    """Wrap the named linears of `model` in AtomLinear (idempotent) and return the shared state."""
    state = getattr(model, "_doc2atom_state", None)
    if state is None:
        state = ComposeState()
        model._doc2atom_state = state  # type: ignore[attr-defined]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        mod = getattr(parent, child)
        if isinstance(mod, AtomLinear):
            continue
        setattr(parent, child, AtomLinear(mod, name, state))
    return state


def module_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each named linear (wrapped or not)."""
    out = {}
    for name in names:
        mod = model.get_submodule(name)
        out[name] = (mod.in_features, mod.out_features)
    return out


def first_layer(names: list[str]) -> int:
    """The lowest decoder layer index among the named linears (0 if none carries an index)."""
    idx = [int(m.group(1)) for n in names if (m := re.search(r"\.layers\.(\d+)\.", n))]
    return min(idx) if idx else 0
