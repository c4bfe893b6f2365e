"""A bounded pool of inference workers, one engine session per worker thread.

The profile of each request is decided when a worker picks it up, so the policy sees the
queueing delay the request has already suffered and the queue behind it (SlackFit-style late
binding). Admission is
bounded: at most `workers + queue_size` requests are in flight; beyond that `submit` raises
`QueueFullError` at once instead of letting latency grow without limit.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..control.controller import Controller
from ..control.policies import Decision, Request

__all__ = ["InferencePool", "QueueFullError", "Result", "default_workers"]


class QueueFullError(RuntimeError):
    """The pool already holds as many requests as it admits; retry later."""


class _Session(Protocol):
    def run(self, x: np.ndarray, profile: str) -> np.ndarray: ...


class _Model(Protocol):
    def session(self, threads: int = 1) -> _Session: ...


@dataclass(frozen=True)
class Result:
    """One finished request. Times in milliseconds: `queue_ms` from arrival to the start of
    inference, `service_ms` the inference, `total_ms` their sum. `within_budget` is None when
    the request had no budget."""

    output: np.ndarray
    decision: Decision
    queue_ms: float
    service_ms: float
    total_ms: float
    budget_ms: float | None
    within_budget: bool | None


def default_workers(threads: int = 1) -> int:
    """As many single-request workers as fit the cores at `threads` threads per session."""
    return max(1, (os.cpu_count() or 1) // max(1, threads))


class InferencePool:
    """Runs requests on `workers` threads, each with its own session of `threads` threads."""

    def __init__(self, model: _Model, controller: Controller, *, workers: int | None = None,
                 threads: int = 1, queue_size: int | None = None) -> None:
        self.workers = default_workers(threads) if workers is None else workers
        self.queue_size = 4 * self.workers if queue_size is None else queue_size
        if self.workers < 1 or self.queue_size < 0 or threads < 1:
            raise ValueError(f"need workers >= 1, threads >= 1 and queue_size >= 0, got "
                             f"{self.workers}, {threads}, {self.queue_size}")
        self.model = model
        self.controller = controller
        self.threads = threads
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="slimrt-worker")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running = 0
        self._closed = False

    @property
    def capacity(self) -> int:
        """Requests admitted at once: one running per worker plus the queue."""
        return self.workers + self.queue_size

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def running(self) -> int:
        return self._running

    @property
    def queue_depth(self) -> int:
        """Admitted requests not yet running."""
        return max(0, self._in_flight - self._running)

    def submit(self, x: np.ndarray, *, budget_ms: float | None = None,
               decision: Decision | None = None, arrival: float | None = None) -> Future[Result]:
        """Queue one request. `decision` forces a profile (else the controller decides);
        `arrival` is its time.perf_counter() on arrival (default: now). Raises
        QueueFullError when the pool is full and RuntimeError once closed."""
        arrival = time.perf_counter() if arrival is None else arrival
        with self._lock:
            if self._closed:
                raise RuntimeError("the inference pool is closed")
            if self._in_flight >= self.capacity:
                raise QueueFullError(f"server busy: {self._in_flight} requests in flight, "
                                     f"capacity {self.capacity}; retry later")
            self._in_flight += 1
        try:
            return self._executor.submit(self._run, x, budget_ms, decision, arrival)
        except BaseException:
            with self._lock:
                self._in_flight -= 1
            raise

    def warmup(self, x: np.ndarray, profiles: Sequence[str], timeout_s: float = 60.0) -> None:
        """Start every worker thread and run each of `profiles` once on its session, so the
        first requests do not pay for session creation and first-touch allocation."""
        barrier = threading.Barrier(self.workers, timeout=timeout_s)

        def warm() -> None:
            barrier.wait()  # holds each task on its own thread until all threads exist
            session = self._session()
            for name in profiles:
                session.run(x, profile=name)

        for future in [self._executor.submit(warm) for _ in range(self.workers)]:
            future.result(timeout_s)

    def _session(self) -> _Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.model.session(threads=self.threads)
        return session

    def _run(self, x: np.ndarray, budget_ms: float | None, forced: Decision | None,
             arrival: float) -> Result:
        try:
            with self._lock:
                self._running += 1
                waiting = self._in_flight - self._running
            start = time.perf_counter()
            queue_ms = (start - arrival) * 1e3
            decision = forced or self.controller.decide(
                Request(budget_ms, queue_ms, waiting=waiting, workers=self.workers))
            output = self._session().run(x, profile=decision.profile)
            service_ms = (time.perf_counter() - start) * 1e3
            total_ms = queue_ms + service_ms
            self.controller.observe(decision, service_ms, total_ms)
            within = None if budget_ms is None else total_ms <= budget_ms
            return Result(output, decision, queue_ms, service_ms, total_ms, budget_ms, within)
        finally:
            with self._lock:
                self._running -= 1
                self._in_flight -= 1

    def close(self) -> None:
        """Refuse new requests, finish the admitted ones, stop the workers."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)

    def __enter__(self) -> InferencePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
