"""Top-k training step (forward + backward) with the sparse paths vs forced dense, d = 576, k = 32.

python bench/topk_sparse.py [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from common import best_of, machine

import vsae.archs.sparse as sparse
from vsae.archs.registry import build_config
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import make_generator


def step_time(arch: str, d_sae: int, batch: int, device: str, dense: bool) -> float:
    limit = sparse.DENSITY_LIMIT
    sparse.DENSITY_LIMIT = -1.0 if dense else limit
    try:
        model = SAE(build_config(arch, 576, d_sae, {"k": 32} if "topk" in arch else {})).to(device)
        x = torch.randn(batch, 576, device=device)
        ctx = StepContext(
            step=5,
            total_steps=100,
            dead=torch.zeros(d_sae, dtype=torch.bool, device=device),
            generator=make_generator(0, 1, device=device),
        )

        def run():
            model.zero_grad(set_to_none=True)
            model.loss_terms(x, ctx)["loss"].backward()

        return best_of(run)
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
