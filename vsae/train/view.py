"""The run in view: a live per-SAE metrics table under the training bar, and the sweep's summary at the end."""

from __future__ import annotations

import math

from rich.table import Table

# (metrics.jsonl key, column title, format); KL only appears when some SAE logs it
COLUMNS = [
    ("loss", "loss", "{:.4g}"),
    ("fve", "FVE", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("frac_dead", "dead", "{:.3f}"),
    ("raw/kl", "KL", "{:.4g}"),
]


def _cell(m: dict, key: str, fmt: str) -> str:
    value = m.get(key)
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def live_table(latest: dict[str, dict]) -> Table:
    """One row per SAE with its last logged training-batch metrics (training rule, deterministic code)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("SAE")
    table.add_column("step", justify="right")
    columns = [c for c in COLUMNS if any(c[0] in m for m in latest.values())]
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for name, m in latest.items():
        table.add_row(name, str(m.get("step", "—")), *(_cell(m, key, fmt) for key, _, fmt in columns))
    return table


def summary_table(latest: dict[str, dict], seconds: dict[str, float], tokens: dict[str, int]) -> Table:
    """The sweep at its end: one row per SAE with its last training-batch FVE, L0 and dead fraction, and
    the tokens per second of its own steps (the shared data pass not counted)."""
    table = Table(title="trained (last logged training batch; `vsae eval` for held-out numbers)")
    for title in ("SAE", "FVE", "L0", "dead", "own tok/s"):
        table.add_column(title, justify="left" if title == "SAE" else "right")
    for name, m in latest.items():
        rate = tokens[name] / seconds[name] if seconds.get(name) else float("nan")
        table.add_row(
            name,
            _cell(m, "fve", "{:.4f}"),
            _cell(m, "l0", "{:.1f}"),
            _cell(m, "frac_dead", "{:.3f}"),
            _cell({"rate": rate}, "rate", "{:,.0f}"),
        )
    return table
