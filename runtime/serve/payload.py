"""Decoding and checking of /v1/infer requests, and encoding of their answers.

A request body is either JSON (a nested array, or an object {"input": array, "budget_ms": ms,
"profile": name, index or multiplier}) or the raw bytes of a `.npy` file (Content-Type
application/x-npy or application/octet-stream) holding a float32 array. Options may also
come as query parameters `budget_ms` and `profile`; fields of a JSON object take precedence.
A profile is a profile name, an integer index, or a uniform width multiplier (a number with
a fraction, such as 0.6, in the model's range). The input is [N, C, H, W] with the model's C;
H and W may be any size the model runs.
Every problem raises `BadRequest` with an HTTP status and a message that says what to send.

A JSON body of at most `PIECEWISE_BYTES` (1 MiB) is parsed by the complete JSON parser
(orjson when installed), which holds the interpreter lock for a couple of milliseconds at
most. A larger one is read piece by piece (`parse_json_array`): its brackets and commas are
checked against the regular layout of an [N][C][H][W] array, and its numbers are parsed in
pieces of 64 KiB, so the thread parsing a 16 MiB body gives the lock back every fraction of
a millisecond instead of holding it for the whole body (about 300 ms in one call), and the
event loop keeps answering. A large body this reader does not take (malformed, ragged,
holding other values) is refused with the reader's reason, so it cannot hold the lock either.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..engine import nonfinite_message

_json_loads: Callable[[bytes], Any]
try:  # several times faster on large arrays; optional
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

__all__ = ["BadRequest", "InferOptions", "parse_input", "parse_json_array", "parse_options",
           "to_npy", "NPY_TYPES", "resolve_requested_profile", "check_content_type",
           "declared_length"]

NPY_TYPES = ("application/x-npy", "application/octet-stream")
JSON_TYPE = "application/json"
PIECEWISE_BYTES = 1 << 20  # larger JSON bodies are read piece by piece
_PIECE = 1 << 16  # 64 KiB: well under a millisecond of parsing at a time
MAX_DEPTH = 4  # [N][C][H][W]; deeper arrays go to the complete parser (or are refused)
_NUMBER_BYTES = b"0123456789+-.eE"
_JSON_SPACE = b" \t\r\n"
_BRACKETS_AS_SPACE = bytes.maketrans(b"[]", b"  ")
_NUMBER, _OPEN, _CLOSE, _COMMA, _OTHER = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
_CLASS = np.full(256, 5, dtype=np.uint8)  # byte -> its kind in a layout; 0: white space
_CLASS[np.frombuffer(_NUMBER_BYTES, dtype=np.uint8)] = 1
_CLASS[np.frombuffer(b"[],", dtype=np.uint8)] = (2, 3, 4)
_CLASS[np.frombuffer(_JSON_SPACE, dtype=np.uint8)] = 0
_SENTINEL_JSON = b'"\\u0000slimrt-input"'  # stands for the array while the object is parsed
_SENTINEL = "\x00slimrt-input"


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


def check_content_type(content_type: str | None) -> str:
    """"json" or "npy" for a Content-Type /v1/infer reads; BadRequest 415 otherwise."""
    kind = media_type(content_type)
    if kind == JSON_TYPE or kind.endswith("+json"):
        return "json"
    if kind in NPY_TYPES:
        return "npy"
    raise BadRequest(415, f"unsupported Content-Type {content_type or '(none)'!r}: send "
                          f"application/json or application/x-npy")


def declared_length(value: str | None, limit: int) -> int | None:
    """The Content-Length a request declares (None without one): 400 when it is not a
    number, 413 when it is over `limit` bytes."""
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest(400, f"invalid Content-Length {value!r}")
    if int(value) > limit:
        raise BadRequest(413, f"body of {value} bytes exceeds the limit of {limit} bytes")
    return int(value)


def parse_input(body: bytes, content_type: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The input array of a request body and the options found in it (JSON objects only)."""
    if check_content_type(content_type) == "json":
        return _parse_json(body)
    return _parse_npy(body), {}


def _parse_json(body: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    if len(body) > PIECEWISE_BYTES:
        read = parse_json_array(body)
        if isinstance(read, str):
            raise BadRequest(400, f"body is not a JSON array of numbers the server can read: "
                                  f"{read}. A body over {PIECEWISE_BYTES >> 20} MiB must be a "
                                  f"nested array [N][C][H][W] of numbers, or an object "
                                  f"{{\"input\": array, ...}} with scalar options")
        return read
    try:
        doc = _json_loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "body is not valid JSON: nested too deeply") from None
    options: dict[str, Any] = {}
    if isinstance(doc, dict):
        options = _object_options(doc)
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
    with np.errstate(over="ignore"):  # beyond float32: infinity, refused by check_input
        return arr.astype(np.float32), options


def _object_options(doc: dict[str, Any]) -> dict[str, Any]:
    unknown = set(doc) - {"input", "budget_ms", "profile"}
    if unknown:
        raise BadRequest(422, f"unknown field(s) {sorted(unknown)}; expected 'input', "
                              f"'budget_ms', 'profile'")
    if "input" not in doc:
        raise BadRequest(422, "JSON object has no 'input' field holding the input array")
    return {k: doc[k] for k in ("budget_ms", "profile") if k in doc}


def parse_json_array(body: bytes) -> tuple[np.ndarray, dict[str, Any]] | str:
    """A JSON body holding a regular nested array of numbers (bare, or as the "input" of an
    object whose other fields are scalars), read piece by piece: the float32 array and the
    object's options. Returns the reason as a string when the body is not of that form (the
    caller decides what to answer); raises BadRequest for an object with wrong fields.

    The array's span runs from the body's first '[' to its last ']', cut into pieces of
    about 64 KiB at commas. With white space deleted and every run of number characters
    marked as one "0", the span must read exactly as the marked layout of a regular array of
    the dimensions its first row implies ("[[0,0],[0,0]]"): one number in every place of an
    innermost row and nowhere else. Each piece then holds numbers and brackets only, and
    parsing it (brackets blanked) as a JSON array checks every number. So a body is accepted
    only if it is valid JSON of that form, and its values are the ones the complete parser
    gives.
    """
    lo, hi = body.find(b"["), body.rfind(b"]") + 1
    if lo < 0 or hi <= lo:
        return "no JSON array in the body"
    head, tail = body[:lo].strip(_JSON_SPACE), body[hi:].strip(_JSON_SPACE)
    doc: Any = None
    if head or tail:
        try:
            doc = _json_loads(body[:lo] + _SENTINEL_JSON + body[hi:])
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "the object around the input array is not valid JSON"
        if not isinstance(doc, dict) or doc.get("input") != _SENTINEL:
            return "the array is not the 'input' field of a JSON object with scalar fields"
    cuts = [lo]
    while cuts[-1] < hi:
        cut = body.find(b",", cuts[-1] + _PIECE, hi) if cuts[-1] + _PIECE < hi else -1
        cuts.append(hi if cut < 0 else cut + 1)  # a piece ends after its comma
    layout = b"".join(_layout(body[a:b]) for a, b in zip(cuts, cuts[1:]))
    if layout[:MAX_DEPTH + 1] == _OPEN * (MAX_DEPTH + 1):
        return f"arrays nested deeper than {MAX_DEPTH}; the input is [N][C][H][W]"
    dims = _regular_dims(layout)
    if dims is None or layout != _layout_of(dims):
        if _OTHER in layout:
            piece = next(body[a:b] for a, b in zip(cuts, cuts[1:]) if _OTHER in _layout(body[a:b]))
            other = chr(piece[int(np.flatnonzero(_CLASS[np.frombuffer(piece, np.uint8)] == 5)[0])])
            return f"found {other!r} where only numbers, brackets and commas may be"
        return "its brackets do not make a rectangular array of numbers (every row the " \
               "same length)"
    total = math.prod(dims)
    out = np.empty(total, dtype=np.float32)
    pos = 0
    for a, b in zip(cuts, cuts[1:]):
        end = b - 1 if body[b - 1:b] == b"," else b
        try:
            values = _json_loads(b"[" + body[a:end].translate(_BRACKETS_AS_SPACE) + b"]")
        except (ValueError, UnicodeDecodeError) as exc:
            return f"a number is not valid JSON ({exc})"
        if pos + len(values) > total:
            return "more numbers than its brackets hold"
        with np.errstate(over="ignore"):  # beyond float32: infinity, refused by check_input
            out[pos:pos + len(values)] = values
        pos += len(values)
    if pos != total:
        return "fewer numbers than its brackets hold"
    # the body is valid JSON: only now may its fields be judged, as the complete parser would
    return out.reshape(dims), ({} if doc is None else _object_options(doc))


def _layout(piece: bytes) -> bytes:
    """The layout of a piece of a JSON array: white space dropped, every run of number
    characters one _NUMBER, brackets and commas as _OPEN, _CLOSE, _COMMA, anything else
    _OTHER (numpy over a lookup table: a few vector passes, no Python loop)."""
    kinds = _CLASS[np.frombuffer(piece, dtype=np.uint8)]
    kinds = kinds[kinds != 0]
    number = kinds == 1
    keep = np.ones(kinds.size, dtype=bool)
    keep[1:] = ~(number[1:] & number[:-1])
    return kinds[keep].tobytes()


def _regular_dims(layout: bytes) -> list[int] | None:
    """The dimensions of a regular array of this layout ("[[0,0],[0,0]]" with 0 for a
    number), read from its first element at each depth (None if it is not even that
    regular)."""
    depth = len(layout) - len(layout.lstrip(_OPEN))
    if not 1 <= depth <= MAX_DEPTH:
        return None
    row, odd = divmod(layout.find(_CLOSE) - depth + 1, 2)  # "[0,0,0]": 2 W + 1 bytes
    if odd or row < 1:
        return None
    dims = [0] * depth
    dims[-1], length = row, 2 * row + 1
    for k in range(depth - 2, -1, -1):
        close = layout.find(_CLOSE * (depth - k))
        if close < 0:
            return None
        outer = close + (depth - k) - k  # the first element at depth k ends there
        n, rest = divmod(outer - 1, length + 1)
        if rest or n < 1:
            return None
        dims[k], length = n, outer
    return dims


def _layout_of(dims: Sequence[int]) -> bytes:
    part = _OPEN + (_NUMBER + _COMMA) * (dims[-1] - 1) + _NUMBER + _CLOSE
    for n in reversed(dims[:-1]):
        part = _OPEN + _COMMA.join([part] * n) + _CLOSE
    return part


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
    """`x` as a C-contiguous float32 [N, C, H, W] array with C of the model (whether the
    model runs H x W is the engine's to say: see CostModel)."""
    c, h, w = input_shape[1:]
    if x.ndim != 4 or x.shape[1] != c or min(x.shape[2:]) < 1:
        raise BadRequest(422, f"input shape {list(x.shape)} does not match the model: "
                              f"expected [N, {c}, H, W] (the model was built for "
                              f"[N, {c}, {h}, {w}])")
    if not 1 <= x.shape[0] <= max_batch:
        raise BadRequest(422, f"batch size {x.shape[0]} out of range: 1 to {max_batch}")
    problem = nonfinite_message(x)  # the engine would propagate them: refused, as Session.run(check_finite=True)
    if problem is not None:
        raise BadRequest(422, problem)
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


def _profile_key(value: Any) -> str | int | float | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise BadRequest(422, f"profile must be a profile name (string), an index (integer) or a "
                          f"width multiplier (number such as 0.6), got {value!r}")


def resolve_requested_profile(key: str | int | float, names: Sequence[str],
                              min_multiplier: float | None = None) -> int | float:
    """A requested profile: the index of a name, of an integer (or a string holding one), or
    a width multiplier (float, or a string holding a number that is not a name) in
    [min_multiplier, 1]. Without `min_multiplier`, multipliers are refused."""
    if isinstance(key, str):
        text = key
        if text in names:
            return list(names).index(text)
        try:
            key = int(text)
        except ValueError:
            try:
                key = float(text)
            except ValueError:
                key = math.nan
            if min_multiplier is None or not math.isfinite(key):
                also = ("" if min_multiplier is None
                        else f", or a width multiplier in [{min_multiplier:g}, 1]")
                raise BadRequest(422, f"unknown profile {text!r}; profiles: {', '.join(names)} "
                                      f"(GET /v1/profiles){also}") from None
    if isinstance(key, float):
        if min_multiplier is None:
            raise BadRequest(422, f"profile must be a profile name or index, got {key!r}")
        if not (math.isfinite(key) and min_multiplier - 1e-6 <= key <= 1.0 + 1e-6):
            raise BadRequest(422, f"multiplier {key:g} is outside this model's range "
                                  f"[{min_multiplier:g}, 1]")
        return key
    if not 0 <= key < len(names):
        raise BadRequest(422, f"profile index {key} out of range: the model has "
                              f"{len(names)} profiles (0 to {len(names) - 1})")
    return key


def to_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
