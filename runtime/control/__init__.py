"""Resource-adaptive width control: monitors, the latency table, and per-request policies.

Needs psutil and numpy only; the server (`slimrt.serve`) and the demo build on it.
"""

from .controller import POLICY_KINDS, Controller, LoggedDecision, make_policy
from .latency import LatencyTable, Prediction, cache_key, calibrate, load_or_calibrate
from .monitors import ManualMonitor, Monitor, ResourceMonitor, ResourceSample, read_sample
from .policies import (BudgetPolicy, Decision, FeedbackPolicy, FixedPolicy, GatePolicy, Level, MinPolicy,
                       Outcome, Policy, Request, ResourcePolicy, Threshold, default_thresholds,
                       resolve_profile)

__all__ = [
    "BudgetPolicy", "Controller", "Decision", "FeedbackPolicy", "FixedPolicy", "GatePolicy", "LatencyTable",
    "Level", "LoggedDecision", "ManualMonitor", "MinPolicy", "Monitor", "Outcome", "POLICY_KINDS",
    "Policy", "Prediction", "Request", "ResourceMonitor", "ResourcePolicy", "ResourceSample",
    "Threshold", "cache_key", "calibrate", "default_thresholds", "load_or_calibrate",
    "make_policy", "read_sample", "resolve_profile",
]
