"""SAE Bench's SCR (spurious correlation removal) and TPP (targeted probe perturbation): probes on the raw
activations, then the SAE latents most tied to one concept are ablated and the effect on each probe is
measured (SCR: a gender-biased profession probe debiased by ablating gender latents; TPP: ablating one class's
latents should hurt that class's probe only). bias_in_bios and Amazon reviews come from `--saebench-data`."""

from __future__ import annotations

from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.hub_data import served
from vsae.evaluate.saebench.model import handed_to
from vsae.evaluate.saebench.sparse_probing import shape_checks_off

CPU_DEFAULTS = {"llm_batch_size": 32, "llm_dtype": "float32"}


def _run(run: BenchRun, name: str, scr: bool) -> dict:
    import sae_bench.evals.scr_and_tpp.main as scr_and_tpp
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

    loaded, model = run.language_model()
    defaults = CPU_DEFAULTS | {"model_name": str(loaded.model_id), "perform_scr": scr}
    config = run.config(ScrAndTppEvalConfig, name, **defaults)
    sae = run.bench_sae()
    with run.scratch() as tmp, handed_to(scr_and_tpp, model), served(run.data), shape_checks_off():
        results = scr_and_tpp.run_eval(
            config,
            [("vsae", sae)],
            "cpu",
            str(tmp / "out"),
            force_rerun=True,
            save_activations=False,
            artifacts_path=str(tmp / "artifacts"),
        )
    return next(iter(results.values()))


def run_scr(run: BenchRun) -> dict:
    return _run(run, "scr", scr=True)


def run_tpp(run: BenchRun) -> dict:
    return _run(run, "tpp", scr=False)
