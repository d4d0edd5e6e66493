"""Reproducible benchmarks: our code and its peer on the same input, in one run."""
