"""Invariants of the mean-site rule (docs/architectures.md "Where selection happens"), each checked
against a separate small implementation written from the formulas, through the model's own public path
(`pytest -k invariant`)."""

from __future__ import annotations

import math

import pytest
import torch

from vsae.archs.registry import build_config
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import EPS_STREAM, make_generator

D, F, K = 16, 64, 4
SPARSE_VSAES = ["vsae_topk", "vsae_batchtopk", "vsae_jumprelu", "vsae_gated"]


def make(name: str, **ov) -> SAE:
    if "topk" in name or name == "matryoshka":
        ov.setdefault("k", K)
    m = SAE(build_config(name, D, F, ov), seed=0)
    with torch.no_grad():  # move off the tied init so every path has something to do
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        m.W_dec.div_(m.W_dec.norm(dim=1, keepdim=True))  # unit policy: n_j = 1
        if m.cfg.sparsifier == "jumprelu":
            m.threshold.fill_(0.3)
    return m


def x_batch(n=32, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def ctx(seed=0, **kw) -> StepContext:
    return StepContext(
        step=0, total_steps=10, generator=make_generator(seed, EPS_STREAM), **({"diagnostics": True} | kw)
    )


def stable_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries of each row by a stable descending sort (lower index wins ties)."""
    order = torch.sort(-score, dim=-1, stable=True).indices[..., :k]
    return torch.zeros_like(score).scatter_(-1, order, 1.0).bool()


def reference(m: SAE, x: torch.Tensor, eps: torch.Tensor, site: str = "mean", dead=None) -> dict:
    """The loss of a var_flag = 1 model written from the formulas: selection on μ (or z), f = M ⊙ z."""
    w = {k: v.detach() for k, v in m.state_dict().items()}
    cfg = m.cfg
    xt = x - w["b_dec"] if cfg.apply_b_dec_to_input else x
    ell = torch.clamp(xt @ w["W_enc_logvar"] + w["b_enc_logvar"], cfg.logvar_min, cfg.logvar_max)
    out = {}
    if cfg.sparsifier == "gate":
        q = xt @ w["W_enc"]
        pi = q + w["b_gate"]
        mu = torch.relu(torch.exp(w["r_mag"]) * q + w["b_mag"])
        z = mu + torch.exp(ell / 2) * eps
        mask = pi > 0
        out["l1"] = torch.relu(pi).sum(-1).mean()
        out["aux_gate"] = (x - (torch.relu(pi) @ w["W_dec"] + w["b_dec"])).square().sum(-1).mean()
    else:
        u = xt @ w["W_enc"] + w["b_enc"]
        mu = torch.relu(u) if cfg.relu_mu else u
        z = mu + torch.exp(ell / 2) * eps
        s = z if site == "sample" else mu
        if cfg.sparsifier == "relu":
            mask = mu > 0
        elif cfg.sparsifier == "jumprelu":
            mask = s > w["threshold"]
            out["l0"] = mask.float().sum(-1).mean()
        else:  # abs mode ranks |site|; value mode ranks site, only positive entries eligible
            score = (
                s.abs() if cfg.topk_mode == "abs" else torch.where(s > 0, s, torch.full_like(s, -torch.inf))
            )
            if cfg.sparsifier == "topk":
                mask = stable_top(score, cfg.k)
            else:
                mask = stable_top(score.reshape(1, -1), cfg.k * x.shape[0]).reshape(s.shape)
            mask = mask & (score > -torch.inf)
    f = z if cfg.sparsifier == "relu" else z * mask
    scope = mask if cfg.kl_scope == "selected" else torch.ones_like(mask)
    out["kl"] = 0.5 * (scope * (mu.square() + torch.expm1(ell) - ell)).sum(-1).mean()
    out["x_hat"] = f @ w["W_dec"] + w["b_dec"]
    out["rec"] = (x - out["x_hat"]).square().sum(-1).mean()
    if dead is not None and cfg.sparsifier in ("topk", "batchtopk"):  # AuxK, ranked at the site
        e = x - out["x_hat"]
        k_aux = min(cfg.resolved_aux_k, int(dead.sum()))
        aux = s.abs() if cfg.topk_mode == "abs" else torch.where(s > 0, s, torch.full_like(s, -torch.inf))
        picked = stable_top(torch.where(dead, aux, -torch.inf), k_aux) & (aux > -torch.inf)
        e_hat = (z * picked) @ w["W_dec"]
        out["auxk"] = (e - e_hat).square().sum() / (e - e.mean(0)).square().sum()
    out |= {"f": f, "mask": mask, "mu": mu, "sigma": torch.exp(ell / 2), "z": z}
    return out


def eps_of(seed: int, n: int) -> torch.Tensor:
    """The ε the model draws: fp32 normals [N, F] from its ε stream."""
    return torch.randn(n, F, generator=make_generator(seed, EPS_STREAM))


@pytest.mark.parametrize("name", SPARSE_VSAES + ["vsae_iso"])
@pytest.mark.parametrize("site", ["mean", "sample"])
def test_invariant_vsae_loss_terms_equal_the_formulas(name, site):
    """Every term of a var_flag = 1 model recomputed from its weights (test 23 for the VSAEs)."""
    m = make(name, log_var_init=-3.0, selection_site=site)
    x = x_batch()
    dead = torch.arange(F) % 3 == 0
    out = m.loss_terms(x, ctx(seed=7, kl_scale=0.5, sparsity_scale=0.25, dead=dead))
    ref = reference(m, x, eps_of(7, x.shape[0]), site, dead)
    torch.testing.assert_close(out.x_hat, ref["x_hat"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.raw["rec"], ref["rec"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.raw["kl"], ref["kl"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["kl"], m.cfg.kl_coeff * 0.5 * ref["kl"], rtol=1e-5, atol=1e-9)
    for key in ("l0", "l1", "aux_gate", "auxk"):
        if key in ref:
            torch.testing.assert_close(out.raw[key], ref[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SPARSE_VSAES)
def test_invariant_mean_site_support_and_noise_power(name):
    """Test 39: the training code has f_det's support, and the decoded noise power is Σ_M σ² n²."""
    m = make(name, log_var_init=-3.0)
    x = x_batch(4)
    draws = 2000
    xs = x.repeat(draws, 1)  # every row of the repeated batch draws its own ε
    out = m.loss_terms(xs, ctx(seed=3))
    ref = reference(m, xs, eps_of(3, xs.shape[0]))
    support = out.diagnostics.f_sample != 0
    assert torch.equal(support, ref["mask"])
    assert torch.equal(out.diagnostics.mask_det, ref["mask"])
    noise = (out.x_hat - out.diagnostics.x_hat_det).square().sum(-1).reshape(draws, -1)
    predicted = (ref["mask"] * ref["sigma"].square()).sum(-1).reshape(draws, -1)[0]  # unit decoder: n = 1
    se = noise.std(0) / math.sqrt(draws)
    assert ((noise.mean(0) - predicted).abs() <= 4 * se).all(), (noise.mean(0), predicted)
    assert float(predicted.min()) > 0


@pytest.mark.parametrize("name", ["vsae_topk", "vsae_batchtopk", "vsae_jumprelu"])
def test_invariant_sample_site_is_a_real_option(name):
    """Under selection_site = sample the sampled support differs from f_det's on some token."""
    m = make(name, log_var_init=-1.0, selection_site="sample")
    out = m.loss_terms(x_batch(), ctx(seed=3))
    assert not torch.equal(out.diagnostics.f_sample != 0, out.diagnostics.mask_det)


@pytest.mark.parametrize("site", ["mean", "sample"])
def test_invariant_relu_selected_scope_is_mu_positive(site):
    """Scope selected with relu charges μ > 0 only (not z ≠ 0, which is every latent under noise)."""
    m = make("vsae_iso", log_var_init=-2.0, kl_scope="selected", selection_site=site)
    x = x_batch()
    out = m.loss_terms(x, ctx(seed=2))
    ref = reference(m, x, eps_of(2, x.shape[0]), site)
    torch.testing.assert_close(out.raw["kl"], ref["kl"], rtol=1e-5, atol=1e-6)
    assert 0 < float(ref["mask"].float().mean()) < 0.9


def test_registry_defaults_of_the_site_rule():
    """Sparse-decode VSAEs charge the selected latents, dense ones all; every model selects on μ;
    jumprelu's step sees u itself (no ReLU)."""
    scope = {"vsae_topk": "selected", "vsae_batchtopk": "selected", "vsae_jumprelu": "selected"}
    scope |= {"vsae_gated": "selected", "vsae_iso": "all", "vsae_multi": "all"}
    for name, expected in scope.items():
        cfg = build_config(name, D, F, {"k": K} if "topk" in name else {})
        assert (cfg.kl_scope, cfg.selection_site) == (expected, "mean"), name
    assert build_config("jumprelu", D, F).relu_mu is False


def test_invariant_training_samples_through_the_model():
    """Test 8 through loss_terms: E x̂(z) = x̂(μ) and E L_rec(z) = L_rec(μ) + Σσ²n² (vsae_iso)."""
    m = make("vsae_iso", log_var_init=-2.0)
    x = x_batch(2)
    draws = 20000
    out = m.loss_terms(x.repeat(draws, 1), ctx(seed=5))
    assert out.loss != m.loss_terms(x, ctx(seed=6)).loss
    xh = out.x_hat.reshape(draws, 2, D)
    ref = reference(m, x, torch.zeros(2, F))
    mean_xhat = ref["x_hat"]  # x̂(μ): ε = 0
    se = xh.std(0) / math.sqrt(draws)
    assert ((xh.mean(0) - mean_xhat).abs() <= 4 * se + 1e-6).all()
    rec = (x - xh).square().sum(-1)
    predicted = (x - mean_xhat).square().sum(-1) + ref["sigma"].square().sum(-1)
    assert ((rec.mean(0) - predicted).abs() <= 4 * rec.std(0) / math.sqrt(draws)).all()


@pytest.mark.parametrize("name", ["jumprelu", "vsae_jumprelu"])
def test_invariant_jumprelu_threshold_gradient_entry_by_entry(name):
    """Test 15 at θ < h/2: entries with u ≤ 0 outside the band contribute nothing to ∂/∂θ."""
    h, theta = 0.05, 0.01
    ov = {"threshold_init": theta, "bandwidth": h, "l0_target": 8.0}
    if name == "vsae_jumprelu":
        ov["log_var_init"] = -4.0
    m = SAE(build_config(name, D, F, ov), seed=0)
    x = x_batch(256)
    out = m.loss_terms(x, ctx(seed=4))
    w = {k: v.detach() for k, v in m.state_dict().items()}
    u = x @ w["W_enc"] + w["b_enc"]  # no centring for jumprelu; μ = u (no ReLU)
    band = ((u - theta).abs() <= h / 2).float()
    assert band.sum() > 0 and ((u <= 0) & (band > 0)).any()  # some u ≤ 0 sits in the band
    n = x.shape[0]
    # L0 term: λ s dP/dL̄0 · (1/N) Σ_n −(1/h) rect
    l0 = (u > theta).float().sum(-1).mean()
    dp = 2 * (l0 / 8.0 - 1) / 8.0
    expected_l0 = m.cfg.l0_coeff * dp * (-(1 / h) * band).sum(0) / n
    out.terms["l0"].backward(retain_graph=True)
    torch.testing.assert_close(m.threshold.grad, expected_l0, rtol=1e-4, atol=1e-6)
    # reconstruction term: Σ_n ∂rec/∂f_nj · −(height/h) rect, height θ + (z − μ)
    m.threshold.grad = None
    out.terms["rec"].backward()
    noise = torch.zeros_like(u)
    if name == "vsae_jumprelu":
        ell = torch.clamp(x @ w["W_enc_logvar"] + w["b_enc_logvar"], -20, 2)
        noise = torch.exp(ell / 2) * eps_of(4, n)
    f = (u + noise) * (u > theta)
    x_hat = f @ w["W_dec"] + w["b_dec"]
    d_f = -2 / n * (x - x_hat) @ w["W_dec"].T
    expected_rec = (d_f * -((theta + noise) / h) * band).sum(0)
    torch.testing.assert_close(m.threshold.grad, expected_rec, rtol=1e-4, atol=1e-6)


def test_invariant_batchtopk_trains_on_3d_input():
    """Test 17 through loss_terms: a [B, L, D] batch trains like its flattened [B·L, D] form."""
    m = make("batchtopk")
    x3 = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0))
    out3 = m.loss_terms(x3, ctx())
    out2 = m.loss_terms(x3.reshape(-1, D), ctx())
    torch.testing.assert_close(out3.loss, out2.loss)
    u = (x3.reshape(-1, D) - m.b_dec) @ m.W_enc + m.b_enc
    expected = min(K * 15, int((u > 0).sum()))
    assert float(out3.l0_train) * 15 == pytest.approx(expected)


@pytest.mark.parametrize("bad", [{"selection_site": "noise"}, {"prior": "equicorr", "kl_scope": "selected"}])
def test_bad_site_or_scope_is_a_one_line_error(bad):
    from vsae.errors import VsaeError

    with pytest.raises(VsaeError) as err:
        build_config("vsae_iso", D, F, bad)
    assert "\n" not in str(err.value)


def test_invariant_matryoshka_prefix_losses_from_the_weights():
    """Test 24: every prefix loss and the total recomputed from the weights (value-mode batch top-k)."""
    m = make("matryoshka")
    x = x_batch()
    out = m.loss_terms(x, ctx(dead=torch.zeros(F, dtype=torch.bool)))
    w = {k: v.detach() for k, v in m.state_dict().items()}
    u = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    score = torch.where(u > 0, u, torch.full_like(u, -torch.inf))
    mask = stable_top(score.reshape(1, -1), K * x.shape[0]).reshape(u.shape) & (u > 0)
    f = u * mask
    sizes = [F // 16, F // 16, F // 8, F // 4]
    ends = [sum(sizes[: i + 1]) for i in range(4)] + [F]
    total = 0.0
    for i, end in enumerate(ends):
        partial = w["b_dec"] + f[:, :end] @ w["W_dec"][:end]
        rec = (x - partial).square().sum(-1).mean()
        torch.testing.assert_close(out.raw[f"rec_g{i}"], rec, rtol=1e-5, atol=1e-6)
        total = total + rec / 5
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from vsae.store.synthetic import SyntheticConfig, write_synthetic
    from vsae.store.table import open_table

    root = tmp_path_factory.mktemp("site") / "s"
    write_synthetic(SyntheticConfig(store=str(root), d=D, atoms=32, tokens=4096, chunk_tokens=1024))
    return open_table(str(root))


def test_invariant_norm_factor_is_exact(table):
    """Test 27: c = sqrt(E‖x‖²) over the training split, recomputed from the stored values in fp64."""
    x = table.read(0, table.n_train).double()
    assert math.isclose(table.norm_factor(), float(x.square().sum(-1).mean().sqrt()), rel_tol=1e-9)


def test_invariant_unit_rows_kept_and_b_dec_never_renormalised(table, tmp_path):
    """Test 12 through the trainer's step: rows stay at norm 1, a non-unit b_dec keeps its norm's scale."""
    from vsae.train.config import TrainConfig
    from vsae.train.run import SAERun, SAESpec

    run = SAERun(SAESpec("standard", d_sae=F), table, TrainConfig(batch_size=64, steps=3), 3, 1.0, tmp_path)
    with torch.no_grad():
        run.model.b_dec.fill_(3.0)
    for t in range(1, 3):
        run.step(table.read(0, 64), t, fresh=False, log_now=False)
        assert (run.model.W_dec.double().norm(dim=1) - 1).abs().max() < 1e-5
    assert (
        abs(float(run.model.b_dec.norm()) - 12.0) < 0.5
    )  # 3·√16, moved by two small steps, not renormalised


def test_invariant_threshold_ema_follows_the_formula():
    """Test 18: the first defined statistic sets θ, then θ ← bθ + (1 − b)m with b = min(0.999, 1 − 20/T)."""
    m = make("topk")
    total = 1000
    b = 0.98
    stats = [0.5, 0.7, None, 0.2]
    expected = None
    for t, stat in enumerate(stats, start=200):  # past threshold_start_frac · T = 100
        value = None if stat is None else torch.tensor(stat)
        m.after_step(StepContext(step=t, total_steps=total), {"theta_stat": value})
        if stat is not None:
            expected = stat if expected is None else b * expected + (1 - b) * stat
        assert torch.allclose(m.threshold, torch.full((F,), expected), rtol=1e-6)
    early = make("topk")
    early.after_step(StepContext(step=50, total_steps=total), {"theta_stat": torch.tensor(0.5)})
    assert float(early.threshold[0]) == -1.0  # before the start fraction nothing is learned


def test_invariant_dead_counters_advance_by_the_global_batch(table, tmp_path):
    """Test 20 through the trainer's own step: τ_j += N unless latent j fired (by an independent top-k)."""
    from vsae.train.config import TrainConfig
    from vsae.train.run import SAERun, SAESpec

    n = 8
    run = SAERun(
        SAESpec("topk", d_sae=F, overrides={"k": 2}),
        table,
        TrainConfig(batch_size=n, steps=6),
        6,
        1.0,
        tmp_path / "o",
    )
    gen = torch.Generator().manual_seed(0)
    for t in range(6):
        x = torch.randn(n, D, generator=gen) * torch.linspace(
            0.2, 2, D
        )  # few tokens: some latents never fire
        w = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        u = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"] if t else None
        before = run.tau.clone()
        run.step(x, t, fresh=True, log_now=False)
        if t == 0:
            continue  # step 0 re-initialises b_dec from the batch first
        score = torch.where(u > 0, u, torch.full_like(u, -torch.inf))
        fired = (stable_top(score, 2) & (u > 0)).any(0)
        assert torch.equal(run.tau, torch.where(fired, torch.zeros_like(before), before + n))
    assert int(run.tau.max()) >= 2 * n  # some latent went several steps without firing


@pytest.mark.parametrize("var_flag", [0, 1])
def test_invariant_permean_kl_equals_the_textbook_gaussian_kl(var_flag):
    """Test 6 for permean: ½Σ[(μ̃ − m)²/s² + σ̃²/s² − 1 − ln(σ̃²/s²)] in fp64 (σ̃ ≡ 1 for var_flag 0)."""
    from vsae.archs import priors

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, F, generator=g, dtype=torch.float64)
    ell = torch.randn(5, F, generator=g, dtype=torch.float64) if var_flag else None
    m = torch.randn(F, generator=g, dtype=torch.float64)
    s = 1.7
    var = torch.exp(ell) if var_flag else torch.ones_like(mu)
    expected = 0.5 * ((mu - m) ** 2 / s**2 + var / s**2 - 1 - torch.log(var / s**2)).sum(-1)
    torch.testing.assert_close(priors.kl_permean(mu, ell, m, s, None), expected, rtol=1e-9, atol=1e-9)
