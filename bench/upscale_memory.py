"""Wall time and peak memory of one whole-image x2 upscale on the CPU, next to `dlsn.sr.tiling`'s estimate.

One measurement per process (peak RSS cannot be reset between models otherwise):

    python bench/upscale_memory.py published 512     # the published-size network, 512x512 input
    python bench/upscale_memory.py demo 256          # the demo's network

Input: the top-left SxS crop of Set5 `baby` (`--image` to change), seeded random weights of the named
size, float32, reference GLA backend, border padding as `dlsn upscale` does (8 LR pixels). Prints one
JSON line: wall time of `upscale_tensor`, the process's peak RSS (VmHWM), the forward's own peak (VmHWM
minus the RSS before the call, with the peak reset through /proc/self/clear_refs) and the estimate of
`dlsn.sr.tiling.forward_bytes` for the padded input. Linux only (/proc).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

import dlsn
from dlsn.sr.imageio import read_image
from dlsn.sr.inference import DEFAULT_BORDER_PAD, upscale_tensor
from dlsn.sr.tiling import forward_bytes

MODELS = {
    "published": dict(scale=2),
    "demo": dict(scale=2, n_resgroups=1, n_resblocks=2, n_feats=48, chunk_size=64, n_hashes=2, res_scale=1.0),
}
SET5_BABY = Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5" / "baby.png"


def _status_bytes(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("size", type=int, help="side of the square input crop, LR pixels")
    parser.add_argument("--image", default=str(SET5_BABY), help="image to crop (default: Set5 baby)")
    parser.add_argument("--border-pad", type=int, default=DEFAULT_BORDER_PAD)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = dlsn.DLSN(**MODELS[args.model], backend="reference").eval()
    image = read_image(args.image)
    if min(image.shape[1:]) < args.size:
        raise SystemExit(f"{args.image} is {image.shape[2]}x{image.shape[1]}, smaller than {args.size}")
    image = image[:, :args.size, :args.size].unsqueeze(0)
    with torch.no_grad():
        model(image[..., :8, :8])  # rotations and allocator warm-up on a tiny input
    before = _status_bytes("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM from the current RSS
    start = time.perf_counter()
    upscale_tensor(model, image, 2, border_pad=args.border_pad)
    wall = time.perf_counter() - start
    peak = _status_bytes("VmHWM:")
    side = args.size + 2 * args.border_pad
    estimate = forward_bytes(model, side, side)
    print(json.dumps({"model": args.model, "size": args.size, "border_pad": args.border_pad, "wall_s": round(wall, 1),
                      "peak_rss_mib": round(peak / 2**20), "forward_peak_mib": round((peak - before) / 2**20),
                      "estimate_mib": round(estimate / 2**20), "measured_over_estimate": round((peak - before) / estimate, 2),
                      "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
