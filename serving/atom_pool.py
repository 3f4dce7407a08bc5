"""The atom pool: every loaded atom's A and B, packed per target module in large tensors.

Serving composes atoms by slot: for each target module the pool holds
A (capacity, rank, d_in) and B (capacity, d_out, rank), where `rank` is the largest rank
loaded so far and smaller atoms are zero-padded (zero rows of A and zero columns of B add
nothing). B is stored rank-major, as a contiguous (capacity, rank, d_out) tensor, and handed
out as its transposed view: the shapes and values are B's, but each rank of an atom is one
contiguous row of d_out values, which is what the GPU kernel's expand step reads (16-byte
loads instead of rank-strided 2-byte ones). An index maps atom id -> slot; `slots()` turns a batch's atom lists into the
(idx, w) tensors that `compiler.compose` and `compiler.lora.ComposeState` take, and `pools()`
gives the {module: (A, B)} mapping that ComposeState.pools expects.

Projections that read the same input (q/k/v of one layer, gate/up of one layer; `groups`)
keep their A in one tensor per group, the members' ranks concatenated per atom:
(capacity, n_members * rank, d_in). Each member's A in `pools()` is its rank slice of that
tensor (a view: same shape and values as before, rows contiguous, atoms n_members * rank * d_in
apart), and `compose_groups()` hands the concatenated tensors to ComposeState.set_groups, so
that one GPU kernel launch computes a whole group's deltas (its shrink reads x and each atom's
A rows once for all members).

Adding reuses a freed slot or the next free one; when the pool is full its capacity doubles
(one reallocation per doubling, amortized). Evicting frees the slot and zeroes it. Growth
(of capacity or rank) replaces the tensors: call `pools()` again afterwards, and re-capture
any CUDA graph that holds the old ones (`version` counts replacements).

Plain torch, any device. It takes tensors; it never reads a knowledge base or shard itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

Weights = Mapping[str, tuple[torch.Tensor, torch.Tensor]]

# members of a group, in launch order: the projections of one layer that read the same input
_GROUP_KINDS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def projection_groups(shapes: Mapping[str, tuple[int, int]]) -> list[tuple[str, ...]]:
    """Groups of module names that read the same input: q/k/v and gate/up under one parent with one d_in."""
    by_parent: dict[tuple[str, int], dict[str, str]] = {}
    for name in shapes:
        parent, _, leaf = name.rpartition(".")
        for kind, leaves in enumerate(_GROUP_KINDS):
            if leaf in leaves:
                by_parent.setdefault((parent, kind), {})[leaf] = name
    groups = []
    for (parent, kind), found in by_parent.items():
        names = [found[leaf] for leaf in _GROUP_KINDS[kind] if leaf in found]
        if len(names) >= 2 and len({shapes[n][0] for n in names}) == 1:
            groups.append(tuple(names))
    return groups


class AtomPool:
    """Per-module packed A/B tensors with an atom id -> slot index.

    Args:
        shapes:   module name -> (d_in, d_out) of each target linear.
        rank:     initial pool rank (grows to the largest atom rank added).
        capacity: initial number of slots (doubles when full).
        dtype, device: of the packed tensors (the serving model's dtype and device).
        groups:   "auto" (q/k/v and gate/up of each layer, `projection_groups`), None (no groups)
                  or a list of name tuples whose modules share d_in: their A live in one tensor.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, int]],
        rank: int = 1,
        capacity: int = 64,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        groups: str | Sequence[Sequence[str]] | None = "auto",
    ):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not shapes:
            raise ValueError("shapes must name at least one target module")
        self.shapes = {name: (int(d_in), int(d_out)) for name, (d_in, d_out) in shapes.items()}
        self.dtype = dtype
        self.device = torch.device(device)
        self._rank = rank
        self._capacity = capacity
        if groups == "auto":
            groups = projection_groups(self.shapes)
        self.groups: list[tuple[str, ...]] = [tuple(g) for g in (groups or ())]
        seen: set[str] = set()
        for g in self.groups:
            if len(g) < 2 or any(n not in self.shapes or n in seen for n in g) or len(set(g)) != len(g):
                raise ValueError(f"group {g}: needs >= 2 distinct known modules, each in one group only")
            if len({self.shapes[n][0] for n in g}) != 1:
                raise ValueError(f"group {g}: members must share d_in")
            seen.update(g)
        self._A: dict[str, torch.Tensor] = {}  # (capacity, rank, d_in); for group members a view into _Acat
        self._Acat: list[torch.Tensor] = []  # per group (capacity, n_members * rank, d_in)
        self._Bt: dict[str, torch.Tensor] = {}  # (capacity, rank, d_out): B^T per slot, rows contiguous
        self._alloc(capacity, rank)
        self._slot: dict[str, int] = {}
        self._free: list[int] = []  # freed slots, reused first (lowest first)
        self._next = 0  # slots >= _next were never used
        self.version = 0  # bumped whenever the packed tensors are replaced

    # -- sizes ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, atom_id: object) -> bool:
        return atom_id in self._slot

    def slot_of(self, atom_id: str) -> int:
        try:
            return self._slot[atom_id]
        except KeyError:
            raise KeyError(f"atom {atom_id!r} is not in the pool; add() it first") from None

    def atom_ids(self) -> list[str]:
        return list(self._slot)

    def pools(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module: (A (capacity, rank, d_in), B (capacity, d_out, rank))}, for ComposeState.pools.

        A is contiguous, or for a group member its rank slice of the group's tensor (rows
        contiguous); B is the transposed view of the contiguous rank-major storage. Views, not
        copies: later adds and evictions show through them.
        """
        return {name: (self._A[name], self._Bt[name].transpose(1, 2)) for name in self.shapes}

    def compose_groups(self) -> list[tuple[tuple[str, ...], torch.Tensor, tuple[int, ...]]]:
        """[(member names, A (capacity, n_members * rank, d_in), member ranks)], for ComposeState.set_groups."""
        return [(g, A, (self._rank,) * len(g)) for g, A in zip(self.groups, self._Acat)]

    # -- add / evict ---------------------------------------------------------------------
    def add(self, atom_id: str, weights: Weights) -> int:
        """Load one atom: weights = {module: (A (r, d_in), B (d_out, r))}; returns its slot.

        Modules the atom has no weights for get a zero delta. Adding an id that is already
        present replaces its weights in the same slot.
        """
        stacked = {m: (a.unsqueeze(0), b.unsqueeze(0)) for m, (a, b) in weights.items()}
        return self.add_many([atom_id], stacked)[0]

    def add_many(self, atom_ids: Sequence[str], weights: Weights) -> list[int]:
        """Load n atoms of one rank at once: weights = {module: (A (n, r, d_in), B (n, d_out, r))}.

        One copy per module for the whole group (e.g. the atoms of one shard). Returns the slots.
        """
        n = len(atom_ids)
        if len(set(atom_ids)) != n:
            raise ValueError("atom_ids must be distinct within one add_many call")
        r = self._check_weights(n, weights)
        if n == 0:
            return []
        if r > self._rank:
            self._grow(self._capacity, r)
        slots = [self._take_slot(a) for a in atom_ids]
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        for name in self.shapes:
            A, Bt = self._A[name], self._Bt[name]
            A.index_fill_(0, index, 0)
            Bt.index_fill_(0, index, 0)
            if name in weights:
                a, b = weights[name]
                A[index, :r] = a.to(device=self.device, dtype=self.dtype)
                Bt[index, :r] = b.to(device=self.device, dtype=self.dtype).transpose(1, 2)
        for a, s in zip(atom_ids, slots):
            self._slot[a] = s
        return slots

    def evict(self, atom_id: str) -> None:
        """Drop an atom: its slot is zeroed and reused by a later add."""
        slot = self.slot_of(atom_id)
        del self._slot[atom_id]
        for name in self.shapes:
            self._A[name][slot].zero_()
            self._Bt[name][slot].zero_()
        self._free.append(slot)
        self._free.sort(reverse=True)  # pop() gives the lowest free slot

    # -- batches -------------------------------------------------------------------------
    def slots(
        self,
        atom_lists: Sequence[Sequence[str]],
        weights: Sequence[Sequence[float]] | None = None,
        k: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx (Bsz, K) int32, w (Bsz, K) float32) on the pool's device for one batch.

        Request b uses atoms atom_lists[b] with weights[b] (default 1.0 each); rows are padded
        with slot -1 / weight 0 up to K = k or the longest list. A fixed k keeps shapes static
        (CUDA graphs).
        """
        bsz = len(atom_lists)
        longest = max((len(a) for a in atom_lists), default=0)
        K = longest if k is None else k
        if longest > K:
            raise ValueError(f"k={k} is smaller than the longest atom list ({longest})")
        if weights is not None:
            if len(weights) != bsz or any(len(w) != len(a) for w, a in zip(weights, atom_lists)):
                raise ValueError("weights must have one float per atom, in the same nested shape as atom_lists")
        idx_rows, w_rows = [], []
        for b, ids in enumerate(atom_lists):
            pad = K - len(ids)
            idx_rows.append([self.slot_of(a) for a in ids] + [-1] * pad)
            ws = [1.0] * len(ids) if weights is None else [float(v) for v in weights[b]]
            w_rows.append(ws + [0.0] * pad)
        idx = torch.tensor(idx_rows, dtype=torch.int32).reshape(bsz, K)
        w = torch.tensor(w_rows, dtype=torch.float32).reshape(bsz, K)
        return idx.to(self.device), w.to(self.device)

    # -- internals -----------------------------------------------------------------------
    def _check_weights(self, n: int, weights: Weights) -> int:
        unknown = set(weights) - set(self.shapes)
        if unknown:
            raise KeyError(f"unknown target modules {sorted(unknown)}; the pool holds {sorted(self.shapes)}")
        ranks = set()
        for name, (a, b) in weights.items():
            d_in, d_out = self.shapes[name]
            if a.dim() != 3 or b.dim() != 3 or a.shape[0] != n or b.shape[0] != n:
                raise ValueError(f"{name}: expected A (n={n}, r, d_in) and B (n, d_out, r), "
                                 f"got {tuple(a.shape)} and {tuple(b.shape)}")
            if a.shape[2] != d_in or b.shape[1] != d_out or a.shape[1] != b.shape[2]:
                raise ValueError(f"{name}: A {tuple(a.shape[1:])} and B {tuple(b.shape[1:])} do not fit "
                                 f"d_in={d_in}, d_out={d_out} with one rank")
            if a.shape[1] < 1:
                raise ValueError(f"{name}: rank must be >= 1, got {a.shape[1]}")
            ranks.add(int(a.shape[1]))
        if len(ranks) > 1:
            raise ValueError(f"add_many needs one rank for all modules, got {sorted(ranks)}")
        return ranks.pop() if ranks else 1

    def _take_slot(self, atom_id: str) -> int:
        if atom_id in self._slot:
            return self._slot[atom_id]
        if self._free:
            return self._free.pop()
        if self._next >= self._capacity:
            self._grow(2 * self._capacity, self._rank)
        slot = self._next
        self._next += 1
        return slot

    def _alloc(self, capacity: int, rank: int) -> None:
        """Fresh zero tensors for every module (group members as rank slices of their group's tensor)."""
        kw = dict(dtype=self.dtype, device=self.device)
        self._Acat = []
        for g in self.groups:
            A = torch.zeros(capacity, len(g) * rank, self.shapes[g[0]][0], **kw)
            self._Acat.append(A)
            for m, name in enumerate(g):
                self._A[name] = A[:, m * rank:(m + 1) * rank]
        grouped = {n for g in self.groups for n in g}
        for name, (d_in, d_out) in self.shapes.items():
            if name not in grouped:
                self._A[name] = torch.zeros(capacity, rank, d_in, **kw)
            self._Bt[name] = torch.zeros(capacity, rank, d_out, **kw)

    def _grow(self, capacity: int, rank: int) -> None:
        """Replace the packed tensors by larger ones (capacity and/or rank), keeping contents."""
        old_cap, old_rank = self._capacity, self._rank
        old_A, old_Bt = dict(self._A), dict(self._Bt)
        self._alloc(capacity, rank)
        for name in self.shapes:
            self._A[name][:old_cap, :old_rank] = old_A[name]
            self._Bt[name][:old_cap, :old_rank] = old_Bt[name]
        self._capacity, self._rank = capacity, rank
        self.version += 1


__all__ = ["AtomPool", "projection_groups"]
