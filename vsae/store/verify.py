"""Which storage objects of a table exist, and whether every one of them decodes (checksums included)."""

from __future__ import annotations

import itertools
import math

import zarr

from vsae.errors import VsaeError

DATA_ARRAYS = ("activations", "scales", "tokens", "doc_pos", "contexts")
STAT_ARRAYS = ("chunk_sum", "chunk_sumsq")


def object_keys(arr: zarr.Array) -> list[tuple[str, tuple[slice, ...]]]:
    """Every storage object of `arr` (a shard, or a chunk when unsharded): its key and the region it holds."""
    block = arr.shards or arr.chunks
    grid = [math.ceil(s / b) for s, b in zip(arr.shape, block, strict=True)]
    out = []
    for idx in itertools.product(*map(range, grid)):
        region = tuple(
            slice(i * b, min(s, (i + 1) * b)) for i, b, s in zip(idx, block, arr.shape, strict=True)
        )
        out.append(("c/" + "/".join(map(str, idx)), region))
    return out


def missing_objects(arr: zarr.Array) -> list[str]:
    """Keys of the objects `arr` should hold but its store lacks (zarr would read them as fill values)."""
    present = set(_listing(arr))  # one listing of the array's prefix
    return [k for k, _ in object_keys(arr) if k not in present]


def _listing(arr: zarr.Array) -> list[str]:
    from zarr.core.sync import sync

    prefix = f"{arr.path}/"

    async def keys():
        return [k async for k in arr.store.list_prefix(f"{prefix}c/")]

    listed = sync(keys())
    if all(k.startswith(prefix) for k in listed):
        return [k[len(prefix) :] for k in listed]

    async def present():  # a store whose listing does not echo the prefix: ask for each object
        wanted = [key for key, _ in object_keys(arr)]
        found = [await arr.store.exists(prefix + key) for key in wanted]
        return [key for key, ok in zip(wanted, found, strict=True) if ok]

    return sync(present())


def check_present(group: zarr.Group, path: str, names=DATA_ARRAYS + STAT_ARRAYS) -> None:
    """Refuse a table whose storage lost an object: one line naming the array and the rows it held."""
    for name in names:
        if name not in group:
            continue
        arr = group[name]
        if arr.size == 0:
            continue
        lost = missing_objects(arr)
        if lost:
            region = dict(object_keys(arr))[lost[0]][0]
            raise VsaeError(
                f"table {path}: {name}/{lost[0]} (rows {region.start}–{region.stop - 1}) is missing "
                f"({len(lost)} object(s) lost); re-harvest with --force"
            )


def verify_table(group: zarr.Group, path: str) -> int:
    """Read and decode every object of every array (crc32c checked); returns the number checked."""
    check_present(group, path)
    checked = 0
    for name in DATA_ARRAYS + STAT_ARRAYS:
        if name not in group or group[name].size == 0:
            continue
        arr = group[name]
        for key, region in object_keys(arr):
            try:
                arr[region]
            except Exception as exc:  # numcodecs/zarr raise several types for a damaged object
                raise VsaeError(
                    f"table {path}: {name}/{key} is corrupted ({type(exc).__name__}); re-harvest with --force"
                ) from exc
            checked += 1
    return checked
