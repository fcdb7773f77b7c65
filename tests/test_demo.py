"""`dlsn demo` end to end with a few iterations: the table, the side-by-side PNG and results exist.

The acceptance (DLSN beats bicubic by >= 0.5 dB on the held-out photographs) needs the full default
run (minutes) and is measured by `dlsn demo` itself, not here.
"""
import json

import pytest

from dlsn.sr.cli import main

pytest.importorskip("skimage")


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--iters", "2", "--device", "cpu", "model.n_feats=8",
                 "data.batch_size=2", "log.progress=false"])
    assert code in (0, 1)  # 1: the 0.5 dB target is not met after 2 iterations, as expected
    printed = capsys.readouterr().out
    assert "held-out photographs" in printed and "astronaut" in printed and "bicubic PSNR" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == 2 and results["passed"] == (code == 0)
    assert [row["image"] for row in results["held_out"]] == ["astronaut", "chelsea"]
    for row in results["held_out"]:
        assert 20 < row["bicubic_psnr"] < 45 and 0 < row["dlsn_ssim"] <= 1
    assert results["gain_db"] == pytest.approx(
        results["held_out_mean"]["dlsn_psnr"] - results["held_out_mean"]["bicubic_psnr"])
    from PIL import Image

    with Image.open(out / "side_by_side.png") as image:
        assert image.size == (2 * (3 * 128 + 2 * 4), 2 * 128)
    assert (out / "model.pt").is_file() and (out / "log.csv").is_file()
