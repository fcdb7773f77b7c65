"""The reference GLA against an independent, deliberately naive formulation (float64).

The naive version loops over rounds and query slots with Python sorting and a dense key-multiplicity
mask over the sorted sequence, so it shares no code path with dlsn.ops.reference.
"""
import itertools

import pytest
import torch

from dlsn.ops import reference
from dlsn.nn.hashing import n_buckets, sblsh_rotations
from dlsn.kernels.constants import KEY_NORM_EPS


def naive_codes(q, rotations):
    n, length, _ = q.shape
    codes = torch.empty(n, rotations.shape[0], length, dtype=torch.int64)
    for b, r, i in itertools.product(range(n), range(rotations.shape[0]), range(length)):
        projection = (q[b, i].double() @ rotations[r].double()).tolist()
        codes[b, r, i] = projection.index(max(projection))  # list.index: first maximum
    return codes


def naive_perm(codes, chunk_size):
    n, h, length = codes.shape
    pad = (-length) % chunk_size
    perm = torch.empty(n, h, length + pad, dtype=torch.int64)
    for b, r in itertools.product(range(n), range(h)):
        order = sorted(range(length), key=lambda i: (int(codes[b, r, i]), i))
        order += [order[(t - pad) % length] for t in range(length, length + pad)]
        perm[b, r] = torch.tensor(order)
    return perm


def naive_gla_rows(q, v, learned, perm, chunk_size):
    """Per-position merged output [N, L, C] and per-round (O, lse) by original position."""
    n, h, padded = perm.shape
    length = q.shape[1]
    n_chunks = padded // chunk_size
    keys = q / q.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)
    O_pos = torch.zeros(n, h, length, v.shape[-1], dtype=torch.float64)
    lse_pos = torch.zeros(n, h, length, dtype=torch.float64)
    for b, r in itertools.product(range(n), range(h)):
        slots = perm[b, r]
        chunk_of = torch.arange(padded) // chunk_size
        for t in range(length):
            k = t // chunk_size
            window = [k, (k - 1) % n_chunks, (k + 1) % n_chunks]
            multiplicity = torch.tensor([float(window.count(int(c))) for c in chunk_of], dtype=torch.float64)
            pos = int(slots[t])
            scores = keys[b, slots] @ q[b, pos] + learned[b, slots, t % chunk_size]
            weights = multiplicity * torch.exp(scores - scores.max())
            lse_pos[b, r, pos] = torch.log(weights.sum()) + scores.max()
            O_pos[b, r, pos] = (weights / weights.sum()) @ v[b, slots]
    w = torch.softmax(lse_pos, dim=1)
    return (O_pos * w.unsqueeze(-1)).sum(1), O_pos, lse_pos


def random_inputs(n, length, c, C, chunk_size, h, b, seed, zero_rows=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, length, c, generator=g, dtype=torch.float64).relu()
    if zero_rows:
        q[:, :zero_rows] = 0
    v = torch.randn(n, length, C, generator=g, dtype=torch.float64)
    learned = torch.randn(n, length, chunk_size, generator=g, dtype=torch.float64)
    rotations = sblsh_rotations(c, b, h, generator=g, dtype=torch.float64)
    return q, v, learned, rotations


CASES = [
    # (n, length, chunk_size, h): L % l == 0 with nC = 1, 2, 3, 4; padding; L < l (wrapping pad)
    (1, 8, 8, 1),
    (2, 16, 8, 2),
    (1, 24, 8, 3),
    (1, 32, 8, 4),
    (2, 21, 8, 3),
    (1, 13, 8, 2),
    (1, 5, 8, 2),
    (2, 3, 8, 1),
]


@pytest.mark.parametrize("n,length,chunk_size,h", CASES)
def test_reference_matches_naive(n, length, chunk_size, h):
    c, C = 4, 6
    b = max(2, n_buckets(length, chunk_size))
    q, v, learned, rotations = random_inputs(n, length, c, C, chunk_size, h, b, seed=length * 10 + h, zero_rows=2)

    codes = reference.hash_codes(q, rotations)
    assert torch.equal(codes, naive_codes(q, rotations))
    perm, inv = reference.sort_permutation(codes, chunk_size)
    assert torch.equal(perm, naive_perm(codes, chunk_size))
    assert torch.equal(perm.gather(-1, inv), torch.arange(length).expand(n, h, length))

    expected_out, expected_O_pos, expected_lse_pos = naive_gla_rows(q, v, learned, perm, chunk_size)
    O, lse = reference.window_attention(q, v, learned, perm, chunk_size)
    assert O.shape == (n, h, length, C) and lse.shape == (n, h, length)
    torch.testing.assert_close(O.gather(2, inv.unsqueeze(-1).expand(-1, -1, -1, C)), expected_O_pos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse.gather(2, inv), expected_lse_pos, rtol=1e-12, atol=1e-12)
    out, LSE = reference.scatter_back(O, lse, inv)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LSE, torch.logsumexp(expected_lse_pos, dim=1), rtol=1e-12, atol=1e-12)

    side = (length, 1)
    x = torch.randn(n, C, *side, dtype=torch.float64)
    y = reference.gla_core(q, v, learned, rotations, chunk_size, x, res_scale=0.5)
    torch.testing.assert_close(y, expected_out.transpose(1, 2).reshape(n, C, *side) * 0.5 + x, rtol=1e-12, atol=1e-12)


def test_zero_queries_hash_to_bucket_zero_and_ties_take_lowest_index():
    q = torch.zeros(1, 4, 3)
    q[0, 1] = torch.tensor([1.0, 0.0, 0.0])
    rotations = torch.zeros(1, 3, 4)
    rotations[0, 0, 1] = rotations[0, 0, 3] = 1.0  # buckets 1 and 3 tie for q[1]
    assert reference.hash_codes(q, rotations).tolist() == [[[0, 1, 0, 0]]]


def test_stable_sort_keeps_position_order_within_a_bucket_and_pads_by_wrapping():
    codes = torch.tensor([[[1, 0, 1, 0, 1]]])
    perm, inv = reference.sort_permutation(codes, chunk_size=8)
    assert perm.tolist() == [[[1, 3, 0, 2, 4, 0, 2, 4]]]  # p = 3: slots 5, 6, 7 repeat slots 2, 3, 4
    assert inv.tolist() == [[[2, 0, 3, 1, 4]]]
    perm, _ = reference.sort_permutation(torch.zeros(1, 1, 3, dtype=torch.int64), chunk_size=8)
    assert perm.tolist() == [[[0, 1, 2, 1, 2, 0, 1, 2]]]  # p = 5 > L = 3 wraps: (t - 5) mod 3


def test_n_buckets_follows_the_definition():
    assert n_buckets(5, 128) == 1
    assert n_buckets(128, 128) == 2  # 1 + 1 % 2
    assert n_buckets(256, 128) == 2
    assert n_buckets(48 * 48, 128) == 18
    assert n_buckets(512 * 512, 128) == 128


def test_sblsh_rotations_are_orthonormal_in_groups_and_seeded():
    g = torch.Generator().manual_seed(3)
    rot = sblsh_rotations(4, 10, 2, generator=g)
    assert rot.shape == (2, 4, 10) and rot.dtype == torch.float32
    for start in (0, 4, 8):
        block = rot[:, :, start:start + 4].double()
        gram = block.transpose(-1, -2) @ block
        torch.testing.assert_close(gram, torch.eye(gram.shape[-1], dtype=torch.float64).expand_as(gram), atol=1e-6, rtol=0)
    again = sblsh_rotations(4, 10, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rot, again)
    with pytest.raises(ValueError, match="positive"):
        sblsh_rotations(0, 4, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_runs_in_low_precision_close_to_float64(dtype):
    q, v, learned, rotations = random_inputs(1, 20, 4, 6, 8, 2, 2, seed=7)
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    exact = reference.gla_core(q, v, learned, rotations, 8, x, 1.0)
    low = reference.gla_core(q.to(dtype), v.to(dtype), learned.to(dtype), rotations.float(), 8, x.to(dtype), 1.0)
    assert low.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 6e-2, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(low.double(), exact, rtol=tol, atol=tol)
