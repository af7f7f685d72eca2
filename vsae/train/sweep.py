"""Sweep files: several SAEs with their own hyper-parameters, trained from one pass over the data.

[train]                # optional: any TrainConfig field (steps, batch_size, lr, seed, ...)
steps = 1500

[[sae]]                # one table per SAE: arch, d_sae or expansion, any architecture hyper-parameter,
                       # and its own lr, grad_clip_norm or betas
arch = "topk"
d_sae = 512
k = 6
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from vsae.errors import VsaeError
from vsae.train.config import TrainConfig, clip_norm

PER_SAE_TRAIN = ("lr", "grad_clip_norm", "betas")  # training options one [[sae]] table may set for itself


def load_sweep(path: str | Path):
    """(list of SAESpec, TrainConfig overrides) from a TOML sweep file."""
    from vsae.train.run import SAESpec

    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VsaeError(f"cannot read sweep file {path}: {exc}") from exc
    unknown = set(data) - {"train", "sae"}
    if unknown or not data.get("sae"):
        raise VsaeError(
            f"sweep file {path} needs [[sae]] tables (and optionally [train]); unexpected: {sorted(unknown)}"
        )
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(data.get("train", {})) - train_fields
    if bad:
        raise VsaeError(
            f"unknown [train] keys {sorted(bad)} in {path}; valid: {', '.join(sorted(train_fields))}"
        )
    if not isinstance(data["sae"], list) or not isinstance(data.get("train", {}), dict):
        raise VsaeError(f"sweep file {path}: write each SAE as an [[sae]] table and options under [train]")
    specs = []
    for i, entry in enumerate(data["sae"]):
        if not isinstance(entry, dict):
            raise VsaeError(f"sweep file {path}: [[sae]] number {i + 1} is not a table")
        entry = dict(entry)
        if not isinstance(entry.get("arch"), str):
            raise VsaeError(f'[[sae]] number {i + 1} in {path} needs arch = "NAME"')
        own = {k: entry.pop(k) for k in PER_SAE_TRAIN if k in entry}
        if "grad_clip_norm" in own:
            own["grad_clip_norm"] = clip_norm(own["grad_clip_norm"])
        specs.append(
            SAESpec(
                entry.pop("arch"),
                d_sae=entry.pop("d_sae", None),
                expansion=entry.pop("expansion", None),
                overrides=entry,
                train=own,
            )
        )
    train = dict(data.get("train", {}))
    if "grad_clip_norm" in train:  # "none" turns clipping off, as on the command line
        train["grad_clip_norm"] = clip_norm(train["grad_clip_norm"])
    return specs, train
