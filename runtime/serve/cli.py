"""`slimrt serve MODEL.slim [--policy budget --budget-ms 30 --port 8000 ...]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..control.controller import POLICY_KINDS

__all__ = ["add_commands", "serve_command", "main"]


def _profile_key(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def add_commands(subparsers: Any) -> None:
    """Add the `serve` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP, choosing the width of every request",
        description="Serve MODEL over HTTP: POST /v1/infer, GET /v1/profiles, GET /healthz, "
                    "GET /metrics. Needs the serve extra (pip install 'slimrt[serve]').")
    p.add_argument("model", help="path of a .slim model")
    p.add_argument("--policy", choices=POLICY_KINDS, default="budget",
                   help="how the width is chosen (default: budget). budget: largest profile "
                        "whose predicted latency fits the request's budget; adaptive: budget "
                        "capped by CPU/memory/battery/temperature thresholds; resource: the "
                        "thresholds only; feedback: AIMD on observed tail latency; fixed: "
                        "always --profile")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="default latency budget per request in ms (required by budget, "
                        "adaptive, feedback; a request may send its own budget_ms)")
    p.add_argument("--margin-ms", type=float, default=1.0,
                   help="ms reserved from every budget for HTTP handling outside the "
                        "server's clock (default 1)")
    p.add_argument("--profile", type=_profile_key, default=-1,
                   help="profile name or index of the fixed policy (default: the largest)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=None,
                   help="inference threads, one session each (default: cores // threads)")
    p.add_argument("--threads", type=int, default=1, help="threads per session (default 1)")
    p.add_argument("--queue-size", type=int, default=None,
                   help="requests admitted beyond one per worker before answering 503 "
                        "(default: 4 x workers)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest accepted request body in MiB (default 16)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch N (default 32)")
    p.add_argument("--latency-cache", default=None,
                   help="directory of the latency table cache (default: ~/.cache/slimrt)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit code."""
    try:
        import uvicorn

        from .app import ServeConfig, create_app
    except ImportError as exc:
        print(f"slimrt serve: {exc}. Install it with: pip install 'slimrt[serve]'",
              file=sys.stderr)
        return 2
    import slimrt

    config = ServeConfig(policy=args.policy, budget_ms=args.budget_ms, profile=args.profile,
                         workers=args.workers, threads=args.threads, queue_size=args.queue_size,
                         max_body_bytes=int(args.max_body_mb * 2**20), max_batch=args.max_batch,
                         latency_cache=args.latency_cache, margin_ms=args.margin_ms)
    try:
        model = slimrt.load(args.model)
        app = create_app(model, config)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"slimrt serve: {exc}", file=sys.stderr)
        return 2
    state = app.state.slimrt
    print(f"slimrt serve: {model.name}, {len(model.profiles)} profiles, policy {args.policy}, "
          f"{state.pool.workers} workers, queue {state.pool.queue_size}, "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "debug")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m slimrt.serve MODEL ...`: the serve command alone."""
    parser = argparse.ArgumentParser(prog="slimrt")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
