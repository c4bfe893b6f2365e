"""Resource monitors: psutil readings sampled in a background thread.

The request path reads the latest sample with `ResourceMonitor.latest()`, which returns an
immutable `ResourceSample` by a single attribute read: it never blocks and never calls psutil.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psutil

__all__ = ["ResourceSample", "Monitor", "ResourceMonitor", "ManualMonitor", "read_sample"]


@dataclass(frozen=True)
class ResourceSample:
    """One reading of the machine. Signals the machine does not report are None.

    Units: percentages in [0, 100]; `process_cpu_percent` is normalised by the CPU count
    (100 means the process uses every core); `load_per_cpu` is the 1-minute load average
    divided by the CPU count; bytes for memory; degrees Celsius for temperature (the hottest
    sensor); `time` is `time.monotonic()` at sampling.
    """

    time: float = 0.0
    cpu_percent: float | None = None
    process_cpu_percent: float | None = None
    memory_available_bytes: int | None = None
    memory_available_percent: float | None = None
    load_per_cpu: float | None = None
    battery_percent: float | None = None
    power_plugged: bool | None = None
    temperature_c: float | None = None

    @property
    def external_cpu_percent(self) -> float | None:
        """System CPU use not caused by this process: the contention others impose."""
        if self.cpu_percent is None or self.process_cpu_percent is None:
            return None
        return max(0.0, self.cpu_percent - self.process_cpu_percent)

    def signal(self, name: str) -> float | None:
        """The named numeric signal as a float, or None when it is not reported."""
        if name not in _SIGNALS:
            raise KeyError(f"unknown resource signal {name!r}; known: {', '.join(_SIGNALS)}")
        value = getattr(self, name)
        return None if value is None else float(value)

    def as_dict(self) -> dict[str, Any]:
        """The reading as a plain dict (JSON-friendly)."""
        return {name: getattr(self, name) for name in ("time", *_SIGNALS, "power_plugged")}


_SIGNALS = (
    "cpu_percent",
    "process_cpu_percent",
    "external_cpu_percent",
    "memory_available_bytes",
    "memory_available_percent",
    "load_per_cpu",
    "battery_percent",
    "temperature_c",
)


class Monitor(Protocol):
    """Anything that hands out the latest resource sample without blocking."""

    def latest(self) -> ResourceSample: ...


def _battery() -> tuple[float | None, bool | None]:
    sensor = getattr(psutil, "sensors_battery", None)
    try:
        battery = sensor() if sensor else None
    except (OSError, RuntimeError):
        battery = None
    if battery is None:
        return None, None
    return float(battery.percent), battery.power_plugged


def _temperature() -> float | None:
    sensor = getattr(psutil, "sensors_temperatures", None)
    try:
        groups = sensor() if sensor else {}
    except (OSError, RuntimeError):
        groups = {}
    readings = [t.current for entries in groups.values() for t in entries
                if t.current is not None and math.isfinite(t.current)]
    return max(readings) if readings else None


def _load_per_cpu(cpus: int) -> float | None:
    try:
        return psutil.getloadavg()[0] / cpus
    except (OSError, AttributeError):
        return None


def read_sample(process: psutil.Process | None = None) -> ResourceSample:
    """Take one reading now. CPU percentages are measured since the previous call
    (psutil's interval=None semantics), so the first call of a process reads 0."""
    cpus = os.cpu_count() or 1
    memory = psutil.virtual_memory()
    battery_percent, plugged = _battery()
    process_cpu = process.cpu_percent(None) / cpus if process is not None else None
    return ResourceSample(
        time=time.monotonic(),
        cpu_percent=psutil.cpu_percent(None),
        process_cpu_percent=process_cpu,
        memory_available_bytes=int(memory.available),
        memory_available_percent=100.0 * memory.available / memory.total,
        load_per_cpu=_load_per_cpu(cpus),
        battery_percent=battery_percent,
        power_plugged=plugged,
        temperature_c=_temperature(),
    )


@dataclass
class ResourceMonitor:
    """Samples the machine every `period_s` seconds in a daemon thread.

    Use as a context manager or call `start()` / `stop()`. `latest()` is safe from any thread
    and costs one attribute read. Before the first sample it returns an empty sample (all
    signals None), which policies treat as "no constraint".
    """

    period_s: float = 0.25
    _latest: ResourceSample = field(default_factory=ResourceSample, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")

    def latest(self) -> ResourceSample:
        return self._latest

    def start(self) -> ResourceMonitor:
        if self._thread is not None:
            return self
        self._stop.clear()
        process = psutil.Process()
        read_sample(process)  # prime the interval-based CPU counters
        self._thread = threading.Thread(target=self._loop, args=(process,),
                                        name="slimrt-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _loop(self, process: psutil.Process) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._latest = read_sample(process)
            except (psutil.Error, OSError):
                continue  # keep the last good sample; the next period tries again

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ManualMonitor:
    """A monitor whose readings are set by the caller: for replaying recorded or scripted
    readings, simulations and tests."""

    def __init__(self, sample: ResourceSample | None = None, **signals: Any) -> None:
        self._latest = replace(sample or ResourceSample(), **signals)

    def latest(self) -> ResourceSample:
        return self._latest

    def set(self, sample: ResourceSample | None = None, **signals: Any) -> None:
        """Replace the reading by `sample`, or update the named signals of the current one."""
        self._latest = replace(sample or self._latest, **signals)
