"""The .slim model file: reading, writing and validating it, and what its spec defines on it.

The format is specified once, at the top of csrc/core/model.h; this module is its Python twin.
Besides the container (read, write, to_bytes, validate) it computes the quantities the spec
defines: uniform widths, the channel map of every tensor at a profile (channel_maps), and the
MACs / params of a profile (profile_cost). The engine, the builder and the reference executor
all rely on these functions, so a model means the same thing everywhere.

Where model.h leaves a case open, this module takes the strict reading and refuses the file:
pool padding must be smaller than the kernel (every window then sees an input element), the
operands of an add must be channel prefixes at every width assignment, a grouped conv's input
must always run at full width (and so must a shuffle's), the macs/params recorded in a profile must equal the computed
ones, and every tensor in the file must be one the model uses.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Collection, Mapping, Sequence, Union

import numpy as np
import safetensors.numpy

from slimrt.errors import InvalidModelError, ProfileError

__all__ = [
    "FORMAT_VERSION", "ACTIVATIONS", "ACT_PARAMS", "OP_KINDS", "SlimFile", "Op", "Group", "TensorInfo",
    "read", "write", "to_bytes", "validate", "parse_ops", "parse_op", "parse_groups",
    "infer_shapes", "op_output_shape", "param_shapes",
    "conv_kind", "uniform_width", "uniform_widths", "resolve_widths", "channel_maps", "profile_cost",
    "epilogue_tensor_name", "read_regular_file", "MAX_JSON_DEPTH", "DTYPE_SIZES", "GATE_TENSORS", "gate_index",
    "FLOAT_FORMAT_VERSION", "INT8_FORMAT_VERSION", "PRECISIONS", "xscale_tensor_name",
]

FORMAT_VERSION = 2  # the newest version this reader reads
FLOAT_FORMAT_VERSION = 1  # what a writer records for a model without int8 ops
INT8_FORMAT_VERSION = 2  # the first version with int8 ops (model.h)
PRECISIONS = ("float32", "int8")
MAX_JSON_DEPTH = 64  # nesting of arrays and objects in the header JSON and in the model JSON
# Bytes per element of the safetensors dtypes with whole-byte elements (model.h).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}
ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu", "sigmoid", "leaky_relu", "tanh", "gelu",
               "hardsigmoid", "elu")
# The parameters an activation reads, with their defaults (model.h; as in ONNX).
ACT_PARAMS: dict[str, dict[str, float]] = {
    "leaky_relu": {"act_alpha": 0.01},
    "elu": {"act_alpha": 1.0},
    "hardsigmoid": {"act_alpha": 0.2, "act_beta": 0.5},
}
OP_KINDS = ("conv", "linear", "add", "concat", "maxpool", "avgpool", "global_avgpool",
            "flatten", "softmax", "act", "shuffle", "prelu", "scale_bias", "mul", "unflatten",
            "slice", "resize", "gate")
# Kinds whose output keeps the channel map of their (single) input.
MAP_PRESERVING = ("maxpool", "avgpool", "global_avgpool", "softmax", "act", "prelu", "scale_bias", "unflatten",
                  "resize", "gate")
RESIZE_MODES = ("nearest", "bilinear")
# Kinds with tensors of their own ("<op>.<name>"), see param_shapes.
WEIGHTED = ("conv", "linear", "prelu", "scale_bias", "gate")
# The tensors of a gate op, all required: "<op>.<name>" (model.h).
GATE_TENSORS = ("reduce.weight", "reduce.bias", "expand.weight", "expand.bias", "slim.weight", "slim.bias")
# Kinds with an epilogue (scale, bias), which a profile may replace ("<op>.scale@<profile>").
EPILOGUED = ("conv", "linear", "scale_bias")

Shape = tuple[int, ...]
Run = tuple[int, int]
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


@dataclass
class SlimFile:
    """A model in memory: `meta` is the model JSON of model.h, `tensors` its float32 arrays."""

    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]


@dataclass(frozen=True)
class Group:
    """A channel group: dimensions that share one channel order."""

    name: str
    size: int
    fixed: bool
    why: str = ""


@dataclass(frozen=True)
class Op:
    """One op of the graph, with its fields checked and defaults filled in.

    Fields a kind does not have keep their defaults. `out_group` is None for depthwise convs
    and for kinds without an output group.
    """

    kind: str
    name: str
    inputs: tuple[str, ...]
    output: str
    act: str = "none"
    act_alpha: float = 0.0  # the activation's parameters (ACT_PARAMS), defaults filled in
    act_beta: float = 0.0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    out_group: int | None = None
    ceil_mode: bool = False
    count_include_pad: bool = False
    start: int = 0  # slice: channels [start, end)
    end: int = 0
    scale: tuple[int, int] = (1, 1)  # resize: integer factors (sh, sw), and its mode
    mode: str = ""
    channels: int = 0  # gate: the active channels it reads (C), its hidden features (D), its choices (K)
    hidden: int = 0
    choices: int = 0
    precision: str = "float32"  # conv and linear: "float32" or "int8"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor at a profile: its full shape and its channel map.

    `runs` lists (offset, count) stretches of the full channel axis (axis 1) that are active,
    in the order they are stored; adjacent runs are merged. The active tensor has
    `active_shape`: the full shape with axis 1 replaced by `width`.
    """

    shape: Shape
    runs: tuple[Run, ...]

    @property
    def width(self) -> int:
        return sum(count for _, count in self.runs)

    @property
    def active_shape(self) -> Shape:
        return (self.shape[0], self.width) + self.shape[2:]

    def channel_index(self) -> np.ndarray:
        """The active positions of the full channel axis, in storage order."""
        parts = [np.arange(offset, offset + count) for offset, count in self.runs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Reading and writing the container
# ---------------------------------------------------------------------------------------------

def read(source: Source) -> SlimFile:
    """Read and validate a .slim model from a path or from its bytes.

    Raises FileNotFoundError for a missing path, OSError for a path that is not a regular file
    (a directory, FIFO or device: refused without waiting on a FIFO) and InvalidModelError for
    anything wrong in the bytes, with a message naming the offending item.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = read_regular_file(source)
    head = data[: 8 + _header_length(data, len(data))]
    meta, spans = _parse_container(head, len(data))
    # The container was checked entry by entry (the engine's rules): every tensor is F32 (or I8),
    # its bytes lie inside the data section and match its shape; each is copied out of the file.
    kinds = {"F32": (np.dtype("<f4"), np.float32), "I8": (np.dtype("i1"), np.int8)}
    tensors = {name: np.frombuffer(data, dtype=kinds[dtype][0], count=(end - begin) // kinds[dtype][0].itemsize,
                                   offset=len(head) + begin).reshape(shape).astype(kinds[dtype][1])
               for name, (begin, end, shape, dtype) in spans.items()}
    slim = SlimFile(meta, tensors)
    validate(slim)
    return slim


def to_bytes(slim: SlimFile) -> bytes:
    """The .slim bytes of a model; the model is validated first (InvalidModelError)."""
    validate(slim)
    return safetensors.numpy.save(_contiguous(slim.tensors), metadata=_metadata(slim.meta))


def write(slim: SlimFile, path: str | os.PathLike[str]) -> None:
    """Write a model to `path` after validating it (InvalidModelError)."""
    Path(path).write_bytes(to_bytes(slim))


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the file at `path`; OSError unless it is a regular file (never blocks on a FIFO)."""
    with _open_regular(Path(path)) as f:
        return f.read()


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading, after checking that it is a regular file.

    O_NONBLOCK keeps the open of a FIFO from waiting for a writer; the check then refuses it,
    as it refuses directories and devices, with the engine's message (OSError).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"'{path}' is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    return {"slimrt": json.dumps(meta, separators=(",", ":"))}


def _contiguous(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(array) for name, array in tensors.items()}


def _header_length(prefix: bytes, file_size: int) -> int:
    """The header length N from the first 8 bytes, checked against the file size."""
    if file_size < 8:
        raise InvalidModelError(
            f"file truncated: it has {file_size} bytes, too short for the 8-byte header "
            "length a .slim file starts with")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > file_size - 8:
        raise InvalidModelError(
            f"file truncated or corrupt: its header length {length} runs past the end of "
            f"the {file_size}-byte file")
    return length


_JSON_TOKEN = r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]'
_JSON_TOKENS = re.compile(_JSON_TOKEN, re.S)
_JSON_TOKENS_BYTES = re.compile(_JSON_TOKEN.encode(), re.S)


def _check_depth(text: str | bytes, what: str) -> None:
    """Refuse JSON nesting arrays and objects deeper than MAX_JSON_DEPTH, before parsing it.

    Brackets inside strings do not count; a string runs to its closing quote (a backslash escapes
    the next character) or to the end of the text. The engine scans the same way (model.cc).
    """
    tokens = _JSON_TOKENS_BYTES if isinstance(text, bytes) else _JSON_TOKENS
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    closing = (b"]", b"}") if isinstance(text, bytes) else ("]", "}")
    depth = 0
    for match in tokens.finditer(text):
        token = match.group()
        if token in opening:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InvalidModelError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        elif token in closing:
            depth -= 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _check_strings(node: Any) -> None:
    """Strings must be Unicode text: an escaped lone surrogate (\\ud800) is not (the engine's
    parser refuses it too)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError, a ValueError, on a lone surrogate
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: no NaN or Infinity, no lone surrogates (ValueError)."""
    value = json.loads(text, parse_constant=_refuse_constant)
    _check_strings(value)
    return value


def _parse_container(head: bytes, file_size: int) -> tuple[dict[str, Any], dict[str, tuple[int, int, Shape, str]]]:
    """Check the safetensors header (`head` = length + JSON); return the model JSON and every
    tensor's byte range in the data section, shape and dtype."""
    data_size = file_size - len(head)
    _check_depth(head[8:], "the file header JSON")
    try:
        header = _strict_json(head[8:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelError(f"the file header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidModelError("the file header JSON is not an object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("slimrt"), str):
        raise InvalidModelError(
            "the file has no __metadata__.slimrt model JSON: it is not a slimrt model "
            "(convert it with `slimrt convert`)")
    spans = {name: _check_header_entry(name, entry, data_size) for name, entry in header.items()}
    _check_no_overlap({name: span[:2] for name, span in spans.items()})
    _check_depth(metadata["slimrt"], "the model JSON (__metadata__.slimrt)")
    try:
        meta = _strict_json(metadata["slimrt"])
    except ValueError as exc:
        raise InvalidModelError(f"the model JSON (__metadata__.slimrt) is not valid JSON: {exc}")
    if not isinstance(meta, dict):
        raise InvalidModelError("the model JSON (__metadata__.slimrt) is not an object")
    return meta, spans


def _check_header_entry(name: str, entry: Any, data_size: int) -> tuple[int, int, Shape, str]:
    """Check one tensor's header entry and return its byte range [begin, end) in the data, its
    shape and its dtype.

    The order of the checks and their messages are the engine's (model.cc parse_entry); the
    F32-or-I8 rule is this reader's own.
    """
    if not isinstance(entry, dict):
        raise InvalidModelError(f"tensor '{name}': its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not _is_int_list(shape) or any(not 0 <= d < 2**63 for d in shape):
        raise InvalidModelError(f"tensor '{name}' has an invalid shape {shape!r}")
    if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise InvalidModelError(f"tensor '{name}' has invalid data_offsets {offsets!r}")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise InvalidModelError(f"tensor '{name}' has unknown dtype {dtype!r}")
    held = offsets[1] - offsets[0]
    needed = DTYPE_SIZES[dtype] * math.prod(shape)
    if needed >= 2**64:
        raise InvalidModelError(
            f"tensor '{name}' has shape {shape} of {dtype}, whose size overflows 64 bits (it holds "
            f"{held} bytes)")
    if held != needed:
        raise InvalidModelError(
            f"tensor '{name}' holds {held} bytes, its shape {shape} of {dtype} needs {needed}")
    if dtype not in ("F32", "I8"):
        raise InvalidModelError(
            f"tensor '{name}' has dtype {dtype}; slimrt reads F32 tensors (and I8 weights of int8 ops) only")
    if offsets[1] > data_size:
        raise InvalidModelError(
            f"file truncated: tensor '{name}' ends at byte {offsets[1]} of the data section, "
            f"which has {data_size} bytes")
    return offsets[0], offsets[1], tuple(shape), dtype


def _check_no_overlap(spans: Mapping[str, tuple[int, int]]) -> None:
    """Tensors may not share bytes; empty ones occupy none. Reports pairs as the engine does."""
    ranges = sorted((begin, end, name) for name, (begin, end) in spans.items() if end > begin)
    for (b0, e0, n0), (b1, e1, n1) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise InvalidModelError(f"tensors '{n0}' [{b0}, {e0}) and '{n1}' [{b1}, {e1}) overlap: "
                                    "the tensors of a file may not share bytes")


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Parsing the model JSON
# ---------------------------------------------------------------------------------------------

def _need(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise InvalidModelError(f"{where} has no \"{key}\" field")
    return obj[key]


MAX_SIZE = 1 << 20  # channels of a group, dimensions of the input, slice bounds, conv groups
MAX_WINDOW = 64  # kernel, stride, dilation, padding and resize factors
MAX_TAPS = 256  # kernel height x width


def _int_field(obj: Mapping[str, Any], key: str, where: str, minimum: int, maximum: int = MAX_SIZE) -> int:
    value = _need(obj, key, where)
    if not _is_int(value) or not minimum <= value <= maximum:
        raise InvalidModelError(
            f"{where}: \"{key}\" must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def _ints_field(obj: Mapping[str, Any], key: str, where: str, length: int, minimum: int,
                maximum: int = MAX_WINDOW, default: int | None = None) -> tuple[int, ...]:
    """A list of `length` integers in [minimum, maximum]; absent means `default` repeated
    (required when there is no default)."""
    if key not in obj and default is not None:
        return (default,) * length
    value = _need(obj, key, where)
    if not _is_int_list(value) or len(value) != length or any(not minimum <= v <= maximum for v in value):
        raise InvalidModelError(
            f"{where}: \"{key}\" must be a list of {length} integers in [{minimum}, {maximum}], "
            f"got {value!r}")
    return tuple(value)


def _bool_field(obj: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise InvalidModelError(f"{where}: \"{key}\" must be true or false, got {value!r}")
    return value


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _need(obj, key, where)
    if not isinstance(value, str) or not value:
        raise InvalidModelError(f"{where}: \"{key}\" must be a non-empty string, got {value!r}")
    return value


def _check_header_fields(meta: Mapping[str, Any]) -> None:
    if not isinstance(meta, Mapping):
        raise InvalidModelError("the model JSON is not an object")
    if meta.get("format") != "slimrt":
        raise InvalidModelError(
            f"the model JSON has \"format\" {meta.get('format')!r}, expected \"slimrt\"")
    version = _need(meta, "format_version", "the model JSON")
    if not _is_int(version) or version < 1:
        raise InvalidModelError(f"format_version {version!r} is not a valid version (1)")
    if version > FORMAT_VERSION:
        raise InvalidModelError(
            f"format_version {version} is newer than this reader's format_version "
            f"{FORMAT_VERSION}; upgrade slimrt to read it")
    if "name" in meta:
        _str_field(meta, "name", "the model JSON")
    _str_field(meta, "output", "the model JSON")
    source = _need(meta, "input", "the model JSON")
    if not isinstance(source, Mapping):
        raise InvalidModelError("the model JSON: \"input\" must be an object")
    _str_field(source, "name", "the model input")
    _ints_field(source, "shape", "the model input", 4, 1, MAX_SIZE)
    m = meta.get("min_multiplier", 1.0)
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1:
        raise InvalidModelError(f"min_multiplier must be in (0, 1], got {m!r}")


def parse_groups(meta: Mapping[str, Any]) -> list[Group]:
    """The channel groups of the model JSON, checked (InvalidModelError)."""
    raw = _need(meta, "groups", "the model JSON")
    if not isinstance(raw, list):
        raise InvalidModelError("the model JSON: \"groups\" must be a list")
    groups, seen = [], set()
    for i, entry in enumerate(raw):
        where = f"channel group {i}"
        if not isinstance(entry, Mapping):
            raise InvalidModelError(f"{where} is not an object")
        name = _str_field(entry, "name", where)
        where = f"channel group {i} '{name}'"
        if name in seen:
            raise InvalidModelError(f"{where}: the name is used by an earlier group")
        seen.add(name)
        why = entry.get("why", "")
        if not isinstance(why, str):
            raise InvalidModelError(f"{where}: \"why\" must be a string")
        fixed = _bool_field(entry, "fixed", where, False)
        groups.append(Group(name, _int_field(entry, "size", where, 1, MAX_SIZE), fixed, why))
    return groups


# Required fields; the others default as in model.h (stride 1, pads 0, dilation 1, groups 1 for
# conv, act "none").
_OP_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("kernel",),
    "linear": ("out_group",),
    "maxpool": ("kernel",),
    "avgpool": ("kernel",),
    "shuffle": ("groups",),
    "slice": ("start", "end"),
    "resize": ("scale", "mode"),
    "gate": ("channels", "hidden", "choices"),
}


def parse_ops(meta: Mapping[str, Any]) -> list[Op]:
    """The ops of the model JSON with their own fields checked (InvalidModelError).

    Checks kinds, names, activations, field types and that every input is the model input or
    the output of an earlier op. Shapes are checked by infer_shapes.
    """
    raw = _need(meta, "ops", "the model JSON")
    if not isinstance(raw, list):
        raise InvalidModelError("the model JSON: \"ops\" must be a list")
    n_groups = len(meta.get("groups", []))
    source = meta["input"]["name"]
    produced, names, ops = {source}, set(), []
    gate: str | None = None
    for i, entry in enumerate(raw):
        op = parse_op(i, entry, n_groups)
        if op.kind == "gate":
            if gate is not None:
                raise InvalidModelError(f"op '{op.name}' is a second gate; a model has at most one (the first is "
                                        f"'{gate}')")
            gate = op.name
        if op.name in names:
            raise InvalidModelError(f"op {i} '{op.name}': the name is used by an earlier op")
        for tensor in op.inputs:
            if tensor not in produced:
                raise InvalidModelError(
                    f"op '{op.name}' uses tensor '{tensor}' before any op produces it "
                    "(ops must be in execution order)")
        if op.output in produced:
            raise InvalidModelError(
                f"op '{op.name}' outputs tensor '{op.output}', which already exists")
        names.add(op.name)
        produced.add(op.output)
        ops.append(op)
    return ops


def parse_op(index: int, entry: Any, n_groups: int) -> Op:
    """One op (the `index`-th) of the model JSON, its own fields checked (InvalidModelError)."""
    if not isinstance(entry, Mapping):
        raise InvalidModelError(f"op {index} is not an object")
    name = _str_field(entry, "name", f"op {index}")
    where = f"op '{name}'"
    kind = _need(entry, "op", where)
    if kind not in OP_KINDS:
        raise InvalidModelError(
            f"{where} has unknown kind '{kind}'; known kinds: {', '.join(OP_KINDS)}")
    inputs = _need(entry, "inputs", where)
    if not isinstance(inputs, list) or not all(isinstance(t, str) and t for t in inputs):
        raise InvalidModelError(f"{where}: \"inputs\" must be a list of tensor names")
    expected = {"add": "2", "mul": "2", "concat": "at least 1"}.get(kind, "1")
    if (kind in ("add", "mul") and len(inputs) != 2) or (kind == "concat" and not inputs) or \
            (kind not in ("add", "mul", "concat") and len(inputs) != 1):
        raise InvalidModelError(f"{where} ({kind}) has {len(inputs)} inputs, expected {expected}")
    for key in _OP_FIELDS.get(kind, ()):
        _need(entry, key, where)
    # every op's "act" is checked (the kinds without one ignore it), as in the engine
    fields: dict[str, Any] = _act_fields(entry, where)
    if kind in ("conv", "maxpool", "avgpool"):
        fields["kernel"] = _ints_field(entry, "kernel", where, 2, 1)
        if fields["kernel"][0] * fields["kernel"][1] > MAX_TAPS:
            raise InvalidModelError(f"{where} has a {fields['kernel'][0]}x{fields['kernel'][1]} kernel; at most "
                                    f"{MAX_TAPS} taps are supported")
        fields["stride"] = _ints_field(entry, "stride", where, 2, 1, default=1)
        fields["pads"] = _ints_field(entry, "pads", where, 4, 0, default=0)
        dilation = _ints_field(entry, "dilation", where, 2, 1, default=1)
        if kind == "conv":
            fields["dilation"] = dilation
        ceil_mode = _bool_field(entry, "ceil_mode", where, False)
        count_include_pad = _bool_field(entry, "count_include_pad", where, False)
    if kind in ("conv", "linear"):
        fields["groups"] = _int_field(entry, "groups", where, 1) if "groups" in entry else 1
        if kind == "linear":
            del fields["groups"]
    if kind == "shuffle":
        fields["groups"] = _int_field(entry, "groups", where, 1)
    has_out_group = entry.get("out_group") is not None  # null counts as absent
    if kind == "conv" and fields["groups"] == 1 and not has_out_group:
        raise InvalidModelError(f"conv '{name}' has no out_group; only depthwise convs omit it")
    if kind in ("conv", "linear") and (kind == "linear" or has_out_group):
        fields["out_group"] = _int_field(entry, "out_group", where, 0)
        if fields["out_group"] >= n_groups:
            raise InvalidModelError(
                f"{where} names channel group {fields['out_group']}, the model has {n_groups}")
    if kind == "resize":
        fields["scale"] = _ints_field(entry, "scale", where, 2, 1)
        fields["mode"] = _str_field(entry, "mode", where)
        if fields["mode"] not in RESIZE_MODES:
            raise InvalidModelError(f"{where} has mode '{fields['mode']}' (known: {', '.join(RESIZE_MODES)})")
    if kind == "gate":
        for key in ("channels", "hidden", "choices"):
            fields[key] = _int_field(entry, key, where, 1)
    if kind == "slice":
        fields["start"] = _int_field(entry, "start", where, 0, MAX_SIZE - 1)
        fields["end"] = _int_field(entry, "end", where, fields["start"] + 1)
    if "precision" in entry:
        if kind not in ("conv", "linear"):
            raise InvalidModelError(f"{where} has \"precision\"; only conv and linear ops take one")
        precision = entry["precision"]
        if precision not in PRECISIONS:
            raise InvalidModelError(f"{where} has precision {precision!r} (known: {', '.join(PRECISIONS)})")
        fields["precision"] = precision
    if kind in ("maxpool", "avgpool"):
        fields["ceil_mode"] = ceil_mode
    if kind == "avgpool":
        fields["count_include_pad"] = count_include_pad
    output = _str_field(entry, "output", where)
    return Op(kind=kind, name=name, inputs=tuple(inputs), output=output, **fields)


def _act_fields(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """"act" and the parameters it reads ("act_alpha", "act_beta"), defaults filled in."""
    act = entry.get("act", "none")
    if not isinstance(act, str):
        raise InvalidModelError(f"{where} field \"act\" must be a string")
    if act not in ACTIVATIONS:
        raise InvalidModelError(
            f"{where} has unknown activation '{act}'; known: {', '.join(ACTIVATIONS)}")
    fields: dict[str, Any] = {"act": act}
    takes = ACT_PARAMS.get(act, {})
    for key in ("act_alpha", "act_beta"):
        if key not in entry:
            fields[key] = takes.get(key, 0.0)
            continue
        if key not in takes:
            raise InvalidModelError(f"{where} has \"{key}\", which activation '{act}' does not take")
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidModelError(f"{where} field \"{key}\" must be a finite number")
        fields[key] = float(value)
    return fields


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------

def conv_kind(op: Op, in_channels: int) -> str:
    """'dense' (groups == 1), 'depthwise' (groups == Cin, no out_group) or 'grouped'."""
    if op.groups == 1:
        if op.out_group is None:
            raise InvalidModelError(
                f"conv '{op.name}' has no out_group; only depthwise convs omit it")
        return "dense"
    if op.out_group is None:
        if op.groups != in_channels:
            raise InvalidModelError(
                f"conv '{op.name}' has no out_group but groups {op.groups} differs from its "
                f"{in_channels} input channels; only depthwise convs (groups == input "
                "channels) omit out_group")
        return "depthwise"
    return "grouped"


def _conv_out(size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    span = size + p0 + p1 - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else 0


def _pool_out(size: int, k: int, s: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """PyTorch / ONNX pooling size; in ceil mode the last window must start before the end pad."""
    span = size + p0 + p1 - k
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p0:
        out -= 1
    return out


def op_output_shape(op: Op, ins: list[Shape], groups: Sequence[Group]) -> Shape:
    """Full output shape of `op` for input shapes `ins`; InvalidModelError if it refuses them."""
    where = f"op '{op.name}' ({op.kind})"
    if op.kind in ("conv", "maxpool", "avgpool", "global_avgpool", "flatten", "shuffle", "slice", "resize", "gate"):
        if len(ins[0]) != 4:
            raise InvalidModelError(f"{where} needs a rank-4 input, '{op.inputs[0]}' has "
                                    f"shape {list(ins[0])}")
    if op.kind == "conv":
        return _conv_output_shape(op, ins[0], groups, where)
    if op.kind in ("maxpool", "avgpool"):
        return _pool_output_shape(op, ins[0], where)
    if op.kind == "linear":
        if len(ins[0]) != 2:
            raise InvalidModelError(f"{where} needs a rank-2 input [N, In], '{op.inputs[0]}' "
                                    f"has shape {list(ins[0])}; insert a flatten")
        return (ins[0][0], groups[op.out_group].size)  # type: ignore[index]
    if op.kind == "add":
        a, b = ins
        if len(a) != len(b) or a[0] != b[0] or a[2:] != b[2:]:
            raise InvalidModelError(f"{where} adds tensors of shapes {list(a)} and {list(b)}; "
                                    "only their channel counts may differ")
        return (a[0], max(a[1], b[1])) + a[2:]
    if op.kind == "mul":
        x, g = ins
        if len(x) != 4 or g != (x[0], x[1], 1, 1):
            raise InvalidModelError(f"{where} multiplies {list(x)} by {list(g)}; the gate (input 2) must be "
                                    "[N, C, 1, 1] of its input's N and C, the input [N, C, H, W]")
        return x
    if op.kind == "concat":
        first = ins[0]
        for tensor, shape in zip(op.inputs, ins):
            if len(shape) != 4:
                raise InvalidModelError(f"{where}: input '{tensor}' has shape {list(shape)}; "
                                        "concat joins rank-4 [N, C, H, W] tensors")
            if len(shape) != len(first) or shape[0] != first[0] or shape[2:] != first[2:]:
                raise InvalidModelError(
                    f"{where}: input '{tensor}' has shape {list(shape)}, which does not match "
                    f"{list(first)} outside the channel axis")
        return (first[0], sum(s[1] for s in ins)) + first[2:]
    if op.kind == "global_avgpool":
        return ins[0][:2] + (1, 1)
    if op.kind == "flatten":
        n, c, h, w = ins[0]
        return (n, c * h * w)
    if op.kind == "resize":
        n, c, h, w = ins[0]
        return (n, c, h * op.scale[0], w * op.scale[1])
    if op.kind == "slice":
        if op.end > ins[0][1]:
            raise InvalidModelError(f"{where} takes channels [{op.start}, {op.end}) of an input with "
                                    f"{ins[0][1]}")
        return (ins[0][0], op.end - op.start) + ins[0][2:]
    if op.kind == "unflatten":
        if len(ins[0]) != 2:
            raise InvalidModelError(f"{where} needs a rank-2 input [N, F], '{op.inputs[0]}' has shape "
                                    f"{list(ins[0])}")
        return ins[0] + (1, 1)
    if op.kind == "shuffle" and ins[0][1] % op.groups:
        raise InvalidModelError(f"{where}: groups {op.groups} must divide its {ins[0][1]} input "
                                "channels")
    if op.kind in ("softmax", "prelu", "scale_bias") and len(ins[0]) < 2:
        raise InvalidModelError(f"{where} needs an input of rank >= 2")
    return ins[0]


def _conv_output_shape(op: Op, shape: Shape, groups: Sequence[Group], where: str) -> Shape:
    n, cin, h, w = shape
    kind = conv_kind(op, cin)
    if kind == "depthwise":
        cout = cin
    else:
        cout = groups[op.out_group].size  # type: ignore[index]
    if kind == "grouped" and (cin % op.groups or cout % op.groups):
        raise InvalidModelError(f"{where}: groups {op.groups} must divide its {cin} input and "
                                f"{cout} output channels")
    (kh, kw), (sh, sw), (dh, dw) = op.kernel, op.stride, op.dilation
    top, left, bottom, right = op.pads
    oh, ow = _conv_out(h, kh, sh, dh, top, bottom), _conv_out(w, kw, sw, dw, left, right)
    if oh < 1 or ow < 1:
        raise InvalidModelError(f"{where}: a {h}x{w} input gives an empty output; the padded "
                                "input is smaller than the dilated kernel")
    return (n, cout, oh, ow)


def _pool_output_shape(op: Op, shape: Shape, where: str) -> Shape:
    n, c, h, w = shape
    (kh, kw), (sh, sw) = op.kernel, op.stride
    top, left, bottom, right = op.pads
    if max(top, bottom) >= kh or max(left, right) >= kw:
        raise InvalidModelError(f"{where}: pads {list(op.pads)} must be smaller than the "
                                f"kernel {list(op.kernel)}")
    oh = _pool_out(h, kh, sh, top, bottom, op.ceil_mode)
    ow = _pool_out(w, kw, sw, left, right, op.ceil_mode)
    if oh < 1 or ow < 1:
        raise InvalidModelError(f"{where}: a {h}x{w} input is smaller than the kernel")
    return (n, c, oh, ow)


def infer_shapes(meta: Mapping[str, Any], hw: tuple[int, int] | None = None,
                 batch: int | None = None) -> dict[str, Shape]:
    """Full shape of every tensor, for the default input or for input size `hw` / `batch`.

    Raises InvalidModelError when an op does not accept its input shapes.
    """
    groups, ops = parse_groups(meta), parse_ops(meta)
    return _shapes(meta, groups, ops, hw, batch)


def _shapes(meta: Mapping[str, Any], groups: Sequence[Group], ops: Sequence[Op],
            hw: tuple[int, int] | None, batch: int | None) -> dict[str, Shape]:
    n, c, h, w = meta["input"]["shape"]
    if hw is not None:
        h, w = hw
    shapes: dict[str, Shape] = {meta["input"]["name"]: (batch or n, c, h, w)}
    for op in ops:
        shapes[op.output] = op_output_shape(op, [shapes[t] for t in op.inputs], groups)
    return shapes


def param_shapes(op: Op, in_shape: Shape, groups: Sequence[Group]) -> dict[str, Shape]:
    """Shapes of the tensors of an op of a WEIGHTED kind: the weight and the optional scale / bias
    of a conv or linear, the optional scale / bias of a scale_bias and the slopes of a prelu (one
    per input channel)."""
    if op.kind == "prelu":
        return {"slope": (in_shape[1],)}
    if op.kind == "gate":
        c, d, k = op.channels, op.hidden, op.choices
        return dict(zip(GATE_TENSORS, ((c, d), (d,), (d, c), (c,), (d, k), (k,))))
    if op.kind == "scale_bias":
        return {"scale": (in_shape[1],), "bias": (in_shape[1],)}
    if op.kind == "linear":
        cout = groups[op.out_group].size  # type: ignore[index]
        weight: Shape = (in_shape[1], cout)
    else:
        kh, kw = op.kernel
        cin = in_shape[1]
        kind = conv_kind(op, cin)
        cout = cin if kind == "depthwise" else groups[op.out_group].size  # type: ignore[index]
        weight = (kh, kw, cin) if kind == "depthwise" else (kh, kw, cin // op.groups, cout)
    shapes: dict[str, Shape] = {"weight": weight, "scale": (cout,), "bias": (cout,)}
    if op.precision == "int8":
        shapes.update(wscale=(cout,), xscale=(1,))
    return shapes


# ---------------------------------------------------------------------------------------------
# Widths and channel maps
# ---------------------------------------------------------------------------------------------

def uniform_widths(meta: Mapping[str, Any], m: float) -> list[int]:
    """Widths of every group at uniform multiplier `m` (rule in model.h).

    Raises ProfileError when `m` is outside [min_multiplier, 1].
    """
    low = meta["min_multiplier"]
    if not (isinstance(m, numbers.Real) and math.isfinite(m) and low <= m <= 1):
        raise ProfileError(f"multiplier {m!r} is outside the model's range [{low}, 1]; "
                           "pick a multiplier in that range or a named profile")
    return [g.size if g.fixed else uniform_width(g.size, float(m)) for g in parse_groups(meta)]


def uniform_width(size: int, m: float) -> int:
    """Width of a free group of ``size`` channels at uniform multiplier ``m`` (rule in model.h).

    The value nearest to ``size * m`` among the multiples of 8 below ``size`` and ``size``
    itself (ties go up), at least ``min(8, size)``: ``m = 1`` is always the full group.
    """
    t = size * m
    lo = 8 * math.floor(t / 8)
    hi = min(lo + 8, size)
    width = lo if t - lo < hi - t else hi
    return min(max(width, min(8, size)), size)


def resolve_widths(meta: Mapping[str, Any],
                   profile: str | int | float) -> tuple[list[int], str | None]:
    """Widths for a profile name, a profile index or a uniform multiplier, and the profile name.

    A multiplier whose widths equal a named profile's widths resolves to that profile (the
    cheapest such), so its epilogues apply. Raises ProfileError for an unknown name, an index
    out of range or a multiplier outside the model's range.
    """
    profiles = meta.get("profiles", [])
    names = [p["name"] for p in profiles]
    if isinstance(profile, str):
        if profile not in names:
            raise ProfileError(f"unknown profile '{profile}'; the model has profiles "
                               f"{', '.join(repr(n) for n in names) or '(none)'}")
        return list(profiles[names.index(profile)]["widths"]), profile
    if isinstance(profile, (bool, np.bool_)):
        raise ProfileError(f"profile must be a name, an index or a multiplier, got {profile!r}")
    if isinstance(profile, numbers.Integral):
        index = int(profile)
        if not 0 <= index < len(profiles):
            raise ProfileError(f"profile index {index} is out of range: the model has "
                               f"{len(profiles)} profiles (0..{len(profiles) - 1})")
        return list(profiles[index]["widths"]), names[index]
    if isinstance(profile, numbers.Real):
        widths = uniform_widths(meta, float(profile))
        for p in profiles:
            if list(p["widths"]) == widths:
                return widths, p["name"]
        return widths, None
    raise ProfileError(f"profile must be a name, an index or a multiplier, got {profile!r}")


def _merge(runs: Sequence[Run]) -> tuple[Run, ...]:
    merged: list[Run] = []
    for offset, count in runs:
        if count == 0:
            continue
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + count)
        else:
            merged.append((offset, count))
    return tuple(merged)


def _op_runs(op: Op, ins: list[TensorInfo], widths: Sequence[int],
             cin_kind: str) -> tuple[Run, ...]:
    if op.kind == "linear" or (op.kind == "conv" and cin_kind != "depthwise"):
        return ((0, widths[op.out_group]),)  # type: ignore[index]
    if op.kind == "add":
        for tensor, info in zip(op.inputs, ins):
            if len(info.runs) != 1 or info.runs[0][0] != 0:
                raise InvalidModelError(f"add '{op.name}': operand '{tensor}' is not a channel "
                                        "prefix; zero padding match needs prefix operands")
        return ((0, max(ins[0].width, ins[1].width)),)
    if op.kind == "concat":
        runs, shift = [], 0
        for info in ins:
            runs.extend((offset + shift, count) for offset, count in info.runs)
            shift += info.shape[1]
        return _merge(runs)
    if op.kind == "mul":
        if ins[0].runs != ins[1].runs:
            raise InvalidModelError(f"mul '{op.name}': its gate '{op.inputs[1]}' has the channel runs "
                                    f"{list(ins[1].runs)}, its input '{op.inputs[0]}' {list(ins[0].runs)}; "
                                    "the gate must have its input's channels")
        return ins[0].runs
    if op.kind in ("shuffle", "slice"):
        if ins[0].runs != ((0, ins[0].shape[1]),):
            what = "a channel shuffle" if op.kind == "shuffle" else "a channel slice"
            raise InvalidModelError(f"{op.kind} '{op.name}': its input '{op.inputs[0]}' is not at full "
                                    f"width; {what} needs all its input channels")
        return ((0, op.end - op.start),) if op.kind == "slice" else ins[0].runs
    if op.kind == "flatten":
        pixels = ins[0].shape[2] * ins[0].shape[3]
        return _merge([(o * pixels, k * pixels) for o, k in ins[0].runs])
    return ins[0].runs


def channel_maps(meta: Mapping[str, Any], widths: Sequence[int],
                 hw: tuple[int, int] | None = None,
                 batch: int | None = None) -> dict[str, TensorInfo]:
    """Shape and channel map of every tensor at group widths `widths` and input size `hw`.

    `widths` gives one width per channel group (as a profile does); `hw` defaults to the
    model's input H, W. Raises InvalidModelError for a graph that does not accept the shapes.
    """
    groups, ops = parse_groups(meta), parse_ops(meta)
    return _channel_maps(meta, groups, ops, widths, _shapes(meta, groups, ops, hw, batch))


def _channel_maps(meta: Mapping[str, Any], groups: Sequence[Group], ops: Sequence[Op],
                  widths: Sequence[int], shapes: Mapping[str, Shape]) -> dict[str, TensorInfo]:
    if len(widths) != len(groups):
        raise ProfileError(f"{len(widths)} widths given, the model has {len(groups)} channel "
                           "groups")
    source = meta["input"]["name"]
    infos = {source: TensorInfo(shapes[source], ((0, shapes[source][1]),))}
    for op in ops:
        ins = [infos[t] for t in op.inputs]
        kind = conv_kind(op, ins[0].shape[1]) if op.kind == "conv" else ""
        infos[op.output] = TensorInfo(shapes[op.output], _op_runs(op, ins, widths, kind))
    return infos


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------

def epilogue_tensor_name(op_name: str, which: str, profile: str) -> str:
    """Name of a per-profile epilogue tensor: '<op>.scale@<profile>' or '<op>.bias@<profile>'."""
    return f"{op_name}.{which}@{profile}"


def xscale_tensor_name(op_name: str, profile: str) -> str:
    """Name of an int8 op's input scale at one profile: '<op>.xscale@<profile>'."""
    return f"{op_name}.xscale@{profile}"


def profile_cost(model: Mapping[str, Any] | SlimFile, widths: Sequence[int], *,
                 profile: str | None = None,
                 tensor_names: Collection[str] | None = None,
                 input_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """(MACs, params) at group widths `widths`, as model.h defines them; MACs per sample at
    the model's input shape, or at input size `input_hw` = (H, W) when given.

    `model` is the model JSON or a SlimFile. params counts the active elements of the scale
    and bias tensors present, so it needs the tensor names: taken from a SlimFile, or from
    `tensor_names`; with a bare model JSON and no names, only weights are counted. `profile`
    names the profile whose per-profile epilogue tensors count as present.
    """
    if isinstance(model, SlimFile):
        meta: Mapping[str, Any] = model.meta
        names: Collection[str] = tensor_names if tensor_names is not None else model.tensors
    else:
        meta, names = model, tensor_names if tensor_names is not None else ()
    groups, ops = parse_groups(meta), parse_ops(meta)
    shapes = _shapes(meta, groups, ops, input_hw, None)
    infos = _channel_maps(meta, groups, ops, widths, shapes)
    macs = params = 0
    for op in ops:
        if op.kind == "prelu":
            params += infos[op.inputs[0]].width
            continue
        if op.kind == "gate":
            c, d, k = op.channels, op.hidden, op.choices
            macs += 2 * c * d + d * k
            params += 2 * c * d + d * k + d + c + k
            continue
        if op.kind not in EPILOGUED:
            continue
        op_macs, weights = _op_cost(op, infos[op.inputs[0]], infos[op.output]) if op.kind != "scale_bias" \
            else (0, 0)
        macs += op_macs
        out_w = infos[op.output].width
        present = sum(1 for which in ("scale", "bias")
                      if f"{op.name}.{which}" in names
                      or (profile is not None
                          and epilogue_tensor_name(op.name, which, profile) in names))
        params += weights + present * out_w
    return macs, params


def _op_cost(op: Op, src: TensorInfo, dst: TensorInfo) -> tuple[int, int]:
    """(MACs per sample, weight elements read) of a conv or linear."""
    if op.kind == "linear":
        return src.width * dst.width, src.width * dst.width
    kh, kw = op.kernel
    pixels = dst.shape[2] * dst.shape[3]
    kind = conv_kind(op, src.shape[1])
    if kind == "depthwise":
        weights = kh * kw * dst.width
    elif kind == "grouped":
        weights = kh * kw * (src.shape[1] // op.groups) * dst.shape[1]
    else:
        weights = kh * kw * src.width * dst.width
    return pixels * weights, weights


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def validate(slim: SlimFile) -> None:
    """Check a model against every rule of model.h; InvalidModelError names the offending item."""
    meta = slim.meta
    _check_header_fields(meta)
    groups, ops = parse_groups(meta), parse_ops(meta)
    _check_output(meta, ops)
    shapes = _shapes(meta, groups, ops, None, None)
    _check_static_widths(meta, groups, ops, shapes)
    profiles = _check_profiles(meta, groups)
    _check_gate(slim, groups, ops, shapes, profiles)
    _check_tensors(slim, groups, ops, shapes, profiles)
    _check_costs(slim, groups, ops, shapes, profiles)


def _check_output(meta: Mapping[str, Any], ops: Sequence[Op]) -> None:
    output = meta["output"]
    if output == meta["input"]["name"]:
        # The engine never writes the input's buffer: it would return scratch memory.
        raise InvalidModelError(f"the model's output is its input '{output}': the output must be "
                                "produced by an op")
    if output not in {op.output for op in ops}:
        raise InvalidModelError(f"the model output '{output}' is not produced by any op")


def _check_static_widths(meta: Mapping[str, Any], groups: Sequence[Group], ops: Sequence[Op],
                         shapes: Mapping[str, Shape]) -> None:
    """Rules that must hold at every width assignment, uniform multipliers included.

    Per tensor: is it always at full width, and is its channel map always a single prefix? And
    what decides its channel map (a signature: equal signatures mean equal maps at every width)?
    """
    source = meta["input"]["name"]
    full, prefix = {source: True}, {source: True}
    sig: dict[str, Any] = {source: "full"}
    for op in ops:
        ins = op.inputs
        sig[op.output] = _map_signature(op, sig, shapes, groups)
        if op.kind == "linear" or (op.kind == "conv"
                                   and conv_kind(op, shapes[ins[0]][1]) != "depthwise"):
            full[op.output] = groups[op.out_group].fixed  # type: ignore[index]
            prefix[op.output] = True
        elif op.kind == "add":
            for tensor in ins:
                if not prefix[tensor]:
                    raise InvalidModelError(
                        f"add '{op.name}': operand '{tensor}' is a concat whose channels are "
                        "not a prefix at narrower widths; zero padding match needs prefix "
                        "operands (fix the concat's inputs' groups)")
            c = shapes[op.output][1]
            full[op.output] = any(full[t] and shapes[t][1] == c for t in ins)
            prefix[op.output] = True
        elif op.kind == "concat":
            full[op.output] = all(full[t] for t in ins)
            prefix[op.output] = all(full[t] for t in ins[:-1]) and prefix[ins[-1]]
        elif op.kind == "mul":
            if sig[ins[0]] is None or sig[ins[0]] != sig[ins[1]]:
                raise InvalidModelError(
                    f"mul '{op.name}': its gate '{ins[1]}' and its input '{ins[0]}' must have the same "
                    "channels at every width: the layer making the gate must write its input's channel "
                    "group (or both must be fixed)")
            full[op.output], prefix[op.output] = full[ins[0]], prefix[ins[0]]
        elif op.kind in ("shuffle", "slice"):
            if not full[ins[0]]:
                what = f"(groups {op.groups})" if op.kind == "shuffle" else f"[{op.start}, {op.end})"
                raise InvalidModelError(
                    f"{op.kind} '{op.name}' {what} must run at full width: its input "
                    f"'{ins[0]}' must come from fixed groups (mark the groups that feed it fixed)")
            full[op.output] = prefix[op.output] = True
        else:
            full[op.output], prefix[op.output] = full[ins[0]], prefix[ins[0]]
        if op.kind == "conv" and conv_kind(op, shapes[ins[0]][1]) == "grouped":
            group = groups[op.out_group]  # type: ignore[index]
            if not group.fixed or not full[ins[0]]:
                raise InvalidModelError(
                    f"grouped conv '{op.name}' (groups {op.groups}) must run at full width: "
                    f"its out_group '{group.name}' must be fixed and its input "
                    f"'{ins[0]}' must come from fixed groups")


def _map_signature(op: Op, sig: Mapping[str, Any], shapes: Mapping[str, Shape],
                   groups: Sequence[Group]) -> Any:
    """What decides the channel map of ``op``'s output: "full" (always every channel), ("group", g)
    (the prefix of group g's width), a structure of those for concat and flatten, or None when it
    depends on several groups (the wider operand of an add)."""
    ins = op.inputs
    if op.kind == "linear" or (op.kind == "conv" and conv_kind(op, shapes[ins[0]][1]) != "depthwise"):
        return "full" if groups[op.out_group].fixed else ("group", op.out_group)  # type: ignore[index]
    if op.kind == "add":
        if sig[ins[0]] == sig[ins[1]]:
            return sig[ins[0]]
        c = shapes[op.output][1]
        return "full" if any(sig[t] == "full" and shapes[t][1] == c for t in ins) else None
    if op.kind == "concat":
        parts = tuple(sig[t] for t in ins)
        return "full" if all(p == "full" for p in parts) else None if None in parts else ("concat", parts)
    if op.kind in ("shuffle", "slice"):
        return "full"
    if op.kind == "flatten" and len(shapes[ins[0]]) == 4:
        pixels = shapes[ins[0]][2] * shapes[ins[0]][3]
        return sig[ins[0]] if pixels == 1 or sig[ins[0]] in ("full", None) else ("flatten", sig[ins[0]], pixels)
    return sig[ins[0]]


def _check_profiles(meta: Mapping[str, Any], groups: Sequence[Group]) -> list[dict[str, Any]]:
    profiles = _need(meta, "profiles", "the model JSON")
    if not isinstance(profiles, list):
        raise InvalidModelError("the model JSON: \"profiles\" must be a list")
    seen: set[str] = set()
    for i, p in enumerate(profiles):
        if not isinstance(p, Mapping):
            raise InvalidModelError(f"profile {i} is not an object")
        name = _str_field(p, "name", f"profile {i}")
        where = f"profile '{name}'"
        if name in seen:
            raise InvalidModelError(f"{where}: the name is used by an earlier profile")
        seen.add(name)
        widths = _need(p, "widths", where)
        if not _is_int_list(widths):
            raise InvalidModelError(f"{where}: \"widths\" must be a list of integers")
        if len(widths) != len(groups):
            raise InvalidModelError(
                f"{where} has {len(widths)} widths, the model has {len(groups)} channel groups")
        for g, w in zip(groups, widths):
            if g.fixed and w != g.size:
                raise InvalidModelError(f"{where} sets fixed group '{g.name}' to width {w}; "
                                        f"fixed groups run at their full size {g.size}")
            if not 1 <= w <= g.size:
                raise InvalidModelError(f"{where} sets group '{g.name}' to width {w}, outside "
                                        f"[1, {g.size}]")
        _int_field(p, "macs", where, 0, 2**63 - 1)
        _int_field(p, "params", where, 0, 2**63 - 1)
    return profiles


def _check_tensors(slim: SlimFile, groups: Sequence[Group], ops: Sequence[Op],
                   shapes: Mapping[str, Shape], profiles: Sequence[Mapping[str, Any]]) -> None:
    known: set[str] = set()
    maps = [_channel_maps(slim.meta, groups, ops, p["widths"], shapes) for p in profiles]
    for op in ops:
        if op.kind not in WEIGHTED:
            continue
        int8 = op.precision == "int8"
        if int8:
            _check_int8_op(slim.meta, op, shapes)
        for which, shape in param_shapes(op, shapes[op.inputs[0]], groups).items():
            name = f"{op.name}.{which}"
            known.add(name)
            user = f"op '{op.name}'" + (" (int8)" if int8 and which == "weight" else "")
            if name in slim.tensors:
                _check_array(name, slim.tensors[name], shape, user,
                             np.int8 if int8 and which == "weight" else np.float32)
                if which in ("wscale", "xscale"):
                    _check_scales(name, slim.tensors[name])
            elif which in ("weight", "slope", "wscale", "xscale") or op.kind == "gate":
                raise InvalidModelError(f"op '{op.name}' needs tensor '{name}', which is not "
                                        "in the file")
        if op.kind not in EPILOGUED:
            continue
        for p, infos in zip(profiles, maps):
            for which in ("scale", "bias"):
                name = epilogue_tensor_name(op.name, which, p["name"])
                known.add(name)
                if name in slim.tensors:
                    _check_array(name, slim.tensors[name], (infos[op.output].width,),
                                 f"op '{op.name}' at profile '{p['name']}'")
            if int8:
                name = xscale_tensor_name(op.name, p["name"])
                known.add(name)
                if name in slim.tensors:
                    _check_array(name, slim.tensors[name], (1,), f"op '{op.name}' at profile '{p['name']}'")
                    _check_scales(name, slim.tensors[name])
    unknown = sorted(set(slim.tensors) - known)
    if unknown:
        raise InvalidModelError(f"tensor '{unknown[0]}' is not used by any op or profile; "
                                "remove it or fix its name")


def gate_index(ops: Sequence[Op]) -> int | None:
    """Index of the gate op in ``ops``, or None."""
    return next((i for i, op in enumerate(ops) if op.kind == "gate"), None)


def _check_gate(slim: SlimFile, groups: Sequence[Group], ops: Sequence[Op], shapes: Mapping[str, Shape],
                profiles: Sequence[Mapping[str, Any]]) -> None:
    """The rules of a gated model (model.h), with the engine's messages."""
    index = gate_index(ops)
    if index is None:
        return
    gate = ops[index]
    where = f"gate '{gate.name}'"
    if gate.choices != len(profiles):
        raise InvalidModelError(f"{where} has {gate.choices} choices, the model has {len(profiles)} profiles; a gate "
                                "chooses among all of them")
    first = profiles[0]
    for op in ops[:index]:
        if op.out_group is None:
            continue
        g = op.out_group
        for p in profiles:
            if p["widths"][g] != first["widths"][g]:
                raise InvalidModelError(
                    f"group '{groups[g].name}' is written before {where} and runs at one shared width, but profile "
                    f"'{first['name']}' gives it {first['widths'][g]} and profile '{p['name']}' {p['widths'][g]}")
    output = slim.meta["output"]
    first_width = None
    for p in profiles:
        infos = _channel_maps(slim.meta, groups, ops, p["widths"], shapes)
        width = infos[gate.output].width
        if width != gate.channels:
            raise InvalidModelError(f"{where} reads {width} active channels at profile '{p['name']}', its "
                                    f"\"channels\" is {gate.channels}")
        if first_width is None:
            first_width = infos[output].width
        elif infos[output].width != first_width:
            raise InvalidModelError(
                f"the output '{output}' has {first_width} channels at profile '{first['name']}' and "
                f"{infos[output].width} at profile '{p['name']}'; a gated model's output has one width at every profile")
        for op in ops[:index]:
            if op.kind not in EPILOGUED:
                continue
            for which in ("scale", "bias"):
                name = epilogue_tensor_name(op.name, which, p["name"])
                if name in slim.tensors:
                    raise InvalidModelError(
                        f"op '{op.name}' runs before {where} and has the per-profile epilogue '{name}'; the ops "
                        "before a gate run alike at every profile")


def _check_int8_op(meta: Mapping[str, Any], op: Op, shapes: Mapping[str, Shape]) -> None:
    if meta["format_version"] < INT8_FORMAT_VERSION:
        raise InvalidModelError(f"op '{op.name}' is int8, which needs format_version "
                                f"{INT8_FORMAT_VERSION} (the file has {meta['format_version']})")
    if op.kind == "conv" and conv_kind(op, shapes[op.inputs[0]][1]) == "grouped":
        raise InvalidModelError(f"op '{op.name}' is a grouped conv, which has no int8 form (only dense "
                                "and depthwise convs and linears)")


def _check_scales(name: str, array: np.ndarray) -> None:
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if bad.size:
        raise InvalidModelError(f"tensor '{name}' value {int(bad[0])} is {float(array[bad[0]])!r}: "
                                "scales must be finite and > 0")


def _check_array(name: str, array: Any, shape: Shape, user: str,
                 dtype: type[np.generic] = np.float32) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        have = getattr(array, "dtype", type(array).__name__)
        if dtype is np.int8:
            raise InvalidModelError(f"tensor '{name}' has dtype {have}; {user} needs int8 weights")
        raise InvalidModelError(f"tensor '{name}' has dtype {have}; slimrt tensors are float32 "
                                "(the weights of int8 ops int8)")
    if tuple(array.shape) != tuple(shape):
        raise InvalidModelError(f"tensor '{name}' has shape {list(array.shape)}, {user} "
                                f"needs {list(shape)}")


def _check_costs(slim: SlimFile, groups: Sequence[Group], ops: Sequence[Op],
                 shapes: Mapping[str, Shape], profiles: Sequence[Mapping[str, Any]]) -> None:
    previous: tuple[str, int] | None = None
    for p in profiles:
        macs, params = profile_cost(slim, p["widths"], profile=p["name"])
        if (p["macs"], p["params"]) != (macs, params):
            raise InvalidModelError(
                f"profile '{p['name']}' records macs {p['macs']} and params {p['params']}, its "
                f"widths give macs {macs} and params {params}; rebuild the file with "
                "slimrt.builder")
        if previous is not None and macs < previous[1]:
            raise InvalidModelError(
                f"profile '{p['name']}' ({macs} MACs) comes after profile '{previous[0]}' "
                f"({previous[1]} MACs); profiles are ordered by cost, cheapest first")
        previous = (p["name"], macs)
