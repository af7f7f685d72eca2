"""(model family, site, layer) → module path and port, in one table; TransformerLens hook names beside."""

from __future__ import annotations

from dataclasses import dataclass

from vsae.errors import VsaeError

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
# family → (path of the layer list, attention submodule, MLP submodule)
FAMILIES = {
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
    "gpt2": ("transformer.h", "attn", "mlp"),
    "llama": ("model.layers", "self_attn", "mlp"),
}
# Hugging Face model_type → family whose module names it shares.
MODEL_TYPES = {
    "gpt_neox": "gpt_neox",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "olmo": "llama",
}


@dataclass(frozen=True)
class Site:
    """Where one table's activations come from."""

    site: str
    layer: int
    module_path: str
    port: str  # "input" (resid_pre) or "output"
    hook_name: str

    @property
    def order(self) -> tuple[int, int]:
        """Execution order, so nnsight sees requests in the order the forward pass reaches them."""
        return self.layer, SITES.index(self.site)


def family_of(model) -> str:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in MODEL_TYPES:
        raise VsaeError(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return MODEL_TYPES[model_type]


def n_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def resolve_site(model, site: str, layer: int) -> Site:
    """Resolve one site, with one-line errors for an unknown site or a layer out of range."""
    if site not in SITES:
        raise VsaeError(f"unknown site {site!r}; valid: {', '.join(SITES)}")
    family = family_of(model)
    count = n_layers(model)
    if not 0 <= layer < count:
        raise VsaeError(f"layer {layer} is out of range: this model has layers 0..{count - 1}")
    layers, attn, mlp = FAMILIES[family]
    block = f"{layers}.{layer}"
    path, port = {
        "resid_pre": (block, "input"),
        "attn_out": (f"{block}.{attn}", "output"),
        "mlp_out": (f"{block}.{mlp}", "output"),
        "resid_post": (block, "output"),
    }[site]
    return Site(site, layer, path, port, f"blocks.{layer}.hook_{site}")


def envoy_at(root, path: str):
    """Walk a dotted module path on an nnsight envoy (or a torch module); digits index lists."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node
