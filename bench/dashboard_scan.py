"""Dashboard scan throughput ÷ training throughput on the same checkpoint and table (issue: the scan must run
at least at training speed). Alternating rounds; each contender reads the same store.

    python bench/dashboard_scan.py --store <store> --checkpoint <topk checkpoint> [--tokens 32768] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import machine

from vsae.archs.checkpoint import load_sae, read_cfg
from vsae.dashboard.scan import scan
from vsae.evaluate.core import checkpoint_table
from vsae.train.config import TrainConfig
from vsae.train.loop import train
from vsae.train.run import SAESpec


def scan_rate(path: Path, tokens: int) -> float:
    sae = load_sae(path)
    table = checkpoint_table(path, sae, None)
    t = time.perf_counter()
    scan(sae, table, 0, tokens, show=False)
    return tokens / (time.perf_counter() - t)


def train_rate(store: str, path: Path, tokens: int) -> float:
    cfg = read_cfg(path)["model"]
    spec = SAESpec(cfg["architecture"], d_sae=cfg["d_sae"], overrides={"k": cfg["k"]} if cfg.get("k") else {})
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        train(store, [spec], TrainConfig(batch_size=4096, tokens=tokens), out, show_progress=False)
        return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(machine())
    ratios = []
    for r in range(args.rounds):
        s = scan_rate(args.checkpoint, args.tokens)
        t = train_rate(args.store, args.checkpoint, args.tokens)
        ratios.append(s / t)
        print(f"round {r}: scan {s:,.0f} tok/s, train {t:,.0f} tok/s, scan ÷ train {s / t:.2f}")
    print(f"median scan ÷ train {sorted(ratios)[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
