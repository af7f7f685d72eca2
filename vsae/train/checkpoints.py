"""What a run leaves on disk: metrics.jsonl, intermediate and final checkpoints with provenance, and the
newest complete checkpoint a resume continues from."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

import vsae
from vsae.archs.checkpoint import read_cfg, write_checkpoint
from vsae.distributed import World
from vsae.errors import VsaeError
from vsae.files import write_atomic
from vsae.store.reader import ShuffledBatches
from vsae.store.table import Table
from vsae.train.run import SAERun


def drop_unsaved_run(folder: Path) -> None:
    """A fresh run that failed before its first checkpoint leaves nothing behind (its log would be taken
    for a run's); a folder holding anything else, or any checkpoint, is left as it is."""
    if (folder / "cfg.json").exists() or any((folder / "checkpoints").glob("step_*")):
        return
    (folder / "metrics.jsonl").unlink(missing_ok=True)
    for empty in (folder / "checkpoints", folder):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


def dump_rank_state(runs: list[SAERun], reader: ShuffledBatches, world: World) -> None:
    """VSAE_RANK_STATE_DIR=dir saves every rank's trainer state (to check that ranks agree)."""
    folder = os.environ.get("VSAE_RANK_STATE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for run in runs:
            torch.save(
                run.trainer_state(reader.state_dict()), Path(folder) / f"{run.out.name}.rank{world.rank}.pt"
            )


def provenance_of(table: Table, store: str) -> dict:
    p = table.provenance
    local = "://" not in store
    return {
        "store": str(Path(store).resolve()) if local else store,
        "model_id": p["model_id"],
        "layer": p["layer"],
        "site": p["site"],
        "hook_name": p["hook_name"],
        "store_table": table.path,
        "store_fingerprint": table.fingerprint(),
        "package_version": vsae.__version__,
        "git_commit": _git_commit(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "ctx_len": table.attrs["config"]["ctx_len"],
        "dataset": table.attrs["config"].get("dataset", table.attrs["config"].get("kind")),
    }


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def append_metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")


def save(run: SAERun, provenance: dict, reader: ShuffledBatches, intermediate: bool = False) -> None:
    target = run.out / "checkpoints" / f"step_{run.step_done}" if intermediate else run.out
    try:
        write_checkpoint(
            target, run.model, run.c, run.meta(provenance), run.trainer_state(reader.state_dict())
        )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            why, fix = "disk full", "free space"
        else:
            why, fix = exc.strerror or type(exc).__name__, "make it writable"
        raise VsaeError(
            f"{why} while writing {target}; earlier checkpoints are intact: {fix}, then --resume"
        ) from exc


CHECKPOINT_FILES = ("cfg.json", "sae.safetensors", "trainer_state.pt")


def resume_point(folder: Path) -> Path | None:
    """The newest complete checkpoint of a run folder: the final save or checkpoints/step_N (highest step)."""
    candidates = [folder, *(folder / "checkpoints").glob("step_*")]
    complete = [c for c in candidates if all((c / name).is_file() for name in CHECKPOINT_FILES)]
    return max(complete, key=lambda c: int(read_cfg(c).get("state", {}).get("step", -1)), default=None)


def changed_settings(run: SAERun) -> str | None:
    """A run's folder is named by its settings, so a resume with one changed looks for another folder: name
    the resumable run beside it of the same architecture and the settings that differ."""
    wanted = run.cfg.to_dict()
    for sibling in sorted(p for p in run.out.parent.iterdir() if p.is_dir() and p != run.out):
        try:
            point = resume_point(sibling)
            model = read_cfg(point)["model"] if point else None
        except (VsaeError, OSError, ValueError, KeyError):
            continue  # not a run (or a damaged one): no clue to give
        if not isinstance(model, dict) or model.get("architecture") != wanted["architecture"]:
            continue
        diff = [k for k in sorted(wanted) if k in model and model[k] != wanted[k]]
        if diff:
            shown = ", ".join(f"{k}={model[k]!r}, not {wanted[k]!r}" for k in diff[:3])
            return f"; {sibling} was trained with {shown}: resume with its settings"
    return None


def read_trainer_state(path: Path) -> dict:
    """trainer_state.pt, unpickled with torch's weights-only loader: tensors, numbers, strings, lists and
    dicts only, so a crafted file cannot run code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch raise many types for a hostile or damaged file
        reason = (
            "it holds objects other than tensors and plain data"
            if "Weights only load failed" in str(exc)
            else type(exc).__name__
        )
        raise VsaeError(
            f"{path} is not a vsae trainer state ({reason}); resume from another checkpoint"
        ) from exc


def restore(runs: list[SAERun], reader: ShuffledBatches) -> int:
    steps = set()
    for run in runs:
        point = resume_point(run.out)
        if point is None:
            raise VsaeError(
                f"nothing to resume in {run.out} (no complete checkpoint with trainer_state.pt)"
                + (changed_settings(run) or "; train without --resume")
            )
        read_cfg(point)
        state = read_trainer_state(point / "trainer_state.pt")
        run.load_trainer_state(state)
        steps.add(run.step_done)
        reader.load_state_dict(state["reader"])
    if len(steps) != 1:
        raise VsaeError("the runs of this sweep stopped at different steps; resume them separately")
    step = steps.pop()
    if step >= runs[0].total:
        raise VsaeError(f"{runs[0].out} is already trained for all {step} steps")
    for run in runs:
        truncate_metrics(run.out, step)
    return step


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop the metrics a killed run logged after the checkpoint it resumes from (they will be redone)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step
    ]
    write_atomic(path, "".join(f"{line}\n" for line in keep))
