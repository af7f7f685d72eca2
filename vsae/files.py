"""Small file-system rules every stage follows: a file is written whole or not at all, and an output
location is checked before the work that fills it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vsae.errors import VsaeError


def write_atomic(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, whatever happens mid-write (a kill, a full disk)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable_folder(folder: Path, what: str) -> None:
    """One line before any work if nothing can be written into `folder` (read-only, no permission, a file)."""
    folder = Path(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise VsaeError(f"cannot write {what} into {folder} ({exc.strerror}); use a writable copy") from exc


def check_output_file(path: Path, flag: str) -> None:
    """A file the command will write at the end: not a folder, and its folder exists and takes files."""
    path = Path(path)
    if path.is_dir():
        raise VsaeError(f"{flag} {path} is a folder; give a file path such as {path / 'results.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VsaeError(f"{flag} {path}: the folder {parent} does not exist")
    check_writable_folder(parent, path.name)
