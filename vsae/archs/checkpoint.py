"""Checkpoints (docs/architectures.md): cfg.json + sae.safetensors in raw space, written atomically; raw-space
conversion and its inverse driven by each tensor's rule."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vsae.archs.config import SAEConfig
from vsae.archs.sae import SAE
from vsae.errors import VsaeError
from vsae.store.faults import failpoint

FORMAT = "vsae-sae"
FORMAT_VERSION = 1


def convert_space(model: SAE, c: float, to: str) -> SAE:
    """A copy of `model` in `to` space ('raw' or 'normalized'); the input is never modified."""
    if model.space == to:
        return copy.deepcopy(model)
    sign = 1 if to == "raw" else -1
    out = copy.deepcopy(model)
    ops = {
        "same": lambda t: t,
        "mul_c": lambda t: t * c**sign,
        "div_c": lambda t: t / c**sign,
        "log_c": lambda t: t + sign * 2 * math.log(c),
    }
    with torch.no_grad():
        for name, (raw_rule, _) in model.tensor_rules().items():
            getattr(out, name).copy_(ops[raw_rule](getattr(model, name)))
    out.space = to
    return out


def atomic_dir(target: Path):
    """Context manager: write into a temp folder beside `target`, then swap it into place. Every entry of
    the folder it replaces that the new one does not hold (metrics, intermediate checkpoints, a user's
    notes) moves over, so only the files just rewritten are replaced and nothing else is ever deleted."""

    class _Swap:
        def __enter__(self):
            self.tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if target.exists():
                target.rename(old)
            self.tmp.rename(target)
            if old.exists():
                for entry in old.iterdir():
                    if not (target / entry.name).exists():
                        entry.rename(target / entry.name)
                shutil.rmtree(old, ignore_errors=True)  # only the replaced copies of the new files remain
            return False

    return _Swap()


def write_checkpoint(
    folder: Path, model: SAE, c: float, meta: dict, trainer_state: dict | None = None
) -> None:
    """Save a training-space model as a raw-space checkpoint (+ optional exact-resume state)."""
    raw = convert_space(model, c, "raw")
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.cfg.architecture,
        "d_in": model.cfg.d_in,
        "d_sae": model.cfg.d_sae,
        "model": model.cfg.to_dict(),
        "norm_factor": c,
        "norm_factor_definition": "sqrt(mean ||x||^2)",
        "parameter_space": "raw",
        **meta,
    }
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(Path(folder)) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in raw.state_dict().items()}, tmp / "sae.safetensors"
        )
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2, default=_jsonable))
        failpoint("checkpoint_write")  # crash tests: kill or ENOSPC half-way through a checkpoint
        if trainer_state is not None:
            _torch_save(trainer_state, tmp / "trainer_state.pt")


def _torch_save(obj, path: Path) -> None:
    """torch.save, with a failed write (torch reports a full disk as a RuntimeError) as the OSError it is."""
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        full = shutil.disk_usage(path.parent).free < 2**20
        reason = "No space left on device" if full else str(exc).splitlines()[0]
        raise OSError(errno.ENOSPC if full else errno.EIO, reason, str(path)) from exc


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_cfg(path: str | Path) -> dict:
    folder = Path(path)
    cfg_file = folder / "cfg.json"
    if not cfg_file.exists():
        raise VsaeError(
            f"{folder} is not a vsae checkpoint (no cfg.json); pass a folder written by `vsae train`"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VsaeError(
            f"{cfg_file} is not valid JSON ({type(exc).__name__}); the checkpoint is damaged"
        ) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise VsaeError(f"{cfg_file} is not a vsae checkpoint cfg.json (format={found!r})")
    return cfg


def load_sae(path: str | Path, space: str = "raw") -> SAE:
    """The checkpoint's model exactly as stored (raw), or its training-space copy (`normalized`)."""
    cfg = read_cfg(path)
    if not isinstance(cfg.get("model"), dict):
        raise VsaeError(f"{path}/cfg.json has no 'model' block; the checkpoint is damaged")
    model = SAE(SAEConfig.from_dict(cfg["model"]))
    weights = Path(path) / "sae.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise VsaeError(
            f"{weights} cannot be read ({type(exc).__name__}); the checkpoint is damaged"
        ) from exc
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise VsaeError(f"{path}/sae.safetensors does not match its cfg.json (tensors {sorted(missing)})")
    model.load_state_dict(state)
    model.space = "raw"
    return model if space == "raw" else convert_space(model, cfg["norm_factor"], space)
