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
`log.log_every` iterations a progress line with the ETA and the share of the step time spent
waiting for data (`data 12%`: near 100% means the data loader is the bottleneck) follows (printed
when the progress bar is off, always logged).

Multi-GPU: launch with `torchrun --nproc_per_node G -m dlsn train ...`. Each rank reads its share of
the images (`DistributedSampler`), only rank 0 writes logs and checkpoints. The published model's
parameter `a` is never used in `forward`; it is frozen (`requires_grad=False`, still saved) so DDP
runs without `find_unused_parameters` (which would cost an extra graph traversal every step).

Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and stops; `--resume` continues.

`train` runs a `Trainer` through its steps: `set_up` (model, EMA, optimizer, schedule, gradient
scaler), `resume`, `load_data`, then `run`, which takes a `step` per iteration and calls
`validate` and `save` when `cfg.log` asks. The module is also the `dlsn train` command
(`add_arguments`, `run`).
"""
from __future__ import annotations

import contextlib
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

from ..models import build_model, load_state_dict_strict
from . import checkpoint as ckpt
from .config import Config, config_to_dict, load_config, packaged_names
from .data import PatchPairs, TimedBatches, benchmark_pairs, loader_workers, training_pairs
from .inference import upscale_tensor
from .metrics import calc_psnr
from .photos import DEMO_PHOTOGRAPHS, TRAIN_PHOTOS, photograph_pairs
from .progress import format_duration, progress
from .utils import TrainingInterrupted, resolve_device

__all__ = ["train", "Trainer", "SampleStream", "validate", "TrainingInterrupted", "resolve_resume",
           "check_fresh_out_dir", "add_arguments", "run"]

# Iterations timed for the start-of-training estimate (after one warm-up iteration).
ESTIMATE_ITERATIONS = 20
# Batches each DataLoader worker prepares ahead (torch's default is 2): covers a slow image.
PREFETCH_FACTOR = 4


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


def _training_pairs(cfg: Config):
    if not cfg.data.train_dir:
        raise ValueError("data.train_dir is not set: give a DIV2K-layout folder, e.g. data.train_dir=/data/DIV2K, "
                         "or a dataset made from one by dlsn prepare")
    if cfg.data.train_dir == DEMO_PHOTOGRAPHS:  # what `dlsn demo` trains on
        if cfg.data.degradation != "bi":
            raise ValueError(f"data.train_dir={DEMO_PHOTOGRAPHS} gives bicubic (BI) pairs only, not "
                             f"data.degradation={cfg.data.degradation}: give a folder of images as data.train_dir")
        return photograph_pairs(TRAIN_PHOTOS, cfg.model.scale)
    return training_pairs(cfg.data.train_dir, scale=cfg.model.scale, degradation=cfg.data.degradation,
                          noise_level=cfg.data.noise_level, seed=cfg.train.seed)


def _validation_pairs(cfg: Config):
    """The benchmark of `data.val_dir` when validation is on, else None."""
    if not (cfg.data.val_dir and cfg.log.val_every):
        return None
    if not Path(cfg.data.val_dir).is_dir():
        raise FileNotFoundError(f"data.val_dir: benchmark folder {cfg.data.val_dir!r} not found")
    return benchmark_pairs(cfg.data.val_dir, cfg.model.scale, cfg.data.val_max_images, cfg.data.degradation,
                           cfg.data.noise_level, seed=cfg.train.seed)


@torch.no_grad()
def validate(model, pairs, scale, rgb_range=1.0, device="cpu"):
    """Mean Y-PSNR of `model` on full-size `pairs` (eval mode, fixed hashing), RNG streams untouched."""
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


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _gather(obj, world):
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def _latest_checkpoint(out_dir: Path):
    """The newest `iter_*.pt` under `out_dir/checkpoints`, or None."""
    found = sorted((out_dir / "checkpoints").glob("iter_*.pt"))
    return found[-1] if found else None


def resolve_resume(resume, out_dir: Path, say=print):
    """The checkpoint `--resume` names: `"auto"` is the latest in `out_dir`, or None (a fresh run,
    said through `say` in one line) when there is none yet, so that a job a cluster requeues can
    pass `--resume auto` every time."""
    if resume != "auto":
        return resume
    latest = _latest_checkpoint(out_dir)
    if latest is None:
        say(f"--resume auto: no checkpoint in {out_dir / 'checkpoints'} yet: starting a fresh run")
    return latest


# What a run (or `dlsn demo`, which trains one) leaves in log.out_dir besides its checkpoints:
# a fresh run refuses to overwrite them unless told to (`dlsn train --overwrite`).
RUN_OUTPUTS = ("model.pt", "best.pt", "results.json", "side_by_side.png", "log.csv", "train.log")


def _previous_outputs(out_dir: Path):
    found = [out_dir / name for name in RUN_OUTPUTS if (out_dir / name).is_file()]
    return found + sorted((out_dir / "checkpoints").glob("iter_*.pt"))


def check_fresh_out_dir(out_dir: Path, overwrite=False, say=print):
    """Before a fresh run into `out_dir`: a `ValueError` (one line) when it holds the weights or
    checkpoints of another run or of `dlsn demo`. With `overwrite`, that run's files (`RUN_OUTPUTS`
    and checkpoints) are removed instead, so that no stale checkpoint is resumed or kept later.
    Logs alone (a run stopped before its first checkpoint) are appended to, as a resumed run does."""
    found = _previous_outputs(out_dir)
    if not overwrite:
        if any(path.name not in ("log.csv", "train.log") for path in found):
            demo = (out_dir / "results.json").is_file()
            names = ", ".join(str(p.relative_to(out_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
            remedy = "another folder (log.out_dir=DIR)" if demo else \
                "another folder (log.out_dir=DIR), --resume auto to continue that run,"
            raise ValueError(f"log.out_dir {out_dir} holds the outputs of {'dlsn demo' if demo else 'another run'} "
                             f"({names}), which a fresh run would overwrite: give {remedy} or --overwrite to "
                             "replace them")
        return
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        say(f"--overwrite: removed {len(found)} file(s) of the previous run in {out_dir}")


@contextlib.contextmanager
def _deferred_ctrl_c():
    """Within: Ctrl-C (SIGINT) appends to the yielded list instead of raising, so the step under
    way finishes. Only the main thread can take signals; elsewhere Ctrl-C is left as it is."""
    pressed = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield pressed
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _ScalarLog:
    """log.csv (always) and TensorBoard (when enabled; a one-line notice when not installed)."""

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
                from torch.utils.tensorboard import SummaryWriter  # optional: only when asked for
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


class _TextLog:
    """Human-readable lines (estimates, progress, best validation) in `out_dir/train.log`."""

    def __init__(self, out_dir: Path, echo: bool, writer=print):
        self.path, self.echo, self.writer = out_dir / "train.log", echo, writer

    def __call__(self, line, echo=None):
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo if echo is None else echo:
            self.writer(line)


class _RunReport:
    """Rank 0's account of the iterations `start`..`end` of a run: rows of log.csv (and
    TensorBoard), lines of train.log (speed estimate, progress with the ETA, validations; printed
    unless quiet, progress lines only when the progress bar is off) and the progress bar."""

    def __init__(self, cfg: Config, start: int, end: int, quiet: bool):
        self.cfg, self.start, self.end = cfg, start, end
        out_dir = Path(cfg.log.out_dir)
        self.scalars = _ScalarLog(out_dir, cfg.log.tensorboard)
        self.bar = None
        if cfg.log.progress and not quiet:
            self.bar = progress(total=end, initial=start, desc="train", unit="it")
        self.text = _TextLog(out_dir, echo=not quiet, writer=print if self.bar is None else
                             lambda line: self.bar.write(line, file=sys.stdout))
        self.print_progress = self.bar is None and not quiet
        self.timed_from = None  # (iteration, time) after the warm-up iteration
        self.started = time.time()
        self.waited = self.stepped = 0.0  # seconds waiting for batches / in whole steps since the last line

    def data_time(self, waited, stepped):
        """Account a step that took `stepped` seconds, `waited` of them waiting for its batch."""
        self.waited += waited
        self.stepped += stepped

    def step_done(self, iteration, loss, lr, val_psnr=None):
        """Report the step that reached `iteration`; `val_psnr` when it was validated."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log_every = self.cfg.log.log_every
        if val_psnr is not None or (log_every and iteration % log_every == 0):
            self.scalars.log(iteration=iteration, loss=loss, lr=lr, val_psnr="" if val_psnr is None else val_psnr,
                             seconds=round(time.time() - self.started, 3))
        self._report_speed(iteration, loss, lr)

    def _report_speed(self, iteration, loss, lr):
        """The start-of-training estimate once `ESTIMATE_ITERATIONS` iterations are timed, then a
        progress line with the ETA every `log.log_every` iterations."""
        now = time.time()
        if self.timed_from is None:  # the first iteration of this run is warm-up (allocations, autotuning)
            self.timed_from = (iteration, now)
            return
        total, end = self.cfg.train.iterations, self.end
        anchor_iteration, anchor_time = self.timed_from
        done = iteration - anchor_iteration
        per_iteration = (now - anchor_time) / done
        if done == min(ESTIMATE_ITERATIONS, end - self.start - 1):
            self.text(f"speed: {per_iteration:.3f} s/iteration over iterations {anchor_iteration + 1}-{iteration}; "
                      f"estimated wall time of the whole schedule ({total} iterations): "
                      f"{format_duration(per_iteration * total)}; remaining {end - iteration} iterations of this "
                      f"run: {format_duration(per_iteration * (end - iteration))} (validation and checkpoints "
                      "not included)")
        if self.cfg.log.log_every and iteration % self.cfg.log.log_every == 0:
            # The share of the steps spent waiting for data: near 100% means the loader is the bottleneck.
            data = f"data {100 * self.waited / self.stepped:.0f}% " if self.stepped else ""
            self.waited = self.stepped = 0.0
            self.text(f"iteration {iteration}/{total} loss {loss:.4f} lr {lr:.2e} {per_iteration:.3f} s/it {data}"
                      f"elapsed {format_duration(now - self.started)} "
                      f"ETA {format_duration(per_iteration * (end - iteration))}", echo=self.print_progress)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.scalars.close()


class Trainer:
    """One training run of `train`, in its steps: `set_up`, `resume` (optional), `load_data`, `run`.

    Every rank takes the steps (DDP keeps the replicas equal) and joins in `save`, which gathers
    the RNG states; rank 0 alone validates, logs and writes files.
    """

    def __init__(self, cfg: Config, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.rank, self.world, local_rank = _distributed()
        self.main = self.rank == 0
        self.device = resolve_device(cfg.train.device, option="train.device", local_rank=local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives (all_gather_object) use the current device
        self.out_dir = Path(cfg.log.out_dir)
        self.iteration = 0
        self.consumed = 0  # samples this rank has drawn from its SampleStream
        self.best = {"psnr": None, "iteration": None, "benchmark": cfg.data.val_dir}
        self.loss, self.val_psnr = float("nan"), None
        self.report = None  # rank 0's _RunReport while `run` runs

    @property
    def inference_model(self):
        """The weights validation, best.pt and model.pt take: the EMA ones when kept."""
        return self.ema if self.ema is not None else self.model

    def set_up(self, pretrained: bool = True):
        """The model (with `train.pretrained` loaded when `pretrained`), its EMA copy, the Adam
        optimizer, the multi-step schedule and the fp16 gradient scaler."""
        t = self.cfg.train
        torch.manual_seed(t.seed)
        np.random.seed(t.seed % 2 ** 32)
        random.seed(t.seed)
        model = build_model(self.cfg.model)
        if hasattr(model, "a"):  # unused in forward (published model); frozen so DDP needs no find_unused_parameters
            model.a.requires_grad_(False)
        if t.pretrained and pretrained:
            ckpt.load_pretrained(model, t.pretrained, exclude=t.pretrained_exclude)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if t.ema_decay > 0 else None
        if t.compile:  # in place, after the EMA copy: the state dict keys stay those of the model
            self.model.compile(fullgraph=True)
        # Ranks draw their own hashing rotations: seed each rank differently after the shared init.
        torch.manual_seed(t.seed + self.rank)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=t.lr, betas=tuple(t.betas), eps=t.eps,
                                          weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=t.milestones, gamma=t.gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)

    def resume(self, checkpoint):
        """Continue the run saved in the training checkpoint at `checkpoint` (`resolve_resume` turns
        `--resume auto` into one): weights, EMA, optimizer, schedule, scaler, position in the sample
        stream, best record and, when as many processes wrote it, the RNG streams."""
        path = Path(checkpoint)
        state = ckpt.read_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != ckpt.TRAIN_FORMAT:
            raise ckpt.CheckpointError(f"--resume {path}: not a dlsn training checkpoint (use train.pretrained "
                                       "to start from published weights)")
        load_state_dict_strict(self.model, state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ckpt.CheckpointError(f"--resume {path}: train.ema_decay > 0 but the checkpoint has no EMA")
            load_state_dict_strict(self.ema, state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.consumed = state["iteration"], state["consumed"]
        if self.iteration > self.cfg.train.iterations:
            raise ckpt.CheckpointError(f"--resume {path}: the checkpoint is at iteration {self.iteration}, past "
                                       f"train.iterations={self.cfg.train.iterations}")
        self.best = state.get("best", self.best)
        rng = state["rng"]
        if len(rng) == self.world:
            ckpt.set_rng_state(rng[self.rank])
        elif self.main:
            print(f"warning: checkpoint written by {len(rng)} processes, resuming with {self.world}: "
                  "RNG streams restart, the run is no longer bit-exact", file=sys.stderr)
        if self.main and not self.quiet:
            print(f"resumed from {path} at iteration {self.iteration}")

    def load_data(self, pairs=None, val_pairs=None):
        """The loader of training patches, continuing the sample stream where the run stands, and
        the validation pairs. `pairs`, `val_pairs`: as `train` takes them."""
        cfg = self.cfg
        train_pairs = pairs if pairs is not None else _training_pairs(cfg)
        self.val_pairs = val_pairs if val_pairs is not None else _validation_pairs(cfg)
        patches = PatchPairs(train_pairs, cfg.model.scale, cfg.data.patch_size, cfg.data.augment, cfg.model.rgb_range)
        stream = SampleStream(len(train_pairs), cfg.data.batch_size, seed=cfg.train.seed, rank=self.rank,
                              world_size=self.world, consumed=self.consumed)
        # The CPUs are shared by the processes of this machine (torchrun's LOCAL_WORLD_SIZE), not of the job.
        workers = loader_workers(cfg.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
        cuda = self.device.type == "cuda"
        # A private generator: the DataLoader otherwise draws its worker seed from the global RNG.
        # Pinned memory lets the copy to the GPU overlap the step; workers that persist keep their
        # open images and memory maps across the loader's iterators.
        extra = dict(persistent_workers=cuda, prefetch_factor=PREFETCH_FACTOR) if workers else {}
        self.loader = DataLoader(patches, batch_sampler=stream, num_workers=workers, pin_memory=cuda,
                                 generator=torch.Generator().manual_seed(cfg.train.seed), **extra)

    def run(self, end: int, step_callback=None):
        """Train up to iteration `end`: a `step` per iteration, with validation, logs and checkpoints
        as `cfg.log` asks; Ctrl-C stops after the step under way with a checkpoint. Then save, and
        write model.pt when the schedule is complete."""
        self.net = self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.report = _RunReport(self.cfg, self.iteration, end, self.quiet) if self.main else None
        try:
            with _deferred_ctrl_c() as pressed:
                self.net.train()
                batches = TimedBatches(self.loader)
                while self.iteration < end:
                    started = time.perf_counter()
                    self.step(*next(batches))
                    if self.report is not None:
                        self.report.data_time(batches.wait, time.perf_counter() - started)
                    self._after_step(end)
                    if step_callback is not None:
                        step_callback(self.iteration)
                    if self._any_rank_interrupted(pressed):
                        self._save_and_stop()
                self.save()
                if self.main and self.iteration == self.cfg.train.iterations:
                    ckpt.save_weights(self.inference_model.state_dict(), config_to_dict(self.cfg)["model"],
                                      self.out_dir / "model.pt")
        finally:
            if self.report is not None:
                self.report.close()

    def step(self, lr_batch, hr_batch):
        """One optimisation step on a batch: forward (under `train.amp` autocast), L1 loss, backward,
        gradient clipping, optimizer, schedule and EMA updates."""
        t = self.cfg.train
        lr_batch = lr_batch.to(self.device, non_blocking=True)
        hr_batch = hr_batch.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            sr = self.net(lr_batch)
        loss = F.l1_loss(sr.float(), hr_batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"iteration {self.iteration + 1}: loss is {loss.item()}; "
                                     "lower train.lr, set train.grad_clip, or use train.amp=none/bf16")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema()
        self.iteration += 1
        self.consumed += self.cfg.data.batch_size
        self.loss = loss.item()

    @torch.no_grad()
    def _update_ema(self):
        for average, current in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1.0 - self.cfg.train.ema_decay)

    def _after_step(self, end):
        """Validation, logs and the periodic checkpoint due at the iteration just reached."""
        log, iteration = self.cfg.log, self.iteration
        validating = bool(log.val_every and self.val_pairs is not None and iteration % log.val_every == 0)
        if self.main:
            if validating:
                self.validate()
            self.report.step_done(iteration, self.loss, self.scheduler.get_last_lr()[0],
                                  self.val_psnr if validating else None)
        if log.save_every and iteration % log.save_every == 0 and iteration < end:
            self.save()

    def validate(self):
        """Validation PSNR of `inference_model` on the validation pairs (the module's `validate`);
        a new best is written to best.pt (a weights file with its `best` record). Rank 0 only."""
        cfg = self.cfg
        self.val_psnr = validate(self.inference_model, self.val_pairs, cfg.model.scale, cfg.model.rgb_range,
                                 self.device)
        if self.best["psnr"] is None or self.val_psnr > self.best["psnr"]:
            self.best.update(psnr=self.val_psnr, iteration=self.iteration)
            weights = self.inference_model.state_dict()
            ckpt.atomic_save({"params": {k: v.detach().cpu() for k, v in weights.items()},
                              "config": {"model": config_to_dict(cfg)["model"]}, "best": dict(self.best)},
                             self.out_dir / "best.pt")
        self.report.text(f"iteration {self.iteration}: validation PSNR {self.val_psnr:.3f} dB "
                         f"(best {self.best['psnr']:.3f} dB at iteration {self.best['iteration']})")

    def save(self):
        """Write the training checkpoint of this iteration and delete those before the last
        `log.keep_last`. Every rank sends its RNG state; rank 0 writes and returns the path (others None)."""
        rngs = _gather(ckpt.rng_state(), self.world)
        if not self.main:
            return None
        checkpoints = self.out_dir / "checkpoints"
        path = checkpoints / f"iter_{self.iteration:08d}.pt"
        ckpt.save_training_checkpoint(
            path, model=self.model.state_dict(), ema=self.ema.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), iteration=self.iteration, consumed=self.consumed,
            config=config_to_dict(self.cfg), rng=rngs, world_size=self.world, best=dict(self.best))
        keep = self.cfg.log.keep_last
        for stale in sorted(checkpoints.glob("iter_*.pt"))[:-keep] if keep else []:
            stale.unlink()
        return path

    def _any_rank_interrupted(self, pressed) -> bool:
        stop = torch.tensor([float(bool(pressed))], device=self.device)
        if self.world > 1:  # every rank stops at the same step, whichever got the signal
            dist.all_reduce(stop)
        return bool(stop.item())

    def _save_and_stop(self):
        path = self.save()
        if self.main:
            print(f"\ninterrupted: checkpoint {path} holds {self.iteration} iterations; "
                  f"continue with --resume {path}", file=sys.stderr)
        raise TrainingInterrupted(f"interrupted at iteration {self.iteration}")

    def result(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss, "val_psnr": self.val_psnr, "out_dir": self.out_dir,
                "model": self.inference_model, "best": self.best}


def train(cfg: Config, resume=None, pairs=None, val_pairs=None, stop_at=None, step_callback=None, quiet=False):
    """Train per `cfg`; returns `{"iteration", "loss", "val_psnr", "out_dir", "model", "best"}`.

    pairs: a dataset of full `(lr, hr)` pairs in [0, 1] (default: `data.train_dir`).
    val_pairs: pairs for validation (default: `data.val_dir` when set).
    resume: a training checkpoint path, or "auto" for the latest one in `log.out_dir` (a fresh run,
        said in one line, when there is none yet).
    stop_at: stop after this iteration (checkpointing it) although the schedule runs to
        `train.iterations`, e.g. to split a run in two.
    step_callback: called as `step_callback(iteration)` after each finished step (tests, hooks).
    quiet: print nothing (train.log and log.csv are written all the same).
    """
    trainer = Trainer(cfg, quiet=quiet)
    resume = resolve_resume(resume, trainer.out_dir, say=print if trainer.main and not quiet else lambda line: None)
    trainer.set_up(pretrained=resume is None)
    if resume is not None:
        trainer.resume(resume)
    trainer.load_data(pairs, val_pairs)
    trainer.run(cfg.train.iterations if stop_at is None else min(cfg.train.iterations, stop_at), step_callback)
    return trainer.result()


def add_arguments(parser):
    """Arguments of ``dlsn train``."""
    parser.add_argument("--config", required=True,
                        help="YAML config file, or the name of a packaged one: " + ", ".join(packaged_names()))
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue from a training checkpoint, or 'auto' for the latest in log.out_dir "
                             "(a fresh run when there is none yet, so a requeued job can always pass it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if log.out_dir holds another run's (or dlsn demo's) weights and "
                             "checkpoints: they are deleted first (without it, that is an error)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. train.lr=2e-4 data.train_dir=/data/DIV2K")


def run(args) -> int:
    """``dlsn train``: trains per the config; returns the exit status."""
    cfg = load_config(args.config, args.overrides)
    main_process = int(os.environ.get("RANK", "0")) == 0
    say = print if main_process else (lambda line: None)
    resume = resolve_resume(args.resume, Path(cfg.log.out_dir), say)
    if resume is None and main_process:
        check_fresh_out_dir(Path(cfg.log.out_dir), overwrite=args.overwrite, say=say)
    result = train(cfg, resume=resume)
    print(f"finished at iteration {result['iteration']}; outputs in {result['out_dir']}")
    return 0
