"""Bytes per token and write/read speed per dtype and codec, against SAELens's fp32 activation cache
(4·d bytes of activations + 4 bytes of token id per token: 2,052 B/token at d = 512).

    python bench/store_bytes.py --store demo-out/acts   # any harvested table (fp32 values are decoded)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import fsspec
import zarr
from common import machine
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from vsae.store.layout import STORAGE_DTYPES, to_storage
from vsae.store.table import open_table

CODECS = {
    "none": [Crc32cCodec()],
    "blosc-zstd1-byteshuffle (default)": [
        BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        Crc32cCodec(),
    ],
    "blosc-zstd3-byteshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()],
    "blosc-zstd5-byteshuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec()],
    "blosc-zstd5-bitshuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), Crc32cCodec()],
    "zstd3": [ZstdCodec(level=3), Crc32cCodec()],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="demo-out/acts")
    ap.add_argument("--tokens", type=int, default=65_536)
    args = ap.parse_args()
    table = open_table(args.store)
    x = table.read(0, min(args.tokens, table.n_tokens))
    n, d = x.shape
    saelens = 4 * d + 4
    print(f"machine: {machine()}; table {table.path}, {n:,} tokens, d={d} (stored as {table.dtype})")
    print(f"SAELens fp32 layout: {saelens} B/token")
    print(
        f"{'dtype':9s} {'codec':24s} {'B/token':>8s} {'vs SAELens':>10s} {'write MB/s':>10s} {'read MB/s':>9s}"
    )
    for dtype in (d for d in STORAGE_DTYPES if d != "int8"):  # int8: bench/int8_fve.py
        words = to_storage(x, dtype)
        raw_mb = words.nbytes / 2**20
        for name, codecs in CODECS.items():
            with tempfile.TemporaryDirectory() as tmp:
                arr = zarr.create_array(
                    tmp,
                    shape=words.shape,
                    chunks=(4096, d),
                    shards=(65536, d),
                    dtype=words.dtype,
                    compressors=codecs,
                    fill_value=0,
                )
                t = time.perf_counter()
                arr[:] = words
                write = raw_mb / (time.perf_counter() - t)
                t = time.perf_counter()
                arr[:]
                read = raw_mb / (time.perf_counter() - t)
                size = fsspec.filesystem("file").du(tmp, total=True)
            per_token = size / n + (2 if dtype else 0)  # + uint16 token id
            print(
                f"{dtype:9s} {name:24s} {per_token:8.0f} {saelens / per_token:9.2f}× {write:10.0f} {read:9.0f}"
            )


if __name__ == "__main__":
    main()
