"""The `slimrt` command line: `slimrt demo`, plus the commands of the feature modules."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from .engine import Model, load

# Feature modules that add subcommands through add_commands(subparsers); a module
# whose optional dependencies are missing adds nothing.
_COMMAND_MODULES = ("slimrt.convert.cli", "slimrt.serve.cli", "slimrt.train.cli", "slimrt.quantization")
STREAM_SIZE = 160  # input size of the stream demo on the bundled model


def measure_profiles(model: Model, x: np.ndarray, threads: int, rounds: int) -> list[float]:
    """Median latency (ms) of every profile, interleaving profiles round by round."""
    session = model.session(threads)
    for p in model.profiles:  # warm-up: plans, caches
        session.run(x, p.index)
    samples: list[list[float]] = [[] for _ in model.profiles]
    for _ in range(rounds):
        for p in model.profiles:
            t0 = time.perf_counter()
            session.run(x, p.index)
            samples[p.index].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(s)) for s in samples]


def profile_table(model: Model, threads: int = 1, rounds: int = 50, seed: int = 0) -> list[dict]:
    """Per profile: MACs, latency and agreement with the numpy reference executor."""
    from .reference import run_reference

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(model.input_shape).astype(np.float32)
    slim = model.to_slimfile()
    latency = measure_profiles(model, x, threads, rounds)
    full = model.profiles[-1]
    rows = []
    for p in model.profiles:
        want = run_reference(slim, x, p.name)
        got = model.run(x, p.index)
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        rows.append({
            "profile": p.name,
            "macs": p.macs,
            "macs_ratio": p.macs / full.macs,
            "latency_ms": latency[p.index],
            "latency_ratio": latency[p.index] / latency[full.index],
            "max_rel_error": err,
        })
    return rows


def add_accuracy(model: Model, rows: list[dict], threads: int = 1) -> str | None:
    """Test accuracy per profile, for a model that records the data it was trained on
    ("trained_on" in its JSON); returns the data set's name, or None when there is none (or the
    data cannot be made here: the train extra is not installed)."""
    trained_on = model.to_slimfile().meta.get("trained_on")
    if not isinstance(trained_on, dict) or not isinstance(trained_on.get("data"), str):
        return None
    try:
        from .train.datasets import load_dataset
        from .train.evaluation import engine_accuracy

        data = load_dataset(trained_on["data"], seed=int(trained_on.get("seed", 0)))
    except (ImportError, ValueError):
        return None
    accuracy = {r["name"]: r["accuracy"] for r in engine_accuracy(model, data.x_test, data.y_test, threads=threads)}
    for r in rows:
        r["accuracy"] = accuracy.get(r["profile"])
    return data.name


def print_table(rows: list[dict], out=sys.stdout) -> None:
    with_acc = any(r.get("accuracy") is not None for r in rows)
    header = f"{'profile':>10} {'MMACs':>9} {'MACs/full':>10} {'median ms':>10} {'lat/full':>9} {'rel. error':>11}"
    header += f" {'accuracy':>9}" if with_acc else ""
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in rows:
        line = (f"{r['profile']:>10} {r['macs'] / 1e6:>9.2f} {r['macs_ratio']:>10.3f} {r['latency_ms']:>10.3f} "
                f"{r['latency_ratio']:>9.3f} {r['max_rel_error']:>11.2e}")
        if with_acc:
            line += f" {r['accuracy']:>8.2f}%" if r.get("accuracy") is not None else f" {'-':>9}"
        print(line, file=out)


def cmd_demo(args: argparse.Namespace) -> int:
    from . import default_model_path

    path = args.model or default_model_path()
    model = load(path)
    print(f"slimrt demo: {model.name} from {path}")
    print(f"input {model.input_shape}, {len(model.profiles)} profiles, {model.weight_bytes / 1e6:.2f} MB of weights "
          f"(one copy for every profile), {args.threads} thread(s)\n")
    rows = profile_table(model, threads=args.threads, rounds=args.rounds)
    data = add_accuracy(model, rows, args.threads)
    print_table(rows)
    if data:
        print(f"(accuracy: the {data} test set, run by the engine)")
    worst = max(r["max_rel_error"] for r in rows)
    ok = worst <= 1e-4
    print(f"\nevery profile agrees with the numpy reference: {'yes' if ok else 'NO'} (worst relative error {worst:.1e})")
    if args.stream_seconds > 0:
        try:
            from .control.demo import run_stream_demo
        except ImportError as exc:  # the serve extra (rich) is not installed
            print(f"\n(skipping the adaptive stream demo: {exc}; install slimrt[serve])")
        else:
            print()
            size = args.stream_size
            if size is None:  # the bundled model's 96x96 runs in well under a millisecond
                size = STREAM_SIZE if args.model is None else 0
            hw = None if size == 0 else (size, size)
            run_stream_demo(model, seconds=args.stream_seconds, budget_ms=args.budget_ms,
                            policy=args.policy, hog_procs=args.hog_procs, input_hw=hw)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimrt", description="Run CNNs at any width from one weight copy.")
    parser.add_argument("--version", action="version", version=f"slimrt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run every profile of the bundled model: MACs, latency, agreement")
    demo.add_argument("--model", help="a .slim file (default: the bundled model)")
    demo.add_argument("--threads", type=int, default=1)
    demo.add_argument("--rounds", type=int, default=50, help="timed runs per profile (interleaved)")
    demo.add_argument("--stream-seconds", type=float, default=12.0,
                      help="length of the adaptive request-stream demo (0 to skip)")
    demo.add_argument("--budget-ms", type=float, default=None,
                      help="latency budget of the stream demo (default: 4 x the calibrated "
                           "full-width latency, at least 5 ms)")
    demo.add_argument("--policy", default="budget",
                      choices=("budget", "adaptive", "feedback", "resource", "fixed"),
                      help="width policy of the stream demo (default: budget)")
    demo.add_argument("--hog-procs", type=int, default=None,
                      help="busy processes of the CPU hog (default: one per CPU the engine "
                           "may run on, each pinned to its CPU)")
    demo.add_argument("--stream-size", type=int, default=None,
                      help=f"height = width of the stream's inputs; 0: the model's own "
                           f"(default: {STREAM_SIZE} for the bundled model, whose 96x96 runs "
                           f"in under a millisecond, below the scheduling noise of a shared "
                           f"machine; the model's own size for --model)")
    demo.set_defaults(func=cmd_demo)
    for name in _COMMAND_MODULES:
        add: Optional[Callable] = None
        try:
            add = getattr(importlib.import_module(name), "add_commands", None)
        except ImportError:
            continue
        if add is not None:
            add(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"slimrt {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
