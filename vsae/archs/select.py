"""Top-k selection with the spec's tie rule (§2.3): among equal scores the lower index wins."""

from __future__ import annotations

import torch


def _select_with_ties(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k highest eligible scores along the last axis, ties broken towards lower indices.

    torch.topk leaves the order among ties unspecified, so: find the k-th largest eligible score v,
    keep every eligible entry above v, then fill the remaining places with the lowest-index entries
    equal to v.
    """
    k = min(k, score.shape[-1])
    if k <= 0:
        return torch.zeros_like(eligible)
    masked = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    v = torch.topk(masked, k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True).values
    above = (masked > v) & eligible
    tied = (masked == v) & eligible
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def topk_mask(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row top-k over the latent axis of a [N, F] score matrix."""
    return _select_with_ties(score, eligible, k)


def batch_topk_mask(score: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Top k·N over the flattened [N, F] matrix (token-major flat index n·F + j decides ties)."""
    n = score.shape[0]
    flat = _select_with_ties(score.reshape(1, -1), eligible.reshape(1, -1), k * n)
    return flat.reshape(score.shape)


def scores(z: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, eligible) for value mode (z, z > 0) or abs mode (|z|, everything)."""
    if mode == "abs":
        return z.abs(), torch.ones_like(z, dtype=torch.bool)
    return z, z > 0
