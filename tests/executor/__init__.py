"""Executor tests: CPU float32, tiny models written by ``transformers`` into tmp dirs."""
