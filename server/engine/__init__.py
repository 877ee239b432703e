"""The inference engine a worker runs: a GGUF model decoded in batches through llama.cpp."""
