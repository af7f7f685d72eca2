"""Lossy 8-bit store: bytes per token vs fp32, and the held-out FVE of a topk SAE trained on it vs one trained
on the 16-bit store (both evaluated on the same 16-bit held-out tokens).

    python bench/int8_fve.py --model smollm2-135m --layer 3 --tokens 50000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import fsspec
from common import machine

from vsae.evaluate.core import EvalConfig, evaluate
from vsae.harvest.loop import HarvestConfig, harvest
from vsae.harvest.models import load_model
from vsae.store.table import open_table
from vsae.train.config import TrainConfig
from vsae.train.loop import train
from vsae.train.run import SAESpec


def activation_bytes(store: str) -> float:
    table = open_table(store)
    fs = fsspec.filesystem("file")
    base = Path(store) / table.path
    size = fs.du(str(base / "activations"), total=True)
    if (base / "scales").exists():
        size += fs.du(str(base / "scales"), total=True)
    return size / table.n_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for dtype in ("bfloat16", "int8"):
            store = f"{tmp}/{dtype}"
            cfg = HarvestConfig(
                model=args.model,
                layers=[args.layer],
                tokens=args.tokens,
                store=store,
                dtype=dtype,
                chunk_tokens=2048,
                heldout_fraction=0.1,
            )
            harvest(cfg, show_progress=False, loaded=loaded)
            run = train(
                store,
                [SAESpec("topk", expansion=2)],
                TrainConfig(batch_size=2048, steps=args.steps),
                f"{tmp}/ck-{dtype}",
                show_progress=False,
            )[0]
            ev = evaluate(run, EvalConfig(store=f"{tmp}/bfloat16", ce=False))
            results[dtype] = (activation_bytes(store), ev["fve"])
    fp32 = loaded.model.config.hidden_size * 4
    print(
        f"machine: {machine()}; {args.model} layer {args.layer}, {args.tokens:,} tokens, topk F=2d k=32, {args.steps} steps"
    )
    for dtype, (size, fve) in results.items():
        print(f"{dtype:9s} {size:7.1f} B/token (fp32 {fp32}: {fp32 / size:.2f}×)  held-out FVE {fve:.4f}")
    print(
        f"FVE difference int8 − bf16: {results['int8'][1] - results['bfloat16'][1]:+.4f} (goal |Δ| ≤ 0.005)"
    )


if __name__ == "__main__":
    main()
