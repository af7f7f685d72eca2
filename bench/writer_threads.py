"""Shard commit throughput of the table writer with 1, 2, 4 threads (compression + checksums + writes),
on real activations tiled to `--shards` shards.

python bench/writer_threads.py --store .gpu/acts [--shards 8] [--threads 1,2,4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from common import machine

from vsae.store.layout import open_root
from vsae.store.table import open_table
from vsae.store.writer import TableWriter, prepare_table


def commit_rate(acts: torch.Tensor, shards: int, threads: int, shard_tokens: int = 65_536) -> float:
    n, d = shards * shard_tokens, acts.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = open_root(tmp, "a")
        prepare_table(
            root,
            "m/t.0",
            d=d,
            config={"dtype": "bfloat16"},
            provenance={},
            max_tokens=n,
            chunk_tokens=4096,
            shard_chunks=shard_tokens // 4096,
            vocab_size=50_000,
            ctx_len=128,
        )
        writer = TableWriter(root, "m/t.0", threads)
        ids = np.zeros(4096, dtype=np.int64)
        pos = np.zeros((4096, 3), dtype=np.int32)
        t = time.perf_counter()
        for start in range(0, n, 4096):
            block = acts[start % len(acts) : start % len(acts) + 4096]
            writer.add(start // shard_tokens, block, ids[: len(block)], pos[: len(block)])
        writer.close(n)
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--threads", default="1,2,4")
    args = ap.parse_args()
    table = open_table(args.store)
    acts = table.read(0, min(table.n_tokens, 65_536) // 4096 * 4096)
    print(f"machine: {machine()}; table {table.path} (d={table.d}), {args.shards} shards of 65,536 tokens")
    base = None
    for threads in map(int, args.threads.split(",")):
        rate = commit_rate(acts, args.shards, threads)
        base = base or rate
        print(f"threads {threads}: {rate:,.0f} tok/s ({rate / base:.2f}× one thread)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
