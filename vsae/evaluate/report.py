"""A rich comparison table of evaluation results."""

from __future__ import annotations

from rich.table import Table

COLUMNS = [
    ("architecture", "arch", "{}"),
    ("d_sae", "F", "{:,}"),
    ("fve", "FVE", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("frac_alive", "alive", "{:.3f}"),
    ("mse", "MSE", "{:.4f}"),
    ("cos_sim", "cos", "{:.3f}"),
    ("ce_loss_recovered", "CE rec.", "{:.4f}"),
    ("ce_loss_with_sae", "CE w/ SAE", "{:.3f}"),
    ("kl_div_with_sae", "KL(LM)", "{:.4f}"),
    ("kl", "KL(prior)", "{:.3g}"),
    ("fve_sample", "FVE sample", "{:.4f}"),
]


def comparison_table(results: list[dict]) -> Table:
    table = Table(title="held-out evaluation")
    cols = [c for c in COLUMNS if any(c[0] in r for r in results)]
    for _, title, _ in cols:
        table.add_column(title, justify="right")
    for r in results:
        table.add_row(*(fmt.format(r[key]) if key in r else "—" for key, _, fmt in cols))
    if results and "ce_loss_clean" in results[0]:
        r = results[0]
        table.caption = f"CE clean {r['ce_loss_clean']:.3f}, zero-ablation {r['ce_loss_zero_ablation']:.3f} nats/token; dead = 1 − alive"
    return table
