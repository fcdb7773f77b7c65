"""`dlsn demo`: train a small DLSN on a CPU in minutes and show it beat bicubic on unseen photographs.

The photographs ship with scikit-image (`skimage.data`, no download). Training uses all but the
held-out ones (grayscale photographs are replicated to RGB); LR images are made by MATLAB-compatible
bicubic x2 downscaling (BI). The demo prints Y-PSNR/SSIM of bicubic and DLSN on the held-out
images (and on a benchmark folder given with `--data`), writes `side_by_side.png` (bicubic | DLSN |
ground truth crops), `results.json`, the training log and the weights into `--out`.

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
from PIL import Image

from .config import apply_overrides, load_config
from .data import ImagePairs, benchmark_pairs
from .imresize import imresize
from .inference import upscale_tensor
from .metrics import calc_psnr, calc_ssim
from .train import train

__all__ = ["add_arguments", "run", "photographs", "TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "GAIN_TARGET_DB"]

GAIN_TARGET_DB = 0.5
SCALE = 2
# Photographs in skimage.data (synthetic images, and `cat`, a copy of `chelsea`, are left out).
TRAIN_PHOTOS = ("coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera", "moon",
                "page", "text", "clock", "coins", "grass", "gravel", "brick", "stereo_motorcycle")
HELD_OUT_PHOTOS = ("astronaut", "chelsea")


def photographs(names):
    """`(name, image)` pairs: scikit-image's bundled images as float RGB tensors [3, H, W] in [0, 1]."""
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("the demo needs scikit-image for its bundled photographs: pip install scikit-image") from None
    images = []
    for name in names:
        array = getattr(skimage.data, name)()
        if isinstance(array, tuple):  # stereo pairs: the left view
            array = array[0]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div(255)
        tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.dim() == 2 else tensor.permute(2, 0, 1)[:3]
        images.append((name, tensor.contiguous()))
    return images


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


def _side_by_side(outputs, path, crop=128, zoom=2):
    """Centre crops of the first held-out image: bicubic | DLSN | ground truth, enlarged `zoom` times."""
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
    Image.fromarray(array).save(path)


def run(args) -> int:
    """``dlsn demo``: trains, scores and writes the comparison; returns the exit status (module docstring)."""
    started = time.time()
    cfg = load_config(args.config, args.overrides)
    extra = [f"log.out_dir={args.out}"]
    if args.iters is not None:
        if args.iters <= 0:
            raise ValueError(f"--iters must be positive, got {args.iters}")
        # Keep the schedule's shape: milestones scale with the iteration count.
        ratio = args.iters / cfg.train.iterations
        milestones = [max(1, round(m * ratio)) for m in cfg.train.milestones]
        extra += [f"train.iterations={args.iters}", f"train.milestones={sorted(set(milestones))}"]
    if args.device is not None:
        extra.append(f"train.device={args.device}")
    cfg = apply_overrides(cfg, extra)
    if cfg.model.scale != SCALE:
        raise ValueError(f"the demo is x{SCALE}; the config says model.scale={cfg.model.scale}")
    if args.data is not None and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {str(args.data)!r} is not a folder")

    print(f"building the training set from {len(TRAIN_PHOTOS)} scikit-image photographs "
          f"(held out: {', '.join(HELD_OUT_PHOTOS)})")
    names, images = zip(*photographs(TRAIN_PHOTOS))
    train_pairs = ImagePairs(images, SCALE, names=names)
    held_names, held_images = zip(*photographs(HELD_OUT_PHOTOS))
    held_out = ImagePairs(held_images, SCALE, names=held_names)
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
    _side_by_side(outputs[0], out / "side_by_side.png")
    gain = mean["dlsn_psnr"] - mean["bicubic_psnr"]
    passed = gain >= GAIN_TARGET_DB
    report.update(gain_db=gain, target_db=GAIN_TARGET_DB, passed=passed, total_seconds=round(time.time() - started, 1))
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\nmean gain over bicubic on held-out photographs: {gain:+.2f} dB (target +{GAIN_TARGET_DB} dB): "
          f"{'PASSED' if passed else 'NOT MET'}")
    print(f"wrote {out / 'side_by_side.png'} (bicubic | DLSN | ground truth), {out / 'results.json'}, "
          f"{out / 'model.pt'}; {report['total_seconds']:.0f} s in all")
    return 0 if passed else 1
