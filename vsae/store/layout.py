"""Zarr v3 store layout: one table per model/site/layer, dtypes, codecs, opening roots (DESIGN.md, Store).

<root>/<model-slug>/<site>.<layer>/
    activations  (n_tokens, d)  bf16 as uint16 words | float16 | float32; Blosc-zstd + crc32c, sharded
    tokens       (n_tokens,)    uint16 when the vocabulary fits, else uint32
    doc_pos      (n_tokens, 3)  int32: document index, context-window index, position in the window
    contexts     (n_windows, ctx_len)  every window's full token ids, specials included (CE eval, dashboards)
    chunk_sum    (n_chunks, d)  float64 per-chunk Σx of the stored values (norm factor, mean)
    chunk_sumsq  (n_chunks,)    float64 per-chunk Σ‖x‖²
    committed    (n_shards,)    int64 rows written per shard (0: not yet), one object per shard
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from vsae.errors import VsaeError

FORMAT_VERSION = 2  # 2: arrays laid out at full size, per-shard commit marks
STORAGE_DTYPES = {"bfloat16": "uint16", "float16": "float16", "float32": "float32", "int8": "int8"}
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FP16_MAX = 65504.0


COMPRESSION_LEVEL = 1  # zstd 1: 10× the throughput of level 5 for 11 % more bytes (bench/RESULTS.md)


def compressors(level: int = COMPRESSION_LEVEL) -> list:
    """Byte-shuffled Blosc zstd (best ratio on 16-bit activations, OFFLINE.md) plus a crc32c checksum."""
    return [BloscCodec(cname="zstd", clevel=level, shuffle="shuffle"), Crc32cCodec()]


def model_slug(model_id: str) -> str:
    """`EleutherAI/pythia-70m-deduped` → `pythia-70m-deduped`; local dirs use their folder name."""
    name = os.path.basename(os.path.normpath(model_id)) or model_id
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).lower()


def table_path(model_id: str, site: str, layer: int) -> str:
    return f"{model_slug(model_id)}/{site}.{layer}"


def quantize_int8(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Lossy 8-bit mode: per-token scale = max|x|/127, words = round(x/scale) (stored with the scales)."""
    scale = x.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(x / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.numpy(), scale.float().numpy()


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """fp32 activations → the stored words; fp16 overflow is an error, never a silent inf."""
    if dtype not in STORAGE_DTYPES:
        raise VsaeError(f"unknown store dtype {dtype!r}; valid: {', '.join(STORAGE_DTYPES)}")
    if dtype == "int8":
        raise ValueError("int8 words need their scales: use quantize_int8")
    if dtype == "float16":
        peak = float(x.abs().max()) if x.numel() else 0.0
        if peak > FP16_MAX:
            raise VsaeError(
                f"activation magnitude {peak:.0f} overflows float16 (max {FP16_MAX:.0f}); use --dtype bfloat16 or float32"
            )
    y = x.to(TORCH_DTYPES[dtype])
    if dtype == "bfloat16":
        y = y.view(torch.uint16)
    return y.contiguous().numpy()


def from_storage(
    words: np.ndarray, dtype: str, as_float: bool = True, scales: np.ndarray | None = None
) -> torch.Tensor:
    """Stored words → torch tensor: fp32, or the stored precision with as_float=False (int8: bf16)."""
    t = torch.from_numpy(np.ascontiguousarray(words))
    if dtype == "int8":
        x = t.float() * torch.from_numpy(np.ascontiguousarray(scales))[:, None]
        return x if as_float else x.to(torch.bfloat16)
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float() if as_float else t


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def open_root(url: str, mode: str) -> zarr.Group:
    """Open a store root (local path or fsspec URL: file://, memory://, s3://, gs://)."""
    local = "://" not in url or url.startswith("file://")
    path = url[len("file://") :] if url.startswith("file://") else url
    if local and os.path.isfile(path):
        raise VsaeError(f"store path {url} is a file, not a directory; choose another --store")
    if mode == "r" and local and not os.path.isdir(path):
        raise VsaeError(f"store {url} does not exist; create it with `vsae harvest MODEL --store {url}`")
    if local:  # zarr 3.1's LocalStore mangles listed keys under a relative root
        url = os.path.abspath(path)
        if mode != "r":
            try:
                os.makedirs(url, exist_ok=True)
            except OSError as exc:  # a file in the way, a read-only filesystem, no permission
                raise VsaeError(
                    f"cannot create the store {url} ({exc.strerror}); choose another --store"
                ) from exc
    try:
        return zarr.open_group(url, mode=mode)
    except FileNotFoundError as exc:
        raise VsaeError(
            f"store {url} does not exist; create it with `vsae harvest MODEL --store {url}`"
        ) from exc
    except (ValueError, TypeError, KeyError) as exc:  # a root zarr.json that is not zarr metadata
        raise VsaeError(f"store {url}: its zarr.json is damaged ({type(exc).__name__})") from exc
