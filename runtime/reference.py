"""run_reference: a plain float64 numpy executor of a .slim model at one profile.

It is the oracle of the C++ engine, so it is written to be obviously right rather than fast:
activations are NCHW holding only the active channels (in channel-map order); for each conv
or linear the active weight rows and columns are gathered into a small dense array (the
physically pruned layer) and a plain dense op runs on it. It also defines the int8 semantics
(model.h): an int8 op quantizes its input (quantize_input), runs the same dense op on integers
(exact in float64) and scales the result by s * wscale * scale.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping

import numpy as np

from slimrt import format as fmt
from slimrt.errors import InvalidModelError, ProfileError

__all__ = ["run_reference", "run_reference_gated", "gate_head", "activate", "ACTIVATION_FUNCTIONS",
           "quantize_input", "input_scale", "reference_trace"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erfc = np.vectorize(math.erfc, otypes=[np.float64])

# name -> f(x, alpha, beta): the activations of model.h; alpha and beta are the op's act_alpha
# and act_beta (format.ACT_PARAMS). NaN stays NaN through every one of them.
ACTIVATION_FUNCTIONS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "none": lambda x, a, b: x,
    "relu": lambda x, a, b: np.maximum(x, 0.0),
    "relu6": lambda x, a, b: np.clip(x, 0.0, 6.0),
    "hardswish": lambda x, a, b: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda x, a, b: x * _sigmoid(x),
    "sigmoid": lambda x, a, b: _sigmoid(x),
    "leaky_relu": lambda x, a, b: np.where(x > 0, x, a * x),
    "tanh": lambda x, a, b: np.tanh(x),
    "gelu": lambda x, a, b: x * 0.5 * _erfc(-x / math.sqrt(2.0)),  # 1 + erf(x / sqrt 2), no cancellation
    "hardsigmoid": lambda x, a, b: np.clip(a * x + b, 0.0, 1.0),
    "elu": lambda x, a, b: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0))),
}


def activate(op: fmt.Op, x: np.ndarray) -> np.ndarray:
    """``op``'s activation applied to ``x``."""
    return ACTIVATION_FUNCTIONS[op.act](x, op.act_alpha, op.act_beta)


def run_reference(slim: fmt.SlimFile, x: np.ndarray, profile: str | int | float) -> np.ndarray:
    """Run `slim` on input `x` (NCHW, any batch; H, W any size the ops accept) at `profile`.

    `profile` is a profile name, an index or a uniform multiplier (see format.resolve_widths);
    the named profile's per-profile epilogues are used when it has them. Returns the output
    tensor's active channels as float64. Raises ValueError for an input of the wrong rank or
    channel count and ProfileError for an unknown profile.
    """
    meta = slim.meta
    widths, profile_name = fmt.resolve_widths(meta, profile)
    x = np.asarray(x, dtype=np.float64)
    channels = meta["input"]["shape"][1]
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"input must be NCHW with {channels} channels, got shape {x.shape}")
    infos = fmt.channel_maps(meta, widths, hw=(x.shape[2], x.shape[3]), batch=x.shape[0])
    values = {meta["input"]["name"]: x}
    for op in fmt.parse_ops(meta):
        inputs = [values[t] for t in op.inputs]
        values[op.output] = _run_op(op, inputs, infos, slim.tensors, profile_name)
    return values[meta["output"]]


def run_reference_gated(slim: fmt.SlimFile, x: np.ndarray,
                        max_profile: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gated run of a model with a gate op (model.h): (output, chosen profile index per image,
    gate logits [N, profiles]).

    The ops up to the gate run at the shared width (profile 0's); each image then takes the first
    profile among 0..max_profile (None: all) with the largest logit and runs the rest of the graph
    at it, on its own. Raises InvalidModelError for a model without a gate, ProfileError for a
    max_profile out of range.
    """
    meta = slim.meta
    ops = fmt.parse_ops(meta)
    index = fmt.gate_index(ops)
    if index is None:
        raise InvalidModelError(f"model '{meta['name']}' has no gate op")
    profiles = meta["profiles"]
    if max_profile is None:
        max_profile = len(profiles) - 1
    if not 0 <= max_profile < len(profiles):
        raise ProfileError(f"max_profile {max_profile} is out of range (model has {len(profiles)} profiles)")
    x = np.asarray(x, dtype=np.float64)
    hw, n = (x.shape[2], x.shape[3]), x.shape[0]
    shared = fmt.channel_maps(meta, profiles[0]["widths"], hw=hw, batch=n)
    values = {meta["input"]["name"]: x}
    logits = np.zeros((n, len(profiles)))
    for op in ops[:index + 1]:
        inputs = [values[t] for t in op.inputs]
        if op.kind == "gate":
            values[op.output], logits = gate_head(op, inputs[0], slim.tensors)
        else:
            values[op.output] = _run_op(op, inputs, shared, slim.tensors, profiles[0]["name"])
    choices = np.argmax(logits[:, :max_profile + 1], axis=1)  # the first of equal maxima
    outputs = []
    for i, k in enumerate(choices):
        infos = fmt.channel_maps(meta, profiles[k]["widths"], hw=hw, batch=1)
        mine = {name: v[i:i + 1] for name, v in values.items()}
        for op in ops[index + 1:]:
            mine[op.output] = _run_op(op, [mine[t] for t in op.inputs], infos, slim.tensors, profiles[k]["name"])
        outputs.append(mine[meta["output"]])
    return np.concatenate(outputs, axis=0), choices, logits


def gate_head(op: fmt.Op, x: np.ndarray, tensors: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The gate op's double head (model.h) on ``x`` (its active channels): (x scaled by the attention
    head, the slimming head's logits [N, choices])."""
    if x.shape[1] != op.channels:
        raise ProfileError(f"op '{op.name}' (gate) reads {x.shape[1]} active channels here, its head takes "
                           f"{op.channels}: run a named profile of this gated model")
    w = {name: tensors[f"{op.name}.{name}"].astype(np.float64) for name in fmt.GATE_TENSORS}
    h = np.maximum(x.mean(axis=(2, 3)) @ w["reduce.weight"] + w["reduce.bias"], 0.0)
    attention = 2.0 * _sigmoid(h @ w["expand.weight"] + w["expand.bias"])
    return x * attention[:, :, None, None], h @ w["slim.weight"] + w["slim.bias"]


def reference_trace(slim: fmt.SlimFile, x: np.ndarray,
                    profile: str | int | float) -> Iterator[tuple[fmt.Op, list[np.ndarray]]]:
    """Run `slim` as run_reference does, yielding every op with its input values (float64, NCHW,
    active channels) before it runs: what calibration measures."""
    meta = slim.meta
    widths, profile_name = fmt.resolve_widths(meta, profile)
    x = np.asarray(x, dtype=np.float64)
    infos = fmt.channel_maps(meta, widths, hw=(x.shape[2], x.shape[3]), batch=x.shape[0])
    values = {meta["input"]["name"]: x}
    for op in fmt.parse_ops(meta):
        inputs = [values[t] for t in op.inputs]
        yield op, inputs
        values[op.output] = _run_op(op, inputs, infos, slim.tensors, profile_name)


def _run_op(op: fmt.Op, inputs: list[np.ndarray], infos: Mapping[str, fmt.TensorInfo],
            tensors: Mapping[str, np.ndarray], profile: str | None) -> np.ndarray:
    if op.kind == "gate":
        return gate_head(op, inputs[0], tensors)[0]
    if op.kind == "conv":
        return activate(op, _conv(op, inputs[0], infos, tensors, profile))
    if op.kind == "linear":
        return activate(op, _linear(op, inputs[0], infos, tensors, profile))
    if op.kind == "add":
        return activate(op, _add(inputs[0], inputs[1]))
    if op.kind == "concat":
        return np.concatenate(inputs, axis=1)
    if op.kind == "maxpool":
        return _maxpool(op, inputs[0], infos[op.output].shape)
    if op.kind == "avgpool":
        return _avgpool(op, inputs[0], infos[op.output].shape)
    if op.kind == "global_avgpool":
        return inputs[0].mean(axis=(2, 3), keepdims=True)
    if op.kind == "flatten":
        return inputs[0].reshape(inputs[0].shape[0], -1)
    if op.kind == "shuffle":
        return _shuffle(inputs[0], op.groups)
    if op.kind == "slice":
        return inputs[0][:, op.start:op.end]
    if op.kind == "resize":
        return _resize(inputs[0], op.scale, op.mode == "bilinear")
    if op.kind == "unflatten":
        return inputs[0].reshape(inputs[0].shape + (1, 1))
    if op.kind == "mul":
        return inputs[0] * inputs[1]  # the gate [N, C, 1, 1] broadcasts over H, W
    if op.kind == "scale_bias":
        scale, bias = _epilogue(tensors, op, profile, infos[op.inputs[0]].channel_index())
        shape = (1, -1) + (1,) * (inputs[0].ndim - 2)
        return activate(op, inputs[0] * scale.reshape(shape) + bias.reshape(shape))
    if op.kind == "prelu":
        slope = tensors[f"{op.name}.slope"].astype(np.float64)[infos[op.inputs[0]].channel_index()]
        x = inputs[0]
        return np.where(x > 0, x, slope.reshape((1, -1) + (1,) * (x.ndim - 2)) * x)
    if op.kind == "softmax":
        shifted = inputs[0] - inputs[0].max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    return activate(op, inputs[0])


# -- pruning ----------------------------------------------------------------------------------

def _epilogue(tensors: Mapping[str, np.ndarray], op: fmt.Op, profile: str | None,
              active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and bias for the active output channels `active` (full-axis positions)."""
    result = []
    for which, default in (("scale", 1.0), ("bias", 0.0)):
        own = tensors.get(fmt.epilogue_tensor_name(op.name, which, profile)) if profile else None
        if own is not None:
            values = own.astype(np.float64)  # already one value per active channel
        elif f"{op.name}.{which}" in tensors:
            values = tensors[f"{op.name}.{which}"].astype(np.float64)[active]
        else:
            values = np.full(len(active), default)
        result.append(values)
    return result[0], result[1]


# -- int8 ops (model.h, "int8 ops") ----------------------------------------------------------

def input_scale(tensors: Mapping[str, np.ndarray], op: fmt.Op, profile: str | None) -> np.float32:
    """The input scale s of an int8 op at `profile` (its own, else the op's default)."""
    own = tensors.get(fmt.xscale_tensor_name(op.name, profile)) if profile else None
    return np.float32((own if own is not None else tensors[f"{op.name}.xscale"])[0])


def quantize_input(x: np.ndarray, scale: np.float32) -> np.ndarray:
    """q(x) = NaN ? 0 : round_half_even(clamp(x * r, -127, 127)), r = 1 / s and the product in
    float32, as the engine computes it; returned as float64 integers."""
    r = np.float32(1.0) / np.float32(scale)
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.asarray(x, dtype=np.float32) * r
    q = np.rint(np.clip(v, np.float32(-127.0), np.float32(127.0)))
    return np.where(np.isnan(v), 0.0, q).astype(np.float64)


def _int8_operands(op: fmt.Op, x: np.ndarray, tensors: Mapping[str, np.ndarray],
                   profile: str | None) -> tuple[np.ndarray, np.ndarray, float]:
    """For an int8 op: its quantized input, its integer weights and the scale s (the float
    weights and input for a float op, with scale 1)."""
    weight = tensors[f"{op.name}.weight"].astype(np.float64)
    if op.precision != "int8":
        return x, weight, 1.0
    s = input_scale(tensors, op, profile)
    return quantize_input(x, s), weight, float(s)


def _linear(op: fmt.Op, x: np.ndarray, infos: Mapping[str, fmt.TensorInfo],
            tensors: Mapping[str, np.ndarray], profile: str | None) -> np.ndarray:
    rows = infos[op.inputs[0]].channel_index()
    out = infos[op.output].channel_index()
    x, weight, s = _int8_operands(op, x, tensors, profile)
    weight = weight[rows][:, out]  # [in_w, out_w]
    scale, bias = _epilogue(tensors, op, profile, out)
    if op.precision == "int8":
        scale = scale * s * tensors[f"{op.name}.wscale"].astype(np.float64)[out]
    return (x @ weight) * scale + bias


def _conv(op: fmt.Op, x: np.ndarray, infos: Mapping[str, fmt.TensorInfo],
          tensors: Mapping[str, np.ndarray], profile: str | None) -> np.ndarray:
    src, dst = infos[op.inputs[0]], infos[op.output]
    x, weight, s = _int8_operands(op, x, tensors, profile)
    kind = fmt.conv_kind(op, src.shape[1])
    out = dst.channel_index()
    padded = _pad(x, op.pads, 0.0)
    if kind == "depthwise":
        y = _depthwise(padded, weight[:, :, out], op, dst.shape)
    elif kind == "dense":
        pruned = weight[:, :, src.channel_index()][:, :, :, out]  # [kh, kw, in_w, out_w]
        y = _dense(padded, pruned, op, dst.shape)
    else:  # grouped: full width (validated), one dense conv per group
        cin_g, cout_g = src.shape[1] // op.groups, dst.shape[1] // op.groups
        y = np.concatenate([
            _dense(padded[:, g * cin_g:(g + 1) * cin_g], weight[..., g * cout_g:(g + 1) * cout_g],
                   op, dst.shape)
            for g in range(op.groups)], axis=1)
    scale, bias = _epilogue(tensors, op, profile, out)
    if op.precision == "int8":
        scale = scale * s * tensors[f"{op.name}.wscale"].astype(np.float64)[out]
    return y * scale[None, :, None, None] + bias[None, :, None, None]


# -- dense ops --------------------------------------------------------------------------------

def _pad(x: np.ndarray, pads: tuple[int, int, int, int], value: float) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _tap(padded: np.ndarray, i: int, j: int, op: fmt.Op, oh: int, ow: int) -> np.ndarray:
    """The input pixels that kernel tap (i, j) meets, one per output pixel: [N, C, oh, ow]."""
    (sh, sw), (dh, dw) = op.stride, op.dilation
    return padded[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                  j * dw: j * dw + sw * (ow - 1) + 1: sw]


def _dense(padded: np.ndarray, weight: np.ndarray, op: fmt.Op, shape: fmt.Shape) -> np.ndarray:
    """Dense conv of a padded input with weight [kh, kw, Cin, Cout]."""
    oh, ow = shape[2], shape[3]
    y = np.zeros((padded.shape[0], weight.shape[3], oh, ow))
    for i in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            y += np.einsum("nchw,co->nohw", _tap(padded, i, j, op, oh, ow), weight[i, j])
    return y


def _depthwise(padded: np.ndarray, weight: np.ndarray, op: fmt.Op, shape: fmt.Shape) -> np.ndarray:
    """Depthwise conv of a padded input with weight [kh, kw, C]."""
    oh, ow = shape[2], shape[3]
    y = np.zeros((padded.shape[0], padded.shape[1], oh, ow))
    for i in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            y += _tap(padded, i, j, op, oh, ow) * weight[i, j][None, :, None, None]
    return y


def _pool_windows(x: np.ndarray, op: fmt.Op, shape: fmt.Shape,
                  fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool inputs padded with `fill` far enough for every window (ceil mode reaches past the
    end padding), with masks of the real input and of input plus declared padding."""
    (kh, kw), (sh, sw) = op.kernel, op.stride
    top, left, bottom, right = op.pads
    n, c, h, w = x.shape
    oh, ow = shape[2], shape[3]
    extra_h = max((oh - 1) * sh + kh - (top + h + bottom), 0)
    extra_w = max((ow - 1) * sw + kw - (left + w + right), 0)
    grown = (top, left, bottom + extra_h, right + extra_w)
    padded = _pad(x, grown, fill)
    inside = _pad(np.ones((1, 1, h, w)), grown, 0.0)
    declared = _pad(np.ones((1, 1, top + h + bottom, left + w + right)),
                    (0, 0, extra_h, extra_w), 0.0)
    return padded, inside, declared


def _maxpool(op: fmt.Op, x: np.ndarray, shape: fmt.Shape) -> np.ndarray:
    padded, _, _ = _pool_windows(x, op, shape, -np.inf)
    taps = [_tap(padded, i, j, op, shape[2], shape[3])
            for i in range(op.kernel[0]) for j in range(op.kernel[1])]
    return np.max(taps, axis=0)


def _avgpool(op: fmt.Op, x: np.ndarray, shape: fmt.Shape) -> np.ndarray:
    padded, inside, declared = _pool_windows(x, op, shape, 0.0)
    counted = declared if op.count_include_pad else inside
    total = np.zeros((x.shape[0], x.shape[1], shape[2], shape[3]))
    count = np.zeros((1, 1, shape[2], shape[3]))
    for i in range(op.kernel[0]):
        for j in range(op.kernel[1]):
            total += _tap(padded, i, j, op, shape[2], shape[3])
            count += _tap(counted, i, j, op, shape[2], shape[3])
    return total / count


def _resize(x: np.ndarray, scale: tuple[int, int], bilinear: bool) -> np.ndarray:
    """Upsampling by integer factors: nearest, or bilinear with half-pixel centres (model.h)."""
    for axis, s in ((2, scale[0]), (3, scale[1])):
        size = x.shape[axis]
        out = np.arange(size * s)
        if not bilinear:
            x = np.take(x, out // s, axis=axis)
            continue
        src = np.maximum((out + 0.5) / s - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
        i1 = np.minimum(i0 + 1, size - 1)
        w1 = (src - i0).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        x = np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1
    return x


def _shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """Channel shuffle as ONNX writes it: Reshape [N, g, C/g, H, W], swap axes 1 and 2, Reshape."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Zero padding match: the narrower operand counts as zeros beyond its width."""
    wide, narrow = (a, b) if a.shape[1] >= b.shape[1] else (b, a)
    out = wide.copy()
    out[:, : narrow.shape[1]] += narrow
    return out
