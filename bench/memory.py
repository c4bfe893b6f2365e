"""Peak memory of serving every width: slimrt holding all profiles in one model against
onnxruntime holding one session per profile, and onnxruntime holding the full model only.

Each case runs in a fresh Python subprocess that imports only what it needs (numpy and slimrt,
or numpy and onnxruntime), loads the model(s), runs every held profile once on the default
input, then reads its peak resident set size (VmHWM in /proc/self/status):

* ``slimrt_all``: one slimrt model and session, every profile run once;
* ``ort_all``: one onnxruntime session per profile (pruned ONNX files), each run once;
* ``ort_full``: one onnxruntime session of the full-width model, run once;
* ``slimrt_base`` / ``ort_base``: the same imports with no model, to separate the
  interpreter and library footprint from the model's (the ``net`` figures).

The issue's target, as a PASS/FAIL column: peak RSS of ``slimrt_all`` <= 1.15 x ``ort_full``.
Figures are also given against the weight bytes (fp32 parameters of the full model).

    python bench/memory.py [--models resnet18] [--repeats 1]

Writes ``memory.json`` and ``memory.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import common
from common import BenchModel, Column, Result

CASES = ("slimrt_base", "slimrt_all", "ort_base", "ort_all", "ort_full")
TARGET_RATIO = 1.15
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The child process
# ---------------------------------------------------------------------------------------------

def read_status_kb(field: str) -> int:
    """A kB field of /proc/self/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; the memory benchmark needs Linux")


def child(case: str, slim: str, onnx: Sequence[str], shape: Sequence[int], threads: int) -> dict[str, Any]:
    """Hold and run what ``case`` says, then report VmHWM / VmRSS in bytes."""
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    held: list[Any] = []
    if case.startswith("slimrt"):
        import slimrt

        if case == "slimrt_all":
            model = slimrt.load(slim)
            session = model.session(threads)
            for p in model.profiles:
                session.run(x, p.name)
            held += [model, session]
    else:
        import onnxruntime as ort

        paths = {"ort_base": [], "ort_all": list(onnx), "ort_full": list(onnx[-1:])}[case]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for path in paths:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            session.run(None, {session.get_inputs()[0].name: x})
            held.append(session)
    rss = read_status_kb("VmRSS") * 1024
    # The kernel folds the current RSS into VmHWM lazily; the peak is at least the current RSS.
    return {"case": case, "held": len(held), "peak_rss": max(read_status_kb("VmHWM") * 1024, rss), "rss": rss}


def spawn(case: str, model: BenchModel, threads: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter; returns its report."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--slim", str(model.slim_path),
           "--shape", ",".join(map(str, model.input_shape)), "--child-threads", str(threads),
           "--onnx", *[str(model.onnx_paths[p.name]) for p in model.profiles]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory case {case} of {model.name} failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def measure_model(model: BenchModel, threads: int = 1, repeats: int = 1) -> dict[str, Any]:
    """One row: median peak RSS of every case over ``repeats`` fresh processes, net figures, ratios;
    ``<case>_rss_after_mb`` is the RSS at the end (below the peak when loading needed a transient copy)."""
    reports = {c: [spawn(c, model, threads) for _ in range(repeats)] for c in CASES}
    peak = {c: statistics.median(r["peak_rss"] for r in reports[c]) for c in CASES}
    rss = {c: statistics.median(r["rss"] for r in reports[c]) for c in CASES}
    weights = 4 * model.full.params
    row: dict[str, Any] = {"model": model.name, "threads": threads, "repeats": repeats,
                           "weight_bytes": weights, "slimrt_weight_bytes": model.weight_bytes}
    for c in CASES:
        row[f"{c}_mb"] = peak[c] / MB
        row[f"{c}_rss_after_mb"] = rss[c] / MB
    for c, base in (("slimrt_all", "slimrt_base"), ("ort_all", "ort_base"), ("ort_full", "ort_base")):
        row[f"{c}_net_mb"] = (peak[c] - peak[base]) / MB
        row[f"{c}_net_over_weights"] = (peak[c] - peak[base]) / weights
    row["slimrt_all_over_ort_full"] = peak["slimrt_all"] / peak["ort_full"]
    row["ort_all_over_ort_full"] = peak["ort_all"] / peak["ort_full"]
    row["net_slimrt_all_over_ort_full"] = row["slimrt_all_net_mb"] / row["ort_full_net_mb"]
    row["memory_ok"] = row["slimrt_all_over_ort_full"] <= TARGET_RATIO
    return row


def run(models: Sequence[BenchModel], threads: int = 1, repeats: int = 1,
        log: Callable[[str], None] | None = None) -> Result:
    """The memory benchmark; one row per model."""
    result = Result("memory", common.machine_info(threads),
                    {"threads": threads, "repeats": repeats, "cases": list(CASES), "target_ratio": TARGET_RATIO,
                     "models": [m.describe() for m in models]})
    for model in models:
        if log:
            log(f"memory: {model.name}, {len(CASES)} cases x {repeats} process(es)")
        result.rows.append(measure_model(model, threads, repeats))
    values = [r["memory_ok"] for r in result.rows]
    result.extra["summary"] = {"memory_ok": all(values) if values else None}
    return result


COLUMNS = [
    Column("model", "model", align="<"), Column("weight_mb", "weights MB", "{:.1f}"),
    Column("slimrt_all_mb", "slimrt all MB", "{:.1f}"), Column("ort_all_mb", "ort all MB", "{:.1f}"),
    Column("ort_full_mb", "ort full MB", "{:.1f}"), Column("slimrt_all_rss_after_mb", "slimrt all end MB", "{:.1f}"),
    Column("slimrt_all_over_ort_full", "slimrt all/ort full", "{:.2f}"), Column("memory_ok", "<=1.15"),
    Column("ort_all_over_ort_full", "ort all/ort full", "{:.2f}"),
    Column("slimrt_all_net_mb", "net slimrt all", "{:.1f}"), Column("ort_all_net_mb", "net ort all", "{:.1f}"),
    Column("ort_full_net_mb", "net ort full", "{:.1f}"),
    Column("slimrt_all_net_over_weights", "net slimrt/weights", "{:.2f}"),
    Column("ort_all_net_over_weights", "net ort all/weights", "{:.2f}"),
    Column("ort_full_net_over_weights", "net ort full/weights", "{:.2f}"),
]


def table(result: Result) -> str:
    rows = [{**r, "weight_mb": r["weight_bytes"] / MB} for r in result.rows]
    title = ("memory: peak RSS (VmHWM) of a fresh process holding and having run the profiles; net = minus "
             "the same imports without a model;\nweights = fp32 parameters of the full model\n"
             f"{common.machine_line(result.machine)}")
    s = result.extra.get("summary", {})
    return (common.format_table(rows, COLUMNS, title)
            + f"\nslimrt holding all profiles <= 1.15 x onnxruntime full model: {common.verdict(s.get('memory_ok'))}")


def plot(result: Result, path: Path) -> Path:
    """Peak RSS per model and case, with the imports-only baselines."""
    fig, axes = common.figure(size=(6.5, 4.0))
    ax = axes[0][0]
    cases = ("slimrt_base", "slimrt_all", "ort_base", "ort_full", "ort_all")
    width = 0.8 / len(cases)
    for k, case in enumerate(cases):
        ax.bar([i + k * width for i in range(len(result.rows))], [r[f"{case}_mb"] for r in result.rows],
               width, label=case)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(result.rows))], [r["model"] for r in result.rows])
    ax.set_ylabel("peak RSS (MB)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(f"peak memory ({result.machine['cpu']})", fontsize=9)
    return common.save_figure(fig, path)


def write(result: Result, out: Path) -> tuple[Path, Path]:
    return common.write_result("memory", result, plot, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=common.name_list, default=list(common.ZOO_MODELS))
    parser.add_argument("--threads", type=int, default=1, help="threads of every session (default: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per case (default: 1)")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    parser.add_argument("--rebuild-cache", action="store_true")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--slim", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=common.int_list, help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.slim, args.onnx, args.shape, args.child_threads)))
        return 0
    models = common.prepare_models(args.models, args.rebuild_cache, common.log)
    result = run(models, args.threads, args.repeats, common.log)
    return common.publish(table(result), write(result, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
