"""SAE Bench's autointerp: an LLM explains each sampled latent from its top and importance-weighted examples,
then predicts from the explanation which of a fresh set of examples fire; the score is the fraction right.

SAE Bench speaks the OpenAI chat API with a hard-coded model name (gpt-4o-mini). vsae points its client at
`--llm-url` (any OpenAI-compatible server: OpenAI's own, vLLM, or `transformers serve` on 127.0.0.1) with the
model `--llm-model` (default: the one model a local server lists, else gpt-4o-mini); the key comes from
OPENAI_API_KEY. The text is the store's windows, written where SAE Bench caches its tokenised dataset, in
place of its hub dataset. Everything else is SAE Bench's."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from vsae.errors import VsaeError
from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.mdl import store_windows
from vsae.evaluate.saebench.model import handed_to

OPENAI = "https://api.openai.com/v1"
SAEBENCH_MODEL = "gpt-4o-mini"
# SAE Bench explains 1000 latents: two LLM calls each, seconds apiece with a small local model on a CPU
CPU_DEFAULTS = {"n_latents": 20, "llm_batch_size": 32, "llm_dtype": "float32"}


@dataclass(frozen=True)
class LLM:
    """The server autointerp talks to."""

    url: str
    model: str
    key: str


def connect(url: str | None, model: str | None) -> LLM:
    """The LLM to use, checked before any work: the server answers and serves the model."""
    key = os.environ.get("OPENAI_API_KEY", "")
    if url is None and not key:
        raise VsaeError(
            "SAE Bench autointerp needs an LLM: give --llm-url (an OpenAI-compatible server, e.g. "
            "`transformers serve` on 127.0.0.1) or set OPENAI_API_KEY for OpenAI's"
        )
    url = (url or OPENAI).rstrip("/")
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {key or 'none'}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            served = [m["id"] for m in json.loads(answer.read()).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VsaeError(
            f"cannot reach the LLM server at {url} ({reason}); start it or fix --llm-url"
        ) from exc
    if model is None:
        model = served[0] if len(served) == 1 else SAEBENCH_MODEL
    if served and model not in served:
        raise VsaeError(
            f"the LLM server at {url} does not serve {model!r}; it serves: {', '.join(served[:8])}"
        )
    return LLM(url, model, key or "none")


class _Client:
    """SAE Bench's `OpenAI(api_key=…)`, aimed at the chosen server and model."""

    def __init__(self, llm: LLM):
        from openai import OpenAI

        self._client = OpenAI(api_key=llm.key, base_url=llm.url)
        self._model = llm.model
        self.chat = self

    @property
    def completions(self):
        return self

    def create(self, **kwargs):
        return self._client.chat.completions.create(**(kwargs | {"model": self._model}))


def run_autointerp(run: BenchRun) -> dict:
    from unittest import mock

    import sae_bench.evals.autointerp.main as autointerp
    import torch
    from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig

    loaded, model = run.language_model()
    windows = torch.tensor(store_windows(run)["input_ids"])
    defaults = CPU_DEFAULTS | {
        "model_name": str(loaded.model_id),
        "llm_context_size": windows.shape[1],
        "total_tokens": windows.numel(),
    }
    config = run.config(AutoInterpEvalConfig, "autointerp", **defaults)
    sae = run.bench_sae()
    with run.scratch() as tmp:
        cached = tmp / "artifacts" / "autointerp"
        cached.mkdir(parents=True)
        name = f"{autointerp.escape_slash(config.model_name)}_{config.total_tokens}_tokens_{config.llm_context_size}_ctx.pt"
        torch.save(windows, cached / name)
        with (
            handed_to(autointerp, model),
            mock.patch.object(autointerp, "OpenAI", lambda **_: _Client(run.llm)),
        ):
            results = autointerp.run_eval(
                config,
                [("vsae", sae)],
                "cpu",
                run.llm.key,
                str(tmp / "out"),
                True,
                None,
                str(tmp / "artifacts"),
            )
    output = next(iter(results.values()))
    if not output.get("eval_result_unstructured"):
        # SAE Bench drops a latent whose scoring answer is not a list of example numbers: with none left
        # its score is the mean of nothing (NaN). Say why instead.
        return {
            "eval_type_id": "autointerp",
            "scored": False,
            "reason": (
                f"SAE Bench scored none of the {config.n_latents} latents: {run.llm.model} never answered the "
                "scoring prompt with a list of example numbers, which SAE Bench needs; use a stronger LLM"
            ),
            "eval_config": output["eval_config"],
            "llm": {"url": run.llm.url, "model": run.llm.model},
        }
    return output
