"""Optional experiment tracking with Weights & Biases (`--wandb PROJECT`): one W&B run per SAE, holding
every metrics.jsonl field, the SAE's config, and later its `vsae eval` results. Never required: without the
flag nothing imports wandb. `WANDB_MODE=offline` writes the runs under each checkpoint folder only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vsae.errors import VsaeError
from vsae.files import write_atomic

ID_FILE = "wandb_run.json"  # beside cfg.json: lets `vsae eval --wandb` and `--resume` continue the same run


def _wandb():
    try:
        import wandb
    except ImportError as exc:
        raise VsaeError("--wandb needs the wandb package: pip install wandb") from exc
    return wandb


def check_project(project: str | None) -> None:
    """A project name W&B accepts, before any work starts."""
    if project is None:
        return
    if not project or any(c in project for c in "/\\#?%:"):
        raise VsaeError(f"--wandb takes a W&B project name without / \\ # ? % : (got {project!r})")
    _wandb()


def open_run(project: str, folder: Path, config: dict, resume: bool = False):
    """The W&B run of the checkpoint `folder` (its id kept in wandb_run.json), created or continued."""
    wandb = _wandb()
    folder.mkdir(parents=True, exist_ok=True)
    id_path = folder / ID_FILE
    try:
        known = json.loads(id_path.read_text()) if id_path.exists() else {}
    except (OSError, ValueError):  # unreadable (a kill mid-write): start a new W&B run
        known = {}
    run_id = known.get("id") if (resume or known.get("project") == project) else None
    run = wandb.init(
        project=project,
        name=folder.name,
        id=run_id,
        resume="allow" if run_id else None,
        config=config,
        dir=str(folder),
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )
    write_atomic(
        id_path, json.dumps({"project": project, "id": run.id, "mode": os.environ.get("WANDB_MODE", "")})
    )
    return run


class Tracker:
    """One W&B run per SAE of a sweep; `log` mirrors metrics.jsonl, `finish` closes them all."""

    def __init__(self, project: str, folders: dict[str, Path], configs: dict[str, dict], resume: bool):
        self.runs = {name: open_run(project, folders[name], configs[name], resume) for name in folders}

    def log(self, name: str, metrics: dict) -> None:
        self.runs[name].log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def finish(self) -> None:
        for run in self.runs.values():
            run.finish()


def log_eval(project: str, folder: Path, result: dict) -> None:
    """`vsae eval --wandb`: the checkpoint's eval numbers into its run's summary, as `eval/<metric>`."""
    run = open_run(project, folder, config={}, resume=True)
    run.summary.update({f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    run.finish()
