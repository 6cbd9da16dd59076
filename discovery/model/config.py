"""What a model's configuration says, read without torch (a loaded model's config object, or the dict
of a config.json read before any model loads): one reading for discover() and the service's checks."""

from __future__ import annotations

# the keys Hugging Face configurations give the context length under, in the order they are read
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(config) -> int | None:
    """The model's context length in tokens (the first positive int among CONTEXT_KEYS), or None."""
    for key in CONTEXT_KEYS:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
