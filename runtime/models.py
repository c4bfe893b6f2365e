"""Seeded random test models, built with ModelBuilder, and the bundled default model.

Weights are scaled like trained BN-folded networks (He-scaled convs, scales near 1, small
biases) so activations neither explode nor vanish, and output channels lose a little weight
with their index, as channels sorted by importance do. Channel counts mix multiples of 8 with
odd counts on purpose.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from slimrt.builder import ModelBuilder
from slimrt.format import SlimFile, channel_maps, conv_kind, parse_ops, read

__all__ = ["tiny_resnet", "vgg_like", "concat_net", "default_model", "default_model_path",
           "DEFAULT_INPUT_HW"]

DEFAULT_INPUT_HW = (96, 96)


class _Init:
    """Seeded weight factory."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def conv(self, cout: int, cin_per_group: int, k: int, gain: float = 2.0) -> np.ndarray:
        """[Cout, Cin/groups, k, k], variance gain / fan_in, output channels by importance."""
        std = math.sqrt(gain / (cin_per_group * k * k))
        w = self.rng.normal(0.0, std, size=(cout, cin_per_group, k, k))
        return w * self._importance(cout)[:, None, None, None]

    def linear(self, out: int, inp: int, gain: float = 2.0) -> np.ndarray:
        w = self.rng.normal(0.0, math.sqrt(gain / inp), size=(out, inp))
        return w * self._importance(out)[:, None]

    def scale(self, n: int) -> np.ndarray:
        return self.rng.uniform(0.8, 1.2, size=n)

    def bias(self, n: int, std: float = 0.05) -> np.ndarray:
        return self.rng.normal(0.0, std, size=n)

    @staticmethod
    def _importance(n: int) -> np.ndarray:
        return np.linspace(1.15, 0.85, n)


def _inverted_residual(b: ModelBuilder, init: _Init, x: str, prefix: str, cin: int, hidden: int,
                       out_group: str, stride: int, act: str = "relu6") -> str:
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project."""
    b.group(f"{prefix}.expand", hidden)
    cout = b.group_size(out_group)
    t = b.conv(x, init.conv(hidden, cin, 1), out_group=f"{prefix}.expand",
               scale=init.scale(hidden), bias=init.bias(hidden), act=act, name=f"{prefix}.expand")
    t = b.conv(t, init.conv(hidden, 1, 3), groups=hidden, stride=stride, padding=1,
               scale=init.scale(hidden), bias=init.bias(hidden), act=act, name=f"{prefix}.dw")
    return b.conv(t, init.conv(cout, hidden, 1, gain=1.0), out_group=out_group,
                  scale=init.scale(cout), bias=init.bias(cout), name=f"{prefix}.project")


def tiny_resnet(seed: int = 0, input_hw: Sequence[int] = (32, 32)) -> SlimFile:
    """A MobileNetV2-like residual CNN with 10 classes.

    Stem conv, six inverted-residual blocks over three stride-2 stages, a 1x1 head, global
    pooling and a linear classifier in a fixed group. The adds of blocks 1 and 5 join
    different channel groups (unequal widths at the 'pruned' profile: zero padding match).
    Profiles: uniform 0.25 .. 1.0 and the non-uniform 'pruned'; per-profile epilogues (see
    _calibrated_epilogues) on the convs and linears that read a narrowed input.
    """
    init = _Init(seed)
    b = ModelBuilder("tiny_resnet", input_shape=(1, 3, int(input_hw[0]), int(input_hw[1])),
                     min_multiplier=0.25)
    for name, size in (("stem", 16), ("b1.project", 16), ("stage2", 24), ("stage3", 40),
                       ("b5.project", 40), ("stage4", 64), ("head", 320)):
        b.group(name, size)
    b.group("classes", 10, fixed=True, why="classifier outputs: one per class")

    x = b.conv(b.input, init.conv(16, 3, 3), out_group="stem", stride=2, padding=1,
               scale=init.scale(16), bias=init.bias(16), act="hardswish", name="stem")
    y = _inverted_residual(b, init, x, "b1", 16, 40, "b1.project", 1)
    x = b.add(x, y, name="b1.add")
    x = _inverted_residual(b, init, x, "b2", 16, 61, "stage2", 2)
    y = _inverted_residual(b, init, x, "b3", 24, 72, "stage2", 1)
    x = b.add(x, y, name="b3.add")
    x = _inverted_residual(b, init, x, "b4", 24, 96, "stage3", 2)
    y = _inverted_residual(b, init, x, "b5", 40, 127, "b5.project", 1)
    x = b.add(x, y, act="relu", name="b5.add")
    x = _inverted_residual(b, init, x, "b6", 40, 160, "stage4", 2)
    x = b.conv(x, init.conv(320, 64, 1), out_group="head", scale=init.scale(320),
               bias=init.bias(320), act="hardswish", name="head")
    x = b.flatten(b.global_avgpool(x, name="pool"), name="flatten")
    b.linear(x, init.linear(10, 320, gain=1.0), out_group="classes", bias=init.bias(10),
             name="classifier")

    b.uniform_profiles((0.25, 0.5, 0.75, 1.0))
    pruned = {"stem": 16, "b1.expand": 29, "b1.project": 11, "b2.expand": 45, "stage2": 19,
              "b3.expand": 50, "b4.expand": 77, "stage3": 33, "b5.expand": 100,
              "b5.project": 21, "b6.expand": 120, "stage4": 57, "head": 203}
    b.profile("pruned", pruned)
    _calibrated_epilogues(b, init, b.build())
    return b.build()


def _calibrated_epilogues(b: ModelBuilder, init: _Init, plain: SlimFile) -> None:
    """Per-width BN for every named profile below full width, as recalibration would give.

    A conv or linear that reads fewer input channels than it has gets its scale raised by
    sqrt(full / active inputs), which keeps the activations' scale at narrow widths; the
    depthwise 'b3.dw' gets perturbed statistics at two profiles. Other ops keep theirs.
    """
    for profile in plain.meta["profiles"]:
        if profile["name"] == "1.0":
            continue
        infos = channel_maps(plain.meta, profile["widths"])
        for op in parse_ops(plain.meta):
            if op.kind not in ("conv", "linear"):
                continue
            src, dst = infos[op.inputs[0]], infos[op.output]
            depthwise = op.kind == "conv" and conv_kind(op, src.shape[1]) == "depthwise"
            if depthwise and not (op.name == "b3.dw" and profile["name"] in ("0.5", "pruned")):
                continue
            if not depthwise and src.width == src.shape[1]:
                continue
            active = dst.channel_index()
            gain = 1.0 if depthwise else math.sqrt(src.shape[1] / src.width)
            scale = plain.tensors.get(f"{op.name}.scale", np.ones(dst.shape[1]))[active]
            bias = plain.tensors.get(f"{op.name}.bias", np.zeros(dst.shape[1]))[active]
            b.epilogue(op.name, profile["name"],
                       scale * gain * init.rng.uniform(0.95, 1.05, len(active)),
                       bias + init.bias(len(active), 0.02))


def vgg_like(seed: int = 0) -> SlimFile:
    """A VGG-like chain on 3x32x32: 3x3 convs, maxpools (one in ceil mode), an avgpool, the
    flatten of a 4x4 map, two linears and a softmax."""
    init = _Init(seed)
    b = ModelBuilder("vgg_like", input_shape=(1, 3, 32, 32), min_multiplier=0.25)
    for name, size in (("c1", 16), ("c2", 16), ("c3", 32), ("c4", 13), ("fc1", 64)):
        b.group(name, size)
    b.group("classes", 10, fixed=True, why="classifier outputs: one per class")
    x = b.input
    for name, cin, cout in (("c1", 3, 16), ("c2", 16, 16)):
        x = b.conv(x, init.conv(cout, cin, 3), out_group=name, padding=1, scale=init.scale(cout),
                   bias=init.bias(cout), act="relu", name=name)
    x = b.maxpool(x, 2, name="pool1")                                   # 16x16
    x = b.conv(x, init.conv(32, 16, 3), out_group="c3", padding=1, scale=init.scale(32),
               bias=init.bias(32), act="relu", name="c3")
    x = b.maxpool(x, 3, stride=2, ceil_mode=True, name="pool2")         # 8x8
    x = b.conv(x, init.conv(13, 32, 3), out_group="c4", padding=1, scale=init.scale(13),
               bias=init.bias(13), act="relu", name="c4")
    x = b.avgpool(x, 3, stride=2, padding=1, name="pool3")              # 4x4
    x = b.flatten(x, name="flatten")
    x = b.linear(x, init.linear(64, 13 * 16), out_group="fc1", bias=init.bias(64), act="relu",
                 name="fc1")
    x = b.linear(x, init.linear(10, 64, gain=1.0), out_group="classes", bias=init.bias(10),
                 name="fc2")
    b.softmax(x, name="prob")
    b.uniform_profiles((0.25, 0.5, 0.75, 1.0))
    b.profile("odd", {"c1": 5, "c2": 11, "c3": 19, "c4": 7, "fc1": 37})
    return b.build()


def concat_net(seed: int = 0) -> SlimFile:
    """Branches concatenated along channels on a 3x19x17 input.

    A grouped conv (fixed group) and three branches (1x1, dilated 3x3, depthwise) of an
    asymmetrically padded stem are concatenated; a strided depthwise conv and a dense conv
    with asymmetric pads and strides consume the concat (multi-run channel maps); a ceil-mode
    maxpool of that and a ceil-mode avgpool (counting padding) of the dense conv are
    concatenated again and flattened from 3x3 into the classifier. Every activation kind
    appears.
    """
    init = _Init(seed)
    b = ModelBuilder("concat_net", input_shape=(1, 3, 19, 17), min_multiplier=0.25)
    for name, size in (("stem", 16), ("a", 13), ("b", 7), ("mix", 24)):
        b.group(name, size)
    b.group("side", 6, fixed=True, why="grouped conv runs at full width")
    b.group("out", 3, fixed=True, why="classifier outputs: one per class")
    side = b.conv(b.input, init.conv(6, 1, 3), out_group="side", groups=3, padding=1,
                  scale=init.scale(6), bias=init.bias(6), act="relu", name="side")
    stem = b.conv(b.input, init.conv(16, 3, 3), out_group="stem", padding=(0, 1, 2, 1),
                  scale=init.scale(16), bias=init.bias(16), act="relu", name="stem")
    a = b.conv(stem, init.conv(13, 16, 1), out_group="a", scale=init.scale(13),
               bias=init.bias(13), act="relu6", name="a")
    br = b.conv(stem, init.conv(7, 16, 3), out_group="b", padding=2, dilation=2,
                bias=init.bias(7), act="hardswish", name="b")
    c = b.conv(stem, init.conv(16, 1, 3), groups=16, padding=1, scale=init.scale(16),
               act="silu", name="c")
    cat = b.concat([side, a, br, c], name="cat")
    channels = b.shape(cat)[1]
    d = b.conv(cat, init.conv(channels, 1, 3), groups=channels, stride=2, padding=(1, 1, 0, 0),
               scale=init.scale(channels), bias=init.bias(channels), act="sigmoid", name="d")
    e = b.conv(d, init.conv(24, channels, 3), out_group="mix", stride=(2, 1),
               padding=(1, 0, 1, 2), scale=init.scale(24), bias=init.bias(24), name="e")
    e = b.act(e, "hardswish", name="e.act")
    e = b.avgpool(e, (2, 3), padding=1, ceil_mode=True, count_include_pad=True, name="e.avg")
    q = b.maxpool(d, 3, stride=3, ceil_mode=True, name="q")
    feats = b.flatten(b.concat([q, e], name="feats"), name="flat")
    b.linear(feats, init.linear(3, b.shape(feats)[1], gain=1.0), out_group="out",
             bias=init.bias(3), name="fc")
    b.uniform_profiles((0.25, 0.5, 1.0))
    b.profile("thin", {"stem": 5, "a": 3, "b": 1, "mix": 13})
    return b.build()


def default_model_path() -> Path:
    """Path of the bundled default model (runtime/data/default.slim)."""
    return Path(str(resources.files("slimrt.data").joinpath("default.slim")))


def default_model() -> SlimFile:
    """The bundled default model: MobileNetV2-small trained slimmable on cluttered-digits
    (1x24x24, 10 classes), read from the package data (scripts/make_default_model.py trains and
    writes it)."""
    return read(default_model_path())
