"""One profile of a .slim model as a standard, physically pruned ONNX model.

The exported graph holds only the active channels of the profile: every conv and linear gets
the rows and columns its channel maps select (see :func:`slimrt.format.channel_maps`), with the
profile's epilogue (per-channel scale, bias) folded into weight and bias. A residual add whose
operands have different widths pads the narrower one with zeros (zero padding match). A gate op
(DS-Net's dynamic gate) exports its attention head in the graph and its slimming head's logits as
a second graph output, ``<gate>.logits`` [N, profiles], so its choice can be checked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import format as fmt
from .ir import ConversionError

if TYPE_CHECKING:
    from ..engine import Model

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; newer onnx packages default to IRs older runtimes refuse
ModelLike = Union["Model", fmt.SlimFile, str, Path, bytes]


@dataclass
class PrunedLayer:
    """The active part of a conv or linear at one profile, PyTorch layout, epilogue folded in.

    ``weight``: conv [out, in/groups, kh, kw] or linear [out, in]; ``bias``: [out].
    """

    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1


@dataclass
class ProfileView:
    """A model at one profile: its ops, tensor channel maps and pruned layers."""

    slim: fmt.SlimFile
    name: str | None
    widths: list[int]
    ops: list[fmt.Op]
    infos: dict[str, fmt.TensorInfo]

    def layer(self, op: fmt.Op) -> PrunedLayer:
        """The pruned weight and bias of conv/linear ``op``."""
        return pruned_layer(self, op)


def as_slimfile(model: ModelLike) -> fmt.SlimFile:
    """A SlimFile from a slimrt.Model, a SlimFile, or a .slim path / bytes."""
    if isinstance(model, fmt.SlimFile):
        return model
    if hasattr(model, "to_slimfile"):
        return model.to_slimfile()
    if isinstance(model, (str, Path, bytes, bytearray, memoryview)):
        return fmt.read(model)
    raise TypeError(f"expected a slimrt.Model, a SlimFile or a .slim path, got {type(model).__name__}")


def profile_view(model: ModelLike, profile: str | float) -> ProfileView:
    """Resolve ``profile`` (name, index or uniform multiplier) on ``model``; ProfileError if unknown."""
    slim = as_slimfile(model)
    widths, name = fmt.resolve_widths(slim.meta, profile)
    return ProfileView(slim, name, widths, fmt.parse_ops(slim.meta), fmt.channel_maps(slim.meta, widths))


def pruned_layer(view: ProfileView, op: fmt.Op) -> PrunedLayer:
    """Slice the active rows/columns of a conv or linear and fold its epilogue into them."""
    t = view.slim.tensors
    src, dst = view.infos[op.inputs[0]], view.infos[op.output]
    rows, cols = src.channel_index(), dst.channel_index()
    w = t[op.name + ".weight"]
    groups = 1
    if op.kind == "linear":
        weight = w[rows][:, cols].T
    else:
        kind = fmt.conv_kind(op, src.shape[1])
        if kind == "depthwise":
            weight = w[:, :, rows].transpose(2, 0, 1)[:, None]
            groups = len(rows)
        else:
            weight = w[:, :, :, cols].transpose(3, 2, 0, 1)
            if kind == "dense":
                weight = weight[:, rows]
            else:
                groups = op.groups
    scale = _epilogue(view, op, "scale", cols)
    bias = _epilogue(view, op, "bias", cols)
    bias = np.zeros(len(cols), np.float32) if bias is None else bias
    if scale is not None:
        weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return PrunedLayer(np.ascontiguousarray(weight, dtype=np.float32), bias.astype(np.float32), groups)


def channel_affine(view: ProfileView, op: fmt.Op) -> tuple[np.ndarray, np.ndarray]:
    """The (scale, bias) of a scale_bias op for its input's active channels, float32."""
    active = view.infos[op.inputs[0]].channel_index()
    scale = _epilogue(view, op, "scale", active)
    bias = _epilogue(view, op, "bias", active)
    return (np.ones(len(active), np.float32) if scale is None else scale.astype(np.float32),
            np.zeros(len(active), np.float32) if bias is None else bias.astype(np.float32))


def _epilogue(view: ProfileView, op: fmt.Op, which: str, cols: np.ndarray) -> np.ndarray | None:
    t = view.slim.tensors
    if view.name is not None:
        per_profile = fmt.epilogue_tensor_name(op.name, which, view.name)
        if per_profile in t:
            return t[per_profile]
    full = t.get(f"{op.name}.{which}")
    return None if full is None else full[cols]


def export_onnx(model: ModelLike, path: str | Path, profile: str | float) -> None:
    """Write ``profile`` of ``model`` to ``path`` as a physically pruned ONNX model."""
    onnx.save(to_onnx(model, profile), str(path))


def to_onnx(model: ModelLike, profile: str | float) -> onnx.ModelProto:
    """``profile`` of ``model`` as a checked, physically pruned ONNX ModelProto (opset 17)."""
    view = profile_view(model, profile)
    meta = view.slim.meta
    g = _GraphWriter()
    for op in view.ops:
        _emit(g, view, op)
    source = meta["input"]["name"]
    _, c, h, w = meta["input"]["shape"]
    inputs = [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["N", c, h, w])]
    out_shape = ["N"] + list(view.infos[meta["output"]].active_shape[1:])
    outputs = [helper.make_tensor_value_info(meta["output"], TensorProto.FLOAT, out_shape)]
    outputs += [helper.make_tensor_value_info(gate_logits_name(op), TensorProto.FLOAT, ["N", op.choices])
                for op in view.ops if op.kind == "gate"]
    label = view.name if view.name is not None else ",".join(map(str, view.widths))
    graph = helper.make_graph(g.nodes, f"{meta['name']}@{label}", inputs, outputs, g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="slimrt", ir_version=IR_VERSION)
    onnx.checker.check_model(proto)
    return proto


class _GraphWriter:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str, name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def temp(self, base: str) -> str:
        self.count += 1
        return f"{base}#{self.count}"


def _emit(g: _GraphWriter, view: ProfileView, op: fmt.Op) -> None:
    x = list(op.inputs)
    if op.kind in ("conv", "linear"):
        layer = view.layer(op)
        w = g.const(op.name + ".weight", layer.weight)
        b = g.const(op.name + ".bias", layer.bias)
        out = g.temp(op.output) if op.act != "none" else op.output
        if op.kind == "linear":
            g.node("Gemm", [x[0], w, b], out, op.name, transB=1)
        else:
            g.node("Conv", [x[0], w, b], out, op.name, kernel_shape=list(op.kernel), strides=list(op.stride),
                   pads=list(op.pads), dilations=list(op.dilation), group=layer.groups)
        _act(g, op, out, op.output)
    elif op.kind == "add":
        a, b = (_pad_channels(g, view, t, view.infos[op.output].width, op.name) for t in x)
        out = g.temp(op.output) if op.act != "none" else op.output
        g.node("Add", [a, b], out, op.name)
        _act(g, op, out, op.output)
    elif op.kind == "act":
        _act(g, op, x[0], op.output)
    elif op.kind == "concat":
        g.node("Concat", x, op.output, op.name, axis=1)
    elif op.kind in ("maxpool", "avgpool"):
        extra = {"count_include_pad": int(op.count_include_pad)} if op.kind == "avgpool" else {}
        g.node("MaxPool" if op.kind == "maxpool" else "AveragePool", x, op.output, op.name,
               kernel_shape=list(op.kernel), strides=list(op.stride), pads=list(op.pads),
               ceil_mode=int(op.ceil_mode), **extra)
    elif op.kind == "global_avgpool":
        g.node("GlobalAveragePool", x, op.output, op.name)
    elif op.kind == "flatten":
        g.node("Flatten", x, op.output, op.name, axis=1)
    elif op.kind == "softmax":
        g.node("Softmax", x, op.output, op.name, axis=1)
    elif op.kind == "shuffle":
        _shuffle(g, view.infos[op.inputs[0]].active_shape, op.groups, x[0], op.output, op.name)
    elif op.kind == "resize":
        scales = g.const(g.temp(f"{op.name}.scales"), np.array([1, 1, *op.scale], np.float32))
        if op.mode == "nearest":
            g.node("Resize", [x[0], "", scales], op.output, op.name, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            g.node("Resize", [x[0], "", scales], op.output, op.name, mode="linear",
                   coordinate_transformation_mode="pytorch_half_pixel")
    elif op.kind == "slice":
        bounds = [g.const(g.temp(f"{op.name}.{k}"), np.array([v], np.int64))
                  for k, v in (("start", op.start), ("end", op.end), ("axis", 1))]
        g.node("Slice", [x[0]] + bounds, op.output, op.name)
    elif op.kind == "unflatten":
        g.node("Unsqueeze", [x[0], g.const(g.temp(f"{op.name}.axes"), np.array([2, 3], np.int64))], op.output,
               op.name)
    elif op.kind == "mul":
        g.node("Mul", x, op.output, op.name)
    elif op.kind == "scale_bias":
        scale, bias = channel_affine(view, op)
        shape = (1, -1) + (1,) * (len(view.infos[op.inputs[0]].shape) - 2)
        y = g.node("Mul", [x[0], g.const(f"{op.name}.scale", scale.reshape(shape))], g.temp(op.output), op.name)
        out = g.temp(op.output) if op.act != "none" else op.output
        g.node("Add", [y, g.const(f"{op.name}.bias", bias.reshape(shape))], out, f"{op.name}.bias")
        _act(g, op, out, op.output)
    elif op.kind == "prelu":
        info = view.infos[op.inputs[0]]
        slope = view.slim.tensors[f"{op.name}.slope"][info.channel_index()]
        slope = slope.reshape((-1,) + (1,) * (len(info.shape) - 2))  # broadcast over H, W
        g.node("PRelu", [x[0], g.const(f"{op.name}.slope", slope)], op.output, op.name)
    elif op.kind == "gate":
        _gate(g, view, op, x[0])
    else:
        raise ConversionError(f"op '{op.name}' of kind '{op.kind}' has no ONNX export")


def gate_logits_name(op: fmt.Op) -> str:
    """The graph output holding the slimming head's logits of gate ``op``."""
    return f"{op.name}.logits"


def _gate(g: _GraphWriter, view: ProfileView, op: fmt.Op, x: str) -> None:
    """The gate's double head (model.h): attention in the graph, logits as an output."""
    width = view.infos[op.inputs[0]].width
    if width != op.channels:
        raise ConversionError(f"op '{op.name}' (gate) reads {width} active channels at this profile, its head "
                              f"takes {op.channels}: export a named profile of this gated model")
    t, n = view.slim.tensors, op.name

    def dense(src: str, layer: str) -> str:
        return g.node("Gemm", [src, g.const(f"{n}.{layer}.weight", t[f"{n}.{layer}.weight"]),
                               g.const(f"{n}.{layer}.bias", t[f"{n}.{layer}.bias"])], g.temp(n), f"{n}.{layer}")

    pooled = g.node("GlobalAveragePool", [x], g.temp(n), f"{n}.pool")
    h = g.node("Relu", [dense(g.node("Flatten", [pooled], g.temp(n), f"{n}.flatten", axis=1), "reduce")],
               g.temp(n), f"{n}.relu")
    a = g.node("Sigmoid", [dense(h, "expand")], g.temp(n), f"{n}.sigmoid")
    a = g.node("Mul", [a, g.const(g.temp(f"{n}.two"), np.array(2.0, np.float32))], g.temp(n), f"{n}.twice")
    a = g.node("Unsqueeze", [a, g.const(g.temp(f"{n}.axes"), np.array([2, 3], np.int64))], g.temp(n),
               f"{n}.unsqueeze")
    g.node("Mul", [x, a], op.output, f"{n}.attention")
    logits = dense(h, "slim")
    g.node("Identity", [logits], gate_logits_name(op), f"{n}.logits")


def _shuffle(g: _GraphWriter, shape: tuple[int, ...], groups: int, x: str, out: str, name: str) -> None:
    """Channel shuffle as Reshape [N, g, C/g, H, W] -> Transpose [0, 2, 1, 3, 4] -> Reshape [N, C, H, W]."""
    _, c, h, w = shape
    split = g.const(g.temp(f"{name}.split"), np.array([0, groups, c // groups, h, w], np.int64))
    merge = g.const(g.temp(f"{name}.merge"), np.array([0, c, h, w], np.int64))
    y = g.node("Reshape", [x, split], g.temp(out), f"{name}.split")
    y = g.node("Transpose", [y], g.temp(out), f"{name}.transpose", perm=[0, 2, 1, 3, 4])
    g.node("Reshape", [y, merge], out, f"{name}.merge")


def _pad_channels(g: _GraphWriter, view: ProfileView, tensor: str, width: int, name: str) -> str:
    info = view.infos[tensor]
    missing = width - info.width
    if missing == 0:
        return tensor
    rank = len(info.shape)
    pads = np.zeros(2 * rank, np.int64)
    pads[rank + 1] = missing
    p = g.const(g.temp(f"{name}.pad"), pads)
    return g.node("Pad", [tensor, p], g.temp(tensor), g.temp(f"{name}.pad"))


def _act(g: _GraphWriter, op: fmt.Op, x: str, out: str) -> None:
    """``out`` = op's activation of ``x`` (nothing for "none": then ``x`` is ``out``)."""
    kind, name = op.act, op.name
    if kind == "none":
        return
    if kind == "relu":
        g.node("Relu", [x], out, f"{name}.relu")
    elif kind == "relu6":
        lo = g.const(g.temp(f"{name}.min"), np.array(0, np.float32))
        hi = g.const(g.temp(f"{name}.max"), np.array(6, np.float32))
        g.node("Clip", [x, lo, hi], out, f"{name}.relu6")
    elif kind == "hardswish":
        g.node("HardSwish", [x], out, f"{name}.hardswish")
    elif kind == "sigmoid":
        g.node("Sigmoid", [x], out, f"{name}.sigmoid")
    elif kind == "silu":
        s = g.node("Sigmoid", [x], g.temp(x), f"{name}.sigmoid")
        g.node("Mul", [x, s], out, f"{name}.silu")
    elif kind == "leaky_relu":
        g.node("LeakyRelu", [x], out, f"{name}.leaky_relu", alpha=op.act_alpha)
    elif kind == "tanh":
        g.node("Tanh", [x], out, f"{name}.tanh")
    elif kind == "hardsigmoid":
        g.node("HardSigmoid", [x], out, f"{name}.hardsigmoid", alpha=op.act_alpha, beta=op.act_beta)
    elif kind == "elu":
        g.node("Elu", [x], out, f"{name}.elu", alpha=op.act_alpha)
    elif kind == "gelu":
        _gelu(g, x, out, name)
    else:
        raise ConversionError(f"activation '{kind}' of op '{name}' has no ONNX export")


def _gelu(g: _GraphWriter, x: str, out: str, name: str) -> None:
    """x * 0.5 * (1 + Erf(x / sqrt(2))): opset 17 has no Gelu op."""
    def scalar(what: str, value: float) -> str:
        return g.const(g.temp(f"{name}.{what}"), np.array(value, np.float32))

    t = g.node("Div", [x, scalar("sqrt2", np.sqrt(2.0))], g.temp(x), f"{name}.gelu_div")
    t = g.node("Erf", [t], g.temp(x), f"{name}.gelu_erf")
    t = g.node("Add", [t, scalar("one", 1.0)], g.temp(x), f"{name}.gelu_add")
    t = g.node("Mul", [x, t], g.temp(x), f"{name}.gelu_mul")
    g.node("Mul", [t, scalar("half", 0.5)], out, f"{name}.gelu")


def count_macs(proto: onnx.ModelProto) -> int:
    """Multiply-accumulates per sample of the Conv, Gemm and MatMul nodes of an ONNX model.

    Counted from the graph itself (ONNX shape inference), independently of slimrt's cost model.
    """
    weights = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(_without_float_data(proto))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    macs = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            macs += int(np.prod(dims[node.output[0]][1:])) * int(np.prod(weights[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            macs += int(np.prod(weights[node.input[1]]))
    return macs


def _without_float_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose float initializers are declared as graph inputs: shape inference needs their
    shapes only, and copying hundreds of MB of weights through it is slow."""
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    graph = light.graph
    floats = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]
    graph.input.extend(helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in floats)
    kept = [i for i in graph.initializer if i.data_type != TensorProto.FLOAT]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return light
