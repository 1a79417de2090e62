"""Example kernels for the batches in ``configs/`` (run from the repository root)."""
