"""The harvest: text → packed windows → one nnsight forward per batch (stopped after the deepest site)
→ one table per site, written a shard at a time and resumable from the last commit.

Batches are fixed runs of `batch_size` windows from the start of the text, so a window is always
computed in the same company whether the harvest is resumed, or split over torchrun ranks (rank r
computes shards s ≡ r mod world size; a batch that straddles two ranks' shards is computed by both)."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import vsae
from vsae.distributed import setup as setup_world
from vsae.errors import VsaeError
from vsae.harvest.models import LoadedModel, load_model
from vsae.harvest.sites import Site, envoy_at, resolve_site
from vsae.harvest.text import TextSource, Window, documents, pack
from vsae.progress import Progress
from vsae.store.layout import COMPRESSION_LEVEL, STORAGE_DTYPES, open_root, table_path
from vsae.store.lock import TableLock
from vsae.store.writer import AlreadyHarvested, TableWriter, committed_tokens, prepare_table
from vsae.validation import check_types


@dataclass
class HarvestConfig:
    """Options of `vsae harvest`."""

    model: str = "smollm2-135m"
    """Model: an alias (pythia-70m, smollm2-135m, ...), a hub id or a local directory."""
    layers: list[int] = field(default_factory=lambda: [1])
    """Layers to harvest (several in one forward pass)."""
    sites: list[str] = field(default_factory=lambda: ["resid_post"])
    """Sites: resid_pre, attn_out, mlp_out, resid_post."""
    dataset: str = "shakespeare"
    """Text: shakespeare or pydoc (offline), a local .txt/.jsonl/.parquet file or folder, or a datasets id."""
    split: str = "train"
    """Split of a datasets id."""
    dataset_revision: str | None = None
    """Revision of a datasets id."""
    text_column: str = "text"
    """Column holding the text (jsonl, parquet, datasets)."""
    tokens: int = 200_000
    """Tokens to store (special tokens excluded)."""
    ctx_len: int = 128
    """Context window length in tokens, BOS included."""
    batch_size: int = 16
    """Windows per forward pass."""
    store: str = "./acts"
    """Store root: a local path or an fsspec URL."""
    dtype: str = "bfloat16"
    """Stored dtype: bfloat16 (default), float16 (overflow checked), float32, or int8 (lossy, per-token scale)."""
    chunk_tokens: int = 4096
    """Tokens per Zarr chunk (the unit the reader shuffles)."""
    shard_chunks: int = 16
    """Chunks per shard file (the unit a harvest commits and resumes from)."""
    compression_level: int = COMPRESSION_LEVEL
    """zstd level inside Blosc (1 fastest … 9 smallest; 5 is 10× slower for 10 % fewer bytes)."""
    writer_threads: int = 0
    """Shards compressed and written at once per table (0: a quarter of the cores, 1 to 4)."""
    heldout_fraction: float = 0.05
    """Fraction of chunks at the end kept out of training for evaluation."""
    seed: int = 0
    """Seed of the document shuffle."""
    exclude_special: bool = True
    """Leave BOS/EOS/pad positions out of the store."""
    force: bool = False
    """Redo a complete table."""
    revision: str | None = None
    """Model revision on the hub."""
    device: str = "cpu"
    """Device of the forward pass."""

    def validate(self) -> None:
        """One line naming the first bad option, before a model is loaded or anything is written."""
        check_types(self)
        if not self.layers or not self.sites:
            raise VsaeError("give at least one --layer and one --site (e.g. --layer 1 --site resid_post)")
        for name in ("tokens", "batch_size", "chunk_tokens", "shard_chunks"):
            if getattr(self, name) < 1:
                raise VsaeError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.ctx_len < 2:
            raise VsaeError(f"--ctx-len must be at least 2 (a BOS and one token; got {self.ctx_len})")
        if not 0 <= self.heldout_fraction < 1:
            raise VsaeError(f"--heldout-fraction must lie in [0, 1) (got {self.heldout_fraction})")
        if self.dtype not in STORAGE_DTYPES:
            raise VsaeError(f"unknown --dtype {self.dtype!r}; valid: {', '.join(STORAGE_DTYPES)}")
        if self.writer_threads < 0:
            raise VsaeError(f"--writer-threads must be 0 (automatic) or positive (got {self.writer_threads})")
        if not 0 <= self.compression_level <= 9:
            raise VsaeError(f"--compression-level must lie in 0..9 (got {self.compression_level})")


def harvest(cfg: HarvestConfig, show_progress: bool = True, loaded: LoadedModel | None = None) -> dict:
    """Harvest every (layer, site) of `cfg` into its table; returns a summary per table.
    Under torchrun each rank computes its own shards of the same tables. `loaded` reuses a loaded model."""
    cfg.validate()
    world = setup_world(cfg.device)
    loaded = loaded or load_model(cfg.model, revision=cfg.revision)
    model = loaded.model.to(world.device(cfg.device))
    sites = sorted(
        (resolve_site(model, s, layer) for layer in cfg.layers for s in cfg.sites), key=lambda s: s.order
    )
    if cfg.ctx_len > getattr(model.config, "max_position_embeddings", cfg.ctx_len):
        raise VsaeError(
            f"--ctx-len {cfg.ctx_len} exceeds the model's {model.config.max_position_embeddings} positions"
        )
    src = TextSource(cfg.dataset, cfg.split, cfg.dataset_revision, cfg.text_column, cfg.seed)
    windows = pack(documents(src), loaded.tokenizer, cfg.ctx_len, cfg.exclude_special)
    first = next(windows, None)
    if first is None:
        raise VsaeError(
            f"dataset {cfg.dataset} yields no complete {cfg.ctx_len}-token window; give more text or a smaller --ctx-len"
        )
    with contextlib.ExitStack() as locks:
        paths, skipped = world.on_main(lambda: _lock_and_prepare(cfg, loaded, sites, locks))
        if not paths:
            return {"skipped": skipped}
        root = open_root(cfg.store, "a")
        threads = cfg.writer_threads or max(1, min(4, (os.cpu_count() or 1) // 4))
        writers = [(s, TableWriter(root, p, threads)) for s, p in zip(sites, paths, strict=True) if p]
        try:
            n_tokens = _run(
                cfg, loaded, model, itertools.chain([first], windows), writers, world, show_progress
            )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                w = writers[0][1]
                raise VsaeError(
                    f"disk full while writing {w.path} ({committed_tokens(w.group):,} tokens committed); free space "
                    "and re-run the same command to resume"
                ) from exc
            raise
        if not world.is_main:
            return {"tables": {}, "skipped": skipped}  # rank 0 finalises once it sees this rank's shards
        if world.active:
            _wait_for_shards([w for _, w in writers], n_tokens)
        summary = {w.path: w.finish(n_tokens, cfg.heldout_fraction) for _, w in writers}
    return {"tables": summary, "skipped": skipped}


def _wait_for_shards(writers, n_tokens: int, stall_s: float = 3600.0) -> None:
    """Rank 0 polls the commit marks (no collective, so no collective timeout however long the other
    ranks take); torchrun stops the job if a rank fails, and an hour without progress is an error."""
    last, since = -1, time.monotonic()
    while True:
        done = sum(w.committed_count(n_tokens) for w in writers)
        if done == sum(w.shards_needed(n_tokens) for w in writers):
            return
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise VsaeError(
                f"no rank committed a shard for {stall_s / 60:.0f} min; re-run the harvest to finish"
            )
        time.sleep(1.0)


def _lock_and_prepare(cfg: HarvestConfig, loaded, sites: list[Site], locks: contextlib.ExitStack):
    """Rank 0: take every table's lock, create or check its arrays; a table path per site (None: skipped)."""
    root = open_root(cfg.store, "a")
    paths = [table_path(loaded.model_id, s.site, s.layer) for s in sites]
    for path in paths:
        locks.enter_context(TableLock(cfg.store, path))
    kept, skipped = [], []
    for site, path in zip(sites, paths, strict=True):
        try:
            prepare_table(root, path, **_table_spec(cfg, loaded, site))
        except AlreadyHarvested as done:
            skipped.append(str(done))
            path = None
        kept.append(path)
    return (kept if any(kept) else []), skipped


def _run(cfg: HarvestConfig, loaded, model, windows, writers, world, show_progress: bool) -> int:
    """Walk the packed windows in batches; forward a batch only if it holds rows of a shard this rank
    still owes, while a background thread compresses and writes. Returns the tokens the text gave."""
    from nnsight.modeling.transformers import TransformersModel

    lm = TransformersModel(model, tokenizer=loaded.tokenizer, task="text-generation")
    device = world.device(cfg.device)
    shard_tokens = writers[0][1].shard_tokens
    owned = lambda s: s % world.size == world.rank  # noqa: E731
    background = _Background()
    n = 0  # stored tokens so far = table row of the next one
    with Progress("harvest", total=cfg.tokens, unit="tok", enabled=show_progress and world.is_main) as bar:
        while n < cfg.tokens:
            batch = []  # (window, rows kept, table row of the first)
            for win in itertools.islice(windows, cfg.batch_size):
                rows = np.flatnonzero(win.keep)[: cfg.tokens - n]
                batch.append((win, rows, n))
                n += len(rows)
                if n >= cfg.tokens:
                    break
            if not batch:
                break
            if world.is_main:
                background.submit(_write_contexts, writers, [win.ids for win, _, _ in batch])
            shards = range(batch[0][2] // shard_tokens, max(0, n - 1) // shard_tokens + 1)
            if any(owned(s) and w.wants(s) for s in shards for _, w in writers):
                acts = _forward(lm, [s for s, _ in writers], [win for win, _, _ in batch], device)
                background.submit(_write_batch, writers, acts, batch, owned)
            bar.advance(n - batch[0][2])
        background.submit(lambda: [w.close(n) for _, w in writers])
        background.drain()
    return n


def _write_contexts(writers, contexts) -> None:
    for _, writer in writers:
        for ids in contexts:
            writer.add_context(ids)


def _write_batch(writers, acts, batch, owned) -> None:
    for i, (win, rows, first) in enumerate(batch):
        meta = np.stack([win.docs[rows], np.full(len(rows), win.index), rows], axis=1).astype(np.int32)
        for (_, writer), a in zip(writers, acts, strict=True):
            writer.add_rows(first, a[i, rows], win.ids[rows], meta, owned)


class _Background:
    """One writer thread with at most `depth` batches in flight; its errors surface on the caller."""

    def __init__(self, depth: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []
        self.depth = depth

    def submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()

    def drain(self) -> None:
        try:
            for fut in self.pending:
                fut.result()
        finally:
            self.pool.shutdown(wait=True)


def _table_spec(cfg: HarvestConfig, loaded, site: Site) -> dict:
    """Everything that defines a table: the config a resume must match, provenance and array geometry."""
    config = {
        "model_id": loaded.model_id,
        "site": site.site,
        "layer": site.layer,
        "dataset": cfg.dataset,
        "split": cfg.split,
        "dataset_revision": cfg.dataset_revision,
        "text_column": cfg.text_column,
        "seed": cfg.seed,
        "ctx_len": cfg.ctx_len,
        "dtype": cfg.dtype,
        "tokens": cfg.tokens,
        "exclude_special": cfg.exclude_special,
        "chunk_tokens": cfg.chunk_tokens,
        "shard_chunks": cfg.shard_chunks,
        "compression_level": cfg.compression_level,
    }
    tok = loaded.tokenizer
    provenance = {
        "model_id": loaded.model_id,
        "model_revision": loaded.revision,
        "model_source": loaded.source,
        "model_type": loaded.model.config.model_type,
        "site": site.site,
        "layer": site.layer,
        "module_path": site.module_path,
        "port": site.port,
        "hook_name": site.hook_name,
        "tokenizer": getattr(tok, "name_or_path", ""),
        "bos_policy": "bos_per_window" if tok.bos_token_id is not None else "none",
        "special_ids": sorted(int(i) for i in tok.all_special_ids),
        "vsae_version": vsae.__version__,
        "harvest": asdict(cfg),
    }
    return {
        "d": int(loaded.model.config.hidden_size),
        "config": config,
        "provenance": provenance,
        "max_tokens": cfg.tokens,
        "chunk_tokens": cfg.chunk_tokens,
        "shard_chunks": cfg.shard_chunks,
        "vocab_size": len(tok),
        "ctx_len": cfg.ctx_len,
        "force": cfg.force,
        "compression_level": cfg.compression_level,
    }


@torch.inference_mode()
def _forward(lm, sites: list[Site], batch: list[Window], device: str) -> list[torch.Tensor]:
    """One forward pass saving every site, stopped right after the deepest one; [B, L, d] fp32 each."""
    ids = torch.from_numpy(np.stack([w.ids for w in batch])).to(device)
    saved = []
    with lm.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}) as tracer:
        for site in sites:
            envoy = envoy_at(lm, site.module_path)
            value = envoy.input if site.port == "input" else envoy.output
            saved.append(value.save())
        tracer.stop()
    out = []
    for value in saved:
        value = value[0] if isinstance(value, tuple) else value
        out.append(value.detach().float().cpu())
    return out
