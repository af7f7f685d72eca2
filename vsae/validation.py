"""Type and range checks shared by the config dataclasses: a value is checked where it enters, whichever
way it arrives (flag, --set, sweep file, resumed or loaded cfg.json)."""

from __future__ import annotations

import dataclasses
import math
import typing

from vsae.errors import VsaeError

_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _fits(value, annotation: str) -> bool:
    """Does `value` fit a field annotated (as a string) like `int`, `float | None`, `list[float]`, `tuple[...]`?"""
    options = [a.strip() for a in annotation.split("|")]
    for opt in options:
        if opt == "None" and value is None:
            return True
        base = opt.split("[", 1)[0]
        if base in ("list", "tuple") and isinstance(value, list | tuple):
            inner = opt[len(base) + 1 : -1].split(",")[0].strip() if "[" in opt else ""
            if not inner or all(_fits(v, inner) for v in value):
                return True
        if base == "dict" and isinstance(value, dict):
            return True
        kind = _SCALARS.get(base)
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if kind is str and isinstance(value, str):
            return True
    return False


def check_types(obj) -> None:
    """Every field of a dataclass instance holds a value of its annotated type (floats finite)."""
    for f in dataclasses.fields(obj):
        name, annotation, value = f.name, f.type, getattr(obj, f.name)
        if not isinstance(annotation, str):  # a module without postponed annotations
            annotation = typing.get_type_hints(type(obj))[name]
        if not _fits(value, str(annotation)):
            raise VsaeError(f"{name}={value!r} is not a valid {annotation}")
        if isinstance(value, float) and not math.isfinite(value):
            raise VsaeError(f"{name}={value!r} must be a finite number")
