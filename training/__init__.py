"""Training package: reproduces the shipped models (run from the repository root; needs the ``train`` extra)."""
