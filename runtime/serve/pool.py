"""A bounded pool of inference workers, one engine session per worker thread.

The profile of each request is decided when a worker picks it up, so the policy sees the
queueing delay the request has already suffered and the queue behind it (SlackFit-style late
binding). Admission is
bounded: at most `workers + queue_size` requests are in flight; beyond that `submit` raises
`QueueFullError` at once instead of letting latency grow without limit. A server admits a
request before reading its body (`admit`), so a refusal costs nothing and the requests whose
bodies are still arriving count against the same capacity (and the memory it bounds), but
not as a backlog the policy must drain.

Every request is costed in MACs at each profile for its batch and input size (`CostModel`),
so the policy predicts what it will really run and the latency table learns from it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import numpy as np

from ..control.controller import Controller
from ..control.policies import Decision, Request

__all__ = ["Admission", "CostModel", "InferencePool", "QueueFullError", "Result",
           "default_workers"]


class QueueFullError(RuntimeError):
    """The pool already holds as many requests as it admits; retry later."""


class _Session(Protocol):
    def run(self, x: np.ndarray, profile: str | float) -> np.ndarray: ...


class _Model(Protocol):
    input_shape: tuple[int, int, int, int]
    profiles: Sequence[Any]

    def session(self, threads: int = 1) -> _Session: ...


@dataclass(frozen=True)
class Result:
    """One finished request. Times in milliseconds: `queue_ms` from arrival (the request's
    headers, when the server says so) to the start of inference, `service_ms` the inference,
    `total_ms` their sum. `within_budget` is None when the request had no budget. `macs` is
    what the run cost in all (batch x per-sample MACs at its input size and width), None
    when the model cannot say."""

    output: np.ndarray
    decision: Decision
    queue_ms: float
    service_ms: float
    total_ms: float
    budget_ms: float | None
    within_budget: bool | None
    macs: int | None = None


class CostModel:
    """MACs per sample of every profile, and of width multipliers, at any input size the model
    runs (`Model.macs`); sizes and multipliers seen recently are cached (at most `cache_size`
    of each), so costing a request is a dictionary look-up.

    A model without a `macs` method (a test double) is costed from its profiles' MACs scaled
    by the pixel count."""

    def __init__(self, model: _Model, cache_size: int = 64) -> None:
        self.model = model
        self.default_hw = (int(model.input_shape[2]), int(model.input_shape[3]))
        self.default = tuple(int(p.macs) for p in model.profiles)
        self.cache_size = cache_size
        self._sizes: OrderedDict[tuple[int, int], tuple[int, ...] | str] = OrderedDict()
        self._multipliers: OrderedDict[tuple[float, int, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def profiles(self, hw: tuple[int, int] | None = None) -> tuple[int, ...]:
        """Per-sample MACs of every profile at input size `hw` (default: the model's).
        Raises ValueError with the engine's reason when the model cannot run that size."""
        hw = self.default_hw if hw is None else (int(hw[0]), int(hw[1]))
        if hw == self.default_hw:
            return self.default
        with self._lock:
            found = self._sizes.get(hw)
            if found is not None:
                self._sizes.move_to_end(hw)
        if found is None:
            try:
                found = tuple(self._macs(p.name, hw) for p in self.model.profiles)
            except ValueError as exc:
                found = str(exc)
            self._remember(self._sizes, hw, found)
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def multiplier(self, m: float, hw: tuple[int, int] | None = None) -> int:
        """Per-sample MACs of uniform multiplier `m` at input size `hw`."""
        hw = self.default_hw if hw is None else (int(hw[0]), int(hw[1]))
        self.profiles(hw)  # the size must run at all
        key = (round(float(m), 6), *hw)
        with self._lock:
            found = self._multipliers.get(key)
        if found is None:
            found = self._macs(float(m), hw)
            self._remember(self._multipliers, key, found)
        return found

    def _macs(self, profile: str | float, hw: tuple[int, int]) -> int:
        macs = getattr(self.model, "macs", None)
        if macs is not None:
            return int(macs(profile, hw))
        scale = hw[0] * hw[1] / (self.default_hw[0] * self.default_hw[1])
        if isinstance(profile, float):
            return max(1, round(self.default[-1] * profile * profile * scale))
        names = [p.name for p in self.model.profiles]
        return max(1, round(self.default[names.index(profile)] * scale))

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)


class Admission:
    """A place in the pool taken before a request's body is read (`InferencePool.admit`).
    Pass it to `submit`, or `release` it when the request ends before (both are safe to
    repeat)."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool: InferencePool | None = pool

    @property
    def held(self) -> bool:
        return self._pool is not None

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release_admission()

    def _take(self) -> bool:
        """Hand the place over to a submitted request; False if it was already released."""
        held, self._pool = self._pool is not None, None
        return held

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
        self.costs = CostModel(model)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="slimrt-worker")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._admitted = 0
        self._running = 0
        self._closed = False

    @property
    def capacity(self) -> int:
        """Requests admitted at once: one running per worker plus the queue (requests whose
        bodies are still arriving included)."""
        return self.workers + self.queue_size

    @property
    def in_flight(self) -> int:
        """Submitted requests (waiting for a worker or running)."""
        return self._in_flight

    @property
    def receiving(self) -> int:
        """Admitted requests not submitted yet (body arriving or being parsed)."""
        return self._admitted

    def admit(self) -> Admission:
        """Take a place for a request whose body is still to come. Raises QueueFullError
        when the pool is full and RuntimeError once closed."""
        with self._lock:
            self._check_room()
            self._admitted += 1
        return Admission(self)

    def _release_admission(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _check_room(self) -> None:
        if self._closed:
            raise RuntimeError("the inference pool is closed")
        if self._in_flight + self._admitted >= self.capacity:
            raise QueueFullError(f"server busy: {self._in_flight + self._admitted} requests "
                                 f"admitted, capacity {self.capacity}; retry later")

    @property
    def running(self) -> int:
        return self._running

    @property
    def queue_depth(self) -> int:
        """Admitted requests not yet running."""
        return max(0, self._in_flight - self._running)

    def submit(self, x: np.ndarray, *, budget_ms: float | None = None,
               decision: Decision | None = None, arrival: float | None = None,
               admission: Admission | None = None) -> Future[Result]:
        """Queue one request. `decision` forces a profile or multiplier (else the controller
        decides); `arrival` is its time.perf_counter() on arrival (default: now);
        `admission` the place `admit` took for it (else one is taken now). Raises
        QueueFullError when the pool is full, ValueError when the model cannot run the
        input's size, RuntimeError once closed."""
        arrival = time.perf_counter() if arrival is None else arrival
        batch, hw = int(x.shape[0]), (int(x.shape[2]), int(x.shape[3]))
        cost = tuple(batch * m for m in self.costs.profiles(hw))
        forced_macs = (batch * self.costs.multiplier(decision.multiplier, hw)
                       if decision is not None and decision.multiplier is not None else None)
        with self._lock:
            if admission is None or not admission._take():
                self._check_room()
            else:
                self._admitted -= 1
            self._in_flight += 1
        try:
            return self._executor.submit(self._run, x, budget_ms, decision, arrival, cost,
                                         forced_macs)
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
             arrival: float, cost: tuple[int, ...], forced_macs: int | None) -> Result:
        try:
            with self._lock:
                self._running += 1
                waiting = self._in_flight - self._running
            start = time.perf_counter()
            queue_ms = (start - arrival) * 1e3
            decision = forced or self.controller.decide(
                Request(budget_ms, queue_ms, waiting=waiting, workers=self.workers, cost=cost))
            session = self._session()
            if decision.gate:  # the model's gate picks each image's profile, at most the cap
                output = session.run(x, profile="gate", max_profile=decision.index)
                picked = session.last_choice.tolist()
                decision = replace(decision, choices=tuple(self.model.profiles[k].name for k in picked))
            else:
                output = session.run(x, profile=decision.run_key)
            service_ms = (time.perf_counter() - start) * 1e3
            total_ms = queue_ms + service_ms
            if decision.gate:
                macs = round(sum(cost[k] for k in picked) / len(picked))  # cost is per request: batch x one image
            else:
                macs = forced_macs if decision.multiplier is not None else cost[decision.index]
            self.controller.observe(decision, service_ms, total_ms, macs=macs)
            within = None if budget_ms is None else total_ms <= budget_ms
            return Result(output, decision, queue_ms, service_ms, total_ms, budget_ms, within,
                          macs)
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
