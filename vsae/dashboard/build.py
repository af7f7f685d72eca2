"""`vsae viz`: scan once, choose the latents that get pages, write index.html and features/<j>.html."""

from __future__ import annotations

import html
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsae.archs.checkpoint import load_sae
from vsae.archs.sae import SAE
from vsae.dashboard import render
from vsae.dashboard.contexts import contexts
from vsae.dashboard.directions import decoder_map, final_norm_and_unembedding, logit_effects, neighbours
from vsae.dashboard.scan import EDGES, N_BINS, FeatureStats, scan
from vsae.errors import VsaeError
from vsae.evaluate.core import checkpoint_table
from vsae.store.faults import failpoint
from vsae.store.table import Table

SELECTIONS = ("top", "random", "dense")


@dataclass
class DashboardConfig:
    """Options of `vsae viz`."""

    store: str | None = None
    """Store holding the checkpoint's table (default: the store it was trained on)."""
    split: str = "heldout"
    """Tokens to scan: heldout (the table's held-out tail) or train (from the start of the table)."""
    tokens: int = 65_536
    """Tokens to scan (all statistics and examples come from this one pass)."""
    latents: int = 48
    """Feature pages to write (with --select top, random or dense)."""
    select: str = "top"
    """Which latents get pages: top (strongest max activation among those firing on ≤ 1% of tokens), random,
    dense (most frequent first) or ids=3,17,… ."""
    examples: int = 10
    """Top-activating examples per feature."""
    per_bin: int = 2
    """Random examples kept per 0.1-decade activation bin (the quantile examples are drawn from them)."""
    context: int = 12
    """Tokens shown on each side of the example token."""
    seed: int = 0
    """Seed of the random choices (examples per bin, --select random)."""

    def validate(self) -> None:
        if self.split not in ("heldout", "train"):
            raise VsaeError(f"--split must be heldout or train (got {self.split!r})")
        if min(self.tokens, self.latents, self.examples, self.per_bin) < 1 or self.context < 0:
            raise VsaeError(
                "--tokens, --latents, --examples and --per-bin must be positive and --context non-negative"
            )
        if self.select not in SELECTIONS and not self.select.startswith("ids="):
            raise VsaeError(f"--select must be top, random, dense or ids=3,17,… (got {self.select!r})")


def scan_range(table: Table, cfg: DashboardConfig) -> tuple[int, int]:
    if cfg.split == "train":
        return 0, min(cfg.tokens, table.n_train)
    if table.n_train >= table.n_tokens:
        raise VsaeError(f"table {table.path} has no held-out tokens; use --split train")
    return table.n_train, min(table.n_tokens, table.n_train + cfg.tokens)


def choose_latents(stats: FeatureStats, sae: SAE, cfg: DashboardConfig) -> list[int]:
    """The latents that get pages, in the order the index lists them."""
    if cfg.select.startswith("ids="):
        return requested_ids(cfg.select, sae.cfg.d_sae)
    alive = torch.nonzero(stats.fires > 0).flatten()
    if cfg.select == "dense":
        return alive[stats.fires[alive].argsort(descending=True, stable=True)][: cfg.latents].tolist()
    if cfg.select == "random":
        rng = np.random.default_rng(cfg.seed)
        pick = rng.choice(len(alive), size=min(cfg.latents, len(alive)), replace=False)
        return sorted(alive[torch.from_numpy(pick)].tolist())
    # top: latents that fire rarely enough to be specific, by the largest decoded contribution |f|·‖d‖
    strength = stats.abs_max * sae.W_dec.detach().norm(dim=1)
    sparse = alive[stats.density[alive] <= 0.01]
    ranked = sparse[strength[sparse].argsort(descending=True, stable=True)].tolist()
    rest = [j for j in alive[stats.fires[alive].argsort(stable=True)].tolist() if j not in set(ranked)]
    return (ranked + rest)[: cfg.latents]


def requested_ids(select: str, f_dim: int) -> list[int]:
    """`ids=7,3` → [7, 3] (order kept, repeats dropped); a bad or out-of-range id is a one-line error."""
    try:
        ids = [int(v) for v in select[4:].split(",") if v.strip()]
    except ValueError as exc:
        raise VsaeError(f"--select ids= takes comma-separated integers (got {select!r})") from exc
    bad = [j for j in ids if not 0 <= j < f_dim]
    if bad or not ids:
        raise VsaeError(f"--select ids: latent(s) {bad or ids} out of range 0..{f_dim - 1}")
    return list(dict.fromkeys(ids))


def quantile_groups(stats: FeatureStats, j: int, groups: int = 3, per_group: int = 4):
    """Examples from `groups` activation ranges that each hold an equal share of the latent's firings:
    [(label, [(row, value), ...])], the rows drawn from the per-bin random samples."""
    counts = stats.hist[j].tolist()
    total = sum(counts)
    if total == 0:
        return []
    cum, out, bins = 0, [], [[] for _ in range(groups)]
    for b, c in enumerate(counts):
        if c:
            g = min(groups - 1, int(groups * (cum + c / 2) / total))
            bins[g].append(b)
            cum += c
    edges = [0.0, *EDGES.tolist(), math.inf]
    for g, members in enumerate(bins):
        if not members:
            continue
        picks = [
            (int(r), float(v))
            for b in members
            for r, v in zip(stats.sample_rows[j, b].tolist(), stats.sample_vals[j, b].tolist(), strict=True)
            if r >= 0
        ]
        step = max(1, len(picks) // per_group)
        label = (
            f"{100 * g / groups:.0f}–{100 * (g + 1) / groups:.0f}% of firings: |activation| "
            f"{edges[members[0]]:.3g} to {edges[members[-1] + 1]:.3g}"
        )
        out.append((label, picks[::step][:per_group]))
    return out


PAGE = re.compile(r"\d+\.html")


def build_dashboard(path: Path, out: Path, cfg: DashboardConfig, show: bool = True) -> dict:
    """Scan the checkpoint's table once and write the dashboard folder `out` (replaced as a whole)."""
    cfg.validate()
    _check_out(out)
    _clean_interrupted(out)
    sae = load_sae(path)
    if cfg.select.startswith("ids="):
        requested_ids(cfg.select, sae.cfg.d_sae)  # before the scan: a bad id costs no work
    table = checkpoint_table(path, sae, cfg.store)
    start, stop = scan_range(table, cfg)
    stats = scan(sae, table, start, stop, cfg.examples, cfg.per_bin, cfg.seed, show)
    chosen = choose_latents(stats, sae, cfg)
    decode, unembed = _model_parts(table)
    w_dec = sae.W_dec.detach()
    near = neighbours(w_dec, chosen)
    effects = logit_effects(w_dec, chosen, unembed) if unembed is not None else {}
    wanted = []
    quantiles = {j: quantile_groups(stats, j) for j in chosen}
    for j in chosen:
        wanted += [
            (int(r), j) for v, r in zip(stats.top_vals[:, j], stats.top_rows[:, j], strict=True) if v != 0
        ]
        wanted += [(r, j) for _, picks in quantiles[j] for r, _ in picks]
    ctx = contexts(sae, table, sorted(set(wanted)), cfg.context)
    pages = set(chosen)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "features").mkdir()
        for j in chosen:
            body = _feature_body(
                j, sae, stats, ctx, quantiles[j], near[j], effects.get(j), unembed, decode, pages
            )
            (tmp / "features" / f"{j}.html").write_text(render.page(f"latent {j}", body), encoding="utf-8")
            failpoint("dashboard-page")
        index = _index_body(path, sae, table, stats, chosen, cfg)
        (tmp / "index.html").write_text(
            render.page(f"{path.name} features", index, render.SORT_JS), encoding="utf-8"
        )
        old = out.with_name(f".{out.name}.old") if out.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            out.replace(old)  # set aside, not deleted, until the new folder is in place
            failpoint("dashboard-swap")
        tmp.replace(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dead = int((stats.fires == 0).sum())
    return {"latents": chosen, "tokens": stats.n, "dead": dead, "out": str(out)}


def _check_out(out: Path) -> None:
    """Only an absent folder or an earlier dashboard may be (re)written: never a folder with other files."""
    if not out.exists():
        return
    if not (out.is_dir() and render.GENERATOR in _head(out / "index.html")):
        raise VsaeError(f"{out} exists and is not a vsae dashboard; choose another --out")
    foreign = _foreign_entries(out)
    if foreign:
        raise VsaeError(
            f"{out} holds files vsae did not write ({foreign[0]}"
            + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
            + "); move them out or choose another --out"
        )


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of a dashboard folder that vsae does not write: anything but index.html and
    features/<latent>.html."""
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.name == "index.html" and entry.is_file():
            continue
        if entry.name == "features" and entry.is_dir() and not entry.is_symlink():
            out += [
                f"features/{p.name}"
                for p in sorted(entry.iterdir())
                if not (p.is_file() and PAGE.fullmatch(p.name))
            ]
            continue
        out.append(entry.name + ("/" if entry.is_dir() else ""))
    return out


def _clean_interrupted(out: Path) -> None:
    """What a killed run of its own left beside `out`: a half-written `.<name>.XXXX` folder (removed) and
    the previous dashboard set aside as `.<name>.old` (put back when `out` is missing, else removed).
    Only folders holding nothing but dashboard files are touched."""
    if not out.parent.is_dir():
        return
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists() and not _foreign_entries(old):
        old.replace(out)
    for left in out.parent.glob(f".{out.name}.*"):
        if left.is_dir() and not left.is_symlink() and not _foreign_entries(left):
            shutil.rmtree(left)


def _head(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:600]
    except OSError:
        return ""


def _model_parts(table: Table):
    """Token decoder (the tokenizer, else `#id`) and the model's unembedding (None without a model)."""
    model = table.provenance.get("harvest", {}).get("model") or table.provenance.get("model_id")
    if not model or model == "synthetic":
        return (lambda i: f"#{i}"), None
    from vsae.harvest.models import load_model

    loaded = load_model(model)
    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            text = loaded.tokenizer.decode([int(i)])
            # a byte-level piece of a multi-byte character decodes to U+FFFD alone: show the raw token instead
            cache[i] = loaded.tokenizer.convert_ids_to_tokens(int(i)) if "\ufffd" in text else text
        return cache[i]

    return decode, final_norm_and_unembedding(loaded.model)


def _feature_body(j, sae, stats, ctx, quantiles, near, effects, unembed, decode, pages) -> str:
    density = float(stats.density[j])
    scale = float(stats.abs_max[j])
    facts = [
        f"fires on {100 * density:.3g}% of {stats.n:,} tokens",
        f"mean |activation| when firing {float(stats.mean_abs[j]):.3g}",
        f"max {scale:.3g}",
        f"decoder norm {float(sae.W_dec[j].detach().norm()):.3g}",
    ]
    if stats.sigma_mean is not None:
        facts.append(f"posterior σ when firing {float(stats.sigma_mean[j]):.3g}")
    top = [
        (int(r), float(v)) for v, r in zip(stats.top_vals[:, j], stats.top_rows[:, j], strict=True) if v != 0
    ]
    parts = [
        '<nav><a href="../index.html">← all features</a></nav>',
        f'<h1 id="latent-{j}">latent {j}</h1><p class="meta">{"; ".join(facts)}</p>',
        render.activation_histogram(stats.hist[j].tolist(), EDGES.tolist()),
    ]
    if effects is not None:
        up, down = effects
        row = lambda items: "".join(  # noqa: E731
            f'<li><span class="tok">{html.escape(render.token_text(decode(t)))}</span> {v:+.3g}</li>'
            for t, v in items
        )
        parts.append(
            f'<h2>Logit effects</h2><p class="meta">{html.escape(unembed.note)}.</p><div class="cols">'
            f"<div><b>promotes</b><ol>{row(up)}</ol></div><div><b>suppresses</b><ol>{row(down)}</ol></div></div>"
        )
    links = "".join(
        f'<li><a href="{f"{k}.html" if k in pages else f"../index.html#latent-{k}"}">latent {k}</a> cos {c:.3f}</li>'
        for k, c in near
    )
    parts.append(f"<h2>Nearest decoder directions</h2><ol>{links}</ol>")
    parts.append(
        "<h2>Top activations</h2>" + "".join(render.context_html(ctx[(r, j)], decode, scale) for r, _ in top)
    )
    parts.append("<h2>Examples across the activation range</h2>")
    for label, picks in quantiles:
        parts.append(f'<h3 class="meta">{html.escape(label)}</h3>')
        parts += [render.context_html(ctx[(r, j)], decode, scale) for r, _ in picks]
    return "".join(parts)


def _index_body(path: Path, sae: SAE, table: Table, stats: FeatureStats, chosen: list[int], cfg) -> str:
    density = stats.density.tolist()
    dead = sum(1 for d in density if d == 0)
    pages = set(chosen)
    xy = decoder_map(sae.W_dec.detach()).tolist()
    sigma = stats.sigma_mean
    head = ["latent", "density", "mean |act|", "max |act|"] + (["σ when firing"] if sigma is not None else [])
    rows = []
    for j in range(sae.cfg.d_sae):
        name = f'<a href="features/{j}.html">{j}</a>' if j in pages else str(j)
        values = [float(stats.density[j]), float(stats.mean_abs[j]), float(stats.abs_max[j])]
        values += [float(sigma[j])] if sigma is not None else []
        cells = "".join(f'<td data-v="{v}">{render._fmt(v)}</td>' for v in values)
        rows.append(f'<tr id="latent-{j}"><td data-v="{j}">{name}</td>{cells}</tr>')
    listed = ", ".join(f'<a href="features/{j}.html">{j}</a>' for j in chosen)
    return (
        f'<h1>{html.escape(path.name)}</h1><p class="meta">{html.escape(sae.cfg.architecture)}, F = '
        f"{sae.cfg.d_sae:,}; {stats.n:,} {cfg.split} tokens of {html.escape(table.path)} scanned once; "
        f"{dead:,} of {sae.cfg.d_sae:,} latents never fired; mean L0 {float(stats.fires.sum()) / stats.n:.1f}.</p>"
        f"<h2>Feature pages ({len(chosen)}, --select {html.escape(cfg.select)})</h2><p>{listed}</p>"
        f"<h2>Firing density of all latents</h2>{render.density_histogram(density)}"
        f'<h2>Decoder directions (PCA)</h2><p class="meta">Each point is a latent\'s unit decoder direction '
        f"on the first two principal components, coloured by density percentile from blue (rarest) to red "
        f"(densest), grey = dead; "
        f"larger outlined points have pages. Wheel to zoom, drag to pan.</p>"
        f"{render.decoder_map_svg(xy, density, pages)}"
        f'<h2>All latents</h2><p class="meta">Click a column to sort.</p><table id="features"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


__all__ = ["DashboardConfig", "build_dashboard", "choose_latents", "N_BINS"]
