"""`vsae info`: what a store holds and what it costs on disk."""

from __future__ import annotations

import fsspec
from rich.table import Table as RichTable

from vsae.errors import VsaeError
from vsae.store.attrs import table_problem
from vsae.store.layout import open_root
from vsae.store.table import list_tables, metadata_errors
from vsae.store.verify import check_present, verify_table
from vsae.store.writer import committed_tokens


def _bytes_on_disk(store: str, path: str) -> int:
    fs, root = fsspec.core.url_to_fs(store)
    return int(fs.du(f"{root.rstrip('/')}/{path}", total=True))


def _damage(group, path: str, verify: bool) -> tuple[str | None, int | None]:
    """(what is wrong or None, objects decoded): presence always, every checksum with verify."""
    try:
        if verify:
            return None, verify_table(group, path)
        check_present(group, path)
    except VsaeError as exc:
        return str(exc).split(": ", 1)[1], None
    return None, None


def _config(attrs: dict) -> dict:
    config = attrs.get("config")
    return config if isinstance(config, dict) else {}


def describe(store: str, verify: bool = False) -> list[dict]:
    """One dict per table: identity, size, dtype, split, provenance, damage (verify: every checksum)."""
    root = open_root(store, "r")
    rows = []
    for path in list_tables(root):
        with metadata_errors(root):
            rows.append(_describe_table(store, root[path], path, verify))
    return rows


def _describe_table(store: str, group, path: str, verify: bool) -> dict:
    """One table's row; attributes that cannot be trusted show as damage, never as a traceback."""
    attrs = dict(group.attrs)
    complete = bool(attrs.get("complete"))
    problem = table_problem(attrs)
    if problem:  # the attributes cannot be trusted: say so, and show what can still be read
        damage, checked = problem, None
    else:
        damage, checked = _damage(group, path, verify) if complete else (None, None)
    n = attrs["n_tokens"] if complete and not problem else committed_tokens(group)
    d = group["activations"].shape[1]
    on_disk = _bytes_on_disk(store, path)
    fp32 = n * d * 4
    prov = attrs.get("provenance") if isinstance(attrs.get("provenance"), dict) else {}
    return {
        "table": path,
        "model": prov.get("model_id"),
        "site": prov.get("site"),
        "layer": prov.get("layer"),
        "hook_name": prov.get("hook_name"),
        "complete": complete,
        "damage": damage,
        "objects_verified": checked,
        "tokens": int(n),
        "d": int(d),
        "dtype": attrs.get("dtype"),
        "bytes_on_disk": on_disk,
        "bytes_per_token": on_disk / n if n else None,
        "compression_vs_fp32": fp32 / on_disk if on_disk else None,
        "heldout_fraction": None if problem else attrs.get("heldout_fraction"),
        "heldout_tokens": None if problem else attrs.get("heldout_tokens"),
        "progress": None if complete else {"tokens": n, "of": _config(attrs).get("tokens", 0)},
        "config": _config(attrs),
        "provenance": prov,
    }


def info_table(store: str, rows: list[dict]) -> RichTable:
    """One row per field, one column per table (readable at 80 columns with a few tables)."""
    table = RichTable(title=f"store {store}")
    table.add_column("field")
    for r in rows:
        table.add_column(r["table"], justify="right", overflow="fold")
    fields = [
        ("model", lambda r: str(r["model"])),
        ("hook", lambda r: str(r["hook_name"])),
        (
            "status",
            lambda r: (
                f"damaged: {r['damage']}"
                if r["damage"]
                else "complete"
                + (f" (verified {r['objects_verified']} objects)" if r["objects_verified"] else "")
                if r["complete"]
                else f"partial ({r['tokens']:,} of {r['progress']['of']:,} tokens)"
            ),
        ),
        ("tokens", lambda r: f"{r['tokens']:,}"),
        ("held out", lambda r: f"{r['heldout_tokens'] or 0:,}"),
        ("d", lambda r: str(r["d"])),
        ("dtype", lambda r: str(r["dtype"])),
        ("on disk", lambda r: f"{r['bytes_on_disk'] / 2**20:.1f} MiB"),
        ("bytes/token", lambda r: f"{r['bytes_per_token'] or 0:.0f}"),
        ("vs fp32", lambda r: f"{r['compression_vs_fp32'] or 0:.2f}×"),
        ("dataset", lambda r: str((r["config"] or {}).get("dataset", (r["config"] or {}).get("kind")))),
        ("ctx_len", lambda r: str((r["config"] or {}).get("ctx_len"))),
    ]
    for name, fmt in fields:
        table.add_row(name, *(fmt(r) for r in rows))
    return table
