"""One SAE of a run: its model, optimiser, schedules and dead-latent counts, the step it takes on each
batch, its metrics and the state a resume needs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vsae.archs.config import upgrade_keys
from vsae.archs.registry import build_config, predicted_noise_power, train_defaults
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import DATA_STREAM, EPS_STREAM, make_generator, n_steps
from vsae.distributed import World
from vsae.errors import NonFiniteLoss, VsaeError
from vsae.metrics import fve
from vsae.store.table import Table
from vsae.train.config import TrainConfig
from vsae.train.resample import resample_dead
from vsae.train.schedules import Schedule

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
        start = initial_model(spec, table, c)
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
        self.opt = adam(self.model.parameters(), lr=self.lr, betas=self.betas, eps=tcfg.eps)
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
            project_radial(model.W_dec)
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
        for name, old in upgrade_recipe(state.get("recipe", {})).items():  # no recipe (old states): skipped
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


def upgrade_recipe(recipe: dict) -> dict:
    """A resume recipe of an earlier version with its model keys in today's names."""
    model = upgrade_keys({k.removeprefix("model."): v for k, v in recipe.items() if k.startswith("model.")})
    return {k: v for k, v in recipe.items() if not k.startswith("model.")} | {
        f"model.{k}": v for k, v in model.items()
    }


def initial_model(spec: SAESpec, table: Table, c: float) -> SAE | None:
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
def adam(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Adam:
    """Adam as one fused kernel per parameter where torch has one (CPU and CUDA): the same update, about 5×
    faster than the multi-tensor form on CPU (bench/RESULTS.md, "Training step against the peers")."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=fused)


def project_radial(w_dec: torch.nn.Parameter) -> None:
    """Remove each atom gradient's component along the atom (unit policy, before clipping)."""
    if w_dec.grad is None:
        return
    # g −= (g·d / d·d) d, row by row, with no [F, D] temporary (each fresh one page-faults on the CPU)
    w = w_dec.detach()
    coef = torch.linalg.vecdot(w_dec.grad, w, dim=1) / torch.linalg.vecdot(w, w, dim=1)
    w_dec.grad.addcmul_(w, coef.unsqueeze(1), value=-1.0)
