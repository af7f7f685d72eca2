"""`vsae eval --compare A/ B/` on synthetic checkpoints whose true difference is known (and on a pair with none)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli, synthetic_store

from vsae.evaluate.compare import permutation_p


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    store = synthetic_store(root / "s")
    for arm, k in (("k2", 2), ("k4", 4), ("k2again", 2)):
        seeds = (0, 1, 2, 3) if arm != "k2again" else (10, 11, 12, 13)
        for seed in seeds:
            run_cli(
                "train",
                "--store",
                store,
                "--arch",
                "topk",
                "--k",
                k,
                "--dict-size",
                "48",
                "--steps",
                "20",
                "--batch-size",
                "256",
                "--seed",
                seed,
                "--out",
                root / arm,
            )
    return root


def test_a_known_difference_is_found_with_its_size(arms, tmp_path):
    out = run_cli(
        "eval", "--compare", arms / "k2", arms / "k4", "--no-ce", "--json", tmp_path / "c.json"
    ).output
    rows = {r["metric"]: r for r in json.loads((tmp_path / "c.json").read_text())}
    l0 = rows["l0"]  # k = 2 vs k = 4: the inference L0 differs by exactly 2 (every row has ≥ 4 positives)
    assert l0["difference"] == pytest.approx(2.0, abs=1e-6) and l0["ci95"] == pytest.approx(
        [2.0, 2.0], abs=1e-6
    )
    assert l0["p"] == pytest.approx(2 / 70)  # the exact permutation p of 4 vs 4 fully separated seeds
    assert "B's l0 is higher by 2" in out


def test_no_difference_when_the_arms_differ_only_in_seeds(arms, tmp_path):
    run_cli("eval", "--compare", arms / "k2", arms / "k2again", "--no-ce", "--json", tmp_path / "c.json")
    rows = {r["metric"]: r for r in json.loads((tmp_path / "c.json").read_text())}
    assert rows["l0"]["p"] == 1.0 and rows["l0"]["verdict"].startswith("no detectable difference in l0")
    assert rows["fve"]["ci95"][0] <= 0 <= rows["fve"]["ci95"][1] or rows["fve"]["p"] > 0.05


def test_permutation_p_against_a_brute_force_count():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.5, 4.0, 5.0])
    pooled = np.concatenate([x, y])
    import itertools

    observed = abs(y.mean() - x.mean())
    splits = list(itertools.combinations(range(6), 3))
    hits = sum(
        abs(np.delete(pooled, list(c)).mean() - pooled[list(c)].mean()) >= observed - 1e-12 for c in splits
    )
    assert permutation_p(x, y, np.random.default_rng(0)) == hits / len(splits)


def test_bad_compare_input_is_one_line(arms, tmp_path, capfd):
    from conftest import run_main

    one = tmp_path / "one"
    (one).mkdir()
    src = next((arms / "k2").iterdir())
    import shutil

    shutil.copytree(src, one / src.name)
    proc = run_main(capfd, "eval", "--compare", arms / "k2", one, "--no-ce")
    assert proc.returncode == 2 and "at least 2 seeds" in proc.stderr
    proc = run_main(capfd, "eval", "--compare", arms / "k2", "--no-ce")
    assert proc.returncode == 2 and "two folders" in proc.stderr
