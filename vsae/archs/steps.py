"""Step counts from run fractions (docs/architectures.md) and seeded random streams."""

from __future__ import annotations

import math

import numpy as np
import torch

INIT_STREAM, EPS_STREAM, DATA_STREAM = 0, 1, 2


def n_steps(frac: float, total: int) -> int:
    """n(φ) = min(T, ⌊φ·T + 1e-9⌋): the 1e-9 absorbs binary rounding (0.29·100 → 29)."""
    if not 0 <= frac <= 1:
        raise ValueError(f"fraction {frac} must lie in [0, 1]")
    return min(total, math.floor(frac * total + 1e-9))


def make_generator(
    seed: int, stream: int, rank: int = 0, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A generator seeded from SeedSequence([seed, stream, rank]) so streams never coincide."""
    word = np.random.SeedSequence([seed, stream, rank]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator(device=device)
    gen.manual_seed(int(word) & ((1 << 63) - 1))
    return gen
