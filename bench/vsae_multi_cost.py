"""vsae_multi (equicorrelated prior, closed form) step cost ÷ vsae_iso at the same F.

python bench/vsae_multi_cost.py [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from common import best_of, machine

from vsae.archs.registry import build_config
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import make_generator


def step_time(arch: str, d_sae: int, batch: int, device: str) -> float:
    model = SAE(build_config(arch, 576, d_sae, {})).to(device)
    x = torch.randn(batch, 576, device=device)
    ctx = StepContext(step=5, total_steps=100, generator=make_generator(0, 1, device=device))

    def run():
        model.zero_grad(set_to_none=True)
        model.loss_terms(x, ctx)["loss"].backward()

    return best_of(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="4096,16384,65536")
    args = ap.parse_args()
    print(f"machine: {machine()}; batch {args.batch}, d=576")
    for f in map(int, args.sizes.split(",")):
        iso = step_time("vsae_iso", f, args.batch, args.device)
        multi = step_time("vsae_multi", f, args.batch, args.device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        print(
            f"F={f:6d}: vsae_iso {iso:.3f}s  vsae_multi {multi:.3f}s  ratio {multi / iso:.2f}  (peak GPU {peak:.1f} GiB)"
        )


if __name__ == "__main__":
    main()
