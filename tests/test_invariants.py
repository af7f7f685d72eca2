"""Spec §9 invariants of the architectures (run alone with `pytest -k invariant`)."""

from __future__ import annotations

import math

import pytest
import torch

from vsae.archs import cpu_topk, priors
from vsae.archs.checkpoint import convert_space, load_sae, write_checkpoint
from vsae.archs.cpu_topk_numba import BLOCK
from vsae.archs.registry import ARCHS, build_config
from vsae.archs.sae import SAE, TERM_KEYS, StepContext
from vsae.archs.select import batch_topk_mask, row_topk, scores, select_csr, topk_mask
from vsae.archs.steps import EPS_STREAM, INIT_STREAM, make_generator, n_steps
from vsae.errors import VsaeError
from vsae.train.schedules import Schedule

D, F = 16, 64
TOPK = ("topk", "batchtopk", "matryoshka", "vsae_topk", "vsae_batchtopk")


def variants():
    """Every registry name × var_flag where it applies."""
    for name in ARCHS:
        for vf in (0, 1) if name.startswith("vsae") else (None,):
            yield name, ({} if vf is None else {"var_flag": vf})


def make(name: str, seed: int = 0, **overrides) -> SAE:
    if name in TOPK:
        overrides.setdefault("k", 4)
    return SAE(build_config(name, D, F, overrides), seed=seed)


def ctx(step=0, total=10, dead=None, seed=0, **kw) -> StepContext:
    """A step context that asks for the logging-step diagnostics too (unless told otherwise)."""
    kw = {"diagnostics": True} | kw
    return StepContext(
        step=step, total_steps=total, dead=dead, generator=make_generator(seed, EPS_STREAM), **kw
    )


@pytest.fixture
def x():
    return torch.randn(32, D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name,ov", list(variants()))
def test_invariant_loss_equals_sum_of_the_seven_terms(name, ov, x):
    out = make(name, **ov).loss_terms(x, ctx(dead=torch.ones(F, dtype=torch.bool)))
    assert set(out.terms) == set(TERM_KEYS)
    assert out.loss == sum(out.terms.values())
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("scope", ["selected", "all"])
def test_invariant_vsae_topk_var0_equals_topk_abs_plus_l2(x, scope):
    beta = 0.3
    base = make("topk", topk_mode="abs", relu_mu=False)
    var = make("vsae_topk", var_flag=0, kl_coeff=beta, kl_scope=scope)
    c = ctx(kl_scale=0.5)
    lb, lv = base.loss_terms(x, c), var.loss_terms(x, c)
    mu = ((x - var.b_dec) @ var.W_enc + var.b_enc).detach()
    # the selected set, from a stable descending sort of |μ| (lower index wins ties)
    order = torch.sort(-mu.abs(), dim=-1, stable=True).indices[:, :4]
    weight = torch.zeros_like(mu).scatter_(-1, order, 1.0) if scope == "selected" else torch.ones_like(mu)
    expected = lb.loss + beta * 0.5 * 0.5 * (weight * mu.square()).sum(-1).mean()
    torch.testing.assert_close(lv.loss, expected, rtol=1e-5, atol=1e-6)
    # with β = 0 the two are the same model: identical gradients for every shared parameter
    zero = make("vsae_topk", var_flag=0, kl_coeff=0.0, kl_scope=scope)
    base.loss_terms(x, c).loss.backward()
    zero.loss_terms(x, c).loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(zero, name).grad, getattr(base, name).grad)


def test_invariant_vsae_iso_beta0_equals_standard(x):
    a, b = make("standard"), make("vsae_iso", var_flag=0, kl_coeff=0.0)
    la, lb = a.loss_terms(x, ctx()), b.loss_terms(x, ctx())
    torch.testing.assert_close(la.loss, lb.loss)
    la.loss.backward()
    lb.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(a, name).grad, getattr(b, name).grad)


def test_invariant_vsae_multi_rho0_equals_vsae_iso(x):
    a, b = make("vsae_iso", log_var_init=-2.0), make("vsae_multi", corr_rate=0.0, log_var_init=-2.0)
    torch.testing.assert_close(a.loss_terms(x, ctx()).loss, b.loss_terms(x, ctx()).loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", [n for n in ARCHS if n.startswith("vsae")])
def test_invariant_identical_init_with_base(name):
    base = {
        "vsae_iso": "standard",
        "vsae_multi": "standard",
        "vsae_topk": "topk",
        "vsae_gated": "gated",
        "vsae_jumprelu": "jumprelu",
        "vsae_batchtopk": "batchtopk",
    }[name]
    for vf in (0, 1):
        v, b = make(name, var_flag=vf).state_dict(), make(base).state_dict()
        for key in b:
            if key in v and key != "threshold":
                assert torch.equal(v[key], b[key]), (name, key)


@pytest.mark.parametrize("f", [1, 2, 7, 64])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9, "neg"])
@pytest.mark.parametrize("var", [0, 1])
def test_invariant_equicorr_closed_form_equals_dense(f, rho, var):
    if rho == "neg":
        if f == 1:
            return
        rho = -0.5 / (f - 1)
    g = torch.Generator().manual_seed(f)
    for scale in (0.1, 1.0, 10.0):
        mu = (torch.randn(3, f, generator=g, dtype=torch.float64) * scale).requires_grad_()
        ell = (torch.rand(3, f, generator=g, dtype=torch.float64) * 6 - 4).requires_grad_() if var else None
        closed = priors.kl_equicorr(mu, ell, rho)
        r = (1 - rho) * torch.eye(f, dtype=torch.float64) + rho
        rinv = torch.inverse(r)
        sigma = torch.exp(ell) if var else torch.ones_like(mu)
        dense = 0.5 * (
            (rinv.diagonal() * sigma).sum(-1)
            + ((mu @ rinv) * mu).sum(-1)
            - f
            + torch.slogdet(r)[1]
            - (ell.sum(-1) if var else 0)
        )
        torch.testing.assert_close(closed, dense, rtol=1e-6, atol=1e-9)
        gc = torch.autograd.grad(closed.sum(), [mu] + ([ell] if var else []))
        gd = torch.autograd.grad(dense.sum(), [mu] + ([ell] if var else []))
        for a, b in zip(gc, gd, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_invariant_invalid_rho_rejected():
    with pytest.raises(VsaeError):
        build_config("vsae_multi", D, F, {"corr_rate": 1.0})
    with pytest.raises(VsaeError):
        build_config("vsae_multi", D, F, {"corr_rate": -1 / (F - 1)})
    with pytest.raises(VsaeError):
        build_config("vsae_multi", D, F, {"kl_scope": "selected"})
    build_config("vsae_multi", D, 1, {"corr_rate": -5.0})


def test_invariant_kl_nonnegative_and_exact_points():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(50, F, generator=g) * 10
    ell = torch.rand(50, F, generator=g) * 22 - 20
    assert (priors.kl_iso(mu, ell, None) >= -1e-5 * F).all()
    assert (priors.kl_equicorr(mu, ell, 0.5) >= -1e-5 * F).all()
    assert float(priors.kl_iso(torch.zeros(1, F), torch.zeros(1, F), None)) == 0.0
    torch.testing.assert_close(priors.kl_iso(mu, None, None), 0.5 * mu.square().sum(-1))
    torch.testing.assert_close(
        priors.kl_permean(mu, ell, torch.zeros(F), 1.0, None), priors.kl_iso(mu, ell, None)
    )


@pytest.mark.parametrize("name,ov", list(variants()))
def test_invariant_deterministic_inference(name, ov, x):
    m = make(name, log_var_init=-1.0, **ov) if ov else make(name)
    m.train()
    a = m.encode(x)
    m.eval()
    assert torch.equal(a, m.encode(x))
    s1 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    s2 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    s3 = m.encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2)
    assert torch.equal(s1, s3) == (not m.cfg.samples)
    if not m.cfg.samples:
        assert torch.equal(s1, a)


def test_invariant_training_samples_unbiasedly(x):
    m = make("vsae_iso", log_var_init=-2.0)
    l1 = m.loss_terms(x, ctx(seed=1)).loss
    l2 = m.loss_terms(x, ctx(seed=2)).loss
    assert l1 != l2
    xs = x[:2]
    mu = torch.relu((xs - m.b_dec) @ m.W_enc + m.b_enc)
    sigma = math.exp(-1.0)
    draws = 20000
    g = torch.Generator().manual_seed(0)
    z = mu + sigma * torch.randn(draws, *mu.shape, generator=g)
    xh = (z @ m.W_dec + m.b_dec).detach()
    mean_xhat = m.decode(mu).detach()
    se = xh.std(0) / math.sqrt(draws)
    assert ((xh.mean(0) - mean_xhat).abs() <= 4 * se + 1e-6).all()
    rec = (xs - xh).square().sum(-1)
    predicted = (xs - mean_xhat).square().sum(-1) + F * sigma**2
    assert ((rec.mean(0) - predicted).abs() <= 4 * rec.std(0) / math.sqrt(draws)).all()


@pytest.mark.parametrize("name,ov", list(variants()))
def test_invariant_raw_space_round_trip(name, ov, x, tmp_path):
    m = make(name, **ov)
    c = 3.7
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        if m.cfg.topk_family:
            m.threshold.fill_(0.05)
        if m.cfg.sparsifier == "jumprelu":
            m.threshold.clamp_(min=1e-3)
    write_checkpoint(tmp_path / "ck", m, c, {"provenance": {}})
    raw = load_sae(tmp_path / "ck")
    torch.testing.assert_close(raw.encode(c * x), c * m.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw(c * x), c * m(x), rtol=1e-5, atol=1e-4)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        raw.encode(c * x, sample=True, generator=g1),
        c * m.encode(x, sample=True, generator=g2),
        rtol=1e-5,
        atol=1e-5,
    )
    back = convert_space(raw, c, "normalized")
    for k, v in m.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=1e-6, atol=1e-7)


def test_invariant_logvar_conversion():
    m = make("vsae_iso")
    c = 2.5
    raw = convert_space(m, c, "raw")
    torch.testing.assert_close(raw.b_enc_logvar, m.b_enc_logvar + 2 * math.log(c))
    torch.testing.assert_close(raw.W_enc_logvar, m.W_enc_logvar / c)
    torch.testing.assert_close(raw.logvar_min, m.logvar_min + 2 * math.log(c))


@pytest.mark.parametrize("mode", ["value", "abs"])
def test_invariant_topk_counts(mode, x):
    m = make("topk", topk_mode=mode, relu_mu=mode == "value")
    z = (x - m.b_dec) @ m.W_enc + m.b_enc
    mu = torch.relu(z) if mode == "value" else z
    f, _ = m._train_code(mu, mu, None)
    nnz = (f != 0).sum(-1)
    if mode == "value":
        assert torch.equal(nnz, torch.clamp((mu > 0).sum(-1), max=4))
    else:
        assert (nnz == 4).all()
        sel = f != 0
        assert torch.equal(f[sel], z[sel])
        smallest = torch.where(sel, z.abs(), torch.inf).min(-1).values
        largest_other = torch.where(~sel, z.abs(), -torch.inf).max(-1).values
        assert (largest_other <= smallest).all()


def test_invariant_batchtopk_on_3d_input():
    m = make("batchtopk")
    x3 = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0))
    xt = m._centre(x3.reshape(-1, D))
    mu = torch.relu(xt @ m.W_enc + m.b_enc)
    f, _ = m._train_code(mu, mu, None)
    assert int((f != 0).sum()) == min(4 * 15, int((mu > 0).sum()))
    assert int((m.encode(x3) != 0).sum()) <= 4 * 15


def test_invariant_selection_ties_follow_the_lower_index():
    score = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0, 3.0]])
    eligible = torch.ones_like(score, dtype=torch.bool)
    mask = topk_mask(score, eligible, 2)
    assert mask.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]
    bmask = batch_topk_mask(score, eligible, 3)  # budget 6 over the flattened batch
    order = torch.sort(-score.reshape(-1), stable=True).indices[:6]
    ref = torch.zeros(10, dtype=torch.bool)
    ref[order] = True
    assert torch.equal(bmask.reshape(-1), ref)
    s, positive = scores(torch.tensor([[-2.0, 2.0, 1.0]]), "abs")
    assert topk_mask(s, None, 1, positive).tolist() == [[True, False, False]]
    s, positive = scores(torch.tensor([[-2.0, 0.0, 1.0, 1.0]]), "value")
    assert topk_mask(s, None, 3, positive).tolist() == [[False, False, True, True]]


def test_invariant_threshold_ema_robust_and_decay():
    m = make("topk")
    m.after_step(ctx(step=5, total=10), {"theta_stat": None})
    assert float(m.threshold[0]) == -1.0
    for total, expected in ((10, 0.0), (1000, 0.98), (10**6, 0.999)):
        assert math.isclose(m.threshold_decay(total), expected)


def test_invariant_auxk_zero_without_dead_and_grads_only_to_dead(x):
    m = make("topk")
    out = m.loss_terms(x, ctx(dead=torch.zeros(F, dtype=torch.bool)))
    assert float(out.terms["auxk"]) == 0.0 and not out.terms["auxk"].requires_grad
    dead = torch.zeros(F, dtype=torch.bool)
    dead[:10] = True
    out = m.loss_terms(x, ctx(dead=dead))
    out.terms["auxk"].backward()
    assert m.W_dec.grad[10:].abs().sum() == 0
    assert m.W_enc.grad[:, 10:].abs().sum() == 0


def test_invariant_schedules_on_tiny_runs():
    for total in (1, 2, 3):
        s = Schedule.derive(total, 0.02, 0.2, 0.05, 0.1)
        for t in range(total):
            for v in (s.lr(t), s.sparsity(t), s.kl(t)):
                assert 0 < v <= 1 and math.isfinite(v)
    assert n_steps(0.29, 100) == 29 and n_steps(0.57, 100) == 57
    s = Schedule.derive(100, 0.1, 0.2, 0.05, 0.1)
    assert s.lr(s.warmup - 1) == 1.0
    lrs = [s.lr(t) for t in range(100)]
    assert all(a <= b for a, b in zip(lrs[: s.warmup], lrs[1 : s.warmup], strict=False))
    assert all(a >= b for a, b in zip(lrs[s.decay_start :], lrs[s.decay_start + 1 :], strict=False))


def test_invariant_free_rejected_for_topk_family():
    for name in TOPK:
        with pytest.raises(VsaeError, match="free"):
            build_config(name, D, F, {"decoder_norm": "free", "k": 4})
    for name in (
        "standard",
        "standard_april",
        "panneal",
        "gated",
        "jumprelu",
        "vsae_iso",
        "vsae_multi",
        "vsae_gated",
        "vsae_jumprelu",
    ):
        build_config(name, D, F, {"decoder_norm": "free"})


def test_invariant_vsae_scale_defaults():
    # β = 2δv/n_dec with δ = 0.04 of the variance v (v = 1 without a store)
    cfg = build_config("vsae_topk", D, F, {"k": 32}) if F > 32 else None
    assert cfg.kl_coeff == 2.5e-3 and math.isclose(cfg.log_var_init, -6.686, abs_tol=1e-3)
    iso = build_config("vsae_iso", D, 64, {})
    assert math.isclose(iso.kl_coeff, 0.08 / 64)
    assert math.isclose(build_config("vsae_gated", D, F, {}).kl_coeff, 0.08 / 32)  # n_dec = 32
    assert math.isclose(build_config("vsae_jumprelu", D, F, {"l0_target": 16.0}).kl_coeff, 0.08 / 16)
    half = build_config("vsae_topk", D, F, {"k": 32}, noise_unit=0.5)
    assert math.isclose(half.kl_coeff, 1.25e-3) and half.noise_unit == 0.5
    user = build_config("vsae_iso", D, 64, {"kl_coeff": 1.0})
    assert user.kl_coeff_source == "user" and math.isclose(user.log_var_init, math.log(1 / 3))


def test_invariant_logvar_init_at_step0(x):
    m = make("vsae_topk")
    ell, pre = m._log_var(m._centre(x))
    assert (ell == m.cfg.log_var_init).all()
    with pytest.raises(VsaeError):
        build_config("vsae_iso", D, F, {"log_var_init": -30.0})


def test_invariant_random_streams_are_distinct():
    a = torch.randn(8, generator=make_generator(1, INIT_STREAM))
    b = torch.randn(8, generator=make_generator(0, EPS_STREAM))
    assert not torch.equal(a, b)
    assert torch.equal(make("topk", seed=3).W_dec, make("topk", seed=3).W_dec)


def test_invariant_jumprelu_threshold_gradients_and_projection():
    m = make("jumprelu", bandwidth=0.5, threshold_init=0.1)
    assert "log_threshold" not in m.state_dict()
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    out = m.loss_terms(x, ctx())
    out.terms["l0"].backward(retain_graph=True)
    assert m.threshold.grad.abs().sum() > 0
    m.threshold.grad = None
    out.terms["rec"].backward()
    assert m.threshold.grad.abs().sum() > 0
    with torch.no_grad():
        m.threshold.fill_(-1.0)
    m.after_step(ctx(), {})
    assert (m.threshold == 1e-6).all()


@pytest.mark.parametrize("k", [4, 100])  # 4 of 512: the CSR backward; 100: denser than the limit
@pytest.mark.parametrize("x_grad", [False, True])
def test_sparse_decode_and_encoder_backward_match_dense(k, x_grad):
    """encode_linear, selected_linear and sparse_decode give autograd's gradients, for x too when x asks
    for one (training data does not, and its gradient is then skipped), and for the input shift c of
    u = (x − c) W + b (b_dec's centring; selected_linear takes it apart from x)."""
    from vsae.archs.select import select_csr
    from vsae.archs.sparse import encode_linear, selected_linear, sparse_decode

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, D, generator=g, dtype=torch.float64).requires_grad_(x_grad)
    w_enc = torch.randn(D, 512, generator=g, dtype=torch.float64).requires_grad_()
    b_enc = torch.zeros(512, dtype=torch.float64).requires_grad_()
    w_dec = torch.randn(512, D, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(D, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.randn(40, D, generator=g, dtype=torch.float64)
    wrt = [w_enc, b_enc, w_dec, c] + [x] * x_grad
    grads = []
    for path in ("encode_linear", "selected_linear", "autograd"):
        z = encode_linear(x - c, w_enc, b_enc) if path == "encode_linear" else (x - c) @ w_enc + b_enc
        mask = topk_mask(z.abs(), None, k)
        if path == "selected_linear":
            crow, cols, rows = select_csr(z.detach().abs(), None, k, False, per_batch=False)
            f = torch.zeros_like(z).index_put(
                (rows, cols), selected_linear(x, w_enc, b_enc, z.detach(), crow, cols, rows, c)
            )
        else:
            f = z * mask
        x_hat = f @ w_dec if path == "autograd" else sparse_decode(f, mask, w_dec)
        loss = (target - x_hat).square().sum()
        grads.append([*torch.autograd.grad(loss, wrt), x_hat.detach()])
    for got in grads[:2]:
        for a, b in zip(got, grads[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_invariant_resampling_and_lp_declared_by_the_registry_not_by_name():
    for name, ov in variants():
        m = make(name, **ov)
        assert m.supports_resampling == (name in ("standard", "panneal")), name
        assert (m.p_state is not None) == (name == "panneal"), name
    with pytest.raises(VsaeError, match="resampling"):
        build_config("vsae_iso", D, F, {"resampling": True})


def _step(arch: str, dense: bool, dead: torch.Tensor, ties: bool):
    """One loss_terms + backward at k/F = 7/1024 (the fused top-k path applies unless forced dense)."""
    import vsae.archs.sparse as sp

    m = SAE(build_config(arch, D, 1024, {"k": 7}), seed=0)
    if ties:  # pairs of identical latents: with odd k a tie straddles the k-th place
        with torch.no_grad():
            m.W_enc[:, 1::2] = m.W_enc[:, 0::2]
            m.b_enc[1::2] = m.b_enc[0::2]
    x = torch.randn(48, D, generator=torch.Generator().manual_seed(3))
    limit = sp.DENSITY_LIMIT
    sp.DENSITY_LIMIT = -1.0 if dense else limit
    try:
        out = m.loss_terms(x, ctx(step=5, dead=dead))
        out.loss.backward()
    finally:
        sp.DENSITY_LIMIT = limit
    return out, {n: p.grad for n, p in m.named_parameters()}


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_invariant_fused_topk_step_equals_the_dense_step(arch, with_dead, ties):
    from vsae.archs import fused_topk

    dead = torch.arange(1024) % 3 == 0 if with_dead else torch.zeros(1024, dtype=torch.bool)
    m = SAE(build_config(arch, D, 1024, {"k": 7}), seed=0)
    assert fused_topk.applies(m, torch.zeros(2, D))
    (dense, g_dense), (fused, g_fused) = _step(arch, True, dead, ties), _step(arch, False, dead, ties)
    torch.testing.assert_close(fused.loss, dense.loss, rtol=1e-6, atol=1e-5)
    for key in ("rec", "auxk"):
        torch.testing.assert_close(fused.terms[key], dense.terms[key], rtol=1e-6, atol=1e-5)
    assert (float(fused.terms["auxk"].detach()) > 0) == with_dead
    for name, grad in g_dense.items():
        torch.testing.assert_close(g_fused[name], grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.fired, dense.fired)
    torch.testing.assert_close(fused.stats["theta_stat"], dense.stats["theta_stat"])
    assert float(fused.l0_train) == float(dense.l0_train)


def test_fused_step_reuses_its_encoder_buffer_without_aliasing():
    """The fused step writes u into one reused CPU buffer (archs/workspace.py): a second SAE of the same
    shape overwrites it before the first one's backward, and neither its loss, gradients nor selection
    may change."""
    from vsae.archs import workspace

    x = torch.randn(64, D, generator=torch.Generator().manual_seed(3))
    models = [SAE(build_config("topk", D, 1024, {"k": 7}), seed=s) for s in (0, 1)]
    alone = []
    for m in models:
        out = m.loss_terms(x, ctx(step=5))
        alone.append((out.loss.detach(), torch.autograd.grad(out.loss, list(m.parameters()))))
        workspace.release()  # each on a fresh buffer
    outs = [m.loss_terms(x, ctx(step=5)) for m in models]  # the second overwrites the first's u
    for m, out, (loss, grads) in zip(models, outs, alone, strict=True):
        torch.testing.assert_close(out.loss.detach(), loss, rtol=0, atol=0)
        for got, want in zip(torch.autograd.grad(out.loss, list(m.parameters())), grads, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert workspace.scratch((64, 1024), torch.float32, torch.device("cpu")) is not None


def test_invariant_batch_topk_candidate_search_is_exact(topk_path):
    """Each row's top candidates suffice unless one row holds many of the batch's best scores: then the
    full search runs. Either way the choice is the stable-sort reference (ties to the lower flat index)."""
    g = torch.Generator().manual_seed(0)
    for dominant in (False, True):
        score = torch.randn(16, 256, generator=g).round(decimals=1)  # many ties
        if dominant:
            score[3] += 10.0  # row 3 holds far more than 4·k of the top 16·k
        mask = batch_topk_mask(score, None, 5)
        order = torch.sort(-score.reshape(-1), stable=True).indices[: 16 * 5]
        ref = torch.zeros(16 * 256, dtype=torch.bool)
        ref[order] = True
        assert torch.equal(mask.reshape(-1), ref), dominant
        if dominant:
            assert int(mask[3].sum()) == 80  # more than its 4·5 = 20 candidates


def _wide_scores_with_hard_rows(n: int = 24, f: int = 4096 + 7, seed: int = 0) -> torch.Tensor:
    """Wide enough for the CPU kernel's block prefilter, with rows built to defeat it: coarse ties everywhere,
    the best entries crowded into one block, equal block maxima at the cut, a row of -inf but a few entries,
    a constant row, and a width that leaves a tail past the last whole block."""
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(n, f, generator=g)
    score[0] = score[0].round(decimals=0)  # heavy ties
    nb = f // BLOCK
    score[1, 5 : BLOCK * nb : nb] += 50.0  # one block (entries 5, 5 + nb, …) holds the row's best 16
    score[5, -3:] += 50.0  # the best entries in the tail
    score[2, :: BLOCK * 3] = 9.0  # one equal maximum in many blocks
    score[3] = -torch.inf
    score[3, 100:103] = 1.0
    score[4] = 0.0
    return score


@pytest.mark.parametrize("kk", [1, 6, 16])
def test_invariant_row_topk_prefilter_finds_torch_topk(kk):
    """The CPU kernel returns a stable sort's first kk entries (torch.topk's values; among ties the lower
    index), on random rows and on rows built against its prefilter (ties, one crowded block, -inf)."""
    score = _wide_scores_with_hard_rows()
    assert cpu_topk.applies(score, kk) and score.shape[1] // BLOCK >= 2 * kk  # the prefilter path
    assert cpu_topk.applies(score.clone().requires_grad_(), kk)  # a training site's scores use it too
    for m in (score, score.double(), score[:, : 64 * 7]):  # fp32, fp64, too narrow for the prefilter
        vals, idx = row_topk(m, kk)
        assert torch.equal(vals, torch.topk(m, kk, dim=-1).values)
        assert torch.equal(idx, torch.sort(-m, dim=-1, stable=True).indices[:, :kk])


@pytest.mark.skipif(not cpu_topk.HAVE_NUMBA, reason="numba is not installed")
def test_cpu_topk_threshold_is_the_kth_largest_group_maximum():
    """The kernel's prefilter threshold (quickselect, no sort) is the k-th largest of the group maxima, ties
    and -inf included. row_topk stays exact whatever the threshold, so this is what keeps it fast."""
    import numpy as np

    from vsae.archs.cpu_topk_numba import kth_largest

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 66, 130):
        for a in (rng.standard_normal(n), rng.integers(0, 3, n).astype(float), np.full(n, -np.inf)):
            a = a.astype(np.float32)
            for k in sorted({1, (n + 1) // 2, n}):
                work = np.empty(n, np.float32)
                assert kth_largest(a, k, work) == np.sort(a)[::-1][k - 1], (n, k, a)


@pytest.fixture(params=["cpu kernel", "torch.topk"])
def topk_path(request, monkeypatch):
    """Selection through the CPU kernel (already stable among ties) and through torch.topk (as on a GPU,
    where the tie rule rests on re-ranking the rows with a tie at the cut)."""
    if request.param == "torch.topk":
        monkeypatch.setattr(cpu_topk, "applies", lambda score, kk: False)
    return request.param


@pytest.mark.parametrize("per_batch", [False, True])
def test_invariant_wide_selection_matches_a_stable_sort_reference(per_batch, topk_path):
    """At widths where the prefilter runs, the tie rule still picks a stable sort's first k per row (or k·N
    over the batch), the lower (flat) index winning among equal scores; -inf is never picked."""
    score = _wide_scores_with_hard_rows(seed=1)
    k = 6
    if per_batch:
        order = torch.sort(-score.reshape(-1), stable=True).indices[: k * score.shape[0]]
        ref = torch.zeros(score.numel(), dtype=torch.bool)
        ref[order] = True
        ref &= score.reshape(-1) > -torch.inf
        assert torch.equal(batch_topk_mask(score, None, k).reshape(-1), ref)
        return
    order = torch.sort(-score, dim=-1, stable=True).indices[:, :k]
    ref = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True) & (score > -torch.inf)
    assert torch.equal(topk_mask(score, None, k), ref)
    crow, cols, rows = select_csr(score, None, k, False, per_batch=False)
    assert torch.equal(torch.zeros_like(ref).index_put_((rows, cols), torch.tensor(True)), ref)


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("k", [1, 3, 11, 12])
def test_invariant_selection_matches_a_stable_sort_reference_under_heavy_ties(k, positive, topk_path):
    """Scores from {-1, 0, 1, 2, 3} tie everywhere; the choice must be exactly a stable sort's first k
    (lower index wins) among eligible entries (score > 0 when positive), per row and over the batch."""
    gen = torch.Generator().manual_seed(k + 100 * positive)
    for _ in range(20):
        score = torch.randint(-1, 4, (8, 12), generator=gen).float()
        eligible = torch.rand(8, 12, generator=gen) > 0.2
        ok = eligible & (score > 0) if positive else eligible
        ref = torch.zeros_like(ok)
        for n in range(8):
            order = torch.sort(-torch.where(ok[n], score[n], torch.tensor(-torch.inf)), stable=True).indices
            chosen = [int(j) for j in order[:k] if ok[n, j]]
            ref[n, chosen] = True
        assert torch.equal(topk_mask(score, eligible, k, positive), ref)
        crow, cols, rows = select_csr(score, eligible, k, positive, per_batch=False)
        assert torch.equal(torch.zeros_like(ok).index_put_((rows, cols), torch.tensor(True)), ref)
        flat = torch.where(ok.reshape(-1), score.reshape(-1), torch.tensor(-torch.inf))
        order = torch.sort(-flat, stable=True).indices[: k * 8]
        bref = torch.zeros(96, dtype=torch.bool)
        bref[order[ok.reshape(-1)[order]]] = True
        assert torch.equal(batch_topk_mask(score, eligible, k, positive).reshape(-1), bref)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dense", [False, True])
def test_invariant_threshold_statistic_from_a_brute_force_selection(arch, dense):
    """θ follows: topk — the mean over rows of each row's smallest selected (positive) score; batchtopk —
    the smallest selected score of the batch. Computed here from u = x̃W + b with torch.sort."""
    out, _ = _step(arch, dense, torch.zeros(1024, dtype=torch.bool), ties=False)
    m = SAE(build_config(arch, D, 1024, {"k": 7}), seed=0)
    x = torch.randn(48, D, generator=torch.Generator().manual_seed(3))
    u = (m._centre(x) @ m.W_enc + m.b_enc).detach()
    if arch == "topk":
        kth = u.sort(dim=1, descending=True).values[:, 6]
        expected = kth[kth > 0].mean()
    else:
        top = u.reshape(-1).sort(descending=True).values[: 7 * 48]
        expected = top[top > 0].min()
    torch.testing.assert_close(out.stats["theta_stat"], expected)


def test_step_output_computes_diagnostics_only_on_logging_steps(x):
    """σ, x̂(f_det) and the sampled code cost an extra decode: only logging steps (ctx.diagnostics) pay it."""
    m = make("vsae_topk")
    assert m.loss_terms(x, ctx(diagnostics=False)).diagnostics is None
    out = m.loss_terms(x, ctx())
    assert out.diagnostics.sigma.shape == (x.shape[0], F) and out.diagnostics.x_hat_det.shape == x.shape
    assert make("topk").loss_terms(x, ctx()).diagnostics is None  # nothing variational to report
