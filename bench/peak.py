"""The hardware limit and how close each profile gets to it.

* sgemm: numpy's BLAS (OpenBLAS in the PyPI wheels) multiplies two square float32 matrices of
  ``--size`` (default 2048) in a fresh subprocess whose BLAS threads are set through
  ``OPENBLAS_NUM_THREADS`` (and ``OMP_NUM_THREADS``), once per thread count; GFLOP/s =
  2 n^3 / time, median and best of ``--sgemm-repeats`` calls after warm-up.
* profiles: the GFLOP/s each profile of each model reaches, ``2 * MACs / median latency``, for
  slimrt and onnxruntime, as a fraction of the sgemm figure at the same thread count. The
  latencies come from a latency benchmark: ``run_all`` passes its own; run alone, this module
  measures slimrt and onnxruntime itself (``--rounds``), or reads ``--latency-json``.

The issue's target: ResNet-50 at full width with one thread reaches >= 85% of the single-thread
sgemm GFLOP/s measured in the same run. It is judged side by side: one fresh single-thread
process alternates sgemm calls and slimrt ResNet-50 runs (``--target-rounds`` each) and compares
their medians, since the machine's speed drifts by tens of percent between the moments two
separate measurements are taken. Without ResNet-50 among the models, the column on its latency
row compares the latency benchmark's figure with the sgemm one instead.

    python bench/peak.py [--size 2048] [--latency-json bench/results/latency.json]

Writes ``peak.json`` and ``peak.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import common
from common import Column, Result, Timing

DEFAULT_SIZE = 2048
DEFAULT_REPEATS = 8
DEFAULT_ROUNDS = 20
DEFAULT_MAX_SECONDS = 15.0
DEFAULT_TARGET_ROUNDS = 8
TARGET_MODEL, TARGET_PROFILE, TARGET_THREADS, TARGET_FRACTION = "resnet50", "1.0", 1, 0.85


def sgemm_child(size: int, repeats: int) -> dict[str, Any]:
    """Time ``repeats`` float32 ``size`` x ``size`` products after two warm-up calls."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty((size, size), dtype=np.float32)
    for _ in range(2):
        np.matmul(a, b, out=c)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        seconds.append(time.perf_counter() - start)
    flop = 2.0 * size**3
    return {"size": size, "seconds": seconds, "gflops_median": flop / float(np.median(seconds)) / 1e9,
            "gflops_best": flop / min(seconds) / 1e9, **openblas_runtime()}


def side_by_side_child(slim_path: str, profile: str, size: int, rounds: int) -> dict[str, Any]:
    """Alternate one sgemm call and one slimrt run (one thread each), ``rounds`` times after a
    warm-up of each; medians and GFLOP/s of both, and slimrt's as a fraction of sgemm's."""
    import slimrt

    model = slimrt.load(slim_path)
    session = model.session(1)
    info = model.profile(profile)
    x = np.random.default_rng(0).standard_normal(tuple(model.input_shape), dtype=np.float32)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty((size, size), dtype=np.float32)
    gemm, run = [], []
    for r in range(rounds + 1):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        mid = time.perf_counter()
        session.run(x, profile)
        end = time.perf_counter()
        if r:  # the first round warms both up
            gemm.append(mid - start)
            run.append(end - mid)
    sgemm_gflops = 2.0 * size**3 / float(np.median(gemm)) / 1e9
    slimrt_gflops = 2.0 * info.macs / float(np.median(run)) / 1e9
    return {"size": size, "rounds": rounds, "profile": profile, "macs": info.macs,
            "sgemm_seconds": gemm, "slimrt_seconds": run, "sgemm_gflops": sgemm_gflops,
            "slimrt_gflops": slimrt_gflops, "fraction": slimrt_gflops / sgemm_gflops, **openblas_runtime()}


def side_by_side(model: common.BenchModel, profile: str | None = None, size: int = DEFAULT_SIZE,
                 rounds: int = DEFAULT_TARGET_ROUNDS) -> dict[str, Any]:
    """:func:`side_by_side_child` in a fresh process with one BLAS thread, for ``model`` at
    ``profile`` (default: full width)."""
    profile = profile or model.full.name
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side-by-side", str(model.slim_path), profile,
           "--size", str(size), "--target-rounds", str(rounds)]
    with common.BusyMonitor() as busy:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"side-by-side sgemm / slimrt run failed (exit {proc.returncode}):\n{proc.stderr}")
    return {"model": model.name, **json.loads(proc.stdout.strip().splitlines()[-1]),
            "others_cores": busy.others_cores}


def openblas_runtime() -> dict[str, Any]:
    """The kernel family ("core") and thread count OpenBLAS runs with in this process, read from
    the loaded library; empty when numpy's BLAS is not OpenBLAS."""
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return {}
    paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    for path in paths:
        lib = ctypes.CDLL(path)
        info: dict[str, Any] = {"blas_library": path}
        for key, names, restype in (
                ("blas_core", ("openblas_get_corename", "scipy_openblas_get_corename64_",
                               "scipy_openblas_get_corename"), ctypes.c_char_p),
                ("blas_threads", ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                                  "scipy_openblas_get_num_threads"), ctypes.c_int)):
            for name in names:
                if hasattr(lib, name):
                    fn = getattr(lib, name)
                    fn.restype = restype
                    value = fn()
                    info[key] = value.decode() if isinstance(value, bytes) else value
                    break
        if "blas_core" in info:
            return info
    return {}


def sgemm(threads: int, size: int = DEFAULT_SIZE, repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """sgemm GFLOP/s with ``threads`` BLAS threads, measured in a fresh subprocess."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--size", str(size),
           "--sgemm-repeats", str(repeats)]
    with common.BusyMonitor() as busy:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"sgemm with {threads} thread(s) failed (exit {proc.returncode}):\n{proc.stderr}")
    return {"threads": threads, **json.loads(proc.stdout.strip().splitlines()[-1]),
            "others_cores": busy.others_cores}


def profile_rows(latency_rows: Sequence[Mapping[str, Any]], peaks: Mapping[int, float]) -> list[dict[str, Any]]:
    """GFLOP/s of every latency row (slimrt and, where measured, onnxruntime) against ``peaks``,
    the sgemm GFLOP/s per thread count (1-thread peak also as the common yardstick)."""
    rows = []
    for r in latency_rows:
        t = r["threads"]
        row: dict[str, Any] = {"model": r["model"], "threads": t, "profile": r["profile"], "macs": r["macs"],
                               "sgemm_gflops": peaks.get(t)}
        for rt in ("slimrt", "onnxruntime"):
            ms = r.get(f"{rt}_ms")
            if ms is None:
                continue
            row[f"{rt}_ms"] = ms
            row[f"{rt}_gflops"] = 2.0 * r["macs"] / (ms * 1e-3) / 1e9
            if peaks.get(t):
                row[f"{rt}_of_sgemm"] = row[f"{rt}_gflops"] / peaks[t]
        target = (r["model"], r["profile"], t) == (TARGET_MODEL, TARGET_PROFILE, TARGET_THREADS)
        if target and "slimrt_gflops" in row and peaks.get(1):
            row["target_fraction"] = TARGET_FRACTION
            row["peak_ok"] = row["slimrt_gflops"] >= TARGET_FRACTION * peaks[1]
        rows.append(row)
    return rows


def run(threads: Sequence[int], latency_rows: Sequence[Mapping[str, Any]], size: int = DEFAULT_SIZE,
        repeats: int = DEFAULT_REPEATS, log: Callable[[str], None] | None = None,
        target: common.BenchModel | None = None, target_rounds: int = DEFAULT_TARGET_ROUNDS) -> Result:
    """sgemm at every thread count, then the per-profile GFLOP/s of ``latency_rows``; with
    ``target`` (the issue's model), the target judged side by side (:func:`side_by_side`)."""
    sgemms = []
    for t in threads:
        if log:
            log(f"peak: sgemm {size}x{size}, {t} thread(s)")
        sgemms.append(sgemm(t, size, repeats))
    peaks = {s["threads"]: s["gflops_median"] for s in sgemms}
    result = Result("peak", common.machine_info(list(threads)),
                    {"size": size, "repeats": repeats, "threads": list(threads),
                     "target": {"model": TARGET_MODEL, "profile": TARGET_PROFILE, "threads": TARGET_THREADS,
                                "fraction_of_1thread_sgemm": TARGET_FRACTION}},
                    rows=profile_rows(latency_rows, peaks), extra={"sgemm": sgemms})
    verdicts = [r["peak_ok"] for r in result.rows if "peak_ok" in r]
    result.extra["summary"] = {"peak_ok": verdicts[0] if verdicts else None}
    if target is not None:
        if log:
            log(f"peak: {target.name} {target.full.name} and sgemm {size}x{size} side by side, 1 thread")
        sbs = side_by_side(target, None, size, target_rounds)
        result.extra["side_by_side"] = sbs
        result.extra["summary"] = {"peak_ok": sbs["fraction"] >= TARGET_FRACTION, "fraction": sbs["fraction"],
                                   "side_by_side": True}
    return result


SGEMM_COLUMNS = [Column("threads", "threads asked"), Column("blas_threads", "OpenBLAS threads"),
                 Column("blas_core", "OpenBLAS core"), Column("size", "n"),
                 Column("gflops_median", "sgemm GFLOP/s (median)", "{:.1f}"),
                 Column("gflops_best", "best", "{:.1f}"), Column("others_cores", "busy", "{:.1f}")]
COLUMNS = [
    Column("model", "model", align="<"), Column("threads", "T"), Column("profile", "profile"),
    Column("gmacs", "GMACs", "{:.3f}"), Column("slimrt_ms", "slimrt ms", "{:.2f}"),
    Column("slimrt_gflops", "slimrt GFLOP/s", "{:.1f}"), Column("slimrt_of_sgemm", "of sgemm(T)", "{:.0%}"),
    Column("onnxruntime_gflops", "ort GFLOP/s", "{:.1f}"), Column("onnxruntime_of_sgemm", "ort of sgemm(T)", "{:.0%}"),
    Column("peak_ok", ">=85% of sgemm(1)"),
]


def table(result: Result) -> str:
    blas = result.machine.get("blas", {})
    head = common.format_table(result.extra["sgemm"], SGEMM_COLUMNS,
                               f"peak: sgemm of numpy's BLAS ({blas.get('name')} {blas.get('version')}), "
                               f"fresh process per thread count\n{common.machine_line(result.machine)}")
    rows = [{**r, "gmacs": r["macs"] / 1e9} for r in result.rows]
    body = common.format_table(rows, COLUMNS, "GFLOP/s per profile = 2 x MACs / median latency")
    s = result.extra.get("summary", {})
    text = f"{head}\n\n{body}\n"
    sbs = result.extra.get("side_by_side")
    if sbs:
        text += (f"side by side in one 1-thread process ({sbs['rounds']} alternating rounds): sgemm "
                 f"{sbs['sgemm_gflops']:.1f} GFLOP/s, slimrt {sbs['model']} {sbs['profile']} "
                 f"{sbs['slimrt_gflops']:.1f} GFLOP/s = {sbs['fraction']:.0%}\n")
    return text + f"ResNet-50 at 1.0, 1 thread >= 85% of 1-thread sgemm: {common.verdict(s.get('peak_ok'))}"


def plot(result: Result, path: Path) -> Path:
    """GFLOP/s against MACs per model and thread count, with the sgemm figure as a line."""
    fig, axes = common.figure(ncols=len(result.extra["sgemm"]), size=(5.0, 4.0))
    for ax, s in zip(axes[0], result.extra["sgemm"]):
        t = s["threads"]
        for name in dict.fromkeys(r["model"] for r in result.rows):
            rows = [r for r in result.rows if r["model"] == name and r["threads"] == t and "slimrt_gflops" in r]
            if rows:
                ax.plot([r["macs"] / 1e9 for r in rows], [r["slimrt_gflops"] for r in rows], marker="o",
                        label=f"slimrt {name}")
            ort = [r for r in rows if "onnxruntime_gflops" in r]
            if ort:
                ax.plot([r["macs"] / 1e9 for r in ort], [r["onnxruntime_gflops"] for r in ort], marker="s",
                        linestyle=":", label=f"ort {name}")
        ax.axhline(s["gflops_median"], color="red", linewidth=0.8, label=f"sgemm {t}T")
        ax.set_xscale("log")
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{t} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"achieved GFLOP/s vs sgemm ({result.machine['cpu']})", fontsize=9)
    return common.save_figure(fig, path)


def write(result: Result, out: Path) -> tuple[Path, Path]:
    return common.write_result("peak", result, plot, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, DEFAULT_ROUNDS, DEFAULT_MAX_SECONDS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"sgemm matrix size (default: {DEFAULT_SIZE})")
    parser.add_argument("--sgemm-repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed sgemm calls per thread count (default: {DEFAULT_REPEATS})")
    parser.add_argument("--latency-json", type=Path, help="take latencies from this latency.json instead")
    parser.add_argument("--target-rounds", type=int, default=DEFAULT_TARGET_ROUNDS,
                        help=f"side-by-side rounds for the target (default: {DEFAULT_TARGET_ROUNDS})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side-by-side", nargs=2, metavar=("SLIM", "PROFILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(sgemm_child(args.size, args.sgemm_repeats)))
        return 0
    if args.side_by_side:
        print(json.dumps(side_by_side_child(args.side_by_side[0], args.side_by_side[1], args.size,
                                            args.target_rounds)))
        return 0
    if args.latency_json:
        latency_rows = json.loads(args.latency_json.read_text())["rows"]
    else:
        import latency

        models = common.prepare_models(args.models, args.rebuild_cache, common.log)
        timing = Timing.from_args(args)
        latency_rows = latency.run(models, args.threads, timing, ("slimrt", "onnxruntime"), common.log).rows
    target = (common.prepare_models([TARGET_MODEL], args.rebuild_cache, common.log)[0]
              if TARGET_MODEL in args.models else None)
    result = run(args.threads, latency_rows, args.size, args.sgemm_repeats, common.log, target, args.target_rounds)
    return common.publish(table(result), write(result, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
