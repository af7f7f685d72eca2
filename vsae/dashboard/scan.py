"""One streaming pass over a table's tokens: every statistic and example the dashboard shows, for all
latents at once, encoded with the checkpoint's own inference rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vsae.archs.sae import SAE
from vsae.progress import Progress
from vsae.store.table import Table

EDGES = torch.logspace(-4, 4, 81)  # |activation| bins, 10 per decade (raw space); bin b covers [E[b-1], E[b])
N_BINS = len(EDGES) + 1


@dataclass
class FeatureStats:
    """What a scan of rows [start, start + n) found, per latent (F = d_sae, E examples, R per-bin samples)."""

    start: int
    n: int
    fires: torch.Tensor  # [F] tokens where the latent is non-zero
    abs_sum: torch.Tensor  # [F] Σ|f| over those tokens (float64)
    abs_max: torch.Tensor  # [F]
    hist: torch.Tensor  # [F, N_BINS] counts of |f| per log bin
    top_vals: torch.Tensor  # [E, F] signed values, by |value| descending (0 = none)
    top_rows: torch.Tensor  # [E, F]
    sample_rows: torch.Tensor  # [F, N_BINS, R] a uniform random sample of rows per (latent, bin); −1 = none
    sample_vals: torch.Tensor  # [F, N_BINS, R]
    sigma_sum: torch.Tensor | None = None  # [F] Σ posterior σ over firing tokens (variational models)

    @property
    def density(self) -> torch.Tensor:
        return self.fires.double() / self.n

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / self.fires.clamp(min=1)

    @property
    def sigma_mean(self) -> torch.Tensor | None:
        return None if self.sigma_sum is None else self.sigma_sum / self.fires.clamp(min=1)


def _rank_in_group(sorted_group: torch.Tensor) -> torch.Tensor:
    """For a sorted group-id vector, each entry's position within its group (0, 1, ...)."""
    first = torch.ones_like(sorted_group, dtype=torch.bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    starts = torch.nonzero(first).flatten()
    return torch.arange(len(sorted_group)) - starts[torch.cumsum(first.long(), 0) - 1]


def _by_group_then_key(group: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The permutation sorting by group, ties by key (two stable sorts: exact for any key values)."""
    by_key = torch.argsort(key, stable=True)
    return by_key[torch.argsort(group[by_key], stable=True)]


class _BestPerGroup:
    """Per group, the R entries with the smallest keys seen so far, in O(filled groups · R) memory: with
    uniform random keys a uniform sample without replacement, with key −|value| the R largest values."""

    def __init__(self, groups: int, per_group: int):
        self.r = per_group
        self.groups = groups
        self.group = torch.zeros(0, dtype=torch.int64)
        self.key = torch.zeros(0, dtype=torch.float64)
        self.row = torch.zeros(0, dtype=torch.int64)
        self.val = torch.zeros(0)

    def add(self, group: torch.Tensor, key: torch.Tensor, row: torch.Tensor, val: torch.Tensor) -> None:
        g = torch.cat([self.group, group])
        k = torch.cat([self.key, key.double()])
        order = _by_group_then_key(g, k)
        keep = order[_rank_in_group(g[order]) < self.r]
        self.group, self.key = g[keep], k[keep]
        self.row = torch.cat([self.row, row])[keep]
        self.val = torch.cat([self.val, val])[keep]

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[groups, R] rows (−1 where empty) and values, each group's entries by ascending key."""
        order = _by_group_then_key(self.group, self.key)
        group, row, val = self.group[order], self.row[order], self.val[order]
        rank = _rank_in_group(group)
        rows = torch.full((self.groups, self.r), -1, dtype=torch.int64)
        vals = torch.zeros(self.groups, self.r)
        rows[group, rank] = row
        vals[group, rank] = val
        return rows, vals


@torch.no_grad()
def scan(
    sae: SAE,
    table: Table,
    start: int,
    stop: int,
    examples: int = 10,
    per_bin: int = 2,
    seed: int = 0,
    show: bool = True,
    block: int = 4096,
) -> FeatureStats:
    """Encode rows [start, stop) block by block (raw space) and keep every latent's running statistics."""
    f_dim = sae.cfg.d_sae
    fires = torch.zeros(f_dim, dtype=torch.int64)
    abs_sum = torch.zeros(f_dim, dtype=torch.float64)
    abs_max = torch.zeros(f_dim)
    hist = torch.zeros(f_dim * N_BINS, dtype=torch.int64)
    sigma_sum = torch.zeros(f_dim, dtype=torch.float64) if sae.cfg.samples else None
    top = _BestPerGroup(f_dim, examples)  # key −|f|: the largest activations per latent
    sample = _BestPerGroup(f_dim * N_BINS, per_bin)  # random keys: a uniform sample per (latent, bin)
    gen = torch.Generator().manual_seed(seed)
    with Progress("scan", total=stop - start, unit="tok", enabled=show) as bar:
        for b in range(start, stop, block):
            x = table.read(b, min(stop, b + block))
            f = sae.encode(x)
            rows, cols = torch.nonzero(f, as_tuple=True)  # everything below is O(non-zeros), not O(N·F)
            vals = f[rows, cols]
            mag = vals.abs()
            fires += torch.bincount(cols, minlength=f_dim)
            abs_sum += torch.bincount(cols, weights=mag.double(), minlength=f_dim)
            abs_max.scatter_reduce_(0, cols, mag, reduce="amax")
            group = cols * N_BINS + torch.bucketize(mag, EDGES)
            hist += torch.bincount(group, minlength=f_dim * N_BINS)
            key = torch.rand(len(group), generator=gen, dtype=torch.float64)
            sample.add(group, key, rows + b, vals)
            top.add(cols, -mag, rows + b, vals)
            if sigma_sum is not None:
                sigma = torch.exp(0.5 * sae.posterior(x).log_var)
                sigma_sum += torch.bincount(cols, weights=sigma[rows, cols].double(), minlength=f_dim)
            bar.advance(len(x))
    sample_rows, sample_vals = sample.dense()
    top_rows, top_vals = top.dense()
    return FeatureStats(
        start=start,
        n=stop - start,
        fires=fires,
        abs_sum=abs_sum,
        abs_max=abs_max,
        hist=hist.view(f_dim, N_BINS),
        top_vals=top_vals.T.contiguous(),
        top_rows=top_rows.clamp(min=0).T.contiguous(),  # no example: value 0, row 0
        sample_rows=sample_rows.view(f_dim, N_BINS, per_bin),
        sample_vals=sample_vals.view(f_dim, N_BINS, per_bin),
        sigma_sum=sigma_sum,
    )
