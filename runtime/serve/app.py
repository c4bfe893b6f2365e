"""The HTTP server: a FastAPI app over an `InferencePool` and a width controller.

Endpoints
    POST /v1/infer     JSON or .npy input; optional budget_ms and profile. Answers the output,
                       the profile used, the policy's reason and the time spent (JSON), or the
                       output as .npy with the same facts in X-Slimrt-* headers when the
                       request sends `Accept: application/x-npy`.
    GET  /v1/profiles  the model's profiles with MACs, params, widths and latency estimates
    GET  /v1/decisions recent width decisions with the signals behind them and their outcome
    GET  /healthz      liveness and queue state
    GET  /metrics      Prometheus text format

Status codes of /v1/infer: 200; 400 malformed body; 413 body over the size limit; 415 unknown
Content-Type; 422 well-formed but unusable (shape, dtype, unknown profile, bad budget);
503 queue full (answered at once, with Retry-After); 500 unexpected engine failure.

fastapi and uvicorn are imported here only, so `import slimrt` works without the serve extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np

from ..control.controller import POLICY_KINDS, Controller, make_policy
from ..control.latency import LatencyTable, load_or_calibrate
from ..control.monitors import ResourceMonitor
from ..control.policies import Decision
from .metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry
from .payload import (BadRequest, check_input, parse_input, parse_options,
                      resolve_requested_profile, to_npy)
from .pool import InferencePool, QueueFullError, Result

try:
    from fastapi import FastAPI, Query, Request as HttpRequest
    from fastapi.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("slimrt.serve needs the serve extra: pip install 'slimrt[serve]'") from exc

__all__ = ["ServeConfig", "create_app", "build_controller", "BackgroundServer"]

NEEDS_TABLE = ("budget", "adaptive")
NEEDS_MONITOR = ("resource", "adaptive")
NEEDS_BUDGET = ("budget", "adaptive", "feedback")


@dataclass
class ServeConfig:
    """How the server runs.

    policy: one of POLICY_KINDS; budget_ms: the default latency budget (SLO) of a request,
    required by budget, adaptive and feedback; profile: the profile of the fixed policy;
    workers: inference threads (default: cores // threads); threads: threads per session;
    queue_size: admitted requests waiting beyond one per worker (default 4 * workers);
    max_body_bytes / max_batch: request limits; latency_cache: directory of the latency table
    cache (None: the default cache directory); calibrate_repeats: timing rounds when there is
    no cached table; tail_quantile: the latency quantile the budget policy predicts;
    margin_ms: time reserved from every budget for HTTP handling outside the server's clock;
    monitor_period_s: resource sampling period.
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

    def check(self) -> None:
        if self.policy not in POLICY_KINDS:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of "
                             f"{', '.join(POLICY_KINDS)}")
        if self.policy in NEEDS_BUDGET and self.budget_ms is None:
            raise ValueError(f"policy {self.policy!r} needs a latency budget (budget_ms)")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.max_body_bytes < 1 or self.max_batch < 1:
            raise ValueError("max_body_bytes and max_batch must be >= 1")
        if not 0 < self.tail_quantile < 1 or self.margin_ms < 0:
            raise ValueError("need 0 < tail_quantile < 1 and margin_ms >= 0")


def build_controller(model: Any, config: ServeConfig
                     ) -> tuple[Controller, LatencyTable | None, ResourceMonitor | None]:
    """The controller of `config.policy` for `model`, with its latency table (calibrated or
    cached) and resource monitor (not started) where the policy needs them."""
    config.check()
    names = [p.name for p in model.profiles]
    table = None
    if config.policy in NEEDS_TABLE:
        table = load_or_calibrate(model, threads=config.threads, cache_dir=config.latency_cache,
                                  repeats=config.calibrate_repeats, quantile=config.tail_quantile)
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
                                       "Time in the server (queue + inference) of answered "
                                       "inference requests"))
        self.inference = r.add(Histogram("slimrt_inference_latency_seconds",
                                         "Inference time by profile", ["profile"]))
        self.profiles = r.add(Counter("slimrt_profile_requests_total",
                                      "Inference requests served, by profile", ["profile"]))
        self.budgeted = r.add(Counter("slimrt_budget_requests_total",
                                      "Served requests that had a latency budget"))
        self.misses = r.add(Counter("slimrt_budget_misses_total",
                                    "Served requests whose time in the server exceeded the "
                                    "budget"))
        self.macs = r.add(Counter("slimrt_served_macs_total",
                                  "Multiply-accumulates served (per-sample MACs x batch)"))

    def served(self, result: Result, macs: int, batch: int) -> None:
        self.requests.inc("200")
        self.latency.observe(result.total_ms / 1e3)
        self.inference.observe(result.service_ms / 1e3, result.decision.profile)
        self.profiles.inc(result.decision.profile)
        self.macs.inc(amount=float(macs * batch))
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
    macs: tuple[int, ...]


def create_app(model: Any, config: ServeConfig | None = None, *,
               controller: Controller | None = None) -> FastAPI:
    """A FastAPI app serving `model` (a loaded `slimrt.Model`).

    Calibrates or loads the latency table when the policy needs one (see `build_controller`);
    pass `controller` to use your own policy instead. The app owns an inference pool: it
    serves one run (its shutdown stops the pool's workers).
    """
    config = config or ServeConfig()
    monitor = None
    if controller is None:
        controller, _, monitor = build_controller(model, config)
    pool = InferencePool(model, controller, workers=config.workers, threads=config.threads,
                         queue_size=config.queue_size)
    state = _State(model, config, controller, pool, monitor, _Metrics(),
                   tuple(p.name for p in model.profiles),
                   tuple(int(p.macs) for p in model.profiles))
    _add_gauges(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.monitor is not None:
            state.monitor.start()
        x = np.zeros(model.input_shape, dtype=np.float32)
        await asyncio.to_thread(state.pool.warmup, x, state.names)
        try:
            yield
        finally:
            await asyncio.to_thread(state.pool.close)
            if state.monitor is not None:
                state.monitor.stop()

    app = FastAPI(title=f"slimrt: {model.name}", lifespan=lifespan)
    app.state.slimrt = state
    _routes(app, state)
    return app


def _add_gauges(state: _State) -> None:
    r = state.metrics.registry
    pool = state.pool
    r.add(Gauge("slimrt_queue_depth", "Admitted requests waiting for a worker",
                lambda: pool.queue_depth))
    r.add(Gauge("slimrt_in_flight", "Admitted requests (waiting or running)",
                lambda: pool.in_flight))
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


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest(400, f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise BadRequest(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(request: HttpRequest, result: Result) -> Response:
    facts = {
        "profile": result.decision.profile,
        "policy": result.decision.policy,
        "reason": result.decision.reason,
        "budget_ms": result.budget_ms,
        "within_budget": result.within_budget,
        "timing_ms": {"queue": result.queue_ms, "inference": result.service_ms,
                      "total": result.total_ms},
    }
    if "application/x-npy" in request.headers.get("accept", ""):
        headers = {
            "X-Slimrt-Profile": result.decision.profile,
            "X-Slimrt-Policy": result.decision.policy,
            "X-Slimrt-Queue-Ms": f"{result.queue_ms:.3f}",
            "X-Slimrt-Inference-Ms": f"{result.service_ms:.3f}",
            "X-Slimrt-Total-Ms": f"{result.total_ms:.3f}",
            "X-Slimrt-Within-Budget": str(result.within_budget).lower(),
        }
        return Response(to_npy(result.output), media_type="application/x-npy", headers=headers)
    return JSONResponse({"output": result.output.tolist(), "shape": list(result.output.shape),
                         **facts})


def _routes(app: FastAPI, state: _State) -> None:
    config, pool, metrics = state.config, state.pool, state.metrics

    @app.post("/v1/infer")
    async def infer(request: HttpRequest) -> Response:
        arrival = time.perf_counter()
        try:
            body = await _read_body(request, config.max_body_bytes)
            x, found = parse_input(body, request.headers.get("content-type"))
            x = check_input(x, state.model.input_shape, config.max_batch)
            options = parse_options(found, request.query_params)
            forced = None
            if options.profile is not None:
                index = resolve_requested_profile(options.profile, state.names)
                forced = Decision(index, state.names[index], "request", "profile requested")
            budget = options.budget_ms if options.budget_ms is not None else config.budget_ms
            future = pool.submit(x, budget_ms=budget, decision=forced, arrival=arrival)
        except BadRequest as exc:
            metrics.requests.inc(str(exc.status))
            return _error(exc.status, exc.message)
        except QueueFullError as exc:
            metrics.requests.inc("503")
            return _error(503, str(exc), **{"Retry-After": "1"})
        try:
            result = await asyncio.wrap_future(future)
        except ValueError as exc:
            metrics.requests.inc("422")
            return _error(422, f"the engine refused the input: {exc}")
        except Exception as exc:
            metrics.requests.inc("500")
            return _error(500, f"inference failed: {type(exc).__name__}: {exc}")
        metrics.served(result, state.macs[result.decision.index], x.shape[0])
        response = _answer(request, result)
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
                "policy": state.controller.policy.kind, "budget_ms": config.budget_ms,
                "profiles": rows}

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
                "capacity": pool.capacity}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.registry.render(), media_type=CONTENT_TYPE)


class BackgroundServer:
    """Runs an app with uvicorn on a loopback port in a daemon thread.

    `with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")`. Port 0 picks
    a free port. Leaving the block shuts the server down (bounded by `timeout_s`).
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                 timeout_s: float = 30.0) -> None:
        import uvicorn

        self.timeout_s = timeout_s
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="slimrt-http",
                                        daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (port in use?)")
            time.sleep(0.01)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(self.timeout_s)
