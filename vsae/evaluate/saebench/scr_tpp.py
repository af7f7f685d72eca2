"""SAE Bench's SCR (spurious correlation removal) and TPP (targeted probe perturbation): probes on the raw
activations, then the SAE latents most tied to one concept are ablated and the effect on each probe is
measured (SCR: a gender-biased profession probe debiased by ablating gender latents; TPP: ablating one class's
latents should hurt that class's probe only). bias_in_bios and Amazon reviews come from `--saebench-data`."""

from __future__ import annotations

from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.hub_data import run_with_hub_data


def _run(run: BenchRun, name: str, scr: bool) -> dict:
    import sae_bench.evals.scr_and_tpp.main as scr_and_tpp
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

    return run_with_hub_data(run, scr_and_tpp, ScrAndTppEvalConfig, name, perform_scr=scr)


def run_scr(run: BenchRun) -> dict:
    return _run(run, "scr", scr=True)


def run_tpp(run: BenchRun) -> dict:
    return _run(run, "tpp", scr=False)
