"""Exported models (dlsn.sr.deploy): torch.export programs, AOTInductor packages and ONNX models with
symbolic height and width, against the float64 eager model; the pieces that make them possible
(the packed eval-rotation table, the counting sort); and what cannot be exported."""
import copy

import numpy as np
import pytest
import torch
from conftest import max_error

import dlsn
from dlsn.nn import export_mode
from dlsn.ops import reference
from dlsn.ops.rotations import eval_rotation_table, reachable_buckets, select_rotations, table_offset
from dlsn.sr import deploy

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16, n_hashes=2)
# Traced at 12x10 (not a multiple of the chunk); run at sizes with one chunk (3x4 = 12 < 16 positions,
# one bucket), three chunks and many buckets.
EXPORT_SIZE = (12, 10)
RUN_SIZES = [(3, 4), (5, 7), (24, 20)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return dlsn.DLSN(scale=2, **TINY).eval()


def float64_output(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def images(sizes):
    generator = torch.Generator().manual_seed(3)
    return [torch.rand(1, 3, *size, generator=generator) for size in sizes]


# The pieces ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_buckets", [128, 7])
def test_rotation_table_blocks_are_the_eager_draws(max_buckets):
    table = eval_rotation_table(16, 2, max_buckets, 5, torch.device("cpu"))
    assert table.shape == (2, 16, sum(reachable_buckets(max_buckets)))
    for b in reachable_buckets(max_buckets):
        expected = dlsn.sblsh_rotations(16, b, 2, generator=torch.Generator().manual_seed(5))
        assert torch.equal(table[:, :, table_offset(b):table_offset(b) + b], expected)
        padded = select_rotations(table, b, max_buckets)
        assert torch.equal(padded[:, :, :b], expected) and padded[:, :, b:].isnan().all()


def test_nan_padded_rotations_hash_like_the_block():
    """The NaN columns of `select_rotations` never win: the same codes, non-finite rows included."""
    table = eval_rotation_table(16, 3, 128, 0, torch.device("cpu"))
    q = torch.randn(2, 50, 16, generator=torch.Generator().manual_seed(0))
    q[0, :3] = 0
    q[1, 0, 0], q[1, 1, :] = float("nan"), float("inf")
    for b in (1, 2, 6, 128):
        block = table[:, :, table_offset(b):table_offset(b) + b]
        assert torch.equal(reference.hash_codes(q, select_rotations(table, b, 128)), reference.hash_codes(q, block))


@pytest.mark.parametrize("length, n_buckets, chunk_size", [(5, 1, 16), (99, 6, 16), (640, 128, 64), (33, 4, 32)])
def test_counting_sort_gives_the_stable_sorts_slots(length, n_buckets, chunk_size):
    codes = torch.randint(0, n_buckets, (2, 3, length), generator=torch.Generator().manual_seed(length))
    codes[0, 0] = 0  # one bucket holds everything
    perm, inv = reference.sort_permutation(codes, chunk_size)
    counted_perm, counted_inv = reference.sort_permutation(codes, chunk_size, n_buckets, counting=True)
    assert torch.equal(counted_perm, perm) and torch.equal(counted_inv, inv)


def test_export_mode_leaves_the_state_dict_and_restores_the_layers(model):
    keys = list(model.state_dict())
    with export_mode(model, counting_sort=True):
        assert list(model.state_dict()) == keys
        assert all(layer.rotation_table is not None and layer.counting_sort for layer in model.gla_layers())
    assert all(layer.rotation_table is None and not layer.counting_sort for layer in model.gla_layers())


@pytest.mark.parametrize("option, message", [(dict(backend="triton"), "backend='triton'"),
                                             (dict(check_finite=True), "check_finite=True")])
def test_unexportable_layers_are_one_line_errors(option, message):
    bad = dlsn.DLSN(scale=2, **TINY, **option).eval()
    with pytest.raises(ValueError, match=f"cannot export: DLSN.body.0.body.1 .*{message}"):
        deploy.export_program(bad, EXPORT_SIZE)
    with pytest.raises(ValueError, match="height and width >= 2"):
        deploy.export_program(dlsn.DLSN(scale=2, **TINY), (1, 8))


# torch.export and AOTInductor ---------------------------------------------------------------------------

def test_pt2_program_runs_at_other_sizes(model, tmp_path):
    path = deploy.save_pt2(model, tmp_path / "model.pt2", EXPORT_SIZE)
    program = torch.export.load(path)
    assert set(program.state_dict) == set(model.state_dict())
    exported = program.module()
    for x in images(RUN_SIZES[1:]):
        with torch.no_grad():
            assert max_error(exported(x), float64_output(model, x)) <= 1e-5


def test_aoti_package_loads_and_matches(model, tmp_path):
    path = deploy.save_aoti(model, tmp_path / "model_aoti.pt2", EXPORT_SIZE)
    runner = torch._inductor.aoti_load_package(str(path))
    for x in images(RUN_SIZES[:2]):
        assert max_error(runner(x), float64_output(model, x)) <= 1e-5


# ONNX ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return deploy.save_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", EXPORT_SIZE)


def test_onnxruntime_matches_pytorch_at_three_sizes(model, onnx_path):
    runner = deploy.load_onnx(onnx_path, scale=2)
    assert (runner.scale, runner.rgb_range) == (2, 1.0)
    for x in images(RUN_SIZES):
        assert max_error(runner(x), float64_output(model, x)) <= 1e-4


def _nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _nodes(attribute.g)


def test_onnx_graph_has_standard_ops_only_and_the_rotations_as_constants(model, onnx_path):
    """No op outside the default domain, no TopK/ArgSort over the positions (TensorRT's TopK takes
    K <= 3840; DLSN sorts h*H*W positions), and each layer's eval rotations for every size stored
    bitwise."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    nodes = list(_nodes(proto.graph)) + [node for function in proto.functions for node in _nodes(function)]
    assert {node.domain for node in nodes} <= {"", "ai.onnx"}
    assert not [node.op_type for node in nodes if node.op_type in ("TopK", "ArgSort", "ArgMax", "ArgMin")]
    constants = [numpy_helper.to_array(tensor) for tensor in proto.graph.initializer]
    for layer in model.gla_layers():
        table = eval_rotation_table(layer.channels // layer.reduction, layer.n_hashes, layer.max_buckets,
                                    layer.eval_seed, torch.device("cpu")).numpy()
        assert any(c.shape == table.shape and np.array_equal(c, table) for c in constants)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["format"] == deploy.ONNX_FORMAT and metadata["scale"] == "2"


def test_onnx_errors_are_one_line(model, onnx_path, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(ValueError, match="opset >= 18"):
        deploy.save_onnx(model, tmp_path / "old.onnx", EXPORT_SIZE, opset=17)
    assert not (tmp_path / "old.onnx").exists()
    with pytest.raises(ValueError, match="--scale 3 requested but the ONNX model is x2"):
        deploy.load_onnx(onnx_path, scale=3)
    foreign = tmp_path / "identity.onnx"
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
              str(foreign))
    with pytest.raises(ValueError, match="not one `dlsn export --format onnx` wrote"):
        deploy.load_onnx(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model onnxruntime can load"):
        deploy.load_onnx(garbage)
