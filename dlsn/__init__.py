"""dlsn: DLSN and Global Learnable Attention for single-image super-resolution."""
from importlib.metadata import version

from .models import DLSN, GLAFFM, LFFB, MeanShift, unwrap_state_dict
from .nn import GLA, sblsh_rotations
from .ops import scatter as _scatter  # registers the fake implementations of the extension ops; never fails

__version__ = version("dlsn")  # one source: setup.py

__all__ = ["GLA", "DLSN", "GLAFFM", "LFFB", "MeanShift", "sblsh_rotations", "unwrap_state_dict", "__version__"]
