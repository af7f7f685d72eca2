"""`vsae viz`: the dashboard's statistics are the checkpoint's true ones, and the page shows real contexts."""

from __future__ import annotations

import html
import re

import pytest
import torch
from conftest import run_cli, run_vsae

from vsae.archs.checkpoint import load_sae
from vsae.evaluate.core import checkpoint_table
from vsae.evaluate.dashboard import choose_latents, scan


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "ckpt"
    args = ["--arch", "topk", "--expansion", "4", "--k", "8", "--batch-size", "512", "--steps", "40"]
    run_cli("train", "--store", store, *args, "--out", out)
    return out / "topk_256_k8_s0"


def test_scan_statistics_match_a_brute_force_encode(checkpoint):
    sae = load_sae(checkpoint)
    table = checkpoint_table(checkpoint, sae, None)
    stats = scan(sae, table, tokens=5000, examples=5, show=False, block=1024)  # blocks: merging is exercised
    f = sae.encode(table.read(0, 5000))
    assert torch.equal(stats.fires, (f != 0).sum(0))
    assert torch.equal(stats.hist.sum(1), stats.fires)
    expected = f.abs().topk(5, dim=0).values
    torch.testing.assert_close(stats.top_vals.abs(), expected)
    rows = stats.top_rows
    torch.testing.assert_close(f.gather(0, rows).abs(), expected)
    chosen = choose_latents(stats, 10, seed=0)
    assert len(chosen) == len(set(chosen)) == 10 and all(stats.fires[j] > 0 for j in chosen)
    assert chosen[:5] == stats.fires.argsort(descending=True, stable=True)[:5].tolist()


def test_viz_writes_a_page_with_highlighted_contexts(checkpoint, tokenizer, tmp_path):
    out = tmp_path / "dash.html"
    proc = run_vsae("viz", checkpoint, "--out", out, "--tokens", "4000", "--latents", "6", "--examples", "3")
    assert "wrote" in proc.stderr
    page = out.read_text()
    assert len(re.findall(r'<section id="latent-\d+">', page)) == 6
    marks = re.findall(r"<mark[^>]*>(.*?)</mark>", page)
    assert 6 <= len(marks) <= 18
    vocab_pieces = {tokenizer.decode([i]) for i in range(len(tokenizer))}

    assert all(html.unescape(m) in vocab_pieces for m in marks)  # decoded tokens, not ids
    bad = run_vsae("viz", checkpoint, "--out", tmp_path / "x.html", "--latents", "0", expect=2)
    assert bad.stderr.strip().startswith("error:") and not (tmp_path / "x.html").exists()
