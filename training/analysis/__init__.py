"""Analyses over trained bundles: inference settings chosen on validation cases (tune_inference) and how far
multi-round fusion could go (fusion_ceiling)."""
