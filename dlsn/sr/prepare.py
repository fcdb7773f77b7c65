"""``dlsn prepare``: a folder of HR images made into a prepared training dataset (``dlsn.sr.prepared``).

    dlsn prepare DIV2K -o DIV2K_x2 --scale 2 [--degradation bi|bd] [--workers N|auto] [--no-premade]

``prepare_dataset`` is the function behind it. The source is read as training reads it
(``dlsn.sr.data.PairFolder``): HR images in the folder (or its ``HR/`` / ``DIV2K_train_HR/``), the
pre-made ``LR_bicubic/X{s}`` images for BI when present (``--no-premade`` makes them here), else LR
made once by ``dlsn.sr.degradations`` (BI: the MATLAB-compatible bicubic; BD: Gaussian blur and
decimation). DN datasets are BI datasets: training draws the noise per patch.

How a run goes, and why nothing half-written is ever used:
1. every source image's size is read from its header: unreadable images, and images smaller than
   the scale, are left out and named once; the plan (settings, source files with their sizes and
   modification times, where each image goes) is written to ``OUT/.prepare/plan.json``;
2. the two data files are created at their final size, with the space reserved (``posix_fallocate``):
   a disk that is too small fails here, before any work, and the files are removed again;
3. each image is decoded and degraded (in ``--workers`` processes), its pixels written at their
   offset and flushed to disk, then its checksums appended to ``OUT/.prepare/journal``;
4. when every image is done, the manifest is written atomically and ``.prepare/`` removed.
A run that stops (Ctrl-C, a full disk, a crash) leaves ``.prepare/``: loading refuses the folder and
says so, and the same command continues where it stopped (refusing if the settings or the source
images changed in between). The same command on a finished dataset checks every checksum and
says it is up to date. An image that cannot be decoded is left out of the manifest and named once.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path

import torch

from .data import PairFolder, load_pair, parse_num_workers, usable_cpus
from .degradations import BD_KERNEL_SIZE, BD_SIGMA
from .prepared import (DATA_FILES, FORMAT, HEADER_BYTES, MANIFEST, PREPARED_DEGRADATIONS, VERSION, WORK_DIR,
                       PreparedDatasetError, PreparedPairs, file_header, read_manifest)
from .progress import format_duration, progress
from .utils import WriteError, atomic_write, os_error_reason

__all__ = ["prepare_dataset", "add_arguments", "run"]

# The fields that make two preparations the same dataset (the token and the results are not among them).
IDENTITY = ("format", "version", "scale", "degradation", "parameters", "lr_source", "source")
PARAMETERS = {
    "bi": {"resize": "MATLAB imresize(., 1/s, 'bicubic'), antialiased (dlsn.sr.imresize)", "bits": 8},
    "bd": {"blur": "gaussian", "size": BD_KERNEL_SIZE, "sigma": BD_SIGMA, "border": "replicate",
           "decimation": "MATLAB imresize(., 1/s, 'nearest'): pixel s//2 of each s x s block", "bits": 8},
}


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


def _file_record(path):
    stat = path.stat()
    return {"file": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _plan(pairs: PairFolder, degradation: str) -> dict:
    """Settings, source files and the place of every image in the data files."""
    s = pairs.scale
    images, sources, offsets = [], [], {"hr": 0, "lr": 0}
    for i, (name, (h, w)) in enumerate(zip(pairs.names, pairs.lr_sizes)):
        images.append({"name": name, "hr": [h * s, w * s], "lr": [h, w],
                       "hr_offset": offsets["hr"], "lr_offset": offsets["lr"]})
        offsets["hr"] += 3 * h * s * w * s
        offsets["lr"] += 3 * h * w
        lr_file = _file_record(pairs.lr_files[i]) if pairs.lr_files is not None else None
        sources.append({"hr": _file_record(pairs.hr_files[i]), "lr": lr_file})
    lr_source = (f"pre-made images in {pairs.lr_dir.resolve()}" if pairs.lr_dir is not None
                 else f"made by dlsn.sr.degradations ({degradation.upper()})")
    return {"format": FORMAT, "version": VERSION, "scale": s, "degradation": degradation,
            "parameters": PARAMETERS[degradation] if pairs.lr_dir is None else {"bits": 8}, "lr_source": lr_source,
            "source": {"folder": str(pairs.root.resolve()), "hr_folder": str(pairs.hr_dir.resolve()),
                       "files": sources},
            "images": images,
            "files": {kind: {"name": DATA_FILES[kind], "bytes": offsets[kind]} for kind in DATA_FILES},
            "skipped": [{"file": str(path), "reason": reason} for path, reason in pairs.skipped],
            "token": secrets.token_hex(8)}


def _difference(old: dict, new: dict) -> str:
    """What differs between two preparations' identities, in words."""
    for key in ("scale", "degradation", "lr_source"):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)} (now {new.get(key)})"
    if old.get("source", {}).get("folder") != new["source"]["folder"]:
        return f"source folder {old.get('source', {}).get('folder')} (now {new['source']['folder']})"
    before = {f["hr"]["file"]: f for f in old.get("source", {}).get("files", [])}
    now = {f["hr"]["file"]: f for f in new["source"]["files"]}
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            state = "added" if name not in before else "removed" if name not in now else "changed"
            return f"source image {name} {state} since"
    return "other settings"


def _existing(out: Path, plan: dict):
    """``("done", manifest)``, ``("resume", old plan)`` or ``("new", None)`` for the folder ``out``;
    a `PreparedDatasetError` when it holds something else."""
    identity = {key: plan[key] for key in IDENTITY}
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if {key: manifest.get(key) for key in IDENTITY} == identity:
            return "done", manifest
        raise PreparedDatasetError(f"{out} already holds a prepared dataset with {_difference(manifest, plan)}; "
                                   "delete it or choose another folder")
    plan_path = out / WORK_DIR / "plan.json"
    if plan_path.is_file():
        try:
            old = json.loads(plan_path.read_text())
        except (OSError, ValueError) as exc:
            raise PreparedDatasetError(f"{plan_path}: unreadable ({exc}); delete {out} and prepare again") from None
        if {key: old.get(key) for key in IDENTITY} == identity:
            return "resume", old
        raise PreparedDatasetError(f"{out} holds an unfinished preparation with {_difference(old, plan)}; delete "
                                   "it or choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PreparedDatasetError(f"{out} exists and is not an empty folder nor a prepared dataset; choose a new "
                                   "or empty folder")
    return "new", None


def _allocate(path: Path, header: bytes, n_bytes: int) -> None:
    """Create ``path`` at its full size with the space reserved, starting with ``header``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.pwrite(fd, header, 0)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, HEADER_BYTES + n_bytes)
        else:  # no reservation where the OS has none: a full disk then shows when an image is written
            os.ftruncate(fd, HEADER_BYTES + n_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(out: Path, plan: dict) -> None:
    """The plan and the two data files, space reserved; on failure nothing is left behind."""
    needed = sum(HEADER_BYTES + f["bytes"] for f in plan["files"].values())
    created = not out.exists()
    work = out / WORK_DIR
    try:
        work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out).free
        if free < needed:
            raise WriteError(f"not enough disk space for {out}: the dataset needs {_size_text(needed)}, "
                             f"{_size_text(free)} are free")
        atomic_write(work / "plan.json", lambda handle: handle.write(json.dumps(plan).encode()))
        (work / "journal").touch()
        for kind, name in DATA_FILES.items():
            _allocate(out / name, file_header(kind, plan["token"]), plan["files"][kind]["bytes"])
    except BaseException as exc:
        for name in DATA_FILES.values():
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"cannot create the dataset in {out}: {os_error_reason(exc)} (needs "
                             f"{_size_text(needed)}); nothing was left there") from None
        raise


def _is_data_file(path: Path, kind: str, plan: dict) -> bool:
    """Whether ``path`` is the data file of ``kind`` that ``plan`` made, at its full size."""
    if not path.is_file() or path.stat().st_size != HEADER_BYTES + plan["files"][kind]["bytes"]:
        return False
    with open(path, "rb") as handle:
        return handle.read(HEADER_BYTES) == file_header(kind, plan["token"])


def _journal(out: Path, plan: dict) -> dict:
    """``{index: [hr_crc, lr_crc]}`` of the images a previous run finished. A data file that is
    missing or not this preparation's restarts the journal (and is made again)."""
    intact = all(_is_data_file(out / name, kind, plan) for kind, name in DATA_FILES.items())
    path = out / WORK_DIR / "journal"
    if not intact:
        for kind, name in DATA_FILES.items():
            _allocate(out / name, file_header(kind, plan["token"]), plan["files"][kind]["bytes"])
        path.write_text("")
        return {}
    done = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):  # a torn last line is not a finished image
            done[int(fields[0])] = [int(fields[1]), int(fields[2])]
    return done


def _write_at(path: Path, offset: int, pixels) -> None:
    """Write ``pixels`` (a contiguous uint8 array) at ``offset`` of ``path`` and flush them to disk."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            view = memoryview(pixels).cast("B")
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            getattr(os, "fdatasync", os.fsync)(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {os_error_reason(exc, path)}") from None


def _uint8(image: torch.Tensor):
    """float ``[3, H, W]`` in [0, 1] -> uint8 ``[H, W, 3]`` numpy array (exact for 8-bit images)."""
    return image.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _prepare_image(task):
    """Make and store one image: ``(index, (hr_crc, lr_crc, quantised) or None, why not)``.

    ``quantised``: the source had more than 8 bits per sample. Decoding errors are returned, not
    raised (the image is left out); write errors are raised (the run stops, resumable)."""
    index, hr_path, lr_path, scale, degradation, hr_size, out, offsets = task
    try:
        lr, hr = load_pair(Path(hr_path), lr_path and Path(lr_path), scale, degradation)
    except (ValueError, OSError) as exc:
        return index, None, str(exc)
    if list(hr.shape[-2:]) != list(hr_size):
        return index, None, f"{hr_path}: now {tuple(hr.shape[-2:])} pixels, planned {tuple(hr_size)} (changed)"
    hr8, lr8 = _uint8(hr), _uint8(lr)
    quantised = not torch.equal(torch.from_numpy(hr8).permute(2, 0, 1).float().div(255), hr)
    for kind, pixels, offset in (("hr", hr8, offsets[0]), ("lr", lr8, offsets[1])):
        _write_at(Path(out) / DATA_FILES[kind], HEADER_BYTES + offset, pixels)
    return index, (zlib.crc32(hr8), zlib.crc32(lr8), quantised), None


def _worker_init():
    torch.set_num_threads(1)  # one process per core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it stops handing out images


def _run_tasks(tasks, workers: int, on_result) -> None:
    """``on_result(_prepare_image(task))`` for every task, in ``workers`` processes (<= 1: here)."""
    if workers <= 1:
        for task in tasks:
            on_result(_prepare_image(task))
        return
    # spawn: a forked child would inherit this process's threads' locks (torch's pools among them)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = [pool.submit(_prepare_image, task) for task in tasks]
        try:
            for future in as_completed(futures):
                on_result(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _finish(out: Path, plan: dict, done: dict, failed: list) -> dict:
    """Write the manifest of the finished images (each was flushed to disk when written) and remove
    ``.prepare/``."""
    images = [{**image, "hr_crc32": done[i][0], "lr_crc32": done[i][1]}
              for i, image in enumerate(plan["images"]) if i in done]
    if not images:
        raise ValueError(f"none of the {len(plan['images'])} images could be read: {failed[0]['reason']}")
    manifest = {**plan, "images": images, "skipped": plan["skipped"] + failed, "dlsn": version("dlsn"),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(out / MANIFEST, lambda handle: handle.write(json.dumps(manifest, indent=1).encode()))
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    return manifest


def _workers(setting, n_tasks: int) -> int:
    setting = parse_num_workers(setting, "--workers")
    if setting == "auto":
        setting = usable_cpus()
    return max(0, min(setting, n_tasks))


def _say_once(plan: dict, quantised: list, log) -> None:
    if plan["skipped"]:
        listed = "; ".join(item["reason"] for item in plan["skipped"][:10])
        more = f"; and {len(plan['skipped']) - 10} more" if len(plan["skipped"]) > 10 else ""
        log(f"skipped {len(plan['skipped'])} unusable image(s): {listed}{more}")
    if quantised:
        log(f"{len(quantised)} image(s) have more than 8 bits per sample and are stored at 8 bits: "
            f"{', '.join(quantised[:10])}{' ...' if len(quantised) > 10 else ''}")


def _tasks(plan: dict, pairs: PairFolder, out: Path, done: dict):
    lr_files = pairs.lr_files or [None] * len(pairs)
    return [(i, str(pairs.hr_files[i]), lr_files[i] and str(lr_files[i]), plan["scale"], plan["degradation"],
             image["hr"], str(out), (image["hr_offset"], image["lr_offset"]))
            for i, image in enumerate(plan["images"]) if i not in done]


def _summary(out: Path, manifest: dict, started: float, up_to_date: bool) -> dict:
    """What `prepare_dataset` returns for the dataset of ``manifest`` in ``out``."""
    return {"out": out, "images": len(manifest["images"]), "skipped": manifest["skipped"],
            "bytes": sum(f["bytes"] for f in manifest["files"].values()), "seconds": time.time() - started,
            "up_to_date": up_to_date}


def prepare_dataset(source, out, scale: int, degradation: str = "bi", workers="auto", use_premade: bool = True,
                    max_images: int = 0, show_progress: bool = True, log=None) -> dict:
    """Prepare the HR images of ``source`` for training at ``scale`` with ``degradation`` in ``out``.

    Args:
        source: a folder of HR images, or a DIV2K-layout folder (``dlsn.sr.data``).
        out: the dataset folder: new or empty, or an unfinished preparation of the same settings
            and source images (resumed), or a finished one (checksums verified, nothing written).
        scale: upscaling factor. degradation: ``"bi"`` or ``"bd"``.
        workers: processes making images (``"auto"``: the CPUs this process may use; 0 or 1: here).
        use_premade: for BI, take ``LR_bicubic/X{s}`` images when ``source`` has them.
        max_images: only the first N images (0: all).
        show_progress: a progress bar with the ETA (``dlsn.sr.progress``).
        log: where notices go (default: print to stderr).

    Returns:
        ``{"out", "images", "skipped", "bytes", "seconds", "up_to_date"}``.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    if degradation not in PREPARED_DEGRADATIONS:
        raise ValueError(f"cannot prepare degradation {degradation!r}: use one of {PREPARED_DEGRADATIONS} (DN "
                         "training reads a BI dataset and adds the noise per patch)")
    started = time.time()
    pairs = PairFolder(source, scale, degradation, use_premade=use_premade, max_images=max_images,
                       skip_unreadable=True)
    plan = _plan(pairs, degradation)
    out = Path(out)
    state, existing = _existing(out, plan)
    if state == "done":
        PreparedPairs(out, scale, degradation, verify=True)
        return _summary(out, existing, started, up_to_date=True)
    if state == "new":
        _create(out, plan)
    else:
        plan = existing
    _say_once(plan, [], log)
    done = _journal(out, plan)
    failed, quantised = [], []
    bar = progress(total=len(plan["images"]), initial=len(done), desc="prepare", unit="img",
                   disable=not show_progress)
    with open(out / WORK_DIR / "journal", "a") as journal:
        def on_result(result):
            index, checks, reason = result
            if checks is None:
                failed.append({"file": str(pairs.hr_files[index]), "reason": reason})
            else:
                done[index] = list(checks[:2])
                journal.write(f"{index} {checks[0]} {checks[1]}\n")
                journal.flush()
                os.fsync(journal.fileno())
                if checks[2]:
                    quantised.append(plan["images"][index]["name"])
            bar.update(1)

        try:
            _run_tasks(_tasks(plan, pairs, out, done), _workers(workers, len(plan["images"]) - len(done)), on_result)
        finally:
            bar.close()
    _say_once({"skipped": failed}, quantised, log)
    return _summary(out, _finish(out, plan, done, failed), started, up_to_date=False)


def add_arguments(parser):
    """Arguments of ``dlsn prepare``."""
    parser.add_argument("source", help="folder of HR images, or a DIV2K-layout folder (HR/ or DIV2K_train_HR/, "
                                       "optionally LR_bicubic/X{s}/)")
    parser.add_argument("-o", "--out", required=True,
                        help="the prepared dataset's folder: new or empty (an unfinished one is resumed)")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor")
    parser.add_argument("--degradation", choices=PREPARED_DEGRADATIONS, default="bi",
                        help="bi: MATLAB-compatible bicubic; bd: 7x7 Gaussian blur (sigma 1.6) + decimation. "
                             "Train DN (data.degradation=dn) on a BI dataset: the noise is drawn per patch")
    parser.add_argument("--workers", default="auto",
                        help="processes making images (default auto: the CPUs this process may use)")
    parser.add_argument("--no-premade", action="store_true",
                        help="make BI LR images here even when SOURCE has LR_bicubic/X{s}")
    parser.add_argument("--max-images", type=int, default=0, metavar="N", help="only the first N images (0: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """``dlsn prepare``: prepares the dataset; returns the exit status."""
    try:
        result = prepare_dataset(args.source, args.out, args.scale, args.degradation, args.workers,
                                 use_premade=not args.no_premade, max_images=args.max_images,
                                 show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"dlsn prepare: stopped; the finished images are kept in {args.out}: run the same command again "
              "to continue", file=sys.stderr)
        raise
    what = "is up to date (checksums verified)" if result["up_to_date"] else "is ready"
    print(f"{result['out']}: {result['images']} images, x{args.scale} {args.degradation.upper()}, "
          f"{_size_text(result['bytes'])}, {what} in {format_duration(result['seconds'])}; train with "
          f"data.train_dir={result['out']}")
    return 0
