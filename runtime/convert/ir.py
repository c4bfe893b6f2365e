"""The converter's graph IR: one small dataflow graph that both front ends (ONNX, PyTorch) produce.

A :class:`Graph` has one NCHW float32 input, one output and a list of :class:`Node` in
execution order. Weights live on the nodes as numpy arrays in PyTorch layout
(conv ``[Cout, Cin/groups, kh, kw]``, linear ``[Out, In]``), so that analysis, sorting and
emission never deal with a serialisation format.

Node kinds and their fields:

==================  ========================================================================
``conv``            params ``weight``, optional ``bias``; attrs ``stride`` (sh, sw), ``pads``
                    (top, left, bottom, right), ``dilation`` (dh, dw), ``groups``, ``act``
``linear``          params ``weight`` [Out, In], optional ``bias``; attrs ``act``
``batchnorm``       params ``gamma``, ``beta``, ``mean``, ``var``; attrs ``eps``
``act``             attrs ``kind``: one of :data:`ACTIVATIONS`
``add``             two inputs; attrs ``act``
``concat``          inputs joined along channels
``mul``             inputs x [N, C, H, W] and a gate [N, C, 1, 1]: x * gate (squeeze-and-excitation)
``maxpool``         attrs ``kernel``, ``stride``, ``pads``, ``ceil_mode``
``avgpool``         as maxpool plus ``count_include_pad``
``global_avgpool``  [N, C, H, W] -> [N, C, 1, 1]
``flatten``         [N, C, H, W] -> [N, C*H*W] (C major)
``unflatten``       [N, F] -> [N, F, 1, 1]
``softmax``         over axis 1
``shuffle``         channel shuffle; attrs ``groups``: output channel c is input channel
                    (c % groups) * (C / groups) + c / groups
``prelu``           params ``slope`` [C]: x > 0 ? x : slope * x per channel
``slice``           channels [``start``, ``end``) (a channel split; kept at full width)
``resize``          attrs ``scale`` (sh, sw) integers, ``mode``: nearest | bilinear (half-pixel centres)
``scale_bias``      params ``scale``, ``bias`` [C]: act(scale * x + bias) per channel; attrs ``act``
==================  ========================================================================

An activation's parameters (``leaky_relu``, ``elu``: alpha; ``hardsigmoid``: alpha, beta; see
:data:`slimrt.format.ACT_PARAMS`) are the attrs ``act_alpha`` / ``act_beta`` of the node that
applies it (an ``act`` node, or a conv, linear or add with the activation fused).

After :func:`fuse`, a ``conv`` or ``linear`` may also carry the BatchNormalization that
followed it (params ``bn_gamma``, ``bn_beta``, ``bn_mean``, ``bn_var``, attr ``bn_eps``);
:meth:`Node.epilogue` turns that into the per-channel scale and bias of the .slim format. A
BatchNormalization that no layer absorbs becomes a ``scale_bias`` node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidModelError

ACTIVATIONS = ("relu", "relu6", "hardswish", "silu", "sigmoid", "leaky_relu", "tanh", "gelu", "hardsigmoid",
               "elu")
ACT_PARAMS = ("act_alpha", "act_beta")
KINDS = ("conv", "linear", "batchnorm", "act", "add", "concat", "maxpool", "avgpool",
         "global_avgpool", "flatten", "softmax", "shuffle", "prelu", "scale_bias", "mul", "unflatten", "slice",
         "resize")


class ConversionError(InvalidModelError):
    """The source model uses an op or a construct that slimrt cannot represent.

    The message names the op and the node, and says what to change in the source model.
    """


@dataclass
class Node:
    """One op of the IR: ``output = kind(inputs)`` with weights in ``params``."""

    kind: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_depthwise(self) -> bool:
        """A conv with groups == Cin == Cout (one filter per channel)."""
        if self.kind != "conv":
            return False
        w = self.params["weight"]
        g = self.attrs["groups"]
        return g > 1 and w.shape[1] == 1 and w.shape[0] == g

    @property
    def is_grouped(self) -> bool:
        """A conv with groups > 1 that is not depthwise; it runs at full width."""
        return self.kind == "conv" and self.attrs["groups"] > 1 and not self.is_depthwise

    def epilogue(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The (scale, bias) of a conv/linear with its folded BatchNormalization, float64."""
        bias = self.params.get("bias")
        if "bn_gamma" not in self.params:
            return None, (None if bias is None else bias.astype(np.float64))
        scale = self.params["bn_gamma"] / np.sqrt(self.params["bn_var"] + self.attrs["bn_eps"])
        conv_bias = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
        shift = self.params["bn_beta"] + (conv_bias - self.params["bn_mean"]) * scale
        return scale, shift


@dataclass
class Graph:
    """A topologically ordered IR graph with one NCHW input and one output."""

    name: str
    input: str
    input_shape: tuple[int, int, int, int]
    output: str
    nodes: list[Node]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def producers(self) -> dict[str, Node]:
        """Tensor name -> the node that writes it."""
        return {n.output: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        """Tensor name -> the nodes that read it (the graph output counts as no node)."""
        found: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                found.setdefault(t, []).append(n)
        return found

    def prune_dead(self) -> None:
        """Drop nodes whose output does not reach the graph output."""
        live = {self.output}
        kept: list[Node] = []
        for n in reversed(self.nodes):
            if n.output in live:
                kept.append(n)
                live.update(n.inputs)
        self.nodes = kept[::-1]


def fuse(graph: Graph) -> None:
    """Fold per-channel affine maps and activations into the layers next to them.

    In order: a BatchNormalization into the conv/linear before it; any other becomes a
    ``scale_bias``; a ``scale_bias`` into the conv/linear before it, else into the convs and
    linears that read it when that is exact at every width (see :func:`_fold_into_readers`);
    activations into their producer. A fold into a producer happens only when the producer's
    output has no other reader, so the graph computes the same thing before and after.
    """
    _fold(graph, "batchnorm", _absorb_bn)
    for n in graph.nodes:
        if n.kind == "batchnorm":
            _bn_to_scale_bias(n)
    _fold(graph, "scale_bias", _absorb_scale_bias)
    _fold_into_readers(graph)
    _fold(graph, "act", _absorb_act)


def _fold(graph: Graph, kind: str, absorb: Any) -> None:
    producers = graph.producers()
    readers = graph.consumers()
    renames: dict[str, str] = {}
    kept: list[Node] = []
    for n in graph.nodes:
        n.inputs = [renames.get(t, t) for t in n.inputs]
        src = producers.get(n.inputs[0]) if n.kind == kind else None
        sole = src is not None and len(readers.get(src.output, [])) == 1 and src.output != graph.output
        if sole and absorb(src, n):
            renames[n.output] = src.output
            continue
        kept.append(n)
    graph.nodes = kept
    graph.output = renames.get(graph.output, graph.output)


def _absorb_bn(src: Node, bn: Node) -> bool:
    if src.kind not in ("conv", "linear") or "bn_gamma" in src.params or src.attrs.get("act", "none") != "none":
        return False
    for key in ("gamma", "beta", "mean", "var"):
        src.params["bn_" + key] = bn.params[key].astype(np.float64)
    src.attrs["bn_eps"] = float(bn.attrs["eps"])
    return True


def _bn_to_scale_bias(bn: Node) -> None:
    scale = bn.params["gamma"] / np.sqrt(bn.params["var"] + bn.attrs["eps"])
    bn.params = {"scale": scale, "bias": bn.params["beta"] - bn.params["mean"] * scale}
    bn.kind, bn.attrs = "scale_bias", {"act": "none"}


def _absorb_scale_bias(src: Node, sb: Node) -> bool:
    """y = s * layer(x) + b into the layer: its batch norm, or its weight and bias (or, after
    another scale_bias, into that one)."""
    if src.kind not in ("conv", "linear", "scale_bias") or src.attrs.get("act", "none") != "none" or \
            sb.attrs["act"] != "none":
        return False
    s, b = sb.params["scale"], sb.params["bias"]
    if src.kind == "scale_bias":
        src.params = {"scale": src.params["scale"] * s, "bias": src.params["bias"] * s + b}
        return True
    if "bn_gamma" in src.params:
        src.params["bn_gamma"] = src.params["bn_gamma"] * s
        src.params["bn_beta"] = src.params["bn_beta"] * s + b
        return True
    w = src.params["weight"].astype(np.float64)
    src.params["weight"] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    bias = src.params.get("bias", np.zeros(len(s), np.float32)).astype(np.float64)
    src.params["bias"] = (bias * s + b).astype(np.float32)
    return True


def _fold_into_readers(graph: Graph) -> None:
    """A ``scale_bias`` without activation into every conv and linear that reads it.

    layer(s * x + b) = layer'(x) with the layer's input rows scaled by s and b's contribution
    added to its bias. That contribution sums over the input channels, so it is the same at every
    width only when b is 0, or when the input always runs at full width (the network input) and
    no padding adds zeros where b would have been. Otherwise the ``scale_bias`` stays.
    """
    readers = graph.consumers()
    dropped: dict[str, str] = {}
    kept: list[Node] = []
    for n in graph.nodes:
        n.inputs = [dropped.get(t, t) for t in n.inputs]
        users = readers.get(n.output, [])
        if n.kind == "scale_bias" and n.attrs["act"] == "none" and n.output != graph.output and users and \
                all(u.kind in ("conv", "linear") for u in users):
            shift_free = not np.any(n.params["bias"])
            unpadded = n.inputs[0] == graph.input and all(u.kind == "linear" or not any(u.attrs["pads"])
                                                           for u in users)
            if shift_free or unpadded:
                for u in users:
                    _scale_inputs(u, n.params["scale"], n.params["bias"])
                dropped[n.output] = n.inputs[0]
                continue
        kept.append(n)
    graph.nodes = kept


def _scale_inputs(layer: Node, s: np.ndarray, b: np.ndarray) -> None:
    """``layer`` reading s * x + b computes ``layer`` with these params reading x."""
    w = layer.params["weight"].astype(np.float64)
    out = w.shape[0]
    if layer.kind == "linear":
        scale, shift = s[None, :], b[None, :]
    else:  # conv [Cout, Cin/g, kh, kw]: output o reads the input channels of its group
        groups, per_group = layer.attrs["groups"], w.shape[1]
        group_of = np.arange(out) // (out // groups)
        scale = s.reshape(groups, per_group)[group_of][:, :, None, None]
        shift = b.reshape(groups, per_group)[group_of][:, :, None, None]
    bias = layer.params.get("bias", np.zeros(out, np.float32)).astype(np.float64)
    layer.params["bias"] = (bias + (w * shift).reshape(out, -1).sum(axis=1)).astype(np.float32)
    layer.params["weight"] = (w * scale).astype(np.float32)


def _absorb_act(src: Node, act: Node) -> bool:
    if src.kind not in ("conv", "linear", "add", "scale_bias") or src.attrs.get("act", "none") != "none":
        return False
    src.attrs["act"] = act.attrs["kind"]
    src.attrs.update({k: act.attrs[k] for k in ACT_PARAMS if k in act.attrs})
    return True


def act_attrs(node: Node) -> dict[str, Any]:
    """The activation of a conv, linear or add node as builder keywords (act, act_alpha, act_beta)."""
    return {"act": node.attrs["act"], **{k: node.attrs[k] for k in ACT_PARAMS if k in node.attrs}}


def output_shape(node: Node, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of ``node.output`` given the shapes of its inputs (NCHW or [N, F])."""
    x = shapes[node.inputs[0]]
    if node.kind == "conv":
        w = node.params["weight"]
        return (x[0], w.shape[0]) + _window_out(x, w.shape[2:], node.attrs, False)
    if node.kind == "linear":
        return (x[0], node.params["weight"].shape[0])
    if node.kind in ("maxpool", "avgpool"):
        return x[:2] + _window_out(x, node.attrs["kernel"], node.attrs, node.attrs["ceil_mode"])
    if node.kind == "global_avgpool":
        return (x[0], x[1], 1, 1)
    if node.kind == "flatten":
        return (x[0], int(np.prod(x[1:])))
    if node.kind == "unflatten":
        return (x[0], x[1], 1, 1)
    if node.kind == "slice":
        return (x[0], node.attrs["end"] - node.attrs["start"]) + tuple(x[2:])
    if node.kind == "resize":
        sh, sw = node.attrs["scale"]
        return (x[0], x[1], x[2] * sh, x[3] * sw)
    if node.kind == "concat":
        return (x[0], sum(shapes[t][1] for t in node.inputs)) + tuple(x[2:])
    return x


def _window_out(x: tuple[int, ...], kernel: tuple[int, ...], attrs: dict[str, Any],
                ceil_mode: bool) -> tuple[int, int]:
    top, left, bottom, right = attrs["pads"]
    dil = attrs.get("dilation", (1, 1))
    out = []
    for size, k, s, d, lo, hi in zip(x[2:], kernel, attrs["stride"], dil, (top, left), (bottom, right)):
        span = size + lo + hi - d * (k - 1) - 1
        n = -(-span // s) + 1 if ceil_mode else span // s + 1
        if ceil_mode and (n - 1) * s >= size + lo:
            n -= 1
        if n < 1:
            raise ConversionError(f"a window of {k} with stride {s} does not fit an input of size {size}; "
                                  "use a larger input shape")
        out.append(n)
    return out[0], out[1]
