"""Benchmarks: one module per figure, each runnable as ``python -m benchmarks.<name>``."""
