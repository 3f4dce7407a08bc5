"""Probe: can a Triton GEMM stream a decode-sized linear's weights at cuBLAS's rate on an H200?

Issue 7's fused path (compiler/compose/fused_linear.py) folds the atoms' delta into a Triton
skinny GEMM; round 5 measured that GEMM streaming the weights at ~2.4 TB/s against cuBLAS's
~3.1 TB/s at batch 32, which is why the fold lost. This probe times the weight streaming alone
(no delta) for the Llama-8B decode shapes at M = 32 / 128 rows:

  cublas      F.linear(x, W)
  swap        y^T = W x^T: the weight tile is the dot's left operand (128 output rows per tile, a
              wgmma-sized M), the tokens its N; W tiles loaded through pointers (cp.async)
  swap_tma    the same with W tiles loaded through a host-made TMA tensor descriptor
  split-K partials are summed with fp32 atomic adds into a zeroed fp32 output (the zero fill is
  part of the timed call).

Every variant's output is checked against cuBLAS. Times: median of do_bench (L2 flushed).
Writes JSON to --out. Needs CUDA and Triton; an experiment, not part of the product.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

DT = torch.bfloat16


@triton.jit
def _swap_kernel(w_ptr, w_desc, x_ptr, y_ptr, M, N, K, k_per,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, USE_TMA: tl.constexpr,
                 ATOMIC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n0 = pid_n * BLOCK_N
    k_lo = pid_k * k_per
    k_hi = tl.minimum(k_lo + k_per, K)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if USE_TMA:
            w = w_desc.load([n0, k0])
        else:
            w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :])
        xt = tl.load(x_ptr + offs_m[None, :] * K + offs_k[:, None], mask=m_mask[None, :], other=0.0)
        acc = tl.dot(w, xt, acc)
    ptrs = y_ptr + offs_m[None, :] * N + offs_n[:, None]
    if ATOMIC:
        tl.atomic_add(ptrs, acc, mask=m_mask[None, :], sem="relaxed")
    else:
        tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[None, :])


def swap_linear(x, W, block_n=128, block_k=128, split=1, stages=4, warps=4, tma=False):
    M, K = x.shape
    N = W.shape[0]
    block_m = max(16, triton.next_power_of_2(M))
    n_kb = triton.cdiv(K, block_k)
    k_per = triton.cdiv(n_kb, split) * block_k
    split = triton.cdiv(K, k_per)
    desc = None
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        desc = TensorDescriptor.from_tensor(W, [block_n, block_k])
    if split > 1:
        y = torch.zeros(M, N, dtype=torch.float32, device=x.device)
    else:
        y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _swap_kernel[(triton.cdiv(N, block_n), split)](
        W, desc, x, y, M, N, K, k_per, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, USE_TMA=tma,
        ATOMIC=split > 1, num_warps=warps, num_stages=stages)
    return y


def bench_us(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/skinny_gemm_probe_h200.json")
    ap.add_argument("--rows", default="32,128")
    ap.add_argument("--budget", type=float, default=150.0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    shapes = {"q_proj": (4096, 4096), "qkv": (6144, 4096), "gate_up": (28672, 4096), "down_proj": (4096, 14336)}
    configs = []
    for tma in (False, True):
        for block_n in (64, 128):
            for block_k in (64, 128, 256):
                for stages in (3, 5):
                    configs.append(dict(block_n=block_n, block_k=block_k, stages=stages, warps=4, tma=tma))
    res = {"probe": __doc__.split("\n")[0], "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "triton": triton.__version__, "platform": platform.platform(), "rows": []}
    if hasattr(triton, "set_allocator"):  # descriptors made on the device need scratch; host ones do not
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    for M in (int(m) for m in args.rows.split(",")):
        for name, (N, K) in shapes.items():
            W = torch.randn(N, K, dtype=DT, device="cuda") / 64
            x = torch.randn(M, K, dtype=DT, device="cuda")
            ref = F.linear(x, W).float()
            t_cub = bench_us(lambda: F.linear(x, W))
            wbytes = W.numel() * 2
            row = dict(M=M, shape=name, N=N, K=K, cublas_us=t_cub, cublas_TBps=wbytes / t_cub / 1e6, variants=[])
            best = None
            t_shape = time.perf_counter()
            for cfg in configs:
                if time.perf_counter() - t_shape > args.budget / (len(shapes) * len(args.rows.split(","))):
                    break
                n_tiles = triton.cdiv(N, cfg["block_n"])
                for split in sorted({1, max(1, (2 * sm) // n_tiles), max(1, (4 * sm) // n_tiles)}):
                    c = dict(cfg, split=split)
                    try:
                        y = swap_linear(x, W, **c).float()
                        err = ((y - ref).abs().max() / ref.abs().max()).item()
                        if not err < 1e-2:
                            row["variants"].append(dict(c, error=f"wrong, rel err {err:.3g}"))
                            continue
                        t = bench_us(lambda: swap_linear(x, W, **c))
                    except Exception as e:  # shared memory / registers
                        row["variants"].append(dict(c, error=f"{type(e).__name__}: {str(e)[:100]}"))
                        continue
                    v = dict(c, us=t, TBps=wbytes / t / 1e6, over_cublas=t / t_cub)
                    row["variants"].append(v)
                    if best is None or t < best["us"]:
                        best = v
            row["best"] = best
            res["rows"].append(row)
            print(f"M={M:3d} {name:9s} cuBLAS {t_cub:6.1f}us ({row['cublas_TBps']:.2f} TB/s)  best Triton "
                  f"{best and round(best['us'], 1)}us ({best and round(best['TBps'], 2)} TB/s) {best}", flush=True)
    res["wall_s"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
