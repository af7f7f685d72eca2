"""Top-k selection with the spec's tie rule (§2.3): among equal scores the lower index wins."""

from __future__ import annotations

import torch


def _select_with_ties(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool
) -> torch.Tensor:
    """Mask of the k highest eligible scores along the last axis, ties broken towards lower indices.

    eligible None: every entry (or, with positive=True, exactly those with score > 0). Fast path:
    torch.topk, then one comparison to check that no tie straddles the k-th place. Only if one does,
    the explicit rule runs: keep every eligible entry above the k-th score v, then fill the remaining
    places with the lowest-index entries equal to v (torch.topk leaves the order of ties unspecified).
    """
    k = min(k, score.shape[-1])
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if eligible is not None:
        score = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    vals, idx = torch.topk(score, k, dim=-1)
    v = vals[..., -1:]
    floor = 0.0 if positive else -torch.inf
    mask = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, vals > floor)
    straddles = ((score >= v).sum(dim=-1, keepdim=True) > k) & (v > floor)
    if not bool(straddles.any()):
        return mask
    ok = score > floor
    above = (score > v) & ok
    tied = (score == v) & ok
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def topk_mask(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool = False
) -> torch.Tensor:
    """Per-row top-k over the latent axis of a [N, F] score matrix."""
    return _select_with_ties(score, eligible, k, positive)


def batch_topk_mask(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool = False
) -> torch.Tensor:
    """Top k·N over the flattened [N, F] matrix (token-major flat index n·F + j decides ties)."""
    n = score.shape[0]
    flat_eligible = None if eligible is None else eligible.reshape(1, -1)
    return _select_with_ties(score.reshape(1, -1), flat_eligible, k * n, positive).reshape(score.shape)


def scores(z: torch.Tensor, mode: str) -> tuple[torch.Tensor, bool]:
    """(score, positive): value mode scores z with only z > 0 eligible; abs mode scores |z|, all eligible."""
    if mode == "abs":
        return z.abs(), False
    return z, True
