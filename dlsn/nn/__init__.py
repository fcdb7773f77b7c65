"""The GLA module and its hashing parameters (the layer above the op layer, `dlsn.ops`)."""
from .gla import GLA, SIMILARITIES, gla_layers
from .hashing import n_buckets, sblsh_rotations

__all__ = ["GLA", "SIMILARITIES", "gla_layers", "n_buckets", "sblsh_rotations"]
