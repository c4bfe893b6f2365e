"""Width policies: each picks a profile (an index into the cost-ordered profile list) per request.

A policy has one method that matters, `decide(request) -> Decision`; policies that learn from
outcomes also implement `observe(outcome)`. Every decision carries the signals that led to it.
Profiles are named by the caller (cheapest first, as in a model's `profiles`); a profile key
given to a policy is a name or an index (negative indices count from the most expensive).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .latency import LatencyTable
from .latency import quantile as _quantile
from .monitors import Monitor, ResourceSample

__all__ = [
    "Request", "Outcome", "Decision", "Policy", "FixedPolicy", "Level", "Threshold",
    "ResourcePolicy", "BudgetPolicy", "FeedbackPolicy", "MinPolicy", "GatePolicy", "resolve_profile",
    "default_thresholds",
]


@dataclass(frozen=True)
class Request:
    """What a policy knows about a request when it is about to run.

    budget_ms: the request's latency budget (None: the policy's default);
    queued_ms: the time it has already spent in the server since it arrived (its headers:
    upload, parsing and waiting for a worker);
    waiting: requests admitted after it and still waiting for a worker;
    workers: how many requests run in parallel;
    cost: per profile, the MACs this request costs at that profile (its batch times the
    per-sample MACs at its input size); None: one sample at the calibrated input size.
    """

    budget_ms: float | None = None
    queued_ms: float = 0.0
    waiting: int = 0
    workers: int = 1
    cost: Sequence[float] | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to a request: the profile it ran at, its inference time, and its total
    time in the server (queueing plus inference), in milliseconds."""

    index: int
    service_ms: float
    total_ms: float


@dataclass(frozen=True)
class Decision:
    """A chosen profile and why: `signals` are the readings the policy used.

    `multiplier` is set when the run uses a uniform width multiplier instead of a named
    profile (a request may ask for one); `index` is then -1 and `profile` a label such as
    "0.6x".

    `gate` marks a gated run (a model with a gate op picks each image's profile itself): `index`
    and `profile` are then the cap, the most expensive profile the gate may choose; once the
    run is done, `choices` holds the name of the profile each image took."""

    index: int
    profile: str
    policy: str
    reason: str
    signals: Mapping[str, Any] = field(default_factory=dict)
    multiplier: float | None = None
    gate: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def run_key(self) -> str | float:
        """What the engine runs: the profile name, or the multiplier."""
        return self.profile if self.multiplier is None else self.multiplier

    def as_dict(self) -> dict[str, Any]:
        row = {"index": self.index, "profile": self.profile, "policy": self.policy,
               "reason": self.reason, "signals": dict(self.signals)}
        if self.multiplier is not None:
            row["multiplier"] = self.multiplier
        if self.gate:
            row["gate"] = {"cap": self.profile, "choices": None if self.choices is None else list(self.choices)}
        return row


def resolve_profile(names: Sequence[str], key: int | str) -> int:
    """Index of profile `key` (a name, or an index where negative counts from the top)."""
    if isinstance(key, str):
        if key not in names:
            raise KeyError(f"unknown profile {key!r}; profiles: {', '.join(names)}")
        return list(names).index(key)
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"a profile key is a name or an int index, got {key!r}")
    if not -len(names) <= key < len(names):
        raise IndexError(f"profile index {key} out of range for {len(names)} profiles")
    return key % len(names)


class Policy:
    """Base class: `names` are the profile names, cheapest first."""

    kind = "policy"

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("a policy needs at least one profile")
        self.names = tuple(names)

    @property
    def top(self) -> int:
        return len(self.names) - 1

    def decide(self, request: Request) -> Decision:
        raise NotImplementedError

    def observe(self, outcome: Outcome) -> None:
        """Learn from a finished request; the default ignores it."""

    def _decision(self, index: int, reason: str, **signals: Any) -> Decision:
        return Decision(index, self.names[index], self.kind, reason, signals)


class FixedPolicy(Policy):
    """Always the same profile."""

    kind = "fixed"

    def __init__(self, names: Sequence[str], profile: int | str = -1) -> None:
        super().__init__(names)
        self.index = resolve_profile(self.names, profile)

    def decide(self, request: Request) -> Decision:
        return self._decision(self.index, "fixed profile")


@dataclass(frozen=True)
class Level:
    """One severity level of a threshold: entered when the signal crosses `enter`, left when
    it comes back past `exit` (the gap between them is the hysteresis); while in it the
    profile is at most `cap` (a name or an index, negative from the top)."""

    enter: float
    exit: float
    cap: int | str


@dataclass(frozen=True)
class Threshold:
    """Levels of one `ResourceSample` signal, ordered from mild to severe.

    below=False: high values are bad (CPU, temperature), so `exit < enter`;
    below=True: low values are bad (battery, free memory), so `exit > enter`.
    on_battery_only: the threshold applies only while the machine runs on battery.
    """

    signal: str
    levels: tuple[Level, ...]
    below: bool = False
    on_battery_only: bool = False

    def __post_init__(self) -> None:
        ResourceSample().signal(self.signal)  # raises KeyError naming the known signals
        if not self.levels:
            raise ValueError(f"threshold on {self.signal} has no levels")
        sign = -1.0 if self.below else 1.0
        for i, level in enumerate(self.levels):
            if not sign * level.exit < sign * level.enter:
                side = "above" if self.below else "below"
                raise ValueError(f"threshold on {self.signal}, level {i}: exit {level.exit} must "
                                 f"lie {side} enter {level.enter} (hysteresis)")
            if i and not sign * level.enter > sign * self.levels[i - 1].enter:
                raise ValueError(f"threshold on {self.signal}: levels must be ordered from mild "
                                 f"to severe, level {i} enters at {level.enter}")

    def next_level(self, current: int, value: float | None, on_battery: bool) -> int:
        """The level after reading `value` in level `current` (0 = no constraint)."""
        if value is None or (self.on_battery_only and not on_battery):
            return 0
        sign = -1.0 if self.below else 1.0
        while current < len(self.levels) and sign * value >= sign * self.levels[current].enter:
            current += 1
        while current > 0 and sign * value < sign * self.levels[current - 1].exit:
            current -= 1
        return current


def default_thresholds(n_profiles: int) -> tuple[Threshold, ...]:
    """Thresholds for a model with `n_profiles` profiles: CPU used by other processes,
    free memory, battery (when unplugged) and temperature. Mild levels cap at the middle
    profile, severe ones at the cheapest; other processes' CPU first caps one step below
    the top."""
    mid = (n_profiles - 1) // 2
    below_top = max(n_profiles - 2, 0)
    return (
        Threshold("external_cpu_percent", (Level(50, 35, below_top), Level(75, 60, mid),
                                           Level(90, 80, 0))),
        Threshold("memory_available_percent", (Level(10, 15, mid), Level(5, 8, 0)), below=True),
        Threshold("battery_percent", (Level(30, 35, mid), Level(15, 20, 0)), below=True,
                  on_battery_only=True),
        Threshold("temperature_c", (Level(80, 75, mid), Level(90, 85, 0))),
    )


class ResourcePolicy(Policy):
    """The largest profile allowed by every threshold at its current level (with hysteresis).

    Reads the monitor's latest sample on every decision; a signal the machine does not report
    imposes no cap.
    """

    kind = "resource"

    def __init__(self, names: Sequence[str], monitor: Monitor,
                 thresholds: Sequence[Threshold] | None = None) -> None:
        super().__init__(names)
        self.monitor = monitor
        self.thresholds = tuple(default_thresholds(len(self.names)) if thresholds is None
                                else thresholds)
        self._caps = [[resolve_profile(self.names, lv.cap) for lv in t.levels]
                      for t in self.thresholds]
        self._levels = [0] * len(self.thresholds)

    def decide(self, request: Request) -> Decision:
        sample = self.monitor.latest()
        on_battery = sample.power_plugged is False
        index, reason = self.top, "no threshold crossed"
        signals: dict[str, Any] = {"power_plugged": sample.power_plugged}
        for k, threshold in enumerate(self.thresholds):
            value = sample.signal(threshold.signal)
            level = threshold.next_level(self._levels[k], value, on_battery)
            self._levels[k] = level
            signals[threshold.signal] = value
            signals[f"{threshold.signal}_level"] = level
            if level and self._caps[k][level - 1] < index:
                index = self._caps[k][level - 1]
                reason = f"{threshold.signal} at level {level}"
        return self._decision(index, reason, **signals)


class BudgetPolicy(Policy):
    """The largest profile whose predicted latency fits the request's remaining budget.

    Fits means `queued_ms + rounds * predicted * (1 + margin) + margin_ms + overhead_ms
    <= budget_ms`, where `predicted` is the table's tail estimate (or its mean with
    estimate="mean") for this request (its batch and input size when the request says what
    it costs), `overhead_ms` the table's estimate of the time spent after inference,
    and
    `rounds = ceil((1 + waiting) / workers)`: with nobody waiting behind the request this is
    its own predicted latency plus the queueing it has already suffered; with a queue behind
    it, the queue served at the same profile must also finish within this (the oldest)
    request's deadline, so a backlog drains instead of growing (SlackFit's rule, at batch
    size one). When no profile fits, the cheapest runs and the decision says so.
    `budget_ms` is the default budget; without one, a request that brings no budget runs
    at the largest profile.
    """

    kind = "budget"

    def __init__(self, names: Sequence[str], table: LatencyTable, *,
                 budget_ms: float | None = None, margin: float = 0.1, margin_ms: float = 0.0,
                 estimate: str = "tail") -> None:
        super().__init__(names)
        if tuple(table.names) != self.names:
            raise ValueError(f"latency table profiles {table.names} differ from {self.names}")
        if budget_ms is not None:
            _check_budget(budget_ms)
        if margin < 0 or margin_ms < 0:
            raise ValueError("margins must be >= 0")
        if estimate not in ("tail", "mean"):
            raise ValueError(f"estimate must be 'tail' or 'mean', got {estimate!r}")
        self.table = table
        self.budget_ms = None if budget_ms is None else float(budget_ms)
        self.margin = margin
        self.margin_ms = margin_ms
        self.estimate = estimate

    def decide(self, request: Request) -> Decision:
        budget = self.budget_ms if request.budget_ms is None else request.budget_ms
        if budget is None:
            return self._decision(self.top, "no budget: largest profile", budget_ms=None,
                                  queued_ms=request.queued_ms, waiting=request.waiting)
        overhead = self.table.overhead_ms
        slack = budget - request.queued_ms - self.margin_ms - overhead
        rounds = math.ceil((1 + request.waiting) / max(1, request.workers))
        by_cost = request.cost is not None and self.table.macs is not None
        predicted = 0.0
        for index in range(self.top, -1, -1):
            pred = (self.table.predict_macs(request.cost[index]) if by_cost  # type: ignore[index]
                    else self.table.predict(index))
            predicted = pred.tail_ms if self.estimate == "tail" else pred.mean_ms
            if rounds * predicted * (1 + self.margin) <= slack:
                reason = "largest profile within budget"
                break
        else:
            index, reason = 0, "no profile fits the budget: cheapest"
        return self._decision(index, reason, budget_ms=budget, queued_ms=request.queued_ms,
                              waiting=request.waiting, overhead_ms=overhead, slack_ms=slack,
                              predicted_ms=predicted, slowdown=self.table.slowdown)


def _check_budget(budget_ms: float) -> None:
    if not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"a latency budget must be a finite number of ms > 0, got {budget_ms!r}")


class FeedbackPolicy(Policy):
    """AIMD on the profile ladder from observed tail latency (total time in the server).

    Decrease: as soon as more than (1 - quantile) of a `window` of outcomes observed since
    the last change exceed `target_ms` (so the window's tail must exceed it), the level
    becomes floor(level * decrease). Increase: after a full window whose `quantile` is below
    `slack * target_ms`, the level goes up by one. Between the two there is a dead band, and
    each change clears the window, so every step is judged on outcomes at the new level.
    Outcomes of requests that ran above the current level (started before a decrease) are
    ignored.
    """

    kind = "feedback"

    def __init__(self, names: Sequence[str], *, target_ms: float, window: int = 20,
                 quantile: float = 0.95, decrease: float = 0.5, slack: float = 0.7,
                 start: int | str = -1) -> None:
        super().__init__(names)
        _check_budget(target_ms)
        if window < 1 or not 0 < quantile < 1 or not 0 <= decrease < 1 or not 0 < slack < 1:
            raise ValueError("need window >= 1, 0 < quantile < 1, 0 <= decrease < 1, "
                             "0 < slack < 1")
        self.target_ms = float(target_ms)
        self.window = window
        self.quantile = quantile
        self.decrease = decrease
        self.slack = slack
        self.level = resolve_profile(self.names, start)
        self._recent: deque[float] = deque(maxlen=window)
        self._over = 0
        self._allowed_over = math.floor((1 - quantile) * window + 1e-9)
        self._last_change = "start"

    def decide(self, request: Request) -> Decision:
        tail = _quantile(self._recent, self.quantile) if self._recent else None
        return self._decision(self.level, self._last_change, target_ms=self.target_ms,
                              observed_tail_ms=tail, observed=len(self._recent))

    def observe(self, outcome: Outcome) -> None:
        if outcome.index > self.level:
            return
        if len(self._recent) == self.window and self._recent[0] > self.target_ms:
            self._over -= 1
        self._recent.append(outcome.total_ms)
        self._over += outcome.total_ms > self.target_ms
        if self._over > self._allowed_over:
            new = math.floor(self.level * self.decrease)
            self._change(new, f"tail over target: down from {self.names[self.level]}")
        elif len(self._recent) == self.window and self.level < self.top:
            if _quantile(self._recent, self.quantile) < self.slack * self.target_ms:
                self._change(self.level + 1, f"slack: up from {self.names[self.level]}")

    def _change(self, level: int, why: str) -> None:
        self.level = level
        self._last_change = why
        self._recent.clear()
        self._over = 0


class MinPolicy(Policy):
    """The minimum of several policies' choices: each one is a cap on the others."""

    kind = "min"

    def __init__(self, policies: Sequence[Policy]) -> None:
        if not policies:
            raise ValueError("MinPolicy needs at least one policy")
        names = policies[0].names
        for p in policies[1:]:
            if p.names != names:
                raise ValueError(f"policies disagree on the profiles: {names} vs {p.names}")
        super().__init__(names)
        self.policies = tuple(policies)

    def decide(self, request: Request) -> Decision:
        decisions = [p.decide(request) for p in self.policies]
        binding = min(decisions, key=lambda d: d.index)
        signals = {f"{d.policy}.{k}": v for d in decisions for k, v in d.signals.items()}
        signals.update({f"{d.policy}.choice": d.profile for d in decisions})
        return self._decision(binding.index, f"{binding.policy}: {binding.reason}", **signals)

    def observe(self, outcome: Outcome) -> None:
        for p in self.policies:
            p.observe(outcome)


class GatePolicy(Policy):
    """The model's own gate picks each image's profile, capped by another policy (DS-Net).

    For a model with a gate op: the decision is a gated run whose cap is `cap`'s decision (any
    policy: budget, resource, feedback, or their MinPolicy), taken *before* the run, so the gate
    can never choose above it and a budget still holds; without `cap` the gate chooses freely.
    The final profile of an image is the gate's choice, at most the cap.
    """

    kind = "gate"

    def __init__(self, names: Sequence[str], cap: Policy | None = None) -> None:
        super().__init__(names)
        if cap is not None and cap.names != self.names:
            raise ValueError(f"the cap's profiles {cap.names} differ from {self.names}")
        self.cap = cap

    def decide(self, request: Request) -> Decision:
        if self.cap is None:
            return Decision(self.top, self.names[self.top], self.kind, "the gate chooses (no cap)", {}, gate=True)
        capped = self.cap.decide(request)
        signals = {f"{capped.policy}.{k}": v for k, v in capped.signals.items()}
        signals["cap"] = capped.profile
        return Decision(capped.index, capped.profile, self.kind,
                        f"the gate chooses, at most {capped.profile} ({capped.policy}: {capped.reason})", signals,
                        gate=True)

    def observe(self, outcome: Outcome) -> None:
        if self.cap is not None:
            self.cap.observe(outcome)
