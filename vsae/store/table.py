"""Reading one complete table: its attributes, splits, statistics and decoded slices."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
import zarr

from vsae.errors import VsaeError
from vsae.store.attrs import table_problem
from vsae.store.layout import from_storage, open_root
from vsae.store.verify import check_present, object_keys


class Table:
    """A finished table of a store (train split = all but the held-out tail of chunks)."""

    def __init__(self, group: zarr.Group, path: str):
        self.group = group
        self.path = path
        self.attrs = dict(group.attrs)
        if not self.attrs.get("complete"):
            raise VsaeError(f"table {path} is not complete; finish it with `vsae harvest` (it resumes)")
        if problem := table_problem(self.attrs):
            raise VsaeError(f"table {path} {problem}")
        check_present(group, path)
        self.acts = group["activations"]
        self.n_tokens, self.d = self.acts.shape
        self.dtype = self.attrs["dtype"]
        self.chunk_tokens = self.attrs["chunk_tokens"]
        self.n_chunks = math.ceil(self.n_tokens / self.chunk_tokens)
        self.n_train_chunks = self.attrs["n_train_chunks"]
        self.n_train = min(self.n_tokens, self.n_train_chunks * self.chunk_tokens)

    @property
    def provenance(self) -> dict:
        return self.attrs["provenance"]

    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_tokens, min(self.n_tokens, (i + 1) * self.chunk_tokens)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Activations [stop − start, d] as fp32; a corrupted chunk is a clear error, never trained on."""
        return self.read_stored(start, stop).float()

    def read_stored(self, start: int, stop: int) -> torch.Tensor:
        """Activations in their stored precision (bf16/fp16/fp32): half the bytes to shuffle and transfer."""
        try:
            words = self.acts[start:stop]
        except ValueError as exc:
            chunk = start // self.chunk_tokens
            raise VsaeError(
                f"table {self.path}: chunk {chunk} is corrupted ({exc}); re-harvest with --force"
            ) from exc
        scales = self.group["scales"][start:stop] if self.dtype == "int8" else None
        return from_storage(words, self.dtype, as_float=False, scales=scales)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """About n training tokens from randomly chosen chunks (resampling pools), fp32."""
        parts, have = [], 0
        for c in torch.randperm(self.n_train_chunks, generator=gen).tolist():
            start, stop = self.chunk_bounds(c)
            parts.append(self.read(start, min(stop, self.n_train)))
            have += len(parts[-1])
            if have >= n:
                break
        return torch.cat(parts)[:n]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.group["tokens"][start:stop]

    def doc_pos(self, start: int, stop: int) -> np.ndarray:
        return self.group["doc_pos"][start:stop]

    def train_stats(self) -> dict:
        """Mean and mean squared norm over the training split, from the per-chunk sums."""
        n = self.n_train
        s = self._stat("chunk_sum").sum(axis=0)
        sq = float(self._stat("chunk_sumsq").sum())
        return {"mean": s / n, "mean_sq_norm": sq / n, "n": n}

    def variance(self) -> float:
        """E‖x − x̄‖² of the training split in raw space (E‖x‖² − ‖x̄‖², from the recorded statistics)."""
        stats = self.train_stats()
        return float(stats["mean_sq_norm"] - np.square(stats["mean"]).sum())

    def _stat(self, name: str) -> np.ndarray:
        """The training chunks' rows of a statistics array; a damaged object is a one-line error."""
        arr = self.group[name]
        try:  # object by object: a failing read then leaves no concurrent zarr reads pending at exit
            rows = [np.asarray(arr[region]) for _, region in object_keys(arr)]
            return np.concatenate(rows)[: self.n_train_chunks]
        except ValueError as exc:  # crc32c mismatch or an undecodable object
            raise VsaeError(
                f"table {self.path}: {name} is corrupted ({str(exc).splitlines()[0][:80]}); re-harvest with --force"
            ) from exc

    def norm_factor(self) -> float:
        """c = sqrt(E‖x‖²) over the training split, from the statistics recorded at harvest (docs/architectures.md)."""
        return math.sqrt(self.train_stats()["mean_sq_norm"])

    def heldout_windows(self) -> np.ndarray:
        """Context windows whose stored tokens all lie in the held-out tail."""
        if self.n_train >= self.n_tokens or self.n_train == 0:
            return np.zeros(0, dtype=np.int64)
        last_train_window = int(self.doc_pos(self.n_train - 1, self.n_train)[0, 1])
        return np.arange(last_train_window + 1, self.group["contexts"].shape[0])


@contextlib.contextmanager
def metadata_errors(root: zarr.Group):
    """A zarr.json that is not JSON (truncated, a non-UTF-8 byte) or not zarr metadata is a one-line error
    naming the file."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError, UnicodeDecodeError, zarr's own
        where = str(getattr(root.store, "root", root.store))
        damaged = damaged_metadata(where)
        if damaged is None:  # every zarr.json parses: not damage but a bug, which keeps its traceback
            raise
        raise VsaeError(
            f"store {where}: {damaged} is damaged ({type(exc).__name__}); restore it or re-harvest with --force"
        ) from exc


def damaged_metadata(store: str) -> str | None:
    """The first zarr.json below `store` that does not parse as UTF-8 JSON, or None."""
    import json

    import fsspec

    try:
        fs, base = fsspec.core.url_to_fs(store)
        files = sorted(f for f in fs.find(base) if f.endswith("zarr.json"))
    except Exception:  # an unlistable store: the caller's generic message stands
        return None
    for f in files:
        try:
            json.loads(fs.cat_file(f).decode("utf-8"))
        except (ValueError, OSError):
            return f
    return None


def list_tables(root: zarr.Group) -> list[str]:
    """Paths of every table (complete or not) below a store root."""
    out = []
    with warnings.catch_warnings(), metadata_errors(root):
        # writer lock files (<table>.lock) sit beside the tables and are not Zarr nodes
        warnings.filterwarnings("ignore", message=r".*\.lock is not recognized")
        for model_name, model_group in root.groups():
            for table_name, _ in model_group.groups():
                out.append(f"{model_name}/{table_name}")
    return sorted(out)


def open_table(
    store: str, model: str | None = None, site: str | None = None, layer: int | None = None
) -> Table:
    """The one table matching the filters; with a single table in the store none are needed."""
    root = open_root(store, "r")
    paths = list_tables(root)
    if not paths:
        raise VsaeError(f"store {store} has no tables; run `vsae harvest MODEL --store {store}` first")
    chosen = [
        p
        for p in paths
        if (model is None or p.split("/")[0] == model or model.lower().endswith(p.split("/")[0]))
        and (site is None or p.split("/")[1].rsplit(".", 1)[0] == site)
        and (layer is None or p.split("/")[1].rsplit(".", 1)[1] == str(layer))
    ]
    if not chosen:
        raise VsaeError(
            f"store {store} has no table for model={model} site={site} layer={layer}; it has: {', '.join(paths)}"
        )
    if len(chosen) > 1:
        raise VsaeError(
            f"store {store} has several tables ({', '.join(chosen)}); pick one with --model/--site/--layer"
        )
    with metadata_errors(root):
        return Table(root[chosen[0]], chosen[0])
