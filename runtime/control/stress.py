"""CPU contention on demand: busy-looping subprocesses that stop by themselves.

Used by the demo and the load benchmark to show how the controller reacts when another
program takes the CPU. Each process ends after `seconds` even if nobody stops it. By default
there is one process per CPU this process may run on (its affinity, which the engine's
threads inherit), each pinned to its own CPU, so every core the engine can use is contended:
an unpinned single hog on a 2-core machine leaves the engine a free core.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["CpuHog", "engine_cpus"]

_BUSY_LOOP = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "x = 0\n"
    "while time.monotonic() < end:\n"
    "    for i in range(10000):\n"
    "        x += i * i\n"
)


def engine_cpus() -> list[int]:
    """The CPUs this process (and so the engine's threads) may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class CpuHog:
    """`procs` busy-looping Python processes (default: one per CPU of `cpus`), each ending
    by itself after at most `seconds` and pinned round-robin to one CPU of `cpus` (default:
    the CPUs this process runs on; pinning needs Linux). Use as a context manager or call
    start() / stop()."""

    def __init__(self, procs: int | None = None, seconds: float = 60.0,
                 cpus: list[int] | None = None) -> None:
        self.cpus = engine_cpus() if cpus is None else list(cpus)
        self.procs = max(1, len(self.cpus)) if procs is None else procs
        if self.procs < 1 or not seconds > 0:
            raise ValueError(f"need procs >= 1 and seconds > 0, got {procs}, {seconds}")
        self.seconds = seconds
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def pinned(self) -> list[int | None]:
        """The CPU each process runs on (None: unpinned)."""
        can = bool(self.cpus) and hasattr(os, "sched_setaffinity")
        return [self.cpus[k % len(self.cpus)] if can else None for k in range(self.procs)]

    @property
    def started(self) -> bool:
        """Whether start() was called since the last stop()."""
        return bool(self._children)

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self._children)

    def start(self) -> CpuHog:
        if not self._children:
            for cpu in self.pinned:
                child = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, str(self.seconds)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                self._children.append(child)
                if cpu is not None:
                    try:
                        os.sched_setaffinity(child.pid, {cpu})
                    except OSError:  # it ended already, or the CPU went away: still a hog
                        pass
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
