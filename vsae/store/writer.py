"""Writing one table as independent shards, so a killed harvest resumes exactly and ranks write in parallel.

The table is laid out before anything is written: arrays are created at the requested token count and
stored token t always lands at row t, so shard s holds rows [s·S, (s+1)·S) whatever process computes it.
A shard is written whole (data, then its chunks' statistics) and only then marked in `committed`, an
array with one single-element chunk per shard: writers of different shards never touch the same object.
Resume skips marked shards and rewrites the rest; rank 0 alone writes `contexts` and, at the end,
trims the arrays to the tokens the text actually gave and marks the table complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import zarr

from vsae.errors import VsaeError
from vsae.store.attrs import finish_problem, layout_problem
from vsae.store.faults import failpoint
from vsae.store.layout import (
    COMPRESSION_LEVEL,
    FORMAT_VERSION,
    STORAGE_DTYPES,
    compressors,
    from_storage,
    quantize_int8,
    to_storage,
    token_dtype,
)

CONTEXT_BLOCK_CHUNKS = 16  # contexts are written in whole-chunk blocks, so a rewrite never reads a torn chunk

log = logging.getLogger("vsae.store")


class AlreadyHarvested(VsaeError):
    """The table is complete; nothing to do unless --force."""

    exit_code = 0


def prepare_table(
    root: zarr.Group,
    path: str,
    *,
    d: int,
    config: dict,
    provenance: dict,
    max_tokens: int,
    chunk_tokens: int,
    shard_chunks: int,
    vocab_size: int,
    ctx_len: int,
    force: bool = False,
    compression_level: int = COMPRESSION_LEVEL,
) -> None:
    """Create the table's arrays (or check that a partial one was started with the same config).
    Run by one process before any writer attaches."""
    exists = path in root and "activations" in root[path]
    if exists and (force or _nothing_committed(root[path])):
        del root[path]
        exists = False
    if not exists:
        geometry = (max_tokens, chunk_tokens, shard_chunks, vocab_size, ctx_len, compression_level)
        _create(root, path, d, config, provenance, *geometry)
        return
    attrs = dict(root[path].attrs)
    if problem := layout_problem(attrs):
        raise VsaeError(f"table {path} {problem}; redo it with --force")
    old = attrs["config"]
    for key in sorted(set(old) | set(config)):
        if old.get(key) != config.get(key):
            raise VsaeError(
                f"table {path} was harvested with {key}={old.get(key)!r}, not {config.get(key)!r}; "
                "use the same settings to resume, or --force to redo it"
            )
    if attrs.get("complete") and (problem := finish_problem(attrs)):
        # marked complete by a vsae that wrote the mark before the statistics, killed in between: every
        # shard is committed, so the resume re-reads them and writes the finish again
        log.warning("table %s is marked complete but %s; finishing it again", path, problem)
        root[path].update_attributes({"complete": False})
    elif attrs.get("complete"):
        raise AlreadyHarvested(
            f"table {path} is already complete ({attrs['n_tokens']:,} tokens); use --force to redo it"
        )
    if "committed" not in root[path]:
        raise VsaeError(
            f"partial table {path} was started by an older vsae and cannot resume; redo it with --force"
        )


def _nothing_committed(group: zarr.Group) -> bool:
    """A partial table killed while being laid out or before its first shard was marked holds nothing
    to keep: it is laid out again. (A table with data but no `committed` array is an older vsae's.)"""
    if "committed" in group:
        return not np.asarray(group["committed"][:]).any()
    return "activations" not in group


def _create(
    root, path, d, config, provenance, max_tokens, chunk_tokens, shard_chunks, vocab_size, ctx_len, level
):
    group = root.require_group(path)
    shard = chunk_tokens * shard_chunks
    n_chunks = math.ceil(max_tokens / chunk_tokens)
    n_shards = math.ceil(max_tokens / shard)
    dtype = config["dtype"]
    tok = token_dtype(vocab_size)

    def array(name, shape, chunks, dtype, shards=None):
        group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            shards=shards,
            dtype=dtype,
            compressors=compressors(level),
            fill_value=0,
            overwrite=True,
        )

    # the attributes (one atomic write), then the commit marks: a kill while the rest is laid out leaves a
    # table that `vsae info` reads as partial and the next harvest lays out again (see _nothing_committed)
    group.update_attributes(
        {
            "format": "vsae-store",
            "format_version": FORMAT_VERSION,
            "complete": False,
            "dtype": dtype,
            "chunk_tokens": chunk_tokens,
            "shard_tokens": shard,
            "config": config,
            "provenance": provenance,
        }
    )
    array("committed", (n_shards,), (1,), "int64")
    array("activations", (max_tokens, d), (chunk_tokens, d), STORAGE_DTYPES[dtype], (shard, d))
    failpoint("layout")
    if dtype == "int8":
        array("scales", (max_tokens,), (chunk_tokens,), "float32", (shard,))
    array("tokens", (max_tokens,), (chunk_tokens,), tok, (shard,))
    array("doc_pos", (max_tokens, 3), (chunk_tokens, 3), "int32", (shard, 3))
    array("contexts", (0, ctx_len), (max(1, chunk_tokens // ctx_len), ctx_len), tok)
    # statistics: one object per shard, so parallel writers never share one
    array("chunk_sum", (n_chunks, d), (shard_chunks, d), "float64")
    array("chunk_sumsq", (n_chunks,), (shard_chunks,), "float64")


def committed_tokens(group: zarr.Group) -> int:
    """Tokens in shards marked as written (a partial table's progress)."""
    return int(np.asarray(group["committed"][:]).sum()) if "committed" in group else 0


class TableWriter:
    """One process's writer of a prepared table: buffers rows per shard and commits whole shards."""

    def __init__(self, root: zarr.Group, path: str, threads: int = 1):
        self.path = path
        self.group = root[path]
        attrs = dict(self.group.attrs)
        self.dtype = attrs["dtype"]
        self.chunk_tokens = attrs["chunk_tokens"]
        self.shard_tokens = attrs["shard_tokens"]
        self.max_tokens, self.d = self.group["activations"].shape
        self.done = np.asarray(self.group["committed"][:]) > 0
        self._open: dict[int, _ShardBuffer] = {}  # shards being filled
        self._spare: list[_ShardBuffer] = []  # written buffers, reused (no fresh 100 MB per shard)
        self._tok_dtype = self.group["tokens"].dtype
        self._context_block = self.group["contexts"].chunks[0] * CONTEXT_BLOCK_CHUNKS
        self._contexts: list[np.ndarray] = []
        self._contexts_at = 0  # first window of the buffered contexts
        # shards are independent objects, so several can be compressed and written at once
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None
        self._pending: list[Future] = []

    def wants(self, shard: int) -> bool:
        """Does this table still need shard `shard`?"""
        return not self.done[shard]

    # ------------------------------------------------------------------ activations
    def add_rows(
        self, first: int, acts: torch.Tensor, tokens: np.ndarray, doc_pos: np.ndarray, owned=None
    ) -> None:
        """Rows `first`, `first + 1`, … split at shard boundaries; kept for the shards this table still
        needs and `owned(shard)` allows (default: all)."""
        rows = first + np.arange(len(tokens))
        for shard in np.unique(rows // self.shard_tokens).tolist():
            if self.wants(shard) and (owned is None or owned(shard)):
                part = rows // self.shard_tokens == shard
                self.add(shard, acts[torch.from_numpy(part)], tokens[part], doc_pos[part])

    def add(self, shard: int, acts: torch.Tensor, tokens: np.ndarray, doc_pos: np.ndarray) -> None:
        """Buffer the next rows of `shard` (fp32 activations, ids, [doc, window, pos]); a full shard is written."""
        if self.dtype == "int8":
            words, scales = quantize_int8(acts)
        else:
            words, scales = to_storage(acts, self.dtype), None
        if shard not in self._open:
            self._open[shard] = self._spare.pop() if self._spare else _ShardBuffer(self)
        buf = self._open[shard]
        buf.append(words, scales, tokens, doc_pos)
        if buf.rows == self._shard_size(shard, self.max_tokens):
            self._start_commit(shard)

    def close(self, n_tokens: int) -> None:
        """The text ended at `n_tokens`: write this process's last, shorter shard if it holds it."""
        for shard in sorted(self._open):
            held = self._open[shard].rows
            if held != self._shard_size(shard, n_tokens):
                raise RuntimeError(f"internal: shard {shard} of {self.path} holds {held} rows at the end")
            self._start_commit(shard)
        self._wait(0)
        if self._pool is not None:
            self._pool.shutdown()

    def _shard_size(self, shard: int, n_tokens: int) -> int:
        return min(self.shard_tokens, n_tokens - shard * self.shard_tokens)

    def _start_commit(self, shard: int) -> None:
        buf = self._open.pop(shard)
        if self._pool is None:
            self._commit(shard, buf)
            return
        self._wait(self._threads - 1)  # bounded: at most `threads` shard buffers in flight
        self._pending.append(self._pool.submit(self._commit, shard, buf))

    def _wait(self, keep: int) -> None:
        """Finish commits until at most `keep` are in flight; a failed commit's error is raised here."""
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def _commit(self, shard: int, buf: _ShardBuffer) -> None:
        start = shard * self.shard_tokens
        n = buf.rows
        # a short last shard is padded (zeros) to the array's end, so every shard write is whole (never read back)
        whole = min(self.max_tokens, start + self.shard_tokens) - start
        buf.zero_from(n, whole)
        failpoint("commit-start")
        self.group["activations"][start : start + whole] = buf.words[:whole]
        if self.dtype == "int8":
            self.group["scales"][start : start + whole] = buf.scales[:whole]
        failpoint("commit-mid")
        self.group["tokens"][start : start + whole] = buf.tokens[:whole]
        self.group["doc_pos"][start : start + whole] = buf.doc_pos[:whole]
        scales = buf.scales[:n] if self.dtype == "int8" else None
        self._commit_stats(start, from_storage(buf.words[:n], self.dtype, scales=scales))
        failpoint("commit-before-progress")
        self.group["committed"][shard] = n
        self.done[shard] = True
        buf.reset()
        self._spare.append(buf)
        failpoint("commit-end")

    def _commit_stats(self, start: int, values: torch.Tensor) -> None:
        """Per-chunk Σx and Σ‖x‖² of the values as stored (what training reads), one stats chunk per shard;
        accumulated in fp64 without an fp64 copy of the shard."""
        parts = torch.split(values, self.chunk_tokens)
        first = start // self.chunk_tokens
        stats_chunk = self.shard_tokens // self.chunk_tokens
        sums = np.zeros((stats_chunk, self.d))
        sumsq = np.zeros(stats_chunk)
        sums[: len(parts)] = torch.stack([p.sum(0, dtype=torch.float64) for p in parts]).numpy()
        sumsq[: len(parts)] = [float(p.square().sum(-1).sum(dtype=torch.float64)) for p in parts]
        last = min(first + stats_chunk, self.group["chunk_sumsq"].shape[0])
        self.group["chunk_sum"][first:last] = sums[: last - first]
        self.group["chunk_sumsq"][first:last] = sumsq[: last - first]

    # ------------------------------------------------------------------ contexts (rank 0 only)
    def add_context(self, ids: np.ndarray) -> None:
        """The next window's full token ids; written in whole-chunk blocks (rewritten identically on resume)."""
        self._contexts.append(ids)
        if len(self._contexts) == self._context_block:
            self._write_contexts()

    def _write_contexts(self) -> None:
        if not self._contexts:
            return
        ctx = self.group["contexts"]
        stop = self._contexts_at + len(self._contexts)
        if ctx.shape[0] < stop:
            ctx.resize((stop, ctx.shape[1]))
        ctx[self._contexts_at : stop] = np.stack(self._contexts)
        self._contexts_at, self._contexts = stop, []

    # ------------------------------------------------------------------ finishing (rank 0 only)
    def shards_needed(self, n_tokens: int) -> int:
        return math.ceil(n_tokens / self.shard_tokens)

    def committed_count(self, n_tokens: int) -> int:
        """Shards of the first `n_tokens` rows that are marked as written (by any process)."""
        marks = np.asarray(self.group["committed"][: self.shards_needed(n_tokens)])
        return int((marks > 0).sum())

    def finish(self, n_tokens: int, heldout_fraction: float) -> dict:
        """Check every shard is written, trim the arrays to `n_tokens`, store the statistics, mark complete."""
        if n_tokens == 0:
            raise VsaeError(f"no tokens were harvested into {self.path}: the dataset produced no text")
        self._write_contexts()
        ctx = self.group["contexts"]
        ctx.resize((self._contexts_at, ctx.shape[1]))
        n_shards = math.ceil(n_tokens / self.shard_tokens)
        committed = np.asarray(self.group["committed"][:n_shards])
        missing = [s for s in range(n_shards) if committed[s] != self._shard_size(s, n_tokens)]
        if missing:
            raise VsaeError(
                f"table {self.path}: shards {missing[:5]} were not written; re-run the same command to finish it"
            )
        n_chunks = math.ceil(n_tokens / self.chunk_tokens)
        for name in ("activations", "scales", "tokens", "doc_pos"):
            if name in self.group:
                arr = self.group[name]
                arr.resize((n_tokens, *arr.shape[1:]))
        self.group["chunk_sum"].resize((n_chunks, self.d))
        self.group["chunk_sumsq"].resize((n_chunks,))
        self.group["committed"].resize((n_shards,))
        failpoint("finish")
        heldout = min(n_chunks - 1, math.ceil(heldout_fraction * n_chunks)) if heldout_fraction > 0 else 0
        if heldout and heldout / n_chunks > 2 * heldout_fraction:  # whole chunks: a short table rounds up
            log.warning(
                "%s: held out %d of %d chunks (%.0f%% of the tokens, asked %.0f%%); a smaller --chunk-tokens "
                "gives a finer split",
                self.path,
                heldout,
                n_chunks,
                100 * heldout / n_chunks,
                100 * heldout_fraction,
            )
        sums = np.asarray(self.group["chunk_sum"][: n_chunks - heldout])
        sumsq = np.asarray(self.group["chunk_sumsq"][: n_chunks - heldout])
        n_train = min(n_tokens, (n_chunks - heldout) * self.chunk_tokens)
        stats = {
            "mean_sq_norm": float(sumsq.sum()) / n_train,
            "mean_norm_sq_of_mean": float(np.square(sums.sum(0) / n_train).sum()),
        }
        config = self.group.attrs["config"]
        fingerprint = hashlib.sha256(
            json.dumps([config, n_tokens, float(sumsq.sum())], sort_keys=True).encode()
        ).hexdigest()[:16]
        failpoint("finish")
        # two atomic writes, the completion mark alone and last: a kill between them leaves a partial
        # table whose every shard is committed, which the next harvest finishes without a forward pass
        # (zarr's attrs.update would rewrite zarr.json once per key, `complete` first)
        self.group.update_attributes(
            {
                "n_tokens": n_tokens,
                "n_windows": self._contexts_at,
                "n_train_chunks": n_chunks - heldout,
                "heldout_fraction": heldout_fraction,
                "heldout_tokens": n_tokens - n_train,
                "stats": stats,
                "fingerprint": fingerprint,
            }
        )
        failpoint("finish")
        self.group.update_attributes({"complete": True})
        return {"tokens": n_tokens, "heldout_tokens": n_tokens - n_train, **stats}


class _ShardBuffer:
    """One shard's rows in their stored form, filled in place as batches arrive."""

    def __init__(self, writer: TableWriter):
        n, d = writer.shard_tokens, writer.d
        self.words = np.empty((n, d), dtype=STORAGE_DTYPES[writer.dtype])
        self.scales = np.empty(n, dtype=np.float32)
        self.tokens = np.empty(n, dtype=writer._tok_dtype)
        self.doc_pos = np.empty((n, 3), dtype=np.int32)
        self.rows = 0

    def append(self, words, scales, tokens, doc_pos) -> None:
        i, j = self.rows, self.rows + len(tokens)
        self.words[i:j] = words
        if scales is not None:
            self.scales[i:j] = scales
        self.tokens[i:j] = tokens
        self.doc_pos[i:j] = doc_pos
        self.rows = j

    def zero_from(self, start: int, stop: int) -> None:
        for arr in (self.words, self.scales, self.tokens, self.doc_pos):
            arr[start:stop] = 0

    def reset(self) -> None:
        self.rows = 0
