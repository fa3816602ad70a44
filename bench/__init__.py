"""Benchmarks of the retrieval pipeline: `python -m bench [--quick]` measures everything and writes BENCHMARKS.md."""
