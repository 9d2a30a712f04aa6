"""Segmentation engines behind the session: peers (Grow from Seeds, LiteMedSAM) and model bundles."""
from .base import Engine, PropagationRequest, SliceRequest, SliceResult, VolumeContext
from .registry import available_engines, create_engine, engine_names

__all__ = ["Engine", "PropagationRequest", "SliceRequest", "SliceResult", "VolumeContext",
           "available_engines", "create_engine", "engine_names"]
