"""ONNX -> converter IR (:mod:`slimrt.convert.ir`).

Some ONNX values are kept as pending views, not IR nodes, until something reads them:

* a channel shuffle, Reshape [N, g, C/g, H, W] -> Transpose perm [0, 2, 1, 3, 4] -> Reshape
  [N, C, H, W], becomes one ``shuffle`` node; the 5-D tensors between its steps may feed
  nothing else;
* arithmetic with per-channel constants (Mul, Div, Add, Sub) is an affine map of its activation:
  GELU written out as x * 0.5 * (1 + Erf(x / sqrt(2))), in any order of its factors, becomes
  one ``gelu`` activation; any other reader gets a ``scale_bias`` node, which fuse() folds into
  a layer next to it where that is exact;
* a zero Pad of H and W is folded into the Conv or pool that reads it;
* [N, F] unsqueezed to [N, F, 1] waits for its second Unsqueeze to [N, F, 1, 1].

Subgraphs that only compute constants (weights, shapes: Constant, ConstantOfShape, Identity,
Shape, Gather, Unsqueeze, Concat, Cast, ...) are evaluated with numpy at import time; the ops
that touch activations map onto the IR's op set. Anything else raises
:class:`~slimrt.convert.ir.ConversionError` naming the op and the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .ir import ConversionError, Graph, Node, output_shape

SUPPORTED = ("Conv", "BatchNormalization", "Relu", "Clip", "HardSwish", "Sigmoid", "Mul (x * Sigmoid(x))",
             "Mul (x * g, g [N, C, 1, 1]: a channel gate)", "LeakyRelu", "PRelu", "Tanh", "Gelu",
             "Erf (in x * 0.5 * (1 + Erf(x / sqrt(2))))", "HardSigmoid", "Elu",
             "Mul, Div, Add, Sub by per-channel constants (scale_bias)", "Pad (zeros on H, W, before a Conv or pool)",
             "Add", "Sum", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten",
             "Reshape to (N, -1)", "Reshape-Transpose-Reshape channel shuffle", "Slice and Split of the channels",
             "Resize / Upsample (integer factors: nearest, bilinear with half-pixel centres)",
             "Reshape or Unsqueeze of [N, F] to [N, F, 1, 1]", "Squeeze", "Gemm", "MatMul", "Concat", "Dropout",
             "Identity", "Softmax (axis 1)")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class _Affine:
    """``scale * source + bias`` with per-channel constants, not yet an IR node."""

    source: str
    scale: np.ndarray  # float64, one value per channel (or feature) of source
    bias: np.ndarray
    node: str  # the ONNX node that started it, for names and messages
    op: str

    def then(self, scale: np.ndarray | float, bias: np.ndarray | float) -> _Affine:
        """``scale * self + bias``."""
        return _Affine(self.source, self.scale * scale, self.bias * scale + bias, self.node, self.op)

    def uniform_scale(self) -> float | None:
        """The scale when it is one value for every channel and there is no bias, else None."""
        if np.any(self.bias != 0) or not np.all(self.scale == self.scale[0]):
            return None
        return float(self.scale[0])


@dataclass(frozen=True)
class _ErfOf:
    """``bias + scale * erf(source / sqrt(2))``: the inside of a GELU, not yet an IR node."""

    source: str
    scale: float
    bias: float
    node: str  # the Erf node, for messages


@dataclass(frozen=True)
class _PadView:
    """``source`` zero-padded on H and W by ``pads`` (top, left, bottom, right), not yet an IR node."""

    source: str
    pads: tuple[int, int, int, int]
    shape: Shape  # the padded shape
    node: str  # the (first) Pad node, for messages


@dataclass(frozen=True)
class _ShuffleView:
    """A 5-D tensor inside a channel shuffle: ``source`` split into ``groups`` along channels."""

    source: str
    groups: int
    shape: Shape
    transposed: bool
    reshape: str  # name of the Reshape that split the channels, for messages


def load_proto(source: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """An ONNX ModelProto from a path, serialized bytes or a proto."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"ONNX file '{path}' does not exist")
    return onnx.load(str(path))


def import_onnx(source: str | Path | bytes | onnx.ModelProto,
                input_shape: Shape | None = None, name: str | None = None) -> Graph:
    """Read an ONNX model into a :class:`Graph` (not yet fused).

    ``input_shape`` (N, C, H, W) overrides the shape declared by the model; it is required
    when the model declares H or W symbolically. A symbolic batch dimension becomes 1.
    """
    proto = load_proto(source)
    return _Importer(proto, input_shape).run(name or proto.graph.name or "model")


class _Importer:
    def __init__(self, proto: onnx.ModelProto, input_shape: Shape | None) -> None:
        self.graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.shapes: dict[str, Shape] = {}
        self.alias: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.producer: dict[str, Node] = {}
        self.shuffles: dict[str, _ShuffleView] = {}
        self.affine: dict[str, _Affine] = {}
        self.erf: dict[str, _ErfOf] = {}
        self.pads: dict[str, _PadView] = {}
        self.unsqueezed: dict[str, tuple[str, Shape]] = {}  # [N, F, 1] on the way to [N, F, 1, 1]
        self.used_names: set[str] = {"input"}
        self.input = self._find_input(input_shape)

    def run(self, name: str) -> Graph:
        for index, proto_node in enumerate(self.graph.node):
            self._visit(proto_node, index)
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            raise ConversionError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); "
                                  "slimrt models have exactly one")
        out = self.alias.get(outputs[0], outputs[0])
        if out in self.affine or out in self.erf or out in self.shuffles or out in self.pads:
            out = self.act_input(_Ctx("output", outputs[0], [out], [], {}))
        if out not in self.shapes or out == self.input:
            raise ConversionError(f"the model output '{outputs[0]}' is a constant or the input; "
                                  "nothing to convert")
        graph = Graph(name, self.input, self.shapes[self.input], out, self.nodes, self.shapes)  # type: ignore[arg-type]
        graph.prune_dead()
        return graph

    def _find_input(self, override: Shape | None) -> str:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConversionError(f"the model has {len(inputs)} data inputs "
                                  f"({', '.join(i.name for i in inputs)}); slimrt models have exactly one")
        value = inputs[0]
        elem = value.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise ConversionError(f"input '{value.name}' has element type "
                                  f"{onnx.TensorProto.DataType.Name(elem)}; slimrt runs float32 inputs")
        dims = value.type.tensor_type.shape.dim
        if override is not None:
            shape = tuple(int(d) for d in override)
        else:
            if len(dims) != 4:
                raise ConversionError(f"input '{value.name}' has rank {len(dims)}; slimrt runs NCHW (rank 4) inputs")
            shape = tuple(d.dim_value if d.HasField("dim_value") else (1 if i == 0 else -1)
                          for i, d in enumerate(dims))
            if min(shape) < 1:
                raise ConversionError(f"input '{value.name}' has a symbolic height or width; "
                                      "pass input_shape=(N, C, H, W)")
        if len(shape) != 4:
            raise ConversionError(f"input_shape {shape} is not (N, C, H, W)")
        self.shapes[value.name] = shape
        return value.name

    # ---- dispatch -----------------------------------------------------------------------

    def _visit(self, node: onnx.NodeProto, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        if node.domain not in ("", "ai.onnx"):
            raise ConversionError(f"unsupported op '{node.domain}.{node.op_type}' at node '{name}': "
                                  "only the standard ONNX domain is converted")
        inputs = [self.alias.get(t, t) if t else "" for t in node.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if self._foldable(node.op_type, inputs):
            values = _FOLD[node.op_type](self, [self.consts.get(t) if t else None for t in inputs], attrs, inputs)
            for out, value in zip(node.output, values):
                self.consts[out] = np.asarray(value)
            return
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise ConversionError(_unsupported(node.op_type, name))
        handler(self, _Ctx(node.op_type, name, inputs, list(node.output), attrs))

    def _foldable(self, op: str, inputs: list[str]) -> bool:
        if op not in _FOLD:
            return False
        if op == "Shape":
            return True
        return all(t == "" or t in self.consts for t in inputs)

    # ---- helpers for handlers -----------------------------------------------------------

    def unique(self, name: str, op: str) -> str:
        """A readable unique op name: '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'."""
        parts: list[str] = []
        for part in [p for p in name.split("/") if p]:
            if parts and part.startswith(parts[-1] + "."):
                parts[-1] = part
            else:
                parts.append(part)
        if len(parts) > 1 and parts[-1].split("_")[0] == op:
            parts.pop()
        base = ".".join(parts).replace("@", "_") or op
        candidate, k = base, 1
        while candidate in self.used_names:
            k += 1
            candidate = f"{base}_{k}"
        self.used_names.add(candidate)
        return candidate

    def emit(self, ctx: _Ctx, kind: str, inputs: list[str], attrs: dict[str, Any] | None = None,
             params: dict[str, np.ndarray] | None = None, output: str | None = None, name: str | None = None) -> Node:
        name = name or self.unique(ctx.name, ctx.op)
        node = Node(kind, name, inputs, output or ctx.outputs[0], attrs or {}, params or {})
        self.shapes[node.output] = output_shape(node, self.shapes)
        self.nodes.append(node)
        self.producer[node.output] = node
        return node

    def act_input(self, ctx: _Ctx, i: int = 0) -> str:
        t = ctx.inputs[i]
        if t in self.affine:
            self.materialize(t)
        if t in self.erf:
            view = self.erf[t]
            raise ConversionError(
                f"{ctx.op} '{ctx.name}' reads '{t}', computed from Erf '{view.node}'; slimrt converts Erf only "
                "inside GELU, x * 0.5 * (1 + Erf(x / sqrt(2)))")
        if t in self.unsqueezed:
            raise ConversionError(f"{ctx.op} '{ctx.name}' reads '{t}' of shape {self.unsqueezed[t][1]}; slimrt "
                                  "converts [N, F] -> [N, F, 1, 1] only")
        if t in self.pads:
            raise ConversionError(
                f"Pad '{self.pads[t].node}' feeds {ctx.op} '{ctx.name}'; slimrt folds a zero Pad of H and W into "
                "the Conv, AveragePool or MaxPool that reads it only")
        if t in self.shuffles:
            view = self.shuffles[t]
            raise ConversionError(
                f"{ctx.op} '{ctx.name}' reads '{t}', the {list(view.shape)} view of '{view.source}' made by "
                f"Reshape '{view.reshape}'; slimrt converts such a view only inside a channel shuffle "
                "Reshape [N, g, C/g, H, W] -> Transpose(perm=[0, 2, 1, 3, 4]) -> Reshape [N, C, H, W]")
        if t not in self.shapes:
            raise ConversionError(f"{ctx.op} '{ctx.name}' expects an activation as input {i}, "
                                  f"got the constant '{t}'")
        return t

    def is_value(self, t: str) -> bool:
        """Whether ``t`` is computed from the input (an activation or a pending view), not a constant."""
        return (t in self.shapes or t in self.affine or t in self.erf or t in self.shuffles or t in self.pads
                or t in self.unsqueezed)

    def padded_input(self, ctx: _Ctx) -> tuple[str, tuple[int, int, int, int], Shape]:
        """The activation a Conv or pool reads, the zero padding a Pad before it adds (top, left,
        bottom, right) and the shape the node sees."""
        view = self.pads.get(ctx.inputs[0])
        if view is None:
            x = self.act_input(ctx)
            return x, (0, 0, 0, 0), self.shapes[x]
        return view.source, view.pads, view.shape

    def as_affine(self, t: str, ctx: _Ctx) -> _Affine:
        """Tensor ``t`` as an affine map of an activation (the identity for a plain activation)."""
        if t in self.affine:
            return self.affine[t]
        x = self.act_input(_Ctx(ctx.op, ctx.name, [t], ctx.outputs, {}))
        c = self.shapes[x][1]
        return _Affine(x, np.ones(c), np.zeros(c), ctx.name, ctx.op)

    def set_affine(self, out: str, view: _Affine) -> None:
        """``out`` := ``view``; the identity map is a plain alias."""
        if np.all(view.scale == 1) and np.all(view.bias == 0):
            self.alias[out] = view.source
        else:
            self.affine[out] = view

    def materialize(self, t: str) -> None:
        """A pending affine map becomes a ``scale_bias`` node (which fuse() folds into the layer
        next to it where that is exact)."""
        view = self.affine.pop(t)
        self.emit(_Ctx(view.op, view.node, [], [t], {}), "scale_bias", [view.source], {"act": "none"},
                  {"scale": view.scale, "bias": view.bias})

    def const(self, ctx: _Ctx, i: int, what: str) -> np.ndarray:
        t = ctx.inputs[i] if i < len(ctx.inputs) else ""
        if t == "" or t not in self.consts:
            raise ConversionError(f"{ctx.op} '{ctx.name}' needs a constant {what} (input {i}); "
                                  "slimrt converts trained models whose weights are initializers")
        return self.consts[t]

    def rank(self, t: str) -> int:
        return len(self.shapes[t])


class _Ctx:
    """The pieces of one ONNX node a handler needs."""

    def __init__(self, op: str, name: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any]) -> None:
        self.op, self.name, self.inputs, self.outputs, self.attrs = op, name, inputs, outputs, attrs


def _unsupported(op: str, name: str) -> str:
    hint = ""
    if op in ("Transpose", "Reshape", "Gather", "GatherElements", "ScatterND"):
        hint = (" (an op that moves channels, such as a channel shuffle, cannot keep the channel "
                "order that width slicing needs)")
    return (f"unsupported ONNX op '{op}' at node '{name}'{hint}; slimrt converts {', '.join(SUPPORTED)}. "
            "Replace the op in the source model")


# ---- activation handlers ----------------------------------------------------------------


def _spatial_attrs(imp: _Importer, ctx: _Ctx, kernel: tuple[int, int], shape: Shape) -> dict[str, Any]:
    """stride, dilation and pads (top, left, bottom, right) of a Conv or pool over an input of ``shape``."""
    a = ctx.attrs
    if len(kernel) != 2:
        raise ConversionError(f"{ctx.op} '{ctx.name}' has a {len(kernel)}-D kernel; slimrt runs 2-D ops")
    stride = tuple(a.get("strides", (1, 1)))
    dilation = tuple(a.get("dilations", (1, 1)))
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(shape[2:], kernel, stride, dilation, auto == "SAME_UPPER")
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    return {"stride": stride, "dilation": dilation, "pads": tuple(int(p) for p in pads)}


def _same_pads(size: Shape, kernel: tuple[int, int], stride: Shape, dilation: Shape, upper: bool) -> Shape:
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return (begin[0], begin[1], end[0], end[1])


def _conv(imp: _Importer, ctx: _Ctx) -> None:
    x, extra, shape = imp.padded_input(ctx)
    w = imp.const(ctx, 1, "weight").astype(np.float32)
    attrs = _spatial_attrs(imp, ctx, tuple(w.shape[2:]), shape)
    attrs["pads"] = tuple(p + e for p, e in zip(attrs["pads"], extra))  # zero padding either way
    attrs.update(groups=int(ctx.attrs.get("group", 1)), act="none")
    params = {"weight": w}
    if len(ctx.inputs) > 2 and ctx.inputs[2]:
        params["bias"] = imp.const(ctx, 2, "bias").astype(np.float32)
    if imp.shapes[x][1] != w.shape[1] * attrs["groups"]:
        raise ConversionError(f"Conv '{ctx.name}' weight {w.shape} does not match {imp.shapes[x][1]} input channels")
    imp.emit(ctx, "conv", [x], attrs, params)


def _batchnorm(imp: _Importer, ctx: _Ctx) -> None:
    if ctx.attrs.get("training_mode", 0):
        raise ConversionError(f"BatchNormalization '{ctx.name}' is in training mode; export the model in eval mode")
    x = imp.act_input(ctx)
    params = {k: imp.const(ctx, i, k).astype(np.float64)
              for i, k in enumerate(("gamma", "beta", "mean", "var"), start=1)}
    imp.emit(ctx, "batchnorm", [x], {"eps": float(ctx.attrs.get("epsilon", 1e-5))}, params)


def _simple_act(kind: str, **params: tuple[str, float]) -> Callable[[_Importer, _Ctx], None]:
    """An activation; ``params`` maps its IR attrs to (ONNX attribute, default)."""
    def handler(imp: _Importer, ctx: _Ctx) -> None:
        attrs: dict[str, Any] = {"kind": kind}
        for key, (onnx_name, default) in params.items():
            attrs[key] = float(ctx.attrs.get(onnx_name, default))
        imp.emit(ctx, "act", [imp.act_input(ctx)], attrs)
    return handler


def _prelu(imp: _Importer, ctx: _Ctx) -> None:
    """PRelu: one slope for every channel is LeakyRelu (fused into the layer before it), one per
    channel a ``prelu`` node."""
    x = imp.act_input(ctx)
    slope = imp.const(ctx, 1, "slope")
    vector = _per_channel(slope, imp.shapes[x])
    if vector is None:
        raise ConversionError(f"PRelu '{ctx.name}' has slopes of shape {slope.shape} for '{x}' of shape "
                              f"{imp.shapes[x]}; slimrt converts one slope, or one per channel")
    if slope.size == 1:
        imp.emit(ctx, "act", [x], {"kind": "leaky_relu", "act_alpha": float(vector[0])})
    else:
        imp.emit(ctx, "prelu", [x], {}, {"slope": vector.astype(np.float32)})


def _gelu(imp: _Importer, ctx: _Ctx) -> None:
    approximate = ctx.attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate != "none":
        raise ConversionError(f"Gelu '{ctx.name}' has approximate='{approximate}'; slimrt converts the exact "
                              "GELU (approximate='none') only")
    imp.emit(ctx, "act", [imp.act_input(ctx)], {"kind": "gelu"})


def _clip(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    if imp.opset < 11:
        lo, hi = ctx.attrs.get("min", -np.inf), ctx.attrs.get("max", np.inf)
    else:
        lo = float(imp.const(ctx, 1, "min")) if len(ctx.inputs) > 1 and ctx.inputs[1] else -np.inf
        hi = float(imp.const(ctx, 2, "max")) if len(ctx.inputs) > 2 and ctx.inputs[2] else np.inf
    if lo == 0 and hi == 6:
        kind = "relu6"
    elif lo == 0 and np.isinf(hi):
        kind = "relu"
    else:
        raise ConversionError(f"Clip '{ctx.name}' clips to [{lo}, {hi}]; slimrt converts Clip(0, 6) (ReLU6) "
                              "and Clip(0, inf) (ReLU) only")
    imp.emit(ctx, "act", [x], {"kind": kind})


def _mul(imp: _Importer, ctx: _Ctx) -> None:
    a, b = ctx.inputs[:2]
    if imp.is_value(a) and imp.is_value(b):
        for x, s in ((a, b), (b, a)):
            src = imp.producer.get(s)
            if (x in imp.shapes and src is not None and src.kind == "act" and src.attrs["kind"] == "sigmoid"
                    and src.inputs[0] == x):
                imp.emit(ctx, "act", [x], {"kind": "silu"})
                return
            if (x in imp.shapes and src is not None and src.kind == "act" and src.attrs["kind"] == "hardsigmoid"
                    and src.inputs[0] == x and np.isclose(src.attrs["act_alpha"], 1 / 6)
                    and np.isclose(src.attrs["act_beta"], 0.5)):
                imp.emit(ctx, "act", [x], {"kind": "hardswish"})
                return
        for e, other in ((a, b), (b, a)):
            if e in imp.erf and _gelu_product(imp, ctx, imp.erf[e], other):
                return
        _channel_gate(imp, ctx)
        return
    x, c = (a, b) if imp.is_value(a) else (b, a)
    if not imp.is_value(x):
        raise ConversionError(f"Mul '{ctx.name}' has no activation input")
    value = imp.const(ctx, ctx.inputs.index(c), "factor")
    _constant_arith(imp, ctx, x, value, 1.0)


def _channel_gate(imp: _Importer, ctx: _Ctx) -> None:
    """x * g with g [N, C, 1, 1]: a squeeze-and-excitation gate (either operand order)."""
    a, b = (imp.act_input(ctx, i) for i in range(2))
    sa, sb = imp.shapes[a], imp.shapes[b]
    for x, g in ((a, b), (b, a)):
        sx, sg = imp.shapes[x], imp.shapes[g]
        if len(sx) == 4 and sg == (sx[0], sx[1], 1, 1):
            imp.emit(ctx, "mul", [x, g])
            return
    raise ConversionError(f"Mul '{ctx.name}' multiplies activations of shapes {sa} and {sb}; slimrt converts "
                          "x * Sigmoid(x) (SiLU), x * HardSigmoid(x) (HardSwish), GELU and a channel gate "
                          "x * g with g [N, C, 1, 1] (squeeze-and-excitation) only")


def _div(imp: _Importer, ctx: _Ctx) -> None:
    x = ctx.inputs[0]
    if not imp.is_value(x) or imp.is_value(ctx.inputs[1]):
        raise ConversionError(f"Div '{ctx.name}' divides by an activation; slimrt converts the division of an "
                              "activation by a constant only")
    _constant_arith(imp, ctx, x, 1.0 / imp.const(ctx, 1, "divisor").astype(np.float64), 1.0)


def _constant_arith(imp: _Importer, ctx: _Ctx, x: str, factor: np.ndarray | float, sign: float,
                    term: np.ndarray | None = None) -> None:
    """``ctx``'s output := factor * x + term (a pending view; ``sign`` multiplies x first)."""
    shape = _view_shape(imp, x)
    per_channel = []
    for value in (factor, 0.0 if term is None else term):
        vector = _per_channel(np.asarray(value), shape)
        if vector is None:
            raise ConversionError(f"{ctx.op} '{ctx.name}' applies a constant of shape {np.shape(value)} to "
                                  f"'{x}' of shape {shape}; slimrt converts constants that are one value per "
                                  "channel (broadcast over the other axes) only")
        per_channel.append(vector)
    scale, bias = per_channel[0] * sign, per_channel[1]
    if x in imp.erf:
        view = imp.erf[x]
        if np.all(scale == scale[0]) and np.all(bias == bias[0]):
            k, d = float(scale[0]), float(bias[0])
            imp.erf[ctx.outputs[0]] = _ErfOf(view.source, view.scale * k, view.bias * k + d, view.node)
            return
        raise ConversionError(f"{ctx.op} '{ctx.name}' applies a per-channel constant to the Erf of GELU; "
                              "slimrt converts x * 0.5 * (1 + Erf(x / sqrt(2))) only")
    imp.set_affine(ctx.outputs[0], imp.as_affine(x, ctx).then(scale, bias))


def _view_shape(imp: _Importer, t: str) -> Shape:
    if t in imp.affine:
        return imp.shapes[imp.affine[t].source]
    if t in imp.erf:
        return imp.shapes[imp.erf[t].source]
    return imp.shapes[imp.act_input(_Ctx("", "", [t], [], {}))]


def _erf(imp: _Importer, ctx: _Ctx) -> None:
    t = ctx.inputs[0]
    view = imp.affine.get(t)
    k = view.uniform_scale() if view is not None else None
    if view is None or k is None or not np.isclose(k, 1 / np.sqrt(2), rtol=1e-6, atol=0):
        raise ConversionError(f"Erf '{ctx.name}' is not the Erf of GELU, x * 0.5 * (1 + Erf(x / sqrt(2))); "
                              "slimrt converts no other Erf")
    imp.erf[ctx.outputs[0]] = _ErfOf(view.source, 1.0, 0.0, ctx.name)


def _gelu_product(imp: _Importer, ctx: _Ctx, erf: _ErfOf, other: str) -> bool:
    """``ctx`` = other * erf: GELU when erf = s * (1 + Erf(x / sqrt(2))) and other = k * x."""
    if not np.isclose(erf.scale, erf.bias, rtol=1e-6, atol=0) or erf.scale == 0:
        return False
    if other == erf.source:
        k = 1.0
    elif other in imp.affine and imp.affine[other].source == erf.source:
        found = imp.affine[other].uniform_scale()
        if found is None:
            return False
        k = found
    else:
        return False
    factor = 2.0 * k * erf.scale  # other * erf = factor * gelu(x)
    if np.isclose(factor, 1.0, rtol=1e-6, atol=0):
        imp.emit(ctx, "act", [erf.source], {"kind": "gelu"})
        return True
    gelu = imp.emit(ctx, "act", [erf.source], {"kind": "gelu"}, output=ctx.outputs[0] + "#gelu")
    c = imp.shapes[gelu.output][1]
    imp.set_affine(ctx.outputs[0], _Affine(gelu.output, np.full(c, factor), np.zeros(c), ctx.name, ctx.op))
    return True


def _add(imp: _Importer, ctx: _Ctx) -> None:
    values = [t for t in ctx.inputs if t and imp.is_value(t)]
    consts = [t for t in ctx.inputs if t and not imp.is_value(t)]
    if len(values) == 2 and not consts:
        a, b = (imp.act_input(ctx, i) for i in range(2))
        if imp.shapes[a] != imp.shapes[b]:
            raise ConversionError(f"Add '{ctx.name}' adds shapes {imp.shapes[a]} and {imp.shapes[b]}; "
                                  "slimrt adds tensors of equal shape only")
        imp.emit(ctx, "add", [a, b], {"act": "none"})
        return
    if len(values) == 1 and len(consts) == 1:
        _constant_arith(imp, ctx, values[0], 1.0, 1.0, imp.consts[consts[0]].astype(np.float64))
        return
    raise ConversionError(f"{ctx.op} '{ctx.name}' has {len(values)} activation inputs; slimrt converts "
                          "the sum of two activations or an activation plus a constant")


def _sub(imp: _Importer, ctx: _Ctx) -> None:
    a, b = ctx.inputs[:2]
    if imp.is_value(a) and not imp.is_value(b):
        _constant_arith(imp, ctx, a, 1.0, 1.0, -imp.const(ctx, 1, "subtrahend").astype(np.float64))
    elif imp.is_value(b) and not imp.is_value(a):
        _constant_arith(imp, ctx, b, 1.0, -1.0, imp.const(ctx, 0, "minuend").astype(np.float64))
    else:
        raise ConversionError(f"Sub '{ctx.name}' subtracts two activations; slimrt converts an activation "
                              "minus a constant (or a constant minus an activation) only")


def _per_channel(value: np.ndarray, shape: Shape) -> np.ndarray | None:
    """The per-channel vector a constant broadcasts to over ``shape``, or None if it varies elsewhere."""
    try:
        full = np.broadcast_to(value.astype(np.float64), (1,) + tuple(shape[1:]))
    except ValueError:
        return None
    if len(full.shape) != len(shape):
        return None
    table = full.reshape(shape[1], -1)
    return table[:, 0].copy() if np.all(table == table[:, :1]) else None


def _sum(imp: _Importer, ctx: _Ctx) -> None:
    if len(ctx.inputs) == 1:
        imp.alias[ctx.outputs[0]] = imp.act_input(ctx)
        return
    if len(ctx.inputs) != 2:
        raise ConversionError(f"Sum '{ctx.name}' has {len(ctx.inputs)} inputs; slimrt converts sums of two")
    _add(imp, ctx)


def _pool(kind: str) -> Callable[[_Importer, _Ctx], None]:
    def handler(imp: _Importer, ctx: _Ctx) -> None:
        x, extra, shape = imp.padded_input(ctx)
        if len(ctx.outputs) > 1 and ctx.outputs[1]:
            raise ConversionError(f"{ctx.op} '{ctx.name}' returns indices; slimrt converts the values only")
        kernel = tuple(int(k) for k in ctx.attrs["kernel_shape"])
        attrs = _spatial_attrs(imp, ctx, kernel, shape)  # type: ignore[arg-type]
        if attrs.pop("dilation") != (1, 1):
            raise ConversionError(f"{ctx.op} '{ctx.name}' is dilated; slimrt converts undilated pooling only")
        attrs.update(kernel=kernel, ceil_mode=bool(ctx.attrs.get("ceil_mode", 0)))
        if kind == "avgpool":
            attrs["count_include_pad"] = bool(ctx.attrs.get("count_include_pad", 0))
        if any(extra):
            _fold_pad_into_pool(imp, ctx, kind, x, extra, attrs)
        imp.emit(ctx, kind, [x], attrs)
    return handler


def _fold_pad_into_pool(imp: _Importer, ctx: _Ctx, kind: str, x: str, extra: tuple[int, ...],
                        attrs: dict[str, Any]) -> None:
    """Pool padding that equals the zero Pad before the pool, or a ConversionError naming both.

    Average: the Pad's zeros count in every window, as the pool's own padding does with
    count_include_pad, so they fold when the pool counts its padding (or has none). Max: the
    pool's padding never wins, the Pad's zeros do where a window's values are all negative, so
    they fold only over an input that is never negative (after relu, relu6, sigmoid, hardsigmoid).
    """
    pad = imp.pads[ctx.inputs[0]].node
    if kind == "avgpool":
        if any(attrs["pads"]) and not attrs["count_include_pad"]:
            raise ConversionError(f"AveragePool '{ctx.name}' has pads {list(attrs['pads'])} it does not count, after "
                                  f"Pad '{pad}' whose zeros it does count; slimrt folds a zero Pad into an "
                                  "AveragePool with count_include_pad=1 or without pads of its own only")
        attrs["count_include_pad"] = True
    else:
        src = imp.producer.get(x)
        if src is None or src.kind != "act" or src.attrs["kind"] not in ("relu", "relu6", "sigmoid", "hardsigmoid"):
            raise ConversionError(f"Pad '{pad}' pads '{x}' with zeros before MaxPool '{ctx.name}'; a zero can be the "
                                  "maximum of a window there, so slimrt folds it only over an input that is never "
                                  "negative (the output of a Relu, Clip(0, 6), Sigmoid or HardSigmoid)")
    attrs["pads"] = tuple(p + e for p, e in zip(attrs["pads"], extra))
    kh, kw = attrs["kernel"]
    top, left, bottom, right = attrs["pads"]
    if max(top, bottom) >= kh or max(left, right) >= kw:
        raise ConversionError(f"{ctx.op} '{ctx.name}' with the zeros of Pad '{pad}' pads by {list(attrs['pads'])}, "
                              f"not less than its kernel {list(attrs['kernel'])}; slimrt pools windows that overlap "
                              "the input only")


def _pad(imp: _Importer, ctx: _Ctx) -> None:
    """Pad: constant zeros on H and W only, kept as a view for the Conv or pool that reads it."""
    t = ctx.inputs[0]
    mode = ctx.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if imp.opset < 11:
        pads, value, axes = list(ctx.attrs.get("pads", [])), float(ctx.attrs.get("value", 0.0)), None
    else:
        pads = [int(p) for p in imp.const(ctx, 1, "pads").reshape(-1)]
        value = float(imp.const(ctx, 2, "constant_value").reshape(-1)[0]) if len(ctx.inputs) > 2 and ctx.inputs[2] \
            else 0.0
        axes = [int(a) for a in imp.const(ctx, 3, "axes").reshape(-1)] if len(ctx.inputs) > 3 and ctx.inputs[3] \
            else None
    view = imp.pads.get(t)
    shape = view.shape if view is not None else imp.shapes[imp.act_input(ctx)]
    rank = len(shape)
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[i + len(axes)]
    if mode != "constant" or value != 0 or rank != 4 or begin[:2] != [0, 0] or end[:2] != [0, 0] or \
            min(begin + end) < 0:
        what = f"mode '{mode}'" if mode != "constant" else f"value {value}" if value != 0 else f"pads {pads}"
        raise ConversionError(f"Pad '{ctx.name}' with {what} on a tensor of shape {shape}; slimrt converts Pad with "
                              "zeros (mode 'constant', value 0) on H and W only, folded into the Conv or pool "
                              "that reads it")
    extra = (begin[2], begin[3], end[2], end[3])
    if view is not None:
        extra = tuple(a + b for a, b in zip(extra, view.pads))
    source = view.source if view is not None else imp.act_input(ctx)
    padded = shape[:2] + (shape[2] + begin[2] + end[2], shape[3] + begin[3] + end[3])
    imp.pads[ctx.outputs[0]] = _PadView(source, extra, padded, view.node if view is not None else ctx.name)


def _global_pool(imp: _Importer, ctx: _Ctx) -> None:
    imp.emit(ctx, "global_avgpool", [imp.act_input(ctx)])


def _reduce_mean(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    if len(ctx.inputs) > 1 and ctx.inputs[1]:
        axes = [int(a) for a in imp.const(ctx, 1, "axes")]
    else:
        axes = list(ctx.attrs.get("axes", []))
    if imp.rank(x) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
        raise ConversionError(f"ReduceMean '{ctx.name}' over axes {axes}; slimrt converts the mean over H and W only")
    if ctx.attrs.get("keepdims", 1):
        imp.emit(ctx, "global_avgpool", [x])
        return
    pooled = imp.emit(ctx, "global_avgpool", [x], output=ctx.outputs[0] + "#pooled")
    imp.emit(ctx, "flatten", [pooled.output])


def _flatten(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    axis = int(ctx.attrs.get("axis", 1)) % max(imp.rank(x), 1)
    if axis != 1:
        raise ConversionError(f"Flatten '{ctx.name}' with axis {axis}; slimrt converts Flatten(axis=1) only")
    _to_rank2(imp, ctx, x)


def _to_rank2(imp: _Importer, ctx: _Ctx, x: str) -> None:
    if imp.rank(x) == 2:
        imp.alias[ctx.outputs[0]] = x
    else:
        imp.emit(ctx, "flatten", [x])


def _reshape(imp: _Importer, ctx: _Ctx) -> None:
    if ctx.inputs[0] in imp.shuffles:
        _shuffle_merge(imp, ctx, imp.shuffles[ctx.inputs[0]])
        return
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    target = _resolve_reshape(shape, imp.const(ctx, 1, "shape"), bool(ctx.attrs.get("allowzero", 0)))
    if target == shape:
        imp.alias[ctx.outputs[0]] = x
    elif target == (shape[0], int(np.prod(shape[1:]))):
        _to_rank2(imp, ctx, x)
    elif _is_channel_split(shape, target):
        imp.shuffles[ctx.outputs[0]] = _ShuffleView(x, target[1], target, False, ctx.name)
    elif len(shape) == 2 and target == shape + (1, 1):
        imp.emit(ctx, "unflatten", [x])
    else:
        raise ConversionError(f"Reshape '{ctx.name}' from {shape} to {target} mixes the channel axis with "
                              "other axes; slimrt converts Reshape to (N, -1) only, since any other reshape "
                              "breaks the channel order that width slicing needs")


def _is_channel_split(shape: Shape, target: Shape) -> bool:
    """Whether Reshape ``shape`` -> ``target`` is [N, C, H, W] -> [N, g, C/g, H, W]."""
    return (len(shape) == 4 and len(target) == 5 and target[0] == shape[0] and target[3:] == shape[2:]
            and target[1] * target[2] == shape[1] and min(target) >= 1)


def _transpose(imp: _Importer, ctx: _Ctx) -> None:
    view = imp.shuffles.get(ctx.inputs[0])
    if view is None or view.transposed or list(ctx.attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
        raise ConversionError(_unsupported(ctx.op, ctx.name))
    shape = view.shape
    imp.shuffles[ctx.outputs[0]] = _ShuffleView(view.source, view.groups, (shape[0], shape[2], shape[1]) + shape[3:],
                                                True, view.reshape)


def _shuffle_merge(imp: _Importer, ctx: _Ctx, view: _ShuffleView) -> None:
    """The last Reshape of a channel shuffle: emit one ``shuffle`` node."""
    source = imp.shapes[view.source]
    target = _resolve_reshape(view.shape, imp.const(ctx, 1, "shape"), bool(ctx.attrs.get("allowzero", 0)))
    if not view.transposed or target != source:
        raise ConversionError(f"Reshape '{ctx.name}' turns the {list(view.shape)} view of '{view.source}' into "
                              f"{target}; slimrt converts such views only as a channel shuffle Reshape "
                              "[N, g, C/g, H, W] -> Transpose(perm=[0, 2, 1, 3, 4]) -> Reshape [N, C, H, W]")
    imp.emit(ctx, "shuffle", [view.source], {"groups": view.groups})


def _resolve_reshape(shape: Shape, target: np.ndarray, allowzero: bool) -> Shape:
    dims = [int(d) for d in target.reshape(-1)]
    dims = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(shape)) // max(known, 1)
    return tuple(dims)


def _unsqueeze(imp: _Importer, ctx: _Ctx) -> None:
    """[N, F] -> [N, F, 1, 1] (in one Unsqueeze or two): a gate made by linears."""
    t = ctx.inputs[0]
    source, shape = imp.unsqueezed.get(t, (None, None))
    if source is None:
        source = imp.act_input(ctx)
        shape = imp.shapes[source]
    axes = [int(a) for a in (imp.const(ctx, 1, "axes").reshape(-1) if len(ctx.inputs) > 1 and ctx.inputs[1]
                             else ctx.attrs.get("axes", []))]
    rank = len(shape) + len(axes)
    out = list(shape)
    for axis in sorted(a % rank for a in axes):
        out.insert(axis, 1)
    target = tuple(out)
    if len(imp.shapes[source]) != 2 or target[:2] != imp.shapes[source] or any(d != 1 for d in target[2:]):
        raise ConversionError(f"Unsqueeze '{ctx.name}' of '{t}' gives shape {target}; slimrt converts the Unsqueeze "
                              "of [N, F] to [N, F, 1, 1] only")
    if rank == 4:
        imp.emit(ctx, "unflatten", [source])
    else:
        imp.unsqueezed[ctx.outputs[0]] = (source, target)


def _slice(imp: _Importer, ctx: _Ctx) -> None:
    """Slice of an activation: a channel split (axis 1, step 1) only."""
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    if imp.opset < 10:
        starts, ends = list(ctx.attrs["starts"]), list(ctx.attrs["ends"])
        axes = list(ctx.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in imp.const(ctx, 1, "starts").reshape(-1)]
        ends = [int(v) for v in imp.const(ctx, 2, "ends").reshape(-1)]
        has = [len(ctx.inputs) > i and ctx.inputs[i] for i in (3, 4)]
        axes = [int(v) for v in imp.const(ctx, 3, "axes").reshape(-1)] if has[0] else list(range(len(starts)))
        steps = [int(v) for v in imp.const(ctx, 4, "steps").reshape(-1)] if has[1] else [1] * len(starts)
    span = {a % len(shape): slice(s, e, st) for s, e, a, st in zip(starts, ends, axes, steps)}
    full = slice(None)
    kept = {a: sl for a, sl in span.items() if range(shape[a])[sl] != range(shape[a])}
    channels = range(shape[1])[span.get(1, full)] if len(shape) > 1 else range(0)
    if set(kept) - {1} or len(shape) != 4 or channels.step != 1 or not len(channels):
        raise ConversionError(f"Slice '{ctx.name}' of '{x}' {list(shape)} (starts {starts}, ends {ends}, axes {axes}, "
                              f"steps {steps}); slimrt converts a slice of whole channels [a, b) of an NCHW tensor "
                              "only (a channel split)")
    imp.emit(ctx, "slice", [x], {"start": channels.start, "end": channels.stop})


def _resize(imp: _Importer, ctx: _Ctx) -> None:
    """Resize (and the older Upsample) of H and W by integer factors: nearest, or bilinear with
    half-pixel centres, the coordinate modes in which both are a fixed pattern per factor."""
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    a = ctx.attrs
    text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
    mode = text.get("mode", "nearest")
    if ctx.op == "Upsample":
        scales = imp.const(ctx, 1, "scales") if len(ctx.inputs) > 1 else np.asarray(a.get("scales", []))
        coords, nearest = ("asymmetric", "floor") if mode == "nearest" else ("align_corners", "")
    else:
        coords = text.get("coordinate_transformation_mode", "half_pixel")
        nearest = text.get("nearest_mode", "round_prefer_floor")
        has_scales = len(ctx.inputs) > 2 and ctx.inputs[2] and imp.const(ctx, 2, "scales").size
        if has_scales:
            scales = imp.const(ctx, 2, "scales")
        elif len(ctx.inputs) > 3 and ctx.inputs[3]:
            scales = imp.const(ctx, 3, "sizes").astype(np.float64) / np.asarray(shape, np.float64)
        else:
            raise ConversionError(f"Resize '{ctx.name}' has neither scales nor sizes")
    factors = [float(f) for f in np.asarray(scales, np.float64).reshape(-1)]
    what = f"{ctx.op} '{ctx.name}' ({mode}, {coords}{', ' + nearest if mode == 'nearest' else ''}, scales {factors})"
    if len(shape) != 4 or len(factors) != 4 or factors[:2] != [1.0, 1.0] or \
            any(f < 1 or f != int(f) for f in factors[2:]):
        raise ConversionError(f"{what} of a tensor of shape {shape}; slimrt converts upsampling of H and W by "
                              "integer factors only")
    exact_nearest = mode == "nearest" and ((coords == "asymmetric" and nearest == "floor") or (
        coords in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "round_prefer_ceil")))
    exact_linear = mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel")
    if not (exact_nearest or exact_linear):
        raise ConversionError(f"{what}; slimrt converts nearest (asymmetric with floor, or half-pixel with "
                              "rounding) and linear with half-pixel centres (PyTorch's align_corners=False) only")
    imp.emit(ctx, "resize", [x], {"scale": (int(factors[2]), int(factors[3])),
                                  "mode": "nearest" if mode == "nearest" else "bilinear"})


def _split(imp: _Importer, ctx: _Ctx) -> None:
    """Split along channels: one channel slice per output."""
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    axis = int(ctx.attrs.get("axis", 0)) % len(shape)
    if len(ctx.inputs) > 1 and ctx.inputs[1]:
        sizes = [int(v) for v in imp.const(ctx, 1, "split").reshape(-1)]
    elif "split" in ctx.attrs:
        sizes = [int(v) for v in ctx.attrs["split"]]
    else:
        parts = len(ctx.outputs)
        step = -(-shape[axis] // parts)
        sizes = [min(step, shape[axis] - i * step) for i in range(parts)]
    if len(shape) != 4 or axis != 1 or sum(sizes) != shape[1] or min(sizes) < 1:
        raise ConversionError(f"Split '{ctx.name}' of '{x}' {list(shape)} along axis {axis} into {sizes}; slimrt "
                              "converts a split of the channels (axis 1) of an NCHW tensor only")
    start = 0
    for out, size in zip(ctx.outputs, sizes):
        if out:
            imp.emit(ctx, "slice", [x], {"start": start, "end": start + size}, output=out)
        start += size


def _squeeze(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    if len(shape) == 4 and shape[2:] == (1, 1):
        _to_rank2(imp, ctx, x)
        return
    raise ConversionError(f"Squeeze '{ctx.name}' of shape {shape}; slimrt converts the squeeze of a "
                          "[N, C, 1, 1] tensor to [N, C] only")


def _gemm(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    a = ctx.attrs
    if a.get("transA", 0):
        raise ConversionError(f"Gemm '{ctx.name}' has transA=1; slimrt converts Gemm(x, W) with x as [N, In]")
    w = imp.const(ctx, 1, "weight").astype(np.float32)
    w = w if a.get("transB", 0) else w.T
    alpha = float(a.get("alpha", 1.0))
    params = {"weight": np.ascontiguousarray(w * np.float32(alpha) if alpha != 1.0 else w)}
    if len(ctx.inputs) > 2 and ctx.inputs[2]:
        c = imp.const(ctx, 2, "bias").astype(np.float64) * float(a.get("beta", 1.0))
        if c.size not in (1, w.shape[0]):
            raise ConversionError(f"Gemm '{ctx.name}' has a bias of shape {c.shape}; slimrt needs one value per output")
        params["bias"] = np.broadcast_to(c.reshape(-1), (w.shape[0],)).astype(np.float32)
    _emit_linear(imp, ctx, x, params)


def _matmul(imp: _Importer, ctx: _Ctx) -> None:
    x = imp.act_input(ctx)
    w = imp.const(ctx, 1, "weight")
    if w.ndim != 2:
        raise ConversionError(f"MatMul '{ctx.name}' with a weight of rank {w.ndim}; slimrt converts [In, Out] weights")
    _emit_linear(imp, ctx, x, {"weight": np.ascontiguousarray(w.T).astype(np.float32)})


def _emit_linear(imp: _Importer, ctx: _Ctx, x: str, params: dict[str, np.ndarray]) -> None:
    shape = imp.shapes[x]
    if len(shape) != 2 or shape[1] != params["weight"].shape[1]:
        raise ConversionError(f"{ctx.op} '{ctx.name}' reads a tensor of shape {shape} with a weight of "
                              f"{params['weight'].shape[1]} inputs; slimrt converts [N, In] x [In, Out]")
    imp.emit(ctx, "linear", [x], {"act": "none"}, params)


def _concat(imp: _Importer, ctx: _Ctx) -> None:
    xs = [imp.act_input(ctx, i) for i in range(len(ctx.inputs))]
    rank = imp.rank(xs[0])
    if int(ctx.attrs.get("axis", 1)) % rank != 1:
        raise ConversionError(f"Concat '{ctx.name}' along axis {ctx.attrs.get('axis')}; slimrt concatenates "
                              "channels (axis 1) only")
    if rank != 4 or any(imp.shapes[t][2:] != imp.shapes[xs[0]][2:] or imp.rank(t) != 4 for t in xs):
        raise ConversionError(f"Concat '{ctx.name}' joins tensors of shapes {[imp.shapes[t] for t in xs]}; "
                              "slimrt concatenates NCHW tensors of equal H and W")
    imp.emit(ctx, "concat", xs)


def _passthrough(imp: _Importer, ctx: _Ctx) -> None:
    imp.alias[ctx.outputs[0]] = imp.act_input(ctx)


def _softmax(imp: _Importer, ctx: _Ctx) -> None:
    """Softmax over the channels: of [N, C] logits, or of every pixel of an NCHW map."""
    x = imp.act_input(ctx)
    shape = imp.shapes[x]
    default = 1 if imp.opset < 13 else -1
    axis = int(ctx.attrs.get("axis", default)) % len(shape)
    # Before opset 13, Softmax(axis) normalises over all the axes from `axis` on, as one.
    spans_more = imp.opset < 13 and int(np.prod(shape[axis + 1:])) > 1
    if axis != 1 or spans_more:
        over = f"axes {list(range(axis, len(shape)))} together" if imp.opset < 13 else f"axis {axis}"
        raise ConversionError(f"Softmax '{ctx.name}' over {over} of a tensor of shape {shape}; slimrt converts "
                              "the softmax over the channels (axis 1) of [N, C] or [N, C, H, W] only")
    imp.emit(ctx, "softmax", [x])


_HANDLERS: dict[str, Callable[[_Importer, _Ctx], None]] = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "Relu": _simple_act("relu"), "Clip": _clip,
    "HardSwish": _simple_act("hardswish"), "Sigmoid": _simple_act("sigmoid"), "Tanh": _simple_act("tanh"),
    "LeakyRelu": _simple_act("leaky_relu", act_alpha=("alpha", 0.01)),
    "Elu": _simple_act("elu", act_alpha=("alpha", 1.0)),
    "HardSigmoid": _simple_act("hardsigmoid", act_alpha=("alpha", 0.2), act_beta=("beta", 0.5)),
    "Gelu": _gelu, "Erf": _erf, "PRelu": _prelu, "Pad": _pad, "Mul": _mul, "Div": _div, "Sub": _sub,
    "Add": _add, "Sum": _sum, "MaxPool": _pool("maxpool"), "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _global_pool, "ReduceMean": _reduce_mean, "Flatten": _flatten,
    "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Slice": _slice,
    "Resize": _resize, "Upsample": _resize,
    "Split": _split, "Gemm": _gemm, "MatMul": _matmul, "Concat": _concat,
    "Dropout": _passthrough, "Identity": _passthrough, "Softmax": _softmax,
}


# ---- constant folding -----------------------------------------------------------------

Fold = Callable[[_Importer, list[Any], dict[str, Any], list[str]], list[np.ndarray]]


def _axes(values: list[Any], attrs: dict[str, Any]) -> list[int]:
    if len(values) > 1 and values[1] is not None:
        return [int(a) for a in values[1].reshape(-1)]
    return [int(a) for a in attrs.get("axes", [])]


def _fold_constant(imp: _Importer, v: list[Any], a: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    if "value" in a:
        return [numpy_helper.to_array(a["value"])]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return [np.array(a[key], dtype=dtype)]
    raise ConversionError(f"Constant with attributes {sorted(a)} is not supported; use 'value'")


def _fold_constant_of_shape(imp: _Importer, v: list[Any], a: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return [np.full([int(d) for d in v[0]], value.reshape(-1)[0], dtype=value.dtype)]


def _fold_shape(imp: _Importer, v: list[Any], a: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    if names[0] in imp.shuffles:
        shape = imp.shuffles[names[0]].shape
    elif names[0] in imp.pads:
        shape = imp.pads[names[0]].shape
    else:
        shape = imp.shapes[names[0]] if names[0] in imp.shapes else v[0].shape
    rank = len(shape)
    start = int(a.get("start", 0))
    end = int(a.get("end", rank))
    return [np.array(shape[start:end], dtype=np.int64)]


def _fold_slice(imp: _Importer, v: list[Any], a: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    data = v[0]
    if len(v) > 1:
        starts, ends = v[1].tolist(), v[2].tolist()
        axes = v[3].tolist() if len(v) > 3 and v[3] is not None else list(range(len(starts)))
        steps = v[4].tolist() if len(v) > 4 and v[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax] = slice(s, e, st)
    return [data[tuple(index)]]


def _fold_unary(fn: Callable[[np.ndarray], np.ndarray]) -> Fold:
    return lambda imp, v, a, n: [fn(v[0])]


def _fold_binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fold:
    return lambda imp, v, a, n: [np.asarray(fn(v[0], v[1])).astype(np.result_type(v[0], v[1]))]


_FOLD: dict[str, Fold] = {
    "Constant": _fold_constant,
    "ConstantOfShape": _fold_constant_of_shape,
    "Identity": _fold_unary(lambda x: x),
    "Dropout": lambda imp, v, a, n: [v[0]],
    "Cast": lambda imp, v, a, n: [v[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))],
    "Shape": _fold_shape,
    "Gather": lambda imp, v, a, n: [np.take(v[0], v[1], axis=int(a.get("axis", 0)))],
    "Unsqueeze": lambda imp, v, a, n: [np.expand_dims(v[0], tuple(_axes(v, a)))],
    "Squeeze": lambda imp, v, a, n: [np.squeeze(v[0], tuple(_axes(v, a)) or None)],
    "Concat": lambda imp, v, a, n: [np.concatenate([np.atleast_1d(x) for x in v], axis=int(a["axis"]))],
    "Reshape": lambda imp, v, a, n: [v[0].reshape(_resolve_reshape(v[0].shape, v[1], bool(a.get("allowzero", 0))))],
    "Transpose": lambda imp, v, a, n: [np.transpose(v[0], a.get("perm"))],
    "Slice": _fold_slice,
    "Expand": lambda imp, v, a, n: [v[0] * np.ones([int(d) for d in v[1]], dtype=v[0].dtype)],
    "Range": lambda imp, v, a, n: [np.arange(v[0], v[1], v[2]).astype(v[0].dtype)],
    "Add": _fold_binary(np.add), "Sub": _fold_binary(np.subtract), "Mul": _fold_binary(np.multiply),
    "Div": lambda imp, v, a, n: [(v[0] // v[1]) if np.issubdtype(v[0].dtype, np.integer) else v[0] / v[1]],
    "Pow": _fold_binary(np.power),
    "Sqrt": _fold_unary(np.sqrt), "Reciprocal": _fold_unary(np.reciprocal), "Neg": _fold_unary(np.negative),
    "Relu": _fold_unary(lambda x: np.maximum(x, 0)),
}
