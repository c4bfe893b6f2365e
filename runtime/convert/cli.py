"""`slimrt convert`, `slimrt info` and `slimrt export-onnx`."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ProfileError
from .importance import CRITERIA

PROFILE_HELP = "a profile name, an index, or a uniform multiplier such as 0.6"


def add_commands(subparsers: Any) -> None:
    """Register convert, info and export-onnx on an argparse subparsers object."""
    p = subparsers.add_parser("convert", help="convert an ONNX CNN into a width-slimmable .slim model",
                              description="Convert an ONNX CNN into a .slim model whose channels are sorted "
                                          "by importance, with one profile per width.")
    p.add_argument("input", help="the ONNX model (.onnx)")
    p.add_argument("-o", "--output", required=True, help="the .slim file to write")
    p.add_argument("--widths", default="0.25,0.5,0.75,1.0",
                   help="comma-separated uniform width multipliers (default: %(default)s)")
    p.add_argument("--importance", default="l1", choices=CRITERIA,
                   help="channel importance criterion (default: %(default)s)")
    p.add_argument("--input-shape", default=None,
                   help="N,C,H,W; required when the ONNX input has a symbolic height or width")
    p.add_argument("--name", default=None, help="model name stored in the file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser("info", help="show a .slim model's profiles and channel groups")
    p.add_argument("model", help="the .slim file")
    p.set_defaults(func=run_info)

    p = subparsers.add_parser("export-onnx", help="export one profile as a physically pruned ONNX model")
    p.add_argument("model", help="the .slim file")
    p.add_argument("--profile", required=True, help=PROFILE_HELP)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.set_defaults(func=run_export_onnx)


def _fail(message: str) -> int:
    print(f"slimrt: error: {message}", file=sys.stderr)
    return 2


def _progress(quiet: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)
    return say


def run_convert(args: argparse.Namespace) -> int:
    """`slimrt convert IN.onnx -o OUT.slim`: returns the exit code."""
    from ..format import write
    from . import onnx_to_slim

    try:
        widths = [float(w) for w in args.widths.split(",") if w.strip()]
        shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
    except ValueError:
        return _fail(f"--widths '{args.widths}' / --input-shape '{args.input_shape}' must be comma-separated numbers")
    say = _progress(args.quiet)
    say(f"reading {args.input}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            slim = onnx_to_slim(args.input, widths, args.importance, input_shape=shape, name=args.name,  # type: ignore[arg-type]
                                seed=args.seed, progress=say)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    for w in caught:
        print(f"slimrt: warning: {w.message}", file=sys.stderr)
    write(slim, args.output)
    say(f"wrote {args.output}")
    if not args.quiet:
        print(format_info(slim.meta))
    return 0


def run_info(args: argparse.Namespace) -> int:
    """`slimrt info MODEL.slim`: prints the profile and group tables."""
    from ..format import read

    try:
        slim = read(args.model)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(format_info(slim.meta))
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    """`slimrt export-onnx MODEL.slim --profile P -o OUT.onnx`."""
    from ..format import read
    from . import export_onnx

    try:
        slim = read(args.model)
        export_onnx(slim, args.output, parse_profile(slim.meta, args.profile))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.output}")
    return 0


def parse_profile(meta: Mapping[str, Any], text: str) -> str | int | float:
    """A command-line profile: a profile name first, then an integer index, then a multiplier."""
    if any(p["name"] == text for p in meta.get("profiles", [])):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ProfileError(f"unknown profile '{text}'; give {PROFILE_HELP}") from None


def format_info(meta: Mapping[str, Any]) -> str:
    """The `slimrt info` text: model header, profiles table, channel groups table."""
    n, c, h, w = meta["input"]["shape"]
    groups = meta["groups"]
    header = (f"model {meta['name']!r}: input {n}x{c}x{h}x{w}, {len(meta['ops'])} ops, "
              f"{len(groups)} channel groups, uniform multipliers in [{meta['min_multiplier']}, 1]")
    lines = [header, "", f"{'profile':<12} {'MACs':>16} {'params':>12} {'channels':>10}"]
    for p in meta["profiles"]:
        lines.append(f"{p['name']:<12} {p['macs']:>16,} {p['params']:>12,} {sum(p['widths']):>10,}")
    lines += ["", f"{'#':>3} {'group':<40} {'size':>6}  widths by profile / why fixed"]
    for i, g in enumerate(groups):
        detail = f"full: {g['why'] or 'fixed'}" if g["fixed"] else \
            " ".join(str(p["widths"][i]) for p in meta["profiles"])
        lines.append(f"{i:>3} {g['name'][:40]:<40} {g['size']:>6}  {detail}")
    return "\n".join(lines)
