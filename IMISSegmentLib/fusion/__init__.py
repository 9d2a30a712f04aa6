"""Multi-round fusion (MRF): keep, slice by slice, the better of the previous and the current round's mask."""
from .mrf import FusionSettings, fuse_rounds, round_direction  # noqa: F401
