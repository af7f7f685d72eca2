"""HTML of the dashboard: an index (sortable feature table, density histogram, 2-D decoder map) and one
self-contained page per chosen feature. No external assets: every page works offline."""

from __future__ import annotations

import html
import math

from vsae.dashboard.contexts import Context

GENERATOR = "vsae-dashboard"  # in every page's head: a folder whose index.html has it may be rewritten
GLYPHS = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def token_text(piece: str) -> str:
    """A token as shown: newlines, tabs and all-space tokens as visible glyphs, so nothing renders empty."""
    shown = "".join(GLYPHS.get(c, c) for c in piece)
    if shown.strip() == "":
        shown = "␣" * max(1, len(shown))
    return shown


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "—"


# ---------------------------------------------------------------- charts (inline SVG with labelled axes)
def bar_chart(
    counts: list[int], labels: list[tuple[int, str]], x_title: str, y_title: str, w=360, h=150
) -> str:
    """Bars for `counts` with tick labels at (bar index, text) and titled axes."""
    left, bottom, top_pad = 46, 34, 8
    pw, ph = w - left - 8, h - bottom - top_pad
    peak = max(1, max(counts, default=1))
    bw = pw / max(1, len(counts))
    bars = "".join(
        f'<rect x="{left + i * bw:.1f}" y="{top_pad + ph * (1 - c / peak):.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{ph * c / peak:.1f}"><title>{c:,}</title></rect>'
        for i, c in enumerate(counts)
        if c
    )
    ticks = "".join(
        f'<text x="{left + (i + 0.5) * bw:.1f}" y="{top_pad + ph + 14}" text-anchor="middle">{html.escape(t)}</text>'
        for i, t in labels
    )
    axes = (
        f'<line x1="{left}" y1="{top_pad + ph}" x2="{left + pw}" y2="{top_pad + ph}"/>'
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + ph}"/>'
        f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end">{peak:,}</text>'
        f'<text x="{left - 4}" y="{top_pad + ph}" text-anchor="end">0</text>'
        f'<text x="{left + pw / 2}" y="{h - 2}" text-anchor="middle" class="axis">{html.escape(x_title)}</text>'
        f'<text transform="translate(10 {top_pad + ph / 2}) rotate(-90)" text-anchor="middle" class="axis">'
        f"{html.escape(y_title)}</text>"
    )
    return f'<svg class="chart" width="{w}" height="{h}" role="img">{axes}{bars}{ticks}</svg>'


def activation_histogram(counts: list[int], edges: list[float]) -> str:
    """A latent's |activation| histogram over its non-empty range of log bins (10 per decade)."""
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return "<p>never fired in the scanned tokens</p>"
    lo, hi = nz[0], nz[-1] + 1
    labels = []
    for i in range(lo, hi):  # ticks at 1, 2 and 5 × 10^k (bin upper edges are 10^(m/10))
        upper = edges[min(i, len(edges) - 1)]
        mantissa = upper / 10 ** math.floor(math.log10(upper) + 1e-9)
        if min(abs(mantissa - m) for m in (1, 2, 5)) < 0.02 and hi - lo <= 40 or abs(mantissa - 1) < 0.02:
            labels.append((i - lo, f"{upper:.2g}"))
    return bar_chart(counts[lo:hi], labels, "|activation| (log scale, bin upper edges)", "tokens")


def density_histogram(density: list[float]) -> str:
    """Latents by log10 firing density, 4 bins per decade from 1e-6, with the dead ones in their own bar."""
    bins = [0] * 25
    dead = 0
    for d in density:
        if d <= 0:
            dead += 1
        else:
            bins[min(24, max(0, int((math.log10(d) + 6) * 4)))] += 1
    labels = [(0, "dead")] + [(2 + 4 * k, f"1e-{6 - k}" if k < 6 else "1") for k in range(1, 7)]
    return bar_chart(
        [dead, 0, *bins], labels, "firing density (fraction of tokens, log scale)", "latents", w=520
    )


def decoder_map_svg(xy: list[tuple[float, float]], density: list[float], pages: set[int], size=560) -> str:
    """All decoder directions on their first two principal components, coloured by density percentile among
    the live latents (blue rarest → red densest, grey dead); points with a feature page link to it and are
    drawn last, so no other point covers them. Wheel zooms, drag pans."""
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (size - 20) / max(x1 - x0, 1e-9), (size - 20) / max(y1 - y0, 1e-9)
    live = sorted(d for d in density if d > 0)
    rank = {d: i / max(1, len(live) - 1) for i, d in enumerate(live)}  # colour by density percentile
    plain, linked = [], []
    for j, ((x, y), d) in enumerate(zip(xy, density, strict=True)):
        fill = f"hsl({240 - 240 * rank[d]:.0f},75%,48%)" if d > 0 else "#bbb"
        cx, cy = 10 + (x - x0) * sx, size - 10 - (y - y0) * sy
        tip = f"<title>latent {j} · density {d:.3g}{' · open its page' if j in pages else ''}</title>"
        if j in pages:
            dot = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{fill}">{tip}</circle>'
            linked.append(f'<a href="features/{j}.html" class="page">{dot}</a>')
        else:
            plain.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2" fill="{fill}">{tip}</circle>')
    return (
        f'<svg id="map" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img">'
        f'<rect width="{size}" height="{size}" fill="#fafafa"/>{"".join(plain)}{"".join(linked)}</svg>'
    )


# ---------------------------------------------------------------- examples
def context_html(ctx: Context, decode, scale: float) -> str:
    """One line: the tokens left of the peak (right-aligned), the peak, the tokens right of it; every token
    shaded by the latent's activation, with token and value on hover."""

    def span(i: int) -> str:
        piece = decode(ctx.ids[i])
        a = ctx.acts[i]
        shown = html.escape(token_text(piece))
        tip = html.escape(f"{piece!r} · {'special (not stored)' if a is None else f'{a:.4g}'}")
        if a is None:
            return f'<span class="t sp" title="{tip}">{shown}</span>'
        alpha = min(1.0, abs(a) / scale) if scale > 0 else 0.0
        colour = "255,140,0" if a >= 0 else "40,120,255"
        style = f' style="background:rgba({colour},{alpha:.2f})"' if alpha > 0.005 else ""
        cls = "t peak" if i == ctx.peak else "t"
        return f'<span class="{cls}"{style} title="{tip}">{shown}</span>'

    left = "".join(span(i) for i in range(ctx.peak))
    right = "".join(span(i) for i in range(ctx.peak + 1, len(ctx.ids)))
    value = ctx.acts[ctx.peak] or 0.0
    return (
        f'<div class="ex"><span class="v">{value:+.3g}</span><span class="l">{left}</span>'
        f'{span(ctx.peak)}<span class="r">{right}</span></div>'
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;color:#222}
a{color:#1a5fb4} h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem} h3{font-size:.95rem}
.meta{color:#555} .chart rect{fill:#4a7fc1} .chart line{stroke:#333} .chart text{font-size:10px;fill:#333}
.chart .axis{font-size:11px;fill:#555}
.ex{display:grid;grid-template-columns:4.5rem minmax(0,1fr) auto minmax(0,1fr);font-family:ui-monospace,monospace;
font-size:13px;line-height:1.6;border-bottom:1px solid #eee}
.ex .v{color:#555;font-variant-numeric:tabular-nums}
.ex .l{display:flex;justify-content:flex-end;overflow:hidden;white-space:pre}
.ex .r{display:flex;overflow:hidden;white-space:pre}
.t{flex-shrink:0;white-space:pre;border-radius:2px} .t.peak{outline:2px solid #c60;font-weight:600}
.t.sp{color:#aaa}
.cols{display:flex;gap:2.5rem;flex-wrap:wrap} .tok{font-family:ui-monospace,monospace;background:#f3f3f3;padding:0 3px}
table{border-collapse:collapse;font-size:13px} th,td{padding:2px 10px;text-align:right}
th{cursor:pointer;position:sticky;top:0;background:#fff;border-bottom:1px solid #999} td:first-child,th:first-child{text-align:left}
tr:target{background:#ffe9b3}
#map circle{stroke:#0003} #map a.page circle{stroke:#000}
nav{margin-bottom:1rem}
"""

SORT_JS = """
document.querySelectorAll('#features th').forEach((th, i) => th.addEventListener('click', () => {
  const body = document.querySelector('#features tbody');
  const dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
  th.dataset.dir = dir;
  const rows = [...body.rows];
  rows.sort((a, b) => (parseFloat(a.cells[i].dataset.v) - parseFloat(b.cells[i].dataset.v)) * (dir === 'asc' ? 1 : -1));
  body.append(...rows);
}));
const map = document.getElementById('map');
if (map) {
  let [x, y, w, h] = map.getAttribute('viewBox').split(' ').map(Number);
  const set = () => map.setAttribute('viewBox', `${x} ${y} ${w} ${h}`);
  map.addEventListener('wheel', e => {
    e.preventDefault();
    const k = e.deltaY > 0 ? 1.2 : 1 / 1.2, r = map.getBoundingClientRect();
    const px = x + (e.clientX - r.left) / r.width * w, py = y + (e.clientY - r.top) / r.height * h;
    x = px - (px - x) * k; y = py - (py - y) * k; w *= k; h *= k; set();
  }, {passive: false});
  let drag = null;
  map.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY]; });
  window.addEventListener('mouseup', () => { drag = null; });
  map.addEventListener('mousemove', e => {
    if (!drag) return;
    const r = map.getBoundingClientRect();
    x -= (e.clientX - drag[0]) / r.width * w; y -= (e.clientY - drag[1]) / r.height * h;
    drag = [e.clientX, e.clientY]; set();
  });
}
"""


def page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}{js}</body></html>\n"
    )
