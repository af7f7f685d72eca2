"""Checkpoints in and out of other tools: SAELens export and import, dictionary_learning import, and the
SAE Bench adapter. `SAELENS_TENSORS` is the one table of SAELens tensor names per architecture."""

# SAELens safetensors names per SAELens architecture (export writes exactly these, import requires them)
SAELENS_TENSORS = {
    "standard": ["W_enc", "b_enc", "W_dec", "b_dec"],
    "gated": ["W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"],
    "jumprelu": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
    "topk": ["W_enc", "b_enc", "W_dec", "b_dec"],
}
