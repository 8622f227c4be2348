"""Benchmark harness for dropzone: `python -m bench.run` (see bench/README.md)."""
