"""Matrix-product rate by dtype on this CPU, for the batched scorer's choice (issue 12).

``searcher/scoring.BlockScorer`` widens each float16 block to float32 before its product
[rows, d] x [d, m]. Whether that widening is worth avoiding depends on the CPU (AVX-512 FP16,
AMX). For the scorer's block shape this prints GFLOP/s of torch's float32, float16 and bfloat16
products and numpy's float32 one (fastest of ``--rounds``, interleaved round by round), the
float16 -> float32 widening rate (GB/s written), the largest score error of each dtype against
float64 on clustered unit vectors, and the CPU flags that decide it, as JSON (and into
``--out`` when given):

    python bench/gemm_dtypes.py --threads 1 --out bench/results/gemm-dtypes.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096, help="block rows (BlockScorer's)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(1, args.dim, generator=g)
    unit = lambda n: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(n, args.dim, generator=g) + 3 * centre, dim=1)
    block, q = unit(args.rows).half(), unit(args.queries)
    flops = 2.0 * args.rows * args.dim * args.queries
    ref = block.double() @ q.double().T
    products, error = {}, {}
    for name, dt in (("torch_float32", torch.float32), ("torch_float16", torch.float16),
                     ("torch_bfloat16", torch.bfloat16)):
        a, b = block.to(dt), q.T.contiguous().to(dt)
        products[name] = lambda a=a, b=b: a @ b
        error[name] = float((a @ b).double().sub(ref).abs().max())
    a32, b32 = block.float().numpy(), q.T.contiguous().numpy()
    products["numpy_float32"] = lambda: a32 @ b32
    buf = torch.empty(args.rows, args.dim)
    fns = {**products, "widen": lambda: buf.copy_(block)}
    for fn in fns.values():                                        # warm-up
        fn()
    best = common.interleaved(fns, args.rounds)
    out = {"shape": [args.rows, args.dim, args.queries], "threads": args.threads,
           "gflops": {n: round(flops / best[n] / 1e9, 1) for n in products},
           "max_abs_error": error,
           "widen_float16_to_float32_gb_per_s_written":
               round(buf.numel() * 4 / best["widen"] / 1e9, 1)}
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    out["cpu_flags"] = sorted({f for f in flags if f.startswith(("avx512_fp16", "avx512_bf16",
                                                                  "amx", "avx2"))})
    common.emit(out, args.out)


if __name__ == "__main__":
    main()
