"""`vsae viz`: every statistic, example and direction the dashboard shows is checked against an independent
computation (a brute-force encode, the model's own final norm and head), and the pages are opened in a real
browser (headless Chromium) to check what a user sees."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, run_vsae

from vsae.archs.checkpoint import load_sae
from vsae.dashboard.build import DashboardConfig, choose_latents, quantile_groups
from vsae.dashboard.contexts import contexts
from vsae.dashboard.directions import final_norm_and_unembedding, logit_effects, neighbours
from vsae.dashboard.scan import EDGES, N_BINS, _BestPerGroup, scan
from vsae.errors import VsaeError
from vsae.evaluate.core import checkpoint_table


def _train(store, tmp_path_factory, arch):
    out = tmp_path_factory.mktemp("viz") / "ckpt"
    args = ["--arch", arch, "--expansion", "4", "--k", "8", "--batch-size", "512", "--steps", "40"]
    run_cli("train", "--store", store, *args, "--out", out)
    return out / f"{arch}_256_k8_s0"


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory):
    return _train(store, tmp_path_factory, "topk")


@pytest.fixture(scope="module")
def scanned(checkpoint):
    sae = load_sae(checkpoint)
    table = checkpoint_table(checkpoint, sae, None)
    # blocks of 1024 over 5000 tokens: the merging of running statistics across blocks is exercised
    stats = scan(sae, table, 0, 5000, examples=5, per_bin=2, seed=0, show=False, block=1024)
    return sae, table, stats, sae.encode(table.read(0, 5000))


def test_scan_statistics_match_a_brute_force_encode(scanned):
    sae, _, stats, f = scanned
    mag = f.abs()
    assert torch.equal(stats.fires, (f != 0).sum(0))
    torch.testing.assert_close(stats.abs_max, mag.amax(0))
    torch.testing.assert_close(stats.abs_sum, mag.sum(0, dtype=torch.float64))
    bins = torch.bucketize(mag, EDGES)
    for j in range(0, sae.cfg.d_sae, 17):
        expected = torch.bincount(bins[:, j][mag[:, j] > 0], minlength=N_BINS)
        assert torch.equal(stats.hist[j], expected), j
    torch.testing.assert_close(stats.top_vals.abs(), mag.topk(5, dim=0).values)
    torch.testing.assert_close(f.gather(0, stats.top_rows), stats.top_vals)


def test_per_bin_samples_are_real_tokens_of_their_bin(scanned):
    _, _, stats, f = scanned
    rows, vals = stats.sample_rows, stats.sample_vals
    for j in range(0, f.shape[1], 7):
        for b in torch.nonzero(stats.hist[j]).flatten().tolist():
            kept = rows[j, b][rows[j, b] >= 0]
            assert len(kept) == min(2, int(stats.hist[j, b])), (j, b)
            assert len(set(kept.tolist())) == len(kept)  # without replacement
            torch.testing.assert_close(f[kept, j], vals[j, b][: len(kept)])
            assert (torch.bucketize(f[kept, j].abs(), EDGES) == b).all()
    assert (rows[stats.hist == 0] == -1).all()


def test_reservoir_samples_uniformly():
    """10 candidates of one group arrive over 3 adds; each must be kept with probability 2/10."""
    counts = np.zeros(10)
    trials = 3000
    for seed in range(trials):
        res = _BestPerGroup(groups=1, per_group=2)
        gen = torch.Generator().manual_seed(seed)
        for part in (range(0, 3), range(3, 4), range(4, 10)):
            idx = torch.tensor(list(part))
            key = torch.rand(len(idx), generator=gen, dtype=torch.float64)
            res.add(torch.zeros(len(idx), dtype=torch.int64), key, idx, idx.float())
        counts[res.dense()[0][0].numpy()] += 1
    expected = trials * 0.2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, counts  # χ²(9) at p = 0.001


def test_variational_sigma_is_the_posterior_sigma_where_the_latent_fires(store, tmp_path_factory):
    path = _train(store, tmp_path_factory, "vsae_topk")
    sae = load_sae(path)
    table = checkpoint_table(path, sae, None)
    stats = scan(sae, table, 0, 3000, show=False, block=1000)
    x = table.read(0, 3000)
    sigma = torch.exp(0.5 * sae.posterior(x).log_var)
    fired = sae.encode(x) != 0
    expected = (sigma * fired).sum(0, dtype=torch.float64) / fired.sum(0).clamp(min=1)
    torch.testing.assert_close(stats.sigma_mean, expected)
    assert float(stats.sigma_mean[fired.any(0)].min()) > 0


def test_contexts_hold_the_window_tokens_and_each_tokens_own_activation(scanned):
    sae, table, stats, f = scanned
    js = choose_latents(stats, sae, DashboardConfig(latents=5))
    wanted = [(int(stats.top_rows[0, j]), j) for j in js]
    got = contexts(sae, table, wanted, width=6)
    pos = table.doc_pos(0, table.n_tokens)
    for row, j in wanted:
        c = got[(row, j)]
        _, window, p = (int(v) for v in pos[row])
        ids = table.group["contexts"][window]
        lo = max(0, p - 6)
        assert c.ids == ids[lo : min(len(ids), p + 7)].tolist() and c.peak == p - lo
        assert c.acts[c.peak] == pytest.approx(float(f[row, j]), rel=1e-5)
        # every stored token of the window in the span, found by searching all rows, carries its own value
        same = np.nonzero((pos[:, 1] == window) & (pos[:, 2] >= lo) & (pos[:, 2] < lo + len(c.ids)))[0]
        fx = sae.encode(table.read(int(same.min()), int(same.max()) + 1))
        for r in same:
            assert c.acts[int(pos[r, 2]) - lo] == pytest.approx(
                float(fx[r - same.min(), j]), rel=1e-5, abs=1e-7
            )
        assert sum(a is None for a in c.acts) == len(c.ids) - len(same)  # specials only


def test_logit_effects_follow_the_models_own_final_norm_and_head(checkpoint, tiny_model):
    """head(d) − head(−d) through the model's real final LayerNorm and unembedding is 2·W_U·γ⊙(d − mean d)/std:
    the dashboard's effect up to a positive factor, so the same tokens in the same order."""
    from vsae.harvest.models import load_model

    sae = load_sae(checkpoint)
    model = load_model(str(tiny_model)).model.float()
    unembed = final_norm_and_unembedding(model)
    assert unembed.centre and "LayerNorm" in unembed.note
    latents = [0, 5, 9]
    effects = logit_effects(sae.W_dec.detach(), latents, unembed, n=5)
    norm, head = model.gpt_neox.final_layer_norm, model.get_output_embeddings()
    for j in latents:
        d = sae.W_dec[j].detach() / sae.W_dec[j].detach().norm()
        with torch.no_grad():
            diff = head(norm(d)) - head(norm(-d))
        assert [t for t, _ in effects[j][0]] == diff.topk(5).indices.tolist()
        assert [t for t, _ in effects[j][1]] == (-diff).topk(5).indices.tolist()
        ratio = diff[[t for t, _ in effects[j][0]]] / torch.tensor([v for _, v in effects[j][0]])
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-3, atol=0)


def test_neighbours_are_the_highest_cosines(checkpoint):
    w = load_sae(checkpoint).W_dec.detach()
    near = neighbours(w, [3], n=4)[3]
    unit = w / w.norm(dim=1, keepdim=True)
    cos = [(k, float(unit[3] @ unit[k])) for k in range(len(w)) if k != 3]
    best = sorted(cos, key=lambda kc: -kc[1])[:4]
    assert [k for k, _ in near] == [k for k, _ in best]


def test_selection_leads_with_specific_latents_and_quantiles_split_the_firings(scanned):
    sae, _, stats, _ = scanned
    top = choose_latents(stats, sae, DashboardConfig(latents=8))
    sparse = [j for j in top if stats.density[j] <= 0.01]
    assert top[: len(sparse)] == sparse and len(sparse) > 0
    strength = stats.abs_max * sae.W_dec.detach().norm(dim=1)
    assert all(strength[a] >= strength[b] for a, b in zip(sparse, sparse[1:], strict=False))
    dense = choose_latents(stats, sae, DashboardConfig(latents=5, select="dense"))
    assert dense == stats.fires.argsort(descending=True, stable=True)[:5].tolist()
    assert choose_latents(stats, sae, DashboardConfig(select="ids=7,3,7")) == [7, 3]
    with pytest.raises(VsaeError, match="out of range"):
        choose_latents(stats, sae, DashboardConfig(select="ids=9999"))
    j = dense[0]
    groups = quantile_groups(stats, j)
    assert len(groups) == 3
    lows = [max(abs(v) for _, v in picks) for _, picks in groups]
    assert lows == sorted(lows)  # ranges rise from the first group to the last


# ------------------------------------------------------------------ what the user sees, in Chromium
def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); the browser check needs it"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser check needs playwright")
    return chromium, playwright


def test_dashboard_in_a_real_browser(checkpoint, tmp_path):
    chromium, playwright = _browser()
    out = tmp_path / "dash"
    proc = run_vsae("viz", checkpoint, "--out", out, "--split", "train", "--tokens", "6000", "--latents", "6")
    assert "wrote" in proc.stderr and "6 feature pages" in " ".join(proc.stderr.split())
    pages = sorted(out.glob("features/*.html"))
    assert len(pages) == 6
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.joinpath("index.html").as_uri())
        shot = tmp_path / "index.png"
        page.screenshot(path=str(shot), full_page=False)
        from PIL import Image

        colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "blank screenshot"
        # the table sorts on click: descending density first
        page.locator("#features th", has_text="density").click()
        first = float(page.locator("#features tbody tr").first.locator("td").nth(1).get_attribute("data-v"))
        assert first == pytest.approx(
            max(
                float(v)
                for v in page.locator("#features tbody td:nth-child(2)").evaluate_all(
                    "els => els.map(e => e.dataset.v)"
                )
            )
        )
        # every map link opens its feature page
        assert page.locator("#map a").count() == 6
        page.locator("#map a").first.click()
        page.wait_for_load_state()
        assert "/features/" in page.url and page.locator("h1").inner_text().startswith("latent ")
        assert page.locator(".ex").count() >= 1 and page.locator(".t.peak").count() >= 1
        # a neighbour link lands on a page or on the latent's row of the index (its anchor exists)
        link = page.locator("ol a").first
        target = link.get_attribute("href")
        link.click()
        page.wait_for_load_state()
        if "#" in target:
            assert page.locator(f"#{target.split('#')[1]}").count() == 1
        else:
            assert page.locator("h1").inner_text().startswith("latent ")
        for feature in pages:
            page.goto(feature.as_uri())
        browser.close()
    assert errors == []
    # a second run replaces its own earlier dashboard whole, leaving nothing beside it
    run_vsae("viz", checkpoint, "--out", out, "--split", "train", "--tokens", "2000", "--latents", "3")
    assert len(list(out.glob("features/*.html"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dash", "index.png"]


def test_viz_refuses_bad_input_and_never_replaces_a_foreign_folder(checkpoint, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    bad = run_vsae("viz", checkpoint, "--out", foreign, expect=2)
    assert "is not a vsae dashboard" in bad.stderr and (foreign / "notes.txt").read_text() == "keep me"
    for args, text in (
        (["--select", "ids=4096"], "out of range"),
        (["--split", "test"], "--split"),
        (["--latents", "0"], "positive"),
        (["--select", "best"], "--select"),
    ):
        bad = run_vsae("viz", checkpoint, "--out", tmp_path / "x", *args, expect=2)
        assert (
            bad.stderr.strip().startswith("error:") and text in bad.stderr and not (tmp_path / "x").exists()
        )


def _viz_args(checkpoint, out):
    return ["viz", checkpoint, "--out", out, "--split", "train", "--tokens", "2000", "--latents", "3"]


@pytest.mark.parametrize("extra", ["notes.txt", "plots/", "features/mine.txt"])
def test_viz_never_deletes_what_a_user_put_in_an_earlier_dashboard(checkpoint, tmp_path, extra):
    from test_reliability import folder_hash

    out = tmp_path / "dash"
    run_vsae(*_viz_args(checkpoint, out))
    added = out / extra.rstrip("/")
    if extra.endswith("/"):
        added.mkdir()
        (added / "fig.png").write_bytes(b"\x89PNG")
    else:
        added.write_text("mine")
    before = folder_hash(tmp_path)
    bad = run_vsae(*_viz_args(checkpoint, out), expect=2)
    assert (
        bad.stderr.strip().startswith("error:") and extra in bad.stderr and len(bad.stderr.splitlines()) == 1
    )
    assert folder_hash(tmp_path) == before


@pytest.mark.parametrize("point", ["dashboard-page:2", "dashboard-swap:1"])
def test_viz_killed_leaves_nothing_the_next_run_does_not_clean(checkpoint, tmp_path, point):
    """A kill while pages are written leaves a hidden temporary folder; a kill between setting the old
    dashboard aside and moving the new one in leaves no dashboard at all. The next run puts both right."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "dash"
    run_vsae(*_viz_args(checkpoint, out))
    first = (out / "index.html").read_text()
    exe = Path(sys.executable).with_name("vsae")
    env = {**os.environ, "VSAE_FAILPOINT": point}
    proc = subprocess.run([str(exe), *map(str, _viz_args(checkpoint, out))], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".dash.") for p in tmp_path.iterdir())  # the kill left something
    if point.startswith("dashboard-swap"):
        assert not out.exists()
    run_vsae(*_viz_args(checkpoint, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dash"]
    assert (out / "index.html").read_text() == first and len(list(out.glob("features/*.html"))) == 3
