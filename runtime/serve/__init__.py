"""HTTP serving with a width chosen per request (`slimrt serve`).

`InferencePool` needs only numpy; `create_app`, `ServeConfig` and `BackgroundServer` need the
serve extra (fastapi, uvicorn) and are imported on first use.
"""

from __future__ import annotations

from typing import Any

from .pool import InferencePool, QueueFullError, Result, default_workers

__all__ = ["BackgroundServer", "InferencePool", "QueueFullError", "Result", "ServeConfig",
           "create_app", "default_workers"]

_LAZY = ("BackgroundServer", "ServeConfig", "create_app")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'slimrt.serve' has no attribute {name!r}")
