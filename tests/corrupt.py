"""Corrupted variants of a valid .slim file, for the error paths of every loader.

Each function takes the bytes of a valid model and returns a Corruption (name, data, expect):
`data` has exactly one defect and `expect` is a substring that the loader's error message must
contain (compare case-insensitively). Messages name the offending item (model.h), so `expect`
is that item (a tensor, op kind, activation or profile name) or, for container damage, one of
"too short", "truncated", "header", "JSON". all_corruptions() lists every variant.

unblocking_fifo() makes a FIFO where a model file is expected, for the loaders' refusal of
files that are not regular.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np


class Corruption(NamedTuple):
    name: str
    data: bytes
    expect: str


Entries = dict[str, tuple[str, list[int], bytes]]  # name -> (dtype, shape, raw bytes)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _join(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _unpack(data: bytes) -> tuple[dict[str, str], Entries]:
    header, body = _split(data)
    metadata = header.pop("__metadata__")
    entries = {name: (e["dtype"], e["shape"], body[e["data_offsets"][0]:e["data_offsets"][1]])
               for name, e in header.items()}
    return metadata, entries


def _pack(metadata: dict[str, str], entries: Entries) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    body = b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    return _join(header, body)


def _model(data: bytes) -> dict[str, Any]:
    return json.loads(_split(data)[0]["__metadata__"]["slimrt"])


def _edit_model(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    header, body = _split(data)
    model = json.loads(header["__metadata__"]["slimrt"])
    edit(model)
    header["__metadata__"]["slimrt"] = json.dumps(model)
    return _join(header, body)


def _first_weight(data: bytes) -> str:
    op = next(op for op in _model(data)["ops"] if op["op"] in ("conv", "linear"))
    return f"{op['name']}.weight"


def _last_linear(model: dict[str, Any]) -> dict[str, Any]:
    return [op for op in model["ops"] if op["op"] == "linear"][-1]


# -- container damage ------------------------------------------------------------------------

def truncated(data: bytes, at: int) -> Corruption:
    """The first `at` bytes only (fewer than 8: too short to hold the header length)."""
    return Corruption(f"truncated_at_{at}", data[:at], "truncated" if at >= 8 else "too short")


def truncations(data: bytes) -> list[Corruption]:
    """Cut inside the length, right after it, inside the header, inside the data, at the end."""
    (length,) = struct.unpack("<Q", data[:8])
    body = len(data) - 8 - length
    points = [0, 5, 8, 8 + length // 2, 8 + length + body // 2, len(data) - 1]
    return [truncated(data, at) for at in points]


def header_length_past_end(data: bytes) -> Corruption:
    """A header length far beyond the file."""
    return Corruption("header_length_past_end", struct.pack("<Q", 1 << 40) + data[8:], "header")


def non_json_header(data: bytes) -> Corruption:
    """The header bytes replaced by text that is not JSON, same length."""
    (length,) = struct.unpack("<Q", data[:8])
    garbage = (b"{not json: " + b"x" * length)[:length]
    return Corruption("non_json_header", data[:8] + garbage + data[8 + length:], "JSON")


def missing_model_json(data: bytes) -> Corruption:
    """A plain safetensors file: no __metadata__.slimrt."""
    header, body = _split(data)
    header["__metadata__"] = {"format": "pt"}
    return Corruption("missing_model_json", _join(header, body), "slimrt")


# -- tensors ---------------------------------------------------------------------------------

def missing_tensor(data: bytes) -> Corruption:
    """The model JSON names a weight that the file does not hold."""
    metadata, entries = _unpack(data)
    name = _first_weight(data)
    del entries[name]
    return Corruption("missing_tensor", _pack(metadata, entries), name)


def wrong_size(data: bytes) -> Corruption:
    """A tensor whose header shape needs more bytes than its data_offsets hold."""
    header, body = _split(data)
    name = _first_weight(data)
    header[name]["shape"][-1] += 1
    return Corruption("wrong_size", _join(header, body), name)


def wrong_shape(data: bytes) -> Corruption:
    """A consistent tensor of the right size but the wrong shape (flattened)."""
    metadata, entries = _unpack(data)
    name = _first_weight(data)
    dtype, shape, raw = entries[name]
    entries[name] = (dtype, [int(np.prod(shape))], raw)
    return Corruption("wrong_shape", _pack(metadata, entries), name)


def wrong_dtype(data: bytes) -> Corruption:
    """A weight stored as F64."""
    metadata, entries = _unpack(data)
    name = _first_weight(data)
    _, shape, raw = entries[name]
    entries[name] = ("F64", shape, np.frombuffer(raw, dtype="<f4").astype("<f8").tobytes())
    return Corruption("wrong_dtype", _pack(metadata, entries), name)


def overlapping_tensors(data: bytes) -> Corruption:
    """The second tensor (in data order) made to start inside the first, keeping its size."""
    header, body = _split(data)
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])
    first, second = header[names[0]], header[names[1]]
    begin = first["data_offsets"][0] + 4
    size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [begin, begin + size]
    return Corruption("overlapping_tensors", _join(header, body), "overlap")


def shape_overflow(data: bytes, dtype: str = "F32") -> Corruption:
    """The first weight given dtype `dtype`, a shape whose byte count is 2^64 or more (it wraps
    to 0 in 64-bit arithmetic) and no bytes."""
    header, body = _split(data)
    name = _first_weight(data)
    shape = {"F32": [1 << 32, 1 << 32], "I8": [1 << 32, 1 << 32], "F64": [1 << 31, 1 << 30, 4]}[dtype]
    header[name].update(dtype=dtype, shape=shape,
                        data_offsets=[header[name]["data_offsets"][0]] * 2)
    return Corruption(f"shape_overflow_{dtype}", _join(header, body), "overflows 64 bits")


def _edit_model_text(data: bytes, edit: Callable[[str], str]) -> bytes:
    header, body = _split(data)
    header["__metadata__"]["slimrt"] = edit(header["__metadata__"]["slimrt"])
    return _join(header, body)


def deep_model_json(data: bytes, depth: int = 1000) -> Corruption:
    """An extra field in the model JSON holding lists nested so that the JSON is `depth` deep
    (written as text: Python's json module cannot write it)."""
    nested = "[" * (depth - 1) + "]" * (depth - 1)
    text = _edit_model_text(data, lambda t: '{"extra":' + nested + "," + t[1:])
    return Corruption(f"deep_model_json_{depth}", text, "nests deeper than 64 levels")


def deep_header_json(data: bytes, depth: int = 1000) -> Corruption:
    """An extra header entry nested so that the header JSON is `depth` deep."""
    header, body = _split(data)
    nested = "[" * (depth - 1) + "]" * (depth - 1)
    text = ('{"extra":' + nested + "," + json.dumps(header, separators=(",", ":"))[1:]).encode()
    text += b" " * (-len(text) % 8)
    return Corruption(f"deep_header_json_{depth}", struct.pack("<Q", len(text)) + text + body,
                      "nests deeper than 64 levels")


# -- model JSON ------------------------------------------------------------------------------

def unknown_op(data: bytes) -> Corruption:
    def edit(model: dict[str, Any]) -> None:
        model["ops"][0]["op"] = "frobnicate"
    return Corruption("unknown_op", _edit_model(data, edit), "frobnicate")


def unknown_activation(data: bytes) -> Corruption:
    def edit(model: dict[str, Any]) -> None:
        next(op for op in model["ops"] if "act" in op)["act"] = "gelu_tanh"
    return Corruption("unknown_activation", _edit_model(data, edit), "gelu_tanh")


def activation_parameter_not_taken(data: bytes) -> Corruption:
    """An "act_beta" on an op whose activation reads no parameter."""
    def edit(model: dict[str, Any]) -> None:
        op = next(op for op in model["ops"] if "act" in op)
        op["act"], op["act_beta"] = "relu", 0.5
    return Corruption("activation_parameter_not_taken", _edit_model(data, edit),
                      "\"act_beta\", which activation 'relu' does not take")


def activation_parameter_not_a_number(data: bytes) -> Corruption:
    def edit(model: dict[str, Any]) -> None:
        op = next(op for op in model["ops"] if "act" in op)
        op["act"], op["act_alpha"] = "leaky_relu", "0.1"
    return Corruption("activation_parameter_not_a_number", _edit_model(data, edit), "act_alpha")


def profile_width_count(data: bytes) -> Corruption:
    """A profile with one width more than the model has groups."""
    count = len(_model(data)["groups"]) + 1

    def edit(model: dict[str, Any]) -> None:
        model["profiles"][0]["widths"].append(1)
    return Corruption("profile_width_count", _edit_model(data, edit), f"has {count} widths")


def profile_width_out_of_range(data: bytes) -> Corruption:
    """A profile giving a non-fixed group one channel more than its size."""
    model = _model(data)
    index = next(i for i, g in enumerate(model["groups"]) if not g["fixed"])
    size = model["groups"][index]["size"]

    def edit(model: dict[str, Any]) -> None:
        model["profiles"][0]["widths"][index] = size + 1
    return Corruption("profile_width_out_of_range", _edit_model(data, edit),
                      model["profiles"][0]["name"])


def used_before_produced(data: bytes) -> Corruption:
    """The first op reads the output of the second."""
    later = _model(data)["ops"][1]["output"]

    def edit(model: dict[str, Any]) -> None:
        model["ops"][0]["inputs"][0] = later
    return Corruption("used_before_produced", _edit_model(data, edit), later)


def linear_without_out_group(data: bytes) -> Corruption:
    """The last linear op loses its "out_group"."""
    name = _last_linear(_model(data))["name"]

    def edit(model: dict[str, Any]) -> None:
        del _last_linear(model)["out_group"]
    return Corruption("linear_without_out_group", _edit_model(data, edit),
                      f"op '{name}' has no \"out_group\"")


def output_is_input(data: bytes) -> Corruption:
    def edit(model: dict[str, Any]) -> None:
        model["output"] = model["input"]["name"]
    return Corruption("output_is_input", _edit_model(data, edit), "output is its input")


def huge_group(data: bytes, index: int | None = None, size: int = 1 << 20) -> Corruption:
    """Channel group `index` (default: the last linear op's) grown to `size` channels, every
    profile following it if the group is fixed; the tensors keep their shapes. One integer:
    a loader that sized weights from it before checking the tensors would allocate gigabytes."""
    model = _model(data)
    if index is None:
        index = _last_linear(model)["out_group"]
    user = next((op["name"] for op in model["ops"] if op.get("out_group") == index), None)

    def edit(model: dict[str, Any]) -> None:
        group = model["groups"][index]
        group["size"] = size
        if group.get("fixed"):
            for p in model["profiles"]:
                p["widths"][index] = size
    return Corruption(f"huge_group_{index}", _edit_model(data, edit),
                      f"'{user}.weight'" if user else "")


def newer_version(data: bytes) -> Corruption:
    def edit(model: dict[str, Any]) -> None:
        model["format_version"] = 3
    return Corruption("newer_version", _edit_model(data, edit), "version 3")


def all_corruptions(data: bytes) -> list[Corruption]:
    """Every corrupted variant of `data` (the bytes of a valid model)."""
    singles = [header_length_past_end, non_json_header, missing_model_json, missing_tensor,
               wrong_size, wrong_shape, wrong_dtype, unknown_op, unknown_activation,
               activation_parameter_not_taken, activation_parameter_not_a_number, profile_width_count, profile_width_out_of_range, used_before_produced,
               newer_version, linear_without_out_group, huge_group, overlapping_tensors,
               shape_overflow, deep_model_json, deep_header_json, output_is_input]
    return (truncations(data) + [make(data) for make in singles]
            + [shape_overflow(data, dtype) for dtype in ("I8", "F64")])


# -- files that are not regular --------------------------------------------------------------

@contextlib.contextmanager
def unblocking_fifo(path: Path, every: float = 3.0) -> Iterator[Path]:
    """A FIFO at `path` for the duration of the block.

    A loader that opens it blocking waits for a writer: every `every` seconds a thread opens it
    for writing (only succeeding while a reader waits) and closes it, so such a loader returns
    (late, with some error) instead of hanging the tests. Callers assert on time and message.
    """
    os.mkfifo(path)
    stop = threading.Event()

    def release_readers() -> None:
        while not stop.wait(every):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader is waiting

    thread = threading.Thread(target=release_readers, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        path.unlink()
