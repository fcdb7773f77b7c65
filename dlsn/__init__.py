"""dlsn: DLSN and Global Learnable Attention for single-image super-resolution."""
from .nn.gla import GLA
from .models.dlsn import DLSN, GLAFFM, LFFB, MeanShift, unwrap_state_dict
from .nn.hashing import sblsh_rotations
from .ops import scatter as _scatter  # registers the fake implementations of the extension ops; never fails

__version__ = "0.1.0"

__all__ = ["GLA", "DLSN", "GLAFFM", "LFFB", "MeanShift", "sblsh_rotations", "unwrap_state_dict", "__version__"]
