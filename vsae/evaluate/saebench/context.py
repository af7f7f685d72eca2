"""What one checkpoint's SAE Bench evals share: its table, its language model (built once per model for
the whole `vsae eval`), the SAE behind SAE Bench's adapter, a scratch folder and the config overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from vsae.errors import VsaeError
from vsae.store.table import Table

_MODELS: dict[str, tuple] = {}  # model name → (LoadedModel, HookedTransformer), for this process


@dataclasses.dataclass
class BenchRun:
    """One checkpoint's SAE Bench evals."""

    path: Path
    """The checkpoint folder (absolute)."""
    table: Table
    """The store table it was trained on (text, hook, model)."""
    overrides: dict[str, dict]
    """SAE Bench config fields to override, per eval (--saebench-set)."""
    datasets: list[str] | None = None
    """sae-probes datasets (--saebench-datasets); None: the default CPU-sized set."""
    llm: object = None
    """The LLM server autointerp talks to (autointerp.LLM), checked before any work."""
    data: str | None = None
    """Where the hub-data evals read their datasets (--saebench-data: hub, or a folder of save_to_disk folders)."""

    def language_model(self):
        """The checkpoint's model as (LoadedModel, HookedTransformer), built once per model."""
        from vsae.evaluate.patching import model_name
        from vsae.evaluate.saebench.model import hooked_transformer, stop_after_hooks
        from vsae.harvest.models import load_model

        name = model_name(self.table)
        if name not in _MODELS:
            loaded = load_model(name)
            hooked = hooked_transformer(loaded)
            stop_after_hooks(hooked)
            _MODELS[name] = (loaded, hooked)
        return _MODELS[name]

    def bench_sae(self):
        """The checkpoint behind SAE Bench's custom-SAE adapter, formatted by SAE Bench itself."""
        from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

        from vsae.interop.saebench import saebench_sae

        _, sae, _ = load_and_format_sae("vsae", saebench_sae(self.path), "cpu")
        return sae

    def config(self, cls, eval_name: str, **defaults):
        """SAE Bench's config `cls` with vsae's defaults for this machine, then the user's overrides."""
        given = self.overrides.get(eval_name, {})  # names checked by EvalConfig.validate, values here
        try:
            return cls(**(defaults | given))
        except ValueError as exc:  # pydantic's ValidationError: a value of the wrong type
            first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ["?"], "msg": str(exc)}
            raise VsaeError(f"--saebench-set {eval_name}.{first['loc'][0]}: {first['msg']}") from exc

    @contextlib.contextmanager
    def scratch(self):
        """A temporary working folder (SAE Bench writes caches and artifacts relative to it), removed after;
        `out/` is there for SAE Bench's result files (absorption writes into it without creating it)."""
        folder = Path(tempfile.mkdtemp(prefix="vsae-saebench-"))
        (folder / "out").mkdir()
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(cwd)
            shutil.rmtree(folder, ignore_errors=True)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`eval.field=value` items (value as JSON, else a string) → {eval: {field: value}}."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field = key.partition(".")
        if not (sep and dot and name and field):
            raise VsaeError(
                f"--saebench-set takes eval.setting=value, e.g. absorption.max_k_value=5 (got {item!r})"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name.strip(), {})[field.strip()] = value
    return out
