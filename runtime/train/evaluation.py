"""Accuracy through the C++ engine: what a served model really scores (numpy only, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import Model

__all__ = ["engine_accuracy"]


def engine_accuracy(model: Model, x: np.ndarray, y: np.ndarray, profiles: Sequence[Any] | None = None,
                    threads: int = 1, batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-1 accuracy (%) and MACs per sample of every profile (default: the named ones), run by
    the engine on ``x`` (float32 NCHW) against labels ``y``."""
    expected = model.input_shape[1]
    if x.ndim != 4 or x.shape[1] != expected:
        raise ValueError(f"the data's images are {tuple(x.shape[1:])}, the model takes {expected} channels "
                         f"({tuple(model.input_shape[1:])} by default)")
    session = model.session(threads)
    keys = [p.name for p in model.profiles] if profiles is None else list(profiles)
    rows = []
    for key in keys:
        correct = 0
        for start in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
            out = session.run(xb, key)
            correct += int((out.reshape(len(xb), -1).argmax(1) == y[start:start + batch_size]).sum())
        rows.append({"name": str(key), "macs": int(model.macs(key)), "accuracy": 100.0 * correct / len(x)})
    return rows
