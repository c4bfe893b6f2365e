"""The HTTP server: a FastAPI app over an `InferencePool` and a width controller.

Endpoints
    POST /v1/infer     JSON or .npy input; optional budget_ms and profile (a name, an index or
                       a width multiplier such as 0.6). Answers the output, the profile used,
                       the policy's reason and the time spent (JSON), or the output as .npy
                       with the same facts in X-Slimrt-* headers when the request sends
                       `Accept: application/x-npy`.
    GET  /v1/profiles  the model's profiles with MACs, params, widths and latency estimates
    GET  /v1/decisions recent width decisions with the signals behind them and their outcome
    GET  /healthz      liveness and queue state
    GET  /metrics      Prometheus text format

Status codes of /v1/infer: 200; 400 malformed body; 401 missing or wrong API key; 408 body
not received within the body timeout; 413 body over the size limit; 415 unknown
Content-Type; 422 well-formed but unusable (shape, dtype, input size the model cannot run,
unknown profile, multiplier out of range, bad budget); 503 queue full (answered at once,
with Retry-After); 500 unexpected engine failure. Every error, FastAPI's own 404 / 405 /
422 included, is a JSON object {"error": message, "status": code}.

A request's clock starts when its headers have arrived (see server.py): the content type, the
declared Content-Length and the queue's capacity are decided then, before any of the body is
read, so a 413 or 503 costs no upload and no parsing; the time spent receiving and parsing
the body counts in its budget, its misses and `within_budget`. Bodies larger than
`PARSE_INLINE_BYTES` are parsed on a separate thread (JSON piece by piece, see payload.py),
so large uploads do not stall the event loop.

fastapi and uvicorn are imported here only, so `import slimrt` works without the serve extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import numpy as np

from ..control.controller import POLICY_KINDS, Controller, make_policy
from ..control.latency import LatencyTable, load_or_calibrate
from ..control.monitors import ResourceMonitor
from ..control.policies import Decision, resolve_profile
from .metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry
from .payload import (BadRequest, check_content_type, check_input, declared_length,
                      parse_input, parse_options, resolve_requested_profile, to_npy)
from .pool import InferencePool, QueueFullError, Result

try:
    from fastapi import FastAPI, Query, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("slimrt.serve needs the serve extra: pip install 'slimrt[serve]'") from exc

from .server import ARRIVAL_KEY, BackgroundServer

__all__ = ["ServeConfig", "create_app", "build_controller", "BackgroundServer"]

NEEDS_TABLE = ("budget", "adaptive")
NEEDS_MONITOR = ("resource", "adaptive")
NEEDS_BUDGET = ("feedback",)
PARSE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed on the parser thread
ENDPOINTS = ("POST /v1/infer", "GET /v1/profiles", "GET /v1/decisions", "GET /healthz",
             "GET /metrics")
logger = logging.getLogger("slimrt.serve")


@dataclass
class ServeConfig:
    """How the server runs.

    policy: one of POLICY_KINDS; budget_ms: the default latency budget (SLO) of a request
    (required by feedback, its target; budget and adaptive run a request that brings no
    budget at the largest profile their caps allow); profile: the profile of the fixed
    policy; workers: inference threads (default: cores // threads); threads: threads per
    session; queue_size: admitted requests waiting beyond one per worker (default 4 *
    workers); max_body_bytes / max_batch: request limits; latency_cache: directory of the
    latency table cache (None: the default cache directory); calibrate_repeats: timing
    rounds when there is no cached table; tail_quantile: the latency quantile the budget
    policy predicts; margin_ms: time reserved from every budget for HTTP handling outside the
    server's clock; monitor_period_s: resource sampling period.

    Slow and oversized clients: header_timeout_s bounds the arrival of a request line and
    headers, body_timeout_s that of a body (from the end of its headers; 408); a head may
    hold at most max_header_bytes bytes and max_headers header fields (431); an answer the
    client does not read must drain within write_timeout_s (else the connection is aborted);
    at most max_connections connections are open at once (one more is answered 503).
    api_key: when set, every request must send `Authorization: Bearer KEY` or
    `X-API-Key: KEY` (401 otherwise). docs: serve /docs, /redoc and /openapi.json.
    """

    policy: str = "budget"
    budget_ms: float | None = None
    profile: str | int = -1
    workers: int | None = None
    threads: int = 1
    queue_size: int | None = None
    max_body_bytes: int = 16 * 2**20
    max_batch: int = 32
    latency_cache: str | None = None
    calibrate_repeats: int = 10
    tail_quantile: float = 0.99
    margin_ms: float = 1.0
    monitor_period_s: float = 0.25
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    write_timeout_s: float = 10.0
    max_connections: int = 512
    api_key: str | None = None
    docs: bool = False

    def calibration_batches(self) -> list[int]:
        """The batch sizes the latency table is calibrated at (the full profile beyond one
        sample): large runs cost more per MAC than one sample."""
        return sorted({1, min(8, self.max_batch), min(32, self.max_batch)})

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.policy not in POLICY_KINDS:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of "
                             f"{', '.join(POLICY_KINDS)}")
        if self.policy in NEEDS_BUDGET and self.budget_ms is None:
            raise ValueError(f"policy {self.policy!r} needs a latency budget (budget_ms), "
                             f"its target")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms)
                                               and self.budget_ms > 0):
            raise ValueError(f"budget_ms must be a number of milliseconds > 0, got "
                             f"{self.budget_ms}")
        if self.max_body_bytes < 1 or self.max_batch < 1:
            raise ValueError("max_body_bytes and max_batch must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.queue_size is not None and self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if not 0 < self.tail_quantile < 1 or not self.margin_ms >= 0:
            raise ValueError("need 0 < tail_quantile < 1 and margin_ms >= 0")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        for name in ("header_timeout_s", "body_timeout_s", "write_timeout_s", "monitor_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value}")
        if self.max_header_bytes < 256 or self.max_headers < 1:
            raise ValueError("max_header_bytes must be >= 256 bytes and max_headers >= 1")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii()
                                         or not self.api_key.isprintable()
                                         or any(c.isspace() for c in self.api_key)):
            raise ValueError("the API key must be printable ASCII without spaces")


def build_controller(model: Any, config: ServeConfig
                     ) -> tuple[Controller, LatencyTable | None, ResourceMonitor | None]:
    """The controller of `config.policy` for `model`, with its latency table (calibrated or
    cached) and resource monitor (not started) where the policy needs them. Every setting is
    checked before the calibration starts."""
    config.check()
    names = [p.name for p in model.profiles]
    if config.policy == "fixed":
        resolve_profile(names, config.profile)  # KeyError / IndexError before anything slow
    if config.policy == "gate" and not getattr(model, "has_gate", False):
        raise ValueError(f"policy 'gate' needs a model with a gate op; {model.name!r} has none "
                         "(add one with `slimrt train-gate`)")
    table = None
    if config.policy in NEEDS_TABLE or (config.policy == "gate" and config.budget_ms is not None):
        table = load_or_calibrate(model, threads=config.threads, cache_dir=config.latency_cache,
                                  repeats=config.calibrate_repeats, quantile=config.tail_quantile,
                                  batches=config.calibration_batches())
    monitor = ResourceMonitor(config.monitor_period_s) if config.policy in NEEDS_MONITOR else None
    policy = make_policy(config.policy, names, table=table, monitor=monitor,
                         budget_ms=config.budget_ms, profile=config.profile,
                         margin_ms=config.margin_ms)
    return Controller(policy, table), table, monitor


@dataclass
class _Metrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = r.add(Counter("slimrt_requests_total",
                                      "Inference requests answered, by HTTP status code",
                                      ["code"]))
        self.latency = r.add(Histogram("slimrt_request_latency_seconds",
                                       "Time in the server of answered inference requests, "
                                       "from their headers to their answer (upload, parsing, "
                                       "queue and inference)"))
        self.inference = r.add(Histogram("slimrt_inference_latency_seconds",
                                         "Inference time by profile", ["profile"]))
        self.profiles = r.add(Counter("slimrt_profile_requests_total",
                                      "Inference requests served, by profile (multipliers as "
                                      "0.60x, rounded to 0.01)", ["profile"]))
        self.budgeted = r.add(Counter("slimrt_budget_requests_total",
                                      "Served requests that had a latency budget"))
        self.misses = r.add(Counter("slimrt_budget_misses_total",
                                    "Served requests whose time in the server exceeded the "
                                    "budget"))
        self.gate_choices = r.add(Counter("slimrt_gate_choices_total",
                                          "Images of gated runs, by the profile their gate chose",
                                          ["profile"]))
        self.macs = r.add(Counter("slimrt_served_macs_total",
                                  "Multiply-accumulates served (per-sample MACs x batch)"))
        self.aborted = r.add(Counter("slimrt_aborted_uploads_total",
                                     "Inference requests whose client disconnected before "
                                     "its body was complete"))
        self.closed = r.add(Counter("slimrt_connections_closed_total",
                                    "Connections the server closed: idle, header_timeout, "
                                    "header_too_large, drain_timeout, drain_too_large, "
                                    "invalid_request, write_timeout, too_many_connections",
                                    ["reason"]))

    def served(self, result: Result, label: str) -> None:
        self.requests.inc("200")
        self.latency.observe(result.total_ms / 1e3)
        self.inference.observe(result.service_ms / 1e3, label)
        self.profiles.inc(label)
        for name in result.decision.choices or ():
            self.gate_choices.inc(name)
        if result.macs is not None:
            self.macs.inc(amount=float(result.macs))
        if result.budget_ms is not None:
            self.budgeted.inc()
            if not result.within_budget:
                self.misses.inc()


@dataclass
class _State:
    model: Any
    config: ServeConfig
    controller: Controller
    pool: InferencePool
    monitor: ResourceMonitor | None
    metrics: _Metrics
    names: tuple[str, ...]
    min_multiplier: float | None
    parser: ThreadPoolExecutor | None = None


def create_app(model: Any, config: ServeConfig | None = None, *,
               controller: Controller | None = None) -> FastAPI:
    """A FastAPI app serving `model` (a loaded `slimrt.Model`).

    Calibrates or loads the latency table when the policy needs one (see `build_controller`);
    pass `controller` to use your own policy instead. The app owns an inference pool: it
    serves one run (its shutdown stops the pool's workers). Run it with `BackgroundServer`
    or `server.uvicorn_config`, which apply the connection limits of `config`.
    """
    config = config or ServeConfig()
    monitor = None
    if controller is None:
        controller, _, monitor = build_controller(model, config)
    else:
        config.check()
    pool = InferencePool(model, controller, workers=config.workers, threads=config.threads,
                         queue_size=config.queue_size)
    multiplier = getattr(model, "min_multiplier", None)
    state = _State(model, config, controller, pool, monitor, _Metrics(),
                   tuple(p.name for p in model.profiles),
                   None if multiplier is None else float(multiplier))
    _add_gauges(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.monitor is not None:
            state.monitor.start()
        # one thread: parsing holds the interpreter lock, so a second one only takes more
        # of it from the event loop (measured: /healthz p99 about twice as high)
        state.parser = ThreadPoolExecutor(1, thread_name_prefix="slimrt-parse")
        x = np.zeros(model.input_shape, dtype=np.float32)
        await asyncio.to_thread(state.pool.warmup, x, state.names)
        try:
            yield
        finally:
            state.parser.shutdown(wait=True)
            await asyncio.to_thread(state.pool.close)
            if state.monitor is not None:
                state.monitor.stop()

    docs = config.docs
    app = FastAPI(title=f"slimrt: {model.name}", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.slimrt = state
    app.add_middleware(_Gate, state=state)
    _error_handlers(app)
    _routes(app, state)
    return app


def _add_gauges(state: _State) -> None:
    r = state.metrics.registry
    pool = state.pool
    r.add(Gauge("slimrt_queue_depth", "Admitted requests waiting for a worker",
                lambda: pool.queue_depth))
    r.add(Gauge("slimrt_in_flight", "Submitted requests (waiting or running)",
                lambda: pool.in_flight))
    r.add(Gauge("slimrt_receiving", "Admitted requests whose body is arriving or being parsed",
                lambda: pool.receiving))
    r.add(Gauge("slimrt_queue_capacity", "Requests admitted at once before answering 503",
                lambda: pool.capacity))
    table = state.controller.table
    if table is not None:
        r.add(Gauge("slimrt_latency_slowdown",
                    "Observed / calibrated latency (moving mean), 1 = as calibrated",
                    lambda: table.slowdown))


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status,
                        headers=headers or None)


# ---------------------------------------------------------------------------- before routing

def _key_matches(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                return True
        elif name == b"x-api-key" and hmac.compare_digest(value.strip(), key):
            return True
    return False


class _Gate:
    """ASGI middleware in front of the routes: stamps the arrival time when the server did
    not, refuses heads with too many header fields (431) and requests without the API key
    (401) before anything else runs."""

    def __init__(self, app: Any, state: _State) -> None:
        self.app = app
        self.state = state
        key = state.config.api_key
        self.key = None if key is None else key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("extensions", {}).setdefault(ARRIVAL_KEY, time.perf_counter())
        config = self.state.config
        response = None
        if len(scope["headers"]) > config.max_headers:
            response = _error(431, f"{len(scope['headers'])} header fields; at most "
                                   f"{config.max_headers}")
        elif self.key is not None and not _key_matches(scope["headers"], self.key):
            response = _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                   "or 'X-API-Key: KEY'", **{"WWW-Authenticate": "Bearer"})
        if response is None:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/v1/infer":
            self.state.metrics.requests.inc(str(response.status_code))
        await response(scope, receive, send)


def _error_handlers(app: FastAPI) -> None:
    """FastAPI's and Starlette's own errors in the project's {"error": ...} format."""

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path, method = request.url.path, request.method
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"no endpoint {method} {path}; endpoints: {', '.join(ENDPOINTS)}"
        elif exc.status_code == 405:
            allowed = headers.get("Allow") or headers.get("allow") or "another method"
            message = f"{method} is not allowed on {path}; use {allowed}"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, **headers)

    async def validation_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors():
            where = " ".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
        return _error(422, "; ".join(parts) or "invalid request")

    async def server_error(request: HttpRequest, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


# ---------------------------------------------------------------------------- request body

class _Aborted(Exception):
    """The client went away before its body was complete."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


async def _receive_body(receive: Any, limit: int, deadline: float, timeout_s: float) -> bytes:
    """The body of a request, read until `deadline` (time.perf_counter()); BadRequest 408 when
    it is late, 413 when it grows over `limit`; _Aborted when the client disconnects."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.perf_counter()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            raise BadRequest(408, f"request body not complete within {timeout_s:g} s of its "
                                  f"headers ({size} bytes received)") from None
        if message["type"] == "http.disconnect":
            raise _Aborted(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


@dataclass(frozen=True)
class _Parsed:
    x: np.ndarray
    budget_ms: float | None
    forced: Decision | None


def _parse_request(state: _State, body: bytes, content_type: str | None,
                   query: Mapping[str, str]) -> _Parsed:
    """Decode and check a request body (runs on the parser thread for large bodies)."""
    x, found = parse_input(body, content_type)
    x = check_input(x, state.model.input_shape, state.config.max_batch)
    hw = (int(x.shape[2]), int(x.shape[3]))
    try:
        state.pool.costs.profiles(hw)
    except ValueError as exc:
        raise BadRequest(422, f"the model cannot run an input of {hw[0]}x{hw[1]}: {exc}") from None
    options = parse_options(found, query)
    forced = None
    if options.profile is not None:
        key = resolve_requested_profile(options.profile, state.names, state.min_multiplier)
        if isinstance(key, float):
            forced = Decision(-1, f"{key:g}x", "request", "multiplier requested", multiplier=key)
        else:
            forced = Decision(key, state.names[key], "request", "profile requested")
    budget = options.budget_ms if options.budget_ms is not None else state.config.budget_ms
    return _Parsed(x, budget, forced)


def _label(decision: Decision) -> str:
    """The metrics label of a decision: its profile, or its multiplier rounded to 0.01 (so
    the label set stays small whatever multipliers clients send)."""
    return decision.profile if decision.multiplier is None else f"{decision.multiplier:.2f}x"


def _answer(request: HttpRequest, result: Result, receive_ms: float, parse_ms: float
            ) -> Response:
    wait_ms = max(0.0, result.queue_ms - receive_ms - parse_ms)
    timing = {"receive": receive_ms, "parse": parse_ms, "queue": wait_ms,
              "inference": result.service_ms, "total": result.total_ms}
    if "application/x-npy" in request.headers.get("accept", ""):
        headers = {
            "X-Slimrt-Profile": result.decision.profile,
            "X-Slimrt-Policy": result.decision.policy,
            "X-Slimrt-Receive-Ms": f"{receive_ms:.3f}",
            "X-Slimrt-Parse-Ms": f"{parse_ms:.3f}",
            "X-Slimrt-Queue-Ms": f"{wait_ms:.3f}",
            "X-Slimrt-Inference-Ms": f"{result.service_ms:.3f}",
            "X-Slimrt-Total-Ms": f"{result.total_ms:.3f}",
            "X-Slimrt-Within-Budget": str(result.within_budget).lower(),
        }
        if result.decision.choices is not None:
            headers["X-Slimrt-Gate-Choices"] = ",".join(result.decision.choices)
        return Response(to_npy(result.output), media_type="application/x-npy", headers=headers)
    facts: dict[str, Any] = {
        "profile": result.decision.profile,
        "policy": result.decision.policy,
        "reason": result.decision.reason,
        "budget_ms": result.budget_ms,
        "within_budget": result.within_budget,
        "timing_ms": timing,
    }
    if result.decision.multiplier is not None:
        facts["multiplier"] = result.decision.multiplier
    if result.decision.gate:  # "profile" is the cap; the gate's choice per image
        facts["gate"] = {"cap": result.decision.profile, "choices": list(result.decision.choices or ())}
    return JSONResponse({"output": result.output.tolist(), "shape": list(result.output.shape),
                         **facts})


# ---------------------------------------------------------------------------- routes

def _routes(app: FastAPI, state: _State) -> None:
    config, pool, metrics = state.config, state.pool, state.metrics

    def refuse(status: int, message: str, **headers: str) -> Response:
        metrics.requests.inc(str(status))
        return _error(status, message, **headers)

    @app.post("/v1/infer")
    async def infer(request: HttpRequest) -> Response:
        arrival = request.scope["extensions"][ARRIVAL_KEY]
        content_type = request.headers.get("content-type")
        # decided on the headers alone, before any of the body is read
        try:
            check_content_type(content_type)
            declared_length(request.headers.get("content-length"), config.max_body_bytes)
            admission = pool.admit()
        except BadRequest as exc:
            return refuse(exc.status, exc.message)
        except QueueFullError as exc:
            return refuse(503, str(exc), **{"Retry-After": "1"})
        with admission:
            try:
                body = await _receive_body(request.receive, config.max_body_bytes,
                                           arrival + config.body_timeout_s,
                                           config.body_timeout_s)
                received = time.perf_counter()
                query = dict(request.query_params)
                if len(body) > PARSE_INLINE_BYTES and state.parser is not None:
                    parsed = await asyncio.get_running_loop().run_in_executor(
                        state.parser, _parse_request, state, body, content_type, query)
                else:
                    parsed = _parse_request(state, body, content_type, query)
                del body
                submitted = time.perf_counter()
                future = pool.submit(parsed.x, budget_ms=parsed.budget_ms,
                                     decision=parsed.forced, arrival=arrival,
                                     admission=admission)
            except BadRequest as exc:
                close = {"Connection": "close"} if exc.status == 408 else {}
                return refuse(exc.status, exc.message, **close)
            except _Aborted as exc:
                metrics.aborted.inc()
                client = request.client
                where = f"{client.host}:{client.port}" if client else "a client"
                length = request.headers.get("content-length") or "?"
                logger.info("upload aborted by %s after %d of %s bytes", where, exc.received,
                            length)
                return Response(status_code=400)  # nobody reads it: the client is gone
        try:
            result = await asyncio.wrap_future(future)
        except ValueError as exc:
            return refuse(422, f"the engine refused the input: {exc}")
        except Exception as exc:
            return refuse(500, f"inference failed: {type(exc).__name__}: {exc}")
        metrics.served(result, _label(result.decision))
        response = _answer(request, result, (received - arrival) * 1e3,
                           (submitted - received) * 1e3)
        if parsed.x.shape[0] == 1:
            # one sample's overhead only: a batch's answer takes longer to encode (its own
            # budget pays for that), and a burst of large uploads keeps the event loop busy
            # while they run; counted, either would narrow the next 64 small requests
            done_ms = (time.perf_counter() - arrival) * 1e3
            state.controller.observe_overhead(max(0.0, done_ms - result.total_ms))
        return response

    @app.get("/v1/profiles")
    async def profiles() -> dict[str, Any]:
        table = state.controller.table
        latency = table.snapshot() if table is not None else None
        rows = []
        for i, p in enumerate(state.model.profiles):
            row = {"index": p.index, "name": p.name, "macs": p.macs, "params": p.params,
                   "widths": list(p.widths)}
            if latency is not None:
                row["latency_ms"] = {k: v for k, v in latency[i].items() if k != "profile"}
            rows.append(row)
        return {"model": state.model.name, "input_shape": list(state.model.input_shape),
                "min_multiplier": state.min_multiplier,
                "policy": state.controller.policy.kind, "budget_ms": config.budget_ms,
                "has_gate": bool(getattr(state.model, "has_gate", False)), "profiles": rows}

    @app.get("/v1/decisions")
    async def decisions(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        rows = []
        for item in state.controller.log()[-limit:]:
            row: dict[str, Any] = {"time": item.time, **item.decision.as_dict()}
            if item.outcome is not None:
                row["outcome"] = {"inference_ms": item.outcome.service_ms,
                                  "total_ms": item.outcome.total_ms}
            rows.append(row)
        return rows

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": state.model.name, "workers": pool.workers,
                "in_flight": pool.in_flight, "queue_depth": pool.queue_depth,
                "receiving": pool.receiving, "capacity": pool.capacity}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.registry.render(), media_type=CONTENT_TYPE)
