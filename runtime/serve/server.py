"""The HTTP/1.1 connections of `slimrt serve`: uvicorn's h11 protocol with bounds on slow and
oversized clients, and the ways to run an app with it (`BackgroundServer`, `run`).

uvicorn bounds none of these on its own: `timeout_keep_alive` only runs between requests and
any byte cancels it, so a client that never finishes its request line and headers (slowloris)
or that stops in the middle of its body holds its connection, and the memory behind it,
forever. Each connection here has at most one deadline at a time:

  * waiting for a request head (a new connection, or a kept-alive one after an answer): the
    request line and headers must arrive within `header_timeout_s`, however slowly the bytes
    trickle in, and must fit in `max_header_bytes`. Otherwise the connection is closed, with
    a 408 or 431 answer when part of a head was sent (none to a connection that sent nothing);
  * reading a body: the app bounds it (`body_timeout_s` from the end of the headers; 408);
  * draining the rest of a body the app answered without reading (413, 503, 401, 431):
    uvicorn discards it so that the connection can carry the next request; it must end
    within `body_timeout_s` of the answer and `max_drain_bytes` (the body limit), else the
    connection is closed.

Two more bounds hold whatever the phase: an answer the client does not read (the transport's
buffer full, writing paused) must drain within `write_timeout_s`, else the connection is
aborted; and at most `max_connections` connections are open at once: one more is answered 503
and closed at once.

A 408 or 431 the protocol answers itself is followed by a half-close and `LINGER_S` of
reading and dropping input, so that a client still writing reads the answer instead of a
connection reset.

The protocol also stamps every request with the time its head was complete
(`scope["extensions"]["slimrt.arrival"]`, time.perf_counter()), the clock of its budget, and
answers uvicorn's own "invalid HTTP request" in the project's JSON error format. Counts of
connections closed on a limit go to `report(reason)`.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BackgroundServer", "ConnectionLimits", "bind_socket", "guarded_protocol",
           "is_loopback", "uvicorn_config", "ARRIVAL_KEY"]

ARRIVAL_KEY = "slimrt.arrival"
LINGER_S = 2.0  # how long a connection answered 408 / 431 by the protocol drops input
logger = logging.getLogger("slimrt.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds, in seconds and bytes (see the module's doc)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_drain_bytes: int = 16 * 2**20  # of a body answered unread; beyond, the connection ends
    write_timeout_s: float = 10.0
    max_connections: int = 512


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection, written without h11 (for
    a connection whose request head never completed)."""
    body = json.dumps({"error": message, "status": status}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and limits of `ConnectionLimits`.

    Subclassed per server by `guarded_protocol`, which sets `limits` and `report`."""

    limits = ConnectionLimits()
    report: Callable[[str], None] = staticmethod(lambda reason: None)
    open_connections = 0  # of this server (the class is made per server by guarded_protocol)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._lingering = False
        self._drained = 0
        self._counted = False
        super().connection_made(transport)
        cls = type(self)
        if cls.open_connections >= self.limits.max_connections:
            self._close("too_many_connections", raw_error(
                503, "Service Unavailable",
                f"the server has {self.limits.max_connections} connections open, its limit; retry later"))
            return
        cls.open_connections += 1
        self._counted = True
        self._sync(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._cancel_write()
        if self._counted:
            type(self).open_connections -= 1
            self._counted = False
        super().connection_lost(exc)

    # -- an answer the client does not read ---------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write()

    def _cancel_write(self) -> None:
        if getattr(self, "_write_timer", None) is not None:
            self._write_timer.cancel()  # type: ignore[union-attr]
            self._write_timer = None

    def _write_late(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        prefix = "%s:%d - " % self.client if self.client else ""
        logger.info("%sclosing the connection: write timeout", prefix)
        self.report("write_timeout")
        self.transport.abort()  # its unsent answer is dropped: the client stopped reading

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered and half-closed: what the client still sends is dropped
        if self._phase == "drain":
            self._drained += len(data)
            if self._drained > self.limits.max_drain_bytes:  # not worth keeping the connection
                self._close("drain_too_large", b"", linger=True)
                return
        now = time.perf_counter()
        before = self.cycle
        super().data_received(data)
        self._stamp(before, now)
        self._sync(now)

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        now = time.perf_counter()
        self._stamp(before, now)  # a pipelined request may have started
        self._sync(now)

    def send_400_response(self, msg: str) -> None:
        self._close("invalid_request", raw_error(400, "Bad Request",
                                                 f"invalid HTTP request: {msg.rstrip('.')}"))

    # -- deadlines -------------------------------------------------------------------------

    def _stamp(self, before: Any, now: float) -> None:
        if self.cycle is not None and self.cycle is not before:
            self.cycle.scope.setdefault("extensions", {})[ARRIVAL_KEY] = now  # type: ignore

    def _sync(self, now: float) -> None:
        """Arm the deadline of the phase the connection is in, if it changed."""
        if self.transport.is_closing():
            self._cancel()
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            phase = None  # a request in the app, which bounds its body itself
        elif self.conn.their_state is h11.SEND_BODY:
            phase = "drain"
        else:
            phase = "head"
            pending = len(self.conn.trailing_data[0])
            if pending > self.limits.max_header_bytes:
                self._close("header_too_large", raw_error(
                    431, "Request Header Fields Too Large",
                    f"request line and headers over {self.limits.max_header_bytes} bytes"))
                return
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase == "head":
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)
        elif phase == "drain":
            self._drained = 0
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._drain_late)

    def _cancel(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()  # type: ignore[union-attr]
            self._timer = None
        self._phase = None

    def _head_late(self) -> None:
        self._timer = None
        if self.conn.trailing_data[0] or self.conn.their_state is not h11.IDLE:
            self._close("header_timeout", raw_error(
                408, "Request Timeout", f"request line and headers not received within "
                                        f"{self.limits.header_timeout_s:g} s"))
        else:
            self._close("idle", b"")

    def _drain_late(self) -> None:
        self._timer = None
        self._close("drain_timeout", b"")

    def _close(self, reason: str, answer: bytes, linger: bool = False) -> None:
        """End the connection after `answer`. With an answer (or `linger`: the app answered
        already), half-close and drop what still arrives for `LINGER_S` first: closing a
        socket with unread input sends a reset, which can destroy the answer before a client
        that is still writing reads it (the "lingering close" of nginx)."""
        self._cancel()
        if self.transport.is_closing():
            return
        if reason not in ("idle", "invalid_request"):  # uvicorn logs invalid requests
            prefix = "%s:%d - " % self.client if self.client else ""
            logger.info("%sclosing the connection: %s", prefix, reason.replace("_", " "))
        self.report(reason)
        if answer:
            self.transport.write(answer)
        if (answer or linger) and self.transport.can_write_eof():
            self.transport.write_eof()
            self._lingering = True
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)
            return
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits,
                     report: Callable[[str], None] | None = None) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` class with these limits, reporting closes to `report`."""
    attrs: dict[str, Any] = {"limits": limits}
    if report is not None:
        attrs["report"] = staticmethod(report)
    return type("SlimrtH11Protocol", (GuardedH11Protocol,), attrs)


def _app_limits(app: Any) -> tuple[ConnectionLimits, Callable[[str], None] | None]:
    state = getattr(getattr(app, "state", None), "slimrt", None)
    if state is None:
        return ConnectionLimits(), None
    c = state.config
    return (ConnectionLimits(c.header_timeout_s, c.body_timeout_s, c.max_header_bytes,
                             c.max_body_bytes, c.write_timeout_s, c.max_connections),
            state.metrics.closed.inc)


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                   log_level: str = "warning", access_log: bool = False) -> Any:
    """The uvicorn.Config that serves `app` (made by `create_app`) with its limits; the
    server's own log lines ("slimrt.serve": aborted uploads, connections closed on a limit)
    go where uvicorn's go, at `log_level`."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    limits, report = _app_limits(app)
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["slimrt.serve"] = {"handlers": ["default"],
                                             "level": log_level.upper(), "propagate": False}
    # h11's own limit on a buffered head is only a backstop: the protocol answers 431 first
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                          log_config=log_config,
                          http=guarded_protocol(limits, report),  # type: ignore[arg-type]
                          h11_max_incomplete_event_size=limits.max_header_bytes + (1 << 20),
                          timeout_graceful_shutdown=5)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or "localhost"); names are taken as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), so a taken port is reported before anything slow
    starts; OSError with a plain message otherwise."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve the address {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """Runs an app with uvicorn (and the limits of its ServeConfig) on a loopback port in a
    daemon thread.

    `with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")`. Port 0 picks
    a free port. Leaving the block shuts the server down (bounded by `timeout_s`).
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 timeout_s: float = 30.0) -> None:
        import uvicorn

        self.app = app
        self.timeout_s = timeout_s
        self._server = uvicorn.Server(uvicorn_config(app, host=host, port=port))
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

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(self.timeout_s)
