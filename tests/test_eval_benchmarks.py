"""`dlsn eval` over several benchmarks with a table in the paper's layout (DLSN+ row with
--self-ensemble), and hash rounds at inference (`--n-hashes`) in eval and upscale."""
import csv
import json
import shutil

import pytest
import torch

from dlsn.sr.cli import main
from dlsn.sr.imageio import write_image

TINY = dict(n_resgroups=1, n_resblocks=1, n_feats=8, chunk_size=16, n_hashes=2)


@pytest.fixture
def benchmarks(tmp_path):
    g = torch.Generator().manual_seed(0)
    folders = []
    for name, size in (("Set5", (26, 28)), ("Set14", (30, 24))):
        folder = tmp_path / "bench" / name
        folder.mkdir(parents=True)
        for image in ("a", "b"):
            base = torch.linspace(0, 1, size[1]).view(1, 1, size[1]).expand(3, *size)
            write_image(folder / f"{image}.png", (0.7 * base + 0.3 * torch.rand(3, *size, generator=g)).clamp(0, 1))
        folders.append(folder)
    return folders


def eval_json(capsys, *argv):
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_several_benchmarks_give_the_single_folder_numbers(benchmarks, capsys, tmp_path):
    singles = [eval_json(capsys, "--model", "bicubic", "--scale", "2", "--data", str(f))["mean"] for f in benchmarks]
    both = eval_json(capsys, "--model", "bicubic", "--scale", "2", "--data", *map(str, benchmarks))
    assert [b["benchmark"] for b in both["benchmarks"]] == ["Set5", "Set14"]
    assert [b["mean"] for b in both["benchmarks"]] == singles
    assert all(b["seconds"] >= 0 for b in both["benchmarks"])
    # Plain output: a markdown table in the paper's layout.
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", *map(str, benchmarks)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| Method | Scale | Degradation | Set5 | Set14 |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:3] == ["Bicubic", "x2", "BI"]
    assert cells[3] == f"{singles[0]['psnr']:.2f}/{singles[0]['ssim']:.4f}"
    assert cells[4] == f"{singles[1]['psnr']:.2f}/{singles[1]['ssim']:.4f}"


def test_table_files_collect_rows_across_calls(benchmarks, checkpoint, capsys, tmp_path):
    table = tmp_path / "results" / "dlsn"
    data = ["--data", str(benchmarks[1]), str(benchmarks[0])]
    common = ["--checkpoint", str(checkpoint), "--scale", "2", "--device", "cpu", "--table", str(table), *data]
    assert main(["eval", *common]) == 0
    assert main(["eval", *common, "--self-ensemble"]) == 0
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--table", str(table), *data]) == 0
    assert main(["eval", *common]) == 0  # the same row again replaces, never duplicates
    capsys.readouterr()
    with open(table.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["Bicubic", "DLSN", "DLSN+"]
    assert list(rows[0]) == ["method", "scale", "degradation", "Set5 PSNR", "Set5 SSIM", "Set14 PSNR", "Set14 SSIM"]
    plus = eval_json(capsys, "--checkpoint", str(checkpoint), "--scale", "2", "--device", "cpu",
                     "--self-ensemble", "--data", str(benchmarks[0]))["mean"]
    assert rows[2]["Set5 PSNR"] == f"{plus['psnr']:.2f}" and rows[2]["Set5 SSIM"] == f"{plus['ssim']:.4f}"
    markdown = table.with_suffix(".md").read_text()
    assert "| Method | Scale | Degradation | Set5 | Set14 |" in markdown
    assert f"| DLSN+ | x2 | BI | {plus['psnr']:.2f}/{plus['ssim']:.4f} |" in markdown


def test_missing_benchmark_folder_is_named_before_any_work(benchmarks, tmp_path, capsys):
    missing = tmp_path / "bench" / "Urban100"
    code = main(["eval", "--checkpoint", str(tmp_path / "nowhere.pt"), "--scale", "2",
                 "--data", str(benchmarks[0]), str(missing)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Urban100" in err and "not found" in err


def test_duplicate_benchmark_names_are_refused(benchmarks, tmp_path, capsys):
    other = tmp_path / "elsewhere" / "Set5"
    shutil.copytree(benchmarks[0], other)
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(benchmarks[0]), str(other)]) == 2
    assert "share a name" in capsys.readouterr().err


def test_n_hashes_at_inference(benchmarks, checkpoint, capsys):
    common = ["--checkpoint", str(checkpoint), "--scale", "2", "--device", "cpu", "--data", str(benchmarks[0])]
    runs = {h: eval_json(capsys, *common, "--n-hashes", str(h)) for h in (1, 4)}
    again = eval_json(capsys, *common, "--n-hashes", "4")
    default = eval_json(capsys, *common)
    assert again["images"] == runs[4]["images"]  # eval-mode rotations are reproducible per H
    assert runs[1]["images"] != runs[4]["images"]
    assert runs[4]["method"] == "DLSN (H=4)" and default["n_hashes"] is None
    # A plain state dict records no round count: the published 3 is the default.
    assert eval_json(capsys, *common, "--n-hashes", "3")["images"] == default["images"]


@pytest.mark.parametrize("argv, message", [
    (["--n-hashes", "0"], "--n-hashes must be a positive number of hash rounds, got 0"),
    (["--n-hashes", "-2"], "--n-hashes must be a positive number of hash rounds, got -2"),
])
def test_bad_n_hashes_is_a_one_line_error(benchmarks, checkpoint, tmp_path, capsys, argv, message):
    code = main(["eval", "--checkpoint", str(checkpoint), "--scale", "2", "--data", str(benchmarks[0]), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err
    code = main(["upscale", str(benchmarks[0] / "a.png"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(checkpoint), "--scale", "2", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(benchmarks[0]), "--n-hashes", "3"]) == 2
    assert "bicubic has none" in capsys.readouterr().err


def test_upscale_with_n_hashes(benchmarks, checkpoint, tmp_path):
    from dlsn.sr.imageio import read_image

    outputs = {}
    for h in (1, 3):
        out = tmp_path / f"h{h}.png"
        assert main(["upscale", str(benchmarks[0] / "a.png"), "-o", str(out), "--checkpoint", str(checkpoint),
                     "--scale", "2", "--device", "cpu", "--n-hashes", str(h)]) == 0
        outputs[h] = read_image(out)
    assert outputs[1].shape == (3, 52, 56) and not torch.equal(outputs[1], outputs[3])
