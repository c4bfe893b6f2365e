"""CPU contention on demand: busy-looping subprocesses that stop by themselves.

Used by the demo and the load benchmark to show how the controller reacts when another
program takes the CPU. Each process ends after `seconds` even if nobody stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["CpuHog"]

_BUSY_LOOP = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "x = 0\n"
    "while time.monotonic() < end:\n"
    "    for i in range(10000):\n"
    "        x += i * i\n"
)


class CpuHog:
    """`procs` busy-looping Python processes (default: one per core), each ending by itself
    after at most `seconds`. Use as a context manager or call start() / stop()."""

    def __init__(self, procs: int | None = None, seconds: float = 60.0) -> None:
        self.procs = (os.cpu_count() or 1) if procs is None else procs
        if self.procs < 1 or not seconds > 0:
            raise ValueError(f"need procs >= 1 and seconds > 0, got {procs}, {seconds}")
        self.seconds = seconds
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def started(self) -> bool:
        """Whether start() was called since the last stop()."""
        return bool(self._children)

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self._children)

    def start(self) -> CpuHog:
        if not self._children:
            self._children = [
                subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(self.seconds)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
                for _ in range(self.procs)]
        return self

    def stop(self) -> None:
        """End the processes this hog started (by their own handles only)."""
        children, self._children = self._children, []
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
