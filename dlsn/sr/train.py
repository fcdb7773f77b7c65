"""Training DLSN: L1 loss, Adam, multi-step halving schedule, random LR patches with flips/transposes.

Reproducibility and resume. Every random draw is either keyed or checkpointed:
* which images form a batch comes from a `DistributedSampler` (shuffled by `seed + epoch`), read as
  one endless stream; the checkpoint stores how many samples were consumed;
* each sample's crop and flips come from a generator seeded by `(seed, position in the stream)`,
  so they do not depend on DataLoader workers or on where a run was resumed;
* the GLA hashing rotations are drawn from torch's global RNG in train mode; the CPU (and CUDA) RNG
  states, with numpy's and python's, are saved per rank and restored on resume;
* validation runs under `torch.random.fork_rng`, so it does not shift the training stream.
Hence `--resume` continues bit-for-bit: N steps == N/2 steps + resume + N/2 steps (see tests).

Validation (every `log.val_every` iterations on `data.val_dir`, the paper's ablation criterion):
the weights with the best mean Y-PSNR so far are written atomically to `log.out_dir/best.pt` (a
weights file `dlsn eval --checkpoint` reads, with `best: {iteration, psnr, benchmark}`), next to
the latest checkpoints; the best record travels in the training checkpoints, so a resumed run
keeps the same best. Speed: after the first iterations the measured time per iteration gives an
estimate of the whole schedule's wall time, printed and written to `log.out_dir/train.log`; each
`log.log_every` iterations a progress line with the ETA follows (printed when the progress bar is
off, always logged).

Multi-GPU: launch with `torchrun --nproc_per_node G -m dlsn train ...`. Each rank reads its share of
the images (`DistributedSampler`), only rank 0 writes logs and checkpoints. The published model's
parameter `a` is never used in `forward`; it is frozen (`requires_grad=False`, still saved) so DDP
runs without `find_unused_parameters` (which would cost an extra graph traversal every step).

Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and stops; `--resume` continues.
"""
from __future__ import annotations

import copy
import csv
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from . import checkpoint as ckpt
from .config import Config, config_to_dict
from .data import ImagePairs, PatchPairs, benchmark_pairs
from .utils import resolve_device

__all__ = ["PatchPairs", "ImagePairs", "SampleStream", "build_model", "train", "format_duration",
           "benchmark_pairs", "validate", "TrainingInterrupted"]


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C once the checkpoint holding the finished steps is written."""


class SampleStream(torch.utils.data.Sampler):
    """Endless batches of `(index, sample_seed, epoch)` keys for one rank, starting after `consumed` samples.

    The stream is the concatenation over epochs of `DistributedSampler(seed, epoch)` orders; the
    sample seed is a function of `seed`, the rank and the position in the stream.
    """

    def __init__(self, n_items, batch_size, seed=0, rank=0, world_size=1, consumed=0):
        self.sampler = DistributedSampler(range(n_items), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.consumed = consumed

    def __iter__(self):
        per_epoch = len(self.sampler)
        position = self.consumed
        epoch, offset = divmod(position, per_epoch)
        batch = []
        while True:
            self.sampler.set_epoch(epoch)
            for index in list(self.sampler)[offset:]:
                sample_seed = (self.seed * 1_000_003 + position * self.world_size + self.rank) % (2 ** 63)
                batch.append((index, sample_seed, epoch))
                position += 1
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, offset = epoch + 1, 0


def build_model(cfg: Config) -> torch.nn.Module:
    from ..models import build_model as build_arch

    return build_arch(cfg.model)


def _training_pairs(cfg: Config):
    if not cfg.data.train_dir:
        raise ValueError("data.train_dir is not set: give a DIV2K-layout folder, e.g. data.train_dir=/data/DIV2K")
    from .data import TrainPairs

    return TrainPairs(cfg.data.train_dir, scale=cfg.model.scale, degradation=cfg.data.degradation,
                      noise_level=cfg.data.noise_level, seed=cfg.train.seed)


@torch.no_grad()
def validate(model, pairs, scale, rgb_range=1.0, device="cpu"):
    """Mean Y-PSNR of `model` on full-size `pairs` (eval mode, fixed hashing), RNG streams untouched."""
    from .inference import upscale_tensor
    from .metrics import calc_psnr

    was_training = model.training
    model.eval()
    devices = [device] if torch.device(device).type == "cuda" else []
    scores = []
    with torch.random.fork_rng(devices=devices):
        for lr, hr in pairs:
            sr = upscale_tensor(model, lr.unsqueeze(0).to(device) * rgb_range, scale)
            scores.append(calc_psnr(sr.float().cpu(), hr.unsqueeze(0) * rgb_range, scale, rgb_range=rgb_range))
    model.train(was_training)
    return float(np.mean(scores))


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _latest_checkpoint(out_dir: Path):
    found = sorted((out_dir / "checkpoints").glob("iter_*.pt"))
    if not found:
        raise FileNotFoundError(f"--resume auto: no checkpoint under {out_dir / 'checkpoints'}")
    return found[-1]


class _Logger:
    """CSV (always) and TensorBoard (when enabled; a one-line notice when not installed) on rank 0."""

    FIELDS = ["iteration", "loss", "lr", "val_psnr", "seconds"]

    def __init__(self, out_dir: Path, tensorboard: bool):
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "log.csv"
        new = not path.exists()
        self.handle = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("notice: TensorBoard logging is off because the tensorboard package is not installed "
                      "(pip install tensorboard, or set log.tensorboard=false); log.csv is written as usual",
                      file=sys.stderr)
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, **row):
        self.writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        self.handle.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "val_psnr"):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(f"train/{key}" if key != "val_psnr" else "val/psnr", row[key], row["iteration"])

    def close(self):
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def format_duration(seconds) -> str:
    """`3 d 04:05:06`, `4:05:06` or `0:00:07`."""
    seconds = int(round(max(0.0, seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} d {hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


class _TextLog:
    """Human-readable lines (estimates, progress, best validation) in `out_dir/train.log`, rank 0."""

    def __init__(self, out_dir: Path, echo: bool, writer=print):
        self.path, self.echo, self.writer = out_dir / "train.log", echo, writer

    def __call__(self, line, echo=None):
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo if echo is None else echo:
            self.writer(line)


# Iterations timed for the start-of-training estimate (after one warm-up iteration).
ESTIMATE_ITERATIONS = 20


def _gather(obj, world):
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def train(cfg: Config, resume=None, pairs=None, val_pairs=None, stop_at=None, step_callback=None, quiet=False):
    """Train per `cfg`; returns `{"iteration", "loss", "val_psnr", "out_dir", "model"}`.

    pairs: a dataset of full `(lr, hr)` pairs in [0, 1] (default: `data.train_dir`).
    val_pairs: pairs for validation (default: `data.val_dir` when set).
    resume: a training checkpoint path, or "auto" for the latest one in `log.out_dir`.
    stop_at: stop after this iteration (checkpointing it) although the schedule runs to
        `train.iterations`, e.g. to split a run in two.
    step_callback: called as `step_callback(iteration)` after each finished step (tests, hooks).
    """
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.train.device, option="train.device", local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    out_dir = Path(cfg.log.out_dir)
    main = rank == 0
    t = cfg.train

    seed = t.seed
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
    model = build_model(cfg)
    # Unused in forward (published model); frozen so DDP needs no find_unused_parameters.
    if hasattr(model, "a"):
        model.a.requires_grad_(False)
    if t.pretrained and resume is None:
        ckpt.load_pretrained(model, t.pretrained, exclude=t.pretrained_exclude)
    model.to(device)
    ema = copy.deepcopy(model).eval() if t.ema_decay > 0 else None
    if ema is not None:
        ema.requires_grad_(False)
    # Ranks draw their own hashing rotations: seed each rank differently after the shared init.
    torch.manual_seed(seed + rank)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=t.milestones, gamma=t.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)

    iteration, consumed = 0, 0
    best = {"psnr": None, "iteration": None, "benchmark": cfg.data.val_dir}
    if resume is not None:
        path = _latest_checkpoint(out_dir) if resume == "auto" else Path(resume)
        state = ckpt.read_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != ckpt.TRAIN_FORMAT:
            raise ckpt.CheckpointError(f"--resume {path}: not a dlsn training checkpoint (use train.pretrained "
                                       "to start from published weights)")
        ckpt.load_state_dict_strict(model, state["model"])
        if ema is not None:
            if state.get("ema") is None:
                raise ckpt.CheckpointError(f"--resume {path}: train.ema_decay > 0 but the checkpoint has no EMA")
            ckpt.load_state_dict_strict(ema, state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        iteration, consumed = state["iteration"], state["consumed"]
        best = state.get("best", best)
        rng = state["rng"]
        if len(rng) == world:
            ckpt.set_rng_state(rng[rank])
        elif main:
            print(f"warning: checkpoint written by {len(rng)} processes, resuming with {world}: "
                  "RNG streams restart, the run is no longer bit-exact", file=sys.stderr)
        if main and not quiet:
            print(f"resumed from {path} at iteration {iteration}")

    start = iteration
    train_pairs = pairs if pairs is not None else _training_pairs(cfg)
    if val_pairs is None and cfg.data.val_dir and cfg.log.val_every:
        if not Path(cfg.data.val_dir).is_dir():
            raise FileNotFoundError(f"data.val_dir: benchmark folder {cfg.data.val_dir!r} not found")
        val_pairs = benchmark_pairs(cfg.data.val_dir, cfg.model.scale, cfg.data.val_max_images,
                                    cfg.data.degradation, cfg.data.noise_level, seed=cfg.train.seed)
    patches = PatchPairs(train_pairs, cfg.model.scale, cfg.data.patch_size, cfg.data.augment, cfg.model.rgb_range)
    stream = SampleStream(len(train_pairs), cfg.data.batch_size, seed=seed, rank=rank, world_size=world,
                          consumed=consumed)
    # A private generator: the DataLoader otherwise draws its worker seed from the global RNG.
    loader = DataLoader(patches, batch_sampler=stream, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    logger = _Logger(out_dir, cfg.log.tensorboard) if main else None
    end = min(t.iterations, stop_at) if stop_at is not None else t.iterations

    def save(at):
        rngs = _gather(ckpt.rng_state(), world)
        if not main:
            return None
        path = out_dir / "checkpoints" / f"iter_{at:08d}.pt"
        ckpt.save_training_checkpoint(
            path, model=model.state_dict(), ema=ema.state_dict() if ema is not None else None,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
            iteration=at, consumed=stream_position(at), config=config_to_dict(cfg), rng=rngs, world_size=world,
            best=dict(best))
        old = sorted((out_dir / "checkpoints").glob("iter_*.pt"))[:-cfg.log.keep_last] if cfg.log.keep_last else []
        for stale in old:
            stale.unlink()
        return path

    def save_best(at, psnr):
        best.update(psnr=psnr, iteration=at)
        weights = (ema if ema is not None else model).state_dict()
        ckpt.atomic_save({"params": {k: v.detach().cpu() for k, v in weights.items()},
                          "config": {"model": config_to_dict(cfg)["model"]}, "best": dict(best)},
                         out_dir / "best.pt")

    def stream_position(at):
        return consumed + (at - start) * cfg.data.batch_size

    interrupted = []
    previous_handler = None
    if _in_main_thread():
        previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))

    loss_value, val_psnr = float("nan"), None
    progress = None
    if main and cfg.log.progress and not quiet:
        from tqdm import tqdm
        progress = tqdm(total=end, initial=start, desc="train", dynamic_ncols=True, unit="it")
    text_log = _TextLog(out_dir, echo=not quiet, writer=progress.write if progress is not None else print) if main else None
    timed_from = None  # (iteration, time) after the warm-up iteration
    started = time.time()
    net.train()
    batches = iter(loader)
    try:
        while iteration < end:
            lr_batch, hr_batch = next(batches)
            lr_batch = lr_batch.to(device, non_blocking=True)
            hr_batch = hr_batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                sr = net(lr_batch)
            loss = F.l1_loss(sr.float(), hr_batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"iteration {iteration + 1}: loss is {loss.item()}; "
                                         "lower train.lr, set train.grad_clip, or use train.amp=none/bf16")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
                        if e.is_floating_point():
                            e.lerp_(p, 1.0 - t.ema_decay)
            iteration += 1
            loss_value = loss.item()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            val_now = cfg.log.val_every and val_pairs is not None and iteration % cfg.log.val_every == 0
            if val_now and main:
                val_psnr = validate(ema if ema is not None else model, val_pairs, cfg.model.scale,
                                    cfg.model.rgb_range, device)
                improved = best["psnr"] is None or val_psnr > best["psnr"]
                if improved:
                    save_best(iteration, val_psnr)
                text_log(f"iteration {iteration}: validation PSNR {val_psnr:.3f} dB "
                         f"(best {best['psnr']:.3f} dB at iteration {best['iteration']})")
            if main and (val_now or (cfg.log.log_every and iteration % cfg.log.log_every == 0)):
                logger.log(iteration=iteration, loss=loss_value, lr=scheduler.get_last_lr()[0],
                           val_psnr=val_psnr if val_now else "", seconds=round(time.time() - started, 3))
            if main:
                timed_from = _report_speed(text_log, cfg, iteration, start, end, timed_from, loss_value,
                                           scheduler.get_last_lr()[0], started, show=progress is None and not quiet)
            if cfg.log.save_every and iteration % cfg.log.save_every == 0 and iteration < end:
                save(iteration)
            if step_callback is not None:
                step_callback(iteration)
            stop = torch.tensor([float(bool(interrupted))], device=device)
            if world > 1:  # every rank stops at the same step, whichever got the signal
                dist.all_reduce(stop)
            if stop.item():
                path = save(iteration)
                if main:
                    print(f"\ninterrupted: checkpoint {path} holds {iteration} iterations; "
                          f"continue with --resume {path}", file=sys.stderr)
                raise TrainingInterrupted(f"interrupted at iteration {iteration}")
        save(iteration)
        if main and iteration == t.iterations:
            final = (ema if ema is not None else model).state_dict()
            ckpt.save_weights(final, config_to_dict(cfg)["model"], out_dir / "model.pt")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if progress is not None:
            progress.close()
        if logger is not None:
            logger.close()
    return {"iteration": iteration, "loss": loss_value, "val_psnr": val_psnr, "out_dir": out_dir,
            "model": ema if ema is not None else model, "best": best}


def _report_speed(text_log, cfg, iteration, start, end, timed_from, loss, lr, started, show):
    """Start-of-training estimate once `ESTIMATE_ITERATIONS` iterations are timed, then a progress
    line with the ETA every `log.log_every` iterations. Returns the timing anchor."""
    now = time.time()
    total = cfg.train.iterations
    if timed_from is None:  # the first iteration of this run is warm-up (allocations, autotuning)
        return (iteration, now)
    anchor_iteration, anchor_time = timed_from
    done = iteration - anchor_iteration
    per_iteration = (now - anchor_time) / done
    if done == min(ESTIMATE_ITERATIONS, end - start - 1):
        text_log(f"speed: {per_iteration:.3f} s/iteration over iterations {anchor_iteration + 1}-{iteration}; "
                 f"estimated wall time of the whole schedule ({total} iterations): "
                 f"{format_duration(per_iteration * total)}; remaining {end - iteration} iterations of this run: "
                 f"{format_duration(per_iteration * (end - iteration))} (validation and checkpoints not included)")
    if cfg.log.log_every and iteration % cfg.log.log_every == 0:
        line = (f"iteration {iteration}/{total} loss {loss:.4f} lr {lr:.2e} {per_iteration:.3f} s/it "
                f"elapsed {format_duration(now - started)} ETA {format_duration(per_iteration * (end - iteration))}")
        text_log(line, echo=show)
    return timed_from
