"""Accuracy through the C++ engine: what a served model really scores (numpy only, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import GATE, Model, Session

__all__ = ["engine_accuracy"]


def engine_accuracy(model: Model, x: np.ndarray, y: np.ndarray, profiles: Sequence[Any] | None = None,
                    threads: int = 1, batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-1 accuracy (%) and MACs per sample of every profile (default: the named ones, and for a
    model with a gate op the gated runs too), run by the engine on ``x`` (float32 NCHW) against
    labels ``y``.

    The row named ``gate`` (the profile key ``"gate"``) is the gated runs: its ``macs`` is the
    average MACs per sample of the profiles chosen, ``choices`` the count of each choice by
    profile name."""
    expected = model.input_shape[1]
    if x.ndim != 4 or x.shape[1] != expected:
        raise ValueError(f"the data's images are {tuple(x.shape[1:])}, the model takes {expected} channels "
                         f"({tuple(model.input_shape[1:])} by default)")
    session = model.session(threads)
    keys = [p.name for p in model.profiles] if profiles is None else list(profiles)
    if profiles is None and model.has_gate:
        keys.append(GATE)
    rows = []
    for key in keys:
        if key == GATE and model.has_gate:
            rows.append(_gated_accuracy(model, session, x, y, batch_size))
            continue
        correct = 0
        for start in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
            out = session.run(xb, key)
            correct += int((out.reshape(len(xb), -1).argmax(1) == y[start:start + batch_size]).sum())
        rows.append({"name": str(key), "macs": int(model.macs(key)), "accuracy": 100.0 * correct / len(x)})
    return rows


def _gated_accuracy(model: Model, session: Session, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, Any]:
    correct, counts = 0, np.zeros(len(model.profiles), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        xb = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        out = session.run(xb, GATE)
        correct += int((out.reshape(len(xb), -1).argmax(1) == y[start:start + batch_size]).sum())
        counts += np.bincount(session.last_choice, minlength=len(counts))
    macs = np.array([p.macs for p in model.profiles], dtype=np.float64)
    return {"name": GATE, "macs": float(counts @ macs / max(len(x), 1)), "accuracy": 100.0 * correct / len(x),
            "choices": {p.name: int(c) for p, c in zip(model.profiles, counts)}}
