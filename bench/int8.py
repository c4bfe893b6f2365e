"""int8 against float32 in slimrt: latency of every profile, batch 1, and the weights held.

For each zoo model the float32 .slim (cached as for latency.py) is quantized with
``slimrt.quantize`` (the default: dense convs and linears int8, depthwise and first layers
float32; activation scales from random inputs, since the zoo weights are an untrained seeded
initialisation: speed does not depend on them) and cached next to it as ``model-int8.slim``.
One session per precision runs every profile; every (precision, profile) pair runs once per
round in a fresh seeded order (``common.interleaved``), and the table reports medians and
int8/fp32. The int8 model's outputs are compared with the numpy reference of the quantized model
at the cheapest profile (``int8_ref_err``: max |engine - reference| / max |reference|).

    python bench/int8.py [--models mobilenet_v2] [--threads 1] [--rounds 50] [--max-seconds 60]

Writes ``int8.json`` and ``int8.png`` (latency against MACs per precision) to ``--out``.
The targets of issue 13 (int8 against onnxruntime and OpenVINO int8) are not measured here yet.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import common
from common import BenchModel, BusyMonitor, Column, Result, Stats, Timing

DEFAULT_MODELS = ["mobilenet_v2"]
DEFAULT_ROUNDS = 50
DEFAULT_MAX_SECONDS = 60.0
CALIBRATION_SAMPLES = 2


def int8_path(model: BenchModel, rebuild: bool = False) -> Path:
    """The cached int8 model of ``model`` (made on first use)."""
    import slimrt
    from slimrt import format as fmt
    from slimrt.quantization import CalibrationWarning

    path = model.slim_path.with_name("model-int8.slim")
    if rebuild or not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)  # random inputs on purpose (module docstring)
            q = slimrt.quantize(model.slim_path, None, samples=CALIBRATION_SAMPLES, batch_size=1)
        tmp = path.with_suffix(".tmp")
        fmt.write(q, tmp)
        tmp.replace(path)
    return path


def measure_model(model: BenchModel, threads: int, timing: Timing, rebuild: bool = False) -> list[dict[str, Any]]:
    import slimrt
    from slimrt import format as fmt
    from slimrt.reference import run_reference

    path = int8_path(model, rebuild)
    fp32, int8 = model.load(), slimrt.load(path)
    sessions = {"fp32": fp32.session(threads), "int8": int8.session(threads)}
    x = model.input(timing.seed)
    cheapest = model.profiles[0].name
    want = run_reference(fmt.read(path), x, cheapest)
    ref_err = float(np.abs(sessions["int8"].run(x, cheapest) - want).max() / max(np.abs(want).max(), 1e-12))
    tasks = {(prec, p.name): (lambda s=s, name=p.name: s.run(x, name))
             for prec, s in sessions.items() for p in model.profiles}
    with BusyMonitor() as busy:
        samples = timing.sample(tasks, threads)
    stats = {k: Stats.of(v) for k, v in samples.items()}
    rows = []
    for p in model.profiles:
        a, b = stats["fp32", p.name].median_ms, stats["int8", p.name].median_ms
        rows.append({
            "model": model.name, "threads": threads, "profile": p.name, "macs": p.macs,
            "fp32_ms": a, "int8_ms": b, "int8_over_fp32": b / a,
            "stats": {prec: asdict(stats[prec, p.name]) for prec in sessions},
            "samples_ms": {prec: [round(s * 1e3, 4) for s in samples[prec, p.name]] for prec in sessions},
            "fp32_weight_bytes": fp32.weight_bytes, "int8_weight_bytes": int8.weight_bytes,
            "fp32_file_bytes": model.slim_path.stat().st_size, "int8_file_bytes": path.stat().st_size,
            "int8_ref_err": ref_err if p.name == cheapest else None, "others_cores": busy.others_cores,
        })
    return rows


def run(models: Sequence[BenchModel], threads: Sequence[int], timing: Timing, rebuild: bool = False,
        log: Any = None) -> Result:
    result = Result("int8", common.machine_info(list(threads)),
                    {"timing": asdict(timing), "threads": list(threads), "models": [m.describe() for m in models],
                     "quantization": {"calibration": "random", "samples": CALIBRATION_SAMPLES,
                                      "int8": "dense convs and linears (slimrt.quantize defaults)"}})
    import slimrt._core as core

    result.machine["slimrt_int8_isa"] = core.i8_isa()
    for model in models:
        for t in threads:
            if log:
                log(f"int8: {model.name}, {t} thread(s), up to {timing.rounds} rounds")
            result.rows += measure_model(model, t, timing, rebuild)
    return result


COLUMNS = [
    Column("model", "model", align="<"), Column("threads", "T"), Column("profile", "profile"),
    Column("macs", "MMACs", "{:.0f}"), Column("fp32_ms", "fp32 ms", "{:.2f}"), Column("int8_ms", "int8 ms", "{:.2f}"),
    Column("int8_over_fp32", "int8/fp32", "{:.2f}"), Column("int8_ref_err", "int8 vs ref", "{:.1e}"),
    Column("rounds", "n"), Column("others_cores", "busy", "{:.1f}"),
]


def table(result: Result) -> str:
    rows = [{**r, "macs": r["macs"] / 1e6, "rounds": min(v["n"] for v in r["stats"].values())} for r in result.rows]
    sizes = {r["model"]: r for r in result.rows}
    foot = "".join(
        f"\n{name}: weights held {r['int8_weight_bytes'] / 1e6:.2f} MB int8 vs {r['fp32_weight_bytes'] / 1e6:.2f} MB "
        f"fp32 ({r['int8_weight_bytes'] / r['fp32_weight_bytes']:.2f}x); file {r['int8_file_bytes'] / 1e6:.2f} vs "
        f"{r['fp32_file_bytes'] / 1e6:.2f} MB ({r['int8_file_bytes'] / r['fp32_file_bytes']:.2f}x)"
        for name, r in sizes.items())
    title = (f"slimrt int8 vs fp32, medians of interleaved rounds (n), batch 1; int8 kernels "
             f"[{result.machine.get('slimrt_int8_isa')}]; busy = other processes' CPU use (cores)\n"
             f"{common.machine_line(result.machine)}")
    return common.format_table(rows, COLUMNS, title) + foot


def plot(result: Result, path: Path) -> Path:
    models = list(dict.fromkeys(r["model"] for r in result.rows))
    fig, axes = common.figure(ncols=len(models), size=(4.6, 4.0))
    for ax, name in zip(axes[0], models):
        rows = [r for r in result.rows if r["model"] == name]
        for t in sorted({r["threads"] for r in rows}):
            sub = [r for r in rows if r["threads"] == t]
            for prec, color in (("fp32", "tab:blue"), ("int8", "tab:red")):
                ax.plot([r["macs"] / 1e9 for r in sub], [r[f"{prec}_ms"] for r in sub], marker="o", color=color,
                        linestyle="-" if t == 1 else "--", label=f"slimrt {prec}, {t}T")
        ax.set_title(name)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"int8 vs fp32 ({result.machine['cpu']})", fontsize=9)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, DEFAULT_ROUNDS, DEFAULT_MAX_SECONDS)
    parser.set_defaults(models=DEFAULT_MODELS, threads=[1])
    args = parser.parse_args(argv)
    models = common.prepare_models(args.models, args.rebuild_cache, common.log)
    result = run(models, args.threads, common.Timing.from_args(args), args.rebuild_cache, common.log)
    return common.publish(table(result), common.write_result("int8", result, plot, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
