"""Memory-aware automatic tiling (issue 17): the estimate, the plan, the command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlsn
from dlsn.sr.cli import main
from dlsn.sr.imageio import read_image, write_image
from dlsn.sr.inference import upscale_tensor
from dlsn.sr.tiling import MIN_TILE, forward_bytes, parse_size, plan_tiles

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=1)
DEMO = dict(n_resgroups=1, n_resblocks=2, n_feats=48, chunk_size=64, n_hashes=2, res_scale=1.0)


def test_parse_size():
    assert parse_size("512M") == 512 * 2 ** 20 and parse_size("1.5GB") == 1_500_000_000
    assert parse_size("2GiB") == 2 * 2 ** 30 and parse_size("4096") == 4096 and parse_size("3g") == 3 * 2 ** 30
    for bad in ("", "lots", "12Q", "-1G", "0"):
        with pytest.raises(ValueError, match="--max-memory"):
            parse_size(bad)


def test_unparsable_max_memory_is_one_line(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "in.png", torch.rand(3, 8, 8))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--max-memory", "plenty"]) == 2
    err = capsys.readouterr().err
    assert "--max-memory" in err and "512M" in err and "Traceback" not in err


def test_plan_whole_image_when_it_fits_else_largest_fitting_tiles():
    model = dlsn.DLSN(scale=2, **DEMO)
    whole = plan_tiles(model, 100, 80, budget=10 * 2 ** 30)
    assert whole.tile is None and whole.count == 1
    budget = forward_bytes(model, 100, 80) // 3
    plan = plan_tiles(model, 100, 80, budget=budget, overlap=8)
    assert plan.tile is not None and plan.count > 1 and plan.estimate <= budget
    # One pixel more per tile (and so one fewer row or column of tiles at most) would not fit.
    bigger = plan_tiles(model, 100, 80, budget=int(budget * 1.5), overlap=8)
    assert bigger.tile > plan.tile
    with pytest.raises(ValueError, match=f"even {MIN_TILE}x{MIN_TILE} tiles .* need about"):
        plan_tiles(model, 100, 80, budget=1000)
    assert plan_tiles(dlsn.sr.inference.BicubicUpscaler(2), 100, 80, budget=1000) is None


def test_low_budget_tiles_with_progress_and_stays_close(tmp_path, checkpoint, capsys):
    torch.manual_seed(1)
    write_image(tmp_path / "in.png", torch.rand(3, 40, 36))
    model = dlsn.sr.checkpoint.load_model(checkpoint)
    pad = 8
    budget = (forward_bytes(model, 40 + 2 * pad, 36 + 2 * pad) + forward_bytes(model, 16 + 32, 16 + 32)) // 2
    common = [str(tmp_path / "in.png"), "--checkpoint", str(checkpoint), "--scale", "2"]
    assert main(["upscale", *common, "-o", str(tmp_path / "tiled.png"), "--max-memory", str(budget)]) == 0
    err = capsys.readouterr().err
    assert "tiling:" in err and "tiles of" in err and "one tile's context plus the overlap" in err
    assert err.count("tiling:") == 1
    assert "tiles:" in err and ("s/tile" in err or "tile/s" in err) and "<" in err  # tqdm: rate and ETA
    assert main(["upscale", *common, "-o", str(tmp_path / "whole.png"), "--tile", "0"]) == 0
    assert "tiling:" not in capsys.readouterr().err
    tiled, whole = read_image(tmp_path / "tiled.png"), read_image(tmp_path / "whole.png")
    assert tiled.shape == whole.shape == (3, 80, 72)
    # GLA sees less context per tile; the attention term is small (res_scale 0.1), so outputs stay close.
    assert (tiled - whole).abs().mean() < 2 / 255 and (tiled - whole).abs().max() < 16 / 255


def test_budget_that_fits_runs_the_whole_image(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "in.png", torch.rand(3, 20, 24))
    common = [str(tmp_path / "in.png"), "--checkpoint", str(checkpoint), "--scale", "2"]
    assert main(["upscale", *common, "-o", str(tmp_path / "auto.png"), "--max-memory", "64G"]) == 0
    assert main(["upscale", *common, "-o", str(tmp_path / "whole.png"), "--tile", "0"]) == 0
    assert "tiling:" not in capsys.readouterr().err
    assert (tmp_path / "auto.png").read_bytes() == (tmp_path / "whole.png").read_bytes()


def test_one_tile_equals_the_whole_image_exactly():
    torch.manual_seed(0)
    model = dlsn.DLSN(scale=2, **TINY).eval()
    lr = torch.rand(1, 3, 21, 19)
    for pad in (0, 8):
        whole = upscale_tensor(model, lr, 2, border_pad=pad)
        assert torch.equal(upscale_tensor(model, lr, 2, tile=64, border_pad=pad), whole)


def test_too_small_budget_says_what_would_fit(tmp_path, checkpoint, capsys):
    write_image(tmp_path / "in.png", torch.rand(3, 30, 30))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--checkpoint",
                 str(checkpoint), "--scale", "2", "--max-memory", "10K"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too small" in err and "need about" in err and "whole" in err


_MEASURE = r"""
import json, sys, time
from pathlib import Path
import torch, dlsn
from dlsn.sr.inference import upscale_tensor
from dlsn.sr.tiling import forward_bytes

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

config, size = json.loads(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = dlsn.DLSN(scale=2, **config).eval()
lr = torch.rand(1, 3, size, size)
with torch.no_grad():
    model(lr[..., :8, :8])
base = status("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
upscale_tensor(model, lr, 2)
print(json.dumps({"measured": status("VmHWM:") - base, "estimate": forward_bytes(model, size, size)}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory")
@pytest.mark.parametrize("config, size", [(DEMO, 96), (dict(n_resgroups=2, n_resblocks=1, n_feats=96,
                                                             chunk_size=128, n_hashes=3), 64)])
def test_estimate_is_within_a_factor_of_the_measured_peak(config, size):
    """The estimate vs the peak resident memory of a forward on CPU, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(config), str(size)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = numbers["measured"] / numbers["estimate"]
    assert 1 / 1.6 <= ratio <= 1.6, numbers
