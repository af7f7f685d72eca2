"""Hub datasets for SAE Bench's data-bound evals, from where they are reachable: `--saebench-data hub` (the
hub or the Hugging Face cache), or `--saebench-data DIR`, a folder of `datasets.save_to_disk` folders
named by dataset id with `/` written as `__` (`DIR/LabHC__bias_in_bios`). vsae serves those folders at
SAE Bench's one loading function, `dataset_utils.load_dataset`; everything after it is SAE Bench's."""

from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

from vsae.errors import VsaeError

HUB = "hub"


def folder_name(dataset_id: str) -> str:
    return dataset_id.replace("/", "__")


def base_id(name: str) -> str:
    """SAE Bench's dataset names carry a task suffix (`…_class_set1`, `…_sentiment`) after the hub id."""
    for suffix in ("_class_set", "_sentiment"):
        if suffix in name:
            return name.split(suffix)[0]
    return name


def check_mirror(source: str | None, names: list[str], eval_name: str) -> None:
    """Before any work: a local mirror holds every dataset the eval will load."""
    if source in (None, HUB):
        return
    root = Path(source)
    if not root.is_dir():
        raise VsaeError(
            f"--saebench-data {source} is not a folder (give a folder of save_to_disk folders, or hub)"
        )
    for name in names:
        if not (root / folder_name(base_id(name))).is_dir():
            raise VsaeError(
                f"--saebench-data {source} lacks {base_id(name)} for SAE Bench {eval_name} (expected the "
                f"datasets.save_to_disk folder {root / folder_name(base_id(name))})"
            )


@contextlib.contextmanager
def served(source: str | None):
    """SAE Bench's `load_dataset` (imported by dataset_utils and by SCR's dataset_creation) reads the mirror's
    folders, falling through to the real one for any other dataset."""
    import sae_bench.evals.scr_and_tpp.dataset_creation as scr_data
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils

    if source in (None, HUB):
        yield
        return
    real = dataset_utils.load_dataset

    def load_dataset(name, *args, split=None, streaming=False, **kwargs):
        from datasets import load_from_disk

        folder = Path(source) / folder_name(name)
        if not folder.is_dir():
            return real(name, *args, split=split, streaming=streaming, **kwargs)
        data = load_from_disk(str(folder))
        return data[split] if split is not None else data

    with mock.patch.object(dataset_utils, "load_dataset", load_dataset):
        with mock.patch.object(scr_data, "load_dataset", load_dataset):
            yield


CPU_DEFAULTS = {"llm_batch_size": 32, "llm_dtype": "float32"}


def run_with_hub_data(run, module, config_cls, eval_name: str, **defaults) -> dict:
    """SAE Bench's `module.run_eval` for a hub-data eval (sparse_probing, scr, tpp) on the checkpoint: its
    model handed over, its data served from --saebench-data, its artifacts in a scratch folder."""
    from vsae.evaluate.saebench.model import handed_to

    loaded, model = run.language_model()
    config = run.config(config_cls, eval_name, model_name=str(loaded.model_id), **(CPU_DEFAULTS | defaults))
    sae = run.bench_sae()
    with run.scratch() as tmp, handed_to(module, model), served(run.data), shape_checks_off():
        results = module.run_eval(
            config,
            [("vsae", sae)],
            "cpu",
            str(tmp / "out"),
            force_rerun=True,
            save_activations=False,
            artifacts_path=str(tmp / "artifacts"),
        )
    return next(iter(results.values()))


@contextlib.contextmanager
def shape_checks_off():
    """SAE Bench 0.6.0's `train_probe_on_activations` (sparse probing, SCR, TPP) is @jaxtyped with
    `train_dataset_size` bound to the examples of one class, and calls `train_sklearn_probe`, whose hint reuses
    that name for the binary set (the class plus as many negatives: twice as many). Under jaxtyping 0.3 the
    nested check shares the outer binding and every run fails; the hints are checks, not computation, so
    they are switched off for the run."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
