"""The controller: one policy, the latency table it learns into, and a log of decisions."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from .latency import LatencyTable
from .monitors import Monitor
from .policies import (BudgetPolicy, Decision, FeedbackPolicy, FixedPolicy, GatePolicy, MinPolicy, Outcome,
                       Policy, Request, ResourcePolicy)

__all__ = ["Controller", "LoggedDecision", "POLICY_KINDS", "make_policy"]

POLICY_KINDS = ("budget", "fixed", "resource", "feedback", "adaptive", "gate")


@dataclass(frozen=True)
class LoggedDecision:
    """A decision with when it was taken (time.monotonic()) and, once known, its outcome."""

    time: float
    decision: Decision
    outcome: Outcome | None = None


class Controller:
    """Thread-safe front of a policy, used from the request path of every worker.

    `decide` asks the policy; `observe` feeds a finished request back to the latency table
    (service time) and to the policy. The last `log_size` decisions are kept with their
    signals and outcomes.
    """

    def __init__(self, policy: Policy, table: LatencyTable | None = None, *,
                 log_size: int = 1024) -> None:
        self.policy = policy
        self.table = table
        self._lock = threading.Lock()
        self._log: deque[LoggedDecision] = deque(maxlen=log_size)

    @property
    def names(self) -> tuple[str, ...]:
        return self.policy.names

    def decide(self, request: Request) -> Decision:
        with self._lock:
            return self.policy.decide(request)

    def observe(self, decision: Decision, service_ms: float, total_ms: float, *,
                macs: float | None = None) -> None:
        """Record the outcome of a request that ran at `decision`; `macs` is what the run
        cost in all when it was not one sample at the calibrated input (see
        LatencyTable.observe)."""
        outcome = Outcome(decision.index, service_ms, total_ms)
        with self._lock:
            if self.table is not None:
                # a multiplier or a gated run (images at several profiles) is known by its MACs only
                profile = None if decision.multiplier is not None or decision.gate else decision.index
                if profile is not None or macs is not None:
                    self.table.observe(profile, service_ms, macs=macs)
            self.policy.observe(outcome)
            self._log.append(LoggedDecision(time.monotonic(), decision, outcome))

    def observe_overhead(self, overhead_ms: float) -> None:
        """Record the time a request spent in the server after its inference."""
        if self.table is not None:
            self.table.observe_overhead(overhead_ms)

    def log(self) -> list[LoggedDecision]:
        """The recent decisions with their outcomes, oldest first."""
        with self._lock:
            return list(self._log)


def make_policy(kind: str, names: Sequence[str], *, table: LatencyTable | None = None,
                monitor: Monitor | None = None, budget_ms: float | None = None,
                profile: int | str = -1, margin_ms: float = 0.0) -> Policy:
    """Build a policy by name, as the command line and the demo do.

    budget: BudgetPolicy (needs table; budget_ms is the default budget, without which a
    request that brings none runs at the largest profile; margin_ms is reserved from every
    budget);
    fixed: FixedPolicy(profile);
    resource: ResourcePolicy with the default thresholds (needs monitor);
    feedback: FeedbackPolicy with target budget_ms; adaptive: the minimum of budget and
    resource; gate: GatePolicy (a model with a gate op picks each image's profile), capped
    by the budget policy when there is a budget_ms (then it needs table), uncapped otherwise.
    """
    def need(what: str, value: Any) -> Any:
        if value is None:
            raise ValueError(f"policy {kind!r} needs {what}")
        return value

    if kind == "fixed":
        return FixedPolicy(names, profile)
    if kind == "budget":
        return BudgetPolicy(names, need("a latency table", table), budget_ms=budget_ms,
                            margin_ms=margin_ms)
    if kind == "resource":
        return ResourcePolicy(names, need("a resource monitor", monitor))
    if kind == "feedback":
        return FeedbackPolicy(names, target_ms=need("a target (budget_ms)", budget_ms))
    if kind == "adaptive":
        return MinPolicy([make_policy("budget", names, table=table, budget_ms=budget_ms,
                                      margin_ms=margin_ms),
                          make_policy("resource", names, monitor=monitor)])
    if kind == "gate":
        cap = None if budget_ms is None else make_policy("budget", names, table=table, budget_ms=budget_ms,
                                                         margin_ms=margin_ms)
        return GatePolicy(names, cap)
    raise ValueError(f"unknown policy {kind!r}; choose one of {', '.join(POLICY_KINDS)}")
