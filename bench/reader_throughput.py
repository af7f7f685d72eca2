"""Reader tokens/s ÷ what a 16×-expansion topk SAE consumes per second on the same machine.

python bench/reader_throughput.py --store demo-out/acts [--batch 4096] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import best_of, machine

from vsae.archs.registry import build_config
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import make_generator
from vsae.store.reader import ShuffledBatches
from vsae.store.table import open_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="demo-out/acts")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    table = open_table(args.store)
    reader = ShuffledBatches(table, args.batch, seed=0, device=args.device)
    next(reader)
    t = time.perf_counter()
    for _ in range(args.batches):
        next(reader).to(args.device, non_blocking=True).float()
    read_rate = args.batches * args.batch / (time.perf_counter() - t)
    reader.close()
    d = table.d
    model = SAE(build_config("topk", d, 16 * d, {"k": 32})).to(args.device)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(args.batch, d, device=args.device)
    ctx = StepContext(
        step=5,
        total_steps=100,
        dead=torch.zeros(16 * d, dtype=torch.bool, device=args.device),
        generator=make_generator(0, 1, device=args.device),
    )

    def step():
        opt.zero_grad()
        model.loss_terms(x, ctx).loss.backward()
        opt.step()

    train_rate = args.batch / best_of(step)
    print(f"machine: {machine()}; table {table.path} ({table.dtype}, d={d}), batch {args.batch}")
    print(
        f"reader: {read_rate:,.0f} tok/s; topk F={16 * d} k=32 trainer: {train_rate:,.0f} tok/s; ratio {read_rate / train_rate:.1f}×"
    )


if __name__ == "__main__":
    main()
