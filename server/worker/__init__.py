"""The worker runtime: one GGUF model, its requests taken off Redis, decoded in batches, streamed back."""
