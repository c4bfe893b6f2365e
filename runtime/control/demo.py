"""A short simulated request stream that shows the controller at work (`slimrt demo`).

Requests arrive open-loop (Poisson) at a fixed rate and run in-process on an
`InferencePool`; the policy (budget by default) picks each one's width. During the middle
third a CPU hog competes for the cores the engine runs on (one busy process pinned to each
CPU of this process's affinity, see stress.py): the live display shows the width falling while
the latency is held to the budget, and rising again after. The stream starts with a line
naming the policy, the budget, the input size, the rate and the hog, and ends with one row
per phase (calm, CPU hog, recovery): the requests, the width chosen (MACs as a share of the
full profile, and the profile chosen most), the tail latency, the share within budget and
the mean slowdown the latency table saw.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .controller import Controller, make_policy
from .latency import calibrate
from .monitors import ResourceMonitor
from .stress import CpuHog

__all__ = ["run_stream_demo", "format_phases"]

SPARK = " ▁▂▃▄▅▆▇█"
MAX_RATE = 500.0
PHASES = ("calm", "contention", "recovery")
PHASE_LABELS = {"calm": "calm", "contention": "CPU hog", "recovery": "recovery"}


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
    chosen = Counter(d.profile for d in ok).most_common(1)
    return {
        "requests": len(items),
        "refused": len(items) - len(ok),
        "within_budget": sum(d.within for d in items) / max(1, len(items)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "avg_width": float(np.mean(width)) if width else float("nan"),
        "full_width_share": sum(d.profile == top for d in ok) / max(1, len(ok)),
        "most_chosen": chosen[0][0] if chosen else None,
        "most_chosen_share": chosen[0][1] / len(ok) if chosen else 0.0,
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
    phase = PHASE_LABELS[_phase(elapsed, seconds)] + (" (on)" if hog.running else "")
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


def _cpus(cpus: Sequence[int | None]) -> str:
    pinned = sorted({c for c in cpus if c is not None})
    return f"pinned to CPU {', '.join(map(str, pinned))}" if pinned else "unpinned"


def describe(result: dict[str, Any]) -> str:
    """The opening line of a stream: policy, budget, input, rate, workers and hog."""
    hog = result["hog"]
    return (f"stream: policy {result['policy']}, budget {result['budget_ms']:.1f} ms per request "
            f"(full width calibrated at {result['full_width_ms']:.2f} ms), input "
            f"{'x'.join(map(str, result['input_shape']))}, {result['rate_rps']:.0f} requests/s "
            f"on {result['workers']} workers; CPU hog from {hog['start_s']:.1f} s to "
            f"{hog['stop_s']:.1f} s: {hog['procs']} busy process"
            f"{'es' if hog['procs'] != 1 else ''} {_cpus(hog['cpus'])} (the engine runs on "
            f"CPU {', '.join(map(str, result['engine_cpus']))})")


def format_phases(result: dict[str, Any]) -> str:
    """One row per phase of a `run_stream_demo` result, as plain text."""
    header = (f"{'phase':<9} {'requests':>8} {'refused':>7} {'width':>5} "
              f"{'chosen most':>12} {'p95 ms':>6} {'in budget':>9} {'slowdown':>8}")
    lines = [header, "-" * len(header)]
    for key in PHASES:
        r = result["phases"][key]
        width = "-" if np.isnan(r["avg_width"]) else f"{100 * r['avg_width']:.0f}%"
        chosen = ("-" if r["most_chosen"] is None
                  else f"{r['most_chosen']} ({100 * r['most_chosen_share']:.0f}%)")
        p95 = "-" if np.isnan(r["p95_ms"]) else f"{r['p95_ms']:.1f}"
        slowdown = r.get("slowdown")
        lines.append(f"{PHASE_LABELS[key]:<9} {r['requests']:>8} {r['refused']:>7} "
                     f"{width:>5} {chosen:>12} {p95:>6} {100 * r['within_budget']:>8.1f}% "
                     f"{'-' if slowdown is None else f'{slowdown:.2f}x':>8}")
    lines.append("width: MACs as a share of the full profile; in budget: answered within")
    lines.append("the budget; slowdown: observed / calibrated latency, mean over the phase")
    return "\n".join(lines)


def run_stream_demo(model: Any, *, seconds: float = 12.0, budget_ms: float | None = None,
                    console: Any = None, policy: str = "budget", load: float = 0.3,
                    hog_procs: int | None = None, seed: int = 0,
                    input_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run a `seconds`-long simulated request stream on `model`, show it live, then print
    one row per phase.

    budget_ms: each request's latency budget (default: 4 x the calibrated full-width mean,
    at least 5 ms); policy: one of POLICY_KINDS ("fixed" runs the largest profile); load:
    arrival rate as a fraction of what the workers sustain at full width without contention
    (at most MAX_RATE requests per second, beyond which Python's own per-request cost would
    dominate); hog_procs: busy-looping processes run during the middle third (default: one
    per CPU the engine may run on, each pinned to its CPU); input_hw: the (H, W) of every
    request (default: the model's); console: the rich Console to draw on (default: a new
    one on stdout).

    Returns a summary: per phase (calm, contention, recovery) the requests, refusals, share
    within budget, p50/p95 latency in ms, average width (MACs as a share of the full
    profile), the profile chosen most and the table's mean slowdown over it; the same
    over the whole stream, and the count of requests per profile.
    """
    from ..serve.pool import InferencePool, default_workers

    names = [p.name for p in model.profiles]
    shape = tuple(model.input_shape) if input_hw is None else (1, model.input_shape[1],
                                                               *input_hw)
    hw = (int(shape[2]), int(shape[3]))
    macs_at = getattr(model, "macs", None)
    macs = {p.name: int(p.macs if input_hw is None or macs_at is None else macs_at(p.name, hw))
            for p in model.profiles}
    full = max(macs.values())
    table = calibrate(model, warmup=1, repeats=5, quantile=0.99, input_hw=input_hw)
    budget = budget_ms or max(5.0, 4.0 * table.base_mean_ms[-1])
    workers = default_workers()
    rate = min(MAX_RATE, load * workers * 1e3 / table.base_mean_ms[-1])
    monitor = ResourceMonitor(period_s=0.25)
    controller = Controller(make_policy(policy, names, table=table, monitor=monitor,
                                        budget_ms=budget), table)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    hog = CpuHog(hog_procs, seconds=seconds / 3)
    result: dict[str, Any] = {
        "model": model.name, "policy": policy, "budget_ms": budget, "rate_rps": rate,
        "seconds": seconds, "workers": workers, "input_shape": list(shape),
        "full_width_ms": table.base_mean_ms[-1], "engine_cpus": hog.cpus,
        "hog": {"start_s": seconds / 3, "stop_s": 2 * seconds / 3, "procs": hog.procs,
                "cpus": hog.pinned},
    }
    out = _console(console)
    _say(out, describe(result))
    stop = threading.Event()
    slowdowns: dict[str, list[float]] = {ph: [] for ph in PHASES}
    with InferencePool(model, controller, workers=workers, queue_size=4 * workers) as pool, \
            monitor:
        pool.warmup(x, names)
        stream = _Stream(pool, x, rate, seconds, budget, seed)
        feeder = threading.Thread(target=stream.run, args=(stop,), name="slimrt-demo-stream",
                                  daemon=True)
        try:
            _drive(feeder, stream, seconds, hog, monitor, controller, macs, full, out,
                   slowdowns)
        finally:
            stop.set()
            hog.stop()
            feeder.join(seconds + 10)
    items = stream.snapshot()
    phases = {ph: _summary([d for d in items if _phase(d.t, seconds) == ph], macs, full)
              for ph in PHASES}
    for ph in PHASES:
        phases[ph]["slowdown"] = float(np.mean(slowdowns[ph])) if slowdowns[ph] else None
    result.update({
        "phases": phases, "overall": _summary(items, macs, full),
        "profiles": {n: sum(d.profile == n for d in items) for n in names},
    })
    _say(out, "\n" + format_phases(result))
    return result


def _console(console: Any) -> Any:
    if console is not None:
        return console
    try:
        from rich.console import Console
    except ImportError:  # plain output without rich
        return None
    return Console()


def _say(console: Any, text: str) -> None:
    if console is None:
        print(text, flush=True)
    else:
        console.print(text, highlight=False, markup=False)


def _drive(feeder: threading.Thread, stream: _Stream, seconds: float, hog: CpuHog,
           monitor: Any, controller: Controller, macs: dict[str, int], full: int,
           console: Any, slowdowns: dict[str, list[float]]) -> None:
    """Start the stream, switch the hog on and off, and refresh the display until done;
    `slowdowns` gets the latency table's slowdown at every refresh, by phase."""
    feeder.start()
    start = time.perf_counter()

    def tick() -> float:
        elapsed = time.perf_counter() - start
        if seconds / 3 <= elapsed < 2 * seconds / 3 and not hog.started:
            hog.start()
        if elapsed >= 2 * seconds / 3:
            hog.stop()
        if controller.table is not None and elapsed < seconds:
            slowdowns[_phase(elapsed, seconds)].append(controller.table.slowdown)
        return elapsed

    if console is None:
        while feeder.is_alive():
            elapsed = tick()
            s = _summary(stream.snapshot(), macs, full)
            print(f"{elapsed:5.1f}s {PHASE_LABELS[_phase(elapsed, seconds)]:10s} width "
                  f"{100 * s['avg_width']:.0f}% in budget {100 * s['within_budget']:.1f}%")
            feeder.join(1.0)
        tick()
        return
    from rich.live import Live

    def view() -> Any:
        return _render(stream, time.perf_counter() - start, seconds, hog, monitor, controller,
                       macs, full)

    with Live(view(), console=console, refresh_per_second=8, transient=False) as live:
        while feeder.is_alive():
            tick()
            live.update(view())
            feeder.join(0.125)
        time.sleep(0.2)
        tick()
        live.update(view())
