"""Gradients of the fused GLA (`dlsn.ops.fused`) against reference autograd.

- x and every GLA parameter: float32 relative error <= 1e-4 against float64 reference autograd with
  the same permutation; under autocast (bfloat16/float16) no worse than twice the error of the
  reference run under the same autocast.
- what one fused GLA call saves for backward (saved_tensors_hooks): no tensor larger than
  N * L * max(C, l) or N * h * Lp, i.e. nothing with a 3l or l x 3l factor; bytes printed next to
  the reference's.
- determinism, and a few optimiser steps of a small DLSN on the fused path tracking the reference.
`dlsn.GLA(backend="triton")` runs every call through `dlsn.ops.fused.gla_attention`.
"""
import copy

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, low_precision_allowance, rel_error

import dlsn
from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations
from dlsn.ops.fused import gla_attention, sorted_attention


def make_gla(C, chunk_size, h, seed):
    torch.manual_seed(seed)
    return dlsn.GLA(C, reduction=4, chunk_size=chunk_size, n_hashes=h, res_scale=0.7).to(DEVICE)


def sorted_slots(gla, x):
    """perm/inv (int64) of the float32 module's own hashing, used by every run of one test."""
    with torch.no_grad():
        q, _, _ = gla.embed(x)
        rotations = sblsh_rotations(q.shape[2], gla.n_buckets(q.shape[1]), gla.n_hashes,
                                              generator=torch.Generator().manual_seed(1), device=DEVICE)
        return reference.sort_permutation(reference.hash_codes(q, rotations), gla.chunk_size)


def gla_with_slots(gla, x, perm, inv, fused_path):
    q, v, learned = gla.embed(x)
    if fused_path:
        return sorted_attention(q, v, learned, perm.int(), inv.int(), x, gla.chunk_size, gla.res_scale)
    O, lse = reference.window_attention(q, v, learned, perm, gla.chunk_size)
    out, _ = reference.scatter_back(O, lse, inv)
    return out.transpose(1, 2).reshape(x.shape).to(O.dtype) * gla.res_scale + x


def gradients(gla, x, grad_y, perm, inv, fused_path, autocast_dtype=None):
    """{name: grad} for x and every parameter of a copy of gla, on x.dtype copies."""
    gla = copy.deepcopy(gla).to(x.dtype)
    x = x.detach().clone().requires_grad_()
    with torch.autocast(DEVICE.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = gla_with_slots(gla, x, perm, inv, fused_path)
    (y.to(grad_y.dtype) * grad_y).sum().backward()
    grads = {"x": x.grad}
    grads.update({name: p.grad for name, p in gla.named_parameters()})
    return grads


SHAPES = [
    # C, H, W, chunk_size, h
    (16, 5, 7, 16, 2),   # nC = 3 with padding
    (48, 2, 2, 16, 1),   # C = 48 / c = 12, L < l (wrapped padding), nC = 1
    (8, 4, 5, 16, 4),    # nC = 2, h = 4
    (16, 6, 6, 32, 3),   # chunk 32, L < l
]


@pytest.mark.parametrize("C, H, W, chunk_size, h", SHAPES)
def test_float32_gradients_match_float64_reference(C, H, W, chunk_size, h):
    gla = make_gla(C, chunk_size, h, seed=C + H)
    x = torch.randn(1, C, H, W, device=DEVICE)
    grad_y = torch.randn(1, C, H, W, device=DEVICE, dtype=torch.float64)
    perm, inv = sorted_slots(gla, x)
    exact = gradients(gla, x.double(), grad_y, perm, inv, fused_path=False)
    actual = gradients(gla, x, grad_y, perm, inv, fused_path=True)
    assert actual.keys() == exact.keys() and len(actual) == 11
    for name in exact:
        assert actual[name].dtype == torch.float32, name
        if name == "fc.2.bias" and h == 1:
            # With one round, adding b_i to learned[:, i] shifts every score of the queries at slot
            # index i equally: softmax-invariant, so this gradient is 0 up to rounding.
            assert exact[name].abs().max() <= 1e-12
            assert actual[name].abs().max() <= 1e-5 * exact["fc.2.weight"].norm()
            continue
        assert rel_error(actual[name], exact[name]) <= 1e-4, (name, rel_error(actual[name], exact[name]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gradients_no_worse_than_reference(dtype):
    C, H, W, chunk_size, h = SHAPES[0]
    gla = make_gla(C, chunk_size, h, seed=5)
    x = torch.randn(1, C, H, W, device=DEVICE)
    grad_y = torch.randn(1, C, H, W, device=DEVICE, dtype=torch.float64)
    perm, inv = sorted_slots(gla, x)
    exact = gradients(gla, x.double(), grad_y, perm, inv, fused_path=False)
    same_autocast = gradients(gla, x, grad_y, perm, inv, fused_path=False, autocast_dtype=dtype)
    actual = gradients(gla, x, grad_y, perm, inv, fused_path=True, autocast_dtype=dtype)
    for name in exact:
        bound = low_precision_allowance(rel_error(same_autocast[name], exact[name]), dtype)
        assert rel_error(actual[name], exact[name]) <= bound, (name, rel_error(actual[name], exact[name]), bound)


def test_gradients_are_bitwise_equal_in_any_program_order(request):
    """Two runs, the second with every launch's programs in reverse order: bitwise-equal forward and
    gradients (no atomics; slot gradients fold in a fixed order)."""
    C, H, W, chunk_size, h = SHAPES[0]
    gla = make_gla(C, chunk_size, h, seed=9)
    x = torch.randn(1, C, H, W, device=DEVICE)
    grad_y = torch.randn(1, C, H, W, device=DEVICE)
    perm, inv = sorted_slots(gla, x)
    first = gradients(gla, x, grad_y, perm, inv, fused_path=True)
    request.getfixturevalue("reversed_program_order")
    second = gradients(gla, x, grad_y, perm, inv, fused_path=True)
    assert all(torch.equal(first[name], second[name]) for name in first)


@triton.jit
def _sum_in_program_order_kernel(X, OUT):
    tl.atomic_add(OUT, tl.load(X + tl.program_id(0)))


def test_reversed_program_order_shows_an_order_dependent_reduction(request):
    """The check above can fail: a float sum accumulated in program order (atomics) changes bits."""
    values = torch.tensor([1.0, 1e8, -1e8], device=DEVICE)

    def total():
        out = torch.zeros(1, device=DEVICE)
        _sum_in_program_order_kernel[(3,)](values, out)
        return out.item()

    in_order = total()
    request.getfixturevalue("reversed_program_order")
    assert (in_order, total()) == (0.0, 1.0)


def saved_tensors_of(fn, parameters):
    """Unique (by storage) activations autograd saves while fn() runs, parameters left out:
    list of (shape, bytes)."""
    saved = {}
    parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}

    def pack(tensor):
        storage = tensor.untyped_storage().data_ptr()
        if storage not in parameter_storages:
            key = (storage, tensor.storage_offset(), tuple(tensor.shape))
            saved[key] = (tuple(tensor.shape), tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return list(saved.values())


def test_fused_call_saves_no_window_sized_tensor(capsys):
    n, C, H, W, chunk_size, h = 1, 16, 5, 7, 16, 2
    length = H * W
    padded_length = length + (-length) % chunk_size
    torch.manual_seed(0)
    gla = dlsn.GLA(C, reduction=4, chunk_size=chunk_size, n_hashes=h, backend="triton").to(DEVICE)
    reference_gla = copy.deepcopy(gla)
    reference_gla.backend = "reference"
    x = torch.randn(n, C, H, W, device=DEVICE, requires_grad=True)
    rotations = gla.rotations_for(length, DEVICE)
    fused_saved = saved_tensors_of(lambda: gla(x, rotations), gla.parameters())
    reference_saved = saved_tensors_of(lambda: reference_gla(x, rotations), reference_gla.parameters())
    limit = max(n * length * max(C, chunk_size), n * h * padded_length)
    fused_bytes = sum(b for _, b in fused_saved)
    reference_bytes = sum(b for _, b in reference_saved)
    with capsys.disabled():
        print(f"\nGLA N={n} C={C} L={length} l={chunk_size} h={h}: saved for backward "
              f"fused {fused_bytes} B ({len(fused_saved)} tensors), reference {reference_bytes} B "
              f"({len(reference_saved)} tensors)")
    assert all(numel_of(shape) <= limit for shape, _ in fused_saved), fused_saved
    # The check can fail: the reference saves its [*, l, 3l] scores.
    assert any(numel_of(shape) > limit for shape, _ in reference_saved)
    assert fused_bytes < reference_bytes


def numel_of(shape):
    result = 1
    for size in shape:
        result *= size
    return result


def test_dlsn_optimiser_steps_track_reference():
    def train(backend):
        torch.manual_seed(0)
        model = dlsn.DLSN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4, chunk_size=16,
                          n_hashes=2, res_scale=0.1, backend=backend).to(DEVICE)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(1)
        losses = []
        for step in range(3):
            lr_image = torch.rand(2, 3, 5, 6, generator=data).to(DEVICE)
            hr_image = torch.rand(2, 3, 10, 12, generator=data).to(DEVICE)
            torch.manual_seed(100 + step)  # the rotations drawn in training mode
            loss = (model(lr_image) - hr_image).abs().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        return losses, dict(model.named_parameters())

    fused_losses, fused_params = train("triton")
    reference_losses, reference_params = train("reference")
    assert fused_losses == pytest.approx(reference_losses, rel=1e-5)
    for name, param in reference_params.items():
        torch.testing.assert_close(fused_params[name], param, rtol=1e-4, atol=1e-5, msg=name)


def test_bad_input_raises_before_launch(no_launch):
    q = torch.zeros(1, 20, 4, device=DEVICE)
    v = torch.zeros(1, 20, 16, device=DEVICE)
    learned = torch.zeros(1, 20, 16, device=DEVICE)
    x = torch.zeros(1, 16, 4, 5, device=DEVICE)
    perm = torch.zeros(1, 2, 32, device=DEVICE, dtype=torch.int32)
    inv = torch.zeros(1, 2, 20, device=DEVICE, dtype=torch.int32)
    with pytest.raises(TypeError, match="perm"):
        sorted_attention(q, v, learned, perm.long(), inv, x, 16, 1.0)
    with pytest.raises(ValueError, match="inv"):
        sorted_attention(q, v, learned, perm, inv[:, :1], x, 16, 1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        sorted_attention(q, v, learned, perm, inv, x[:, :8], 16, 1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        sorted_attention(q, v, learned, perm, inv, x, 24, 1.0)
    rotations = torch.zeros(2, 4, 2, device=DEVICE)
    with pytest.raises(ValueError, match=r"hash_q must have shape \[N, L, c\] of q"):
        gla_attention(q, v, learned, rotations, 16, x, 1.0, hash_q=q[:, :10])


def test_opcheck_forward_and_backward_ops():
    """Schema, fake tensors, autograd registration and AOT dispatch of both custom ops (the ops are
    opaque to tracing, so this works under the interpreter too)."""
    torch.manual_seed(0)
    n, C, H, W, c, chunk_size, h = 1, 8, 4, 5, 4, 16, 2
    length = H * W
    q = torch.randn(n, length, c, device=DEVICE, requires_grad=True)
    v = torch.randn(n, length, C, device=DEVICE, requires_grad=True)
    learned = torch.randn(n, length, chunk_size, device=DEVICE, requires_grad=True)
    x = torch.randn(n, C, H, W, device=DEVICE, requires_grad=True)
    perm, inv = reference.sort_permutation(torch.randint(0, 2, (n, h, length), device=DEVICE), chunk_size)
    perm, inv = perm.int(), inv.int()
    torch.library.opcheck(torch.ops.dlsn.gla_attention_fwd.default, (q, v, learned, perm, inv, x, chunk_size, 0.5, "ieee"))
    detached = [t.detach() for t in (q, v, learned, x)]
    _, out, lse_max, lse_sum = torch.ops.dlsn.gla_attention_fwd(*detached[:3], perm, inv, detached[3], chunk_size,
                                                                 0.5, "ieee")
    grad_y = torch.randn(n, C, H, W, device=DEVICE)
    torch.library.opcheck(torch.ops.dlsn.gla_attention_bwd.default,
                          (grad_y, *detached[:3], perm, inv, out, lse_max, lse_sum, chunk_size, 0.5, "ieee"))
