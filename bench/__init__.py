"""Benchmarks: each runs as `python -m bench.<name>` and ends with one RESULT line."""
