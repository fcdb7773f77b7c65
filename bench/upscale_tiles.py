"""Wall time, CPU time and peak memory of `dlsn upscale` against the tile size and the memory budget.

    python bench/upscale_tiles.py                         # demo-size model, 1500x1000 photo, tiles 64..512
    python bench/upscale_tiles.py --tiles 0,128,256       # 0: the whole image (13+ GB at 1500x1000)
    python bench/upscale_tiles.py --tiles auto --max-memory 500M,1G,2G   # --tile auto under each budget
    python bench/upscale_tiles.py --smoke                 # tiny photo and tiles: checks the script runs

Every figure is one fresh `dlsn upscale` process, run one at a time: the wall time, its CPU time
(user + system, from wait4; on a busy machine the CPU time is the steadier of the two) and its peak
resident memory (VmHWM, reported by the process itself: everything it held at its peak:
interpreter, PyTorch, model, images and the forward). The input is scikit-image's `coffee` photograph resized to
`--size` (default 1500x1000) and saved as PNG; the model has the demo's configuration
(`dlsn/sr/configs/demo.yaml`: 48 features, 1 group x 2 blocks, chunk 64, 2 hash rounds) with seeded
random weights, which cost the same time and memory as trained ones. The load average before each
run is printed next to it, since other work on the machine slows the wall time. Linux only.
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from dlsn.models import build_model
from dlsn.sr.checkpoint import save_weights
from dlsn.sr.config import config_to_dict, load_config
from dlsn.sr.inference import DEFAULT_BORDER_PAD, count_tiles
from dlsn.sr.tiling import format_size, parse_size


def _photo(path, width, height):
    import skimage.data

    Image.fromarray(skimage.data.coffee()).resize((width, height), Image.LANCZOS).save(path)


def _checkpoint(path):
    cfg = load_config("demo")
    torch.manual_seed(0)
    save_weights(build_model(cfg.model).state_dict(), config_to_dict(cfg)["model"], path)


# Runs the `dlsn` command line, then prints the process's own peak resident memory (VmHWM) on
# stderr. wait4's ru_maxrss would not do: Linux counts in it the memory of the process the child
# was forked from (this script, or pytest) up to the child's exec.
PEAK_REPORTER = ("import sys; from pathlib import Path; from dlsn.sr.cli import main; code = main(sys.argv[1:]); "
                 "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')]; "
                 "print('peak-rss-kib', hwm[0].split()[1], file=sys.stderr); sys.exit(code)")


def measure(argv, log):
    """`dlsn argv...` in a fresh process, its stderr into `log`: (exit status, wall seconds, CPU
    seconds (user + system, from wait4), peak resident bytes (None if it did not finish))."""
    with open(log, "w") as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", PEAK_REPORTER, *argv], stdout=subprocess.DEVNULL,
                                   stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = re.findall(r"^peak-rss-kib (\d+)$", Path(log).read_text(), re.MULTILINE)
    return process.returncode, wall, usage.ru_utime + usage.ru_stime, int(peak[-1]) * 1024 if peak else None


def _tiles(tile, log, width, height):
    """What ran: `N tiles of TxT` or `whole image` (for --tile auto, as the command said it)."""
    if tile == "auto":
        said = re.search(r"^tiling: .* run as (\d+ tiles of \d+x\d+)", Path(log).read_text(), re.MULTILINE)
        return said.group(1) if said else "whole image"
    pad = 2 * DEFAULT_BORDER_PAD
    return f"{count_tiles(height + pad, width + pad, int(tile))} tiles of {tile}x{tile}" if int(tile) else "whole image"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1500x1000", help="photo size WxH (default 1500x1000)")
    parser.add_argument("--tiles", default="64,96,128,192,256,384,512",
                        help="comma-separated --tile values (0: whole image, auto: the budget decides)")
    parser.add_argument("--max-memory", default="", help="comma-separated budgets, run with each tile value")
    parser.add_argument("--smoke", action="store_true", help="a 64x48 photo, tiles 16 and 0")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.tiles = "64x48", "16,0"
    width, height = (int(v) for v in args.size.lower().split("x"))
    budgets = [b for b in args.max_memory.split(",") if b] or [None]
    print(f"# dlsn upscale x2, demo-size model, {width}x{height} photo; {platform.processor() or platform.machine()}, "
          f"nproc {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}")
    print("| --tile | --max-memory | tiles | wall (s) | CPU (s) | peak RSS | peak / budget | load avg before |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        photo, checkpoint, log = Path(tmp) / "photo.png", Path(tmp) / "model.pt", Path(tmp) / "stderr.txt"
        _photo(photo, width, height)
        _checkpoint(checkpoint)
        for budget in budgets:
            for tile in args.tiles.split(","):
                argv = ["upscale", str(photo), "-o", str(Path(tmp) / "out.png"), "--checkpoint", str(checkpoint),
                        "--scale", "2", "--device", "cpu", "--tile", tile, "--no-progress"]
                load = os.getloadavg()[0]
                code, wall, cpu, peak = measure(argv + (["--max-memory", budget] if budget else []), log)
                if code != 0:
                    failed += 1
                    print(f"| {tile} | {budget or '-'} | failed ({code}): {Path(log).read_text().strip()[-300:]} |")
                    continue
                ratio = f"{peak / parse_size(budget):.2f}" if budget else "-"
                print(f"| {tile} | {budget or '-'} | {_tiles(tile, log, width, height)} | {wall:.1f} | {cpu:.1f} | {format_size(peak)} "
                      f"| {ratio} | {load:.1f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
