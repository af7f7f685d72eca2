"""SAE Bench's `sparse_probing_sae_probes`: the sae-probes benchmark ("Are Sparse Autoencoders Useful?"),
whose wheel ships its 113 labelled binary datasets, so it runs offline.

For each dataset, the model's activation at the last token of each prompt is probed twice: with the top-k
SAE latents (k = 1, 2, 5) and, as the paper's baseline, with the raw activations (logistic regression).
sae-probes loads its model by hub name unless the activations are cached; vsae fills that cache first with
sae-probes' own `ensure_dataset_activations` on the checkpoint's model, then runs SAE Bench's eval as it is."""

from __future__ import annotations

from dataclasses import asdict

from vsae.errors import VsaeError
from vsae.evaluate.saebench.context import BenchRun

# short prompts, four kinds of task (place, person, sentiment, spam): minutes on 2 cores
DEFAULT_DATASETS = [
    "117_us_state_FL",
    "154_athlete_sport_football",
    "149_twt_emotion_happiness",
    "96_spam_is",
]


def known_datasets() -> list[str]:
    from sae_probes import DATASETS

    return list(DATASETS)


def check_datasets(names: list[str] | None) -> None:
    """Unknown names are a one-line error before any work."""
    if not names:
        return
    known = known_datasets()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise VsaeError(
            f"unknown sae-probes dataset {unknown[0]!r}; e.g. {', '.join(known[:6])} … ({len(known)} in all, or `all`)"
        )


def run_sae_probes(run: BenchRun) -> dict:
    from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
    from sae_bench.evals.sparse_probing_sae_probes.main import run_eval
    from sae_probes.generate_model_activations import ensure_dataset_activations

    loaded, model = run.language_model()
    sae = run.bench_sae()
    name = f"vsae-{loaded.model_id}".replace("/", "--")  # sae-probes puts the model name into file names
    with run.scratch() as tmp:
        config = run.config(
            SparseProbingSaeProbesEvalConfig,
            "sparse_probing_sae_probes",
            model_name=name,
            dataset_names=run.datasets or DEFAULT_DATASETS,
            results_path=str(tmp / "results"),
            model_cache_path=str(tmp / "activations"),
        )
        ensure_dataset_activations(
            model_name=name,
            dataset_short_names=list(config.dataset_names),
            hook_names=[sae.cfg.hook_name],
            model_cache_path=config.model_cache_path,
            device="cpu",
            model=model,
        )
        results = run_eval(config, [("vsae", sae)], "cpu", str(tmp / "out"), force_rerun=True)
    output = next(v for k, v in results.items() if k.startswith("vsae"))
    return output if isinstance(output, dict) else asdict(output)
