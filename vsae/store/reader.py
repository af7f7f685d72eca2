"""Shuffled training batches: a seeded chunk permutation per epoch, tokens mixed across a buffer of
chunks, chunks decoded in parallel threads and the next buffer prefetched while the current one trains.
On a GPU the decoded buffer goes up once and the token shuffle runs there (the same permutation), so the
CPU only decodes.

The batch sequence is a pure function of (seed, position), so resuming only needs the position.
"""

from __future__ import annotations

import bisect
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from vsae.errors import VsaeError
from vsae.store.table import Table


class ShuffledBatches:
    """Infinite iterator of [batch_size, d] batches in the stored precision (callers cast on the device),
    on `device` when it is a GPU."""

    def __init__(
        self,
        table: Table,
        batch_size: int,
        seed: int = 0,
        buffer_chunks: int = 8,
        threads: int = min(8, os.cpu_count() or 1),
        rank: int = 0,
        world: int = 1,
        device: str = "cpu",
    ):
        self.table = table
        self.chunks = [c for c in range(table.n_train_chunks) if c % world == rank]  # disjoint slice per rank
        if not self.chunks:
            raise VsaeError(
                f"rank {rank} has no training chunk ({table.n_train_chunks} chunks for {world} ranks); "
                "harvest more tokens or use fewer ranks"
            )
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.buffer_chunks = max(1, buffer_chunks)
        self.position = 0  # tokens consumed since the start of epoch 0
        self.n = sum(self._chunk_len(c) for c in self.chunks)
        self._pool = ThreadPoolExecutor(max_workers=threads)  # chunk decodes (codecs release the GIL)
        self._groups_pool = ThreadPoolExecutor(max_workers=2)  # current + prefetched buffer; never nested
        self._cache: dict[tuple[int, int], object] = {}

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

    def _groups(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Chunk groups of this epoch (seeded permutation) and their cumulative token ends."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.chunks[i] for i in rng.permutation(len(self.chunks))]
        groups = [order[i : i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)]
        ends, total = [], 0
        for g in groups:
            total += sum(self._chunk_len(c) for c in g)
            ends.append(total)
        return groups, ends

    def _chunk_len(self, c: int) -> int:
        start, stop = self.table.chunk_bounds(c)
        return min(stop, self.table.n_train) - start

    def _load_group(self, epoch: int, g: int, chunks: list[int]) -> torch.Tensor:
        def read(c):
            start, _ = self.table.chunk_bounds(c)
            return self.table.read_stored(start, start + self._chunk_len(c))

        data = torch.cat(list(self._pool.map(read, chunks)))
        perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, g, 1]).permutation(len(data)))
        if self.device.type == "cuda":  # one pinned copy up, the token shuffle on the GPU
            data = data.pin_memory().to(self.device, non_blocking=True)
            perm = perm.to(self.device, non_blocking=True)
        return data[perm]

    def _group(self, epoch: int, g: int, groups) -> torch.Tensor:
        key = (epoch, g)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= key}
            self._cache[key] = self._groups_pool.submit(self._load_group, epoch, g, groups[g])
        nxt = (epoch, g + 1) if g + 1 < len(groups) else (epoch + 1, 0)
        if nxt not in self._cache:
            next_groups = groups if nxt[0] == epoch else self._groups(nxt[0])[0]
            self._cache[nxt] = self._groups_pool.submit(self._load_group, nxt[0], nxt[1], next_groups[nxt[1]])
        return self._cache[key].result()

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            epoch, offset = divmod(self.position, self.n)
            groups, ends = self._groups(epoch)
            g = bisect.bisect_right(ends, offset)
            start = ends[g - 1] if g else 0
            data = self._group(epoch, g, groups)
            take = min(need, ends[g] - offset)
            parts.append(data[offset - start : offset - start + take])
            self.position += take
            need -= take
        return torch.cat(parts)

    def close(self) -> None:
        self._groups_pool.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
