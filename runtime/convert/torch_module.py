"""One profile of a .slim model as a plain, physically pruned ``torch.nn.Module``.

The module holds ``nn.Conv2d`` / ``nn.Linear`` layers of exactly the active sizes (epilogue
folded into weight and bias), so it can be fine-tuned, exported or used as an oracle. Its
``forward`` runs the model's op list in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import format as fmt
from .export import ModelLike, ProfileView, channel_affine, profile_view
from .ir import ConversionError

def activation(kind: str, alpha: float = 0.0, beta: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function of a .slim activation with its parameters (format.ACT_PARAMS)."""
    if kind == "leaky_relu":
        return lambda x: F.leaky_relu(x, alpha)
    if kind == "elu":
        return lambda x: F.elu(x, alpha)
    if kind == "hardsigmoid":
        return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)
    simple: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "none": lambda x: x, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu,
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}
    if kind not in simple:
        raise ConversionError(f"activation '{kind}' has no PyTorch equivalent")
    return simple[kind]


@dataclass(frozen=True)
class Step:
    """One op of the pruned network: ``env[output] = kind(env[inputs])``."""

    kind: str
    inputs: tuple[str, ...]
    output: str
    layer: str = ""
    act: str = "none"
    act_alpha: float = 0.0
    act_beta: float = 0.0
    pad: tuple[int, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()


class PrunedNet(nn.Module):
    """A physically pruned profile of a .slim model; ``forward(x)`` takes NCHW float32."""

    def __init__(self, name: str, source: str, output: str, steps: list[Step],
                 layers: dict[str, nn.Module], widths: dict[str, int]) -> None:
        super().__init__()
        self.model_name, self.source, self.output = name, source, output
        self.steps = steps
        self.layers = nn.ModuleDict(layers)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.source: x}
        for step in self.steps:
            env[step.output] = self._run(step, [env[t] for t in step.inputs])
        return env[self.output]

    def _run(self, step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
        a = dict(step.attrs)
        act = activation(step.act, step.act_alpha, step.act_beta)
        if step.kind in ("conv", "linear"):
            x = F.pad(xs[0], step.pad) if step.pad else xs[0]
            return act(self.layers[step.layer](x))
        if step.kind == "add":
            width = max(x.shape[1] for x in xs)
            return act(sum(_pad_channels(x, width) for x in xs))
        if step.kind == "act":
            return act(xs[0])
        if step.kind == "concat":
            return torch.cat(xs, dim=1)
        if step.kind == "slice":
            return xs[0][:, a["start"]:a["end"]]
        if step.kind == "resize":
            return resize(xs[0], a["scale"], a["mode"])
        if step.kind == "unflatten":
            return xs[0].reshape(xs[0].shape + (1, 1))
        if step.kind == "mul":
            return xs[0] * xs[1]
        if step.kind == "maxpool":
            x = F.pad(xs[0], step.pad, value=float("-inf")) if step.pad else xs[0]
            return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"])
        if step.kind == "avgpool":
            x = F.pad(xs[0], step.pad) if step.pad else xs[0]
            return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"],
                                count_include_pad=a["count_include_pad"])
        if step.kind == "global_avgpool":
            return xs[0].mean(dim=(2, 3), keepdim=True)
        if step.kind == "flatten":
            return torch.flatten(xs[0], 1)
        if step.kind == "softmax":
            return torch.softmax(xs[0], dim=1)
        if step.kind == "prelu":
            return self.layers[step.layer](xs[0])
        if step.kind == "scale_bias":
            return act(self.layers[step.layer](xs[0]))
        if step.kind == "gate":  # the attention head (the logits are the ONNX export's second output)
            h = F.relu(self.layers[step.layer + "_reduce"](xs[0].mean(dim=(2, 3))))
            attention = 2.0 * torch.sigmoid(self.layers[step.layer + "_expand"](h))
            return xs[0] * attention[:, :, None, None]
        if step.kind == "shuffle":
            n, c, h, w = xs[0].shape
            g = a["groups"]
            return xs[0].reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
        raise ConversionError(f"op kind '{step.kind}' has no PyTorch equivalent")


class ChannelAffine(nn.Module):
    """y = weight * x + bias per channel (a scale_bias op), trainable."""

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(scale)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


def resize(x: torch.Tensor, scale: tuple[int, int], mode: str) -> torch.Tensor:
    """The .slim resize: F.interpolate by integer factors (bilinear with align_corners=False)."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=tuple(float(s) for s in scale), mode="nearest")
    return F.interpolate(x, scale_factor=tuple(float(s) for s in scale), mode="bilinear", align_corners=False)


def _pad_channels(x: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - x.shape[1]
    if missing == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, missing))


def to_torch(model: ModelLike, profile: str | float) -> PrunedNet:
    """``profile`` of ``model`` as a physically pruned :class:`PrunedNet` in eval mode."""
    view = profile_view(model, profile)
    steps: list[Step] = []
    layers: dict[str, nn.Module] = {}
    for i, op in enumerate(view.ops):
        steps.append(_step(view, op, f"op{i}", layers))
    meta = view.slim.meta
    groups = fmt.parse_groups(meta)
    net = PrunedNet(meta["name"], meta["input"]["name"], meta["output"], steps, layers,
                    {g.name: w for g, w in zip(groups, view.widths)})
    return net.eval()


def _step(view: ProfileView, op: fmt.Op, key: str, layers: dict[str, nn.Module]) -> Step:
    base = {"kind": op.kind, "inputs": tuple(op.inputs), "output": op.output, "act": op.act,
            "act_alpha": op.act_alpha, "act_beta": op.act_beta}
    if op.kind in ("conv", "linear"):
        layers[key] = _layer(view, op)
        pad = () if op.kind == "linear" or _symmetric(op.pads) else _torch_pad(op.pads)
        return Step(layer=key, pad=pad, **base)
    if op.kind in ("maxpool", "avgpool"):
        return _pool_step(op, base)
    if op.kind == "shuffle":
        return Step(attrs=(("groups", op.groups),), **base)
    if op.kind == "slice":
        return Step(attrs=(("start", op.start), ("end", op.end)), **base)
    if op.kind == "resize":
        return Step(attrs=(("scale", tuple(op.scale)), ("mode", op.mode)), **base)
    if op.kind == "scale_bias":
        scale, bias = channel_affine(view, op)
        layers[key] = ChannelAffine(torch.from_numpy(scale.copy()), torch.from_numpy(bias.copy()))
        return Step(layer=key, **base)
    if op.kind == "gate":
        width = view.infos[op.inputs[0]].width
        if width != op.channels:
            raise ConversionError(f"op '{op.name}' (gate) reads {width} active channels at this profile, its head "
                                  f"takes {op.channels}: convert a named profile of this gated model")
        for layer in ("reduce", "expand"):
            w = view.slim.tensors[f"{op.name}.{layer}.weight"]  # [in, out]
            linear = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(view.slim.tensors[f"{op.name}.{layer}.bias"].copy()))
            layers[f"{key}_{layer}"] = linear
        return Step(layer=key, **base)
    if op.kind == "prelu":
        slope = view.slim.tensors[f"{op.name}.slope"][view.infos[op.inputs[0]].channel_index()]
        layer = nn.PReLU(len(slope))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(slope.copy()))
        layers[key] = layer
        return Step(layer=key, **base)
    return Step(**base)


def _layer(view: ProfileView, op: fmt.Op) -> nn.Module:
    p = view.layer(op)
    weight = torch.from_numpy(p.weight.copy())
    if op.kind == "linear":
        layer: nn.Module = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0])
    else:
        padding = (op.pads[0], op.pads[1]) if _symmetric(op.pads) else (0, 0)
        layer = nn.utils.skip_init(nn.Conv2d, weight.shape[1] * p.groups, weight.shape[0], tuple(op.kernel),
                                   tuple(op.stride), padding, tuple(op.dilation), p.groups)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.from_numpy(p.bias.copy()))
    return layer


def _pool_step(op: fmt.Op, base: dict[str, Any]) -> Step:
    top, left = op.pads[:2]
    kh, kw = op.kernel
    native = _symmetric(op.pads) and top <= kh // 2 and left <= kw // 2
    if not native and op.kind == "avgpool" and not op.count_include_pad:
        raise ConversionError(f"avgpool '{op.name}' has pads {op.pads} that PyTorch's avg_pool2d cannot "
                              "express without counting the padding")
    attrs = {"kernel": tuple(op.kernel), "stride": tuple(op.stride),
             "padding": (top, left) if native else (0, 0), "ceil_mode": op.ceil_mode,
             "count_include_pad": op.count_include_pad}
    return Step(pad=() if native else _torch_pad(op.pads), attrs=tuple(attrs.items()), **base)


def _symmetric(pads: tuple[int, int, int, int]) -> bool:
    return pads[0] == pads[2] and pads[1] == pads[3]


def _torch_pad(pads: tuple[int, int, int, int]) -> tuple[int, ...]:
    top, left, bottom, right = pads
    return (left, right, top, bottom)
