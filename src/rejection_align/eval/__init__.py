"""Evaluation: safety benchmarks, answer generation, the string-match judge and its report."""
