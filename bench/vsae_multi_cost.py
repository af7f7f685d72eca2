"""vsae_multi (equicorrelated prior, closed form) step cost ÷ vsae_iso at the same F.

python bench/vsae_multi_cost.py [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from common import loss_step_time, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="4096,16384,65536")
    args = ap.parse_args()
    print(f"machine: {machine()}; batch {args.batch}, d=576")
    for f in map(int, args.sizes.split(",")):
        iso = loss_step_time("vsae_iso", 576, f, args.batch, args.device)
        multi = loss_step_time("vsae_multi", 576, f, args.batch, args.device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        print(
            f"F={f:6d}: vsae_iso {iso:.3f}s  vsae_multi {multi:.3f}s  ratio {multi / iso:.2f}  (peak GPU {peak:.1f} GiB)"
        )


if __name__ == "__main__":
    main()
