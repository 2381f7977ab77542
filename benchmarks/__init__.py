"""Benchmarks: `python -m benchmarks [--quick]` prints one table of ratios against baselines measured in the
same run (see benchmarks/README.md and RESULTS.md)."""
