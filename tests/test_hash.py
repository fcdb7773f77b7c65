"""Triton SB-LSH hash kernel against dlsn.ops.reference.hash_codes (exact equality of the codes)."""
import pytest
import torch
from conftest import DEVICE

from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations
from dlsn.ops import fused


def make_queries(n, length, c, dtype, seed, zero_rows=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, length, c, generator=g).relu()
    q[:, :zero_rows] = 0
    return q.to(device=DEVICE, dtype=dtype)


def make_rotations(c, b, h, seed):
    g = torch.Generator().manual_seed(seed)
    return sblsh_rotations(c, b, h, generator=g, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "n, length, c, h, b",
    [
        (2, 50, 12, 3, 4),   # c not a power of two
        (1, 7, 64, 1, 1),    # one bucket: every code is 0
        (2, 33, 16, 4, 40),   # b > 32: two bucket tiles, the second one masked
        (1, 140, 8, 2, 2),   # L over one 128-row tile
    ],
)
def test_codes_equal_reference(n, length, c, h, b, dtype):
    q = make_queries(n, length, c, dtype, seed=length + b, zero_rows=2)
    rotations = make_rotations(c, b, h, seed=b)
    codes = fused.triton_hash(q, rotations)
    assert codes.dtype == torch.int32 and codes.shape == (n, h, length)
    assert torch.equal(codes.long(), reference.hash_codes(q, rotations))
    assert (codes[:, :, :2] == 0).all(), "zero queries must hash to bucket 0"


def test_ties_take_lowest_bucket_across_tiles():
    # 130 buckets built from 4 distinct columns repeated: every maximum is tied with later copies,
    # including copies in later bucket tiles, so the code must be the first copy (< 4).
    c, b, h = 16, 130, 2
    distinct = make_rotations(c, 4, h, seed=1)
    rotations = distinct[:, :, torch.arange(b) % 4].contiguous()
    q = make_queries(2, 40, c, torch.float32, seed=2)
    codes = fused.triton_hash(q, rotations)
    assert (codes < 4).all()
    assert torch.equal(codes.long(), reference.hash_codes(q, rotations))


def test_duplicated_column_never_wins():
    """Column 2 repeats column 0: every position whose maximum is on that column ties exactly and
    must take column 0, so the codes are those of the first two columns alone. (A float32 einsum
    rounded the copies differently: here it sent 3 of these 300 codes to column 2.)"""
    q = make_queries(1, 100, 16, torch.float32, seed=20)
    rotations = make_rotations(16, 3, 3, seed=21)
    rotations[:, :, 2] = rotations[:, :, 0]
    expected = reference.hash_codes(q, rotations[:, :, :2].contiguous())
    assert torch.equal(reference.hash_codes(q, rotations), expected)
    assert torch.equal(fused.triton_hash(q, rotations).long(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_does_not_lower_the_projection(dtype):
    """Both hashes project float32 q in float32 under autocast too (an einsum under CPU autocast
    ran in dtype: here it moved 93 (bfloat16) and 9 (float16) of these 12,000 codes)."""
    q = make_queries(2, 2000, 16, torch.float32, seed=22)
    rotations = make_rotations(16, 40, 3, seed=23)  # two bucket tiles in the kernel
    expected = reference.hash_codes(q, rotations)
    with torch.autocast(DEVICE.type, dtype=dtype):
        assert torch.equal(reference.hash_codes(q, rotations), expected)
        assert torch.equal(fused.triton_hash(q, rotations).long(), expected)


def test_all_positions_one_bucket():
    q = make_queries(1, 20, 12, torch.float32, seed=3)
    q[:] = q[:, :1]
    rotations = make_rotations(12, 6, 3, seed=4)
    codes = fused.triton_hash(q, rotations)
    assert torch.equal(codes.long(), reference.hash_codes(q, rotations))
    assert (codes == codes[:, :, :1]).all()


def test_non_contiguous_and_float64_rotations():
    q = make_queries(2, 12, 30, torch.float32, seed=5).transpose(1, 2).contiguous().transpose(1, 2)
    rotations64 = make_rotations(30, 4, 3, seed=6).double()
    assert not q.is_contiguous()
    codes = fused.triton_hash(q, rotations64)
    assert torch.equal(codes.long(), reference.hash_codes(q, rotations64.float()))



@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda q, r: (q[0], r), ValueError, "q must be 3-D"),
        (lambda q, r: (q.long(), r), TypeError, "q must have dtype"),
        (lambda q, r: (q, r[:, :5]), ValueError, "rotations \\[h, c, b\\] must have c"),
        (lambda q, r: (q, r.long()), TypeError, "rotations must have dtype"),
        (lambda q, r: (q[:, :0], r), ValueError, "q must be non-empty"),
        (lambda q, r: (q.numpy(force=True), r), TypeError, "q must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_before_launch(no_launch, make_args, error, match):
    q = make_queries(1, 8, 12, torch.float32, seed=7)
    rotations = make_rotations(12, 2, 2, seed=8)
    with pytest.raises(error, match=match):
        fused.triton_hash(*make_args(q, rotations))


def test_cpu_tensors_need_the_interpreter(no_launch, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="need CUDA tensors"):
        fused.triton_hash(torch.rand(1, 4, 12), torch.rand(1, 12, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to put tensors on two devices")
def test_device_mismatch_raises(no_launch):
    with pytest.raises(ValueError, match="rotations is on"):
        fused.triton_hash(torch.rand(1, 4, 12, device="cuda"), torch.rand(1, 12, 2))


def finite_argmax(q, rotations):
    """The hash's contract for non-finite input: non-finite projections never win, ties -> lowest
    bucket, a row with no finite projection -> bucket 0. Projections: float64 sums of the exact
    products rounded once to float32 (inf where float32 overflows), so the order a BLAS kernel sums
    in does not show (a float32 einsum's rounding would)."""
    projected = torch.einsum("nlc,hcb->nhlb", q.double(), rotations.double()).float()
    projected = torch.where(projected.isfinite(), projected, float("-inf"))
    best = projected.amax(dim=-1, keepdim=True)
    index = torch.arange(projected.shape[-1], device=q.device).expand_as(projected)
    first = torch.where(projected == best, index, projected.shape[-1]).amin(dim=-1)
    return torch.where(best.squeeze(-1) == float("-inf"), 0, first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_rows_go_to_bucket_zero(dtype):
    q = make_queries(2, 40, 12, dtype, seed=13)
    q[0, 3, 5] = float("nan")
    q[0, 7] = float("nan")
    q[1, 4, 0] = float("inf")
    q[1, 9, 2] = float("-inf")
    rotations = make_rotations(12, 40, 3, seed=14)  # two bucket tiles
    codes = fused.triton_hash(q, rotations)
    assert (codes[0, :, 3] == 0).all() and (codes[0, :, 7] == 0).all()
    assert (codes[1, :, 4] == 0).all() and (codes[1, :, 9] == 0).all()
    assert torch.equal(codes.long(), finite_argmax(q, rotations))
    finite_rows = q.isfinite().all(dim=-1)
    reference_codes = reference.hash_codes(q, rotations)
    assert torch.equal(codes.long().transpose(1, 2)[finite_rows], reference_codes.transpose(1, 2)[finite_rows])


def test_overflowing_projection_is_never_the_maximum():
    # q = [3e38, 0]: bucket 1 projects to 6e38 = inf in float32 and must lose to bucket 2's 3e38.
    q = torch.tensor([[[3e38, 0.0], [1.0, 1.0]]], device=DEVICE)
    rotations = torch.tensor([[[-1.0, 2.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]], device=DEVICE)
    codes = fused.triton_hash(q, rotations)
    assert codes[0, 0].tolist() == [2, 1]
    assert torch.equal(codes.long(), finite_argmax(q, rotations))
