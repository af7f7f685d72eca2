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


class _Reservoir:
    """Per (latent, bin) group, the R candidates with the smallest uniform random keys seen so far: a uniform
    sample without replacement of the tokens that fell in that group, kept in O(filled groups · R) memory."""

    def __init__(self, groups: int, per_group: int, seed: int):
        self.r = per_group
        self.groups = groups
        self.gen = torch.Generator().manual_seed(seed)
        self.group = torch.zeros(0, dtype=torch.int64)
        self.key = torch.zeros(0, dtype=torch.float64)
        self.row = torch.zeros(0, dtype=torch.int64)
        self.val = torch.zeros(0)

    def add(self, group: torch.Tensor, row: torch.Tensor, val: torch.Tensor) -> None:
        key = torch.rand(len(group), generator=self.gen, dtype=torch.float64)
        g = torch.cat([self.group, group])
        k = torch.cat([self.key, key])
        order = torch.argsort(g.double() + k * 0.5)  # by group, then key (keys < 1, so groups never mix)
        g = g[order]
        first = torch.ones_like(g, dtype=torch.bool)
        first[1:] = g[1:] != g[:-1]
        starts = torch.nonzero(first).flatten()
        rank = torch.arange(len(g)) - starts[torch.cumsum(first.long(), 0) - 1]
        keep = order[rank < self.r]
        self.group, self.key = g[rank < self.r], k[keep]
        self.row = torch.cat([self.row, row])[keep]
        self.val = torch.cat([self.val, val])[keep]

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[groups, R] rows (−1 where empty) and values."""
        rows = torch.full((self.groups, self.r), -1, dtype=torch.int64)
        vals = torch.zeros(self.groups, self.r)
        first = torch.ones_like(self.group, dtype=torch.bool)
        first[1:] = self.group[1:] != self.group[:-1]
        starts = torch.nonzero(first).flatten()
        rank = torch.arange(len(self.group)) - starts[torch.cumsum(first.long(), 0) - 1]
        rows[self.group, rank] = self.row
        vals[self.group, rank] = self.val
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
    sigma_sum = torch.zeros(f_dim, dtype=torch.float64) if sae.cfg.is_variational else None
    top_vals, top_rows = torch.zeros(0, f_dim), torch.zeros(0, f_dim, dtype=torch.int64)
    reservoir = _Reservoir(f_dim * N_BINS, per_bin, seed)
    with Progress("scan", total=stop - start, unit="tok", enabled=show) as bar:
        for b in range(start, stop, block):
            x = table.read(b, min(stop, b + block))
            f = sae.encode(x)
            mag = f.abs()
            rows, cols = torch.nonzero(mag, as_tuple=True)
            vals = f[rows, cols]
            fires += torch.bincount(cols, minlength=f_dim)
            abs_sum += mag.sum(0, dtype=torch.float64)
            abs_max = torch.maximum(abs_max, mag.amax(0))
            group = cols * N_BINS + torch.bucketize(vals.abs(), EDGES)
            hist += torch.bincount(group, minlength=f_dim * N_BINS)
            reservoir.add(group, rows + b, vals)
            if sigma_sum is not None:
                sigma = torch.exp(0.5 * sae.posterior(x).log_var)
                sigma_sum += (sigma * (mag > 0)).sum(0, dtype=torch.float64)
            k = min(examples, len(x))
            best, idx = mag.topk(k, dim=0)
            signed = torch.where(best > 0, f.gather(0, idx), torch.zeros_like(best))
            top_vals, top_rows = torch.cat([top_vals, signed]), torch.cat([top_rows, idx + b])
            keep = top_vals.abs().topk(min(examples, len(top_vals)), dim=0).indices
            top_vals, top_rows = top_vals.gather(0, keep), top_rows.gather(0, keep)
            bar.advance(len(x))
    sample_rows, sample_vals = reservoir.dense()
    return FeatureStats(
        start=start,
        n=stop - start,
        fires=fires,
        abs_sum=abs_sum,
        abs_max=abs_max,
        hist=hist.view(f_dim, N_BINS),
        top_vals=top_vals,
        top_rows=top_rows,
        sample_rows=sample_rows.view(f_dim, N_BINS, per_bin),
        sample_vals=sample_vals.view(f_dim, N_BINS, per_bin),
        sigma_sum=sigma_sum,
    )
