"""Per-row top-(k+1) selection: vsae's CPU kernel (vsae/archs/cpu_topk.py) against torch.topk, alternating.

python bench/select_kernel.py --threads 1 [--n 4096 --f 9216 --k 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from vsae.archs.cpu_topk import row_topk


def best_of(fn, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--f", type=int, default=9216)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(args.n, args.d, generator=g) @ torch.randn(args.d, args.f, generator=g) * 0.05
    kk = args.k + 1
    assert torch.equal(row_topk(scores, kk)[0], torch.topk(scores, kk, dim=-1).values)
    for _ in range(2):  # alternate
        t_torch = best_of(lambda: torch.topk(scores, kk, dim=-1))
        t_kernel = best_of(lambda: row_topk(scores, kk))
        print(f"torch.topk {t_torch:.1f} ms  kernel {t_kernel:.1f} ms  ratio {t_torch / t_kernel:.2f}")


if __name__ == "__main__":
    main()
