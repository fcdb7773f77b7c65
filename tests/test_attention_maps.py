"""Attention maps (dlsn.sr.attention_maps): weights equal what the GLA forward uses; `dlsn attention` CLI."""
import numpy as np
import pytest
import torch

from dlsn import DLSN, GLA
from dlsn.ops import reference
from dlsn.nn.hashing import sblsh_rotations
from dlsn.nn import gla_layers
from dlsn.sr import attention_maps
from dlsn.sr.attention_maps import attention_weights, capture_gla_inputs, texture_queries
from dlsn.sr.checkpoint import save_weights
from dlsn.sr.cli import main


def _layer(channels=8, chunk_size=16, n_hashes=3, res_scale=1.0, seed=0):
    torch.manual_seed(seed)
    layer = GLA(channels, reduction=2, chunk_size=chunk_size, n_hashes=n_hashes, res_scale=res_scale,
                backend="reference", eval_seed=seed).double().eval()
    with torch.no_grad():  # a learnable term of the same size as the dot products, so both matter
        layer.fc[2].weight.mul_(4)
    return layer


# (H, W, chunk, rounds): L < l with padding wrapping past L (p > L); one chunk (each key thrice in
# its window); two chunks (the other chunk twice); >= 3 chunks with padding; a single round.
SHAPES = [(1, 5, 16, 3), (5, 6, 16, 2), (4, 5, 16, 3), (7, 9, 16, 3), (6, 8, 16, 1), (9, 11, 16, 4)]


@pytest.mark.parametrize("height,width,chunk,rounds", SHAPES)
def test_weights_times_values_reproduce_the_layer_output(height, width, chunk, rounds):
    layer = _layer(chunk_size=chunk, n_hashes=rounds, res_scale=0.5)
    x = torch.randn(2, 8, height, width, dtype=torch.float64)
    length = height * width
    queries = torch.randperm(length)[: max(1, length // 2)]
    weights = attention_weights(layer, x, queries)
    assert weights.shape == (2, len(queries), length)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, len(queries), dtype=torch.float64))
    _, v, _ = layer.embed(x)
    out = (layer(x) - x).flatten(2).transpose(1, 2) / layer.res_scale       # [N, L, C]
    torch.testing.assert_close(weights @ v, out[:, queries], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("height,width,chunk,rounds", SHAPES)
def test_without_learned_term_is_dot_product_attention_in_the_same_buckets(height, width, chunk, rounds):
    layer = _layer(chunk_size=chunk, n_hashes=rounds)
    x = torch.randn(1, 8, height, width, dtype=torch.float64)
    queries = torch.arange(height * width)
    q, v, learned = layer.embed(x)
    rotations = layer.rotations_for(height * width, x.device)
    dot_only = reference.gla_core(q, v, torch.zeros_like(learned), rotations, chunk, x, 1.0) - x
    weights = attention_weights(layer, x, queries, learned_term=False)
    torch.testing.assert_close(weights @ v, dot_only.flatten(2).transpose(1, 2), rtol=1e-10, atol=1e-12)
    with_term = attention_weights(layer, x, queries)
    assert (with_term - weights).abs().max() > 1e-3  # the learnable term changes where it looks


def test_duplicate_keys_add_their_weights():
    """One chunk: every key sits three times in the window; a lone position gets all the weight."""
    layer = _layer(chunk_size=16, n_hashes=2)
    x = torch.randn(1, 8, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(attention_weights(layer, x, [0]), torch.ones(1, 1, 1, dtype=torch.float64))


def test_train_mode_with_the_forward_rotations():
    layer = _layer(chunk_size=16, n_hashes=3).train()
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64)
    rotations = sblsh_rotations(4, layer.n_buckets(42), 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="train mode"):
        attention_weights(layer, x, [0])
    weights = attention_weights(layer, x, torch.arange(42), rotations=rotations)
    _, v, _ = layer.embed(x)
    expected = (layer(x, rotations=rotations) - x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(weights @ v, expected, rtol=1e-10, atol=1e-12)


def test_bad_queries_and_layers():
    layer = _layer()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="outside"):
        attention_weights(layer, x, [12])
    with pytest.raises(ValueError, match="outside"):
        attention_weights(layer, x, [-1])
    with pytest.raises(TypeError, match="GLA"):
        attention_weights(torch.nn.Identity(), x, [0])


def _tiny_dlsn(n_resgroups=2):
    torch.manual_seed(0)
    return DLSN(scale=2, n_resgroups=n_resgroups, n_resblocks=1, n_feats=8, reduction=2, chunk_size=16,
                n_hashes=2, res_scale=1.0, backend="reference").eval()


def test_hooked_inputs_give_the_model_layer_outputs():
    model = _tiny_dlsn().double()
    image = torch.rand(1, 3, 9, 10, dtype=torch.float64)
    layers = gla_layers(model)
    outputs = {}
    handle = layers[1].register_forward_hook(lambda m, i, o: outputs.__setitem__("y", o))
    captured, _ = capture_gla_inputs(model, image, [0, 1])
    handle.remove()
    x = captured[1]
    weights = attention_weights(layers[1], x, torch.arange(90))
    _, v, _ = layers[1].embed(x)
    torch.testing.assert_close(weights @ v, (outputs["y"] - x).flatten(2).transpose(1, 2), rtol=1e-10, atol=1e-12)


def test_texture_queries_pick_the_textured_spot():
    image = torch.full((3, 32, 40), 0.5)
    image[:, 20:26, 8:14] = torch.rand(3, 6, 6)
    (qx, qy), = texture_queries(image, count=1)
    assert 6 <= qx <= 15 and 18 <= qy <= 27
    assert len(texture_queries(image, count=3)) == 3


@pytest.fixture
def checkpoint_and_image(tmp_path):
    from dlsn.sr.imageio import write_image

    model = _tiny_dlsn()
    path = tmp_path / "model.pt"
    save_weights(model.state_dict(), {"n_hashes": 2, "res_scale": 1.0}, path)
    image = tmp_path / "lr.png"
    write_image(image, torch.rand(3, 12, 14))
    return path, image


def test_cli_draws_a_query_with_and_without_the_learned_term(checkpoint_and_image, tmp_path, capsys):
    from PIL import Image

    checkpoint, image = checkpoint_and_image
    out = tmp_path / "maps.png"
    rc = main(["attention", "--checkpoint", str(checkpoint), str(image), "--layer", "1", "--query", "3,4", "5,6",
               "--top-k", "4", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("layer 1 query 3,4") == 2 and "dot product only" in printed
    with Image.open(out) as sheet:
        # two 300-pixel panels (the 14x12 image zoomed 8x, titles) side by side, one row per query,
        # then the legend of the colour scale
        maps_height = 2 * (12 * 8 + 30) + 8
        assert sheet.size == (2 * 300 + 8, maps_height + 8 + 66)
        assert sheet.mode == "RGB"
        pixels = np.asarray(sheet).astype(int)
    top, height = attention_maps._LEGEND_BAR
    bar = pixels[maps_height + 8 + top + height // 2, 20:20 + 480]
    ends = attention_maps._heat_colors(torch.tensor([[0.0, 1.0]]))[:, 0].T.mul(255).round().int().numpy()
    assert np.abs(bar[[0, -1]] - ends).max() <= 1  # no weight on the left, the largest on the right
    assert np.abs(np.diff(bar, axis=0)).max() < 20  # a continuous scale


def test_cli_all_layers_with_automatic_queries(checkpoint_and_image, tmp_path, capsys):
    checkpoint, image = checkpoint_and_image
    out = tmp_path / "all.png"
    assert main(["attention", "--checkpoint", str(checkpoint), str(image), "--layer", "all", "--auto-queries", "2",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "queries (highest local texture)" in printed
    assert "layer 0 query" in printed and "layer 1 query" in printed and out.is_file()


@pytest.mark.parametrize("extra,message", [
    (["--query", "14,3"], "--query 14,3 is outside the 14x12 image"),
    (["--query", "2,-1"], "outside"),
    (["--layer", "2"], "--layer 2 is out of range: the model has 2 GLA layer(s)"),
    (["--layer", "-1"], "out of range"),
])
def test_cli_bad_input_is_one_line(checkpoint_and_image, tmp_path, capsys, extra, message):
    checkpoint, image = checkpoint_and_image
    rc = main(["attention", "--checkpoint", str(checkpoint), str(image), *extra, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("similarity", ["dot", "learned"])
def test_ablated_layers_score_as_their_forward(similarity):
    torch.manual_seed(0)
    layer = GLA(8, reduction=2, chunk_size=16, n_hashes=2, backend="reference", similarity=similarity).double().eval()
    x = torch.randn(1, 8, 5, 9, dtype=torch.float64)
    weights = attention_weights(layer, x, torch.arange(45))
    _, v, _ = layer.embed(x)
    torch.testing.assert_close(weights @ v, (layer(x) - x).flatten(2).transpose(1, 2), rtol=1e-10, atol=1e-12)
