"""`dlsn demo`: train a small DLSN on a CPU in minutes and show it beat bicubic on unseen photographs.

The photographs ship with scikit-image (`dlsn.sr.photos`, no download). Training uses all but the
held-out ones (grayscale photographs are replicated to RGB); LR images are made by MATLAB-compatible
bicubic x2 downscaling (BI). The demo prints Y-PSNR/SSIM of bicubic and DLSN on the held-out
images (and on a benchmark folder given with `--data`), and writes into `--out`: `side_by_side.png`
(bicubic | DLSN | ground truth crops, each labelled with its method and Y-PSNR), `results.json`, the
training log, the weights (`model.pt`) and the held-out photographs as a benchmark folder
(`held_out/HR`, `held_out/LR_bicubic/X2`), so that `dlsn eval`, `dlsn upscale` and `dlsn attention`
can be tried on them at once.

Exit status: 0 when DLSN beats bicubic by at least `GAIN_TARGET_DB` mean Y-PSNR on the held-out
images, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .config import apply_overrides, load_config
from .data import benchmark_pairs
from .imageio import write_image
from .imresize import imresize
from .inference import upscale_tensor
from .metrics import calc_psnr, calc_ssim
from .photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, photograph_pairs, photographs
from .train import train
from .utils import label_font

__all__ = ["add_arguments", "run", "photographs", "TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "GAIN_TARGET_DB",
           "side_by_side_labels"]

GAIN_TARGET_DB = 0.5
SCALE = 2


def add_arguments(parser: argparse.ArgumentParser):
    """Arguments of ``dlsn demo``."""
    parser.add_argument("--data", type=Path, default=None,
                        help="also evaluate on this benchmark folder of HR images (e.g. Set5)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations (default: demo.yaml's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument("--config", default="demo", help="config file (default: the packaged demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def _scores(model, pairs, device, rgb_range):
    rows, outputs = [], []
    with torch.no_grad():
        for name, (lr, hr) in zip(pairs.names, pairs):
            bicubic = imresize(lr.unsqueeze(0), scale=SCALE).clamp(0, 1)
            sr = upscale_tensor(model, lr.unsqueeze(0).to(device) * rgb_range, SCALE).float().cpu() / rgb_range
            sr = sr.clamp(0, 1)
            hr = hr.unsqueeze(0)
            rows.append({"image": name,
                         "bicubic_psnr": calc_psnr(bicubic, hr, SCALE), "bicubic_ssim": calc_ssim(bicubic, hr, SCALE),
                         "dlsn_psnr": calc_psnr(sr, hr, SCALE), "dlsn_ssim": calc_ssim(sr, hr, SCALE)})
            outputs.append((bicubic[0], sr[0], hr[0]))
    return rows, outputs


def _print_table(title, rows):
    print(f"\n{title} (x{SCALE}, Y channel, {SCALE}-pixel border shaved)")
    print(f"{'image':<22}{'bicubic PSNR':>13}{'SSIM':>8}{'DLSN PSNR':>11}{'SSIM':>8}{'gain dB':>9}")
    for row in rows:
        print(f"{row['image']:<22}{row['bicubic_psnr']:>13.2f}{row['bicubic_ssim']:>8.4f}"
              f"{row['dlsn_psnr']:>11.2f}{row['dlsn_ssim']:>8.4f}{row['dlsn_psnr'] - row['bicubic_psnr']:>+9.2f}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
    print(f"{'mean':<22}{mean['bicubic_psnr']:>13.2f}{mean['bicubic_ssim']:>8.4f}"
          f"{mean['dlsn_psnr']:>11.2f}{mean['dlsn_ssim']:>8.4f}{mean['dlsn_psnr'] - mean['bicubic_psnr']:>+9.2f}")
    return mean


def side_by_side_labels(row):
    """The captions of the side-by-side panels of one held-out image's scores `row`."""
    return [f"bicubic, Y-PSNR {row['bicubic_psnr']:.2f} dB", f"DLSN, Y-PSNR {row['dlsn_psnr']:.2f} dB",
            "ground truth (HR)"]


LABEL_HEIGHT = 22  # pixels of the caption band above each panel


def _side_by_side(outputs, row, path, crop=128, zoom=2):
    """Centre crops of the first held-out image: bicubic | DLSN | ground truth, enlarged `zoom` times,
    each under its caption (method and the whole image's Y-PSNR)."""
    bicubic, sr, hr = outputs
    h, w = hr.shape[-2:]
    size = min(crop, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    gap = torch.ones(3, size, 4)
    tiles = []
    for img in (bicubic, sr, hr):
        tiles += [img[:, y:y + size, x:x + size], gap]
    strip = torch.cat(tiles[:-1], dim=2).clamp(0, 1)
    strip = strip.repeat_interleave(zoom, dim=1).repeat_interleave(zoom, dim=2)
    array = strip.mul(255).round().byte().permute(1, 2, 0).numpy()
    sheet = Image.new("RGB", (array.shape[1], array.shape[0] + LABEL_HEIGHT), "white")
    sheet.paste(Image.fromarray(array), (0, LABEL_HEIGHT))
    draw, font = ImageDraw.Draw(sheet), label_font()
    for index, label in enumerate(side_by_side_labels(row)):
        draw.text((index * (size + 4) * zoom + 4, 3), label, fill="black", font=font)
    sheet.save(path)


def _write_held_out(pairs, out):
    """The held-out photographs as a benchmark folder: `out/HR/<name>.png` and the LR inputs the
    model saw, `out/LR_bicubic/X2/<name>x2.png` (8-bit, as made in memory)."""
    for name, (lr, hr) in zip(pairs.names, pairs):
        write_image(out / "HR" / f"{name}.png", hr)
        write_image(out / "LR_bicubic" / f"X{SCALE}" / f"{name}x{SCALE}.png", lr)


def run(args) -> int:
    """``dlsn demo``: trains, scores and writes the comparison; returns the exit status (module docstring)."""
    started = time.time()
    cfg = load_config(args.config, args.overrides)
    extra = [f"log.out_dir={args.out}"]
    if args.iters is not None:
        if args.iters <= 0:
            raise ValueError(f"--iters must be positive, got {args.iters}")
        extra.append(f"train.iterations={args.iters}")  # the milestones scale with it (dlsn.sr.config)
    if args.device is not None:
        extra.append(f"train.device={args.device}")
    cfg = apply_overrides(cfg, extra)
    if cfg.model.scale != SCALE:
        raise ValueError(f"the demo is x{SCALE}; the config says model.scale={cfg.model.scale}")
    if args.data is not None and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {str(args.data)!r} is not a folder")

    print(f"building the training set from {len(TRAIN_PHOTOS)} scikit-image photographs "
          f"(held out: {', '.join(HELD_OUT_PHOTOS)})")
    train_pairs = photograph_pairs(TRAIN_PHOTOS, SCALE)
    held_out = photograph_pairs(HELD_OUT_PHOTOS, SCALE)
    benchmark = benchmark_pairs(args.data, SCALE) if args.data is not None else None

    m = cfg.model
    print(f"training DLSN (n_feats {m.n_feats}, {m.n_resgroups} group(s) x {m.n_resblocks} block(s), "
          f"chunk {m.chunk_size}) for {cfg.train.iterations} iterations")
    result = train(cfg, pairs=train_pairs)
    model = result["model"].eval()
    device = next(model.parameters()).device
    trained = time.time()

    rows, outputs = _scores(model, held_out, device, cfg.model.rgb_range)
    mean = _print_table("held-out photographs", rows)
    report = {"held_out": rows, "held_out_mean": mean, "train_seconds": round(trained - started, 1),
              "iterations": result["iteration"]}
    if benchmark is not None:
        bench_rows, _ = _scores(model, benchmark, device, cfg.model.rgb_range)
        report["benchmark"] = bench_rows
        report["benchmark_mean"] = _print_table(f"benchmark {args.data}", bench_rows)

    out = Path(cfg.log.out_dir)
    _side_by_side(outputs[0], rows[0], out / "side_by_side.png")
    _write_held_out(held_out, out / "held_out")
    gain = mean["dlsn_psnr"] - mean["bicubic_psnr"]
    passed = gain >= GAIN_TARGET_DB
    report.update(gain_db=gain, target_db=GAIN_TARGET_DB, passed=passed, total_seconds=round(time.time() - started, 1))
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\nmean gain over bicubic on held-out photographs: {gain:+.2f} dB (target +{GAIN_TARGET_DB} dB): "
          f"{'PASSED' if passed else 'NOT MET'}")
    print(f"wrote {out / 'side_by_side.png'} (bicubic | DLSN | ground truth), {out / 'results.json'}, "
          f"{out / 'model.pt'} and the held-out photographs in {out / 'held_out'}; "
          f"{report['total_seconds']:.0f} s in all")
    return 0 if passed else 1
