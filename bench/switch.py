"""The cost of changing profile between consecutive runs on one slimrt session, next to what
changing width costs onnxruntime (creating a session for the other width's model).

For every profile p, on one slimrt session at each thread count, two kinds of timed run are
interleaved round by round in a seeded random order:

* fixed: the untimed run just before the timed one used p too;
* switched: the untimed run just before used another profile (rotating through all others).

The two run back to back in each round (in a random order), so the overhead is the median of
the paired differences ``switched - fixed``, with a seeded bootstrap 95% confidence interval:
pairing cancels the slow drifts of a shared machine that would swamp a difference of medians.
The issue's target is that switching adds under 2% or under 20 us to a run (PASS/FAIL column,
on the point estimate; read it with the interval). Next to it: the median time to create an
onnxruntime session from each profile's ONNX file (the price of changing width by reloading),
its first run after creation, and the time slimrt takes to load the whole model once.

    python bench/switch.py [--models resnet18] [--threads 1,2] [--rounds 50] [--create-repeats 5]

Writes ``switch.json`` and ``switch.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import common
from common import BenchModel, BusyMonitor, Column, Result, Timing

DEFAULT_ROUNDS = 50
DEFAULT_MAX_SECONDS = 15.0  # per model and thread count
DEFAULT_CREATE_REPEATS = 5
TARGET_PCT = 2.0
TARGET_US = 20.0
KINDS = ("fixed", "switched")


def switch_samples(model: BenchModel, threads: int, timing: Timing) -> dict[tuple[str, str], list[float]]:
    """Seconds of each timed run, keyed by ("fixed" | "switched", profile name); the two lists of
    a profile are paired: their i-th entries ran back to back.

    Each round visits the profiles in an order drawn from ``timing.seed`` and times, for each,
    one fixed and one switched run next to each other (which comes first is drawn too). The
    profile run before a switched one rotates through the other profiles round by round.
    """
    names = [p.name for p in model.profiles]
    if len(names) < 2:
        raise ValueError(f"{model.name} has one profile; switching needs at least two")
    session = model.load().session(threads)
    x = model.input(timing.seed)
    order = random.Random(timing.seed)
    samples: dict[tuple[str, str], list[float]] = {(k, p): [] for k in KINDS for p in names}
    visit = list(range(len(names)))
    start = time.monotonic()
    for r in range(timing.warmup + timing.rounds):
        order.shuffle(visit)
        for i in visit:
            other = names[(i + 1 + r % (len(names) - 1)) % len(names)]
            for kind in order.sample(KINDS, len(KINDS)):
                session.run(x, names[i] if kind == "fixed" else other)
                elapsed = common.time_call(lambda: session.run(x, names[i]))
                if r >= timing.warmup:
                    samples[kind, names[i]].append(elapsed)
        done = r + 1 - timing.warmup
        if timing.max_seconds is not None and done >= timing.min_rounds and \
                time.monotonic() - start > timing.max_seconds:
            break
    return samples


def median_ci(values: Sequence[float], seed: int, level: float = 0.95, resamples: int = 2000
              ) -> tuple[float, float, float]:
    """Median of ``values`` and its bootstrap confidence interval (seeded percentile bootstrap)."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(np.median(data)), float(lo), float(hi)


def ort_creation(model: BenchModel, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds to create an onnxruntime session per profile, and of its first run."""
    x = model.input(0)
    out: dict[str, dict[str, float]] = {}
    for p in model.profiles:
        create, first = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session = common.ort_session(model.onnx_paths[p.name], threads)
            t1 = time.perf_counter()
            common.ort_runner(session, x)()
            t2 = time.perf_counter()
            create.append((t1 - t0) * 1e3)
            first.append((t2 - t1) * 1e3)
            del session
        out[p.name] = {"create_ms": statistics.median(create), "first_run_ms": statistics.median(first)}
    return out


def slimrt_load_ms(model: BenchModel, repeats: int) -> float:
    """Median milliseconds to load the .slim file (every profile) and create a session."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.load().session(1)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_model(model: BenchModel, threads: int, timing: Timing, create_repeats: int) -> list[dict[str, Any]]:
    """One row per profile: fixed and switched medians, overhead, verdict, onnxruntime creation."""
    with BusyMonitor() as busy:
        samples = switch_samples(model, threads, timing)
    creation = ort_creation(model, threads, create_repeats) if create_repeats > 0 else {}
    load_ms = slimrt_load_ms(model, max(create_repeats, 1))
    rows = []
    for p in model.profiles:
        fixed = common.Stats.of(samples["fixed", p.name])
        switched = common.Stats.of(samples["switched", p.name])
        diffs_us = [(b - a) * 1e6 for a, b in zip(samples["fixed", p.name], samples["switched", p.name])]
        overhead_us, lo_us, hi_us = median_ci(diffs_us, timing.seed)
        overhead_pct = 100.0 * overhead_us / (fixed.median_ms * 1e3)
        rows.append({
            "model": model.name, "threads": threads, "profile": p.name, "macs": p.macs,
            "fixed_ms": fixed.median_ms, "switched_ms": switched.median_ms,
            "overhead_us": overhead_us, "overhead_ci95_us": [lo_us, hi_us], "overhead_pct": overhead_pct,
            "ci": f"[{lo_us:+.0f}, {hi_us:+.0f}]",
            "switch_ok": overhead_pct < TARGET_PCT or overhead_us < TARGET_US,
            "rounds": fixed.n, "stats": {"fixed": asdict(fixed), "switched": asdict(switched)},
            "ort_create_ms": creation.get(p.name, {}).get("create_ms"),
            "ort_first_run_ms": creation.get(p.name, {}).get("first_run_ms"),
            "slimrt_load_ms": load_ms, "others_cores": busy.others_cores,
        })
    return rows


def run(models: Sequence[BenchModel], threads: Sequence[int], timing: Timing,
        create_repeats: int = DEFAULT_CREATE_REPEATS, log: Callable[[str], None] | None = None) -> Result:
    """The switch benchmark over ``models`` x ``threads``; see the module docstring."""
    result = Result("switch", common.machine_info(list(threads)),
                    {"timing": asdict(timing), "threads": list(threads), "create_repeats": create_repeats,
                     "target": {"pct": TARGET_PCT, "us": TARGET_US},
                     "models": [m.describe() for m in models]})
    for model in models:
        for t in threads:
            if log:
                log(f"switch: {model.name}, {t} thread(s), up to {timing.rounds} rounds")
            result.rows += measure_model(model, t, timing, create_repeats)
    values = [r["switch_ok"] for r in result.rows]
    result.extra["summary"] = {"switch_ok": all(values) if values else None}
    return result


COLUMNS = [
    Column("model", "model", align="<"), Column("threads", "T"), Column("profile", "profile"),
    Column("fixed_ms", "fixed ms", "{:.3f}"), Column("switched_ms", "switched ms", "{:.3f}"),
    Column("overhead_us", "overhead us", "{:+.1f}"), Column("ci", "95% CI us"),
    Column("overhead_pct", "overhead %", "{:+.2f}"),
    Column("switch_ok", "<2% or <20us"), Column("ort_create_ms", "ort create ms", "{:.1f}"),
    Column("ort_first_run_ms", "ort 1st run ms", "{:.2f}"), Column("slimrt_load_ms", "slimrt load ms", "{:.1f}"),
    Column("rounds", "n"), Column("others_cores", "busy", "{:.1f}"),
]


def table(result: Result) -> str:
    title = ("switch: median latency when the previous run used the same profile (fixed) or another "
             "(switched), on one slimrt session;\nonnxruntime session creation per width, slimrt load of "
             f"the whole model; busy = other processes' CPU use (cores)\n{common.machine_line(result.machine)}")
    s = result.extra.get("summary", {})
    return (common.format_table(result.rows, COLUMNS, title)
            + f"\nswitching adds < 2% or < 20 us everywhere: {common.verdict(s.get('switch_ok'))}")


def plot(result: Result, path: Path) -> Path:
    """Per model and thread count: switching overhead (us) per profile, and onnxruntime creation (ms)."""
    fig, axes = common.figure(ncols=2, size=(5.5, 4.0))
    keys = list(dict.fromkeys((r["model"], r["threads"]) for r in result.rows))
    width = 0.8 / max(len(keys), 1)
    for k, (name, t) in enumerate(keys):
        rows = [r for r in result.rows if (r["model"], r["threads"]) == (name, t)]
        xs = [i + k * width for i in range(len(rows))]
        axes[0][0].bar(xs, [r["overhead_us"] for r in rows], width, label=f"{name}, {t}T")
        if rows[0]["ort_create_ms"] is not None:
            axes[0][1].bar(xs, [r["ort_create_ms"] for r in rows], width, label=f"{name}, {t}T")
    profiles = list(dict.fromkeys(r["profile"] for r in result.rows))
    for ax, label in zip(axes[0], ("slimrt switch overhead (us)", "onnxruntime session creation (ms)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(profiles))], profiles)
        ax.set_xlabel("profile")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    axes[0][0].axhline(TARGET_US, color="red", linewidth=0.8)
    fig.suptitle(f"changing width ({result.machine['cpu']})", fontsize=9)
    return common.save_figure(fig, path)


def write(result: Result, out: Path) -> tuple[Path, Path]:
    return common.write_result("switch", result, plot, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, DEFAULT_ROUNDS, DEFAULT_MAX_SECONDS)
    parser.add_argument("--create-repeats", type=int, default=DEFAULT_CREATE_REPEATS,
                        help=f"onnxruntime sessions created per width (default: {DEFAULT_CREATE_REPEATS})")
    args = parser.parse_args(argv)
    models = common.prepare_models(args.models, args.rebuild_cache, common.log)
    result = run(models, args.threads, Timing.from_args(args), args.create_repeats, common.log)
    return common.publish(table(result), write(result, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
