"""Per-profile latency table: calibrated on the device, cached, tracked online.

Model of the table (Once-for-All's on-device lookup table plus online contention terms):
the latency of profile p at time t is `base_mean[p] * s(t) + e`, where `base_mean[p]` is
measured once at start-up (or read from a cache file keyed by model, machine and thread
count), s(t) is the slowdown the machine currently imposes on computation (multiplicative:
time slicing stretches a run in proportion to its length) and e is jitter (additive:
scheduling delays and cache misses cost about the same whatever the width). Every observed
latency, whatever profile it ran at, updates

  * `slowdown`, an exponentially weighted moving average of observed / base_mean, and
  * `jitter_ms`, the `quantile` of the last `window` residuals observed - base_mean * slowdown,

so contention seen on a narrow profile also moves the prediction of the wide ones the
controller has stopped choosing. Per profile, `predict(p)` returns the mean
`base_mean[p] * slowdown` and the tail `mean + jitter_ms` (its `quantile`), in milliseconds.

The table also tracks `overhead_ms`, the `quantile` of the time a request spends in the
server after its inference (waking the event loop, encoding the answer), which a budget
must leave room for.

Requests that are not one sample at a calibrated profile (a batch, another input size, a
uniform width multiplier) are predicted from their MACs when the table knows the MACs of
its profiles (`macs`): the calibrated latency at a cost of M MACs is interpolated linearly
between the two calibrated points whose MACs bracket M, and beyond the cheapest or the
most expensive point scaled in proportion to M from that point. The points are the
profiles at one sample and, when calibrated (`batch_ms`), the most expensive profile at a
few batch sizes: large runs cost more per MAC than one sample (on the bundled model, a
batch of 30 costs 1.8 times as much per sample as a batch of 1, its activations no longer
fitting in cache), which the profiles alone would read as a slowdown of the machine. Their observations
feed `slowdown` the same way (observed / calibrated at their cost), so a batch of 32 does
not read as a 32x slowdown; their residuals enter the jitter scaled down to the size of one
full-width sample, so the noise of one large request does not widen the tail of every
small one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

__all__ = [
    "Prediction", "LatencyTable", "calibrate", "cache_key", "default_cache_dir",
    "load_or_calibrate", "quantile",
]

CACHE_FORMAT = 2


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` with linear interpolation (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of an empty sequence")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


_quantile = quantile


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of one profile, in milliseconds."""

    mean_ms: float
    tail_ms: float


class LatencyTable:
    """Thread-safe latency predictions per profile (cheapest first).

    `names`, `base_mean_ms` and `base_tail_ms` come from a calibration; `macs` are the
    profiles' MACs per sample at the calibrated input (optional: without them only the
    calibrated profiles can be predicted); `alpha` is the weight of one observation in the
    moving mean; `window` residuals are kept for the tail; until `min_tail_samples`
    observations exist the tail is the larger of the calibrated tail scaled by `slowdown`
    and the observed one.
    """

    def __init__(self, names: Sequence[str], base_mean_ms: Sequence[float],
                 base_tail_ms: Sequence[float] | None = None, *, quantile: float = 0.95,
                 alpha: float = 0.1, window: int = 64, min_tail_samples: int = 16,
                 macs: Sequence[float] | None = None,
                 batch_ms: Mapping[int, Sequence[float]] | None = None) -> None:
        tails = base_mean_ms if base_tail_ms is None else base_tail_ms
        if not (len(names) == len(base_mean_ms) == len(tails)) or not names:
            raise ValueError(f"latency table needs one mean and one tail per profile: "
                             f"{len(names)} names, {len(base_mean_ms)} means, {len(tails)} tails")
        for name, mean, tail in zip(names, base_mean_ms, tails):
            if not (mean > 0 and tail >= mean and math.isfinite(tail)):
                raise ValueError(f"profile {name!r}: calibrated latency must satisfy "
                                 f"0 < mean <= tail < inf, got mean={mean} tail={tail}")
        if not 0 < quantile < 1 or not 0 < alpha <= 1 or window < 1:
            raise ValueError("need 0 < quantile < 1, 0 < alpha <= 1 and window >= 1")
        if macs is not None:
            if len(macs) != len(names) or not all(m > 0 and math.isfinite(m) for m in macs):
                raise ValueError(f"latency table needs one positive MACs count per profile, "
                                 f"got {list(macs)} for {len(names)} profiles")
        self.batch_ms: dict[int, tuple[float, float]] = {}
        for batch, pair in (batch_ms or {}).items():
            mean, tail = (float(v) for v in pair)
            if not (int(batch) >= 2 and 0 < mean <= tail and math.isfinite(tail)):
                raise ValueError(f"batch {batch}: calibrated latency must satisfy batch >= 2 "
                                 f"and 0 < mean <= tail < inf, got {pair}")
            self.batch_ms[int(batch)] = (mean, tail)
        self.names = tuple(names)
        self.base_mean_ms = tuple(float(v) for v in base_mean_ms)
        self.base_tail_ms = tuple(float(v) for v in tails)
        self.macs = None if macs is None else tuple(float(m) for m in macs)
        # the most expensive profile: the one batches are calibrated at, and one sample of it
        # the size that large runs' residuals scale to
        self.top = (len(self.names) - 1 if self.macs is None
                    else max(range(len(self.names)), key=lambda i: self.macs[i]))  # type: ignore[index]
        self._top_mean = self.base_mean_ms[self.top]
        # calibrated points (MACs, mean, tail) in order of MACs, for costs between them
        self._points = None
        if self.macs is not None:
            top_macs = self.macs[self.top]
            self._points = sorted([*zip(self.macs, self.base_mean_ms, self.base_tail_ms),
                                   *((b * top_macs, m, t) for b, (m, t) in self.batch_ms.items())])
        self.quantile = quantile
        self.alpha = alpha
        self.min_tail_samples = min(min_tail_samples, window)
        self._lock = threading.Lock()
        self._residuals: deque[float] = deque(maxlen=window)
        self._slowdown = 1.0
        self._jitter: float | None = None
        self._observed_mean: list[float | None] = [None] * len(self.names)
        self._counts = [0] * len(self.names)
        self._overheads: deque[float] = deque(maxlen=window)
        self._overhead: float | None = None

    def index(self, profile: int | str) -> int:
        """The position of a profile given by name or index (negative counts from the top)."""
        if isinstance(profile, str):
            if profile not in self.names:
                raise KeyError(f"profile {profile!r} is not in the latency table "
                               f"(profiles: {', '.join(self.names)})")
            return self.names.index(profile)
        if not -len(self.names) <= profile < len(self.names):
            raise IndexError(f"profile index {profile} out of range for {len(self.names)} profiles")
        return profile % len(self.names)

    @property
    def slowdown(self) -> float:
        """Moving mean of observed / calibrated latency (1.0 until something is observed)."""
        return self._slowdown

    @property
    def jitter_ms(self) -> float | None:
        """The `quantile` of recent residuals (observed - predicted mean), None before any."""
        with self._lock:
            return self._jitter_locked()

    def calibrated_at(self, macs: float) -> Prediction:
        """The calibrated (uncontended) mean and tail latency of a run costing `macs` MACs in
        all (per-sample MACs x batch), from the calibrated profiles (see the module's doc)."""
        if self._points is None:
            raise ValueError("this latency table has no MACs per profile: predict by profile, "
                             "or build it with macs=")
        if not (macs > 0 and math.isfinite(macs)):
            raise ValueError(f"a run's MACs must be finite and > 0, got {macs}")
        points = self._points
        lo_macs, lo_mean, lo_tail = points[0]
        if macs <= lo_macs:
            return Prediction(lo_mean * macs / lo_macs, lo_tail * macs / lo_macs)
        for hi_macs, hi_mean, hi_tail in points[1:]:
            if macs <= hi_macs:
                f = (macs - lo_macs) / (hi_macs - lo_macs)
                return Prediction(lo_mean + f * (hi_mean - lo_mean),
                                  lo_tail + f * (hi_tail - lo_tail))
            lo_macs, lo_mean, lo_tail = hi_macs, hi_mean, hi_tail
        return Prediction(lo_mean * macs / lo_macs, lo_tail * macs / lo_macs)

    def observe(self, profile: int | str | None, latency_ms: float, *,
                macs: float | None = None) -> None:
        """Feed back one measured service time (inference only, no queueing).

        `profile` is the profile it ran at (None for a run at a width multiplier); `macs` the
        MACs the run cost in all, when it was not one sample at the calibrated input (a batch,
        another input size, a multiplier)."""
        i = None if profile is None else self.index(profile)
        if not (latency_ms >= 0 and math.isfinite(latency_ms)):
            raise ValueError(f"observed latency must be finite and >= 0, got {latency_ms}")
        if i is None and macs is None:
            raise ValueError("observe needs the profile a run used, or its MACs")
        calibrated = i is not None and (macs is None or self.macs is None
                                        or math.isclose(macs, self.macs[i]))
        base = self.base_mean_ms[i] if calibrated else self.calibrated_at(macs).mean_ms
        scale = 1.0 if base <= self._top_mean else self._top_mean / base
        with self._lock:
            self._residuals.append((latency_ms - base * self._slowdown) * scale)
            self._jitter = None
            self._slowdown += self.alpha * (latency_ms / base - self._slowdown)
            if calibrated:
                prev = self._observed_mean[i]
                self._observed_mean[i] = (latency_ms if prev is None
                                          else prev + self.alpha * (latency_ms - prev))
                self._counts[i] += 1

    def observe_overhead(self, overhead_ms: float) -> None:
        """Feed back the time one request spent in the server after its inference."""
        if not (overhead_ms >= 0 and math.isfinite(overhead_ms)):
            raise ValueError(f"observed overhead must be finite and >= 0, got {overhead_ms}")
        with self._lock:
            self._overheads.append(overhead_ms)
            self._overhead = None

    @property
    def overhead_ms(self) -> float:
        """The `quantile` of recent post-inference overheads (0 before any is observed)."""
        with self._lock:
            if self._overhead is None:
                self._overhead = (quantile(self._overheads, self.quantile)
                                  if self._overheads else 0.0)
            return self._overhead

    def predict(self, profile: int | str) -> Prediction:
        """Predicted mean and tail latency of `profile` now, in milliseconds."""
        i = self.index(profile)
        return self._predict(self.base_mean_ms[i], self.base_tail_ms[i])

    def predict_macs(self, macs: float) -> Prediction:
        """Predicted mean and tail latency now of a run costing `macs` MACs in all."""
        base = self.calibrated_at(macs)
        return self._predict(base.mean_ms, base.tail_ms)

    def _predict(self, base_mean: float, base_tail: float) -> Prediction:
        with self._lock:
            mean = base_mean * self._slowdown
            scaled_tail = base_tail * self._slowdown
            jitter = self._jitter_locked()
            n = len(self._residuals)
        if jitter is None:
            tail = scaled_tail
        elif n < self.min_tail_samples:
            tail = max(scaled_tail, mean + jitter)
        else:
            tail = mean + jitter
        return Prediction(mean_ms=mean, tail_ms=max(tail, mean))

    def _jitter_locked(self) -> float | None:
        if self._jitter is None and self._residuals:
            self._jitter = quantile(self._residuals, self.quantile)
        return self._jitter

    def snapshot(self) -> list[dict[str, Any]]:
        """Per profile: calibrated and predicted latency, observed moving mean and count."""
        rows = []
        for i, name in enumerate(self.names):
            pred = self.predict(i)
            rows.append({
                "profile": name,
                "calibrated_mean_ms": self.base_mean_ms[i],
                "calibrated_tail_ms": self.base_tail_ms[i],
                "predicted_mean_ms": pred.mean_ms,
                "predicted_tail_ms": pred.tail_ms,
                "observed_mean_ms": self._observed_mean[i],
                "observed_count": self._counts[i],
            })
        return rows

    def to_json(self) -> dict[str, Any]:
        """The calibrated part of the table (what a cache file stores)."""
        return {"names": list(self.names), "mean_ms": list(self.base_mean_ms),
                "tail_ms": list(self.base_tail_ms), "quantile": self.quantile,
                "batch_ms": {str(b): list(v) for b, v in sorted(self.batch_ms.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any], **kwargs: Any) -> LatencyTable:
        """Rebuild a table from `to_json()` output (`kwargs` override the stored quantile and
        set the online parameters); raises ValueError when it is malformed."""
        try:
            kwargs = {"quantile": data.get("quantile", 0.95), **kwargs}
            kwargs.setdefault("batch_ms", {int(b): v for b, v in
                                           data.get("batch_ms", {}).items()})
            return cls(data["names"], data["mean_ms"], data["tail_ms"], **kwargs)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed latency table: {exc!r}") from exc


class _Runnable(Protocol):
    def run(self, x: np.ndarray, profile: str) -> np.ndarray: ...


class _ModelLike(Protocol):
    name: str
    input_shape: tuple[int, int, int, int]
    profiles: list[Any]

    def session(self, threads: int = 1) -> _Runnable: ...


def calibrate(model: _ModelLike, *, threads: int = 1, warmup: int = 2, repeats: int = 15,
              quantile: float = 0.95, seed: int = 0, input_hw: tuple[int, int] | None = None,
              batches: Sequence[int] = (1,), **table_kwargs: Any) -> LatencyTable:
    """Measure every profile of `model` on this machine with one session of `threads` threads.

    Profiles are timed round-robin (`repeats` rounds after `warmup` rounds) so that a burst of
    outside noise spreads over all of them instead of one. Takes about
    `(warmup + repeats) * sum(latency)`. `quantile` is the tail the table tracks;
    `input_hw` = (H, W) times one sample of that size instead of the model's input shape
    (the table's MACs are then those of that size); each batch size in `batches` above 1
    is also timed at the most expensive profile, in the same rounds (see the module's doc);
    `table_kwargs` go to `LatencyTable` (alpha, window, min_tail_samples).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = [p.name for p in model.profiles]
    session = model.session(threads=threads)
    shape = tuple(model.input_shape)
    if input_hw is not None:
        shape = (1, shape[1], int(input_hw[0]), int(input_hw[1]))
        macs_at = getattr(model, "macs", None)
        if macs_at is not None:
            table_kwargs.setdefault("macs", [float(macs_at(p.name, input_hw))
                                             for p in model.profiles])
    table_kwargs.setdefault("macs", _profile_macs(model))
    macs = table_kwargs["macs"]
    top = len(names) - 1 if macs is None else int(np.argmax(macs))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    runs = [(name, x) for name in names]
    extra = sorted({int(b) for b in batches if int(b) > 1})
    runs += [(names[top], rng.standard_normal((b, *shape[1:])).astype(np.float32))
             for b in extra]
    times: list[list[float]] = [[] for _ in runs]
    for round_ in range(warmup + repeats):
        for i, (name, xi) in enumerate(runs):
            start = time.perf_counter()
            session.run(xi, profile=name)
            if round_ >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    means = [float(np.mean(t)) for t in times]
    tails = [max(_quantile(t, quantile), m) for t, m in zip(times, means)]
    n = len(names)
    table_kwargs.setdefault("batch_ms", {b: (means[n + k], tails[n + k])
                                         for k, b in enumerate(extra)})
    return LatencyTable(names, means[:n], tails[:n], quantile=quantile, **table_kwargs)


def _profile_macs(model: _ModelLike) -> list[float] | None:
    macs = [getattr(p, "macs", None) for p in model.profiles]
    return None if any(m is None or m <= 0 for m in macs) else [float(m) for m in macs]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(model: _ModelLike, threads: int, batches: Sequence[int] = (1,)) -> str:
    """A digest of what a latency table depends on: the model's structure (name, input shape,
    profiles with widths and MACs), the machine (host, CPU model and count), the threads and
    the batch sizes calibrated."""
    profiles = [[p.name, list(p.widths), int(p.macs)] for p in model.profiles]
    ident = {
        "format": CACHE_FORMAT,
        "model": [model.name, list(model.input_shape), profiles],
        "machine": [platform.node(), platform.machine(), _cpu_model(), os.cpu_count()],
        "threads": threads,
        "batches": sorted({int(b) for b in batches if int(b) > 1}),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """$SLIMRT_CACHE_DIR, else $XDG_CACHE_HOME/slimrt, else ~/.cache/slimrt; plus /latency."""
    root = os.environ.get("SLIMRT_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "slimrt")
    return Path(root) / "latency"


def load_or_calibrate(model: _ModelLike, *, threads: int = 1, cache_dir: Path | str | None = None,
                      refresh: bool = False, warmup: int = 2, repeats: int = 15,
                      batches: Sequence[int] = (1,), **table_kwargs: Any) -> LatencyTable:
    """The cached table of (model, machine, threads, batches) if there is a valid one (and not
    `refresh`), else a fresh calibration, which is then written to the cache (best effort: an
    unwritable cache directory only costs a calibration next time). `table_kwargs` (quantile,
    alpha, window, min_tail_samples) set the table's online tracking either way."""
    key = cache_key(model, threads, batches)
    path = Path(cache_dir or default_cache_dir()) / f"{model.name}-{key[:20]}.json"
    table_kwargs.setdefault("macs", _profile_macs(model))  # in the key, so not in the file
    if not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return LatencyTable.from_json(data["table"], **table_kwargs)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    table = calibrate(model, threads=threads, warmup=warmup, repeats=repeats, batches=batches,
                      **table_kwargs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "created": time.time(), "table": table.to_json()}))
        os.replace(tmp, path)
    except OSError:
        pass
    return table
