"""The GLA module and its hashing parameters (the layer above the op layer, `dlsn.ops`)."""
from .gla import GLA, SIMILARITIES, export_mode, export_problem, gla_layers
from .hashing import n_buckets, sblsh_rotations

__all__ = ["GLA", "SIMILARITIES", "export_mode", "export_problem", "gla_layers", "n_buckets", "sblsh_rotations"]
