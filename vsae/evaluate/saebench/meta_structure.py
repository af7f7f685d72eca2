"""SAE Bench's meta-structure eval: a BatchTopK meta-SAE trained on the SAE's (unit-norm) decoder rows; the
headline is the fraction of the decoder's variance it explains. Needs only the checkpoint."""

from __future__ import annotations

from dataclasses import asdict

from vsae.evaluate.saebench.context import BenchRun


def run_meta_structure(run: BenchRun) -> dict:
    import torch
    from sae_bench.evals.meta_structure.eval_config import MetaStructureEvalConfig
    from sae_bench.evals.meta_structure.main import run_eval_single_sae

    # autocast is SAE Bench's default for its GPU runs; on the CPU it would train in bfloat16
    config = run.config(MetaStructureEvalConfig, "meta_structure", autocast=torch.cuda.is_available())
    torch.manual_seed(config.random_seed)
    output = run_eval_single_sae("vsae", run.path.name, run.bench_sae(), config, "cpu")
    return asdict(output)
