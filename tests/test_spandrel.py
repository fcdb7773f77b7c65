"""dlsn.spandrel: spandrel's ModelLoader loads DLSN, EDSR+GLA and RCAN+GLA state dicts as
ImageModelDescriptors whose call equals dlsn's; plain RCAN stays spandrel's.

spandrel imports torchvision when it is imported (two of its architectures, LaMa and RestoreFormer,
use `torchvision.transforms.functional`). Where no torchvision matching the installed torch exists
(a CPU torch from a local wheel: PyPI's torchvision wheels are CUDA builds), CI installs spandrel
with `--no-deps` and these tests stand in for those two functions, which neither spandrel's loader
nor dlsn's architectures call; with a working torchvision they use it.
"""
import copy
import importlib.util
import subprocess
import sys
import types

import pytest
import torch
from conftest import max_error

import dlsn
from dlsn.models import EDSR, RCAN

# The hash rounds leave no trace in the weights: the loader builds the default 3.
TINY = dict(chunk_size=16)


def _torchvision_imports():
    if importlib.util.find_spec("torchvision") is None:
        return False
    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def spandrel(tmp_path_factory):
    if importlib.util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install --no-deps spandrel einops; see README)")
    if not _torchvision_imports():
        def unused(*args, **kwargs):
            raise AssertionError("the torchvision stand-in was called")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.normalize, functional.rotate, functional.InterpolationMode = unused, unused, object
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        vision = types.ModuleType("torchvision")
        vision.transforms = transforms
        sys.modules.update({"torchvision": vision, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})
    import spandrel

    import dlsn.spandrel

    registry = spandrel.MAIN_REGISTRY.copy()
    dlsn.spandrel.install(registry)
    return spandrel, spandrel.ModelLoader(registry=registry)


def networks():
    torch.manual_seed(0)
    return {
        "DLSN": dlsn.DLSN(scale=3, n_resgroups=2, n_resblocks=1, n_feats=16, **TINY),
        "EDSR+GLA": EDSR(scale=2, n_resblocks=2, n_feats=16, gla_positions=[1], rgb_range=255, **TINY),
        "RCAN+GLA": RCAN(scale=4, n_resgroups=2, n_resblocks=1, n_feats=16, ca_reduction=4, gla_positions=[0, 2],
                         **TINY),
    }


@pytest.mark.parametrize("name", ["DLSN", "EDSR+GLA", "RCAN+GLA"])
def test_loader_returns_a_descriptor_that_calls_like_dlsn(name, spandrel, tmp_path):
    module, loader = spandrel
    model = networks()[name].eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    descriptor = loader.load_from_file(tmp_path / "model.pth")
    assert isinstance(descriptor, module.ImageModelDescriptor)
    assert descriptor.architecture.id == name
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (model.scale, 3, 3)
    assert descriptor.tiling == module.ModelTiling.DISCOURAGED
    image = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image * model.rgb_range) / model.rgb_range
        assert torch.equal(descriptor(image), expected.clamp(0, 1))


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.float16, 2 ** -11), (torch.bfloat16, 2 ** -8)])
def test_half_and_bfloat16_support_as_measured(dtype, unit_roundoff, spandrel, tmp_path):
    """What the descriptor claims: the model runs in 16-bit (CPU, reference backend) with an error of
    a few units of the dtype's roundoff against float64."""
    _, loader = spandrel
    model = networks()["DLSN"].eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    descriptor = loader.load_from_file(tmp_path / "model.pth")
    assert descriptor.supports_half and descriptor.supports_bfloat16
    image = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(image.double()).clamp(0, 1)
        out = descriptor.to(dtype)(image.to(dtype))
    assert out.dtype == dtype
    assert max_error(out, exact) <= 16 * unit_roundoff * exact.abs().max().item()


def test_plain_rcan_and_edsr_stay_spandrels(spandrel):
    module, loader = spandrel
    torch.manual_seed(0)
    plain_rcan = RCAN(scale=2, n_resgroups=2, n_resblocks=1, n_feats=16, ca_reduction=4, rgb_range=255)
    assert loader.load_from_state_dict(plain_rcan.state_dict()).architecture.id == "RCAN"
    # spandrel has no EDSR architecture of its own: a plain EDSR stays unsupported, not ours.
    plain_edsr = EDSR(scale=2, n_resblocks=2, n_feats=16).state_dict()
    with pytest.raises(module.UnsupportedModelError):
        loader.load_from_state_dict(plain_edsr)
