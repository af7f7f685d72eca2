"""More spec §9 invariants: symmetries, schedules, monitors and evaluation rules (`pytest -k invariant`)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from vsae.archs.fold import rescale_latents
from vsae.archs.registry import build_config
from vsae.archs.sae import SAE, StepContext, _PAnneal
from vsae.archs.steps import make_generator
from vsae.evaluate.core import EvalConfig, core_metrics

D, F = 16, 64


def make(name, seed=0, **ov):
    if name in ("topk", "batchtopk", "matryoshka", "vsae_topk", "vsae_batchtopk"):
        ov.setdefault("k", 4)
    return SAE(build_config(name, D, F, ov), seed=seed)


def ctx(step=0, total=10, seed=0, **kw):
    return StepContext(
        step=step, total_steps=total, generator=make_generator(seed, 1), **({"diagnostics": True} | kw)
    )


def x_batch(n=64, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


FREE = [
    ("standard", {}),
    ("standard_april", {}),
    ("panneal", {}),
    ("gated", {}),
    ("jumprelu", {}),
    ("vsae_iso", {"var_flag": 0}),
    ("vsae_iso", {"var_flag": 1, "log_var_init": -1.0}),
    ("vsae_multi", {"var_flag": 1, "log_var_init": -1.0}),
    ("vsae_gated", {"var_flag": 1, "log_var_init": -1.0}),
    ("vsae_jumprelu", {"var_flag": 0}),
    ("vsae_iso", {"prior": "permean", "var_flag": 1, "log_var_init": -1.0}),
]


@pytest.mark.parametrize("name,ov", FREE)
def test_invariant_free_policy_penalties_invariant_under_rescaling(name, ov):
    m = make(name, decoder_norm="free", **ov)
    if m.cfg.prior == "permean":
        with torch.no_grad():
            m.prior_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
    scale = torch.linspace(0.5, 3.0, F)
    r = rescale_latents(m, scale)
    x = x_batch()
    a, b = m.loss_terms(x, ctx(seed=4)), r.loss_terms(x, ctx(seed=4))
    for key in ("rec", "l1", "lp", "l0", "aux_gate", "kl"):
        torch.testing.assert_close(a.terms[key], b.terms[key], rtol=1e-4, atol=1e-5, msg=key)


def test_invariant_folding_keeps_permean_prior_and_sampled_codes():
    from vsae.archs.fold import fold_to_unit

    m = make("vsae_iso", decoder_norm="free", prior="permean", log_var_init=-1.0)
    with torch.no_grad():
        m.prior_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
        m.W_dec.mul_(torch.linspace(0.5, 2.0, F)[:, None])
    folded = fold_to_unit(m)
    assert torch.equal(folded.prior_mean, m.prior_mean)
    x = x_batch()
    kl_a = m.loss_terms(x, ctx(seed=2)).raw["kl"]
    kl_b = folded.loss_terms(x, ctx(seed=2)).raw["kl"]
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-4, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    n = m.W_dec.norm(dim=1)
    torch.testing.assert_close(
        folded.encode(x, sample=True, generator=g1),
        m.encode(x, sample=True, generator=g2) * n,
        rtol=1e-4,
        atol=1e-5,
    )
    bt = make("batchtopk")
    with torch.no_grad():
        bt.threshold.fill_(0.1)
        bt.W_dec.mul_(torch.linspace(0.5, 2.0, F)[:, None])
    torch.testing.assert_close(
        fold_to_unit(bt)(x), bt(x), rtol=1e-5, atol=1e-5
    )  # threshold rule folds exactly


def test_invariant_matryoshka_loss_is_weighted_sum_and_single_group_is_batchtopk():
    m = make("matryoshka")
    x = x_batch()
    out = m.loss_terms(x, ctx(dead=torch.zeros(F, dtype=torch.bool)))
    g = len(m.cfg.group_fractions)
    expected = sum(out.raw[f"rec_g{i}"] / g for i in range(g)) + out.terms["auxk"]
    torch.testing.assert_close(out.loss, expected)
    single = make("matryoshka", group_fractions=[1.0])
    base = make("batchtopk")
    torch.testing.assert_close(single.loss_terms(x, ctx()).loss, base.loss_terms(x, ctx()).loss)


def test_invariant_p_annealing_switch_steps_and_queue():
    cfg = build_config("panneal", D, F, {"n_p_updates": 10, "anneal_start_frac": 0.0, "anneal_end_frac": 0.5})
    state = _PAnneal(cfg)
    assert state.schedule(10)[0] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    cfg3 = build_config("panneal", D, F, {"n_p_updates": 3, "anneal_start_frac": 0.0, "anneal_end_frac": 0.5})
    assert _PAnneal(cfg3).schedule(2)[0] == [0, 1, 1]  # a = 0, b = min(T−1, n(0.5·2)) = 1, half rounds up
    m = make("panneal", n_p_updates=3, anneal_start_frac=0.0, anneal_end_frac=1.0)
    x = x_batch()
    total = 6
    ts = _PAnneal(m.cfg).schedule(total)[0]
    for t in range(total):
        out = m.loss_terms(x, ctx(step=t, total=total))
        m.after_step(ctx(step=t, total=total), out.stats)
        if t + 1 in ts:
            assert m.p_state.queue == []  # emptied right after each switch
    assert m.p_state.p == pytest.approx(m.cfg.p_end)
    one = make("panneal")
    one.loss_terms(x, ctx(step=0, total=1))
    assert one.p_state.p == pytest.approx(one.cfg.p_end)  # T = 1 trains with p_end from step 0


def test_invariant_vsae_iso_decoded_noise_power_matches_prediction():
    m = make("vsae_iso")  # defaults: β = 0.1/F, unit decoder
    x = x_batch(8)
    xt = m._centre(x)
    mu, _ = m._mean(xt)
    ell, _ = m._log_var(xt)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [(m.decode(m._sample(mu, ell, gen)) - m.decode(mu)).square().sum(-1) for _ in range(2000)]
    )
    beta = m.cfg.kl_coeff
    predicted = F * beta / (beta + 2)
    se = draws.std() / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - predicted) < 4 * float(se)


def test_invariant_logvar_bound_monitor_and_warning(tmp_path, caplog):
    m = make("vsae_topk")
    out = m.loss_terms(x_batch(), ctx())
    assert float(out.diagnostics.frac_logvar_at_bound) == 0.0
    with torch.no_grad():
        m.b_enc_logvar.fill_(-25.0)
    out = m.loss_terms(x_batch(), ctx())
    assert float(out.diagnostics.frac_logvar_at_bound) > 0.01
    from vsae.train.run import SAERun  # the trainer turns it into a logged warning

    run = SAERun.__new__(SAERun)
    run.model, run.cfg, run.tau, run.t_dead = m, m.cfg, torch.zeros(F, dtype=torch.int64), 10
    run.lr, run.tokens_seen = 1e-3, 0
    from vsae.train.schedules import Schedule

    run.schedule = Schedule.derive(10, 0.0, 0.0, 0.0, 0.0)
    with caplog.at_level(logging.WARNING, logger="vsae.train"):
        run._metrics(x_batch(), out, ctx(), torch.tensor(1.0))
    assert "clamp bound" in caplog.text


def test_invariant_evaluation_uses_threshold_rule_independent_of_batch_size(tmp_path):
    from vsae.archs.checkpoint import convert_space, write_checkpoint
    from vsae.store.synthetic import SyntheticConfig, write_synthetic
    from vsae.store.table import open_table

    write_synthetic(
        SyntheticConfig(store=str(tmp_path / "s"), d=D, atoms=32, tokens=12000, chunk_tokens=1024)
    )
    table = open_table(str(tmp_path / "s"))
    m = make("batchtopk")
    with torch.no_grad():
        m.threshold.fill_(0.3)
    raw = convert_space(m, 1.0, "raw")
    small = core_metrics(raw, table, 1.0, EvalConfig(batch_size=97))
    large = core_metrics(raw, table, 1.0, EvalConfig(batch_size=4096))
    for key in ("l0", "mse", "fve"):
        assert math.isclose(small[key], large[key], rel_tol=1e-9), key
    assert large["l0_train_rule"] == pytest.approx(4.0, rel=1e-6)
    write_checkpoint(tmp_path / "ck", m, 1.0, {"provenance": {}})


@pytest.mark.parametrize("site", ["mean", "sample"])
def test_invariant_sampled_threshold_inference_acts_on_z(site):
    m = make("vsae_topk", inference="threshold", log_var_init=-1.0, selection_site=site)
    with torch.no_grad():
        m.threshold.fill_(0.2)
    x = x_batch()
    g = torch.Generator().manual_seed(0)
    mu = (x - m.b_dec) @ m.W_enc + m.b_enc  # abs mode: μ = u
    sigma = torch.exp(0.5 * ((x - m.b_dec) @ m.W_enc_logvar + m.b_enc_logvar))
    z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    gate = mu if site == "mean" else z
    got = m.encode(x, sample=True, generator=g)
    torch.testing.assert_close(got, z * (gate.abs() > 0.2))
    det = make("vsae_topk", inference="threshold", var_flag=0)
    with torch.no_grad():
        det.threshold.fill_(0.2)
    assert torch.equal(det.encode(x, sample=True, generator=torch.Generator()), det.encode(x))


def _stable_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Reference selection: the k largest of each row by a stable descending sort (lower index wins)."""
    order = torch.sort(-score, dim=-1, stable=True).indices[..., :k]
    return torch.zeros_like(score).scatter_(-1, order, 1.0)


def _jumprelu_scope(m, x):
    return (((x - m.b_dec * m.cfg.apply_b_dec_to_input) @ m.W_enc + m.b_enc) > m.threshold).float()


def _batch_scope(m, x):
    u = torch.relu((x - m.b_dec) @ m.W_enc + m.b_enc)  # value mode: only μ > 0 is eligible
    score = torch.where(u > 0, u, torch.full_like(u, -torch.inf))
    return (_stable_top(score.reshape(1, -1), 4 * x.shape[0]).reshape(u.shape) * (u > 0)).float()


@pytest.mark.parametrize(
    "name,base,scope_fn",
    [
        ("vsae_gated", "gated", lambda m, x: (((x - m.b_dec) @ m.W_enc + m.b_gate) > 0).float()),
        ("vsae_jumprelu", "jumprelu", _jumprelu_scope),
        ("vsae_batchtopk", "batchtopk", _batch_scope),
    ],
)
def test_invariant_base_equalities_var0(name, base, scope_fn):
    beta = 0.2
    b = make(base)
    x = x_batch()
    c = ctx(kl_scale=0.5)
    for scope in ("selected", "all"):
        v = make(name, var_flag=0, kl_coeff=beta, kl_scope=scope)
        mu = v._mean(v._centre(x))[0].detach()
        weight = scope_fn(v, x) if scope == "selected" else torch.ones_like(mu)
        expected = b.loss_terms(x, c).loss + beta * 0.5 * 0.5 * (weight * mu.square()).sum(-1).mean()
        torch.testing.assert_close(v.loss_terms(x, c).loss, expected, rtol=1e-5, atol=1e-6)


def test_invariant_vsae_topk_selected_scope_charges_selected_only():
    beta = 0.3
    v = make("vsae_topk", var_flag=0, kl_coeff=beta, kl_scope="selected")
    x = x_batch()
    out = v.loss_terms(x, ctx())
    mu = v._mean(v._centre(x))[0]
    _, mask = v._train_code(mu, mu, None)
    torch.testing.assert_close(out.raw["kl"], 0.5 * (mask * mu.square()).sum(-1).mean())


def test_invariant_gated_l1_bookkeeping_and_finite_metrics():
    out = make("gated").loss_terms(x_batch(), ctx())
    assert torch.equal(out.raw["l1"], out.raw["l1_gate"])
    assert all(torch.isfinite(v) for v in out.raw.values())


def test_invariant_auxk_residual_detached_and_no_b_dec():
    m = make("topk")
    dead = torch.zeros(F, dtype=torch.bool)
    dead[torch.arange(20) * 3 + 1] = True  # scattered: AuxK ranks the dead columns, then maps them back
    x = x_batch()
    with torch.no_grad():
        m.b_dec.fill_(5.0)
    raw = {}
    xt = m._centre(x)
    z = m._mean(xt)[0]
    f, _ = m._train_code(z, z, None)
    x_hat = m.decode(f)
    from vsae.archs import topk_terms
    from vsae.archs.select import topk_mask

    values_at = lambda crow, cols, rows: z[rows, cols]  # noqa: E731
    aux = topk_terms.auxk(x, x_hat, z, True, values_at, m.W_dec, dead, m.cfg.resolved_aux_k, raw)

    e = (x - x_hat).detach()
    mask = topk_mask(z, dead.expand_as(z), min(m.cfg.resolved_aux_k, 20), True)
    expected = (e - (z * mask) @ m.W_dec).square().sum() / (e - e.mean(0)).square().sum()
    torch.testing.assert_close(aux, expected)  # ê = a W_dec without b_dec
    grads = torch.autograd.grad(aux, [m.b_dec], allow_unused=True)
    assert grads[0] is not None  # b_dec reaches AuxK only through input centring


def test_invariant_projected_gradient_is_tangent():
    from vsae.train.run import project_radial

    m = make("standard")
    m.loss_terms(x_batch(), ctx()).loss.backward()
    with torch.no_grad():
        m.W_dec.grad[3] = 0
        m.W_dec[5] *= 3.0  # a row off the unit sphere: the projection divides by ‖d‖², not 1
    g0, d = m.W_dec.grad.double().clone(), m.W_dec.detach().double()
    project_radial(m.W_dec)
    g = m.W_dec.grad.double()
    assert ((g * d).sum(1).abs() <= 1e-6 * g.norm(dim=1) + 1e-12).all()
    unit = d / d.norm(dim=1, keepdim=True)
    expected = g0 - (g0 * unit).sum(1, keepdim=True) * unit  # the tangential part is kept, not only ⟂
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6 * float(g0.abs().max()))


def test_invariant_jumprelu_pseudo_derivatives_entry_by_entry():
    from vsae.archs.sparsifiers.jumprelu_ste import jumprelu, step

    h = 0.5
    u = torch.tensor([[0.0, 0.4, 0.6, 1.2]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    jumprelu(u, theta, h).sum().backward()
    rect = ((u - theta).abs() / h <= 0.5).float()
    torch.testing.assert_close(u.grad, (u > theta).float())
    torch.testing.assert_close(theta.grad, (-(theta / h) * rect).sum(0))
    theta.grad = None
    u2 = u.detach().clone().requires_grad_()
    step(u2, theta, h).sum().backward()
    torch.testing.assert_close(theta.grad, (-(1 / h) * rect).sum(0))
    assert float(u2.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["topk", "batchtopk", "vsae_topk", "standard", "gated"])
def test_invariant_bf16_autocast_keeps_selection_scores_fp32(name):
    m = make(name)
    x = x_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, _ = m._mean(m._centre(x))
        out = m.loss_terms(x, ctx(dead=torch.ones(F, dtype=torch.bool)))
    if m.cfg.topk_family:
        assert mu.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in m.parameters())


def test_bf16_training_through_the_cli(tmp_path):
    from conftest import run_cli

    run_cli(
        "synthetic",
        "--store",
        tmp_path / "s",
        "--d",
        "16",
        "--atoms",
        "32",
        "--tokens",
        "8000",
        "--chunk-tokens",
        "1024",
    )
    run_cli(
        "train",
        "--store",
        tmp_path / "s",
        "--arch",
        "topk",
        "--arch",
        "vsae_topk",
        "--dict-size",
        "64",
        "--k",
        "4",
        "--steps",
        "5",
        "--batch-size",
        "256",
        "--compute-dtype",
        "bfloat16",
        "--out",
        tmp_path / "o",
    )
    import json

    cfg = json.loads((tmp_path / "o" / "topk_64_k4_s0" / "cfg.json").read_text())
    assert cfg["training"]["compute_dtype"] == "bfloat16"


def test_cfg_and_resume_recipes_of_earlier_versions_load_with_todays_names():
    """`variational` became `vsae_family`, `is_variational` became `samples`, and JumpReLU's L0 coefficient
    (once `l1_coeff`) is `l0_coeff`: old cfg.json files and resume recipes still load, meaning the same."""
    from vsae.archs.config import SAEConfig
    from vsae.errors import VsaeError
    from vsae.train.run import upgrade_recipe

    now = build_config("vsae_jumprelu", 8, 32, {"l0_coeff": 1.5})
    old = {("variational" if k == "vsae_family" else k): v for k, v in now.to_dict().items()}
    old = {k: v for k, v in old.items() if k not in ("samples", "l0_coeff")} | {
        "is_variational": True,
        "l1_coeff": 1.5,
    }
    assert SAEConfig.from_dict(old) == now and now.samples
    recipe = {f"model.{k}": v for k, v in old.items()} | {"lr": 1e-3}
    assert upgrade_recipe(recipe) == {f"model.{k}": v for k, v in now.to_dict().items() if k != "samples"} | {
        "lr": 1e-3
    }
    with pytest.raises(VsaeError, match="l0_coeff"):
        build_config("jumprelu", 8, 32, {"l1_coeff": 0.5})
