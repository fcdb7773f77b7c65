"""Ablation switches of GLA / DLSN (similarity, local fusion, hash rounds, chunk size): the defaults
keep the published network; each switch changes exactly what it names."""
import os

import pytest
import torch

from dlsn.ops import reference
from dlsn.nn.gla import GLA
from dlsn.models.dlsn import DLSN

SMALL = dict(n_resgroups=2, n_resblocks=2, n_feats=16, chunk_size=16, n_hashes=2)


def published_keys(n_resgroups, n_resblocks, scale=2):
    """The published state-dict keys (docs/gla.md §6), written out independently of dlsn.models.dlsn."""
    keys = ["a", "sub_mean.weight", "sub_mean.bias", "head.0.weight", "head.0.bias"]
    for g in range(n_resgroups):
        for b in range(n_resblocks):
            keys += [f"body.{g}.body.{b}.body.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        gla = f"body.{g}.body.{n_resblocks}"
        keys += [f"{gla}.{m}.0.{p}" for m in ("conv_match", "conv_assembly", "conv_assembly_fc")
                 for p in ("weight", "bias")]
        keys += [f"{gla}.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        keys += [f"body.{g}.body.{n_resblocks + 1}.{p}" for p in ("weight", "bias")]
    keys += [f"body.{n_resgroups}.{p}" for p in ("weight", "bias")]
    keys += [f"tail.0.{2 * i}.{p}" for i in range({2: 1, 3: 1, 4: 2}[scale]) for p in ("weight", "bias")]
    keys += ["tail.1.weight", "tail.1.bias", "add_mean.weight", "add_mean.bias"]
    return sorted(keys)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_defaults_keep_the_published_keys(scale):
    model = DLSN(scale=scale, **SMALL)
    assert sorted(model.state_dict()) == published_keys(2, 2, scale)
    assert all(layer.similarity == "both" for layer in model.gla_layers())


def test_similarity_learned_keeps_the_keys():
    assert sorted(DLSN(similarity="learned", **SMALL).state_dict()) == published_keys(2, 2)


def _gla_pair(similarity, channels=16, chunk_size=16, n_hashes=2):
    torch.manual_seed(0)
    both = GLA(channels, chunk_size=chunk_size, n_hashes=n_hashes, backend="reference").double().eval()
    other = GLA(channels, chunk_size=chunk_size, n_hashes=n_hashes, backend="reference",
                similarity=similarity).double().eval()
    other.load_state_dict(both.state_dict(), strict=False)
    return both, other


def test_dot_is_both_with_a_zero_learnable_term():
    both, dot = _gla_pair("dot")
    assert not hasattr(dot, "fc") and not hasattr(dot, "conv_assembly_fc")
    assert sorted(set(both.state_dict()) - set(dot.state_dict())) == sorted(
        f"{m}.{p}" for m in ("conv_assembly_fc.0", "fc.0", "fc.2") for p in ("weight", "bias"))
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        different = both(x)
        both.fc[2].weight.zero_()
        both.fc[2].bias.zero_()  # F = 0 exactly: only the dot product is left
        expected = both(x)
        got = dot(x)
    assert not torch.allclose(different, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_learned_scores_are_the_learnable_term_alone():
    both, learned = _gla_pair("learned")
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    rotations = both.rotations_for(63, x.device)
    with torch.no_grad():
        q, v, F = learned.embed(x)
        # Hashing by the real queries, attention with the dot term removed, written out from the stages.
        perm, inv = reference.sort_permutation(reference.hash_codes(q, rotations), 16)
        n, h, lp = perm.shape
        windows = lambda rows: reference.gather_rows(rows, reference.window_positions(perm, 16))
        scores = windows(F).transpose(-1, -2)  # s_tj = F_{S(j)}[i]
        out = torch.softmax(scores, dim=-1) @ windows(v)
        lse = torch.logsumexp(scores, dim=-1)
        out, lse = out.reshape(n, h, lp, 16)[:, :, :63], lse.reshape(n, h, lp)[:, :, :63]
        merged, _ = reference.scatter_back(out, lse, inv)
        expected = merged.transpose(1, 2).reshape(x.shape) + x
        got = learned(x)
        published = both(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(got, published)


def test_learned_ignores_the_query_scale_but_both_does_not():
    """Scaling conv_match by 2 doubles q: the buckets (argmax) stay, so only the dot term changes."""
    both, learned = _gla_pair("learned")
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = (both(x), learned(x))
        for module in (both, learned):
            module.conv_match[0].weight.mul_(2)
            module.conv_match[0].bias.mul_(2)
        after = (both(x), learned(x))
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("similarity", ["dot", "learned"])
def test_every_parameter_gets_a_gradient(similarity):
    """No unused parameters (DDP without find_unused_parameters) in either variant."""
    model = DLSN(similarity=similarity, **SMALL)
    model.a.requires_grad_(False)
    model(torch.rand(1, 3, 10, 10)).abs().mean().backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_unknown_similarity_is_an_error():
    with pytest.raises(ValueError, match="similarity must be one of .*'cosine'"):
        GLA(16, similarity="cosine")
    with pytest.raises(ValueError, match="similarity"):
        DLSN(similarity="cosine", **SMALL)


def test_local_fusion_off_is_the_network_with_identity_blocks():
    torch.manual_seed(0)
    full = DLSN(**SMALL).eval()
    no_lfb = DLSN(local_fusion=False, **SMALL).eval()
    # Only the local fusion blocks go; every other key shifts down by n_resblocks within its group.
    remapped = {}
    for key, value in full.state_dict().items():
        parts = key.split(".")
        if parts[0] == "body" and len(parts) > 3 and parts[2] == "body":
            index = int(parts[3])
            if index < SMALL["n_resblocks"]:
                continue
            parts[3] = str(index - SMALL["n_resblocks"])
        remapped[".".join(parts)] = value
    no_lfb.load_state_dict(remapped)  # strict: exactly the LFFB keys are gone
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        different = full(x)
        for group in full.body[:-1]:
            for block in group.body[:SMALL["n_resblocks"]]:
                for conv in (block.body[0], block.body[2]):
                    conv.weight.zero_()
                    conv.bias.zero_()  # conv(relu(conv(x))) = 0: the block is the identity
        expected = full(x)
        got = no_lfb(x)
    assert not torch.allclose(different, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_chunk_size_changes_only_the_fc_width():
    a, b = DLSN(**SMALL).state_dict(), DLSN(**{**SMALL, "chunk_size": 32}).state_dict()
    assert sorted(a) == sorted(b)
    changed = sorted(k for k in a if a[k].shape != b[k].shape)
    assert changed and all(".fc." in k for k in changed)
    assert all(layer.chunk_size == 32 for layer in DLSN(**{**SMALL, "chunk_size": 32}).gla_layers())


def test_eval_hash_rounds_apply_in_eval_mode_only():
    model = DLSN(eval_n_hashes=5, **SMALL)
    assert [layer.n_hashes for layer in model.gla_layers()] == [2, 2]
    model.eval()
    assert [layer.n_hashes for layer in model.gla_layers()] == [5, 5]
    assert model.gla_layers()[1].rotations_for(64, "cpu").shape[0] == 5
    model.train()
    assert [layer.n_hashes for layer in model.gla_layers()] == [2, 2]


def test_set_n_hashes_leaves_weights_and_is_reproducible_per_layer():
    torch.manual_seed(0)
    model = DLSN(**SMALL).eval()
    twin = DLSN(**SMALL).eval()
    twin.load_state_dict(model.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 16, 16)
    outputs = {}
    with torch.no_grad():
        for h in (1, 3, 6, 3):
            model.set_n_hashes(h)
            assert [layer.n_hashes for layer in model.gla_layers()] == [h, h]
            outputs.setdefault(h, []).append(model(x))
        twin.set_n_hashes(6)
        twin_six = twin(x)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(outputs[3][0], outputs[3][1], rtol=0, atol=0)  # cached or redrawn: equal
    torch.testing.assert_close(outputs[6][0], twin_six, rtol=0, atol=0)       # same seed per layer
    assert not torch.equal(outputs[1][0], outputs[6][0])
    layer0, layer1 = model.gla_layers()
    assert not torch.equal(layer0.rotations_for(256, "cpu"), layer1.rotations_for(256, "cpu"))
    model.set_n_hashes(4, training=True)
    assert model.train_n_hashes == 4 and model.eval_n_hashes == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_hash_rounds_are_errors(bad):
    with pytest.raises(ValueError, match="hash rounds must be a positive integer"):
        DLSN(**SMALL).set_n_hashes(bad)
    with pytest.raises(ValueError, match="hash rounds must be a positive integer"):
        DLSN(eval_n_hashes=bad, **SMALL)


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="needs CUDA or the Triton interpreter")
@pytest.mark.parametrize("similarity", ["dot", "learned"])
def test_switches_on_the_triton_backend_match_the_reference(similarity):
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    module = GLA(16, chunk_size=16, n_hashes=2, backend="triton", similarity=similarity).to(device).eval()
    x = torch.randn(1, 16, 5, 7, device=device, requires_grad=True)
    y = module(x)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    module.backend = "reference"
    expected = module(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("similarity", ["dot", "learned"])
def test_ablation_weights_reload_with_their_switch(tmp_path, similarity):
    from dlsn.sr import checkpoint as ckpt

    torch.manual_seed(0)
    model = DLSN(similarity=similarity, local_fusion=False, **SMALL).eval()
    config = dict(SMALL, similarity=similarity, local_fusion=False, res_scale=0.1, eval_n_hashes=4)
    ckpt.save_weights(model.state_dict(), config, tmp_path / "model.pt")
    loaded = ckpt.load_model(tmp_path / "model.pt")
    assert [layer.n_hashes for layer in loaded.gla_layers()] == [4, 4] and loaded.train_n_hashes == 2
    loaded.set_n_hashes(2)  # compare with the saved model's own rounds
    exported = ckpt.load_model(ckpt.export_safetensors(tmp_path / "model.pt", tmp_path / "model.safetensors"))
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        for other in (loaded, exported):
            assert [layer.similarity for layer in other.gla_layers()] == [similarity] * 2
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
