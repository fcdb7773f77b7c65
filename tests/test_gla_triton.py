"""The fused path's entrance (dlsn.ops.fused.gla_attention, GLA(backend="triton")) against the reference, forward."""
import copy

import pytest
import torch
from conftest import DEVICE, low_precision_allowance, max_error

import dlsn
from dlsn.ops import reference
from dlsn.nn.hashing import n_buckets
from dlsn.ops import fused


def make_core_inputs(n, C, height, width, chunk_size, h, dtype, seed, reduction=4):
    g = torch.Generator().manual_seed(seed)
    length, c = height * width, C // reduction
    q = torch.randn(n, length, c, generator=g).relu()
    q[:, :3] = 0
    v = torch.randn(n, length, C, generator=g)
    learned = torch.randn(n, length, chunk_size, generator=g)
    x = torch.randn(n, C, height, width, generator=g)
    rotations = dlsn.sblsh_rotations(c, n_buckets(length, chunk_size), h, generator=g, device=DEVICE)
    q, v, learned, x = (t.to(device=DEVICE, dtype=dtype) for t in (q, v, learned, x))
    return q, v, learned, rotations, x


CORE_SHAPES = [
    # n, C, H, W, chunk_size, h
    (2, 48, 5, 9, 16, 3),   # L = 45: padding, nC = 3, c = 12
    (1, 16, 3, 3, 16, 1),   # L < l
    (1, 16, 4, 8, 16, 2),   # nC = 2, no padding
    (1, 32, 8, 12, 32, 4),  # b = 4 buckets, h = 4
    (1, 16, 9, 7, 64, 2),   # L = 63 < l = 64
    (3, 16, 1, 1, 16, 2),   # a single position, batch 3
    (1, 16, 2, 3, 256, 1),  # largest chunk size, L = 6
]


@pytest.mark.parametrize("n, C, height, width, chunk_size, h", CORE_SHAPES)
def test_core_float32_matches_reference(n, C, height, width, chunk_size, h):
    q, v, learned, rotations, x = make_core_inputs(n, C, height, width, chunk_size, h, torch.float32, seed=height * width)
    y = fused.gla_attention(q, v, learned, rotations, chunk_size, x, 0.5)
    assert y.dtype == torch.float32 and y.shape == x.shape
    expected = reference.gla_core(q.double(), v.double(), learned.double(), rotations, chunk_size, x.double(), 0.5)
    assert max_error(y, expected) <= 1e-4 * expected.abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, C, height, width, chunk_size, h", [CORE_SHAPES[0], CORE_SHAPES[3]])
def test_core_half_precision_no_worse_than_reference(n, C, height, width, chunk_size, h, dtype):
    q, v, learned, rotations, x = make_core_inputs(n, C, height, width, chunk_size, h, dtype, seed=C)
    y = fused.gla_attention(q, v, learned, rotations, chunk_size, x, 1.0)
    assert y.dtype == dtype
    # The float64 run hashes the same (rounded) q in float32, so both see the same buckets.
    exact = reference.gla_core(q.double(), v.double(), learned.double(), rotations, chunk_size, x.double(), 1.0)
    same_dtype = reference.gla_core(q, v, learned, rotations, chunk_size, x, 1.0)
    bound = low_precision_allowance(max_error(same_dtype, exact), dtype, scale=exact.abs().max().item())
    assert max_error(y, exact) <= bound


@pytest.mark.parametrize("C, height, width, chunk_size, h", [(16, 5, 7, 16, 3), (48, 3, 4, 32, 2)])
def test_module_triton_backend_matches_reference_backend(C, height, width, chunk_size, h):
    torch.manual_seed(0)
    module = dlsn.GLA(C, chunk_size=chunk_size, n_hashes=h, backend="triton").to(DEVICE).eval()
    x = torch.randn(2, C, height, width, device=DEVICE)
    with torch.no_grad():
        y = module(x)
        module.backend = "reference"
        expected = module(x)
    assert max_error(y, expected) <= 1e-4 * expected.abs().max().item()


def test_all_positions_in_one_bucket():
    q, v, learned, rotations, x = make_core_inputs(1, 16, 5, 8, 16, 2, torch.float32, seed=5)
    q[:] = q[:, 3:4]  # identical queries: every round puts all positions in one bucket
    y = fused.gla_attention(q, v, learned, rotations, 16, x, 1.0)
    codes = fused.triton_hash(q, rotations)
    assert (codes == codes[:, :, :1]).all()
    expected = reference.gla_core(q.double(), v.double(), learned.double(), rotations, 16, x.double(), 1.0)
    assert max_error(y, expected) <= 1e-4 * expected.abs().max().item()


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, v, learned, r, x: (q, v, learned, r, 16, x[:, :8], 1.0), ValueError, "x must have shape"),
        (lambda q, v, learned, r, x: (q, v, learned, r, 16, x.reshape(1, 16, 1, 9)[..., :8], 1.0), ValueError, "x must have shape"),
        (lambda q, v, learned, r, x: (q, v, learned, r, 16, x.double(), 1.0), TypeError, "x must have"),
        (lambda q, v, learned, r, x: (q, v, learned, r[:, :3], 16, x, 1.0), ValueError, "rotations"),
        (lambda q, v, learned, r, x: (q, v, learned, r, 32, x, 1.0), ValueError, "learned must have shape"),
        (lambda q, v, learned, r, x: (q, v.half(), learned, r, 16, x, 1.0), TypeError, "must share one dtype"),
    ],
)
def test_bad_input_raises_before_launch(no_launch, mutate, error, match):
    q, v, learned, rotations, x = make_core_inputs(1, 16, 3, 3, 16, 1, torch.float32, seed=7)
    with pytest.raises(error, match=match):
        fused.gla_attention(*mutate(q, v, learned, rotations, x))


def test_one_branch_serves_inference_under_autocast():
    """No forward-only pipeline: eval + no_grad + autocast (float32 x, bfloat16 embeddings) runs the
    same custom op as training, x added outside it; error against float64 no worse than twice the
    reference backend's under the same autocast."""
    torch.manual_seed(0)
    module = dlsn.GLA(16, chunk_size=16, n_hashes=2, backend="triton").to(DEVICE).eval()
    x = torch.randn(1, 16, 5, 7, device=DEVICE)
    with torch.no_grad():
        exact = copy.deepcopy(module).double()
        exact.backend = "reference"
        expected = exact(x.double(), module.rotations_for(35, DEVICE))
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = module(x)
            module.backend = "reference"
            same_autocast = module(x)
    assert y.dtype == torch.float32
    bound = low_precision_allowance(max_error(same_autocast, expected), torch.bfloat16,
                                    scale=expected.abs().max().item())
    assert max_error(y, expected) <= bound
