"""The one training loop (docs/architectures.md). Every architecture and every SAE of a sweep runs through
`SAERun.step` on the same batch; architectures differ only inside `SAE.loss_terms` and its hooks."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

import vsae
from vsae.archs.checkpoint import read_cfg, write_checkpoint
from vsae.archs.config import upgrade_keys
from vsae.archs.registry import build_config, check_arch, predicted_noise_power, train_defaults
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import DATA_STREAM, EPS_STREAM, make_generator, n_steps
from vsae.distributed import World
from vsae.distributed import setup as setup_world
from vsae.errors import NonFiniteLoss, VsaeError
from vsae.metrics import fve
from vsae.progress import Progress, console
from vsae.progress import results as results_console
from vsae.store.faults import failpoint
from vsae.store.reader import ShuffledBatches
from vsae.store.table import Table, open_table
from vsae.train.config import TrainConfig
from vsae.train.resample import resample_dead
from vsae.train.schedules import Schedule
from vsae.train.tracking import Tracker
from vsae.train.view import live_table, summary_table

log = logging.getLogger("vsae.train")


@dataclass
class SAESpec:
    """One SAE of a sweep: an architecture, its size and hyper-parameter overrides."""

    arch: str
    d_sae: int | None = None
    expansion: int | None = None
    overrides: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # this SAE's own lr, grad_clip_norm or betas (sweep files)
    init_from: Path | None = None  # start from this checkpoint's weights (its architecture and config)

    def dict_size(self, d_in: int) -> int:
        """F from d_sae, or expansion × d_in (default 8); either must be a positive whole number."""
        for name in ("d_sae", "expansion"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise VsaeError(f"{self.arch}: {name}={value!r} must be a positive whole number")
        if self.d_sae is not None and self.expansion is not None:
            raise VsaeError(f"{self.arch}: give d_sae or expansion, not both")
        return self.d_sae if self.d_sae is not None else d_in * (self.expansion or 8)

    def run_name(self, d_sae: int, seed: int) -> str:
        tail = "".join(f"_{k}{v}" for k, v in sorted((self.overrides | self.train).items()))
        if self.init_from is not None:
            tail += f"_from-{Path(self.init_from).name}"
        return f"{self.arch}_{d_sae}{tail}_s{seed}".replace("/", "-")


class SAERun:
    """One SAE under training: model, loss module, Adam, schedule, dead counters, output folder."""

    def __init__(
        self,
        spec: SAESpec,
        table: Table,
        tcfg: TrainConfig,
        total: int,
        c: float,
        out: Path,
        world: World = World(),
    ):
        d_in = table.d
        start = _initial_model(spec, table, c)
        d_sae = start.cfg.d_sae if start is not None else spec.dict_size(d_in)
        # the VSAE noise budget is a fraction of the variance in training space (x / c)
        self.cfg = (
            start.cfg
            if start is not None
            else build_config(spec.arch, d_in, d_sae, spec.overrides, noise_unit=table.variance() / c**2)
        )
        arch_train = train_defaults(spec.arch, d_sae)
        mine = dataclasses.replace(tcfg, **spec.train)  # a sweep entry's own lr / clip / betas win
        mine.validate()
        self.lr = mine.lr if mine.lr is not None else arch_train["lr"]
        self.betas = tuple(mine.betas or arch_train.get("betas", (0.9, 0.999)))
        self.clip = mine.grad_clip_norm
        self.tcfg, self.total, self.c = tcfg, total, c
        self.world = world
        self.device = torch.device(world.device(tcfg.device))
        self.model = (start if start is not None else SAE(self.cfg, seed=tcfg.seed)).to(self.device)
        self.initialised = start is not None  # a checkpoint's weights are not re-initialised from the data
        self.loss_module = _LossModule(self.model)
        if world.active:  # DDP arms its gradient all-reduce in its own forward
            self.loss_module = torch.nn.parallel.DistributedDataParallel(self.loss_module)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=self.betas, eps=tcfg.eps)
        self.schedule = Schedule.derive(
            total,
            tcfg.lr_warmup_frac,
            tcfg.lr_decay_frac,
            tcfg.sparsity_warmup_frac,
            tcfg.kl_warmup_frac,
            tcfg.schedule_counts(),
        )
        self.eps_gen = make_generator(tcfg.seed, EPS_STREAM, world.rank, device=self.device)
        self.tau = torch.zeros(d_sae, dtype=torch.int64, device=self.device)
        self.n_global = tcfg.batch_size * world.size  # tokens per step over all ranks
        self.t_dead = min(tcfg.dead_after_tokens, max(self.n_global, math.floor(0.1 * total * self.n_global)))
        self.out = out / spec.run_name(d_sae, tcfg.seed)
        self.step_done = 0
        self.tokens_seen = 0
        self.table = table
        self.data_gen = make_generator(tcfg.seed, DATA_STREAM, 0)
        self.resample_steps = sorted(
            {n_steps(f, total) for f in tcfg.resample_at_fracs} & set(range(1, total))
        )
        self.n_resampled = 0

    # ------------------------------------------------------------------ the training step
    def step(self, x: torch.Tensor, t: int, fresh: bool, log_now: bool) -> dict | None:
        model = self.model
        ctx = StepContext(
            step=t,
            total_steps=self.total,
            tokens_seen=self.tokens_seen,
            sparsity_scale=self.schedule.sparsity(t),
            kl_scale=self.schedule.kl(t),
            dead=self.tau >= self.t_dead,
            generator=self.eps_gen,
            diagnostics=log_now,
        )
        if t == 0 and fresh and not self.initialised:
            first = self.world.gather(x)  # rank 0 initialises from every rank's first batch (rule 3)
            if self.world.is_main:
                model.init_from_batch(first)
            self.world.broadcast(model.state_dict().values())
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.tcfg.compute_dtype == "bfloat16"
        ):
            out = self.loss_module(x, ctx)
        if not self.world.all_true(bool(torch.isfinite(out.loss)), self.device):
            raise NonFiniteLoss(t, {k: v for k, v in out.raw.items()})
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        unit = self.cfg.decoder_norm == "unit"
        if unit:
            _project_radial(model.W_dec)
        params = [p for p in model.parameters() if p.grad is not None]
        clip = self.clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
        for group in self.opt.param_groups:
            group["lr"] = self.lr * self.schedule.lr(t)
        self.opt.step()
        if unit:
            with torch.no_grad():
                model.W_dec.div_(model.W_dec.norm(dim=1, keepdim=True))
        fired = self.world.any(out.fired)  # rules 4-5: global firing, global token counts, mean statistics
        self.tau = torch.where(fired, torch.zeros_like(self.tau), self.tau + self.n_global)
        stats = out.stats
        if "theta_stat" in stats:
            stats["theta_stat"] = self.world.mean_defined(stats["theta_stat"], self.device)
        if "p_pair" in stats:
            stats["p_pair"] = self.world.mean_pair(stats["p_pair"], self.device)
        model.after_step(ctx, stats)
        if model.supports_resampling and t + 1 in self.resample_steps:
            self._resample()
        self.step_done, self.tokens_seen = t + 1, self.tokens_seen + self.n_global
        return self._metrics(x, out, ctx, grad_norm) if log_now else None

    def _resample(self) -> None:
        """Rank 0 resamples with its data generator; parameters, Adam moments and τ are broadcast (rule 6)."""
        if self.world.is_main:
            pool = self.table.sample(self.tcfg.resample_pool_tokens, self.data_gen).to(self.device) / self.c
            self.n_resampled = resample_dead(self.model, self.opt, self.tau, self.t_dead, pool, self.data_gen)
        moments = [s[k] for s in self.opt.state.values() for k in ("exp_avg", "exp_avg_sq") if k in s]
        self.world.broadcast([*self.model.parameters(), *moments, self.tau])

    @torch.no_grad()
    def _metrics(self, x, out, ctx, grad_norm) -> dict:
        """Training-rule metrics of this batch (docs/architectures.md): f_det and x̂(f_det)."""
        model = self.model
        diag = out.diagnostics
        x_det = diag.x_hat_det if diag is not None else out.x_hat
        m = {
            "step": ctx.step,
            "tokens": self.tokens_seen,
            "loss": float(out.loss.detach()),
            **{f"terms/{k}": float(v.detach()) for k, v in out.terms.items()},
            **{f"raw/{k}": float(v) for k, v in out.raw.items()},
            "mse": float((x - x_det).square().sum(-1).mean()),
            "fve": fve(x, x_det),
            "l0_train_rule": float(out.l0_train),
            "frac_dead": float((self.tau >= self.t_dead).float().mean()),
            "lr": self.lr * self.schedule.lr(ctx.step),
            "s": ctx.sparsity_scale,
            "w_kl": ctx.kl_scale,
            "grad_norm": float(grad_norm),
        }
        if self.model.supports_resampling:
            m["n_resampled"] = self.n_resampled
        with torch.no_grad():
            m["l0"] = float((model.encode(x) != 0).sum(-1).float().mean())
        if diag is not None:
            m["fve_mean"] = m["fve"]
            m["fve_sample"] = fve(x, out.x_hat)
            m["l0_sample"] = float((diag.f_sample != 0).sum(-1).float().mean())
            m["sigma_mean"] = float(diag.sigma.mean())
            active = diag.mask_det
            m["sigma_mean_active"] = float(diag.sigma[active].mean()) if bool(active.any()) else float("nan")
            m["frac_logvar_at_bound"] = float(diag.frac_logvar_at_bound)
            if m["frac_logvar_at_bound"] > 0.01:
                log.warning(
                    "%s: %.1f%% of log-variances sit at a clamp bound",
                    self.cfg.architecture,
                    100 * m["frac_logvar_at_bound"],
                )
        if self.cfg.topk_family:
            m["threshold"] = float(model.threshold.mean())
        if self.cfg.decoder_norm == "free":
            norms = model.W_dec.norm(dim=1)
            m |= {
                "dec_norm_min": float(norms.min()),
                "dec_norm_mean": float(norms.mean()),
                "dec_norm_max": float(norms.max()),
            }
        return m

    # ------------------------------------------------------------------ bookkeeping
    def derived(self) -> dict:
        d = self.schedule.as_dict() | {"T_dead": self.t_dead}
        if self.cfg.topk_family:
            d["beta_theta"] = self.model.threshold_decay(self.total)
        if self.cfg.vsae_family:
            d |= {
                "n_dec": self.cfg.n_dec,
                "kl_coeff": self.cfg.kl_coeff,
                "kl_coeff_source": self.cfg.kl_coeff_source,
                "log_var_init": self.cfg.log_var_init,
                "predicted_noise_power": predicted_noise_power(self.cfg),
            }
        return d

    def meta(self, provenance: dict) -> dict:
        training = dataclasses.asdict(self.tcfg) | {
            "lr": self.lr,
            "betas": list(self.betas),
            "grad_clip_norm": self.clip,
            "total_steps": self.total,
            "world_size": self.world.size,
            "batch_tokens": self.tcfg.batch_size,
            "n_global": self.n_global,
            "derived": self.derived(),
        }
        training.pop("extra", None)
        state = {"step": self.step_done, "tokens_seen": self.tokens_seen}
        state |= self.model.state_summary()
        meta = {"training": training, "provenance": provenance | {"seed": self.tcfg.seed}, "state": state}
        if self.tcfg.normalization == "none":
            meta["norm_factor_definition"] = "1 (normalization=none: trained on raw activations)"
        return meta

    def trainer_state(self, reader_state: dict) -> dict:
        opt = self.opt.state_dict()
        by_name = {self.names[i]: s for i, s in opt["state"].items()}
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "adam": by_name,
            "adam_groups": opt["param_groups"],
            "step": self.step_done,
            "tokens_seen": self.tokens_seen,
            "tau": self.tau.clone(),
            "eps_generator": self.eps_gen.get_state(),
            "data_generator": self.data_gen.get_state(),
            **self.model.training_state(),
            "reader": reader_state,
            "total_steps": self.total,
            "torch_rng": torch.get_rng_state(),
            "recipe": self.recipe(),
        }

    def recipe(self) -> dict:
        """Everything a resumed run must share with the run it continues (JSON-safe values)."""
        fixed = dataclasses.asdict(self.tcfg)
        for name in ("steps", "tokens", "log_every", "save_every", "device", "extra", "lr", "betas"):
            fixed.pop(name, None)
        model = {f"model.{k}": v for k, v in self.cfg.to_dict().items()}
        mine = {"lr": self.lr, "betas": list(self.betas), "grad_clip_norm": self.clip}
        return json.loads(json.dumps(fixed | model | mine))

    def load_trainer_state(self, state: dict) -> None:
        if state["total_steps"] != self.total:
            raise VsaeError(
                f"{self.out} was trained for {state['total_steps']} steps; resume with the same --steps/--tokens"
            )
        for name, old in _upgrade_recipe(state.get("recipe", {})).items():  # no recipe (old states): skipped
            new = self.recipe().get(name)
            if new != old:
                flag = name.removeprefix("model.")
                raise VsaeError(
                    f"{self.out}: the run was started with {flag}={old} but --resume was given {flag}={new}; "
                    "resume with the same value or train into another --out"
                )
        self.model.load_state_dict(state["model"])
        index = {n: i for i, n in enumerate(self.names)}
        self.opt.load_state_dict(
            {"state": {index[n]: s for n, s in state["adam"].items()}, "param_groups": state["adam_groups"]}
        )
        self.step_done, self.tokens_seen = state["step"], state["tokens_seen"]
        self.tau = state["tau"].to(self.device)
        self.eps_gen.set_state(state["eps_generator"])
        self.data_gen.set_state(state["data_generator"])
        self.model.load_training_state(state)


def _upgrade_recipe(recipe: dict) -> dict:
    """A resume recipe of an earlier version with its model keys in today's names."""
    model = upgrade_keys({k.removeprefix("model."): v for k, v in recipe.items() if k.startswith("model.")})
    return {k: v for k, v in recipe.items() if not k.startswith("model.")} | {
        f"model.{k}": v for k, v in model.items()
    }


def _initial_model(spec: SAESpec, table: Table, c: float) -> SAE | None:
    """The checkpoint `spec.init_from` in this run's training space (x / c), with the config it records."""
    if spec.init_from is None:
        return None
    from vsae.archs.checkpoint import convert_space, load_sae

    raw = load_sae(spec.init_from)
    if raw.cfg.d_in != table.d:
        raise VsaeError(
            f"--init-from {spec.init_from} has d_in={raw.cfg.d_in} but table {table.path} has d={table.d}"
        )
    if raw.cfg.architecture != spec.arch:
        raise VsaeError(
            f"--init-from {spec.init_from} is a {raw.cfg.architecture}; train it with --arch {raw.cfg.architecture}"
        )
    model = convert_space(raw, c, "normalized")
    model.space = "normalized"
    return model


class _LossModule(torch.nn.Module):
    """forward(x, ctx) = model.loss_terms(x, ctx): the module data parallelism would wrap."""

    def __init__(self, model: SAE):
        super().__init__()
        self.model = model

    def forward(self, x, ctx):
        return self.model.loss_terms(x, ctx)


@torch.no_grad()
def _project_radial(w_dec: torch.nn.Parameter) -> None:
    """Remove each atom gradient's component along the atom (unit policy, before clipping)."""
    if w_dec.grad is None:
        return
    unit = w_dec / w_dec.norm(dim=1, keepdim=True)
    w_dec.grad.sub_((w_dec.grad * unit).sum(dim=1, keepdim=True) * unit)


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
    table = open_table(store, model, site, layer)
    world = setup_world(tcfg.device)
    total = _total_steps(tcfg, table, world.size)
    c = table.norm_factor() if tcfg.normalization == "expected_norm" else 1.0
    out = Path(out)
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
    provenance = _provenance(table, store)
    start = _restore(runs, reader) if resume else 0
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
                        _append_metrics(run.out, metrics)
                        latest[run.out.name] = metrics
                        if tracker:
                            tracker.log(run.out.name, metrics)
                if log_now and show_progress:
                    bar.show(live_table(latest))
                if tcfg.save_every and (t + 1) % tcfg.save_every == 0 and t + 1 < total and world.is_main:
                    for run in runs:
                        _save(run, provenance, reader, intermediate=True)
                bar.advance(step_tokens)
                failpoint("train_step")  # crash tests: VSAE_FAILPOINT=train_step:N kills after step N
        if world.is_main:
            for run in runs:
                _save(run, provenance, reader)
        _dump_rank_state(runs, reader, world)
        world.barrier()
    except BaseException:
        if not resume and world.is_main:
            for run in runs:
                _drop_unsaved_run(run.out)
        raise
    finally:
        reader.close()
        if tracker:
            tracker.finish()
    if world.is_main:
        if latest:
            tokens = {name: (total - start) * step_tokens for name in names}
            results_console.print(summary_table(latest, seconds, tokens))
        console.print(f"trained {len(runs)} SAE(s) for {total} steps in {time.time() - t0:.1f}s → {out}")
    return [run.out for run in runs]


def _drop_unsaved_run(folder: Path) -> None:
    """A fresh run that failed before its first checkpoint leaves nothing behind (its log would be taken
    for a run's); a folder holding anything else, or any checkpoint, is left as it is."""
    if (folder / "cfg.json").exists() or any((folder / "checkpoints").glob("step_*")):
        return
    (folder / "metrics.jsonl").unlink(missing_ok=True)
    for empty in (folder / "checkpoints", folder):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


def _dump_rank_state(runs: list[SAERun], reader: ShuffledBatches, world: World) -> None:
    """VSAE_RANK_STATE_DIR=dir saves every rank's trainer state (to check that ranks agree)."""
    folder = os.environ.get("VSAE_RANK_STATE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for run in runs:
            torch.save(
                run.trainer_state(reader.state_dict()), Path(folder) / f"{run.out.name}.rank{world.rank}.pt"
            )


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


def _provenance(table: Table, store: str) -> dict:
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


def _append_metrics(folder: Path, metrics: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(metrics) + "\n")


def _save(run: SAERun, provenance: dict, reader: ShuffledBatches, intermediate: bool = False) -> None:
    target = run.out / "checkpoints" / f"step_{run.step_done}" if intermediate else run.out
    try:
        write_checkpoint(
            target, run.model, run.c, run.meta(provenance), run.trainer_state(reader.state_dict())
        )
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise VsaeError(
            f"disk full while writing {target}; earlier checkpoints are intact: free space, then --resume"
        ) from exc


CHECKPOINT_FILES = ("cfg.json", "sae.safetensors", "trainer_state.pt")


def resume_point(folder: Path) -> Path | None:
    """The newest complete checkpoint of a run folder: the final save or checkpoints/step_N (highest step)."""
    candidates = [folder, *(folder / "checkpoints").glob("step_*")]
    complete = [c for c in candidates if all((c / name).is_file() for name in CHECKPOINT_FILES)]
    return max(complete, key=lambda c: int(read_cfg(c).get("state", {}).get("step", -1)), default=None)


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


def _restore(runs: list[SAERun], reader: ShuffledBatches) -> int:
    steps = set()
    for run in runs:
        point = resume_point(run.out)
        if point is None:
            raise VsaeError(
                f"nothing to resume in {run.out} (no complete checkpoint with trainer_state.pt); "
                "train without --resume"
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
        _truncate_metrics(run.out, step)
    return step


def _truncate_metrics(folder: Path, step: int) -> None:
    """Drop the metrics a killed run logged after the checkpoint it resumes from (they will be redone)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step
    ]
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    tmp.replace(path)
