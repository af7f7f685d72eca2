"""Top-k training step (forward + backward) with the sparse paths vs forced dense, d = 576, k = 32.

python bench/topk_sparse.py [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse

from common import loss_step_time, machine

import vsae.archs.sparse as sparse


def step_time(arch: str, d_sae: int, batch: int, device: str, dense: bool) -> float:
    limit = sparse.DENSITY_LIMIT
    sparse.DENSITY_LIMIT = -1.0 if dense else limit
    try:
        return loss_step_time(arch, 576, d_sae, batch, device, {"k": 32})
    finally:
        sparse.DENSITY_LIMIT = limit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="4096,16384,65536")
    args = ap.parse_args()
    print(f"machine: {machine()}; batch {args.batch}, d=576, k=32")
    print(f"{'arch':10s} {'F':>6s} {'k/F':>7s} {'dense s':>8s} {'sparse s':>9s} {'speed-up':>8s}")
    for arch in ("topk", "batchtopk"):
        for f in map(int, args.sizes.split(",")):
            dense = step_time(arch, f, args.batch, args.device, dense=True)
            fast = step_time(arch, f, args.batch, args.device, dense=False)
            print(f"{arch:10s} {f:6d} {32 / f:7.4f} {dense:8.3f} {fast:9.3f} {dense / fast:7.2f}×")


if __name__ == "__main__":
    main()
