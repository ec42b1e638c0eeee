"""Benchmarks of the chat backend: `python -m bench.run --help` (see bench/README.md)."""
