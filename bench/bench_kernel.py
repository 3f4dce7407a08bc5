"""Benchmark of the batched composition kernel (issue 7): layer level and decode, eager and graphed.

How to run (on a CUDA machine with triton, transformers and peft; one run, ~5 min on an H200):

    PYTHONUNBUFFERED=1 python3 bench/bench_kernel.py --out bench/results/kernel_h200.json

Options: --layers N (decoder layers of the Llama-8B-shaped model, default 32), --new-tokens,
--prompt, --batches 32,128, --skip-peft, --skip-shapes, --layer-T 1,32,256, --profile-eager,
--time-budget SECONDS (optional parts are skipped past it), --skip-serving, --only REGEX (decode
rows whose key matches), --eager-repeats N, --carveouts 8,16 (cuBLAS SM carveouts to try). The
JSON is rewritten after every section, so a run cut short keeps what it measured.

What it measures:
  1. ceilings: device-to-device copy bandwidth (bytes read + written).
  1b. shapes: per-call GPU time of the delta on each decode module shape (q/o, k/v, gate/up,
     down; T=1, K=8, r=2; batch 32 and 128; distinct and zipf atoms), graph-replayed over
     rotating pool copies so the atoms come from HBM, per plan (auto, fused GEMV with several
     d_out splits, two-launch GEMV, B in the old layout), beside the base GEMM's time.
  1c. serving layers: 4 Llama-8B layers' 7 projections through compiler.lora.AtomLinear at b32
     (GPU us per layer in a captured graph, host us per module in eager), with and without the
     delta on a side stream (compiler.compose.grouped.overlap), grouped and ungrouped.
  2. layer level, d_in = d_out = 4096, 32 requests x T tokens, K atoms of rank r per request,
     every request its own atoms (worst case for bytes): base GEMM, composed linear
     (GEMM + kernel accumulating into its output), the delta alone, and the torch reference
     (gather + bmm); the delta's HBM bound = (distinct atoms' A and B + x + delta) bytes over
     the measured copy bandwidth. Timed with triton.testing.do_bench (median, L2 flushed).
  3. decode: a Llama-8B-shaped model with random bf16 weights, static KV cache, greedy hand
     loop (prompt, then timed single-token steps), all 7 projections of every layer wrapped by
     compiler.lora.attach, atoms from serving.atom_pool.AtomPool. Variants: base; composed
     through the current dispatcher (compose_delta, which checks slots with a host sync per
     layer); composed with the proposed wiring (ComposeMeta validated once per step, kernel
     accumulating into the base output: no sync, capturable); the torch reference both ways;
     PEFT with one rank-K*r adapter per request (what add_weighted_adapter "cat" yields) in a
     mixed batch. Then the same step captured in a CUDA graph where possible.

Caveats (H200 results, bench/results/kernel_h200.json; history in compiler/compose/KERNEL_NOTES.md):
at T=1 (32 tokens) the do_bench layer timings of base and composed are bounded by the host's
launch time (~20 us per F.linear, ~10-15 us per kernel call on that machine), not by the GPU;
the 'shapes' section has graph-replayed GPU times. Round 5: the decode "grouped" rows run AtomLinear's
default (compiler.compose.fused_linear mode "auto": the fused linear for eager calls, the round-4
side-stream path under capture); "_round4" rows force the round-4 path, "_fusedcap" rows the fused
linear under capture too. Eager decode ratios move by ~15% between
runs (host-bound, and torch's SDPA with an explicit mask synchronizes once per layer). PEFT is
run at batch 32 only by default (--peft-batches): it builds one adapter per request at ~1 s each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch
from contextlib import contextmanager as contextmanager_knobs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compiler.compose.reference import compose_delta_torch  # noqa: E402

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DT = torch.bfloat16
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: --tiny smoke test only


def _median_of(v):
    v = sorted(v)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


_T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - _T0:6.1f}s]", *a, flush=True)


# ------------------------------------------------------------------------------------------
def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    src = torch.empty(2 * 1024**3 // 2, dtype=DT, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    n = 10
    for _ in range(n):
        dst.copy_(src)
    ev[1].record()
    torch.cuda.synchronize()
    s = ev[0].elapsed_time(ev[1]) / 1e3 / n
    bw = 2 * src.numel() * src.element_size() / s
    del src, dst
    torch.cuda.empty_cache()
    return bw


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


_FLUSH = None


def gpu_ms_cold(fn, n: int = 8, reps: int = 7) -> float:
    """GPU time of one call of `fn` with a cold L2, the host taken out: a CUDA graph of n x [flush L2, fn] and one of
    n x [flush L2], replayed alternately `reps` times; the median of (first - second) / n. do_bench's eager timing
    also holds the host's launch time whenever the host enqueues slower than the GPU drains (its L2 flush, a 256 MB
    memset, is the only work queued ahead of the call)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 1024**2 // 4, dtype=torch.int32, device="cuda")

    def flush():
        _FLUSH.zero_()

    with_fn = captured([c for _ in range(n) for c in (flush, fn)])
    alone = captured([flush] * n)
    diffs = [(_replay_ms(with_fn) - _replay_ms(alone)) / n for _ in range(reps)]
    del with_fn, alone
    return _median_of(diffs)


def pool_b(n: int, d_out: int, r: int, scale: float = 1.0) -> torch.Tensor:
    """B (n, d_out, r) in AtomPool's layout: the transposed view of a contiguous (n, r, d_out)."""
    return (torch.randn(n, r, d_out, dtype=DT, device="cuda") * scale).transpose(1, 2)


def layer_level(res: dict, copy_bw: float, layer_T=(1, 32, 256), repeats: int = 1) -> None:
    """Layer rows. With ``repeats`` > 1 the kernel-alone timings (auto and forced stream) are taken that many
    times, alternated, and the row reports their median (every value is kept in ``*_runs``): one do_bench of a
    ~50 us kernel moved 10-25% between processes (KERNEL_NOTES, stop 20)."""
    import torch.nn.functional as F

    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    bsz, d_in, d_out = 32, 4096, 4096
    W = torch.randn(d_out, d_in, dtype=DT, device="cuda") / 64
    rows = []
    for T in layer_T:
        x = torch.randn(bsz, T, d_in, dtype=DT, device="cuda")
        t_base = bench_ms(lambda: F.linear(x, W))
        for K in (1, 8, 32):
            for r in (1, 2, 4):
                N = bsz * K  # every request its own atoms
                A = torch.randn(N, r, d_in, dtype=DT, device="cuda") / 64
                B = pool_b(N, d_out, r, 1 / 8)
                idx = torch.randperm(N, device="cuda").reshape(bsz, K)
                w = torch.rand(bsz, K, device="cuda") + 0.5
                meta = ComposeMeta(idx, w, n_slots=N)
                buf = torch.empty(bsz, T, d_out, dtype=DT, device="cuda")

                def composed():
                    y = F.linear(x, W)
                    compose_delta_triton(x, A, B, meta=meta, out=y, accumulate=True)

                t_comp = bench_ms(composed)
                t_fused = bench_ms(lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path="fused"))
                t_wide = bench_ms(lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path="wide"))
                runs_stream, runs_delta = [], []
                for _ in range(max(1, repeats)):
                    runs_stream.append(bench_ms(
                        lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path="stream")))
                    runs_delta.append(bench_ms(lambda: compose_delta_triton(x, A, B, meta=meta, out=buf)))
                t_stream, t_delta = _median_of(runs_stream), _median_of(runs_delta)
                g_base = gpu_ms_cold(lambda: F.linear(x, W))
                g_comp = gpu_ms_cold(composed)
                g_delta = gpu_ms_cold(lambda: compose_delta_triton(x, A, B, meta=meta, out=buf))
                g_stream = gpu_ms_cold(lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path="stream"))
                t_ref = bench_ms(lambda: compose_delta_torch(x, A, B, idx, w))
                t_ref_comp = bench_ms(lambda: F.linear(x, W) + compose_delta_torch(x, A, B, idx, w))
                byts = (A.numel() + B.numel() + x.numel() + buf.numel()) * 2
                bound_ms = byts / copy_bw * 1e3
                row = dict(T=T, K=K, r=r, tokens=bsz * T, base_gemm_ms=t_base, composed_ms=t_comp,
                           composed_over_base=t_comp / t_base, delta_ms=t_delta, delta_bytes=byts,
                           delta_hbm_bound_ms=bound_ms, delta_over_bound=t_delta / bound_ms,
                           delta_achieved_GBps=byts / (t_delta / 1e3) / 1e9, delta_fused_ms=t_fused,
                           delta_wide_ms=t_wide, wide_over_bound=t_wide / bound_ms, delta_stream_ms=t_stream,
                           stream_over_bound=t_stream / bound_ms,
                           torch_ref_delta_ms=t_ref, torch_ref_composed_over_base=t_ref_comp / t_base)
                row.update(gpu_base_gemm_ms=g_base, gpu_composed_ms=g_comp, gpu_composed_over_base=g_comp / g_base,
                           gpu_delta_ms=g_delta, gpu_delta_over_bound=g_delta / bound_ms, gpu_delta_stream_ms=g_stream,
                           gpu_stream_over_bound=g_stream / bound_ms)
                if repeats > 1:
                    row.update(delta_ms_runs=runs_delta, delta_stream_ms_runs=runs_stream)
                rows.append(row)
                log(f"layer T={T:3d} K={K:2d} r={r}: base {t_base*1e3:7.1f}us composed {t_comp*1e3:7.1f}us "
                    f"({t_comp/t_base:5.2f}x) delta {t_delta*1e3:6.1f}us bound {bound_ms*1e3:6.1f}us "
                    f"({t_delta/bound_ms:4.2f}x, {row['delta_achieved_GBps']:5.0f} GB/s) fused {t_fused*1e3:6.1f} "
                    f"wide {t_wide*1e3:6.1f}us ({t_wide/bound_ms:4.2f}x) stream {t_stream*1e3:6.1f}us "
                    f"({t_stream/bound_ms:4.2f}x) ref {t_ref*1e3:7.1f}us | gpu: base {g_base*1e3:6.1f} composed "
                    f"{g_comp*1e3:6.1f} ({g_comp/g_base:4.2f}x) delta {g_delta*1e3:6.1f}us ({g_delta/bound_ms:4.2f}x) "
                    f"stream {g_stream*1e3:6.1f}us ({g_stream/bound_ms:4.2f}x)")
                del A, B, buf
    res["layer"] = dict(bsz=bsz, d_in=d_in, d_out=d_out, dtype="bfloat16", atoms="distinct per request",
                        b_layout="AtomPool's: transposed view of a contiguous (N, r, d_out)",
                        note="T = tokens per request; composed = base GEMM + kernel accumulating into its output "
                             "(the auto plan, triton_ops' docstring: T <= 4 the GEMV plans; calls whose 32-token "
                             "blocks fill the GPU the stream plan (two launches) for >= 64 tokens per request and "
                             "8-128 stacked ranks, else tile fused); delta_* = the kernel alone (delta_fused / "
                             "_wide / _stream: each plan forced). do_bench times one eager call after an L2 "
                             "flush: at T=1 the host's launch time is inside the number (see 'shapes' for "
                             "graph-replayed per-call GPU times). gpu_* = the GPU's time alone (gpu_ms_cold: CUDA "
                             "graphs of [L2 flush, call] x 8 minus [L2 flush] x 8, median of 7): the figure the HBM "
                             "bound is compared with; delta_* of do_bench also hold host launch time on a slow host",
                        rows=rows)
    t256 = [r for r in rows if r["T"] == 256]
    if t256:
        res["layer"]["T256_max_gpu_delta_over_bound"] = max(r["gpu_delta_over_bound"] for r in t256)
        res["layer"]["T256_max_do_bench_delta_over_bound"] = max(r["delta_over_bound"] for r in t256)

    # host-side cost per call (what eager decode pays), decode shape
    T, K, r = 1, 8, 2
    N = bsz * K
    x = torch.randn(bsz, T, d_in, dtype=DT, device="cuda")
    A = torch.randn(N, r, d_in, dtype=DT, device="cuda")
    B = pool_b(N, d_out, r)
    meta = ComposeMeta(torch.randperm(N, device="cuda").reshape(bsz, K), None, n_slots=N)

    def host_us(fn, n=2000):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        return (t1 - t0) / n * 1e6

    y = torch.empty(bsz, T, d_out, dtype=DT, device="cuda")
    res["layer"]["host_us_per_call"] = {
        "F.linear": host_us(lambda: F.linear(x, W)),
        "triton_kernel_with_meta": host_us(lambda: compose_delta_triton(x, A, B, meta=meta, out=y, accumulate=True)),
        "triton_kernel_with_meta_wide": host_us(
            lambda: compose_delta_triton(x, A, B, meta=meta, out=y, accumulate=True, path="wide")),
        "triton_kernel_checking_idx": host_us(lambda: compose_delta_triton(x, A, B, meta.idx, meta.w)),
        "torch_reference": host_us(lambda: compose_delta_torch(x, A, B, meta.idx, meta.w)),
    }
    log("host us per call:", res["layer"]["host_us_per_call"])


WIDE_SPACE = {"block_t": [32, 64, 128], "block_s": [16, 32, 64, 128], "block_d": [32, 64, 128, 256],
              "split_d": [1, 2, 4, 8, 16], "groups": [1, 2, 4, 8, 16, 32], "block_n": [64, 128, 256],
              "warps_s": [4, 8], "warps_e": [4, 8], "stages_s": [2, 3, 4, 5], "stages_e": [1, 2, 3]}
FUSED_SPACE = {"block_t": [16, 32, 64, 128], "block_d": [64, 128, 256, 512], "block_n": [64, 128, 256],
               "num_warps": [4, 8], "num_stages": [2, 3, 4, 5]}


def layer_tune(res: dict, copy_bw: float, T: int, combos: list, budget_s: float, grid: dict | None = None) -> None:
    """Coordinate descent over the tile plans' overrides at one T (tokens per request), per (K, r).

    Same problem as the layer-level rows (bsz 32, d 4096, atoms distinct per request, bf16), timed
    the same way (do_bench, median, L2 flushed); each candidate's output is checked against the
    untuned plan's. The winner is re-timed as a CUDA graph of 20 calls (GPU time only). grid: instead of
    the descent, every combination of these tile-fused overrides ({key: [values]}) is timed. Also the
    floors of this size: a device copy x -> out (the bytes of the bound but for the atoms), a
    zero-fill of out (the write alone)."""
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    bsz, d_in, d_out = 32, 4096, 4096
    out_rows = []
    x = torch.randn(bsz, T, d_in, dtype=DT, device="cuda")
    buf = torch.empty(bsz, T, d_out, dtype=DT, device="cuda")
    floors = {"copy_x_to_out_us": bench_ms(lambda: buf.copy_(x)) * 1e3,
              "zero_out_us": bench_ms(lambda: buf.zero_()) * 1e3,
              "read_x_sum_us": bench_ms(lambda: x.sum(dtype=torch.float32)) * 1e3}
    log(f"tune T={T}: floors {floors}")
    t0 = time.perf_counter()
    for K, r in combos:
        N = bsz * K
        A = torch.randn(N, r, d_in, dtype=DT, device="cuda") / 64
        B = pool_b(N, d_out, r, 1 / 8)
        meta = ComposeMeta(torch.randperm(N, device="cuda").reshape(bsz, K), torch.rand(bsz, K, device="cuda") + 0.5,
                           n_slots=N)
        byts = (A.numel() + B.numel() + x.numel() + buf.numel()) * 2
        bound_us = byts / copy_bw * 1e6
        ref = compose_delta_triton(x, A, B, meta=meta, path="wide").float()
        scale = ref.abs().max().item()
        row = dict(T=T, K=K, r=r, bound_us=bound_us, tried={})
        for path, space in ((("fused", FUSED_SPACE),) if grid else (("wide", WIDE_SPACE), ("fused", FUSED_SPACE))):
            seen: dict = {}

            def timed(cfg: dict) -> float:
                key = json.dumps(cfg, sort_keys=True)
                if key in seen:
                    return seen[key]
                try:
                    y = compose_delta_triton(x, A, B, meta=meta, out=buf, path=path, tune=dict(cfg))
                    err = (y.float() - ref).abs().max().item() / scale
                    t = float("inf") if not err < 2e-2 else bench_ms(
                        lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path=path, tune=dict(cfg))) * 1e3
                    if not err < 2e-2:
                        log(f"  {path} {cfg}: WRONG (rel err {err:.3g})")
                except Exception as e:  # out of shared memory / registers, a too-large tile
                    t = float("inf")
                    log(f"  {path} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                seen[key] = t
                return t

            cfg: dict = {}
            t_path = time.perf_counter()
            best = timed(cfg)
            start = best
            if grid is not None:
                keys = sorted(grid)
                for vals in itertools.product(*(grid[k] for k in keys)):
                    c = dict(zip(keys, vals))
                    t = timed(c)
                    if t < best:
                        best, cfg = t, c
            for _round in range(0 if grid is not None else 2):
                improved = False
                for k, vals in space.items():
                    for v in vals:
                        if time.perf_counter() - t_path > budget_s / (2 * len(combos)):
                            break
                        c = dict(cfg, **{k: v})
                        t = timed(c)
                        if t < best * 0.985:
                            best, cfg, improved = t, c, True
                if not improved:
                    break
            g_us = graph_us_per_call([lambda: compose_delta_triton(x, A, B, meta=meta, out=buf, path=path,
                                                                   tune=dict(cfg))] * 20) if best < float("inf") else None
            row[path] = dict(default_us=start, best_us=best, best_cfg=cfg, best_over_bound=best / bound_us,
                             default_over_bound=start / bound_us, best_graph_us=g_us, n_tried=len(seen))
            row["tried"][path] = {k: v for k, v in seen.items()}
            log(f"tune T={T} K={K} r={r} {path}: default {start:.1f}us ({start / bound_us:.2f}x) best {best:.1f}us "
                f"({best / bound_us:.2f}x, graph {g_us if g_us is None else round(g_us, 1)}us) {cfg} "
                f"[{len(seen)} tried, {time.perf_counter() - t0:.0f}s]")
        out_rows.append(row)
        del A, B
    res.setdefault("layer_tune", []).append(dict(T=T, floors=floors, rows=out_rows, grid=grid, wide_space=WIDE_SPACE,
                                                 fused_space=FUSED_SPACE))


def captured(calls: list):
    """A CUDA graph of every call in `calls` (the first two run eagerly on a side stream before: they compile and
    warm what the capture launches)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls[:2]:
            c()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    return g


def graph_kernel_profile(calls: list, reps: int = 5, per: int = 1, top: int = 16) -> list:
    """torch.profiler over `reps` replays of one graph holding every call in `calls`: per kernel name, its
    launches and summed GPU us per replay divided by `per` (e.g. layers), the largest first. Kernels on
    concurrent streams overlap, so the sums can exceed the replay's wall time."""
    from torch.profiler import ProfilerActivity, profile

    g = captured(calls)
    g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
    agg: dict = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            n, us = agg.get(ev.name[:90], (0, 0.0))
            agg[ev.name[:90]] = (n + 1, us + (ev.time_range.end - ev.time_range.start))
    del g
    rows = [{"kernel": k, "launches_per_replay": n / reps / per, "gpu_us_per_replay": us / reps / per}
            for k, (n, us) in agg.items()]
    return sorted(rows, key=lambda r: -r["gpu_us_per_replay"])[:top]


def _replay_ms(g) -> float:
    """GPU milliseconds of one replay of CUDA graph g (synchronised)."""
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    g.replay()
    ev[1].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1])


def graph_us_per_call(calls: list, reps: int = 5) -> float:
    """Median over replays of (one graph holding every call in `calls`) / len(calls), in us."""
    g = captured(calls)
    g.replay()
    torch.cuda.synchronize()
    ts = [_replay_ms(g) * 1e3 / len(calls) for _ in range(reps)]
    del g
    return sorted(ts)[len(ts) // 2]


@contextmanager_knobs
def _knobs(wide_tiles=None, partials=None):
    from compiler.compose.triton_ops import set_gemv_knobs

    old = set_gemv_knobs(wide_tiles, partials)
    try:
        yield
    finally:
        set_gemv_knobs(**old)


@contextmanager_knobs
def _variant(spec: str):
    """Settings of a composed variant of --graphed-pairs, for the duration of its capture: "default" (none), a bare
    GEMV warps knob value ("e2"), or "+"-joined key=value pairs: warps / tiles / partials (GEMV knobs), path
    (grouped.default_path: auto, wide, fused), prio (the side stream's priority; the stream is made again), overlap
    (grouped.overlap: capture, never, always)."""
    import compiler.compose.grouped as grouped_mod
    from compiler.compose.triton_ops import set_gemv_knobs

    sets = {}
    if spec != "default":
        for part in spec.split("+"):
            k, _, v = part.partition("=")
            if not v:
                k, v = "warps", k
            sets[k] = v
    unknown = set(sets) - {"warps", "tiles", "partials", "path", "prio", "overlap"}
    if unknown:
        raise ValueError(f"unknown variant keys {sorted(unknown)} in {spec!r}")
    old_knobs = set_gemv_knobs(sets.get("tiles"), sets.get("partials"), sets.get("warps"))
    old_path, old_prio, old_overlap = grouped_mod.default_path, grouped_mod.side_priority, grouped_mod.overlap
    grouped_mod.default_path = sets.get("path", old_path)
    grouped_mod.overlap = sets.get("overlap", old_overlap)
    if "prio" in sets:
        grouped_mod.side_priority = int(sets["prio"])
        grouped_mod._sides.clear()
    grouped_mod._warmed.clear()  # the warm-up's eager calls compile this variant's side-stream kernels
    try:
        yield
    finally:
        set_gemv_knobs(**old_knobs)
        grouped_mod.default_path = old_path
        grouped_mod.overlap = old_overlap
        if "prio" in sets:
            grouped_mod.side_priority = old_prio
            grouped_mod._sides.clear()


# two-launch GEMV variants: (key suffix, wide_tiles, partials); "max"/"sm" = run 1's 1024-wide
# tiles / run 2's one-program-per-SM tiles (512-wide at b32); "tile"/"loop" = partials of h
# summed in one 2-D load / one load per partial (runs 1 and 2)
WIDE_KNOBS = [("", "max", "tile"), ("_sm", "sm", "tile"), ("_loop", "max", "loop"), ("_sm_loop", "sm", "loop")]


def atom_slots(pattern: str, bsz: int, K: int, n_atoms: int) -> torch.Tensor:
    """(bsz, K) slots on the GPU: every request its own atoms ("distinct", n_atoms = bsz * K), or drawn
    without replacement from a zipf(1.1) popularity over n_atoms ("zipf": popular atoms shared)."""
    if pattern == "distinct":
        return torch.randperm(n_atoms, device="cuda").reshape(bsz, K)
    p = 1.0 / torch.arange(1, n_atoms + 1, dtype=torch.float64) ** 1.1
    return torch.stack([torch.multinomial(p, K, replacement=False) for _ in range(bsz)]).cuda()


def shape_sweep(res: dict, copy_bw: float, K: int = 8, r: int = 2, sweep_splits: bool = False,
                batches=(32, 128), patterns=("distinct", "zipf"), t_start: float | None = None,
                budget: float | None = None) -> None:
    """Per-call GPU time of the delta on the decode module shapes (T=1), graph-replayed.

    Each graph holds M calls on M different pool copies (M x pool >= ~200 MB, so the atoms
    come from HBM as they do in a decode step, where 15 GB of weights pass between two calls
    of one module); x and out stay (they are in L2 in a real step too). Variants: the plan
    'auto' picks under capture, the fused GEMV with its own and with forced d_out splits P,
    the two-launch GEMV with each knob setting (WIDE_KNOBS: tile width, partial sums), and the
    fused GEMV reading B in the old (N, d_out, r) layout. Group rows (q/k/v: 4096 -> 4096 + 1024
    + 1024, gate/up: 4096 -> 2 x 14336): one grouped call (auto, wide with each knob setting,
    fused) against the members' ungrouped auto calls one after another (what the group replaces).
    """
    import torch.nn.functional as F

    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    shapes = {"q_o": (4096, 4096), "k_v": (4096, 1024), "gate_up": (4096, 14336), "down": (14336, 4096)}
    out_rows = []
    res["shapes"] = dict(K=K, r=r, T=1, note=shape_sweep.__doc__.split("\n\n")[1].replace("\n", " "),
                         rows=out_rows)
    for bsz in batches:
        for pattern in patterns:
            if budget is not None and time.perf_counter() - t_start > budget:
                out_rows.append({"bsz": bsz, "pattern": pattern, "skipped": "time budget"})
                continue
            group_sweep(out_rows, copy_bw, bsz, pattern, K, r)
            for name, (d_in, d_out) in shapes.items():
                n_atoms = bsz * K if pattern == "distinct" else 64
                pool_bytes = n_atoms * r * (d_in + d_out) * 2
                M = max(8, min(48, math.ceil(200e6 / pool_bytes)))
                g = torch.Generator(device="cuda").manual_seed(bsz + d_out)
                pools = [(torch.randn(n_atoms, r, d_in, dtype=DT, device="cuda") / 64,
                          pool_b(n_atoms, d_out, r, 1 / 8)) for _ in range(M)]
                idx = atom_slots(pattern, bsz, K, n_atoms)
                n_dist = int(torch.unique(idx).numel())
                meta = ComposeMeta(idx, torch.rand(bsz, K, device="cuda") + 0.5, n_slots=n_atoms)
                x = torch.randn(bsz, 1, d_in, dtype=DT, device="cuda", generator=g)
                y = torch.randn(bsz, 1, d_out, dtype=DT, device="cuda", generator=g)
                bound_us = (n_dist * r * (d_in + d_out) * 2 + x.numel() * 2 + 2 * y.numel() * 2) / copy_bw * 1e6
                Ws = [torch.randn(d_out, d_in, dtype=DT, device="cuda") / 64
                      for _ in range(max(2, math.ceil(200e6 / (d_in * d_out * 2))))]
                row = dict(bsz=bsz, pattern=pattern, shape=name, d_in=d_in, d_out=d_out, distinct_atoms=n_dist,
                           copies=M, delta_hbm_bound_us=bound_us,
                           base_gemm_us=graph_us_per_call([lambda W=W: F.linear(x, W) for W in Ws]))

                def calls(path, split=None, old_layout=False):
                    ps = [(a, b.contiguous()) for a, b in pools] if old_layout else pools
                    return [lambda a=a, b=b: compose_delta_triton(x, a, b, meta=meta, out=y, accumulate=True,
                                                                  path=path, split=split) for a, b in ps]

                variants = [("auto", None, False, WIDE_KNOBS[0]), ("fused", None, False, WIDE_KNOBS[0])]
                variants += [("wide", None, False, kn) for kn in WIDE_KNOBS]
                if sweep_splits:
                    variants.append(("fused", None, True, WIDE_KNOBS[0]))
                if bsz == 32 and pattern == "distinct" and sweep_splits:
                    variants += [("fused", p, False, WIDE_KNOBS[0]) for p in (2, 4, 8, 16)]
                for path, split, old, (suffix, tiles, partials) in variants:
                    key = f"{path}" + (f"_P{split}" if split else "") + ("_oldB" if old else "")
                    key += suffix if path == "wide" else ""
                    try:
                        with _knobs(tiles, partials):
                            if path == "auto":  # compile both plans outside the capture
                                for pth in ("fused", "wide"):
                                    calls(pth)[0]()
                            row[key + "_us"] = graph_us_per_call(calls(path, split, old))
                    except Exception as e:
                        row[key + "_us"] = f"{type(e).__name__}: {e}"[:200]
                del pools
                out_rows.append(row)
                log("shape " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in row.items() if k not in ("d_in", "d_out")))
                torch.cuda.empty_cache()


def group_sweep(out_rows: list, copy_bw: float, bsz: int, pattern: str, K: int, r: int) -> None:
    """Group rows of shape_sweep: one grouped call vs the members' ungrouped calls, graph-replayed."""
    import torch.nn.functional as F

    from compiler.compose.grouped import compose_group_triton
    from compiler.compose.triton_ops import ComposeMeta, compose_delta_triton

    groups = {"qkv": (4096, (4096, 1024, 1024)), "gate_up": (4096, (14336, 14336))}
    for name, (d_in, d_outs) in groups.items():
        M = len(d_outs)
        n_atoms = bsz * K if pattern == "distinct" else 64
        pool_bytes = n_atoms * r * (M * d_in + sum(d_outs)) * 2
        copies = max(8, min(48, math.ceil(200e6 / pool_bytes)))
        idx = atom_slots(pattern, bsz, K, n_atoms)
        n_dist = int(torch.unique(idx).numel())
        meta = ComposeMeta(idx, torch.rand(bsz, K, device="cuda") + 0.5, n_slots=n_atoms)
        x = torch.randn(bsz, 1, d_in, dtype=DT, device="cuda")
        ys = [torch.randn(bsz, 1, d, dtype=DT, device="cuda") for d in d_outs]
        # per copy: the group's A (N, M * r, d_in) and each member's B in AtomPool's layout
        pools = [(torch.randn(n_atoms, M * r, d_in, dtype=DT, device="cuda") / 64,
                  [pool_b(n_atoms, d, r, 1 / 8) for d in d_outs]) for _ in range(copies)]
        bound_us = (n_dist * r * (M * d_in + sum(d_outs)) * 2 + x.numel() * 2 + 2 * sum(y.numel() for y in ys) * 2
                    ) / copy_bw * 1e6
        Ws = [[torch.randn(d, d_in, dtype=DT, device="cuda") / 64 for d in d_outs]
              for _ in range(max(2, math.ceil(200e6 / (d_in * sum(d_outs) * 2))))]
        row = dict(bsz=bsz, pattern=pattern, shape=f"group_{name}", d_in=d_in, d_outs=list(d_outs),
                   distinct_atoms=n_dist, copies=copies, delta_hbm_bound_us=bound_us,
                   base_gemms_us=graph_us_per_call([lambda ws=ws: [F.linear(x, W) for W in ws] for ws in Ws]),
                   note="per group call: all members' deltas")

        def ungrouped(tiles="max", partials="tile"):
            def call(A, Bs):
                for m, B in enumerate(Bs):
                    compose_delta_triton(x, A[:, m * r:(m + 1) * r], B, meta=meta, out=ys[m], accumulate=True)
            return [lambda A=A, Bs=Bs: call(A, Bs) for A, Bs in pools]

        def grouped(path, add_gemm=False):
            def call(A, Bs, ws):
                outs = compose_group_triton(x, A, Bs, meta=meta, path=path)
                if add_gemm:  # what AtomLinear does with the deltas: y = delta + x W^T, one GEMM each
                    for o, W in zip(outs, ws):
                        o.view(bsz, -1).addmm_(x.view(bsz, -1), W.t())
            return [lambda A=A, Bs=Bs, i=i: call(A, Bs, Ws[i % len(Ws)]) for i, (A, Bs) in enumerate(pools)]

        variants = [("ungrouped_auto", lambda: ungrouped(), WIDE_KNOBS[0]),
                    ("ungrouped_auto_sm", lambda: ungrouped(), WIDE_KNOBS[1]),
                    ("group_auto", lambda: grouped("auto"), WIDE_KNOBS[0]),
                    ("group_fused", lambda: grouped("fused"), WIDE_KNOBS[0])]
        variants += [(f"group_wide{sfx}", lambda: grouped("wide"), (sfx, t, pa)) for sfx, t, pa in WIDE_KNOBS]
        variants += [("group_auto_plus_gemms", lambda: grouped("auto", True), WIDE_KNOBS[0])]
        for key, make, (_, tiles, partials) in variants:
            try:
                with _knobs(tiles, partials):
                    for pth in ("fused", "wide"):  # compile outside the capture
                        compose_group_triton(x, pools[0][0], pools[0][1], meta=meta, path=pth)
                    ungrouped()[0]()
                    row[key + "_us"] = graph_us_per_call(make())
            except Exception as e:
                row[key + "_us"] = f"{type(e).__name__}: {e}"[:200]
        del pools
        out_rows.append(row)
        log("shape " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in row.items() if k not in ("d_in", "note")))
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------
def serving_layers(res: dict, copy_bw: float, bsz: int = 32, n_layers: int = 4, K: int = 8, r: int = 2,
                   carveouts=(), fused_configs=(), only: str = "", per_group: bool = False,
                   profile: str = "") -> None:
    """Llama-8B layers' 7 projections through compiler.lora.AtomLinear alone (no attention), b32, T=1.

    Per variant: GPU us per layer (n_layers layers captured in one graph, replays timed with
    events; weights and atoms from HBM: the layers' weights are 4 x 0.44 GB) and host us per
    module in eager (enqueue time of a few passes between syncs, so the GPU queue never fills).
    Variants: base (plain nn.Linear), grouped / ungrouped composition with the delta on the side
    stream (overlap "always") or on the current stream ("never"), the side stream at normal
    priority, the grouped fused plan, and cuBLAS told to leave `carveouts` SMs free (torch's
    experimental SM carveout) so that the delta kernels find room beside the GEMMs.
    per_group: also GPU us per layer of each projection group alone (q/k/v, o, gate/up, down; one graph of
    that group's modules of every layer), to see which path is faster for which group under capture.
    profile: regex of variants whose graph is also profiled per kernel (per group when per_group)."""
    import compiler.compose.grouped as grouped
    from compiler.lora import AtomLinear, ComposeState
    from serving.atom_pool import AtomPool

    dims = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
            "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}
    shapes = {f"model.layers.{i}.{'mlp' if p in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{p}": d
              for i in range(n_layers) for p, d in dims.items()}
    g = torch.Generator(device="cuda").manual_seed(5)
    bases = {}
    for n, (d_in, d_out) in shapes.items():
        lin = torch.nn.Linear(d_in, d_out, bias=False, device="cuda", dtype=DT)
        with torch.no_grad():
            lin.weight.normal_(generator=g).mul_(d_in ** -0.5)
        bases[n] = lin
    n_atoms = bsz * K
    pool = AtomPool(shapes, rank=r, capacity=n_atoms, dtype=DT, device="cuda")
    ids = [f"a{i}" for i in range(n_atoms)]
    # one add_many for every module: add_many replaces ALL modules' weights of the slots it is given
    # (modules it gets none for are zeroed), so one call per module left only the last module's atoms
    # nonzero (runs before round 5, run 3: same bytes read, zero values)
    pool.add_many(ids, {n: (torch.randn(n_atoms, r, d_in, device="cuda", dtype=DT, generator=g) / 64,
                            torch.randn(n_atoms, d_out, r, device="cuda", dtype=DT, generator=g) / 8)
                        for n, (d_in, d_out) in shapes.items()})
    idx, w = pool.slots([ids[b * K:(b + 1) * K] for b in range(bsz)], [[1.0 / math.sqrt(K)] * K] * bsz)
    xa = torch.randn(bsz, 1, 4096, device="cuda", dtype=DT)
    xd = torch.randn(bsz, 1, 14336, device="cuda", dtype=DT)
    st = ComposeState()
    st.pools = pool.pools()
    st.set(idx, w)
    mods = {n: AtomLinear(bases[n], n, st) for n in shapes}
    layers = [[n for n in shapes if n.startswith(f"model.layers.{i}.")] for i in range(n_layers)]

    def run_plain():
        for names in layers:
            for n in names:
                bases[n](xd if n.endswith("down_proj") else xa)

    def run_wrapped():
        for names in layers:
            for n in names:
                mods[n](xd if n.endswith("down_proj") else xa)

    part_of = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
               "down": ("down_proj",)}

    def run_part(which, plain):
        sel = part_of[which]

        def fn():
            for names in layers:
                for n in names:
                    if n.rsplit(".", 1)[1] in sel:
                        (bases if plain else mods)[n](xd if n.endswith("down_proj") else xa)
        return fn

    def gpu_us_per_layer(fn, reps=20):
        return graph_us_per_call([fn, fn], reps) / n_layers  # two warm-up passes, a graph of two passes

    def host_us_per_module(fn, windows=15, passes=3):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(windows):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(passes):
                fn()
            ts.append((time.perf_counter() - t0) * 1e6 / (passes * 7 * n_layers))
        torch.cuda.synchronize()
        return sorted(ts)[len(ts) // 2]

    out = res["serving_layers"] = {
        "what": f"{n_layers} Llama-8B layers' 7 projections via AtomLinear, b{bsz}, T=1, K={K}, r={r}, "
                "distinct atoms; gpu: us per layer in one captured graph; host: eager enqueue us per module",
        "variants": {}}
    groups = pool.compose_groups()
    import compiler.compose.fused_linear as fl

    # round 5: x W^T + delta in one pass (fused_linear); the round-4 variants below run with it off
    # *_k0: no atoms (K=0): the fused kernel's GEMM part alone, and what the round-4 path costs without a delta
    fused_variants = [("fused", True, "never"), ("fused_k0", True, "never"), ("fused_nolane", True, "never"),
                      ("fused_pdl", True, "never"),
                      ("fused_ungrouped", False, "never"), ("fused_ungrouped_nolane", False, "never")]
    fused_variants += [(f"fused_cfg{i}", True, "never") for i in range(len(fused_configs))]
    variants = [("base", None, None)] + fused_variants + [
                ("grouped_never", True, "never"), ("grouped_always", True, "always"),
                ("ungrouped_never", False, "never"), ("ungrouped_always", False, "always"),
                ("grouped_always_k0", True, "always"), ("grouped_always_w4", True, "always"),
                ("grouped_never_w4", True, "never"), ("grouped_always_wauto", True, "always"),
                ("grouped_never_wauto", True, "never"), ("grouped_always_we2", True, "always"),
                ("grouped_never_we2", True, "never"),
                ("grouped_always_prio0", True, "always"), ("grouped_always_fused", True, "always"),
                ("grouped_never_fused", True, "never")]
    carve_ok = hasattr(torch._C, "_set_sm_carveout_experimental")
    for c in carveouts if carve_ok else ():
        variants += [(f"base_carve{c}", None, None), (f"grouped_always_carve{c}", True, "always")]
    if only:
        variants = [v for v in variants if v[0] == "base" or re.search(only, v[0])]
    old_mode, old_prio, old_path = grouped.overlap, grouped.side_priority, grouped.default_path
    from compiler.compose.triton_ops import set_gemv_knobs

    old_knobs = set_gemv_knobs()
    old_fl = (fl.mode, fl.use_pdl, dict(fl.config))
    with torch.no_grad():
        # correctness of the fused path on these shapes: its outputs vs the round-4 path's (two passes each,
        # so that the grouped path knows every sibling's weight), relative Frobenius error per module
        st.set_groups(groups)
        outs = {}
        for fmode in ("never", "always"):
            fl.mode = fmode
            for _ in range(2):
                outs[fmode] = {n: mods[n](xd if n.endswith("down_proj") else xa).float() for n in layers[0]}
        fl.mode = old_fl[0]
        out["fused_check_rel_err"] = {n.rsplit(".", 1)[1]: float((outs["always"][n] - outs["never"][n]).norm()
                                                               / outs["never"][n].norm()) for n in layers[0]}
        log(f"serving layers fused check (rel err vs round-4 path): {out['fused_check_rel_err']}")
        del outs
        for key, grouped_on, mode in variants:
            carve = int(key.rsplit("carve", 1)[1]) if "_carve" in key else None
            fl.mode = "always" if key.startswith("fused") else "never"  # gpu numbers come from a captured graph
            # *_w4 / *_wauto / *_we2: the two-launch GEMV's shrink and expand with 4 warps / the earlier rule /
            # the expand at 2 warps (gemv knob)
            set_gemv_knobs(warps="4" if key.endswith("_w4") else "auto" if key.endswith("_wauto")
                           else "e2" if key.endswith("_we2") else old_knobs["warps"])
            fl.use_pdl = key == "fused_pdl"
            grouped._LANE = not key.endswith("_nolane")  # the eager lane (host time only; same launches)
            if key.endswith("_k0"):
                st.set(idx[:, :0], w[:, :0])
            else:
                st.set(idx, w)
            fl.config.clear()
            if "_cfg" in key:
                fl.config.update(fused_configs[int(key.rsplit("_cfg", 1)[1])])
            try:
                if carve_ok:
                    torch._C._set_sm_carveout_experimental(carve)  # SMs cuBLAS leaves free (None: all used)
                if grouped_on is None:
                    fn = run_plain
                else:
                    st.set_groups(groups if grouped_on else [])
                    grouped.overlap = mode
                    grouped.default_path = "fused" if key.endswith("_fused") else old_path
                    if key.endswith("prio0") or key == "grouped_always_fused":
                        grouped.side_priority = 0 if key.endswith("prio0") else old_prio
                        grouped._sides.clear()
                    fn = run_wrapped
                row = {"gpu_us_per_layer": gpu_us_per_layer(fn), "host_us_per_module": host_us_per_module(fn)}
                if per_group and carve is None:
                    row["gpu_us_per_layer_by_group"] = {
                        part: gpu_us_per_layer(run_part(part, grouped_on is None)) for part in part_of}
                if profile and re.search(profile, key):
                    try:
                        parts = list(part_of) if per_group else ["layer"]
                        row["kernels_per_layer"] = {
                            p: graph_kernel_profile([f, f], per=2 * n_layers)
                            for p, f in ((p, fn if p == "layer" else run_part(p, grouped_on is None)) for p in parts)}
                        for part, ks in row["kernels_per_layer"].items():
                            for k in ks[:8]:
                                log(f"  {key} {part}: {k['gpu_us_per_replay']:7.2f} us "
                                    f"x{k['launches_per_replay']:.2g} {k['kernel']}")
                    except Exception as e:
                        row["kernels_per_layer"] = {"error": f"{type(e).__name__}: {e}"[:400]}
                        traceback.print_exc()
            except Exception as e:
                row = {"error": f"{type(e).__name__}: {e}"[:400]}
                traceback.print_exc()
            if "_cfg" in key:
                row["config"] = dict(fl.config)
            out["variants"][key] = row
            log(f"serving layers {key}: {row}")
    if carve_ok:
        torch._C._set_sm_carveout_experimental(None)
    grouped.overlap, grouped.side_priority, grouped.default_path = old_mode, old_prio, old_path
    set_gemv_knobs(**old_knobs)
    grouped._LANE = True
    fl.mode, fl.use_pdl = old_fl[0], old_fl[1]
    fl.config.clear()
    fl.config.update(old_fl[2])
    grouped._sides.clear()
    v = out["variants"]
    fused_rows = [(row["gpu_us_per_layer"], key) for key, row in v.items()
                  if key.startswith("fused") and key not in ("fused_nopdl", "fused_pdl", "fused_ungrouped", "fused_nolane",
                                                             "fused_ungrouped_nolane", "fused_k0")
                  and "gpu_us_per_layer" in row]
    if fused_rows:
        best_key = min(fused_rows)[1]
        out["fused_best"] = {"variant": best_key, "config": v[best_key].get("config", {})}
    if "gpu_us_per_layer" in v.get("base", {}):
        for key, row in v.items():
            if key != "base" and "gpu_us_per_layer" in row:
                row["gpu_delta_us_per_layer"] = row["gpu_us_per_layer"] - v["base"]["gpu_us_per_layer"]
                row["host_delta_us_per_module"] = row["host_us_per_module"] - v["base"]["host_us_per_module"]
    atom_bytes = bsz * K * r * 2 * sum(d_in + d_out for d_in, d_out in dims.values())
    out["atom_bytes_per_layer"] = atom_bytes
    out["atom_bound_us_per_layer"] = atom_bytes / copy_bw * 1e6
    del mods, bases, pool, st
    torch.cuda.empty_cache()


def build_model(n_layers: int, tiny: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                vocab_size=128256)
    if tiny:
        dims = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                    vocab_size=256)
    cfg = LlamaConfig(num_hidden_layers=n_layers, max_position_embeddings=8192, rope_theta=500000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa", **dims)
    old = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        with torch.device(DEV):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to(DT).eval()
    model.config.use_cache = True
    return model


def make_cache(model, bsz, length):
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=length)
    except TypeError:
        return StaticCache(config=model.config, max_batch_size=bsz, max_cache_len=length, device=DEV, dtype=DT)


def _prefill(model, bsz, prompt, n_new, before_step=None, **kw):
    """A static cache filled with a random prompt; returns (step, static_ids, static_pos): step() runs one
    decode step on static_ids at static_pos and returns its logits."""
    L = prompt + n_new + 4
    g = torch.Generator(device=DEV).manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (bsz, prompt), device=DEV, generator=g)
    cache = make_cache(model, bsz, L)
    attn = torch.ones(bsz, L, dtype=torch.long, device=DEV)
    if before_step:
        before_step()
    out = model(input_ids=ids, attention_mask=attn, past_key_values=cache,
                cache_position=torch.arange(prompt, device=DEV), use_cache=True, logits_to_keep=1, **kw)
    static_ids = out.logits[:, -1].argmax(-1, keepdim=True)
    static_pos = torch.tensor([prompt], device=DEV)

    def step():
        if before_step:
            before_step()
        return model(input_ids=static_ids, attention_mask=attn, past_key_values=cache, cache_position=static_pos,
                     use_cache=True, logits_to_keep=1, **kw).logits

    step.cache = cache
    return step, static_ids, static_pos


def _rewind(cache, pos: int) -> None:
    """Set a static cache's write position back to pos. transformers 5's StaticLayer writes at its own
    on-device counter (cumulative_length, advanced in place by every update, so by every graph replay),
    not at cache_position; older versions write at cache_position and have no counter."""
    for layer in getattr(cache, "layers", ()):
        n = getattr(layer, "cumulative_length", None)
        if isinstance(n, torch.Tensor):
            n.fill_(pos)


def _capture(step, warm_up=None):
    """One decode step captured in a CUDA graph (after two eager warm-up steps); returns run() -> logits."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
        for warm in warm_up or ():  # compile what the capture may pick (no compiling while capturing)
            warm(step)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = step()

    def run():
        graph.replay()
        return static_logits

    # the closure keeps alive what the graph reads and writes outside its own pool: the graph, and step's
    # closure (the static cache and the attention mask; freeing them under a kept graph is an illegal access)
    run.graph, run.step = graph, step
    return run


def _timed_steps(run, static_ids, static_pos, n: int) -> float:
    """Seconds for n greedy decode steps of run (each step's argmax fed to the next)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        logits = run()
        static_ids.copy_(logits[:, -1].argmax(-1, keepdim=True))
        static_pos.add_(1)
    sync()
    return time.perf_counter() - t0


def decode(model, bsz, prompt, n_new, graphed=False, before_step=None, warm_up=None, **kw) -> dict:
    """Greedy decode of n_new tokens after a prompt; returns tok/s and ms/step of the timed steps."""
    step, static_ids, static_pos = _prefill(model, bsz, prompt, n_new, before_step, **kw)
    if graphed:
        run = _capture(step, warm_up)
    else:
        run = step
        for _ in range(2):
            run()
    dt = _timed_steps(run, static_ids, static_pos, n_new)
    return {"tok_s": bsz * n_new / dt, "ms_per_step": dt / n_new * 1e3, "steps": n_new}


def graphed_decoder(model, bsz, prompt, n_steps, warm_up=None):
    """A captured decode step kept for later: returns timed(n) -> ms per step over n graph replays (n <= n_steps),
    each call starting again at the first position after the prompt (the same cache slots are rewritten)."""
    step, static_ids, static_pos = _prefill(model, bsz, prompt, n_steps)
    run = _capture(step, warm_up)
    ids0 = static_ids.clone()

    def timed(n: int) -> float:
        if n > n_steps:
            raise ValueError(f"at most {n_steps} steps per call, got {n}")
        static_pos.fill_(prompt)
        _rewind(step.cache, prompt)
        static_ids.copy_(ids0)
        return _timed_steps(run, static_ids, static_pos, n) / n * 1e3

    return timed


class Wiring:
    """Switches compiler.lora.AtomLinear.forward between the current dispatcher path and the proposed one."""

    def __init__(self):
        from compiler.lora import AtomLinear

        self.cls = AtomLinear
        self.original = AtomLinear.forward
        self.meta = None

    def dispatcher(self, backend: str):
        from compiler.compose import set_backend

        set_backend(backend)
        self.cls.forward = self.original

    def direct(self, kind: str, path: str = "auto"):
        from compiler.compose.triton_ops import compose_delta_triton

        wiring = self
        self.path = path

        def forward(mod, x):
            y = mod.base(x)
            st = mod.state
            if st.idx is None or mod.name not in st.pools:
                return y
            A, B = st.pools[mod.name]
            x3 = x.reshape(x.shape[0], -1, x.shape[-1])
            if kind == "triton":
                compose_delta_triton(x3, A, B, meta=wiring.meta, out=y.view(x3.shape[0], x3.shape[1], -1),
                                     accumulate=True, path=wiring.path)
                return y
            return y + compose_delta_torch(x3, A, B, wiring.meta.idx, wiring.meta.w).reshape(y.shape)

        self.cls.forward = forward

    def warm_both(self, step):
        """Run a step with each plan forced, so that a capture with path='auto' compiles nothing."""
        path = self.path
        for p in ("fused", "wide"):
            self.path = p
            step()
        self.path = path


def prefilled(model, bsz, prompt, length):
    """A static cache of `length` positions holding a random prompt's prefill: (cache, attention mask, the
    next step's input ids, its cache position)."""
    cache = make_cache(model, bsz, length)
    ids = torch.randint(0, model.config.vocab_size, (bsz, prompt), device=DEV)
    attn = torch.ones(bsz, length, dtype=torch.long, device=DEV)
    model(input_ids=ids, attention_mask=attn, past_key_values=cache, cache_position=torch.arange(prompt, device=DEV),
          use_cache=True, logits_to_keep=1)
    return cache, attn, ids[:, -1:].contiguous(), torch.tensor([prompt], device=DEV)


def profile_steps(model, bsz, prompt, n=3, top=18) -> list:
    """cProfile of n eager decode steps (host time per function, what eager decode is bound by)."""
    import cProfile
    import pstats

    cache, attn, tok, pos = prefilled(model, bsz, prompt, prompt + n + 8)
    sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        model(input_ids=tok, attention_mask=attn, past_key_values=cache, cache_position=pos, use_cache=True,
              logits_to_keep=1)
        pos.add_(1)
    sync()
    prof.disable()
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    out = [{"fn": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "calls_per_step": v[1] / n, "tottime_ms_per_step": v[2] / n * 1e3,
            "cumtime_ms_per_step": v[3] / n * 1e3} for k, v in rows]
    for o in out:
        log(f"  prof {o['tottime_ms_per_step']:7.2f} ms/step {o['calls_per_step']:6.0f} calls  {o['fn']}")
    del cache
    return out


def eager_breakdown(model, bsz, prompt, n=8) -> dict:
    """Where an eager decode step's time goes: wall per step (synchronised), host time to enqueue a step (no
    synchronisation between steps), and the GPU's busy time per step (the sum of its kernels' durations,
    torch.profiler). Host-bound: wall ~ host enqueue, busy well below wall; GPU-bound: busy ~ wall."""
    from torch.profiler import ProfilerActivity, profile

    cache, attn, tok, pos = prefilled(model, bsz, prompt, prompt + 4 * n + 8)

    def step():
        model(input_ids=tok, attention_mask=attn, past_key_values=cache, cache_position=pos, use_cache=True,
              logits_to_keep=1)
        pos.add_(1)

    step()
    sync()
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        walls.append(time.perf_counter() - t0)
    hosts = []
    sync()
    for _ in range(n):  # no synchronisation: enqueue time (blocks only if the launch queue fills)
        t0 = time.perf_counter()
        step()
        hosts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    sync()
    drain = time.perf_counter() - t0
    busy_us = n_kernels = float("nan")
    if DEV == "cuda":  # (the --tiny CPU smoke run has no device time to sum)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            sync()
        busy_us = sum(e.self_device_time_total for e in prof.key_averages())
        n_kernels = sum(e.count for e in prof.key_averages() if e.self_device_time_total > 0)
    del cache
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"wall_ms": med(walls) * 1e3, "host_enqueue_ms": med(hosts) * 1e3, "drain_after_enqueue_ms": drain * 1e3,
            "gpu_busy_ms": busy_us / n / 1e3, "gpu_ops_per_step": n_kernels / n, "steps": n}


def unwrap(model, names):
    from compiler.lora import AtomLinear

    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        mod = getattr(parent, child)
        if isinstance(mod, AtomLinear):
            setattr(parent, child, mod.base)


def decode_section(res: dict, args, t_start: float) -> None:
    import transformers.masking_utils as mu

    from compiler.compose.triton_ops import ComposeMeta
    from compiler.lora import attach, module_shapes, target_names
    from serving.atom_pool import AtomPool

    # Always materialize the attention mask over the static cache: correct (unfilled cache slots
    # masked) and identical in eager and graphed runs (HF skips it only when it may read the mask).
    mu._ignore_causal_mask_sdpa = lambda *a, **k: False

    K, r = args.atoms, args.rank
    batches = [int(b) for b in args.batches.split(",")]
    t0 = time.perf_counter()
    model = build_model(args.layers, args.tiny)
    sync()
    names = target_names(model, PROJ, list(range(args.layers)))  # every layer, as in the baseline
    shapes = module_shapes(model, names)
    lin_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                    if n.endswith("proj.weight") or n.startswith("lm_head"))
    atom_bytes_per_atom = sum(r * (d_in + d_out) * 2 for d_in, d_out in shapes.values())
    dec = res["decode"] = dict(
        model=f"Llama-8B shapes (hidden 4096, ffn 14336, 32 heads / 8 kv, vocab 128256), {args.layers} layers, "
              "random bf16 weights", build_s=time.perf_counter() - t0, prompt=args.prompt, new_tokens=args.new_tokens,
        atoms_per_request=K, rank=r, targets=len(names), modules=PROJ, timing="decode steps only (prefill excluded)",
        attention="sdpa with explicit mask over the static cache", results={})
    log(f"model built in {dec['build_s']:.1f}s, {len(names)} target linears")

    n_atoms = max(batches) * K
    t0 = time.perf_counter()
    pool = AtomPool(shapes, rank=r, capacity=n_atoms, dtype=DT, device=DEV)
    ids = [f"a{i}" for i in range(n_atoms)]
    g = torch.Generator(device=DEV).manual_seed(1)
    # one add_many for every module (one call per module zeroed the others' atoms: see serving_layers)
    pool.add_many(ids, {name: (torch.randn(n_atoms, r, d_in, device=DEV, dtype=DT, generator=g) / 64,
                               torch.randn(n_atoms, d_out, r, device=DEV, dtype=DT, generator=g) / 8)
                        for name, (d_in, d_out) in shapes.items()})
    sync()
    dec["pool_fill_s"] = time.perf_counter() - t0
    wiring = Wiring()

    only = re.compile(args.only) if args.only else None

    def record(key, fn):
        if only is not None and not only.search(key):
            return
        try:
            out = fn()
            dec["results"][key] = out
            log(f"decode {key}: {out['tok_s']:.0f} tok/s, {out['ms_per_step']:.2f} ms/step")
        except Exception as e:  # record and go on: one failing variant must not lose the others
            dec["results"][key] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(f"decode {key}: FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
        save(res, args.out)

    for bsz in batches:
        # every request its own K distinct atoms; and a zipf-shared variant (64 popular atoms)
        lists = [ids[b * K:(b + 1) * K] for b in range(bsz)]
        idx_d, w_d = pool.slots(lists, [[1.0 / math.sqrt(K)] * K] * bsz)
        zg = torch.Generator().manual_seed(bsz)
        p = 1.0 / torch.arange(1, min(64, n_atoms) + 1, dtype=torch.float64) ** 1.1
        zl = [[ids[i] for i in torch.multinomial(p, K, replacement=False, generator=zg).tolist()] for _ in range(bsz)]
        idx_z, w_z = pool.slots(zl, [[1.0 / math.sqrt(K)] * K] * bsz)
        n_dist = {"distinct": len({a for row in lists for a in row}), "zipf": len({a for row in zl for a in row})}
        dec[f"bound_b{bsz}"] = {
            kind: {"distinct_atoms": n, "linear_weight_bytes": lin_bytes, "atom_bytes": n * atom_bytes_per_atom,
                   "hbm_bound_ratio": lin_bytes / (lin_bytes + n * atom_bytes_per_atom)}
            for kind, n in n_dist.items()}

        unwrap(model, names)
        record(f"b{bsz}_base_eager", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        record(f"b{bsz}_base_graphed", lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        state = attach(model, names)
        state.pools = pool.pools()
        state.set(idx_d, w_d)
        wiring.meta = ComposeMeta(idx_d, w_d, n_slots=pool.capacity)

        wiring.dispatcher("triton")
        record(f"b{bsz}_triton_dispatcher_eager", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        wiring.direct("triton")  # auto: fused for decode-sized eager calls
        record(f"b{bsz}_triton_meta_eager", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        if args.profile_eager and bsz == batches[0]:
            dec[f"eager_profile_b{bsz}"] = profile_steps(model, bsz, args.prompt)
        wiring.direct("triton", "fused")
        record(f"b{bsz}_triton_meta_eager_fused", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        wiring.direct("triton", "wide")
        record(f"b{bsz}_triton_meta_eager_wide", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        record(f"b{bsz}_triton_meta_graphed_wide",
               lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        wiring.direct("triton")  # under capture auto picks per module shape (fused GEMV when it fills the GPU)
        record(f"b{bsz}_triton_meta_graphed", lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True,
                                                            warm_up=[wiring.warm_both]))
        wiring.direct("triton", "fused")
        record(f"b{bsz}_triton_meta_graphed_fused",
               lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        wiring.dispatcher("torch")
        record(f"b{bsz}_torch_dispatcher_eager", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        wiring.direct("torch")
        record(f"b{bsz}_torch_meta_eager", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        record(f"b{bsz}_torch_meta_graphed", lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        # zipf-shared atoms
        state.set(idx_z, w_z)
        wiring.meta = ComposeMeta(idx_z, w_z, n_slots=pool.capacity)
        wiring.direct("triton")
        record(f"b{bsz}_triton_meta_eager_zipf", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        record(f"b{bsz}_triton_meta_graphed_zipf",
               lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True, warm_up=[wiring.warm_both]))
        # grouped: compiler.lora.AtomLinear itself, q/k/v and gate/up of a layer sharing one delta launch
        # (128 delta launches per step instead of 224), o/down as before
        wiring.dispatcher("triton")
        state.set_groups(pool.compose_groups())
        for pattern, (gi, gw) in (("", (idx_d, w_d)), ("_zipf", (idx_z, w_z))):
            state.set(gi, gw)
            record(f"b{bsz}_grouped_eager{pattern}", lambda: decode(model, bsz, args.prompt, args.new_tokens))
            record(f"b{bsz}_grouped_graphed{pattern}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        # round 4's path (side-stream overlap, separate delta kernels): the fused linear off, same run
        import compiler.compose.fused_linear as fl_mod
        import compiler.compose.grouped as grouped_mod

        fl_default = fl_mod.mode
        fl_mod.mode = "never"
        for pattern, (gi, gw) in (("", (idx_d, w_d)), ("_zipf", (idx_z, w_z))):
            state.set(gi, gw)
            record(f"b{bsz}_grouped_eager_round4{pattern}", lambda: decode(model, bsz, args.prompt, args.new_tokens))
            record(f"b{bsz}_grouped_graphed_round4{pattern}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        # round 4 with the two-launch GEMV's kernels at 4 warps and with the earlier warps rule (gemv knob)
        from compiler.compose.triton_ops import set_gemv_knobs

        for wk in ("4", "auto", "e2"):
            knobs_default = set_gemv_knobs(warps=wk)
            grouped_mod._warmed.clear()  # the warm-up's first eager calls compile the side-stream kernels again
            state.set(idx_d, w_d)
            record(f"b{bsz}_grouped_graphed_round4_w{wk}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
            set_gemv_knobs(**knobs_default)
        # the fused linear under capture too ("always"; "auto" keeps it to eager calls), with and without
        # programmatic dependent launch (off by default)
        fl_mod.mode = "always"
        for pattern, (gi, gw) in (("", (idx_d, w_d)), ("_zipf", (idx_z, w_z))):
            state.set(gi, gw)
            record(f"b{bsz}_grouped_graphed_fusedcap{pattern}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        pdl_default = fl_mod.use_pdl
        fl_mod.use_pdl = True
        state.set(idx_d, w_d)
        record(f"b{bsz}_grouped_graphed_fusedcap_pdl",
               lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        fl_mod.use_pdl = pdl_default
        fl_mod.mode = "never"
        # the same with the delta on the current stream (no side-stream overlap): before/after in one run
        mode_default = grouped_mod.overlap
        grouped_mod.overlap = "never"
        for pattern, (gi, gw) in (("", (idx_d, w_d)), ("_zipf", (idx_z, w_z))):
            state.set(gi, gw)
            record(f"b{bsz}_grouped_eager_nooverlap{pattern}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens))
            record(f"b{bsz}_grouped_graphed_nooverlap{pattern}",
                   lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
        grouped_mod.overlap = "always"  # eager with the side stream too (the default forks only under capture)
        state.set(idx_d, w_d)
        record(f"b{bsz}_grouped_eager_overlap", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        grouped_mod.overlap = mode_default
        state.set(idx_d, w_d)
        # cuBLAS leaving SMs free for the side stream (torch's experimental SM carveout), composed rows only
        if bsz == batches[0] and hasattr(torch._C, "_set_sm_carveout_experimental"):
            for c in [int(c) for c in args.carveouts.split(",") if c]:
                torch._C._set_sm_carveout_experimental(c)
                for pattern, (gi, gw) in (("", (idx_d, w_d)), ("_zipf", (idx_z, w_z))):
                    state.set(gi, gw)
                    record(f"b{bsz}_grouped_graphed_carve{c}{pattern}",
                           lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
                torch._C._set_sm_carveout_experimental(None)
            state.set(idx_d, w_d)
        fl_mod.mode = fl_default
        # eager noise check: base and grouped eager again, back to back
        for rep in range(args.eager_repeats):
            unwrap(model, names)
            record(f"b{bsz}_base_eager_rep{rep}", lambda: decode(model, bsz, args.prompt, args.new_tokens))
            attach(model, names)
            record(f"b{bsz}_grouped_eager_rep{rep}", lambda: decode(model, bsz, args.prompt, args.new_tokens))
        # paired eager measurement: base and composed (the default path) alternated, one ratio per pair, so
        # that the host's drift over a run (15-25% between rows on the VM) falls on both sides of each ratio
        if args.eager_pairs:
            # each round: base, composed (the default path), composed without the eager lane (grouped._LANE off)
            pairs = []
            attach(model, names)
            decode(model, bsz, args.prompt, 4)  # warm-up: kernels compiled, launch caches filled
            steps = args.eager_pair_steps or args.new_tokens
            for i in range(args.eager_pairs):
                # rounds alternate their order, base / lane / no lane and no lane / lane / base, so that base
                # runs first in half the rounds and last in the other half (drift within a round, or a cost of
                # following another variant, falls on both sides of the ratio; until stop 17 base always ran
                # first and the composed variants took turns in second place)
                got = {}
                for kind in (("base", True, False) if i % 2 == 0 else (False, True, "base")):
                    if kind == "base":
                        unwrap(model, names)
                    else:
                        attach(model, names)
                        grouped_mod._LANE = kind
                    got[kind] = decode(model, bsz, args.prompt, steps)["ms_per_step"]
                grouped_mod._LANE = True
                attach(model, names)
                b_ms, c_ms, n_ms = got["base"], got[True], got[False]
                pairs.append({"base_ms": b_ms, "composed_ms": c_ms, "ratio": b_ms / c_ms,
                              "composed_nolane_ms": n_ms, "ratio_nolane": b_ms / n_ms,
                              "base_first": i % 2 == 0})

            def _median(v):
                v = sorted(v)
                return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

            rs = sorted(p_["ratio"] for p_ in pairs)
            dec[f"eager_pairs_b{bsz}"] = {"path": "grouped_eager (fused_linear auto, eager lane on)", "pairs": pairs,
                                          "median_ratio": _median(rs), "min_ratio": rs[0], "max_ratio": rs[-1],
                                          "median_ratio_nolane": _median([p_["ratio_nolane"] for p_ in pairs]),
                                          "ratio_of_median_ms": _median([p_["base_ms"] for p_ in pairs])
                                          / _median([p_["composed_ms"] for p_ in pairs]),
                                          "steps_per_decode": steps,
                                          "median_ratio_base_first": _median([p_["ratio"] for p_ in pairs
                                                                              if p_["base_first"]]),
                                          "median_ratio_base_last": _median([p_["ratio"] for p_ in pairs
                                                                             if not p_["base_first"]] or [float("nan")]),
                                          "median_lane_over_nolane_ms": _median([p_["composed_ms"] / p_["composed_nolane_ms"]
                                                                                 for p_ in pairs])}
            log(f"eager pairs b{bsz}: ratios {[round(r_, 3) for r_ in rs]}; without the lane "
                f"{sorted(round(p_['ratio_nolane'], 3) for p_ in pairs)}")
        # paired graphed measurement: the base step and the composed step (the default path, and the GEMV warps
        # variants asked for) each captured once, then replayed in alternated rounds, one ratio per round, so that
        # the GPU's drift over a run falls on both sides of each ratio (single rows: base 12.36-12.55 ms per step
        # over six processes, stops 18-19)
        if args.graphed_pairs and bsz == batches[0]:
            steps = args.graphed_pair_steps or args.new_tokens
            variants = [v for v in args.graphed_pair_variants.split(",") if v]
            timers = {}
            unwrap(model, names)
            timers["base"] = graphed_decoder(model, bsz, args.prompt, steps)
            attach(model, names)
            state.set(idx_d, w_d)
            for v in variants:
                if v == "base2":  # a second base graph (checks the harness: two graphs of one model)
                    unwrap(model, names)
                    timers[v] = graphed_decoder(model, bsz, args.prompt, steps)
                    attach(model, names)
                    continue
                try:
                    with _variant(v):
                        timers[v] = graphed_decoder(model, bsz, args.prompt, steps)
                except Exception as e:  # a failing variant must not lose the others
                    log(f"graphed pairs: variant {v} FAILED {type(e).__name__}: {e}")
            order = [k for k in ["base"] + variants if k in timers]
            for k in order:  # one untimed pass each: clocks up, caches warm
                timers[k](steps)
            rounds = []
            for i in range(args.graphed_pairs):
                got = {k: timers[k](steps) for k in (order if i % 2 == 0 else order[::-1])}
                rounds.append({"ms": got, "base_first": i % 2 == 0,
                               "ratio": {k: got["base"] / got[k] for k in order if k != "base"}})
            summary = {}
            for k in order[1:]:
                rs = sorted(r_["ratio"][k] for r_ in rounds)
                summary[k] = {"median_ratio": _median_of(rs), "min_ratio": rs[0], "max_ratio": rs[-1],
                              "rounds_at_or_above_0.90": sum(r_ >= 0.90 for r_ in rs),
                              "median_ms": _median_of([r_["ms"][k] for r_ in rounds]),
                              "median_ratio_base_first": _median_of([r_["ratio"][k] for r_ in rounds
                                                                     if r_["base_first"]]),
                              "median_ratio_base_last": _median_of([r_["ratio"][k] for r_ in rounds
                                                                    if not r_["base_first"]] or [float("nan")])}
            dec[f"graphed_pairs_b{bsz}"] = {
                "what": "graphed decode steps (one CUDA graph per variant, captured once), rounds alternating "
                        "base-first and base-last; ratio = base ms / variant ms per round",
                "steps_per_round": steps, "rounds": rounds, "base_median_ms": _median_of([r_["ms"]["base"]
                                                                                          for r_ in rounds]),
                "variants": {v: ("the default path (grouped_graphed)" if v == "default" else
                                 "a second base graph (the harness's own spread)" if v == "base2" else
                                 f"the default path with {v!r} (bench _variant)") for v in order[1:]},
                "summary": summary}
            log(f"graphed pairs b{bsz}: " + "; ".join(f"{k} median {s_['median_ratio']:.4f} "
                                                      f"[{s_['min_ratio']:.3f}, {s_['max_ratio']:.3f}]"
                                                      for k, s_ in summary.items()))
            del timers
            torch.cuda.empty_cache()
            save(res, args.out)
        if args.eager_breakdown and bsz == batches[0]:
            rows = []
            for rep in range(args.eager_breakdown):
                for kind in ("base", "composed", "composed_nolane", "composed_round4"):
                    if kind == "base":
                        unwrap(model, names)
                    else:
                        attach(model, names)
                    grouped_mod._LANE = kind != "composed_nolane"
                    fl_mod.mode = "never" if kind == "composed_round4" else fl_default
                    decode(model, bsz, args.prompt, 2)  # warm: the lanes made, kernels compiled
                    r_ = eager_breakdown(model, bsz, args.prompt)
                    r_.update(kind=kind, rep=rep)
                    rows.append(r_)
                    log(f"eager breakdown {kind}: {r_}")
            grouped_mod._LANE = True
            fl_mod.mode = fl_default
            attach(model, names)
            dec[f"eager_breakdown_b{bsz}"] = rows
        if args.profile_eager and bsz == batches[0]:  # host time per function: base vs the default composed path
            unwrap(model, names)
            log("profile: base eager")
            dec[f"eager_profile_base_b{bsz}"] = profile_steps(model, bsz, args.prompt, n=8, top=30)
            attach(model, names)
            log("profile: composed eager (default path)")
            dec[f"eager_profile_composed_b{bsz}"] = profile_steps(model, bsz, args.prompt, n=8, top=30)
        if bsz == batches[0]:
            fl_mod.mode = "never"  # round-4 plan comparisons
            for gpath in ("wide", "fused"):
                grouped_mod.default_path = gpath
                record(f"b{bsz}_grouped_graphed_{gpath}",
                       lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
            grouped_mod.default_path = "auto"
            with _knobs(wide_tiles="sm"):  # run 2's tiles, for the side-by-side comparison
                record(f"b{bsz}_grouped_graphed_sm",
                       lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True))
                state.set_groups([])
                wiring.meta = ComposeMeta(idx_d, w_d, n_slots=pool.capacity)
                wiring.direct("triton")
                record(f"b{bsz}_triton_meta_graphed_sm",
                       lambda: decode(model, bsz, args.prompt, args.new_tokens, graphed=True,
                                      warm_up=[wiring.warm_both]))
            fl_mod.mode = fl_default
        state.set_groups([])
        state.clear()
        wiring.dispatcher("auto")

    def ratio(a, b):
        ra, rb = dec["results"].get(a, {}), dec["results"].get(b, {})
        return ra["tok_s"] / rb["tok_s"] if "tok_s" in ra and "tok_s" in rb else None

    for bsz in batches:
        dec[f"ratios_b{bsz}"] = {
            "triton_meta_eager": ratio(f"b{bsz}_triton_meta_eager", f"b{bsz}_base_eager"),
            "triton_meta_eager_wide": ratio(f"b{bsz}_triton_meta_eager_wide", f"b{bsz}_base_eager"),
            "triton_meta_eager_fused": ratio(f"b{bsz}_triton_meta_eager_fused", f"b{bsz}_base_eager"),
            "triton_meta_graphed_fused": ratio(f"b{bsz}_triton_meta_graphed_fused", f"b{bsz}_base_graphed"),
            "triton_meta_graphed_wide": ratio(f"b{bsz}_triton_meta_graphed_wide", f"b{bsz}_base_graphed"),
            "triton_dispatcher_eager": ratio(f"b{bsz}_triton_dispatcher_eager", f"b{bsz}_base_eager"),
            "torch_dispatcher_eager": ratio(f"b{bsz}_torch_dispatcher_eager", f"b{bsz}_base_eager"),
            "torch_meta_eager": ratio(f"b{bsz}_torch_meta_eager", f"b{bsz}_base_eager"),
            "triton_meta_graphed": ratio(f"b{bsz}_triton_meta_graphed", f"b{bsz}_base_graphed"),
            "torch_meta_graphed": ratio(f"b{bsz}_torch_meta_graphed", f"b{bsz}_base_graphed"),
            "triton_meta_eager_zipf": ratio(f"b{bsz}_triton_meta_eager_zipf", f"b{bsz}_base_eager"),
            "triton_meta_graphed_zipf": ratio(f"b{bsz}_triton_meta_graphed_zipf", f"b{bsz}_base_graphed"),
            "triton_meta_graphed_sm": ratio(f"b{bsz}_triton_meta_graphed_sm", f"b{bsz}_base_graphed"),
            "grouped_eager": ratio(f"b{bsz}_grouped_eager", f"b{bsz}_base_eager"),
            "grouped_graphed": ratio(f"b{bsz}_grouped_graphed", f"b{bsz}_base_graphed"),
            "grouped_graphed_wide": ratio(f"b{bsz}_grouped_graphed_wide", f"b{bsz}_base_graphed"),
            "grouped_graphed_fused": ratio(f"b{bsz}_grouped_graphed_fused", f"b{bsz}_base_graphed"),
            "grouped_graphed_sm": ratio(f"b{bsz}_grouped_graphed_sm", f"b{bsz}_base_graphed"),
            "grouped_eager_zipf": ratio(f"b{bsz}_grouped_eager_zipf", f"b{bsz}_base_eager"),
            "grouped_graphed_zipf": ratio(f"b{bsz}_grouped_graphed_zipf", f"b{bsz}_base_graphed"),
            "grouped_eager_round4": ratio(f"b{bsz}_grouped_eager_round4", f"b{bsz}_base_eager"),
            "grouped_graphed_round4": ratio(f"b{bsz}_grouped_graphed_round4", f"b{bsz}_base_graphed"),
            "grouped_graphed_round4_w4": ratio(f"b{bsz}_grouped_graphed_round4_w4", f"b{bsz}_base_graphed"),
            "grouped_graphed_round4_wauto": ratio(f"b{bsz}_grouped_graphed_round4_wauto", f"b{bsz}_base_graphed"),
            "grouped_graphed_round4_we2": ratio(f"b{bsz}_grouped_graphed_round4_we2", f"b{bsz}_base_graphed"),
            "grouped_eager_round4_zipf": ratio(f"b{bsz}_grouped_eager_round4_zipf", f"b{bsz}_base_eager"),
            "grouped_graphed_round4_zipf": ratio(f"b{bsz}_grouped_graphed_round4_zipf", f"b{bsz}_base_graphed"),
            "grouped_graphed_fusedcap": ratio(f"b{bsz}_grouped_graphed_fusedcap", f"b{bsz}_base_graphed"),
            "grouped_graphed_fusedcap_zipf": ratio(f"b{bsz}_grouped_graphed_fusedcap_zipf", f"b{bsz}_base_graphed"),
            "grouped_graphed_fusedcap_pdl": ratio(f"b{bsz}_grouped_graphed_fusedcap_pdl", f"b{bsz}_base_graphed"),
            "grouped_eager_nooverlap": ratio(f"b{bsz}_grouped_eager_nooverlap", f"b{bsz}_base_eager"),
            "grouped_eager_overlap": ratio(f"b{bsz}_grouped_eager_overlap", f"b{bsz}_base_eager"),
            "grouped_graphed_nooverlap": ratio(f"b{bsz}_grouped_graphed_nooverlap", f"b{bsz}_base_graphed"),
            "grouped_eager_nooverlap_zipf": ratio(f"b{bsz}_grouped_eager_nooverlap_zipf", f"b{bsz}_base_eager"),
            "grouped_graphed_nooverlap_zipf": ratio(f"b{bsz}_grouped_graphed_nooverlap_zipf",
                                                    f"b{bsz}_base_graphed"),
        }
        for c in [int(c) for c in args.carveouts.split(",") if c]:
            for pattern in ("", "_zipf"):
                dec[f"ratios_b{bsz}"][f"grouped_graphed_carve{c}{pattern}"] = ratio(
                    f"b{bsz}_grouped_graphed_carve{c}{pattern}", f"b{bsz}_base_graphed")
        for rep in range(args.eager_repeats):
            dec[f"ratios_b{bsz}"][f"grouped_eager_rep{rep}"] = ratio(f"b{bsz}_grouped_eager_rep{rep}",
                                                                     f"b{bsz}_base_eager_rep{rep}")

    def best(keys):
        """(ratio, path name) of the best measured of `keys` in ratios_b32 (b32, K=8, r=2, all 7 projections)."""
        got = [(dec.get("ratios_b32", {}).get(k), k) for k in keys]
        got = [g for g in got if g[0] is not None]
        return max(got) if got else (None, None)

    # headline numbers: the product's default path of each kind (grouped_*: AtomLinear as serving wires it); the
    # best of several paths is kept beside it (_best_of_paths), since a max over noisy rows reads high
    for out_key, keys in (
            ("decode_ratio_composed_over_base", ("triton_meta_eager", "grouped_eager")),
            ("decode_ratio_composed_over_base_graphed", ("triton_meta_graphed", "grouped_graphed",
                                                         "grouped_graphed_wide", "grouped_graphed_fused",
                                                         "grouped_graphed_fusedcap")),
            ("decode_ratio_composed_over_base_zipf", ("triton_meta_eager_zipf", "grouped_eager_zipf")),
            ("decode_ratio_composed_over_base_graphed_zipf", ("triton_meta_graphed_zipf", "grouped_graphed_zipf"))):
        res[out_key + "_best_of_paths"], res[out_key + "_best_of_paths_path"] = best(keys)
        default = keys[1]
        res[out_key], res[out_key + "_path"] = dec.get("ratios_b32", {}).get(default), default
    gp = dec.get("graphed_pairs_b32", {}).get("summary", {}).get("default")
    if gp:  # the paired median replaces the single graphed row (base and composed timed minutes apart)
        res["decode_ratio_composed_over_base_graphed_single_row"] = res["decode_ratio_composed_over_base_graphed"]
        res["decode_ratio_composed_over_base_graphed"] = gp["median_ratio"]
        res["decode_ratio_composed_over_base_graphed_path"] = (
            f"grouped_graphed, median of {len(dec['graphed_pairs_b32']['rounds'])} alternated rounds")
    if dec.get("eager_pairs_b32"):  # the paired median replaces the best single eager row (noise-picked)
        res["decode_ratio_composed_over_base_best_single_row"] = res["decode_ratio_composed_over_base"]
        res["decode_ratio_composed_over_base"] = dec["eager_pairs_b32"]["median_ratio"]
        res["decode_ratio_composed_over_base_path"] = (f"grouped_eager, median of "
                                                       f"{len(dec['eager_pairs_b32']['pairs'])} alternated pairs")
    # what reading each distinct atom once costs, on top of the base step as measured (graphed)
    copy_bw = res.get("copy_bandwidth_GBps")
    for bsz in batches:
        base = dec["results"].get(f"b{bsz}_base_graphed", {}).get("ms_per_step")
        if base and copy_bw:
            for kind, b in dec[f"bound_b{bsz}"].items():
                b["graphed_ratio_cap_at_measured_base"] = base / (base + b["atom_bytes"] / (copy_bw * 1e9) * 1e3)
    save(res, args.out)

    unwrap(model, names)
    del pool, state
    torch.cuda.empty_cache()
    if not args.skip_peft:
        peft_section(res, model, batches, args, t_start)


def peft_section(res, model, batches, args, t_start):
    batches = [int(b) for b in args.peft_batches.split(",")]
    from peft import LoraConfig, get_peft_model

    K, r = args.atoms, args.rank
    dec = res["decode"]
    pe = dec["peft"] = {"how": f"one rank-{K * r} adapter per request (the shape add_weighted_adapter 'cat' of "
                               f"{K} rank-{r} adapters gives), mixed batch via adapter_names, eager only",
                        "new_tokens": args.peft_new_tokens}
    cfg = LoraConfig(r=K * r, lora_alpha=K * r, lora_dropout=0.0, target_modules=PROJ)
    t0 = time.perf_counter()
    pm = get_peft_model(model, cfg, adapter_name="req0")
    made = 1
    for bsz in batches:
        if time.perf_counter() - t_start > args.time_budget:
            pe[f"b{bsz}"] = {"skipped": "time budget"}
            continue
        try:
            while made < bsz:
                pm.add_adapter(f"req{made}", cfg)
                made += 1
            sync()
            pe["adapter_create_s_each"] = (time.perf_counter() - t0) / made
            pm.eval()
            names = [f"req{i}" for i in range(bsz)]
            out = decode(pm, bsz, args.prompt, args.peft_new_tokens, adapter_names=names)
            pe[f"b{bsz}"] = out
            base = dec["results"].get(f"b{bsz}_base_eager", {}).get("tok_s")
            if base:
                dec.setdefault(f"ratios_b{bsz}", {})["peft_eager"] = out["tok_s"] / base
            log(f"decode b{bsz}_peft: {out['tok_s']:.1f} tok/s")
        except Exception as e:
            pe[f"b{bsz}"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            traceback.print_exc()
        save(res, args.out)
    # per-request composition cost: K rank-r adapters merged by add_weighted_adapter("cat")
    if time.perf_counter() - t_start < args.time_budget + 60:
        try:
            small = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=PROJ)
            parts = [f"atom{i}" for i in range(K)]
            for p in parts:
                pm.add_adapter(p, small)
            sync()
            t0 = time.perf_counter()
            pm.add_weighted_adapter(parts, [1.0] * K, "composed_req", combination_type="cat")
            sync()
            pe["add_weighted_adapter_cat_s_per_request"] = time.perf_counter() - t0
            log(f"peft add_weighted_adapter cat: {pe['add_weighted_adapter_cat_s_per_request']:.2f} s")
        except Exception as e:
            pe["add_weighted_adapter_error"] = f"{type(e).__name__}: {e}"[:500]
            traceback.print_exc()
    save(res, args.out)


def parse_configs(text: str) -> list[dict]:
    """'k=v,k=v;k=v' -> [{k: int(v), ...}, ...] (fused_linear.config overrides)."""
    out = []
    for part in text.split(";"):
        if part.strip():
            out.append({k.strip(): int(v) for k, v in (kv.split("=") for kv in part.split(","))})
    return out


# ------------------------------------------------------------------------------------------
def save(res: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=1, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/results/kernel_h200.json"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--peft-new-tokens", type=int, default=3)
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--peft-batches", default="32",
                    help="PEFT builds one adapter per request at ~1 s each on an H200: 128 costs minutes")
    ap.add_argument("--atoms", type=int, default=8)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--skip-layer", action="store_true")
    ap.add_argument("--layer-T", default="1,32,256", help="tokens per request of the layer-level rows")
    ap.add_argument("--layer-repeats", type=int, default=3,
                    help="alternated repeats of the kernel-alone layer timings; rows report the median")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--shape-batches", default="32,128", help="batches of the per-shape sweep")
    ap.add_argument("--shape-patterns", default="distinct,zipf", help="atom patterns of the per-shape sweep")
    ap.add_argument("--sweep-splits", action="store_true",
                    help="also the fused GEMV with forced d_out splits and with B in the old layout")
    ap.add_argument("--profile-eager", action="store_true", help="cProfile 3 eager composed decode steps")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--time-budget", type=float, default=420.0)
    ap.add_argument("--tiny", action="store_true", help="tiny model (smoke test of the plumbing, CPU ok)")
    ap.add_argument("--only", default="", help="regex: run only the decode rows whose key matches (e.g. 'base|grouped')")
    ap.add_argument("--eager-repeats", type=int, default=2,
                    help="extra back-to-back base/grouped eager pairs per batch (eager noise)")
    ap.add_argument("--skip-serving", action="store_true", help="skip the AtomLinear serving-layer section")
    ap.add_argument("--fused-configs", default="",
                    help="tile overrides of the fused linear tried in the serving-layer section, e.g. "
                         "'block_n=32,block_k=256,stages=4;block_n=64,block_k=128'")
    ap.add_argument("--fused-pick-best", action="store_true",
                    help="run the decode rows with the fused-linear tile override that was fastest in the "
                         "serving-layer section (recorded as fused_config_in_decode)")
    ap.add_argument("--layer-tune", default="",
                    help="T values (tokens per request) at which to search the tile plans' overrides per (K, r), "
                         "e.g. 256; rows in 'layer_tune'")
    ap.add_argument("--layer-grid", default="", help="JSON {key: [values]} of tile-fused overrides: --layer-tune "
                    "times every combination instead of its coordinate descent")
    ap.add_argument("--layer-tune-combos", default="1x1,8x2,8x4,32x2,32x4", help="KxR pairs for --layer-tune")
    ap.add_argument("--layer-tune-budget", type=float, default=240.0,
                    help="seconds per T for --layer-tune, shared equally by the (K, r) pairs and the two plans")
    ap.add_argument("--eager-breakdown", type=int, default=0, help="N rounds of eager_breakdown (wall, host enqueue, "
                    "GPU busy time per step) for base, composed, composed without the eager lane")
    ap.add_argument("--eager-pair-steps", type=int, default=0, help="decode steps timed per run of --eager-pairs "
                    "(default --new-tokens): shorter runs, more rounds")
    ap.add_argument("--eager-pairs", type=int, default=0,
                    help="alternate base and composed eager decodes N times per batch; the b32 median of the pair "
                         "ratios becomes the headline eager ratio")
    ap.add_argument("--graphed-pairs", type=int, default=0,
                    help="b32: replay captured base and composed decode steps in N alternated rounds; the median "
                         "of the round ratios becomes the headline graphed ratio")
    ap.add_argument("--graphed-pair-steps", type=int, default=0, help="steps per round of --graphed-pairs "
                    "(default --new-tokens)")
    ap.add_argument("--graphed-pair-variants", default="default",
                    help="composed variants of --graphed-pairs: 'default' and/or GEMV warps knob values (4, auto, "
                         "e2, e2n)")
    ap.add_argument("--serving-only", default="",
                    help="regex: the serving-layer variants to run besides 'base' (e.g. 'fused|grouped_always$')")
    ap.add_argument("--serving-profile", default="",
                    help="regex: serving-layer variants whose graph is profiled per kernel (torch.profiler)")
    ap.add_argument("--serving-per-group", action="store_true",
                    help="serving layers: also each projection group's GPU time alone (q/k/v, o, gate/up, down)")
    ap.add_argument("--carveouts", default="",
                    help="SM carveouts for cuBLAS tried in the serving-layer section and the b32 grouped graphed rows")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import triton
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    props = torch.cuda.get_device_properties(0) if DEV == "cuda" else None
    res: dict = {
        "bench": "batched low-rank composition kernel (issue 7)",
        "machine": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "gpu": props.name if props else None, "sm_count": props.multi_processor_count if props else None,
        "gpu_mem_gib": props.total_memory / 2**30 if props else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "transformers": transformers.__version__, "peft": peft_version,
        "settings": vars(args), "decode_ratio_composed_over_base": None,
        "decode_ratio_composed_over_base_graphed": None,
        "targets": {"eager_ratio": 0.95, "graphed_ratio": 0.90, "delta_over_hbm_bound_at_T256": 1.5},
    }
    try:
        if DEV == "cuda":
            bw = copy_bandwidth()
            res["copy_bandwidth_GBps"] = bw / 1e9
            log(f"copy bandwidth {bw / 1e9:.0f} GB/s")
            save(res, args.out)
        if not args.skip_shapes and DEV == "cuda":
            with torch.no_grad():
                shape_sweep(res, bw, args.atoms, args.rank, args.sweep_splits,
                            [int(b) for b in args.shape_batches.split(",")], args.shape_patterns.split(","),
                            t_start, args.time_budget)
            save(res, args.out)
        if not args.skip_serving and DEV == "cuda":
            serving_layers(res, bw, carveouts=[int(c) for c in args.carveouts.split(",") if c],
                           fused_configs=parse_configs(args.fused_configs), only=args.serving_only,
                           per_group=args.serving_per_group, profile=args.serving_profile)
            save(res, args.out)
        if args.layer_tune and DEV == "cuda":
            combos = [tuple(int(v) for v in c.split("x")) for c in args.layer_tune_combos.split(",")]
            with torch.no_grad():
                for T in (int(t) for t in args.layer_tune.split(",")):
                    layer_tune(res, bw, T, combos, args.layer_tune_budget,
                               json.loads(args.layer_grid) if args.layer_grid else None)
                    save(res, args.out)
        if not args.skip_layer and DEV == "cuda":
            with torch.no_grad():
                layer_level(res, bw, [int(t) for t in args.layer_T.split(",")], repeats=args.layer_repeats)
            save(res, args.out)
        if args.fused_pick_best and res.get("serving_layers", {}).get("fused_best"):
            import compiler.compose.fused_linear as fl

            fl.config.clear()
            fl.config.update(res["serving_layers"]["fused_best"]["config"])
            res["fused_config_in_decode"] = dict(fl.config)
            log(f"decode rows with fused_linear.config = {fl.config}")
        if not args.skip_decode:
            with torch.no_grad():
                decode_section(res, args, t_start)
    except Exception as e:
        res.setdefault("errors", []).append(traceback.format_exc()[-3000:])
        log(f"FAILED: {e}")
        traceback.print_exc()
    res["wall_s"] = time.perf_counter() - t_start
    save(res, args.out)
    log(json.dumps({k: res.get(k) for k in ("decode_ratio_composed_over_base", "decode_ratio_composed_over_base_path",
                                            "decode_ratio_composed_over_base_graphed",
                                            "decode_ratio_composed_over_base_graphed_path", "wall_s")}))


if __name__ == "__main__":
    main()
