"""Reconciler: diff what should be installed against what is, apply the difference atomically."""
