"""A rich comparison table of evaluation results: one row per metric, one column per checkpoint."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

ROWS = [
    ("d_sae", "F", "{:,}"),
    ("fve", "FVE (inference rule)", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("frac_alive", "alive fraction", "{:.4f}"),
    ("mse", "MSE (training space)", "{:.4f}"),
    ("cos_sim", "cosine", "{:.4f}"),
    ("rel_recon_bias", "rel. recon. bias", "{:.4f}"),
    ("ce_loss_recovered", "CE-loss recovered", "{:.4f}"),
    ("ce_loss_with_sae", "CE with SAE", "{:.4f}"),
    ("kl_div_with_sae", "KL(LM) with SAE", "{:.4f}"),
    ("kl_div_recovered", "KL recovered", "{:.4f}"),
    ("kl", "KL to prior /token", "{:.4g}"),
    ("fve_sample", "FVE sampled code", "{:.4f}"),
    ("sigma_mean", "posterior σ̃ mean", "{:.4g}"),
    ("true_atom_recovery", "true-atom recovery", "{:.4f}"),
    ("saebench/explained_variance", "SAE Bench explained var.", "{:.4f}"),
    ("saebench/l0", "SAE Bench L0 (BOS incl.)", "{:.1f}"),
    ("saebench/ce_loss_score", "SAE Bench CE-loss score", "{:.4f}"),
    ("saebench/kl_div_score", "SAE Bench KL score", "{:.4f}"),
]


# Under --convention saebench the same keys carry SAE Bench's definitions (docs/conventions.md).
SAEBENCH_TITLES = {
    "fve": "explained variance (SAE Bench)",
    "l0": "L0 (BOS incl.)",
    "mse": "MSE (SAE Bench units)",
    "ce_loss_recovered": "CE-loss score",
    "kl_div_recovered": "KL score",
}


def comparison_table(results: list[dict]) -> Table:
    conventions = sorted({r.get("convention", "vsae") for r in results})
    table = Table(title=f"held-out evaluation ({', '.join(conventions)} convention)")
    table.add_column("metric")
    for r in results:
        table.add_column(f"{r['architecture']}\n{Path(r['checkpoint']).name}", justify="right")
    saebench = conventions == ["saebench"]
    for key, title, fmt in ROWS:
        title = SAEBENCH_TITLES.get(key, title) if saebench else title
        if any(key in r for r in results):
            table.add_row(title, *(fmt.format(r[key]) if key in r else "—" for r in results))
    for key in bench_keys(results):
        table.add_row(
            key.removeprefix("saebench/").replace("/", " "), *(_bench_cell(r, key) for r in results)
        )
    first = results[0] if results else {}
    if "ce_loss_clean" in first:
        table.caption = f"CE clean {first['ce_loss_clean']:.3f}, zero-ablation {first['ce_loss_zero_ablation']:.3f} nats/token"
    return table


def bench_keys(results: list[dict]) -> list[str]:
    """The headline numbers of SAE Bench's evals other than core (`saebench/<eval>/<name>`), in order."""
    keys = {k for r in results for k in r if k.count("/") == 2 and k.startswith("saebench/")}
    return sorted(k for k in keys if not k.endswith(("/seconds", "/not_scored")))


def _bench_cell(result: dict, key: str) -> str:
    value = result.get(key)
    if value is None:
        return "not scored" if f"{key.rsplit('/', 1)[0]}/not_scored" in result else "—"
    return f"{value:.4g}"
