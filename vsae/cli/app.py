"""`vsae` command line: argument parsing and presentation only; the stages do the work."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vsae.archs.config import SAEConfig, field_help
from vsae.archs.registry import ARCHS, settable_keys
from vsae.dashboard.build import DashboardConfig
from vsae.errors import VsaeError
from vsae.evaluate.core import EvalConfig
from vsae.files import check_output_file, write_atomic
from vsae.harvest.loop import HarvestConfig
from vsae.harvest.models import ALIASES, PACKAGED
from vsae.progress import console
from vsae.progress import results as results_console
from vsae.store.layout import COMPRESSION_LEVEL
from vsae.store.synthetic import SyntheticConfig
from vsae.train.config import TrainConfig, clip_norm

app = typer.Typer(
    help="Harvest LM activations into a compressed Zarr store, train SAEs and variational SAEs on them, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        import vsae

        typer.echo(f"vsae {vsae.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Harvest LM activations into a compressed Zarr store, train SAEs and variational SAEs on them, evaluate."""


H = field_help(HarvestConfig)
T = field_help(TrainConfig)
E = field_help(EvalConfig)
M = field_help(SAEConfig)
VIZ = field_help(DashboardConfig)
S = field_help(SyntheticConfig)
ARCH_LIST = ", ".join(ARCHS)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise VsaeError(f"{what} must be comma-separated integers (got {text!r})") from exc


@app.command()
def harvest(
    model: Annotated[str, typer.Argument(help=f"{H['model']} Aliases: {PACKAGED}, {', '.join(ALIASES)}.")],
    layer: Annotated[str, typer.Option(help="Layer(s), comma-separated, e.g. 1 or 1,3.")] = "1",
    site: Annotated[str, typer.Option(help=H["sites"] + " Comma-separated for several.")] = "resid_post",
    dataset: Annotated[str, typer.Option(help=H["dataset"])] = "shakespeare",
    split: Annotated[str, typer.Option(help=H["split"])] = "train",
    dataset_revision: Annotated[str | None, typer.Option(help=H["dataset_revision"])] = None,
    text_column: Annotated[str, typer.Option(help=H["text_column"])] = "text",
    tokens: Annotated[int, typer.Option(help=H["tokens"])] = 200_000,
    ctx_len: Annotated[int, typer.Option(help=H["ctx_len"])] = 128,
    batch_size: Annotated[int, typer.Option(help=H["batch_size"])] = 16,
    store: Annotated[str, typer.Option(help=H["store"])] = "./acts",
    dtype: Annotated[str, typer.Option(help=H["dtype"])] = "bfloat16",
    chunk_tokens: Annotated[int, typer.Option(help=H["chunk_tokens"])] = 4096,
    shard_chunks: Annotated[int, typer.Option(help=H["shard_chunks"])] = 16,
    compression_level: Annotated[int, typer.Option(help=H["compression_level"])] = COMPRESSION_LEVEL,
    writer_threads: Annotated[int, typer.Option(help=H["writer_threads"])] = 0,
    heldout_fraction: Annotated[float, typer.Option(help=H["heldout_fraction"])] = 0.05,
    seed: Annotated[int, typer.Option(help=H["seed"])] = 0,
    keep_special: Annotated[bool, typer.Option(help="Store BOS/EOS/pad positions too.")] = False,
    force: Annotated[bool, typer.Option(help=H["force"])] = False,
    revision: Annotated[str | None, typer.Option(help=H["revision"])] = None,
    device: Annotated[str, typer.Option(help=H["device"])] = "cpu",
) -> None:
    """Run MODEL over a text dataset and store activations and token ids, once per model/site/layer."""
    from vsae.harvest.loop import harvest as run

    cfg = HarvestConfig(
        model=model,
        layers=_ints(layer, "--layer"),
        sites=[s.strip() for s in site.split(",") if s.strip()],
        dataset=dataset,
        split=split,
        dataset_revision=dataset_revision,
        text_column=text_column,
        tokens=tokens,
        ctx_len=ctx_len,
        batch_size=batch_size,
        store=store,
        dtype=dtype,
        chunk_tokens=chunk_tokens,
        shard_chunks=shard_chunks,
        compression_level=compression_level,
        writer_threads=writer_threads,
        heldout_fraction=heldout_fraction,
        seed=seed,
        exclude_special=not keep_special,
        force=force,
        revision=revision,
        device=device,
    )
    result = run(cfg)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports for everyone
    for line in result.get("skipped", []):
        console.print(f"[yellow]skipped:[/] {line}")
    for path, summary in result.get("tables", {}).items():
        console.print(
            f"wrote {store}/{path}: {summary['tokens']:,} tokens ({summary['heldout_tokens']:,} held out)"
        )


def _parse_sets(values: list[str]) -> dict:
    """`--set key=value` pairs, typed by the SAEConfig field they name."""
    import dataclasses

    from vsae.archs.registry import settable_keys

    types = {f.name: f.type for f in dataclasses.fields(SAEConfig) if f.name in settable_keys()}
    out = {}
    for item in values:
        if "=" not in item:
            raise VsaeError(f"--set expects KEY=VALUE (got {item!r})")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in types:
            raise VsaeError(f"unknown hyper-parameter {key!r}; valid: {', '.join(sorted(types))}")
        out[key] = _coerce(raw, str(types[key]), key)
    return out


def _coerce(raw: str, typ: str, key: str):
    try:
        if raw.lower() in ("none", "null", "auto") and "None" in typ:
            return None
        if typ.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if typ.startswith("int"):
            return int(raw)
        if typ.startswith("float"):
            return float(raw)
        if typ.startswith("list"):
            return [float(v) for v in raw.split(",") if v]
        return raw
    except ValueError as exc:
        raise VsaeError(f"--set {key}={raw!r}: expected {typ}") from exc


SET_KEYS = settable_keys()
TRAIN_EPILOG = (
    "Hyper-parameters for --set KEY=VALUE (cfg.json 'model' keys; defaults per architecture, docs/architectures.md):\n\n"
    + "\n\n".join(f"{k}: {M[k]}" for k in SET_KEYS)
)


@app.command(epilog=TRAIN_EPILOG)
def train(
    store: Annotated[str, typer.Option(help="Store to train on (see `vsae info`).")] = "./acts",
    arch: Annotated[
        list[str], typer.Option(help=f"Architecture; repeat to train several from one pass: {ARCH_LIST}.")
    ] = ["topk"],  # noqa: B006
    model: Annotated[
        str | None, typer.Option(help="Model slug of the table (needed only if the store has several).")
    ] = None,
    layer: Annotated[int | None, typer.Option(help="Layer of the table.")] = None,
    site: Annotated[str | None, typer.Option(help="Site of the table.")] = None,
    dict_size: Annotated[int | None, typer.Option(help="Dictionary size F.")] = None,
    expansion: Annotated[int | None, typer.Option(help="F = expansion × d_in (default 8).")] = None,
    k: Annotated[int | None, typer.Option(help=M["k"])] = None,
    var_flag: Annotated[int | None, typer.Option(help=M["var_flag"])] = None,
    set_: Annotated[
        list[str],
        typer.Option("--set", help="Any architecture hyper-parameter as KEY=VALUE (e.g. kl_scope=selected)."),
    ] = [],  # noqa: B006
    steps: Annotated[int | None, typer.Option(help=T["steps"])] = None,
    tokens: Annotated[int | None, typer.Option(help=T["tokens"])] = None,
    batch_size: Annotated[int, typer.Option(help=T["batch_size"])] = 4096,
    lr: Annotated[float | None, typer.Option(help=T["lr"])] = None,
    seed: Annotated[int, typer.Option(help=T["seed"])] = 0,
    log_every: Annotated[int, typer.Option(help=T["log_every"])] = 25,
    save_every: Annotated[int, typer.Option(help=T["save_every"])] = 0,
    device: Annotated[str, typer.Option(help=T["device"])] = "cpu",
    compute_dtype: Annotated[str, typer.Option(help=T["compute_dtype"])] = "float32",
    resample_at: Annotated[str, typer.Option(help=T["resample_at_fracs"] + " Comma-separated.")] = "",
    dead_after_tokens: Annotated[int, typer.Option(help=T["dead_after_tokens"])] = 10_000_000,
    grad_clip_norm: Annotated[str, typer.Option(help=T["grad_clip_norm"] + " A number, or none.")] = "1.0",
    betas: Annotated[str | None, typer.Option(help=T["betas"] + " Two numbers, e.g. 0.9,0.999.")] = None,
    eps: Annotated[float, typer.Option(help=T["eps"])] = 1e-8,
    lr_warmup_frac: Annotated[float, typer.Option(help=T["lr_warmup_frac"])] = 0.02,
    lr_decay_frac: Annotated[float, typer.Option(help=T["lr_decay_frac"])] = 0.2,
    sparsity_warmup_frac: Annotated[float, typer.Option(help=T["sparsity_warmup_frac"])] = 0.05,
    kl_warmup_frac: Annotated[float, typer.Option(help=T["kl_warmup_frac"])] = 0.1,
    buffer_chunks: Annotated[int, typer.Option(help=T["buffer_chunks"])] = 8,
    normalization: Annotated[str, typer.Option(help=T["normalization"])] = "expected_norm",
    lr_warmup_steps: Annotated[int | None, typer.Option(help=T["lr_warmup_steps"])] = None,
    lr_decay_steps: Annotated[int | None, typer.Option(help=T["lr_decay_steps"])] = None,
    sparsity_warmup_steps: Annotated[int | None, typer.Option(help=T["sparsity_warmup_steps"])] = None,
    kl_warmup_steps: Annotated[int | None, typer.Option(help=T["kl_warmup_steps"])] = None,
    out: Annotated[Path, typer.Option(help="Output folder; each SAE gets <out>/<arch>_<F>_s<seed>/.")] = Path(
        "ckpt"
    ),
    resume: Annotated[
        bool, typer.Option(help="Continue the runs in --out exactly where they stopped.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="Sweep file (TOML): \\[\\[sae]] tables with per-SAE settings, optional \\[train]."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start from this checkpoint's weights and config (e.g. an imported one) instead of a fresh init."
        ),
    ] = None,
    wandb: Annotated[
        str | None,
        typer.Option(
            help="W&B project: log every metrics.jsonl record and the config, one run per SAE "
            "(WANDB_MODE=offline writes files only)."
        ),
    ] = None,
) -> None:
    """Train one or more SAEs on shuffled batches from a store (one pass shared by all of them)."""
    from vsae.train.loop import train as run
    from vsae.train.run import SAESpec

    if dict_size is not None and expansion is not None:
        raise VsaeError("give --dict-size or --expansion, not both")
    overrides = _parse_sets(set_)
    if k is not None:
        overrides["k"] = k
    if var_flag is not None:
        overrides["var_flag"] = var_flag
    specs = [
        SAESpec(a, d_sae=dict_size, expansion=expansion, overrides=dict(overrides), init_from=init_from)
        for a in arch
    ]
    if init_from is not None and (len(specs) > 1 or overrides or dict_size or expansion or config):
        raise VsaeError(
            "--init-from trains one SAE with the checkpoint's own config; drop --set/--k/--dict-size/--config"
        )
    tcfg = TrainConfig(
        lr=lr,
        batch_size=batch_size,
        steps=steps,
        tokens=tokens,
        seed=seed,
        log_every=log_every,
        save_every=save_every,
        device=device,
        compute_dtype=compute_dtype,
        resample_at_fracs=_fractions("--resample-at", resample_at),
        dead_after_tokens=dead_after_tokens,
        grad_clip_norm=clip_norm(grad_clip_norm),
        betas=tuple(_fractions("--betas", betas)) if betas else None,
        eps=eps,
        lr_warmup_frac=lr_warmup_frac,
        lr_decay_frac=lr_decay_frac,
        sparsity_warmup_frac=sparsity_warmup_frac,
        kl_warmup_frac=kl_warmup_frac,
        buffer_chunks=buffer_chunks,
        normalization=normalization,
        lr_warmup_steps=lr_warmup_steps,
        lr_decay_steps=lr_decay_steps,
        sparsity_warmup_steps=sparsity_warmup_steps,
        kl_warmup_steps=kl_warmup_steps,
    )
    if config is not None:
        import dataclasses

        given = [
            n for n, v in (("--k", k), ("--var-flag", var_flag), ("--dict-size", dict_size)) if v is not None
        ]
        given += (
            ["--set"] * bool(set_)
            + ["--expansion"] * (expansion is not None)
            + ["--arch"] * (arch != ["topk"])
        )
        if given:
            raise VsaeError(
                f"{given[0]} does not combine with --config; put it in the sweep file's [[sae]] tables"
            )

        from vsae.train.sweep import load_sweep

        specs, train_overrides = load_sweep(config)
        tcfg = dataclasses.replace(tcfg, **train_overrides)
    from vsae.train.tracking import check_project

    check_project(wandb)
    run(store, specs, tcfg, out, model=model, site=site, layer=layer, resume=resume, wandb=wandb)


@app.command("eval")
def eval_(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Checkpoint folders, or folders holding several runs.")
    ],
    store: Annotated[str | None, typer.Option(help=E["store"])] = None,
    max_tokens: Annotated[int, typer.Option(help=E["max_tokens"])] = 65_536,
    batch_size: Annotated[int, typer.Option(help=E["batch_size"])] = 4096,
    ce: Annotated[bool, typer.Option(help=E["ce"])] = True,
    ce_windows: Annotated[int, typer.Option(help=E["ce_windows"])] = 32,
    saebench: Annotated[str, typer.Option(help=E["saebench"])] = "",
    saebench_batches: Annotated[int, typer.Option(help=E["saebench_batches"])] = 2,
    saebench_prompts: Annotated[int, typer.Option(help=E["saebench_prompts"])] = 8,
    saebench_set: Annotated[list[str] | None, typer.Option(help=E["saebench_set"])] = None,
    saebench_datasets: Annotated[str, typer.Option(help=E["saebench_datasets"])] = "",
    llm_url: Annotated[str | None, typer.Option(help=E["llm_url"])] = None,
    llm_model: Annotated[str | None, typer.Option(help=E["llm_model"])] = None,
    saebench_data: Annotated[str | None, typer.Option(help=E["saebench_data"])] = None,
    convention: Annotated[str, typer.Option(help=E["convention"])] = "vsae",
    compare: Annotated[
        bool,
        typer.Option(
            help="Treat the two CHECKPOINTS folders as arms (≥ 2 seeds each): per metric the mean difference, "
            "a bootstrap 95% interval and a seed-permutation p."
        ),
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write all results to this JSON file.")
    ] = None,
    wandb: Annotated[
        str | None,
        typer.Option(
            help="W&B project: add each checkpoint's results to its training run's summary (eval/*)."
        ),
    ] = None,
) -> None:
    """Evaluate checkpoints on held-out store tokens: FVE, L0, dead latents, CE-loss recovered, KL; with
    --saebench, SAE Bench's own evals too (JSON beside each eval.json, headline numbers in the table);
    with --compare A/ B/, whether two arms of seeds differ."""
    from vsae.evaluate.core import evaluate, writable_checkpoints
    from vsae.evaluate.report import comparison_table

    cfg = EvalConfig(
        store=store,
        max_tokens=max_tokens,
        batch_size=batch_size,
        ce=ce,
        ce_windows=ce_windows,
        saebench=saebench,
        saebench_batches=saebench_batches,
        saebench_prompts=saebench_prompts,
        saebench_set=saebench_set or [],
        saebench_datasets=saebench_datasets,
        llm_url=llm_url,
        llm_model=llm_model,
        saebench_data=saebench_data,
        convention=convention,
    )
    cfg.validate()
    from vsae.train.tracking import check_project, log_eval

    check_project(wandb)
    names = cfg.saebench_evals()  # before any work: an eval asked for by name that cannot run is an error
    if json_out is not None:
        check_output_file(json_out, "--json")
    if compare:
        _compare_arms(checkpoints, cfg, json_out)
        return
    llm = cfg.llm()  # the server answers and serves the model, or a one-line error before any work
    results = []
    for path in writable_checkpoints(checkpoints):
        results.append(evaluate(path, cfg, llm=llm))
        if wandb:
            log_eval(wandb, path, results[-1])
    results_console.print(comparison_table(results))
    from vsae.evaluate.saebench.registry import unreachable

    for line in unreachable(names, explicit=False, have=cfg.given(llm_checked=llm is not None)):
        console.print(f"[yellow]SAE Bench skipped[/] {line}", soft_wrap=True)
    for result in results:
        for name, why in result.get("saebench_skipped", {}).items():
            console.print(
                f"[yellow]SAE Bench skipped[/] {name} for {result['checkpoint']}: {why}", soft_wrap=True
            )
    if json_out:
        write_atomic(json_out, json.dumps(results, indent=2))


def _compare_arms(folders: list[str], cfg: EvalConfig, json_out: Path | None) -> None:
    from rich.table import Table as RichTable

    from vsae.archs.checkpoint import read_cfg
    from vsae.evaluate.compare import check_arms, compare
    from vsae.evaluate.core import evaluate, writable_checkpoints

    if len(folders) != 2:
        raise VsaeError(f"--compare takes two folders of checkpoints (arms A and B), got {len(folders)}")
    arms = [writable_checkpoints([f]) for f in folders]
    check_arms(*arms, {p: read_cfg(p)["architecture"] for arm in arms for p in arm})
    llm = cfg.llm()
    rows = compare(*([evaluate(p, cfg, llm=llm) for p in arm] for arm in arms))
    table = RichTable(title=f"A = {folders[0]}   B = {folders[1]}")
    for col in ("metric", "mean A", "mean B", "B − A (95% CI)", "p"):
        table.add_column(col, justify="right")
    for r in rows:
        lo, hi = r["ci95"]
        table.add_row(
            r["metric"],
            f"{r['mean_a']:.4g}",
            f"{r['mean_b']:.4g}",
            f"{r['difference']:+.4g} ({lo:+.3g}, {hi:+.3g})",
            f"{r['p']:.3g}",
        )
    results_console.print(table)
    for r in rows:
        results_console.print(r["verdict"], soft_wrap=True)
    if json_out:
        write_atomic(json_out, json.dumps(rows, indent=2))


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="Store root (local path or fsspec URL).")] = "./acts",
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Read every stored object and check its checksum (slow: reads the store).")
    ] = False,
) -> None:
    """List the tables of a store: model, site, layer, tokens, dtype, size on disk, provenance; a lost
    object is always reported, a damaged one with --verify (exit 1 when any table is damaged)."""
    from vsae.store.info import describe, info_table

    rows = describe(store, verify=verify)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        results_console.print(info_table(store, rows))
    damaged = [f"{r['table']}: {r['damage']}" for r in rows if r["damage"]]
    if damaged:
        raise VsaeError(
            f"damaged table {damaged[0]}" + (f" (+{len(damaged) - 1} more)" if len(damaged) > 1 else "")
        )


@app.command()
def synthetic(
    store: Annotated[str, typer.Option(help=S["store"])] = "./synthetic",
    d: Annotated[int, typer.Option(help=S["d"])] = 64,
    atoms: Annotated[int, typer.Option(help=S["atoms"])] = 256,
    active: Annotated[float, typer.Option(help=S["active"])] = 5.0,
    tokens: Annotated[int, typer.Option(help=S["tokens"])] = 200_000,
    noise: Annotated[float, typer.Option(help=S["noise"])] = 0.01,
    seed: Annotated[int, typer.Option(help=S["seed"])] = 0,
    chunk_tokens: Annotated[int, typer.Option(help=S["chunk_tokens"])] = 4096,
    force: Annotated[bool, typer.Option(help=S["force"])] = False,
) -> None:
    """Write a ground-truth table (sparse combinations of known atoms); `vsae eval` then reports recovery."""
    from vsae.store.synthetic import SyntheticConfig, write_synthetic

    summary = write_synthetic(
        SyntheticConfig(
            store=store,
            d=d,
            atoms=atoms,
            active=active,
            tokens=tokens,
            noise=noise,
            seed=seed,
            chunk_tokens=chunk_tokens,
            force=force,
        )
    )
    console.print(f"wrote {store}/synthetic/resid_post.0: {summary['tokens']:,} tokens")


@app.command("export")
def export_(
    checkpoint: Annotated[Path, typer.Argument(help="A vsae checkpoint folder.")],
    out: Annotated[
        Path, typer.Argument(help="Folder to write the SAELens cfg.json + sae_weights.safetensors into.")
    ],
) -> None:
    """Export a checkpoint to SAELens format (unit decoder rows; signed codes sign-split into 2F latents)."""
    from vsae.interop.export_saelens import export_saelens

    export_saelens(checkpoint, out)
    console.print(f"wrote SAELens folder {out}")


@app.command("import")
def import_(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A dictionary_learning folder (ae.pt + config.json) or a SAELens one (cfg.json + sae_weights.safetensors)."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="vsae checkpoint folder to write.")],
    norm_factor: Annotated[
        float | None, typer.Option(help="Training norm factor c (required for var_flag=1 models).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Estimate the norm factor from this store instead.")
    ] = None,
    relu_mu: Annotated[
        bool | None, typer.Option(help="Whether the reference applied ReLU to μ (VSAEIsoGaussian, VSAETopK).")
    ] = None,
    logvar_convention: Annotated[
        str, typer.Option(help="bias_times_c (reference) or weight_div_c (later fork fix).")
    ] = "bias_times_c",
    allow_inexact: Annotated[
        bool,
        typer.Option(help="Convert classes with no exact equivalent (VSAEGated); recorded as exact=false."),
    ] = False,
) -> None:
    """Import a dictionary_learning checkpoint (its dict_class picks the architecture) or a SAELens folder (standard,
    gated, jumprelu, topk) as a vsae checkpoint."""
    from vsae.interop.import_dl import import_dictionary_learning
    from vsae.interop.import_saelens import import_saelens, is_saelens_folder
    from vsae.store.table import open_table

    if store is not None and norm_factor is None:
        norm_factor = open_table(store).norm_factor()
    if is_saelens_folder(folder):
        import_saelens(folder, out, norm_factor=norm_factor)
        console.print(f"wrote {out}")
        return
    if not (folder / "ae.pt").is_file():
        raise VsaeError(
            f"{folder} holds neither ae.pt + config.json (dictionary_learning) nor cfg.json + "
            "sae_weights.safetensors (SAELens)"
        )
    import_dictionary_learning(
        folder,
        out,
        norm_factor=norm_factor,
        relu_mu=relu_mu,
        logvar_convention=logvar_convention,
        allow_inexact=allow_inexact,
    )
    console.print(f"wrote {out}")


@app.command()
def viz(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (cfg.json + sae.safetensors).")],
    out: Annotated[
        Path | None, typer.Option(help="Dashboard folder to write (default: <checkpoint>/dashboard/).")
    ] = None,
    store: Annotated[str | None, typer.Option(help=VIZ["store"])] = None,
    split: Annotated[str, typer.Option(help=VIZ["split"])] = "heldout",
    tokens: Annotated[int, typer.Option(help=VIZ["tokens"])] = 65_536,
    latents: Annotated[int, typer.Option(help=VIZ["latents"])] = 48,
    select: Annotated[str, typer.Option(help=VIZ["select"])] = "top",
    examples: Annotated[int, typer.Option(help=VIZ["examples"])] = 10,
    per_bin: Annotated[int, typer.Option(help=VIZ["per_bin"])] = 2,
    context: Annotated[int, typer.Option(help=VIZ["context"])] = 12,
    seed: Annotated[int, typer.Option(help=VIZ["seed"])] = 0,
) -> None:
    """Feature dashboard from one scan: an index (sortable table, density histogram, decoder map) and pages
    with histograms, top and quantile examples, logit effects and neighbours. Open <out>/index.html."""
    from vsae.dashboard.build import build_dashboard

    cfg = DashboardConfig(store, split, tokens, latents, select, examples, per_bin, context, seed)
    summary = build_dashboard(checkpoint, out or checkpoint / "dashboard", cfg)
    console.print(
        f"wrote {summary['out']}/index.html: {len(summary['latents'])} feature pages from {summary['tokens']:,} "
        f"tokens ({summary['dead']:,} latent(s) never fired)"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's store and checkpoints.")] = Path(
        "demo-out"
    ),
    tokens: Annotated[int, typer.Option(help="Tokens of Shakespeare to harvest.")] = 200_000,
    layer: Annotated[int, typer.Option(help="SmolLM2 layer (resid_post).")] = 3,
) -> None:
    """Offline demo: SmolLM2-135M over Shakespeare → store → topk and vsae_topk → comparison table."""
    from vsae.demo import run_demo

    run_demo(out, tokens=tokens, layer=layer)


def _fractions(flag: str, text: str) -> list[float]:
    """Comma-separated numbers (fractions, betas) or a one-line error naming the flag."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise VsaeError(f"{flag} takes comma-separated fractions such as 0.2,0.5 (got {text!r})") from exc


FILE_SYSTEM_ERRORS = {
    errno.EROFS: "choose a writable location",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.ENOSPC: "free space and run the command again",
    errno.EDQUOT: "free space and run the command again",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
}
INTERRUPTED = "[bold red]interrupted[/]; a harvest resumes from its last commit, a training run with --resume"


def main() -> None:
    """Console entry point: known errors (VsaeError, bad flags) are one line on stderr and a non-zero exit;
    Ctrl-C says `interrupted`; anything else is a bug and keeps its traceback."""
    from rich.markup import escape
    from typer.exceptions import TyperException

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)  # returns Exit's code (130 after Ctrl-C) instead of exiting
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except TyperException as exc:  # bad flags and option values (click's usage errors): one line, not a box
        if not hasattr(exc, "format_message"):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        message = " ".join(exc.format_message().split())
        console.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except VsaeError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system said no (read-only, full, a file where a folder goes): not a bug
        if exc.errno not in FILE_SYSTEM_ERRORS or not exc.filename:
            raise
        hint = FILE_SYSTEM_ERRORS[exc.errno]
        line = f"{exc.filename}: {exc.strerror}; {hint}"
        console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if code == 130:
        console.print(INTERRUPTED, soft_wrap=True)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
