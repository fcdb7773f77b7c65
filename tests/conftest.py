import os
from pathlib import Path

import pytest
import torch

# The Triton kernels run on the CPU interpreter when there is no GPU; it must be chosen before
# triton is first imported, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SET5 = Path(os.environ.get("DLSN_SET5", Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5"))


@pytest.fixture
def set5_dir():
    if not SET5.is_dir():
        pytest.skip(f"Set5 not found at {SET5} (set DLSN_SET5)")
    return SET5
