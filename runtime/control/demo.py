"""A short simulated request stream that shows the controller at work (`slimrt demo`).

Requests arrive open-loop (Poisson) at a fixed rate and run in-process on an
`InferencePool`; the policy (budget by default) picks each one's width. During the middle
third a CPU hog (a busy process) competes for the machine: the live display shows
the width falling while the latency stays within budget, and rising again after.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .controller import Controller, make_policy
from .latency import calibrate
from .monitors import ResourceMonitor
from .stress import CpuHog

__all__ = ["run_stream_demo"]

SPARK = " ▁▂▃▄▅▆▇█"
MAX_RATE = 500.0
PHASES = ("calm", "contention", "recovery")


@dataclass(frozen=True)
class _Done:
    t: float           # arrival, seconds from the start
    total_ms: float
    profile: str | None  # None: refused (queue full) or failed
    within: bool


class _Stream:
    """Open-loop arrivals submitted to a pool; finished requests are collected."""

    def __init__(self, pool: Any, x: np.ndarray, rate: float, seconds: float, budget_ms: float,
                 seed: int) -> None:
        self.pool, self.x, self.budget_ms = pool, x, budget_ms
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 10)
        self.times = np.cumsum(gaps)
        self.times = self.times[self.times < seconds]
        self.done: list[_Done] = []
        self._lock = threading.Lock()
        self.t0 = 0.0

    def run(self, stop: threading.Event) -> None:
        from ..serve.pool import QueueFullError

        self.t0 = time.perf_counter()
        for t in self.times:
            delay = self.t0 + t - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                return
            try:
                future = self.pool.submit(self.x, budget_ms=self.budget_ms)
            except QueueFullError:
                self._add(_Done(float(t), float("nan"), None, False))
                continue
            future.add_done_callback(lambda f, t=float(t): self._finished(f, t))

    def _finished(self, future: Any, t: float) -> None:
        try:
            r = future.result()
        except Exception:
            self._add(_Done(t, float("nan"), None, False))
            return
        self._add(_Done(t, r.total_ms, r.decision.profile, bool(r.within_budget)))

    def _add(self, item: _Done) -> None:
        with self._lock:
            self.done.append(item)

    def snapshot(self) -> list[_Done]:
        with self._lock:
            return list(self.done)


def _phase(t: float, seconds: float) -> str:
    return PHASES[min(2, int(3 * t / seconds))]


def _summary(items: list[_Done], macs: dict[str, int], full: int) -> dict[str, Any]:
    ok = [d for d in items if d.profile is not None]
    lat = np.array([d.total_ms for d in ok]) if ok else np.array([np.nan])
    width = [macs[d.profile] / full for d in ok if d.profile is not None]
    top = max(macs, key=lambda name: macs[name])
    return {
        "requests": len(items),
        "refused": len(items) - len(ok),
        "within_budget": sum(d.within for d in items) / max(1, len(items)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "avg_width": float(np.mean(width)) if width else float("nan"),
        "full_width_share": sum(d.profile == top for d in ok) / max(1, len(ok)),
    }


def _spark(items: list[_Done], macs: dict[str, int], full: int, seconds: float,
           cells: int = 48) -> str:
    sums = np.zeros(cells)
    counts = np.zeros(cells)
    for d in items:
        if d.profile is not None:
            k = min(cells - 1, int(d.t / seconds * cells))
            sums[k] += macs[d.profile] / full
            counts[k] += 1
    return "".join(SPARK[int(round(s / c * (len(SPARK) - 1)))] if c else " "
                   for s, c in zip(sums, counts))


def _render(stream: _Stream, elapsed: float, seconds: float, hog: CpuHog, monitor: Any,
            controller: Controller, macs: dict[str, int], full: int) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    items = stream.snapshot()
    recent = [d for d in items if d.t >= elapsed - 1.0]
    now = _summary(recent, macs, full)
    total = _summary(items, macs, full)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("phase", "CPU", "slowdown", "width 1s", "p95 1s", "in budget", "requests"):
        table.add_column(col, justify="right")
    sample = monitor.latest()
    cpu = "-" if sample.cpu_percent is None else f"{sample.cpu_percent:.0f}%"
    slowdown = controller.table.slowdown if controller.table is not None else float("nan")
    phase = _phase(elapsed, seconds) + (" (CPU hog on)" if hog.running else "")
    width = "-" if np.isnan(now["avg_width"]) else f"{100 * now['avg_width']:.0f}%"
    p95 = "-" if np.isnan(now["p95_ms"]) else f"{now['p95_ms']:.1f} ms"
    table.add_row(phase, cpu, f"{slowdown:.2f}x", width, p95,
                  f"{100 * total['within_budget']:.1f}%", str(total["requests"]))
    head = Table.grid(padding=(0, 1))
    head.add_row(Text(f"stream {min(elapsed, seconds):4.1f}/{seconds:.0f} s"),
                 ProgressBar(total=seconds, completed=min(elapsed, seconds), width=48))
    head.add_row(Text("width"), Text(_spark(items, macs, full, seconds), style="green"))
    note = Text("width = MACs / full profile; CPU hog in the middle third; 1s = last second",
                style="dim")
    return Group(head, note, table)


def run_stream_demo(model: Any, *, seconds: float = 12.0, budget_ms: float | None = None,
                    console: Any = None, policy: str = "budget", load: float = 0.3,
                    hog_procs: int = 1, seed: int = 0) -> dict[str, Any]:
    """Run a `seconds`-long simulated request stream on `model` and show it live.

    budget_ms: each request's latency budget (default: 4 x the calibrated full-width mean,
    at least 5 ms); policy: one of POLICY_KINDS ("fixed" runs the largest profile); load:
    arrival rate as a fraction of what the workers sustain at full width without contention
    (at most MAX_RATE requests per second, beyond which Python's own per-request cost would
    dominate); hog_procs: busy-looping processes run during the middle third; console: the
    rich Console to draw on (default: a new one on stdout).

    Returns a summary: per phase (calm, contention, recovery) the requests, refusals, share
    within budget, p50/p95 latency in ms and average width (MACs as a share of the full
    profile), the same over the whole stream, and the count of requests per profile.
    """
    from ..serve.pool import InferencePool, default_workers

    names = [p.name for p in model.profiles]
    macs = {p.name: int(p.macs) for p in model.profiles}
    full = max(macs.values())
    table = calibrate(model, warmup=1, repeats=5, quantile=0.99)
    budget = budget_ms or max(5.0, 4.0 * table.base_mean_ms[-1])
    workers = default_workers()
    rate = min(MAX_RATE, load * workers * 1e3 / table.base_mean_ms[-1])
    monitor = ResourceMonitor(period_s=0.25)
    controller = Controller(make_policy(policy, names, table=table, monitor=monitor,
                                        budget_ms=budget), table)
    x = np.random.default_rng(seed).standard_normal(model.input_shape).astype(np.float32)
    hog = CpuHog(hog_procs, seconds=seconds / 3)
    stop = threading.Event()
    with InferencePool(model, controller, workers=workers, queue_size=4 * workers) as pool, \
            monitor:
        pool.warmup(x, names)
        stream = _Stream(pool, x, rate, seconds, budget, seed)
        feeder = threading.Thread(target=stream.run, args=(stop,), name="slimrt-demo-stream",
                                  daemon=True)
        try:
            _drive(feeder, stream, seconds, hog, monitor, controller, macs, full, console)
        finally:
            stop.set()
            hog.stop()
            feeder.join(seconds + 10)
    items = stream.snapshot()
    phases = {ph: _summary([d for d in items if _phase(d.t, seconds) == ph], macs, full)
              for ph in PHASES}
    return {
        "model": model.name, "policy": policy, "budget_ms": budget, "rate_rps": rate,
        "seconds": seconds, "workers": workers,
        "hog": {"start_s": seconds / 3, "stop_s": 2 * seconds / 3, "procs": hog.procs},
        "phases": phases, "overall": _summary(items, macs, full),
        "profiles": {n: sum(d.profile == n for d in items) for n in names},
    }


def _drive(feeder: threading.Thread, stream: _Stream, seconds: float, hog: CpuHog,
           monitor: Any, controller: Controller, macs: dict[str, int], full: int,
           console: Any) -> None:
    """Start the stream, switch the hog on and off, and refresh the display until done."""
    try:
        from rich.console import Console
        from rich.live import Live
        have_rich = True
    except ImportError:  # plain output without rich
        have_rich = False
    feeder.start()
    start = time.perf_counter()

    def tick() -> float:
        elapsed = time.perf_counter() - start
        if seconds / 3 <= elapsed < 2 * seconds / 3 and not hog.started:
            hog.start()
        if elapsed >= 2 * seconds / 3:
            hog.stop()
        return elapsed

    def view() -> Any:
        return _render(stream, time.perf_counter() - start, seconds, hog, monitor, controller,
                       macs, full)

    if not have_rich:
        while feeder.is_alive():
            elapsed = tick()
            s = _summary(stream.snapshot(), macs, full)
            print(f"{elapsed:5.1f}s {_phase(elapsed, seconds):10s} width "
                  f"{100 * s['avg_width']:.0f}% in budget {100 * s['within_budget']:.1f}%")
            feeder.join(1.0)
        return
    with Live(view(), console=console or Console(), refresh_per_second=8,
              transient=False) as live:
        while feeder.is_alive():
            tick()
            live.update(view())
            feeder.join(0.125)
        time.sleep(0.2)
        live.update(view())
