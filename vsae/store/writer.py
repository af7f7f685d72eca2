"""Writing one table: shard-sized commits with a resume cursor, so a killed harvest continues exactly.

A commit writes one shard of every array and only then advances `progress` in the table's attributes;
on resume the harvest restarts at the recorded (window, offset) cursor and overwrites anything a killed
process left beyond the last commit.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
import zarr

from vsae.errors import VsaeError
from vsae.store.faults import failpoint
from vsae.store.layout import (
    FORMAT_VERSION,
    STORAGE_DTYPES,
    compressors,
    from_storage,
    quantize_int8,
    to_storage,
    token_dtype,
)


class AlreadyHarvested(VsaeError):
    """The table is complete; nothing to do unless --force."""

    exit_code = 0


class TableWriter:
    """Appends activations, token ids and positions to one table, a shard at a time."""

    def __init__(
        self,
        root: zarr.Group,
        path: str,
        *,
        d: int,
        config: dict,
        provenance: dict,
        chunk_tokens: int,
        shard_chunks: int,
        vocab_size: int,
        ctx_len: int,
        force: bool = False,
    ):
        self.path = path
        self.d = d
        self.dtype = config["dtype"]
        self.config = config
        self.shard_tokens = chunk_tokens * shard_chunks
        exists = path in root and "activations" in root[path]
        if exists and force:
            del root[path]
            exists = False
        if exists:
            self.group = root[path]
            self._check_same_config(dict(self.group.attrs))
            if self.group.attrs.get("complete"):
                raise AlreadyHarvested(
                    f"table {path} is already complete ({self.group['activations'].shape[0]:,} tokens); use --force to redo it"
                )
        else:
            self.group = self._create(root, path, chunk_tokens, vocab_size, ctx_len, provenance)
        self.progress = dict(self.group.attrs["progress"])
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._contexts: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ creation and resume
    def _create(self, root, path, chunk_tokens, vocab_size, ctx_len, provenance) -> zarr.Group:
        group = root.require_group(path)
        shard = self.shard_tokens
        group.create_array(
            "activations",
            shape=(0, self.d),
            chunks=(chunk_tokens, self.d),
            shards=(shard, self.d),
            dtype=STORAGE_DTYPES[self.dtype],
            compressors=compressors(),
            fill_value=0,
            overwrite=True,
        )
        if self.dtype == "int8":
            group.create_array(
                "scales",
                shape=(0,),
                chunks=(chunk_tokens,),
                shards=(shard,),
                dtype="float32",
                compressors=compressors(),
                fill_value=0.0,
                overwrite=True,
            )
        tok = token_dtype(vocab_size)
        group.create_array(
            "tokens",
            shape=(0,),
            chunks=(chunk_tokens,),
            shards=(shard,),
            dtype=tok,
            compressors=compressors(),
            fill_value=0,
            overwrite=True,
        )
        group.create_array(
            "doc_pos",
            shape=(0, 3),
            chunks=(chunk_tokens, 3),
            shards=(shard, 3),
            dtype="int32",
            compressors=compressors(),
            fill_value=0,
            overwrite=True,
        )
        win_chunk = max(1, chunk_tokens // ctx_len)
        group.create_array(
            "contexts",
            shape=(0, ctx_len),
            chunks=(win_chunk, ctx_len),
            dtype=tok,
            compressors=compressors(),
            fill_value=0,
            overwrite=True,
        )
        group.create_array(
            "chunk_sum",
            shape=(0, self.d),
            chunks=(1024, self.d),
            dtype="float64",
            compressors=compressors(),
            fill_value=0.0,
            overwrite=True,
        )
        group.create_array(
            "chunk_sumsq",
            shape=(0,),
            chunks=(1024,),
            dtype="float64",
            compressors=compressors(),
            fill_value=0.0,
            overwrite=True,
        )
        group.attrs.update(
            {
                "format": "vsae-store",
                "format_version": FORMAT_VERSION,
                "complete": False,
                "dtype": self.dtype,
                "chunk_tokens": chunk_tokens,
                "shard_tokens": self.shard_tokens,
                "config": self.config,
                "provenance": provenance,
                "progress": {"tokens": 0, "windows": 0, "next_window": 0, "window_offset": 0},
            }
        )
        return group

    def _check_same_config(self, attrs: dict) -> None:
        old = attrs.get("config", {})
        for key in sorted(set(old) | set(self.config)):
            if old.get(key) != self.config.get(key):
                raise VsaeError(
                    f"table {self.path} was harvested with {key}={old.get(key)!r}, not {self.config.get(key)!r}; "
                    "use the same settings to resume, or --force to redo it"
                )

    @property
    def resume_cursor(self) -> tuple[int, int]:
        """(window index, stored tokens of that window already committed) to restart the harvest from."""
        return self.progress["next_window"], self.progress["window_offset"]

    # ------------------------------------------------------------------ appending
    def add_window(self, window: int, context: np.ndarray) -> None:
        """Record a window's full token ids (written with the commit that completes it)."""
        self._contexts[window] = context

    def add(self, acts: torch.Tensor, tokens: np.ndarray, doc_pos: np.ndarray) -> None:
        """Buffer stored tokens (fp32 activations, ids, [doc, window, pos]); commit full shards."""
        if self.dtype == "int8":
            words, scales = quantize_int8(acts)
        else:
            words, scales = to_storage(acts, self.dtype), np.zeros(len(tokens), dtype=np.float32)
        self._buf.append((words, scales, tokens, doc_pos))
        self._buffered += len(tokens)
        while self._buffered >= self.shard_tokens:
            self._commit(self.shard_tokens)

    def finish(self, heldout_fraction: float) -> dict:
        """Commit what is buffered, choose the held-out tail, and mark the table complete."""
        if self._buffered:
            self._commit(self._buffered)
        n = self.progress["tokens"]
        if n == 0:
            raise VsaeError(f"no tokens were harvested into {self.path}: the dataset produced no text")
        chunk = self.group.attrs["chunk_tokens"]
        n_chunks = math.ceil(n / chunk)
        heldout = min(n_chunks - 1, math.ceil(heldout_fraction * n_chunks)) if heldout_fraction > 0 else 0
        sums = np.asarray(self.group["chunk_sum"][: n_chunks - heldout])
        sumsq = np.asarray(self.group["chunk_sumsq"][: n_chunks - heldout])
        n_train = min(n, (n_chunks - heldout) * chunk)
        stats = {
            "mean_sq_norm": float(sumsq.sum()) / n_train,
            "mean_norm_sq_of_mean": float(np.square(sums.sum(0) / n_train).sum()),
        }
        fingerprint = hashlib.sha256(
            json.dumps([self.config, n, float(sumsq.sum())], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.group.attrs.update(
            {
                "complete": True,
                "n_tokens": n,
                "n_train_chunks": n_chunks - heldout,
                "heldout_fraction": heldout_fraction,
                "heldout_tokens": n - n_train,
                "stats": stats,
                "fingerprint": fingerprint,
            }
        )
        return {"tokens": n, "heldout_tokens": n - n_train, **stats}

    def _commit(self, count: int) -> None:
        words, scales, toks, pos = (np.concatenate(parts) for parts in zip(*self._buf, strict=True))
        rest = (words[count:], scales[count:], toks[count:], pos[count:])
        words, scales, toks, pos = words[:count], scales[:count], toks[:count], pos[:count]
        start = self.progress["tokens"]
        stop = start + count
        failpoint("commit-start")
        acts = self.group["activations"]
        acts.resize((stop, self.d))
        acts[start:stop] = words
        if self.dtype == "int8":
            self.group["scales"].resize((stop,))
            self.group["scales"][start:stop] = scales
        failpoint("commit-mid")
        self.group["tokens"].resize((stop,))
        self.group["tokens"][start:stop] = toks
        self.group["doc_pos"].resize((stop, 3))
        self.group["doc_pos"][start:stop] = pos
        self._commit_stats(start, from_storage(words, self.dtype, scales=scales))
        if len(rest[2]):
            next_window = int(rest[3][0, 1])
            offset = int(np.sum(pos[:, 1] == next_window))
        else:
            next_window, offset = int(pos[-1, 1]) + 1, 0
        self._commit_contexts(next_window)
        self._buf = [rest] if len(rest[2]) else []
        self._buffered = len(rest[2])
        windows = self.group["contexts"].shape[0]
        self.progress = {
            "tokens": stop,
            "windows": windows,
            "next_window": next_window,
            "window_offset": offset,
        }
        failpoint("commit-before-progress")
        self.group.attrs["progress"] = self.progress
        failpoint("commit-end")

    def _commit_stats(self, start: int, values: torch.Tensor) -> None:
        """Per-chunk Σx and Σ‖x‖² of the values as stored (what training reads); commits are chunk-aligned."""
        chunk = self.group.attrs["chunk_tokens"]
        x = values.double()
        parts = torch.split(x, chunk)
        first = start // chunk
        last = first + len(parts)
        self.group["chunk_sum"].resize((last, self.d))
        self.group["chunk_sum"][first:last] = torch.stack([p.sum(0) for p in parts]).numpy()
        self.group["chunk_sumsq"].resize((last,))
        self.group["chunk_sumsq"][first:last] = np.asarray([float(p.square().sum()) for p in parts])

    def _commit_contexts(self, next_window: int) -> None:
        have = self.group["contexts"].shape[0]
        if next_window <= have:
            return
        missing = [w for w in range(have, next_window) if w not in self._contexts]
        if missing:
            raise RuntimeError(f"internal: contexts of windows {missing[:3]} were not recorded")
        rows = np.stack([self._contexts.pop(w) for w in range(have, next_window)])
        ctx = self.group["contexts"]
        ctx.resize((next_window, ctx.shape[1]))
        ctx[have:next_window] = rows
