"""The language model SAE Bench's evals run on: the checkpoint's own weights as a TransformerLens
HookedTransformer (no weight processing, so the hook sees the stored activations), built once per model,
with forward passes that read only hook activations stopped after the hook's block."""

from __future__ import annotations

import contextlib
import re
from unittest import mock

from vsae.errors import VsaeError

BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.")


def hooked_transformer(loaded):
    """A HookedTransformer with the Hugging Face model's own weights, unprocessed (no folding or centring)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import (
        get_pretrained_model_config,
        get_pretrained_state_dict,
    )

    path = loaded.model.config._name_or_path
    try:
        cfg = get_pretrained_model_config(
            path, hf_cfg=loaded.model.config.to_dict(), fold_ln=False, device="cpu"
        )
        state = get_pretrained_state_dict(path, cfg, hf_model=loaded.model)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise VsaeError(f"TransformerLens cannot rebuild {path} ({str(exc).splitlines()[0][:120]})") from exc
    model = HookedTransformer(cfg, tokenizer=loaded.tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()


def stop_after_hooks(model) -> None:
    """Make `model.run_with_cache` stop after the deepest block it caches when every requested hook is a
    block hook and the caller set no stop of its own (on SmolLM2 layer 3: 4 of 30 blocks and no 49k-wide
    unembedding). The logits are then not computed and come back as None, so a caller that uses them fails
    loudly instead of reading the residual stream as logits."""
    full = model.run_with_cache

    def run_with_cache(*args, names_filter=None, **kwargs):
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        blocks = [BLOCK_HOOK.match(n) for n in names] if isinstance(names, list | tuple) and names else [None]
        if "stop_at_layer" in kwargs or not all(blocks):
            return full(*args, names_filter=names_filter, **kwargs)
        stop = max(int(m[1]) for m in blocks) + 1
        _, cache = full(*args, names_filter=names_filter, stop_at_layer=stop, **kwargs)
        return None, cache

    model.run_with_cache = run_with_cache


@contextlib.contextmanager
def handed_to(module, model):
    """SAE Bench's eval modules load their model by name (`HookedTransformer.from_pretrained_no_processing`,
    which knows neither local directories nor SmolLM2): hand them the model vsae built instead."""

    class _Loader:
        @staticmethod
        def from_pretrained_no_processing(*_args, **_kwargs):
            return model

    with mock.patch.object(module, "HookedTransformer", _Loader):
        yield
