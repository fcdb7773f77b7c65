"""Triton counting sort against the reference's stable torch.sort (perm with padding, inv)."""
import pytest
import torch
from conftest import DEVICE

from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations
from dlsn.ops import fused


def random_codes(n, h, length, b, dtype=torch.int32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, b, (n, h, length), generator=g).to(device=DEVICE, dtype=dtype)


def check_against_reference(codes, b, chunk_size):
    perm, inv = fused.triton_sort(codes, b, chunk_size)
    ref_perm, ref_inv = reference.sort_permutation(codes.long(), chunk_size)
    assert perm.dtype == torch.int32 and inv.dtype == torch.int32
    assert perm.shape == ref_perm.shape and inv.shape == ref_inv.shape
    assert torch.equal(perm.long(), ref_perm)
    assert torch.equal(inv.long(), ref_inv)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize(
    "n, h, length, b, chunk_size",
    [
        (2, 3, 100, 4, 16),    # padding p = 12 <= L, several chunks
        (1, 2, 64, 2, 32),     # L a multiple of l: no padding
        (1, 1, 3, 1, 16),      # L < l: the padding wraps around 5 more times
        (2, 4, 1, 1, 256),     # a single position repeated over the whole chunk
        (1, 2, 300, 200, 32),  # b = 200: 64-row tiles, several of them per round
        (1, 1, 600, 3, 128),   # 256-row tiles, three per round
    ],
)
def test_matches_reference_stable_sort(n, h, length, b, chunk_size, dtype):
    check_against_reference(random_codes(n, h, length, b, dtype, seed=length), b, chunk_size)


def test_all_positions_in_one_bucket():
    codes = torch.full((2, 3, 45), 2, dtype=torch.int32, device=DEVICE)
    perm, inv = fused.triton_sort(codes, 4, 16)
    assert torch.equal(perm[:, :, :45].long().cpu(), torch.arange(45).expand(2, 3, 45))
    check_against_reference(codes, 4, 16)


def test_ties_keep_position_order_and_inv_inverts():
    codes = random_codes(2, 2, 150, 3, seed=9)
    perm, inv = fused.triton_sort(codes, 3, 64)
    real = perm[:, :, :150].long()
    sorted_codes = codes.long().gather(2, real)
    assert (sorted_codes[..., 1:] >= sorted_codes[..., :-1]).all()
    same_code = sorted_codes[..., 1:] == sorted_codes[..., :-1]
    assert (real[..., 1:] > real[..., :-1])[same_code].all()
    assert torch.equal(inv.long().gather(2, real).cpu(), torch.arange(150).expand(2, 2, 150))


def test_codes_straight_from_the_hash_kernel():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 12, generator=g).relu().to(DEVICE)
    rotations = sblsh_rotations(12, 4, 3, generator=g, device=DEVICE)
    check_against_reference(fused.triton_hash(q, rotations), 4, 32)



@pytest.mark.parametrize(
    "codes, b, chunk_size, error, match",
    [
        (torch.zeros(2, 5, dtype=torch.int32), 2, 16, ValueError, "codes must be 3-D"),
        (torch.zeros(1, 2, 5), 2, 16, TypeError, "codes must have dtype"),
        (torch.full((1, 2, 5), 2, dtype=torch.int32), 2, 16, ValueError, "codes must lie in \\[0, 2\\)"),
        (torch.full((1, 2, 5), -1, dtype=torch.int64), 2, 16, ValueError, "codes must lie in"),
        (torch.zeros(1, 2, 5, dtype=torch.int32), 0, 16, ValueError, "n_buckets must be a positive integer"),
        (torch.zeros(1, 2, 5, dtype=torch.int32), 2, 0, ValueError, "chunk_size must be a positive integer"),
        (torch.zeros(1, 2, 0, dtype=torch.int32), 2, 16, ValueError, "codes must be non-empty"),
    ],
)
def test_bad_input_raises_before_launch(no_launch, codes, b, chunk_size, error, match):
    with pytest.raises(error, match=match):
        fused.triton_sort(codes.to(DEVICE), b, chunk_size)
