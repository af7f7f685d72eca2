"""Top-k selection with an exact tie rule: among equal scores the lower index wins."""

from __future__ import annotations

import math

import torch

from vsae.archs import cpu_topk


def row_topk(score: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(score, kk, dim=-1) of a [N, F] matrix, by the one-pass CPU kernel where it applies (the
    same sorted values, without autograd; tied indices may differ, as torch.topk's own order of ties is
    unspecified). Selection only compares the values, so no caller needs their gradient."""
    if cpu_topk.applies(score, kk):
        return cpu_topk.row_topk(score, kk)
    return torch.topk(score, kk, dim=-1)


def _select(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool, rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """The k highest eligible scores along the last axis, ties broken towards lower indices: either
    (idx, keep), or for batch top-k with a tie at the cut, the explicit mask.

    eligible None: every entry (or, with positive=True, exactly those with score > 0). Fast path: the top
    k + 1: a tie straddles the k-th place exactly when the (k+1)-th score equals the k-th (no extra pass
    over the N×F scores). Only where one does, the rule is applied explicitly, since torch.topk leaves the
    order of ties unspecified: per row, a stable sort of that row alone; over a flattened batch, keep every
    eligible entry above the k-th score v, then fill the remaining places with the lowest-index entries
    equal to v. `rows` > 1: `score` is a flattened [1, rows·F] matrix (batch top-k), searched through row
    candidates.
    """
    if eligible is not None:
        score = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    kk = min(k + 1, score.shape[-1])
    vals, idx = _flat_topk(score, kk, rows) if rows > 1 else row_topk(score, kk)
    v = vals[..., k - 1 : k]
    floor = 0.0 if positive else -torch.inf
    if kk == k:  # every entry is selected: nothing can straddle
        straddles = torch.zeros_like(v, dtype=torch.bool)
    else:
        straddles = (vals[..., k : k + 1] == v) & (v > floor)
    vals, idx = vals[..., :k].contiguous(), idx[..., :k].contiguous()
    keep = vals > floor
    if not bool(straddles.any()):
        return idx, keep
    if rows == 1:
        _rerank_rows(score, straddles.reshape(-1), floor, idx.view(-1, k), keep.view(-1, k))
        return idx, keep
    ok = score > floor
    above = (score > v) & ok
    tied = (score == v) & ok
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def _rerank_rows(score, which, floor: float, idx, keep) -> None:
    """Overwrite rows `which` of (idx, keep) [rows, k] with a stable descending sort of those rows of
    `score` (equal scores keep index order: the lower index wins); entries at or below `floor` are not kept."""
    r = which.nonzero().squeeze(1)
    rows = score.reshape(-1, score.shape[-1])[r]
    rows = torch.where(rows > floor, rows, torch.full_like(rows, -torch.inf))
    top, order = torch.sort(rows, dim=-1, descending=True, stable=True)
    k = idx.shape[1]
    idx[r] = order[:, :k]
    keep[r] = top[:, :k] > floor


def _flat_topk(flat: torch.Tensor, k: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk of a flattened [rows, F] matrix, from each row's top m candidates (m ≈ 4 k / rows):
    exact unless some row's m-th candidate reaches the k-th value, in which case the full search runs."""
    score = flat.reshape(rows, -1)
    m = min(score.shape[1], 4 * math.ceil(k / rows))
    cand, cand_idx = row_topk(score, m)
    vals, pick = torch.topk(cand.reshape(1, -1), k, dim=-1)
    if m < score.shape[1] and bool((cand[:, -1] >= vals[0, -1]).any()):
        return torch.topk(flat, k, dim=-1)  # a row may hold more of the top k than its candidates
    row = pick // m
    return vals, row * score.shape[1] + cand_idx.reshape(-1)[pick]


def _select_with_ties(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool, rows: int = 1
) -> torch.Tensor:
    """Boolean mask of `_select`'s choice."""
    k = min(k, score.shape[-1])
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    picked = _select(score, eligible, k, positive, rows)
    if isinstance(picked, torch.Tensor):
        return picked
    idx, keep = picked
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, keep)


def select_csr(
    score: torch.Tensor, eligible: torch.Tensor | None, k: int, positive: bool, per_batch: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same choice as topk_mask (or batch_topk_mask with per_batch) as CSR (crow, cols, rows) of the
    [N, F] matrix, row-major, without building an N×F mask when torch.topk's choice stands."""
    n, f = score.shape
    flat = score.reshape(1, -1) if per_batch else score
    k = min(k * n if per_batch else k, flat.shape[-1])
    mask = None if eligible is None else eligible.reshape(flat.shape)
    picked = _select(flat, mask, k, positive, n if per_batch else 1)
    if isinstance(picked, torch.Tensor):
        rows, cols = picked.reshape(n, f).nonzero(as_tuple=True)
    else:
        idx, keep = picked
        if per_batch:
            where = idx[keep].sort().values
            rows, cols = where // f, where % f
        else:
            idx, order = idx.sort(dim=-1)
            keep = keep.gather(-1, order)
            rows = torch.arange(n, device=score.device)[:, None].expand_as(idx)[keep]
            cols = idx[keep]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=score.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow, cols, rows


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
    return _select_with_ties(score.reshape(1, -1), flat_eligible, k * n, positive, n).reshape(score.shape)


def scores(z: torch.Tensor, mode: str) -> tuple[torch.Tensor, bool]:
    """(score, positive): value mode scores z with only z > 0 eligible; abs mode scores |z|, all eligible."""
    if mode == "abs":
        return z.abs(), False
    return z, True
