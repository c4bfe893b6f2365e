"""`slimrt serve MODEL.slim [--policy budget --budget-ms 30 --port 8000 ...]`.

Every argument is checked, the model loaded and the port bound before the latency table is
calibrated, so a mistake is reported in a second as one line (exit code 2), not after the
calibration or as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..control.controller import POLICY_KINDS

__all__ = ["add_commands", "serve_command", "main", "API_KEY_ENV"]

API_KEY_ENV = "SLIMRT_API_KEY"


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
                        "whose predicted latency fits the request's budget (no budget: the "
                        "largest); adaptive: budget capped by CPU/memory/battery/temperature "
                        "thresholds; resource: the thresholds only; feedback: AIMD on observed "
                        "tail latency against --budget-ms; fixed: always --profile; gate: the "
                        "model's gate op picks each image's profile, capped before the run by the "
                        "budget policy when --budget-ms is given")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="default latency budget per request in ms, counted from the arrival "
                        "of its headers (required by feedback; a request may send its own "
                        "budget_ms)")
    p.add_argument("--margin-ms", type=float, default=1.0,
                   help="ms reserved from every budget for HTTP handling outside the "
                        "server's clock (default 1)")
    p.add_argument("--profile", type=_profile_key, default=None,
                   help="profile name or index of the fixed policy (default: the largest)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, loopback only; any other "
                        "address needs an API key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on every "
                        f"request (default: ${API_KEY_ENV}; prefer the variable, a command "
                        f"line is visible to other users)")
    p.add_argument("--workers", type=int, default=None,
                   help="inference threads, one session each (default: cores // threads)")
    p.add_argument("--threads", type=int, default=1, help="threads per session (default 1)")
    p.add_argument("--queue-size", type=int, default=None,
                   help="requests admitted beyond one per worker before answering 503 "
                        "(default: 4 x workers)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest accepted request body in MiB (default 16)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch N (default 32)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request line and headers (default 10)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a client has to send a body after its headers; 408 after "
                        "(default 10)")
    p.add_argument("--write-timeout", type=float, default=10.0,
                   help="seconds an answer may wait for a client that does not read it before the "
                        "connection is aborted (default 10)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="most connections open at once; one more is answered 503 (default 512)")
    p.add_argument("--max-header-kb", type=float, default=16.0,
                   help="largest request line and headers in KiB; 431 beyond (default 16)")
    p.add_argument("--max-headers", type=int, default=100,
                   help="most header fields in a request; 431 beyond (default 100)")
    p.add_argument("--docs", action="store_true",
                   help="serve the OpenAPI pages /docs, /redoc and /openapi.json (default off)")
    p.add_argument("--latency-cache", default=None,
                   help="directory of the latency table cache (default: ~/.cache/slimrt)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=serve_command)


def _fail(message: str) -> int:
    print(f"slimrt serve: error: {message}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace) -> Any:
    """The ServeConfig of the arguments; ValueError naming the first wrong one."""
    from .app import ServeConfig
    from .server import is_loopback

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    if args.profile is not None and args.policy != "fixed":
        raise ValueError(f"--profile applies to --policy fixed only (the {args.policy} policy "
                         f"picks the profile; a request may ask for one with 'profile')")
    if not args.max_body_mb > 0 or not args.max_header_kb > 0:
        raise ValueError("--max-body-mb and --max-header-kb must be > 0")
    if args.margin_ms < 0:
        raise ValueError(f"--margin-ms must be >= 0, got {args.margin_ms}")
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(args.host):
        raise ValueError(f"--host {args.host} accepts connections from other machines; set an "
                         f"API key (${API_KEY_ENV} or --api-key) so that only your clients "
                         f"can use the server, or bind 127.0.0.1")
    config = ServeConfig(policy=args.policy, budget_ms=args.budget_ms,
                         profile=-1 if args.profile is None else args.profile,
                         workers=args.workers, threads=args.threads, queue_size=args.queue_size,
                         max_body_bytes=int(args.max_body_mb * 2**20), max_batch=args.max_batch,
                         latency_cache=args.latency_cache, margin_ms=args.margin_ms,
                         header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                         max_header_bytes=int(args.max_header_kb * 1024),
                         max_headers=args.max_headers, write_timeout_s=args.write_timeout,
                         max_connections=args.max_connections, api_key=key, docs=args.docs)
    try:
        config.check()
    except ValueError as exc:  # name the command-line flag, not the field
        text = str(exc)
        for field, flag in (("header_timeout_s", "--header-timeout"),
                            ("body_timeout_s", "--body-timeout"), ("budget_ms", "--budget-ms"),
                            ("write_timeout_s", "--write-timeout"), ("max_connections", "--max-connections"),
                            ("max_header_bytes", "--max-header-kb"),
                            ("max_headers", "--max-headers"), ("queue_size", "--queue-size"),
                            ("max_batch", "--max-batch"), ("workers", "--workers"),
                            ("threads", "--threads"), ("max_body_bytes", "--max-body-mb")):
            text = text.replace(field, flag)
        raise ValueError(text) from None
    return config


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit code."""
    try:
        import uvicorn

        from .app import create_app
        from .server import bind_socket, uvicorn_config
    except ImportError as exc:
        print(f"slimrt serve: {exc}. Install it with: pip install 'slimrt[serve]'",
              file=sys.stderr)
        return 2
    import slimrt

    try:
        config = _config(args)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        model = slimrt.load(args.model)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load {args.model}: {exc}")
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        return _fail(str(exc))
    try:
        app = create_app(model, config)  # checks the profile, then calibrates if it must
    except (OSError, ValueError, KeyError, IndexError) as exc:
        sock.close()
        return _fail(str(exc).strip("'\""))
    state = app.state.slimrt
    budget = "none (a request may bring budget_ms)" if config.budget_ms is None \
        else f"{config.budget_ms:g} ms"
    print(f"slimrt serve: {model.name}, {len(model.profiles)} profiles, policy {args.policy}, "
          f"budget {budget}, {state.pool.workers} workers, queue {state.pool.queue_size}, "
          f"{'API key required, ' if config.api_key else ''}"
          f"http://{args.host}:{args.port}", file=sys.stderr)
    # Large bodies are parsed on a thread that takes the interpreter lock in short pieces;
    # a 1 ms switch interval (default 5 ms) hands the lock back to the event loop sooner.
    # Measured with 4 clients uploading 17 MiB of JSON on 2 cores: /healthz p99 about
    # 20-40 ms instead of 45-80 ms. This process is the server's own, so the setting is ours.
    sys.setswitchinterval(0.001)
    server = uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port,
                                           log_level=args.log_level,
                                           access_log=args.log_level == "debug"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled: a normal stop
        pass
    finally:
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m slimrt.serve MODEL ...`: the serve command alone."""
    parser = argparse.ArgumentParser(prog="slimrt")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
