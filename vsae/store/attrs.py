"""What a table's attributes must hold, so a damaged or half-finished table is named, never trained on.

A table's attributes live in its zarr.json. The writer sets them in two atomic writes (one zarr.json each):
everything a reader needs, then `complete: True` alone, so a kill can never leave a table marked complete
without its statistics. A store written before that rule (or damaged by hand) is caught here by name."""

from __future__ import annotations

from numbers import Real

# laid out before any shard is written (prepare_table)
LAYOUT = {
    "format": str,
    "format_version": int,
    "dtype": str,
    "chunk_tokens": int,
    "shard_tokens": int,
    "config": dict,
    "provenance": dict,
}
# written by TableWriter.finish, before the completion mark
FINISH = {
    "n_tokens": int,
    "n_windows": int,
    "n_train_chunks": int,
    "heldout_fraction": Real,
    "heldout_tokens": int,
    "stats": dict,
    "fingerprint": str,
}


def _bad(attrs: dict, name: str, kind: type) -> str | None:
    if name not in attrs:
        return f"lacks its {name!r} attribute"
    value = attrs[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return f"has a damaged {name!r} attribute ({value!r:.40})"
    return None


def layout_problem(attrs: dict) -> str | None:
    """What is wrong with a table's layout attributes (any table, partial or complete), or None."""
    if not isinstance(attrs, dict):
        return "has no attribute mapping"
    for name, kind in LAYOUT.items():
        if problem := _bad(attrs, name, kind):
            return problem
    return None


def finish_problem(attrs: dict) -> str | None:
    """What the finish of a table marked complete lacks or has damaged, or None (layout checked first)."""
    for name, kind in FINISH.items():
        if problem := _bad(attrs, name, kind):
            return problem
    stats = attrs["stats"]
    for key in ("mean_sq_norm", "mean_norm_sq_of_mean"):
        if not isinstance(stats.get(key), Real):
            return f"has a damaged 'stats' attribute (no {key})"
    if not 0 < attrs["n_train_chunks"] or attrs["n_tokens"] < 1:
        return "has damaged token counts (n_tokens, n_train_chunks)"
    return None


def table_problem(attrs: dict) -> str | None:
    """What is wrong with a table's attributes and what to do about it, or None when they are whole.
    A lost finish is written again by the command that wrote the table; damaged layout needs --force."""
    if problem := layout_problem(attrs):
        return f"{problem}; redo it with --force"
    if attrs.get("complete") and (problem := finish_problem(attrs)):
        return (
            f"{problem}; re-run the command that wrote it (a harvest or `vsae synthetic` finishes it "
            "again), or redo it with --force"
        )
    return None
