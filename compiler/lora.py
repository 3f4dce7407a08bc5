"""Attach atom composition to a frozen causal LM: every target linear gets an unmerged delta.

The base weights are never modified. Which atoms act on which request is one piece of
state shared by all wrapped layers (`ComposeState`), set once per forward, so that
per-step metadata is built once and not per layer.

On the GPU serving path (ComposeState.meta set, no gradients) projections that read the same
input (q/k/v of a layer, gate/up) can share one delta launch: `ComposeState.set_groups` names
the groups and their concatenated A (AtomPool.compose_groups() gives them). The first member's
AtomLinear then computes every member's delta (compiler.compose.grouped.serve_group): on a side
CUDA stream while the current stream runs the members' base GEMMs, then one add; or, without
the side stream, into fresh tensors that each member adds its base GEMM to (`delta.addmm_(x, W.T)`).
A sibling takes the precomputed result only when its input is the very same tensor object,
else it launches its own. Ungrouped projections run their delta on the side stream under their
base GEMM too (grouped.serve_linear). Training and the CPU path never take these branches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from compiler.compose import compose_delta, get_backend


# compiler.compose.grouped.lane_forward, set when that module is imported (it needs Triton; ComposeState.lanes
# has entries only once it has run)
_lane_forward = None


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
    groups: dict = field(default_factory=dict)  # member name -> ComposeGroup (GPU serving path only)
    lanes: dict = field(default_factory=dict)  # module name -> grouped._Lane (eager GPU serving; emptied per set())

    def set_groups(self, specs) -> None:
        """Projection groups sharing an input: specs = [(names, A_cat (N, sum r, d_in), ranks), ...].

        Member m of a group must have pools[name_m][0] == A_cat[:, off_m:off_m + r_m] (the same
        memory, as AtomPool gives); a group whose pools do not match is skipped at run time.
        An empty list turns grouping off. Call again after the pools are replaced.
        """
        self.groups = {}
        self.lanes.clear()
        for names, A, ranks in specs:
            grp = ComposeGroup(tuple(names), A, tuple(int(r) for r in ranks))
            for n in grp.names:
                self.groups[n] = grp

    def set(self, idx: torch.Tensor | None, w: torch.Tensor | None = None, *, trusted_size: int | None = None) -> None:
        """The batch's slots and weights. trusted_size: the caller built idx itself and every slot is below this
        pool size (the compiler's training steps): no range check, so no host sync, and no serving metadata
        (a forward with gradients never uses it)."""
        if idx is not None and w is None:
            w = torch.ones(idx.shape, dtype=torch.float32, device=idx.device)
        self.idx, self.w = idx, w
        self.meta = None
        self.checked = None
        self._drop_pending()
        if idx is not None and trusted_size is not None:
            self.checked = (idx, int(trusted_size))
            return
        if idx is not None and idx.is_cuda and get_backend() != "torch":
            try:
                from compiler.compose.triton_ops import ComposeMeta
            except ImportError:
                return
            self.meta = ComposeMeta(idx, w)

    def clear(self) -> None:
        self.idx, self.w, self.meta, self.checked = None, None, None, None
        self._drop_pending()

    def _drop_pending(self) -> None:
        for grp in self.groups.values():
            grp.pending = None
        self.lanes.clear()


class ComposeGroup:
    """Projections that read one input; their A concatenated along the rank axis, (N, sum r_m, d_in).

    `pending` holds (input, meta, {member: (tensor, weight)}) between the first member's call, which
    computed every member's delta (weight None) or whole output (made with that weight), and the
    siblings' calls that take theirs; `weights` the members' base weights as last seen
    (compiler.compose.grouped.serve_group does the work).
    """

    def __init__(self, names: tuple[str, ...], A: torch.Tensor, ranks: tuple[int, ...]):
        if len(names) != len(ranks) or sum(ranks) != A.shape[1]:
            raise ValueError(f"group {names}: ranks {ranks} must give one rank per member and sum to A's {A.shape[1]}")
        self.names, self.A, self.ranks = names, A, ranks
        self.offsets = tuple(sum(ranks[:m]) for m in range(len(ranks)))
        self.pending: tuple | None = None
        self.weights: dict = {}

    def member_B(self, state: ComposeState) -> list[torch.Tensor] | None:
        """Every member's B from state.pools, or None when the pools are not this group's A slices."""
        Bs = []
        A = self.A
        step = A.stride(1) * A.element_size()
        for n, off, r in zip(self.names, self.offsets, self.ranks):
            pool = state.pools.get(n)
            if pool is None:
                return None
            a, b = pool
            if (a.shape != (A.shape[0], r, A.shape[2]) or a.stride() != A.stride() or a.dtype != A.dtype
                    or a.data_ptr() != A.data_ptr() + off * step or a.device != A.device):
                return None  # the pools are not this group's slices (replaced, or grown since set_groups)
            Bs.append(b)
        return Bs


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
        st = self.state
        if st.lanes:  # eager GPU serving: the last fused call again (grouped.lane_forward), checks only
            y = _lane_forward(self, st, x)
            if y is not None:
                return y
        if st.groups and st.idx is not None and st.meta is not None and self.name in st.groups:
            y = self._grouped(x)
            if y is not None:
                return y
        if st.idx is None or self.name not in st.pools:
            return self.base(x)
        A, B = st.pools[self.name]
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1]) if x.dim() != 3 else x
        if st.meta is not None and not (torch.is_grad_enabled() and (A.requires_grad or x.requires_grad)):
            from compiler.compose.grouped import serve_linear
            from compiler.compose.triton_ops import compose_delta_triton

            y = serve_linear(self.base, x, A, B, st.meta, st, self.name)  # the delta on a side stream under the GEMM
            if y is not None:
                return y
            # the kernel adds the delta into the base output in place: no extra buffer, no sync
            y3 = self.base(x).reshape(x3.shape[0], x3.shape[1], -1)
            compose_delta_triton(x3, A, B, meta=st.meta, out=y3, accumulate=True)
            return y3.reshape(*shape[:-1], y3.shape[-1])
        y = self.base(x)
        N = A.shape[0]
        first = st.checked is None or st.checked[0] is not st.idx or st.checked[1] != N
        delta = compose_delta(x3, A, B, st.idx, st.w, check_range=first)
        if first:
            st.checked = (st.idx, N)
        return y + delta.reshape(*shape[:-1], delta.shape[-1])

    def _grouped(self, x: torch.Tensor) -> torch.Tensor | None:
        """GPU serving path of a grouped projection: x W^T + the group's delta (grouped.serve_group); None = not here."""
        st = self.state
        base = self.base
        W = base.weight
        if (type(base) is not nn.Linear or base.bias is not None or x.dim() < 2 or not x.is_cuda
                or x.dtype != W.dtype or self.name not in st.pools or torch.is_autocast_enabled("cuda")):
            return None
        A = st.pools[self.name][0]
        if torch.is_grad_enabled() and (A.requires_grad or x.requires_grad or W.requires_grad):
            return None
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1]) if x.dim() != 3 else x
        from compiler.compose.grouped import serve_group

        y = serve_group(st.groups[self.name], self.name, x3, W, st)  # (Bsz * T, d_out) or None
        return None if y is None else y.view(*shape[:-1], y.shape[-1])


def default_layers(model: nn.Module) -> list[int]:
    """The upper half of the decoder layers."""
    n = int(model.config.num_hidden_layers)
    return list(range(n // 2, n))


def target_names(model: nn.Module, modules: list[str], layers: list[int] | None) -> list[str]:
    """Names of the linear layers matching `modules` (suffixes such as 'down_proj') in `layers`
    (None: default_layers; a negative index counts from the top, -1 = the last layer)."""
    if layers is None:
        layers = default_layers(model)
    n = int(model.config.num_hidden_layers)
    layers = [i + n if i < 0 else i for i in layers]
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
