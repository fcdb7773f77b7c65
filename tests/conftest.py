"""Shared test setup: the Triton interpreter on machines without a GPU, the device every kernel test
runs on, a fixture that forbids kernel launches, and error measures. Tests import the helpers with
`from conftest import DEVICE, max_error` (pytest puts this directory on sys.path)."""
import os
from pathlib import Path

import pytest
import torch

# The Triton kernels run on the CPU interpreter when there is no GPU; it must be chosen before
# triton is first imported, hence here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SET5 = Path(os.environ.get("DLSN_SET5", Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5"))

# Every launcher the op layer calls (names as dlsn.ops.fused imports them).
LAUNCHERS = ("sblsh_hash_fwd", "bucket_sort_fwd", "window_attn_fwd", "window_attn_bwd")


def max_error(actual, expected):
    """Largest absolute difference, in float64."""
    return (actual.double() - expected.double()).abs().max().item()


def rel_error(actual, expected):
    """||actual - expected|| / ||expected|| in float64."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture
def no_launch(monkeypatch):
    """Make every kernel launch of the op layer an AssertionError: for tests of bad input."""
    from dlsn.ops import fused

    def fail(*args, **kwargs):
        raise AssertionError("kernel launched on invalid input")

    for launcher in LAUNCHERS:
        monkeypatch.setattr(fused, launcher, fail)


@pytest.fixture
def reversed_program_order(monkeypatch):
    """Run every Triton launch's programs in reverse grid order (the interpreter otherwise runs them
    in one fixed order, where an order-dependent reduction could never show). GPU: skipped, the
    hardware schedules programs in no fixed order anyway."""
    if DEVICE.type != "cpu":
        pytest.skip("program order is controllable on the Triton interpreter only")
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    set_grid_idx = builder.set_grid_idx

    def reversed_grid_idx(x, y, z):
        nx, ny, nz = builder.grid_dim
        set_grid_idx(nx - 1 - x, ny - 1 - y, nz - 1 - z)

    monkeypatch.setattr(builder, "set_grid_idx", reversed_grid_idx)


@pytest.fixture
def set5_dir():
    if not SET5.is_dir():
        pytest.skip(f"Set5 not found at {SET5} (set DLSN_SET5)")
    return SET5


@pytest.fixture
def checkpoint(tmp_path, request):
    """A tiny x2 DLSN's weights on disk; the test module's `TINY` dict gives the model's sizes."""
    import dlsn

    torch.manual_seed(0)
    path = tmp_path / "tiny_x2.pth"
    torch.save(dlsn.DLSN(scale=2, **request.module.TINY).state_dict(), path)
    return path
