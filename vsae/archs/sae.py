"""The composable SAE (math: docs/architectures.md): encoder → (Gaussian posterior) → sparsifier → linear decoder.

Every registry architecture is this one module with a different SAEConfig; the trainer only ever calls
`loss_terms`, `init_from_batch` and `after_step` and never branches on a name.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vsae.archs import fused_topk, priors, topk_terms
from vsae.archs.config import SAEConfig, validate
from vsae.archs.select import scores
from vsae.archs.sparse import encode_linear, sparse_decode
from vsae.archs.sparsifiers import SPARSIFIERS
from vsae.archs.steps import INIT_STREAM, make_generator, n_steps
from vsae.errors import VsaeError

TERM_KEYS = ("rec", "l1", "lp", "l0", "aux_gate", "auxk", "kl")


@dataclass
class StepContext:
    """What the trainer tells the model about step t (read-only for the model)."""

    step: int = 0
    total_steps: int = 1
    tokens_seen: int = 0
    sparsity_scale: float = 1.0
    kl_scale: float = 1.0
    dead: Tensor | None = None
    generator: torch.Generator | None = None
    diagnostics: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Diagnostics:
    """Posterior quantities of a variational step, computed only on logging steps (ctx.diagnostics)."""

    x_hat_det: Tensor
    """Reconstruction from the deterministic code f_det."""
    sigma: Tensor
    """Posterior σ̃ = exp(ℓ/2) · n [N, F]."""
    mask_det: Tensor
    """Active mask of f_det."""
    frac_logvar_at_bound: Tensor
    """Fraction of pre-clamp log-variances at a clamp bound."""
    f_sample: Tensor
    """The sampled training code f."""


@dataclass
class StepOutput:
    """What one `loss_terms` call hands the trainer."""

    loss: Tensor
    """The scalar to differentiate: the sum of `terms`."""
    terms: dict[str, Tensor]
    """Weighted loss terms (every key of TERM_KEYS)."""
    raw: dict[str, Tensor]
    """Unweighted, detached terms (logged)."""
    x_hat: Tensor
    """Detached reconstruction of the training code."""
    fired: Tensor
    """[F] latents non-zero in the deterministic code on this batch."""
    l0_train: Tensor
    """Mean non-zeros per token of the deterministic code."""
    stats: dict = field(default_factory=dict)
    """Statistics `after_step` consumes (θ statistic, panneal's penalty pair), averaged across ranks."""
    diagnostics: Diagnostics | None = None
    """Variational models on logging steps only."""


@dataclass
class Posterior:
    """Per-token posterior quantities of a training-space model on flattened tokens (read by evaluation)."""

    mu: Tensor
    """Posterior mean μ [N, F] (gated models: the magnitude mean)."""
    mask: Tensor
    """Active mask of the deterministic training code f_det = S(μ) (selection on μ)."""
    pi_gate: Tensor | None = None
    """Gate pre-activation (gated models only)."""
    log_var: Tensor | None = None
    """Clamped log-variance ℓ (var_flag = 1 only)."""
    log_var_pre: Tensor | None = None
    """ℓ before the clamp (for the bound monitor)."""


class SAE(nn.Module):
    """One sparse (or variational sparse) autoencoder; `space` is 'normalized' (training) or 'raw'."""

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        self.space = "normalized"
        d, f = cfg.d_in, cfg.d_sae
        gen = make_generator(seed, INIT_STREAM, 0)
        v = torch.randn(f, d, generator=gen, dtype=torch.float32)
        w_dec = cfg.init_dec_norm * v / v.norm(dim=1, keepdim=True)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        if cfg.encoder == "gated":
            self.b_gate = nn.Parameter(torch.zeros(f))
            self.r_mag = nn.Parameter(torch.zeros(f))
            self.b_mag = nn.Parameter(torch.zeros(f))
        else:
            self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.sparsifier = SPARSIFIERS[cfg.sparsifier]  # the selection rule (archs/sparsifiers/)
        self.sparsifier.declare(self)  # its own tensors (θ)
        if cfg.samples:
            self.W_enc_logvar = nn.Parameter(torch.zeros(d, f))
            self.b_enc_logvar = nn.Parameter(torch.full((f,), float(cfg.log_var_init)))
            self.register_buffer("logvar_min", torch.full((f,), cfg.logvar_min))
            self.register_buffer("logvar_max", torch.full((f,), cfg.logvar_max))
        if cfg.prior == "permean":
            self.register_buffer("prior_mean", torch.zeros(f))
        self._fallback_warned = False
        self.p_state = _PAnneal(cfg) if cfg.sparsity_penalty == "lp_p" else None

    # ---------------------------------------------------------------- declarations
    @property
    def supports_resampling(self) -> bool:
        return self.cfg.resampling

    def latent_axes(self) -> dict[str, int]:
        axes = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "b_gate": 0, "r_mag": 0, "b_mag": 0, "threshold": 0}
        axes |= {"W_enc_logvar": 1, "b_enc_logvar": 0, "logvar_min": 0, "logvar_max": 0, "prior_mean": 0}
        return {k: v for k, v in axes.items() if k in self.state_dict()}

    def tensor_rules(self) -> dict[str, tuple[str, str]]:
        """Tensor name → (raw rule, fold rule), one row per tensor."""
        rules = {
            "W_enc": ("same", "col_mul"),
            "b_enc": ("mul_c", "mul"),
            "b_gate": ("mul_c", "mul"),
            "b_mag": ("mul_c", "mul"),
            "threshold": ("mul_c", "mul"),
            "W_dec": ("same", "row_div"),
            "b_dec": ("mul_c", "same"),
            "r_mag": ("same", "same"),
            "W_enc_logvar": ("div_c", "same"),
            "b_enc_logvar": ("log_c", "log"),
            "logvar_min": ("log_c", "log"),
            "logvar_max": ("log_c", "log"),
            "prior_mean": ("mul_c", "same"),
        }
        return {k: v for k, v in rules.items() if k in self.state_dict()}

    # ---------------------------------------------------------------- pieces of the pipeline
    def dec_norms(self) -> Tensor:
        """n_j: the constant 1 under `unit`, the differentiable row norms under `free`."""
        if self.cfg.decoder_norm == "unit":
            return torch.ones(self.cfg.d_sae, device=self.W_dec.device)
        return self.W_dec.norm(dim=1)

    def _centre(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _scores_fp32(self):
        """Matmuls that feed a top-k / AuxK selection run in fp32 even under bf16 autocast (docs/architectures.md)."""
        if self.cfg.topk_family:
            return torch.autocast(device_type=self.W_enc.device.type, enabled=False)
        return contextlib.nullcontext()

    def _mean(self, xt: Tensor) -> tuple[Tensor, Tensor | None]:
        """Posterior mean μ and, for gated encoders, the gate pre-activation π_gate."""
        if self.cfg.encoder == "gated":
            q = xt @ self.W_enc
            pi_gate = q + self.b_gate
            return torch.relu(torch.exp(self.r_mag) * q + self.b_mag), pi_gate
        with self._scores_fp32():
            u = encode_linear(xt.float(), self.W_enc, self.b_enc)
        return (torch.relu(u) if self.cfg.relu_mu else u), None

    def _log_var(self, xt: Tensor) -> tuple[Tensor, Tensor]:
        """Clamped ℓ (used to sample and in the KL) and the pre-clamp value (for the bound monitor)."""
        with self._scores_fp32():
            pre = xt.float() @ self.W_enc_logvar + self.b_enc_logvar
        return torch.clamp(pre, self.logvar_min, self.logvar_max), pre

    def _sample(self, mu: Tensor, ell: Tensor, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32)
        return mu + torch.exp(0.5 * ell) * eps

    def _site(self, mu: Tensor, z: Tensor) -> Tensor:
        """What selection, gating and the JumpReLU step look at: μ (default) or the sample z (docs/architectures.md, "Where selection happens")."""
        return z if self.cfg.selection_site == "sample" else mu

    def _active_mask(self, site: Tensor, mu: Tensor, pi_gate: Tensor | None) -> Tensor:
        """The training rule's active mask M, decided on `site` by the sparsifier."""
        return self.sparsifier.mask(self, site, mu, pi_gate)

    def _train_code(self, mu: Tensor, z: Tensor, pi_gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """Training code f and the mask M decided at the selection site."""
        site = self._site(mu, z)
        mask = self._active_mask(site, mu, pi_gate)
        return self.sparsifier.train_code(self, z, site, mask), mask

    # ---------------------------------------------------------------- inference API
    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        shape = x.shape
        xt = self._centre(x.reshape(-1, shape[-1]))
        mu, pi_gate = self._mean(xt)
        values = mu
        if sample and self.cfg.samples:
            values = self._sample(mu, self._log_var(xt)[0], generator)
        code = self.sparsifier.infer(self, self._site(mu, values), values, mu, pi_gate)
        return code.reshape(*shape[:-1], self.cfg.d_sae)

    def posterior(self, x: Tensor) -> Posterior:
        """μ, the f_det mask and (var_flag = 1) ℓ for the flattened tokens of x, in the model's space."""
        xt = self._centre(x.reshape(-1, self.cfg.d_in))
        mu, pi_gate = self._mean(xt)
        post = Posterior(mu=mu, mask=self._active_mask(mu, mu, pi_gate), pi_gate=pi_gate)
        if self.cfg.samples:
            post.log_var, post.log_var_pre = self._log_var(xt)
        return post

    def kl_per_token(self, post: Posterior) -> Tensor:
        """The unweighted per-token KL of the configured prior and scope (mask = f_det's) [N]."""
        return self._kl(post.mu, post.log_var, post.mask, self.dec_norms())

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.encode(x, sample=sample, generator=generator))

    # ---------------------------------------------------------------- training
    def loss_terms(self, x: Tensor, ctx: StepContext) -> StepOutput:
        if self.space != "normalized":
            raise VsaeError("loss_terms needs a training-space model: load it with space='normalized'")
        cfg = self.cfg
        x = x.reshape(-1, cfg.d_in)
        raw: dict[str, Tensor] = {}
        terms = dict.fromkeys(TERM_KEYS, torch.zeros((), device=x.device))
        norms = self.dec_norms()
        diagnostics = None
        if fused_topk.applies(self, x):
            # the fused kernel: the selected entries as CSR, no N×F autograd (same code, same loss below)
            code = fused_topk.encode_selected(self, x)  # it centres x itself
            f = None
            x_hat = code.decode(self.W_dec) + self.b_dec
            aux_scores, aux_values = (code.u, True), code.values_at
            selected = (code.rows, code.vals.detach())
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, code.cols, True)
            l0_train = torch.tensor(code.cols.numel() / x.shape[0])
        else:
            xt = self._centre(x)
            mu, pi_gate = self._mean(xt)
            ell = ell_pre = None
            z = mu
            if cfg.samples:
                ell, ell_pre = self._log_var(xt)
                z = self._sample(mu, ell, ctx.generator)
            f, mask = self._train_code(mu, z, pi_gate)
            site = self._site(mu, z)
            x_hat = sparse_decode(f, self.sparsifier.support(self, f, mask), self.W_dec) + self.b_dec
            self.sparsifier.penalty(self, x, site, mu, pi_gate, norms, ctx, terms, raw)
            if cfg.topk_family:
                aux_scores, aux_values = scores(site, cfg.topk_mode), lambda crow, cols, rows: z[rows, cols]
            if cfg.vsae_family:
                kl = self._kl(mu, ell, mask, norms).mean()
                raw["kl"] = kl.detach()
                terms["kl"] = cfg.kl_coeff * ctx.kl_scale * kl
            with torch.no_grad():
                f_det, mask_det = self._deterministic_code(mu, pi_gate, f, mask)
                if cfg.topk_family:
                    rows, cols = mask_det.nonzero(as_tuple=True)
                    selected = (rows, scores(mu.detach(), cfg.topk_mode)[0][rows, cols])
            nonzero = f_det != 0
            fired = nonzero.any(dim=0)
            l0_train = nonzero.sum(-1).float().mean()
            if cfg.samples and ctx.diagnostics:
                with torch.no_grad():
                    bound = (ell_pre <= self.logvar_min) | (ell_pre >= self.logvar_max)
                    diagnostics = Diagnostics(
                        x_hat_det=self.decode(f_det),
                        sigma=torch.exp(0.5 * ell.detach()) * norms.detach(),
                        mask_det=mask_det,
                        frac_logvar_at_bound=bound.float().mean(),
                        f_sample=f.detach(),
                    )
        terms["rec"] = self._reconstruction(x, x_hat, f, raw)
        stats: dict = {}
        if cfg.topk_family:
            (score, positive), k_aux = aux_scores, cfg.resolved_aux_k
            aux = topk_terms.auxk(x, x_hat, score, positive, aux_values, self.W_dec, ctx.dead, k_aux, raw)
            terms["auxk"] = cfg.auxk_coeff * aux
            stats = topk_terms.threshold_stat(
                cfg.sparsifier == "batchtopk", selected[1], selected[0], x.shape[0]
            )
        if self.p_state is not None:
            stats["p_pair"] = self.p_state.pair(f.detach(), norms.detach())
        return StepOutput(
            loss=sum(terms.values()),
            terms=terms,
            raw=raw,
            x_hat=x_hat.detach(),
            fired=fired,
            l0_train=l0_train,
            stats=stats,
            diagnostics=diagnostics,
        )

    def _deterministic_code(self, mu: Tensor, pi_gate: Tensor | None, f: Tensor, mask: Tensor):
        """f_det = S(μ) and its mask: at the mean site the mask is the training mask already; under the
        sample site it takes one more selection on μ."""
        if not self.cfg.samples:
            return f.detach(), mask
        if self.cfg.selection_site == "sample":
            mask = self._active_mask(mu, mu, pi_gate)
        return self.sparsifier.deterministic(mu, mask), mask

    def _reconstruction(self, x: Tensor, x_hat: Tensor, f: Tensor, raw: dict) -> Tensor:
        """Mean over tokens of ‖x − x̂‖²; matryoshka: the weighted sum over prefix reconstructions."""
        cfg = self.cfg
        if not cfg.group_fractions:
            rec = (x - x_hat).square().sum(dim=-1).mean()
            raw["rec"] = rec.detach()
            return rec
        ends, weights = self.group_ends(), self.group_weights()
        partial, start, total = self.b_dec.expand_as(x), 0, 0
        for i, (end, w) in enumerate(zip(ends, weights, strict=True)):
            partial = partial + f[:, start:end] @ self.W_dec[start:end]
            rec_i = (x - partial).square().sum(dim=-1).mean()
            raw[f"rec_g{i}"] = rec_i.detach()
            total = total + w * rec_i
            start = end
        raw["rec"] = total.detach()
        return total

    def group_ends(self) -> list[int]:
        f = self.cfg.d_sae
        sizes = [math.floor(p * f) for p in self.cfg.group_fractions[:-1]]
        sizes.append(f - sum(sizes))
        return [sum(sizes[: i + 1]) for i in range(len(sizes))]

    def group_weights(self) -> list[float]:
        g = len(self.cfg.group_fractions)
        return list(self.cfg.group_weights) or [1.0 / g] * g

    def _kl(self, mu: Tensor, ell: Tensor | None, mask: Tensor, norms: Tensor) -> Tensor:
        """Per-token KL on unit-equivalent μ̃ = n μ, ℓ̃ = ℓ + 2 ln n over the configured scope."""
        cfg = self.cfg
        mu_t = mu * norms
        ell_t = None if ell is None else ell + 2 * torch.log(norms)
        scope = mask if cfg.kl_scope == "selected" else None
        if cfg.prior == "equicorr":
            return priors.kl_equicorr(mu_t, ell_t, cfg.corr_rate)
        if cfg.prior == "permean":
            return priors.kl_permean(mu_t, ell_t, self.prior_mean, cfg.prior_std, scope)
        return priors.kl_iso(mu_t, ell_t, scope)

    # ---------------------------------------------------------------- hooks
    @torch.no_grad()
    def init_from_batch(self, x: Tensor) -> None:
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x.reshape(-1, self.cfg.d_in)[:65536]))

    @torch.no_grad()
    def after_step(self, ctx: StepContext, stats: dict) -> None:
        """Updates after the optimiser step from the step's (rank-averaged) `StepOutput.stats`."""
        self.sparsifier.after_step(self, ctx, stats)

    def training_state(self) -> dict:
        """Non-tensor state a resumed run needs beside the parameters (panneal's p-annealing)."""
        return {"p_state": self.p_state.state_dict() if self.p_state else None}

    def load_training_state(self, state: dict) -> None:
        if self.p_state is not None and state.get("p_state") is not None:
            self.p_state.load_state_dict(state["p_state"])

    def state_summary(self) -> dict:
        """Scalars of that state worth recording in cfg.json (panneal: the active p and α)."""
        return {"p": self.p_state.p, "alpha": self.p_state.alpha} if self.p_state else {}

    def threshold_decay(self, total_steps: int) -> float:
        return min(self.cfg.threshold_beta, max(0.0, 1 - 20 / total_steps))


class _PAnneal:
    """p-annealing state: switch steps, active p, α and the continuity queue."""

    def __init__(self, cfg: SAEConfig):
        self.cfg = cfg
        self.alpha = cfg.l1_coeff
        self.total = None
        self.index = 0
        self.queue: list[tuple[float, float]] = []
        self.p = cfg.p_start

    def schedule(self, total: int) -> tuple[list[int], list[float]]:
        cfg = self.cfg
        b = min(total - 1, n_steps(cfg.anneal_end_frac, total))
        a = min(n_steps(cfg.anneal_start_frac, total), b)
        m = cfg.n_p_updates
        t = [a + (2 * i * (b - a) + m - 1) // (2 * (m - 1)) for i in range(m)]
        p = [cfg.p_start + i * (cfg.p_end - cfg.p_start) / (m - 1) for i in range(m)]
        return t, p

    def start(self, total: int) -> None:
        self.total = total
        self._advance(0)

    def _advance(self, step_index: int) -> None:
        ts, ps = self.schedule(self.total)
        active = max((i for i, t in enumerate(ts) if t <= step_index), default=-1)
        if active >= 0 and active != self.index:
            if self.queue and sum(b for _, b in self.queue) != 0:
                self.alpha *= sum(a for a, _ in self.queue) / sum(b for _, b in self.queue)
            self.queue.clear()
        if active >= 0:
            self.index = active
        self.p = ps[active] if active >= 0 else self.cfg.p_start

    def next_p(self) -> float | None:
        ts, ps = self.schedule(self.total)
        return ps[self.index + 1] if self.index + 1 < len(ps) else None

    @staticmethod
    def penalty(mu: Tensor, norms: Tensor, p: float) -> Tensor:
        active = mu > 0
        base = torch.clamp(norms * mu, min=1e-6)
        return (torch.where(active, base.pow(p), torch.zeros_like(base))).sum(dim=-1).mean()

    def pair(self, f: Tensor, norms: Tensor):
        nxt = self.next_p()
        if nxt is None:
            return None
        return float(self.penalty(f, norms, self.p)), float(self.penalty(f, norms, nxt))

    def after_step(self, ctx: StepContext, pair) -> None:
        if self.total is None:
            self.start(ctx.total_steps)
        if pair is not None:
            self.queue.append(pair)
            del self.queue[: -self.cfg.p_queue_len]
        self._advance(ctx.step + 1)

    def state_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "index": self.index,
            "queue": list(self.queue),
            "p": self.p,
            "total": self.total,
        }

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.index, self.p, self.total = (
            state["alpha"],
            state["index"],
            state["p"],
            state["total"],
        )
        self.queue = [tuple(q) for q in state["queue"]]


def geometric_median(x: Tensor, max_iter: int = 100) -> Tensor:
    """Weiszfeld iterations from the mean."""
    x = x.double()
    m = x.mean(dim=0)
    for _ in range(max_iter):
        w = 1 / torch.clamp((x - m).norm(dim=1), min=1e-8)
        new = (w[:, None] * x).sum(dim=0) / w.sum()
        done = (new - m).norm() < 1e-6 * (1 + new.norm())
        m = new
        if done:
            break
    return m.float()
