"""Progress of long work: a live bar in a terminal, plain periodic lines anywhere else.

A redirected stream (nohup, a cluster's log file, a pipe) would otherwise receive every frame of the
bar; there `progress` prints one line every `interval` seconds and one at the end instead. Lines
that belong between bar updates go through `write`, so bar and text never overwrite each other.
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress", "format_duration"]

PLAIN_INTERVAL = 30.0  # seconds between two plain progress lines


def format_duration(seconds) -> str:
    """`3 d 04:05:06`, `4:05:06` or `0:00:07`."""
    seconds = int(round(max(0.0, seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} d {hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


class _PlainProgress:
    """tqdm's interface, as lines: `desc: n/total (p%) elapsed 0:01:02 ETA 0:03:04 key=value`."""

    def __init__(self, total, desc, unit, file, initial, interval, disable, delay=0.0):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n, self.start_n, self.interval, self.disable = initial, initial, interval, disable
        self.delay = delay
        self.started = self.last = time.monotonic()
        self.postfix = ""

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, **values):
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def write(self, line, file=None):
        print(line, file=self.file if file is None else file, flush=True)

    def _line(self, now):
        elapsed = now - self.started
        if self.disable or elapsed < self.delay:
            return
        done = self.n - self.start_n
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        eta = ""
        if self.total and done > 0:
            eta = f" ETA {format_duration(elapsed / done * (self.total - self.n))}"
        print(f"{self.desc}: {count} elapsed {format_duration(elapsed)}{eta} {self.postfix}".rstrip(),
              file=self.file, flush=True)

    def close(self):
        if self.n != self.start_n:
            self._line(time.monotonic())
        self.start_n = self.n  # a second close prints nothing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total=None, desc="", unit="it", file=None, initial=0, disable=False, leave=True,
             interval=PLAIN_INTERVAL, delay=0.0):
    """A progress reporter with tqdm's `update`, `set_postfix` and `close`: a tqdm bar when `file`
    (default stderr) is a terminal, else plain lines every `interval` seconds and at the end.

    `write(line, file=None)` prints a line to `file` (default: the bar's stream) without the bar
    overwriting it. `delay`: seconds before anything is shown, so work that ends sooner shows none."""
    file = sys.stderr if file is None else file
    if getattr(file, "isatty", lambda: False)():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=file, initial=initial, disable=disable, leave=leave,
                   dynamic_ncols=True, delay=delay)
        # tqdm.write prints to stdout unless told otherwise; a line belongs beside its bar.
        stream = file
        bar.write = lambda line, file=None: tqdm.write(line, file=stream if file is None else file)
        return bar
    return _PlainProgress(total, desc, unit, file, initial, interval, disable, delay)
