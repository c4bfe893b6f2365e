"""Run the whole benchmark suite of issue 4 in one command: latency, switch, memory, peak.

    python bench/run_all.py                       # defaults: < 10 minutes on 2 cores
    python bench/run_all.py --models resnet18 --threads 1 --rounds 200 --max-seconds 120
    python bench/run_all.py --quick               # a couple of minutes, for a first look

Models are converted once and cached (bench/results/cache/). Every benchmark prints its table
on stdout and writes <name>.json and <name>.png to --out; this script adds summary.md (every
table and the verdict on each target of the issue) and summary.json. Progress goes to stderr.
Timed blocks stop early on a busy machine (--max-seconds) rather than overrun; the ``n`` and
``busy`` columns tell how many rounds ran and how much CPU other processes took meanwhile.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import common
import latency
import memory
import peak
import switch
from common import Result, Timing

BENCHMARKS = ("latency", "switch", "memory", "peak")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=common.name_list, default=list(common.ZOO_MODELS),
                        help=f"zoo models (default: {','.join(common.ZOO_MODELS)})")
    parser.add_argument("--threads", type=common.int_list, default=[1, 2], help="thread counts (default: 1,2)")
    parser.add_argument("--only", type=common.name_list, default=list(BENCHMARKS),
                        help=f"benchmarks to run (default: {','.join(BENCHMARKS)})")
    parser.add_argument("--rounds", type=int, default=latency.DEFAULT_ROUNDS,
                        help=f"latency: rounds per model and thread count (default: {latency.DEFAULT_ROUNDS})")
    parser.add_argument("--max-seconds", type=float, default=latency.DEFAULT_MAX_SECONDS,
                        help="latency: time limit per model and thread count, once --min-rounds are done "
                             f"(default: {latency.DEFAULT_MAX_SECONDS:.0f})")
    parser.add_argument("--switch-rounds", type=int, default=switch.DEFAULT_ROUNDS,
                        help=f"switch: rounds (default: {switch.DEFAULT_ROUNDS})")
    parser.add_argument("--switch-max-seconds", type=float, default=switch.DEFAULT_MAX_SECONDS,
                        help="switch: time limit per model and thread count "
                             f"(default: {switch.DEFAULT_MAX_SECONDS:.0f})")
    parser.add_argument("--min-rounds", type=int, default=10, help="rounds kept whatever the time limits say")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: 3)")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="idle time before every timed run (default: 1)")
    parser.add_argument("--pool-gap-ms", type=float, default=50.0,
                        help="the idle time instead when runs use more than one thread (default: 50)")
    parser.add_argument("--create-repeats", type=int, default=switch.DEFAULT_CREATE_REPEATS,
                        help="switch: onnxruntime sessions created per width")
    parser.add_argument("--memory-repeats", type=int, default=1, help="memory: fresh processes per case")
    parser.add_argument("--sgemm-size", type=int, default=peak.DEFAULT_SIZE, help="peak: sgemm matrix size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="few rounds everywhere (20 latency, 10 switch, 5 s limits): a first look, not a result")
    parser.add_argument("--out", type=Path, default=common.RESULTS,
                        help=f"output directory (default: {common.RESULTS})")
    parser.add_argument("--rebuild-cache", action="store_true", help="convert the models again")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.quick:
        args.rounds, args.switch_rounds = min(args.rounds, 20), min(args.switch_rounds, 10)
        args.max_seconds, args.switch_max_seconds, args.min_rounds = 5.0, 5.0, 5
        args.create_repeats = min(args.create_repeats, 2)
    return args


def run_suite(args: argparse.Namespace, log: Callable[[str], None] = common.log) -> dict[str, Result]:
    """Every selected benchmark in turn; each result is printed and written as it completes."""
    models = common.prepare_models(args.models, args.rebuild_cache, log)
    results: dict[str, Result] = {}
    lat_timing = Timing(args.rounds, args.warmup, args.seed, args.gap_ms, args.max_seconds,
                        min(args.min_rounds, args.rounds), args.pool_gap_ms)
    if "latency" in args.only or "peak" in args.only:
        results["latency"] = latency.run(models, args.threads, lat_timing, log=log)
        _emit(latency, results["latency"], args.out)
    if "switch" in args.only:
        sw_timing = Timing(args.switch_rounds, args.warmup, args.seed, 0.0, args.switch_max_seconds,
                           min(args.min_rounds, args.switch_rounds))
        results["switch"] = switch.run(models, args.threads, sw_timing, args.create_repeats, log)
        _emit(switch, results["switch"], args.out)
    if "memory" in args.only:
        results["memory"] = memory.run(models, 1, args.memory_repeats, log)
        _emit(memory, results["memory"], args.out)
    if "peak" in args.only:
        target = next((m for m in models if m.name == peak.TARGET_MODEL), None)
        results["peak"] = peak.run(args.threads, results["latency"].rows, args.sgemm_size, log=log, target=target)
        _emit(peak, results["peak"], args.out)
    return results


def _emit(module: Any, result: Result, out: Path) -> None:
    common.publish(module.table(result) + "\n", module.write(result, out))


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def targets(results: Mapping[str, Result]) -> list[dict[str, Any]]:
    """One line per target of the issue: verdict and the worst case behind it."""
    out: list[dict[str, Any]] = []
    if "latency" in results:
        rows = results["latency"].rows
        worst = _worst(rows, "slimrt_over_ort", lambda r: r["slimrt_over_ort"])
        out.append(_target("slimrt/onnxruntime median latency <= 1.0 at every profile and thread count",
                           rows, "ratio_ok", worst and f"worst {worst['slimrt_over_ort']:.2f}x at {_where(worst)}"))
        worst = _worst(rows, "lat_frac", lambda r: r["lat_frac"] - r["macs_frac"] - r["macs_tol"])
        detail = worst and (f"worst {worst['lat_frac']:.2f} against {worst['macs_frac'] + worst['macs_tol']:.2f} "
                            f"at {_where(worst)}")
        out.append(_target("latency(w)/latency(1.0) <= MACs(w)/MACs(1.0) + 0.05 (ResNets) / 0.10 (MobileNetV2)",
                           rows, "follows_macs", detail))
        out.append(_target("slimrt output agrees with onnxruntime at every profile", rows, "agree", None))
    if "switch" in results:
        rows = results["switch"].rows
        worst = _worst(rows, "overhead_us",
                       lambda r: min(r["overhead_pct"] / switch.TARGET_PCT, r["overhead_us"] / switch.TARGET_US))
        out.append(_target("switching profile adds < 2% or < 20 us to a run", rows, "switch_ok",
                           worst and f"largest {worst['overhead_us']:+.0f} us ({worst['overhead_pct']:+.2f}%, "
                                     f"95% CI {worst['ci']} us) at {_where(worst)}"))
    if "memory" in results:
        rows = results["memory"].rows
        worst = _worst(rows, "slimrt_all_over_ort_full", lambda r: r["slimrt_all_over_ort_full"])
        detail = worst and f"largest {worst['slimrt_all_over_ort_full']:.2f}x ({worst['model']})"
        out.append(_target("peak RSS holding all profiles <= 1.15 x onnxruntime holding the full model", rows,
                           "memory_ok", detail))
    if "peak" in results:
        sbs = results["peak"].extra.get("side_by_side")
        if sbs:  # judged side by side in one process
            rows = [{"peak_ok": results["peak"].extra["summary"]["peak_ok"]}]
            detail = (f"{sbs['slimrt_gflops']:.1f} GFLOP/s against sgemm {sbs['sgemm_gflops']:.1f} "
                      f"({sbs['fraction']:.0%}), alternating in one process")
        else:
            rows = [r for r in results["peak"].rows if "peak_ok" in r]
            detail = rows and (f"{rows[0]['slimrt_gflops']:.1f} GFLOP/s against 85% of "
                               f"{results['peak'].extra['sgemm'][0]['gflops_median']:.1f}")
        out.append(_target("ResNet-50 at 1.0, 1 thread >= 85% of 1-thread OpenBLAS sgemm GFLOP/s", rows, "peak_ok",
                           detail or None))
    return out


def _worst(rows: Sequence[Mapping[str, Any]], key: str, badness: Callable[[Mapping[str, Any]], float]
           ) -> Mapping[str, Any] | None:
    candidates = [r for r in rows if r.get(key) is not None]
    return max(candidates, key=badness) if candidates else None


def _where(row: Mapping[str, Any]) -> str:
    return f"{row['model']} {row['profile']} {row['threads']}T"


def _target(name: str, rows: Sequence[Mapping[str, Any]], key: str, detail: str | None) -> dict[str, Any]:
    values = [r[key] for r in rows if r.get(key) is not None]
    failed = sum(1 for v in values if not v)
    return {"target": name, "ok": (failed == 0) if values else None, "failed": failed, "checked": len(values),
            "detail": detail}


def targets_table(lines: Sequence[Mapping[str, Any]]) -> str:
    rows = [{**t, "count": f"{t['checked'] - t['failed']}/{t['checked']}"} for t in lines]
    return common.format_table(rows, [common.Column("target", "target", align="<"), common.Column("ok", "verdict"),
                                      common.Column("count", "passing"), common.Column("detail", "detail", align="<")],
                               "targets of issue 4")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    results = run_suite(args)
    lines = targets(results)
    text = targets_table(lines)
    elapsed = time.monotonic() - start
    print(text + f"\n\nsuite finished in {elapsed:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    tables = [mod.table(results[name]) for name, mod in
              (("latency", latency), ("switch", switch), ("memory", memory), ("peak", peak)) if name in results]
    (args.out / "summary.md").write_text("\n\n".join(tables + [text, f"suite finished in {elapsed:.0f} s"]) + "\n")
    common.write_json(args.out / "summary.json",
                      {"machine": common.machine_info(args.threads), "args": vars(args), "seconds": elapsed,
                       "targets": lines, "files": sorted(p.name for p in args.out.glob("*.json"))})
    common.log(f"wrote {args.out / 'summary.md'} and {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
