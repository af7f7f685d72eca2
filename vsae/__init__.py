"""vsae: harvest LM activations once, train any SAE or variational SAE on them, evaluate the result."""

__version__ = "0.1.0"


def load(path, space: str = "raw"):
    """Load a checkpoint folder (cfg.json + sae.safetensors) as an SAE module."""
    from vsae.archs.checkpoint import load_sae

    return load_sae(path, space=space)
