"""Reliability: atomic checkpoints, corrupt-checkpoint fallback, non-finite loss and data checks."""
