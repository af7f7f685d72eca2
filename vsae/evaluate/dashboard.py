"""Feature dashboards: one self-contained HTML page per checkpoint with, for a sample of latents, how
often they fire, how strongly (a log-spaced histogram) and the stored contexts that excite them most."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsae.archs.checkpoint import load_sae
from vsae.archs.sae import SAE
from vsae.errors import VsaeError
from vsae.evaluate.core import checkpoint_table
from vsae.progress import Progress
from vsae.store.table import Table

HIST_EDGES = torch.logspace(-3, 3, 25)  # |activation| bins, 1e-3 … 1e3 (raw space)


@dataclass
class DashboardConfig:
    """Options of `vsae viz`."""

    store: str | None = None
    """Store holding the checkpoint's table (default: the store it was trained on)."""
    tokens: int = 65_536
    """Training tokens to scan, from the start of the table."""
    latents: int = 48
    """Latents to show: the most frequent half and a seeded random half of the other live ones."""
    examples: int = 8
    """Top-activating contexts per latent."""
    context: int = 10
    """Tokens shown on each side of the activating one."""
    seed: int = 0
    """Seed of the random half of the latents."""


@dataclass
class LatentStats:
    """What a scan of `n` tokens found: per latent firing counts, |activation| sums, histograms and the
    top-activating (value, row) pairs."""

    n: int
    fires: torch.Tensor
    abs_sum: torch.Tensor
    hist: torch.Tensor
    top_vals: torch.Tensor  # [E, F], by |value|, descending
    top_rows: torch.Tensor  # [E, F]


@torch.no_grad()
def scan(
    sae: SAE, table: Table, tokens: int, examples: int, show: bool = True, block: int = 4096
) -> LatentStats:
    """Encode the first `tokens` training tokens (inference rule, raw space) and keep running statistics."""
    n = min(tokens, table.n_train)
    f_dim = sae.cfg.d_sae
    fires = torch.zeros(f_dim, dtype=torch.int64)
    abs_sum = torch.zeros(f_dim, dtype=torch.float64)
    hist = torch.zeros(f_dim, len(HIST_EDGES) + 1, dtype=torch.int64)
    top_vals = torch.zeros(0, f_dim)
    top_rows = torch.zeros(0, f_dim, dtype=torch.int64)
    with Progress("scan", total=n, unit="tok", enabled=show) as bar:
        for start in range(0, n, block):
            stop = min(n, start + block)
            f = sae.encode(table.read(start, stop))
            active = f != 0
            fires += active.sum(0)
            abs_sum += f.abs().sum(0, dtype=torch.float64)
            rows, cols = active.nonzero(as_tuple=True)
            bins = torch.bucketize(f[rows, cols].abs(), HIST_EDGES)
            hist.view(-1).index_add_(0, cols * hist.shape[1] + bins, torch.ones_like(bins))
            k = min(examples, stop - start)
            vals, idx = f.abs().topk(k, dim=0)
            signed = f.gather(0, idx)
            top_vals = torch.cat([top_vals, torch.where(vals > 0, signed, torch.zeros_like(signed))])
            top_rows = torch.cat([top_rows, idx + start])
            keep = top_vals.abs().topk(min(examples, len(top_vals)), dim=0).indices
            top_vals, top_rows = top_vals.gather(0, keep), top_rows.gather(0, keep)
            bar.advance(stop - start)
    return LatentStats(n, fires, abs_sum, hist, top_vals, top_rows)


def choose_latents(stats: LatentStats, count: int, seed: int) -> list[int]:
    """The most frequent half of the live latents, then a seeded random half of the rest."""
    alive = torch.nonzero(stats.fires > 0).flatten()
    by_freq = alive[stats.fires[alive].argsort(descending=True, stable=True)].tolist()
    frequent = by_freq[: count // 2]
    rest = by_freq[count // 2 :]
    rng = np.random.default_rng(seed)
    extra = (
        sorted(rng.choice(rest, size=min(len(rest), count - len(frequent)), replace=False).tolist())
        if rest
        else []
    )
    return frequent + extra


def build_dashboard(path: Path, out: Path, cfg: DashboardConfig, show: bool = True) -> dict:
    """Scan the checkpoint's table, write the HTML page to `out`; returns a summary."""
    if min(cfg.tokens, cfg.latents, cfg.examples) < 1 or cfg.context < 0:
        raise VsaeError("--tokens, --latents and --examples must be positive and --context non-negative")
    sae = load_sae(path)
    table = checkpoint_table(path, sae, cfg.store)
    stats = scan(sae, table, cfg.tokens, cfg.examples, show)
    latents = choose_latents(stats, cfg.latents, cfg.seed)
    render = _token_renderer(table)
    sections = [_latent_html(j, stats, table, render, cfg.context) for j in latents]
    dead = int((stats.fires == 0).sum())
    head = (
        f"<h1>{html.escape(path.name)}</h1><p>{html.escape(sae.cfg.architecture)}, F = {sae.cfg.d_sae}, "
        f"table {html.escape(table.path)}; {stats.n:,} tokens scanned; {dead:,} latents never fired; "
        f"mean L0 {float(stats.fires.sum()) / stats.n:.1f}.</p>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(
        _PAGE.format(title=html.escape(path.name), body=head + "".join(sections)), encoding="utf-8"
    )
    tmp.replace(out)  # a page is either complete or absent
    return {"latents": latents, "tokens": stats.n, "dead": dead, "out": str(out)}


def _token_renderer(table: Table):
    """Token id → display string (the model's tokenizer when it loads offline, else `#id`)."""
    model = table.provenance.get("harvest", {}).get("model") or table.provenance.get("model_id")
    tokenizer = None
    if model and model != "synthetic":
        from vsae.harvest.models import load_tokenizer

        try:
            tokenizer = load_tokenizer(model)
        except VsaeError:
            tokenizer = None
    if tokenizer is None:
        return lambda ids: [f"#{i}" for i in ids]
    return lambda ids: [tokenizer.decode([int(i)]) for i in ids]


def _latent_html(j: int, stats: LatentStats, table: Table, render, context: int) -> str:
    density = int(stats.fires[j]) / stats.n
    mean = float(stats.abs_sum[j]) / max(1, int(stats.fires[j]))
    rows = [
        (float(v), int(r))
        for v, r in zip(stats.top_vals[:, j].tolist(), stats.top_rows[:, j].tolist(), strict=True)
        if v != 0
    ]
    examples = "".join(_example_html(v, r, table, render, context) for v, r in rows)
    return (
        f'<section id="latent-{j}"><h2>latent {j}</h2><p>fires on {100 * density:.3f}% of tokens; '
        f"mean |activation| when firing {mean:.3g}; max {abs(rows[0][0]) if rows else 0:.3g}</p>"
        f"{_histogram_svg(stats.hist[j])}<ol>{examples}</ol></section>"
    )


def _example_html(value: float, row: int, table: Table, render, context: int) -> str:
    _, window, pos = (int(v) for v in table.doc_pos(row, row + 1)[0])
    ids = table.group["contexts"][window]
    lo, hi = max(0, pos - context), min(len(ids), pos + context + 1)
    pieces = render(ids[lo:hi])
    spans = [
        f'<mark title="{value:.4g}">{html.escape(p)}</mark>' if lo + i == pos else html.escape(p)
        for i, p in enumerate(pieces)
    ]
    return f'<li><span class="act">{value:+.3g}</span> <code>{"".join(spans)}</code></li>'


def _histogram_svg(counts: torch.Tensor) -> str:
    """Log-spaced |activation| histogram as inline SVG bars (bin edges 1e-3 … 1e3)."""
    top = max(1, int(counts.max()))
    width = 6
    bars = "".join(
        f'<rect x="{i * width}" y="{40 - 40 * int(c) / top:.1f}" width="{width - 1}" height="{40 * int(c) / top:.1f}"/>'
        for i, c in enumerate(counts.tolist())
    )
    return f'<svg class="hist" width="{width * len(counts)}" height="40" role="img">{bars}</svg>'


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;}}
code{{white-space:pre-wrap;}} mark{{background:#fb4;}} .act{{font-variant-numeric:tabular-nums;}}
.hist rect{{fill:#48c;}} section{{border-top:1px solid #ccc;margin-top:1rem;}}</style></head>
<body>{body}</body></html>
"""
