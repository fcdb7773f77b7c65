"""torch.compile(fullgraph=True) of GLA and of every network that holds it: no graph break
(torch._dynamo.explain) on either backend in eval and training mode, and compiled outputs and
gradients within float32 tolerance of a float64 eager oracle.

On the CPU the fused backend runs under the Triton interpreter with backend="aot_eager" (graph
capture, fake implementations and AOT autograd, no code generation: Inductor cannot compile the
interpreter's launches, which are opaque custom ops anyway); the reference backend also runs
through Inductor. bench/gpu_run.sh runs the Inductor cases of both backends on a GPU.
"""
import copy

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config
from conftest import DEVICE, max_error, rel_error

import dlsn
from dlsn.models import EDSR, FSRCNN, RCAN

GLA_OPTIONS = dict(chunk_size=16, n_hashes=2)


def make(name, backend):
    torch.manual_seed(0)
    if name == "gla":
        return dlsn.GLA(16, reduction=4, backend=backend, **GLA_OPTIONS)
    if name == "dlsn":
        return dlsn.DLSN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, backend=backend, **GLA_OPTIONS)
    if name == "edsr":
        return EDSR(scale=2, n_resblocks=1, n_feats=16, gla_positions=[1], backend=backend, **GLA_OPTIONS)
    if name == "rcan":
        return RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, ca_reduction=4, gla_positions=[0],
                    backend=backend, **GLA_OPTIONS)
    return FSRCNN(scale=2, d=16, s=8, m=1, gla_positions=[1], backend=backend, **GLA_OPTIONS)


def example(name, n=1):
    # 9 x 11 = 99 positions: a padded last chunk (p = 13), 6 buckets.
    channels = 16 if name == "gla" else 3
    return torch.rand(n, channels, 9, 11, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def outputs_and_grads(model, x, training, seed=2):
    """Forward (and backward of a fixed linear functional in training mode) with the RNG that
    training-mode rotations draw from reset to `seed`."""
    x = x.detach().requires_grad_(training)
    torch.manual_seed(seed)
    y = model(x)
    if not training:
        return y.detach(), []
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * weights).sum(), [x, *params], allow_unused=True)
    return y.detach(), [g for g in grads if g is not None]


def check_against_float64(compiled, eager, x, training):
    """Compiled float32 model within float32 tolerance of the float64 eager reference."""
    oracle = copy.deepcopy(eager).double()
    for layer in oracle.modules():
        if isinstance(layer, dlsn.GLA):
            layer.backend = "reference"
    y, grads = outputs_and_grads(compiled, x, training)
    y_exact, grads_exact = outputs_and_grads(oracle, x.double(), training)
    assert max_error(y, y_exact) <= 1e-4 * y_exact.abs().max().item()
    for grad, exact in zip(grads, grads_exact, strict=True):
        assert rel_error(grad, exact) <= 1e-4


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", ["gla", "dlsn", "edsr", "rcan", "fsrcnn"])
def test_fullgraph_without_breaks_matches_eager(name, backend, training):
    model = make(name, backend).to(DEVICE).train(training)
    x = example(name)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_break_count, explained.graph_count) == (0, 1), explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    check_against_float64(compiled, model, x, training)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_inductor_gla_matches_eager(backend, training):
    if backend == "triton" and DEVICE.type == "cpu":
        pytest.skip("the fused backend under Inductor needs a GPU (bench/gpu_run.sh); on the CPU it is tested "
                    "with aot_eager above")
    model = make("gla", backend).to(DEVICE).train(training)
    torch._dynamo.reset()
    # Inductor draws its own random numbers unless told to call eager's (training-mode rotations).
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        check_against_float64(compiled, model, example("gla", n=2), training)


def test_eval_rotations_op_is_todays_seeded_draw():
    """Eval-mode rotations, eager and through the op that compiled code calls, are exactly what a CPU
    generator seeded with the layer's seed gives, on every call; the op hands out copies (compiled
    code may write into its outputs)."""
    gla = dlsn.GLA(16, reduction=4, **GLA_OPTIONS).eval()
    gla.eval_seed = 7
    for length in (5, 99, 1000):
        buckets = gla.n_buckets(length)
        expected = dlsn.sblsh_rotations(4, buckets, 2, generator=torch.Generator().manual_seed(7))
        first, second = (torch.ops.dlsn.eval_rotations(4, buckets, 2, 7, torch.device("cpu")) for _ in range(2))
        assert torch.equal(first, expected) and torch.equal(second, expected)
        assert first.data_ptr() != second.data_ptr()
        assert torch.equal(gla.rotations_for(length, "cpu"), expected)


def test_compiled_fused_gla_follows_the_matmul_precision_of_each_call(monkeypatch):
    """The float32 dot mode is read when the op runs, so a compiled layer follows a change of
    torch.set_float32_matmul_precision without recompiling, as eager code does."""
    from dlsn.ops import fused

    seen = []
    launcher = fused.window_attn_fwd

    def record(*args, precision, **kwargs):
        seen.append(precision)
        return launcher(*args, precision=precision, **kwargs)

    monkeypatch.setattr(fused, "window_attn_fwd", record)
    model = make("gla", "triton").to(DEVICE).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    previous = torch.get_float32_matmul_precision()
    try:
        for mode in ("highest", "medium"):
            torch.set_float32_matmul_precision(mode)
            with torch.no_grad():
                compiled(example("gla"))
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == ["ieee", "tf32"]


def test_train_compile_compiles_the_model_in_place(tmp_path):
    """`train.compile: true`: the training model is compiled in place (same state-dict keys, so
    checkpoints keep their format), the EMA copy is not."""
    from dlsn.sr.config import config_from_dict
    from dlsn.sr.train import Trainer

    cfg = config_from_dict({"model": dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16, n_hashes=2),
                            "train": dict(compile=True, ema_decay=0.9, device="cpu"),
                            "log": dict(out_dir=str(tmp_path), progress=False)})
    trainer = Trainer(cfg, quiet=True)
    trainer.set_up(pretrained=False)
    assert trainer.model._compiled_call_impl is not None and trainer.ema._compiled_call_impl is None
    assert list(trainer.model.state_dict()) == list(trainer.ema.state_dict())
    assert not any(key.startswith("_orig_mod") for key in trainer.model.state_dict())


def test_bench_compile_smoke():
    """bench/bench_compile.py (the README's compile and onnxruntime figures) still runs: a tiny
    model through Inductor and onnxruntime."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    script = Path(__file__).resolve().parents[1] / "bench" / "bench_compile.py"
    done = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| smoke | 12x12 |" in done.stdout and "onnxruntime s" in done.stdout
