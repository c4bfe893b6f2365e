"""Decoding and checking of /v1/infer requests, and encoding of their answers.

A request body is either JSON (a nested array, or an object {"input": array, "budget_ms": ms,
"profile": name or index}) or the raw bytes of a `.npy` file (Content-Type application/x-npy
or application/octet-stream) holding a float32 array. Options may also come as query
parameters `budget_ms` and `profile`; fields of a JSON object take precedence.
Every problem raises `BadRequest` with an HTTP status and a message that says what to send.
JSON is parsed with orjson when it is installed (several times faster on large arrays).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

_json_loads: Callable[[bytes], Any]
try:  # several times faster on large arrays; optional
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

__all__ = ["BadRequest", "InferOptions", "parse_input", "parse_options", "to_npy", "NPY_TYPES",
           "resolve_requested_profile"]

NPY_TYPES = ("application/x-npy", "application/octet-stream")
JSON_TYPE = "application/json"


class BadRequest(Exception):
    """A request the server refuses; `status` is the HTTP status code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferOptions:
    """Per-request options: a latency budget in ms and/or a requested profile key."""

    budget_ms: float | None = None
    profile: str | int | None = None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_input(body: bytes, content_type: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The input array of a request body and the options found in it (JSON objects only)."""
    kind = media_type(content_type)
    if kind == JSON_TYPE or kind.endswith("+json"):
        return _parse_json(body)
    if kind in NPY_TYPES:
        return _parse_npy(body), {}
    raise BadRequest(415, f"unsupported Content-Type {content_type or '(none)'!r}: send "
                          f"application/json or application/x-npy")


def _parse_json(body: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        doc = _json_loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "body is not valid JSON: nested too deeply") from None
    options: dict[str, Any] = {}
    if isinstance(doc, dict):
        unknown = set(doc) - {"input", "budget_ms", "profile"}
        if unknown:
            raise BadRequest(422, f"unknown field(s) {sorted(unknown)}; expected 'input', "
                                  f"'budget_ms', 'profile'")
        if "input" not in doc:
            raise BadRequest(422, "JSON object has no 'input' field holding the input array")
        options = {k: doc[k] for k in ("budget_ms", "profile") if k in doc}
        doc = doc["input"]
    if not isinstance(doc, list):
        raise BadRequest(422, "input must be a nested JSON array of numbers [N][C][H][W]")
    try:
        arr = np.array(doc)
    except (ValueError, RecursionError):
        raise BadRequest(422, "input is not a rectangular array: every row must have the "
                              "same length") from None
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise BadRequest(422, "input must hold numbers only")
    return arr.astype(np.float32), options


def _parse_npy(body: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # np.load raises many types on bad bytes
        raise BadRequest(400, f"body is not a valid .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise BadRequest(400, "body is an .npz archive; send a single .npy array")
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise BadRequest(422, f"input dtype is {arr.dtype}, expected float32")
    return arr.astype(np.float32, copy=False)


def check_input(x: np.ndarray, input_shape: Sequence[int], max_batch: int) -> np.ndarray:
    """`x` as a C-contiguous float32 [N, C, H, W] array with C, H, W of the model."""
    want = tuple(input_shape[1:])
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise BadRequest(422, f"input shape {list(x.shape)} does not match the model: "
                              f"expected [N, {', '.join(map(str, want))}]")
    if not 1 <= x.shape[0] <= max_batch:
        raise BadRequest(422, f"batch size {x.shape[0]} out of range: 1 to {max_batch}")
    if not np.isfinite(x).all():
        raise BadRequest(422, "input contains NaN or infinity")
    return np.ascontiguousarray(x, dtype=np.float32)


def parse_options(found: Mapping[str, Any], query: Mapping[str, str]) -> InferOptions:
    """Options from the JSON body (`found`) or else from the query string."""
    budget = found.get("budget_ms", query.get("budget_ms"))
    profile = found.get("profile", query.get("profile"))
    return InferOptions(_budget(budget), _profile_key(profile))


def _budget(value: Any) -> float | None:
    if value is None:
        return None
    try:
        ms = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        ms = math.nan
    if not (math.isfinite(ms) and ms > 0):
        raise BadRequest(422, f"budget_ms must be a number of milliseconds > 0, got {value!r}")
    return ms


def _profile_key(value: Any) -> str | int | None:
    if value is None or (isinstance(value, str) and not isinstance(value, bool)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise BadRequest(422, f"profile must be a profile name (string) or index (integer), "
                          f"got {value!r}")


def resolve_requested_profile(key: str | int, names: Sequence[str]) -> int:
    """Index of a requested profile: a name, else a string or int holding an index."""
    if isinstance(key, str):
        if key in names:
            return list(names).index(key)
        try:
            key = int(key)
        except ValueError:
            raise BadRequest(422, f"unknown profile {key!r}; profiles: "
                                  f"{', '.join(names)} (GET /v1/profiles)") from None
    if not 0 <= key < len(names):
        raise BadRequest(422, f"profile index {key} out of range: the model has "
                              f"{len(names)} profiles (0 to {len(names) - 1})")
    return key


def to_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
