"""The one training loop (docs/architectures.md). Every architecture and every SAE of a sweep runs through
`SAERun.step` on the same batch; architectures differ only inside `SAE.loss_terms` and its hooks."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from vsae.archs import workspace
from vsae.archs.registry import check_arch, predicted_noise_power
from vsae.distributed import setup as setup_world
from vsae.errors import VsaeError
from vsae.files import check_writable_folder
from vsae.progress import Progress, console
from vsae.progress import results as results_console
from vsae.store.faults import failpoint
from vsae.store.reader import ShuffledBatches
from vsae.store.table import Table, open_table
from vsae.train.checkpoints import (
    append_metrics,
    drop_unsaved_run,
    dump_rank_state,
    provenance_of,
    restore,
    save,
)
from vsae.train.config import TrainConfig
from vsae.train.heap import reuse_freed_memory
from vsae.train.run import SAERun, SAESpec
from vsae.train.tracking import Tracker
from vsae.train.view import live_table, summary_table

log = logging.getLogger("vsae.train")


def train(
    store: str,
    specs: list[SAESpec],
    tcfg: TrainConfig,
    out: str | Path = "ckpt",
    *,
    model: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    resume: bool = False,
    show_progress: bool = True,
    wandb: str | None = None,
) -> list[Path]:
    """Train every SAE of `specs` from one pass over shuffled store batches; returns the run folders.
    With `wandb` (a project), every logged record also goes to one W&B run per SAE."""
    for spec in specs:
        check_arch(spec.arch)
    tcfg.validate()
    reuse_freed_memory()
    table = open_table(store, model, site, layer)
    world = setup_world(tcfg.device)
    total = _total_steps(tcfg, table, world.size)
    c = table.norm_factor() if tcfg.normalization == "expected_norm" else 1.0
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VsaeError(f"--out {out} is a file, not a folder; choose a folder for the checkpoints")
    if out.exists():
        check_writable_folder(out, "checkpoints")
    made_out = not out.exists()  # removed again if this run fails before it saves anything
    runs = [SAERun(spec, table, tcfg, total, c, out, world) for spec in specs]
    names = [r.out.name for r in runs]
    if len(set(names)) != len(names):
        raise VsaeError(
            f"two SAEs of the sweep share a run name ({names}); vary the size or a hyper-parameter"
        )
    reader = ShuffledBatches(
        table,
        tcfg.batch_size,
        seed=tcfg.seed,
        buffer_chunks=tcfg.buffer_chunks,
        rank=world.rank,
        world=world.size,
        device=str(runs[0].device),
    )
    provenance = provenance_of(table, store)
    start = restore(runs, reader) if resume else 0
    if not resume:
        for run in runs:
            if (run.out / "cfg.json").exists() or any((run.out / "checkpoints").glob("step_*")):
                raise VsaeError(
                    f"{run.out} already holds a checkpoint; use --resume to continue it or another --out"
                )
        for run in runs:  # a failed earlier attempt's log is not this run's
            (run.out / "metrics.jsonl").unlink(missing_ok=True)
    if world.is_main:
        _announce(runs, table, c, total)
    tracker = None
    if wandb and world.is_main:
        folders = {run.out.name: run.out for run in runs}
        configs = {run.out.name: run.meta(provenance) | {"model": run.cfg.to_dict()} for run in runs}
        tracker = Tracker(wandb, folders, configs, resume)
    t0 = time.time()
    show_progress = show_progress and world.is_main
    step_tokens = tcfg.batch_size * world.size
    latest: dict[str, dict] = {}  # last logged metrics per SAE, for the live table and the summary
    seconds = dict.fromkeys(names, 0.0)
    # several SAEs on a GPU: wait for each one's kernels so its own time is measured, not its launch time
    sync = torch.cuda.synchronize if len(runs) > 1 and runs[0].device.type == "cuda" else (lambda: None)
    try:
        with Progress("train", total=total * step_tokens, unit="tok", enabled=show_progress) as bar:
            bar.advance(start * step_tokens)
            for t in range(start, total):
                x = next(reader).to(runs[0].device, non_blocking=True).float() / c
                log_now = (t % tcfg.log_every == 0) or t == total - 1
                for run in runs:
                    t_run = time.perf_counter()
                    metrics = run.step(x, t, fresh=not resume, log_now=log_now and world.is_main)
                    sync()
                    seconds[run.out.name] += time.perf_counter() - t_run
                    if metrics is not None:
                        append_metrics(run.out, metrics)
                        latest[run.out.name] = metrics
                        if tracker:
                            tracker.log(run.out.name, metrics)
                if log_now and show_progress:
                    bar.show(live_table(latest))
                if tcfg.save_every and (t + 1) % tcfg.save_every == 0 and t + 1 < total and world.is_main:
                    for run in runs:
                        save(run, provenance, reader, intermediate=True)
                bar.advance(step_tokens)
                failpoint("train_step")  # crash tests: VSAE_FAILPOINT=train_step:N kills after step N
        if world.is_main:
            for run in runs:
                save(run, provenance, reader)
        dump_rank_state(runs, reader, world)
        world.barrier()
    except BaseException:
        if not resume and world.is_main:
            for run in runs:
                drop_unsaved_run(run.out)
            if made_out and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        reader.close()
        workspace.release()
        if tracker:
            tracker.finish()
    if world.is_main:
        if latest:
            tokens = {name: (total - start) * step_tokens for name in names}
            results_console.print(summary_table(latest, seconds, tokens))
        console.print(f"trained {len(runs)} SAE(s) for {total} steps in {time.time() - t0:.1f}s → {out}")
    return [run.out for run in runs]


def _total_steps(tcfg: TrainConfig, table: Table, world_size: int = 1) -> int:
    if tcfg.steps is not None and tcfg.tokens is not None:
        raise VsaeError("give --steps or --tokens, not both")
    if tcfg.steps is not None:
        total = tcfg.steps
    elif tcfg.tokens is not None:
        total = math.ceil(tcfg.tokens / (tcfg.batch_size * world_size))
    else:
        total = math.ceil(table.n_train / (tcfg.batch_size * world_size))
    if total < 1:
        raise VsaeError(f"the run has {total} steps; give a positive --steps or --tokens")
    return total


def _announce(runs: list[SAERun], table: Table, c: float, total: int) -> None:
    console.print(
        f"table {table.path}: {table.n_train:,} training tokens, d={table.d}, norm factor c={c:.4g}, T={total}"
    )
    for run in runs:
        cfg = run.cfg
        line = f"  {run.out.name}: {cfg.architecture} F={cfg.d_sae} lr={run.lr:.3g}"
        if cfg.vsae_family and cfg.selection_site == "sample":
            log.warning(
                "%s: selection_site=sample selects on the noisy sample (the reference fork's rule); "
                "it is unstable at every δ-level noise, use selection_site=mean unless reproducing the fork",
                run.out.name,
            )
        if cfg.samples:
            power = predicted_noise_power(cfg)
            share = power / cfg.noise_unit
            line += f" β={cfg.kl_coeff:.3g} predicted decoded noise {share:.3g} of the activations' variance"
            if share > 1:
                log.warning(
                    "%s: predicted decoded noise power %.3g exceeds the signal (β too large?)",
                    run.out.name,
                    power,
                )
        console.print(line)
