"""Synthetic ground truth: activations that are sparse non-negative combinations of a known random
dictionary, written as a real store table (with the true atoms beside it) so recovery can be measured."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

import vsae
from vsae.errors import VsaeError
from vsae.store.layout import open_root
from vsae.store.writer import AlreadyHarvested, TableWriter, prepare_table


@dataclass
class SyntheticConfig:
    """Options of `vsae synthetic`."""

    store: str = "./synthetic"
    """Store root to write the table synthetic/resid_post.0 into."""
    d: int = 64
    """Activation width."""
    atoms: int = 256
    """Number of true dictionary atoms (unit norm, uniform on the sphere)."""
    active: float = 5.0
    """Mean number of active atoms per token (Poisson, at least 1)."""
    tokens: int = 200_000
    """Tokens to generate."""
    noise: float = 0.01
    """Standard deviation of added isotropic Gaussian noise (per dimension)."""
    seed: int = 0
    """Seed of the dictionary and the codes."""
    chunk_tokens: int = 4096
    """Tokens per Zarr chunk."""
    dtype: str = "float32"
    """Stored dtype."""
    force: bool = False
    """Overwrite an existing synthetic table."""


CTX = 128


def write_synthetic(cfg: SyntheticConfig) -> dict:
    """Generate and store the table; the true atoms go to the array `true_atoms` [atoms, d]."""
    finite = math.isfinite(cfg.active) and math.isfinite(cfg.noise)
    if (
        min(cfg.d, cfg.atoms, cfg.tokens, cfg.chunk_tokens) < 1
        or not finite
        or cfg.active <= 0
        or cfg.noise < 0
    ):
        raise VsaeError(
            "synthetic needs positive --d, --atoms, --tokens, --chunk-tokens and --active, and --noise >= 0"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    atoms = torch.randn(cfg.atoms, cfg.d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    root = open_root(cfg.store, "a")
    config = asdict(cfg) | {"kind": "synthetic", "ctx_len": CTX}
    config.pop("store")
    config.pop("force")
    provenance = {
        "model_id": "synthetic",
        "site": "resid_post",
        "layer": 0,
        "module_path": "synthetic",
        "port": "output",
        "hook_name": "blocks.0.hook_resid_post",
        "special_ids": [],
        "vsae_version": vsae.__version__,
        "harvest": {"model": "synthetic"},
    }
    path = "synthetic/resid_post.0"
    try:
        prepare_table(
            root,
            path,
            d=cfg.d,
            config=config | {"dtype": cfg.dtype},
            provenance=provenance,
            max_tokens=cfg.tokens,
            chunk_tokens=cfg.chunk_tokens,
            shard_chunks=4,
            vocab_size=cfg.atoms,
            ctx_len=CTX,
            force=cfg.force,
        )
    except AlreadyHarvested as done:  # a harvest skips a complete table; asking for this one is an error
        raise VsaeError(str(done)) from None
    writer = TableWriter(root, path)
    for window, start in enumerate(range(0, cfg.tokens, CTX)):
        n = min(CTX, cfg.tokens - start)
        x, top = _sample(atoms, n, cfg, gen)
        ids = np.zeros(CTX, dtype=np.int64)
        ids[:n] = top
        writer.add_context(ids)
        meta = np.stack([np.full(n, window), np.full(n, window), np.arange(n)], axis=1).astype(np.int32)
        writer.add_rows(start, x, top, meta)
    writer.close(cfg.tokens)
    # before the completion mark: a complete synthetic table always has its ground truth
    writer.group.create_array("true_atoms", data=atoms.numpy(), overwrite=True)
    return writer.finish(cfg.tokens, heldout_fraction=0.05)


def _sample(atoms: torch.Tensor, n: int, cfg: SyntheticConfig, gen: torch.Generator):
    """n tokens: Poisson(active) distinct atoms each (at least 1), coefficients U(0.5, 1.5), plus noise."""
    counts = torch.poisson(torch.full((n,), float(cfg.active)), generator=gen).clamp(1, atoms.shape[0]).long()
    order = torch.rand(n, atoms.shape[0], generator=gen).argsort(dim=1)  # a random subset per token
    keep = torch.arange(atoms.shape[0])[None, :] < counts[:, None]
    codes = torch.zeros(n, atoms.shape[0])
    codes.scatter_(1, order, keep.float() * (torch.rand(n, atoms.shape[0], generator=gen) + 0.5))
    x = codes @ atoms + cfg.noise * torch.randn(n, atoms.shape[1], generator=gen)
    return x, codes.argmax(dim=1).numpy()


def atom_recovery(true_atoms: torch.Tensor, w_dec: torch.Tensor, up_to_sign: bool = False) -> float:
    """Mean over true atoms of the best cosine similarity to any learned atom (|cos| with up_to_sign,
    for signed codes, whose atoms may be learned as −d with negative coefficients)."""
    t = true_atoms / true_atoms.norm(dim=1, keepdim=True)
    w = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = t @ w.T
    return float((cos.abs() if up_to_sign else cos).max(dim=1).values.mean())
