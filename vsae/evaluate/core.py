"""Held-out core metrics (definitions: docs/conventions.md) of a checkpoint, measured with the inference rule `encode`."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vsae.archs.checkpoint import convert_space, load_sae, read_cfg
from vsae.archs.sae import SAE
from vsae.archs.steps import EPS_STREAM, make_generator
from vsae.errors import VsaeError
from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.registry import EVALS, run_one, runnable
from vsae.files import check_writable_folder, write_atomic
from vsae.metrics import Accumulator
from vsae.progress import Progress
from vsae.store.table import Table, open_table

CONVENTIONS = ("vsae", "saebench")


@dataclass
class EvalConfig:
    """Options of `vsae eval`."""

    store: str | None = None
    """Store holding the checkpoint's table (default: the store it was trained on)."""
    max_tokens: int = 65_536
    """Held-out tokens for the core metrics."""
    batch_size: int = 4096
    """Tokens per evaluation batch (results do not depend on it)."""
    ce: bool = True
    """Also measure CE-loss and KL recovered through the model (needs the model)."""
    ce_windows: int = 32
    """Held-out context windows for CE-loss recovered."""
    saebench: str = ""
    """SAE Bench evals to run as well, comma-separated or all (docs/saebench.md says what each needs)."""
    saebench_set: list[str] = field(default_factory=list)
    """Override an SAE Bench eval setting, as eval.setting=value (repeatable), e.g. absorption.max_k_value=5."""
    saebench_datasets: str = ""
    """sae-probes datasets for sparse_probing_sae_probes: comma-separated names, or all (default: four small ones)."""
    llm_url: str | None = None
    """OpenAI-compatible server for SAE Bench's autointerp (e.g. http://127.0.0.1:8000/v1); key from OPENAI_API_KEY."""
    llm_model: str | None = None
    """Model name on that server (default: the one it serves, else SAE Bench's gpt-4o-mini)."""
    saebench_data: str | None = None
    """Hub datasets of sparse_probing, scr, tpp: hub (the hub or its cache), or a folder of datasets.save_to_disk folders named by id (a/b as a__b)."""
    saebench_batches: int = 2
    """Batches of held-out windows for each of SAE Bench core's two passes."""
    saebench_prompts: int = 8
    """Context windows per SAE Bench batch."""
    convention: str = "vsae"
    """Metric definitions: vsae (centred FVE; special tokens neither encoded nor patched) or saebench
    (SAE Bench's: every position incl. BOS, FVE over E‖x‖² − (E‖x‖²/d)²); see docs/conventions.md."""

    def validate(self) -> None:
        """One-line errors for options that cannot work together, before any work starts."""
        if self.convention not in CONVENTIONS:
            raise VsaeError(f"--convention must be one of {', '.join(CONVENTIONS)} (got {self.convention!r})")
        if self.convention == "saebench" and not self.ce:
            raise VsaeError(
                "--convention saebench measures every metric through the model (BOS is not stored); drop --no-ce"
            )
        if min(self.saebench_batches, self.saebench_prompts, self.ce_windows, self.max_tokens) < 1:
            raise VsaeError(
                "--saebench-batches, --saebench-prompts, --ce-windows and --max-tokens must be at least 1"
            )
        self.saebench_overrides()
        self.probe_datasets()
        self.check_data()

    def saebench_evals(self) -> list[str]:
        """The SAE Bench evals asked for; one asked for by name that cannot run here is an error."""
        from vsae.evaluate.saebench.registry import parse_evals, unreachable

        if not self.saebench:
            return []
        names = parse_evals(self.saebench)
        unreachable(names, explicit=self.saebench.strip() != "all", have=self.given())
        return names

    def given(self, llm_checked: bool | None = None) -> set[str]:
        """What the user provided of what some evals need: "llm", "data". `llm_checked`: whether the LLM
        server was reached (EvalConfig.llm()); None: whether one was named at all."""
        import os

        llm = self.llm_url is not None or bool(os.environ.get("OPENAI_API_KEY"))
        llm = llm if llm_checked is None else llm_checked
        return ({"llm"} if llm else set()) | ({"data"} if self.saebench_data else set())

    def check_data(self) -> None:
        """A local --saebench-data mirror holds every dataset the hub-data evals will load."""
        from vsae.evaluate.saebench.hub_data import check_mirror

        for name in self.saebench_evals():
            if self.saebench_data and "data" in EVALS[name].needs:
                names = self.saebench_overrides().get(name, {}).get("dataset_names")
                check_mirror(self.saebench_data, names or EVALS[name].default("dataset_names"), name)

    def llm(self):
        """The LLM server for autointerp, reached and checked now (None when autointerp will not run)."""
        from vsae.evaluate.saebench.autointerp import connect

        if "autointerp" not in self.saebench_evals() or "llm" not in self.given():
            return None
        return connect(self.llm_url, self.llm_model)

    def saebench_overrides(self) -> dict[str, dict]:
        """--saebench-set as {eval: {setting: value}}; an unknown eval is a one-line error."""
        from vsae.evaluate.saebench.context import parse_overrides
        from vsae.evaluate.saebench.registry import EVALS

        overrides = parse_overrides(self.saebench_set)
        for name, given in overrides.items():
            if name not in EVALS or EVALS[name].config is None:
                settable = [n for n, e in EVALS.items() if e.config is not None]
                raise VsaeError(f"--saebench-set {name}.…: settable evals are {', '.join(settable)}")
            fields = EVALS[name].settings()
            if unknown := sorted(set(given) - fields):
                raise VsaeError(
                    f"--saebench-set {name}.{unknown[0]}: no such setting; {name} has {', '.join(sorted(fields))}"
                )
        return overrides

    def probe_datasets(self) -> list[str] | None:
        """--saebench-datasets as names (None: the default set); an unknown one is a one-line error."""
        from vsae.evaluate.saebench.sae_probes import check_datasets, known_datasets

        text = self.saebench_datasets.strip()
        if not text:
            return None
        names = known_datasets() if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
        check_datasets(names)
        return names


def find_checkpoints(paths: list[str]) -> list[Path]:
    """Checkpoint folders: each path itself, or the run folders directly below it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise VsaeError(f"checkpoint {p} does not exist")
        if (p / "cfg.json").exists():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(c.parent for c in p.glob("*/cfg.json")))
    if not found:
        raise VsaeError(
            f"no checkpoints (folders with cfg.json) in {', '.join(paths)}; train one with `vsae train`"
        )
    return found


def writable_checkpoints(paths: list[str]) -> list[Path]:
    """The checkpoints below `paths`, each checked before any work to take its eval.json."""
    found = find_checkpoints(paths)
    for path in found:
        check_writable_folder(path, "eval.json")
    return found


def evaluate(path: Path, cfg: EvalConfig, lm=None, show_progress: bool = True, llm=None) -> dict:
    """Core metrics (and CE/KL recovered) for one checkpoint under `cfg.convention`; also written to
    `<path>/eval.json`. `llm`: the server autointerp talks to (EvalConfig.llm())."""
    meta = read_cfg(path)
    sae = load_sae(path)
    table = checkpoint_table(path, sae, cfg.store)
    synthetic = table.provenance["model_id"] == "synthetic"
    if synthetic and cfg.convention == "saebench":
        raise VsaeError(
            f"--convention saebench needs a language model; {path} was trained on a synthetic store"
        )
    bench, skipped = cfg.saebench_evals(), {}
    for name in [n for n in bench if synthetic and EVALS[n].language_model]:
        # before any work: asked for by name it is an error, under `all` a skip
        if cfg.saebench.strip() != "all":
            raise VsaeError(
                f"SAE Bench {name} needs a language model; {path} was trained on a synthetic store"
            )
        bench.remove(name)
        skipped[name] = "needs a language model (this checkpoint was trained on a synthetic store)"
    result = {"checkpoint": str(path), "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae}
    result["convention"] = cfg.convention
    if cfg.convention == "saebench":
        result |= saebench_convention_metrics(sae, table, cfg, language_model(table, lm), show_progress)
    else:
        result |= core_metrics(sae, table, meta["norm_factor"], cfg, show_progress)
    if "true_atoms" in table.group:
        from vsae.archs.fold import needs_sign_split
        from vsae.store.synthetic import atom_recovery

        true_atoms = torch.from_numpy(table.group["true_atoms"][:])
        # a signed code's atoms are defined up to sign ((−f)(−d) = f d): compare |cos| for those
        signed = needs_sign_split(sae)
        result["true_atom_recovery"] = atom_recovery(true_atoms, sae.W_dec.detach(), up_to_sign=signed)
    if cfg.ce and not synthetic and cfg.convention == "vsae":
        from vsae.evaluate.patching import ce_recovered

        result |= ce_recovered(
            sae, table, max_windows=cfg.ce_windows, lm=language_model(table, lm), show_progress=show_progress
        )
    if "core" in bench:
        result |= saebench_core(Path(path), sae, table, cfg)
    run = BenchRun(
        Path(path).resolve(), table, cfg.saebench_overrides(), cfg.probe_datasets(), llm, cfg.saebench_data
    )
    for name in runnable(bench, cfg.given(llm_checked=llm is not None)):
        result |= run_one(name, run)
    if skipped:
        result["saebench_skipped"] = skipped
    write_atomic(Path(path) / "eval.json", json.dumps(result, indent=2))
    return result


def saebench_core(path: Path, sae: SAE, table: Table, cfg: EvalConfig) -> dict:
    """SAE Bench's core eval through its own code (written to saebench_core.json) and its headline numbers
    beside vsae's own on the same tokens under SAE Bench's conventions (`saebench/…` and `saebench_vsae/…`)."""
    from nnsight.modeling.transformers import TransformersModel

    from vsae.evaluate.patching import model_name
    from vsae.evaluate.saebench.core import (
        CoreSettings,
        heldout_tokens,
        run_core,
        saebench_convention,
        write_results,
    )
    from vsae.harvest.models import load_model

    settings = CoreSettings(cfg.saebench_prompts, cfg.saebench_batches)
    loaded = load_model(model_name(table))
    bench = run_core(path, table, loaded, settings)
    write_results(path, "core", bench)
    lm = TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
    tokens = heldout_tokens(table, settings)
    ours = saebench_convention(sae, tokens, table.provenance["module_path"], lm, settings.batch_prompts)
    flat = {k: v for group in bench["eval_result_metrics"].values() for k, v in group.items()}
    keys = ("l0", "explained_variance", "mse", "cossim", "ce_loss_score", "kl_div_score")
    return {f"saebench/{k}": flat[k] for k in keys} | {f"saebench_vsae/{k}": ours[k] for k in keys}


def language_model(table: Table, lm=None):
    """The table's language model wrapped for patching (`lm` itself when the caller already holds it)."""
    if lm is not None:
        return lm
    from nnsight.modeling.transformers import TransformersModel

    from vsae.evaluate.patching import model_name
    from vsae.harvest.models import load_model

    loaded = load_model(model_name(table))
    return TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")


def saebench_convention_metrics(sae: SAE, table: Table, cfg: EvalConfig, lm, show_progress: bool) -> dict:
    """The vsae metric names measured under SAE Bench's definitions on the first `ce_windows` held-out
    windows (every position, BOS included, encoded and patched)."""
    from vsae.evaluate.saebench.core import saebench_convention

    if table.provenance["port"] != "output":
        raise VsaeError(
            f"--convention saebench patches the site; {table.provenance['site']} is a module input"
        )
    windows = table.heldout_windows()[: cfg.ce_windows]
    if len(windows) == 0:
        raise VsaeError(f"table {table.path} has no complete held-out window for --convention saebench")
    ids = np.asarray(table.group["contexts"][windows[0] : windows[-1] + 1], dtype=np.int64)  # contiguous
    tokens = torch.from_numpy(ids)
    with Progress(
        "eval (saebench convention)", total=len(tokens), unit="windows", enabled=show_progress
    ) as bar:
        m = saebench_convention(sae, tokens, table.provenance["module_path"], lm, cfg.saebench_prompts, bar)
    return {
        "heldout_tokens": m["tokens"],
        "fve": m["explained_variance"],
        "l0": m["l0"],
        "mse": m["mse"],
        "cos_sim": m["cossim"],
        "ce_loss_clean": m["ce_loss_without_sae"],
        "ce_loss_with_sae": m["ce_loss_with_sae"],
        "ce_loss_zero_ablation": m["ce_loss_with_ablation"],
        "ce_loss_recovered": m["ce_loss_score"],
        "kl_div_with_sae": m["kl_div_with_sae"],
        "kl_div_zero_ablation": m["kl_div_with_ablation"],
        "kl_div_recovered": m["kl_div_score"],
        "ce_windows": int(len(tokens)),
    }


def checkpoint_table(path: Path, sae: SAE, store: str | None) -> Table:
    """The table a checkpoint was trained on (in `store`, default the recorded one), checked against d_in.
    An imported checkpoint names no table: the store's table at its recorded hook, or the store's only one."""
    prov = read_cfg(path)["provenance"]
    store = store or prov.get("store")
    if store is None:
        raise VsaeError(f"{path} does not record its store; pass --store")
    if "store_table" in prov:
        table = open_table(store, prov["store_table"].split("/")[0], prov["site"], prov["layer"])
    else:
        hook = re.fullmatch(r"blocks\.(\d+)\.hook_(\w+)", prov.get("hook_name") or "")
        table = open_table(store, site=hook[2], layer=int(hook[1])) if hook else open_table(store)
    if table.d != sae.cfg.d_in:
        raise VsaeError(f"{path} has d_in={sae.cfg.d_in} but table {table.path} has d={table.d}")
    return table


@torch.no_grad()
def core_metrics(sae: SAE, table: Table, c: float, cfg: EvalConfig, show_progress: bool = False) -> dict:
    start = table.n_train
    stop = min(table.n_tokens, start + cfg.max_tokens)
    if stop <= start:
        raise VsaeError(f"table {table.path} has no held-out tokens; harvest with --heldout-fraction > 0")
    norm = convert_space(sae, c, "normalized")
    acc, acc_sample = Accumulator(), Accumulator()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    extra = {"l0_train_rule": 0.0, "kl": 0.0, "sigma": 0.0, "at_bound": 0.0}
    gen = make_generator(0, EPS_STREAM)
    bar = Progress("eval core metrics", total=stop - start, unit="tok", enabled=show_progress)
    for b in bar.track(range(start, stop, cfg.batch_size), lambda b: min(stop, b + cfg.batch_size) - b):
        x = table.read(b, min(stop, b + cfg.batch_size))  # raw space
        f = sae.encode(x)
        acc.update(x, sae.decode(f), f)
        fired |= (f != 0).any(dim=0)
        post = norm.posterior(x / c)
        extra["l0_train_rule"] += float(post.mask.sum())
        if sae.cfg.vsae_family:
            if sae.cfg.samples:
                sigma = torch.exp(0.5 * post.log_var) * norm.dec_norms()
                extra["sigma"] += float(sigma.mean(dim=-1).sum())
                pre = post.log_var_pre
                extra["at_bound"] += float(
                    ((pre <= norm.logvar_min) | (pre >= norm.logvar_max)).float().mean(-1).sum()
                )
                fs = sae.encode(x, sample=True, generator=gen)
                acc_sample.update(x, sae.decode(fs), fs)
            extra["kl"] += float(norm.kl_per_token(post).sum())
    n = stop - start
    core = acc.result()
    out = {
        "heldout_tokens": n,
        "mse": core["mse"] / c**2,
        "mse_raw": core["mse"],
        "mse_elem": core["mse"] / c**2 / sae.cfg.d_in,
        "fve": core["fve"],
        "l0": core["l0"],
        "l0_train_rule": extra["l0_train_rule"] / n,
        "l1": core["l1"] / c,
        "frac_alive": float(fired.float().mean()),
        "cos_sim": core["cos_sim"],
        "rel_recon_bias": core["rel_recon_bias"],
        "norm_factor": c,
    }
    if sae.cfg.vsae_family:
        out["kl"] = extra["kl"] / n
        out["fve_mean"] = core["fve"]
    if sae.cfg.samples:
        sample = acc_sample.result()
        out |= {
            "fve_sample": sample["fve"],
            "l0_sample": sample["l0"],
            "sigma_mean": extra["sigma"] / n,
            "frac_logvar_at_bound": extra["at_bound"] / n,
        }
    return {k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}
