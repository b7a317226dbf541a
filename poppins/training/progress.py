"""Training progress as plain lines that read well in CI logs.

``step 120/2000 | loss 1.2345 | val 1.4567 | lr 2.10e-03 | 95 ms/step | 21,500 tok/s | ETA 3m05s``

On a terminal the current line refreshes in place, and a permanent line is kept at every
validation; elsewhere (CI, a file) a line is printed every ``log_interval`` steps.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Progress:
    def __init__(self, total: int, start_step: int = 0, stream: Optional[TextIO] = None,
                 log_interval: int = 10, tty: Optional[bool] = None, quiet: bool = False):
        self.total = total
        self.quiet = quiet   # MPI ranks other than 0 print nothing
        self.stream = stream or sys.stdout
        self.tty = (not quiet and self.stream.isatty()) if tty is None else tty
        self.log_interval = log_interval
        self.t0 = time.perf_counter()
        self.s0 = start_step
        self.tokens = 0
        self._open = False

    def line(self, step: int, loss: float, val: Optional[float], lr: float) -> str:
        el = time.perf_counter() - self.t0
        done = max(step - self.s0, 1)
        ms = 1000 * el / done
        tps = self.tokens / el if el > 0 else 0.0
        eta = (self.total - step) * el / done
        v = f"{val:.4f}" if val is not None else "-"
        return (f"step {step}/{self.total} | loss {loss:.4f} | val {v} | lr {lr:.2e} | "
                f"{ms:.0f} ms/step | {tps:,.0f} tok/s | ETA {fmt_duration(eta)}")

    def update(self, step: int, loss: float, val: Optional[float], lr: float, tokens: int,
               keep: bool = False) -> None:
        self.tokens += tokens
        if self.quiet:
            return
        text = self.line(step, loss, val, lr)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if keep else ""))
            self._open = not keep
            self.stream.flush()
        elif keep or step % self.log_interval == 0 or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty and self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()
