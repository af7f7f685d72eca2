"""Every SAE Bench eval vsae knows: how it runs, what it needs, the schema its JSON must meet and the
headline numbers that join the comparison table. One entry per eval; `core` runs through core.py, which
also sets vsae's own numbers beside SAE Bench's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vsae.errors import VsaeError
from vsae.evaluate.saebench.absorption import run_absorption
from vsae.evaluate.saebench.autointerp import run_autointerp
from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.mdl import run_mdl
from vsae.evaluate.saebench.meta_structure import run_meta_structure
from vsae.evaluate.saebench.sae_probes import run_sae_probes
from vsae.evaluate.saebench.scr_tpp import run_scr, run_tpp
from vsae.evaluate.saebench.sparse_probing import run_sparse_probing
from vsae.progress import console


def _path(*keys: str) -> Callable[[dict], float | None]:
    def get(output: dict):
        for key in keys:
            if not isinstance(output, dict) or key not in output:
                return None
            output = output[key]
        return output

    return get


def _shortest_description(output: dict) -> float | None:
    """MDL's headline: the shortest description length among settings whose quantised code meets the MSE bound."""
    viable = [r["description_length"] for r in output["eval_results"] if r["within_threshold"]]
    return min(viable, default=None)


@dataclass(frozen=True)
class BenchEval:
    run: Callable[[BenchRun], dict] | None
    """Runs the eval on one checkpoint and returns SAE Bench's output (None: core, run by core.py)."""
    lacks: str | None = None
    """What this machine lacks for it (None: it runs here)."""
    language_model: bool = True
    """Needs the checkpoint's language model (not a synthetic store)."""
    schema: str | None = None
    """SAE Bench's JSON schema for its output, relative to the sae_bench package."""
    headline: dict[str, Callable[[dict], float | None]] = field(default_factory=dict)
    """Numbers for the comparison table, as `saebench/<eval>/<name>`."""
    config: str | None = None
    """SAE Bench's config class of the eval (module:Class), whose fields --saebench-set may override."""
    needs: tuple[str, ...] = ()
    """What the user must provide: "llm" (a server) and/or "data" (its hub datasets), see NEEDS."""

    def config_class(self):
        import importlib

        module, cls = self.config.split(":")
        return getattr(importlib.import_module(module), cls)

    def settings(self) -> set[str]:
        import dataclasses

        return {f.name for f in dataclasses.fields(self.config_class())}

    def default(self, setting: str):
        """SAE Bench's default for one of the eval's settings."""
        return getattr(self.config_class()(), setting)


HUB = "hub datasets, which vsae does not serve to it yet"
EVALS = {
    "core": BenchEval(None, schema="evals/core/eval_output_schema_core.json"),
    "absorption": BenchEval(
        run_absorption,
        config="sae_bench.evals.absorption.eval_config:AbsorptionEvalConfig",
        schema="evals/absorption/eval_output_schema_absorption_first_letter.json",
        headline={
            "mean_absorption": _path("eval_result_metrics", "mean", "mean_absorption_fraction_score"),
            "full_absorption": _path("eval_result_metrics", "mean", "mean_full_absorption_score"),
        },
    ),
    "meta_structure": BenchEval(
        run_meta_structure,
        config="sae_bench.evals.meta_structure.eval_config:MetaStructureEvalConfig",
        language_model=False,
        schema="evals/meta_structure/eval_output_schema_meta_structure_decoder_variance.json",
        headline={
            "decoder_fve": _path(
                "eval_result_metrics", "meta_structure", "decoder_fraction_variance_explained"
            )
        },
    ),
    "sparse_probing_sae_probes": BenchEval(
        run_sae_probes,
        config="sae_bench.evals.sparse_probing_sae_probes.eval_config:SparseProbingSaeProbesEvalConfig",
        headline={
            "sae_top_1_accuracy": _path("eval_result_metrics", "sae", "sae_top_1_test_accuracy"),
            "sae_top_5_accuracy": _path("eval_result_metrics", "sae", "sae_top_5_test_accuracy"),
            "llm_accuracy": _path("eval_result_metrics", "llm", "llm_test_accuracy"),
        },
    ),
    "mdl": BenchEval(
        run_mdl,
        headline={"description_length": _shortest_description},
        config="sae_bench.evals.mdl.eval_config:MDLEvalConfig",
    ),
    "autointerp": BenchEval(
        run_autointerp,
        schema="evals/autointerp/eval_output_schema_autointerp.json",
        headline={
            "score": _path("eval_result_metrics", "autointerp", "autointerp_score"),
            "latents_scored": lambda output: len(output.get("eval_result_unstructured") or {}),
        },
        config="sae_bench.evals.autointerp.eval_config:AutoInterpEvalConfig",
        needs=("llm",),
    ),
    "sparse_probing": BenchEval(
        run_sparse_probing,
        schema="evals/sparse_probing/eval_output_schema_sparse_probing.json",
        headline={
            "sae_top_1_accuracy": _path("eval_result_metrics", "sae", "sae_top_1_test_accuracy"),
            "llm_accuracy": _path("eval_result_metrics", "llm", "llm_test_accuracy"),
        },
        config="sae_bench.evals.sparse_probing.eval_config:SparseProbingEvalConfig",
        needs=("data",),
    ),
    "scr": BenchEval(
        run_scr,
        schema="evals/scr_and_tpp/eval_output_schema_scr.json",
        headline={"top_20_metric": _path("eval_result_metrics", "scr_metrics", "scr_metric_threshold_20")},
        config="sae_bench.evals.scr_and_tpp.eval_config:ScrAndTppEvalConfig",
        needs=("data",),
    ),
    "tpp": BenchEval(
        run_tpp,
        schema="evals/scr_and_tpp/eval_output_schema_tpp.json",
        headline={
            "top_20_metric": _path("eval_result_metrics", "tpp_metrics", "tpp_threshold_20_total_metric")
        },
        config="sae_bench.evals.scr_and_tpp.eval_config:ScrAndTppEvalConfig",
        needs=("data",),
    ),
    "ravel": BenchEval(None, lacks=f"{HUB} (RAVEL)"),
    "unlearning": BenchEval(None, lacks="the WMDP bio forget set and a Gemma-2 instruct model from the hub"),
}


def parse_evals(text: str) -> list[str]:
    """`core,absorption` or `all` → eval names; an unknown name is a one-line error."""
    names = list(EVALS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALS]
    if unknown or not names:
        raise VsaeError(
            f"unknown SAE Bench eval(s) {unknown or [text]}; choose from {', '.join(EVALS)} or all"
        )
    return names


NEEDS = {
    "llm": "an LLM server: --llm-url (an OpenAI-compatible server), or OPENAI_API_KEY for OpenAI's",
    "data": "its hub datasets: --saebench-data DIR (datasets.save_to_disk folders), or hub where reachable",
}


def lacks(name: str, have: set[str]) -> str | None:
    """What this run lacks for eval `name` (`have`: what the user gave of NEEDS), or None when it can run."""
    return EVALS[name].lacks or next((NEEDS[n] for n in EVALS[name].needs if n not in have), None)


def unreachable(names: list[str], explicit: bool, have: set[str]) -> list[str]:
    """Evals that cannot run here, one line each; asked for by name (not via `all`) they are an error."""
    missing = [f"{n}: needs {lacks(n, have)}" for n in names if lacks(n, have)]
    if missing and explicit:
        raise VsaeError(f"SAE Bench {missing[0]}, which this run does not have; run the others here")
    return missing


def runnable(names: list[str], have: set[str]) -> list[str]:
    """The evals of `names` that run here, core excepted (core.py runs it)."""
    return [n for n in names if n != "core" and not lacks(n, have)]


def check_schema(name: str, output: dict) -> None:
    """SAE Bench's own JSON schema for the eval's output: a mismatch is vsae's bug, never written."""
    import jsonschema
    import sae_bench

    schema_file = EVALS[name].schema
    if schema_file is None or output.get("scored") is False:
        return
    schema = json.loads((Path(sae_bench.__file__).parent / schema_file).read_text())
    try:
        jsonschema.validate(json.loads(json.dumps(output, default=str)), schema)
    except jsonschema.ValidationError as exc:
        raise VsaeError(f"SAE Bench {name}'s output does not meet its schema ({exc.message[:160]})") from exc


def import_beartype() -> None:
    """nnsight mounts a `save` method on every object when it is imported; beartype, which SAE Bench's evals
    import, builds a set of `object`'s attributes at its own import and fails on that unhashable method
    (TypeError). Import beartype once with the mount lifted; both work afterwards."""
    import sys

    if "beartype" in sys.modules or "nnsight" not in sys.modules:
        import beartype  # noqa: F401

        return
    import nnsight
    from nnsight._c import mount, unmount

    unmount("save")
    try:
        import beartype  # noqa: F401
    finally:
        mount(nnsight.save, "save")


def run_one(name: str, run: BenchRun) -> dict:
    """Run eval `name`, check and write `saebench_<name>.json`; its headline numbers and wall time."""
    from vsae.evaluate.saebench.core import write_results

    import_beartype()

    import torch

    console.print(f"SAE Bench {name} on {run.path.name} …", soft_wrap=True)
    start = time.perf_counter()
    grad = torch.is_grad_enabled()
    try:
        output = EVALS[name].run(run)
    finally:  # SAE Bench's evals switch gradients off (or on) for the whole process and leave them so
        torch.set_grad_enabled(grad)
    seconds = time.perf_counter() - start
    check_schema(name, output)
    write_results(run.path, name, output)
    out = {f"saebench/{name}/{k}": get(output) for k, get in EVALS[name].headline.items()}
    if output.get("scored") is False:
        out[f"saebench/{name}/not_scored"] = output["reason"]
    return out | {f"saebench/{name}/seconds": round(seconds, 1)}
