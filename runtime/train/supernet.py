"""A trainable supernet built from the graph the engine runs: one weight set, any width.

:class:`Supernet` is a ``torch.nn.Module`` made from a :class:`slimrt.format.SlimFile` (so from
anything the converter reads: a PyTorch module, an ONNX file, a .slim model). Its forward runs
a profile, a uniform multiplier or explicit per-group widths by prefix slicing of ONE set of
parameters, with the channel maps of :mod:`slimrt.format` (the same groups, zero padding match
adds and concat segments as the engine), so training and inference cannot disagree about which
channels a profile uses.

Batch norm. A conv or linear whose .slim op carries a ``scale`` vector is a conv + batch norm
(a ``scale_bias`` op with a ``scale`` is a batch norm on its own):
the affine (gamma, beta) is shared by every width, the running statistics are private per named
profile (switchable BN, Slimmable Networks), plus one *shared* row used for widths that are not
a named profile, exactly as the engine uses the op's shared ``scale``/``bias`` there.
``to_slim()`` folds row ``p`` into the per-profile epilogue ``<op>.scale@<p>``/``<op>.bias@<p>``
and the shared row into ``<op>.scale``/``<op>.bias``. Ops with only a ``bias`` keep a plain bias.

Two forward modes:

* ``forward(x, profile)``: activations hold only the active channels (in channel-map order),
  as in the engine, so a narrow width costs what a narrow network costs;
* ``forward_parallel(x, slices)``: PSE-Net parallel sub-networks: the batch is cut into slices
  and each slice runs at its own widths in ONE pass; tensors stay at full width with the
  channels beyond each sample's width zeroed, and batch norm takes its statistics per slice.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import format as fmt
from ..errors import ProfileError

__all__ = ["Supernet", "Widths", "ProfileKey", "BN_EPS"]

BN_EPS = 1e-5
Widths = tuple[int, ...]
ProfileKey = Union[str, int, float, Sequence[int]]

_ACTS = {
    "none": lambda x, a, b: x,
    "relu": lambda x, a, b: F.relu(x),
    "relu6": lambda x, a, b: F.hardtanh(x, 0.0, 6.0),
    "hardswish": lambda x, a, b: F.hardswish(x),
    "silu": lambda x, a, b: F.silu(x),
    "sigmoid": lambda x, a, b: torch.sigmoid(x),
    "leaky_relu": lambda x, a, b: F.leaky_relu(x, a),
    "tanh": lambda x, a, b: torch.tanh(x),
    "gelu": lambda x, a, b: F.gelu(x),
    "hardsigmoid": lambda x, a, b: torch.clamp(a * x + b, 0.0, 1.0),
    "elu": lambda x, a, b: F.elu(x, a),
}


def _act(op: fmt.Op, x: torch.Tensor) -> torch.Tensor:
    """``op``'s activation (with its parameters) of ``x``."""
    return _ACTS[op.act](x, op.act_alpha, op.act_beta)


@dataclass(frozen=True)
class _OpPlan:
    """What one op reads and writes at one set of widths (indices into the full channel axis)."""

    in_rows: Any   # slice (a prefix) or LongTensor: active input channels, storage order
    out_rows: Any  # slice or LongTensor: active output channels
    out_width: int


@dataclass(frozen=True)
class _Plan:
    widths: Widths
    profile: int | None           # index of the named profile with exactly these widths
    ops: tuple[_OpPlan, ...]
    masks: dict[str, torch.Tensor]  # tensor name -> [C] float mask of the active channels (full layout)


def _rows(index: np.ndarray) -> Any:
    """A prefix as a slice (views, no copies), anything else as an index tensor."""
    if len(index) and np.array_equal(index, np.arange(len(index))):
        return slice(0, len(index))
    return torch.from_numpy(index.astype(np.int64))


def _take(t: torch.Tensor, rows: Any, dim: int = 0) -> torch.Tensor:
    if isinstance(rows, slice):
        return t[rows] if dim == 0 else t[:, rows]
    return t.index_select(dim, rows)


class SlimBatchNorm(nn.Module):
    """Batch norm over a channel group: shared affine, running statistics per profile row.

    Rows ``0..P-1`` belong to the named profiles, row ``P`` is the shared row (any other width).
    """

    def __init__(self, channels: int, rows: int, momentum: float = 0.1, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(rows, channels))
        self.register_buffer("running_var", torch.ones(rows, channels))

    def forward(self, z: torch.Tensor, rows: Any, stats_row: int | None, train: bool,
                momentum: float | None = None) -> torch.Tensor:
        """Normalise ``z`` (its channels are the full channels ``rows``).

        ``train``: batch statistics; they update row ``stats_row`` when it is not None.
        Otherwise the running statistics of ``stats_row`` are used.
        """
        weight, bias = _take(self.weight, rows), _take(self.bias, rows)
        if not train:
            mean = _take(self.running_mean[stats_row], rows)
            var = _take(self.running_var[stats_row], rows)
            return F.batch_norm(z, mean, var, weight, bias, False, 0.0, self.eps)
        if stats_row is None:
            return F.batch_norm(z, None, None, weight, bias, True, 0.0, self.eps)
        mean = _take(self.running_mean[stats_row], rows).clone()
        var = _take(self.running_var[stats_row], rows).clone()
        out = F.batch_norm(z, mean, var, weight, bias, True,
                           self.momentum if momentum is None else momentum, self.eps)
        with torch.no_grad():
            if isinstance(rows, slice):
                self.running_mean[stats_row, rows] = mean
                self.running_var[stats_row, rows] = var
            else:
                self.running_mean[stats_row].index_copy_(0, rows, mean)
                self.running_var[stats_row].index_copy_(0, rows, var)
        return out

    def fold(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, bias) of row ``row`` over the full channel axis, float64."""
        w = self.weight.detach().double()
        inv = torch.rsqrt(self.running_var[row].double() + self.eps)
        scale = w * inv
        bias = self.bias.detach().double() - self.running_mean[row].double() * scale
        return scale.numpy(), bias.numpy()


class Supernet(nn.Module):
    """A torch module running any profile of a .slim graph from one set of weights.

    Build it with :meth:`from_slim`, :meth:`from_torch`, :meth:`from_onnx` or :meth:`build`.
    ``profile`` arguments are a profile name, a profile index, a uniform multiplier in
    ``[min_multiplier, 1]`` or explicit per-group widths.
    """

    def __init__(self, slim: fmt.SlimFile) -> None:
        super().__init__()
        fmt.validate(slim)
        self.meta = copy.deepcopy(slim.meta)
        self.groups = fmt.parse_groups(self.meta)
        self.ops = fmt.parse_ops(self.meta)
        self.profiles: list[dict[str, Any]] = [dict(p) for p in self.meta["profiles"]]
        self.profile_names = [p["name"] for p in self.profiles]
        self.min_multiplier = float(self.meta["min_multiplier"])
        self.input_name = self.meta["input"]["name"]
        self.input_shape = tuple(self.meta["input"]["shape"])
        shapes = fmt.infer_shapes(self.meta)
        self._shapes = shapes
        self._kinds: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.slopes = nn.ParameterDict()  # prelu: one per input channel
        self.norms = nn.ModuleDict()
        rows = len(self.profiles) + 1
        for op in self.ops:
            if op.kind == "prelu":
                slope = slim.tensors[f"{op.name}.slope"].astype(np.float32).copy()
                self.slopes[_key(op.name)] = nn.Parameter(torch.from_numpy(slope))
                continue
            if op.kind not in fmt.EPILOGUED:
                continue
            key = _key(op.name)
            if op.kind != "scale_bias":  # a scale_bias has only its epilogue: batch norm, or a bias
                w = slim.tensors[f"{op.name}.weight"].astype(np.float32)
                if op.kind == "linear":
                    self._kinds[op.name] = "linear"
                    tw = w.T  # [Out, In]
                else:
                    kind = fmt.conv_kind(op, shapes[op.inputs[0]][1])
                    self._kinds[op.name] = kind
                    tw = w.transpose(2, 0, 1)[:, None] if kind == "depthwise" else w.transpose(3, 2, 0, 1)
                self.weights[key] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(tw)))
            cout = shapes[op.output][1]
            scale = slim.tensors.get(f"{op.name}.scale")
            bias = slim.tensors.get(f"{op.name}.bias")
            own = any(fmt.epilogue_tensor_name(op.name, which, p["name"]) in slim.tensors
                      for p in self.profiles for which in ("scale", "bias"))
            if scale is None and own:  # per-width statistics on an op without a shared scale
                scale = np.ones(cout, dtype=np.float32)
            if scale is None:
                if bias is not None:
                    self.biases[key] = nn.Parameter(torch.from_numpy(bias.astype(np.float32).copy()))
                continue
            bn = SlimBatchNorm(cout, rows)
            self.norms[key] = bn
            self._load_bn(bn, op, slim, scale, bias)
        self._plans: OrderedDict[Widths, _Plan] = OrderedDict()
        self.shared_row = rows - 1
        self._observer: Any = None  # called with (op name, raw output) before each batch norm

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_slim(cls, source: fmt.SlimFile | str | bytes | Any) -> Supernet:
        """From a SlimFile, a .slim path or bytes, or a loaded :class:`slimrt.Model`."""
        if isinstance(source, fmt.SlimFile):
            return cls(source)
        if hasattr(source, "to_slimfile"):
            return cls(source.to_slimfile())
        return cls(fmt.read(source))

    @classmethod
    def from_torch(cls, module: nn.Module, example_input: torch.Tensor | np.ndarray,
                   widths: Any = (0.25, 0.5, 0.75, 1.0), importance: str = "none", **kwargs: Any) -> Supernet:
        """From a PyTorch CNN through the converter (``importance="none"`` keeps its order)."""
        from ..convert import torch_to_slim

        return cls(torch_to_slim(module, example_input, widths, importance, **kwargs))

    @classmethod
    def from_onnx(cls, source: Any, widths: Any = (0.25, 0.5, 0.75, 1.0), importance: str = "none",
                  **kwargs: Any) -> Supernet:
        """From an ONNX model (path, bytes or ModelProto) through the converter."""
        from ..convert import onnx_to_slim

        return cls(onnx_to_slim(source, widths, importance, **kwargs))

    def _load_bn(self, bn: SlimBatchNorm, op: fmt.Op, slim: fmt.SlimFile, scale: np.ndarray,
                 bias: np.ndarray | None) -> None:
        """Batch norm that computes exactly the file's epilogues in eval mode.

        The file holds folded (scale, bias) only: gamma = scale * sqrt(1 + eps), beta = bias,
        mean 0, var 1 in every row; a profile with its own epilogue gets the mean and variance
        that reproduce it with the shared gamma and beta. :meth:`init_bn_statistics` later turns
        this into real statistics measured on data.
        """
        scale = scale.astype(np.float64)
        bias = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
        gamma = scale * math.sqrt(1.0 + bn.eps)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(gamma))
            bn.bias.copy_(torch.from_numpy(bias))
            for row, p in enumerate(self.profiles):
                own_s = slim.tensors.get(fmt.epilogue_tensor_name(op.name, "scale", p["name"]))
                own_b = slim.tensors.get(fmt.epilogue_tensor_name(op.name, "bias", p["name"]))
                if own_s is None and own_b is None:
                    continue
                active = self._maps(tuple(p["widths"]))[op.output].channel_index()
                s = scale[active] if own_s is None else own_s.astype(np.float64)
                b = bias[active] if own_b is None else own_b.astype(np.float64)
                g = gamma[active]
                safe = np.where(np.abs(s) > 0, s, 1.0)
                var = np.where(np.abs(s) > 0, (g / safe) ** 2 - bn.eps, 1.0)
                mean = np.where(np.abs(s) > 0, (bias[active] - b) / safe, 0.0)
                idx = torch.from_numpy(active.astype(np.int64))
                bn.running_var[row].index_copy_(0, idx, torch.from_numpy(np.maximum(var, 0.0)).float())
                bn.running_mean[row].index_copy_(0, idx, torch.from_numpy(mean).float())

    @torch.no_grad()
    def add_batch_norm(self) -> list[str]:
        """Give every convolution without batch norm a trainable one; returns their op names.

        Slimmable training needs batch norm behind every sliced convolution (a narrower width
        changes the statistics of what follows), but an exported graph often has none: exporters
        fold batch norm into the convolution. Each convolution whose output group is free, whose
        output is more than 1x1 (not a squeeze-and-excitation layer) and which has no batch norm
        gets one; after training it folds into the epilogue like any other, so inference costs
        the same. A convolution with a nonzero bias (a folded, trained batch norm) gets one that
        computes the identity in eval mode, the bias becoming beta, whose statistics
        :meth:`init_bn_statistics` then recovers from data; one without (a folded batch norm that
        never saw data: a net exported with random weights) gets a fresh one (gamma 1, beta 0).
        """
        added = []
        rows = len(self.profiles) + 1
        narrowest = self._maps(self.widths(self.min_multiplier))
        for op in self.ops:
            key = _key(op.name)
            if op.kind != "conv" or key in self.norms:
                continue
            shape = self._shapes[op.output]
            if narrowest[op.output].width == shape[1] or shape[2] * shape[3] <= 1:
                continue  # never sliced, or a 1x1 map (a squeeze-and-excitation layer)
            bn = SlimBatchNorm(shape[1], rows)
            bias = self.biases.pop(key) if key in self.biases else None
            if bias is not None and bool(bias.detach().abs().max() > 0):
                bn.weight.fill_(math.sqrt(1.0 + bn.eps))  # exactly the identity in eval mode
                bn.bias.copy_(bias.detach())
            self.norms[key] = bn
            added.append(op.name)
        return added

    # -- widths ---------------------------------------------------------------------------

    @property
    def full_widths(self) -> Widths:
        return tuple(g.size for g in self.groups)

    @property
    def largest_profile(self) -> int:
        """Index of the most expensive named profile (profiles are ordered by cost)."""
        return len(self.profiles) - 1

    def widths(self, profile: ProfileKey) -> Widths:
        """Per-group widths of a profile name, index, uniform multiplier or explicit widths."""
        if isinstance(profile, (list, tuple)):
            widths = tuple(int(w) for w in profile)
            if len(widths) != len(self.groups):
                raise ProfileError(f"{len(widths)} widths given, the model has {len(self.groups)} "
                                   "channel groups")
            for g, w in zip(self.groups, widths):
                if not (1 <= w <= g.size) or (g.fixed and w != g.size):
                    raise ProfileError(f"width {w} of group '{g.name}' is outside 1..{g.size}"
                                       + (" (the group is fixed)" if g.fixed else ""))
            return widths
        return tuple(fmt.resolve_widths(self.meta, profile)[0])

    def _maps(self, widths: Widths) -> dict[str, fmt.TensorInfo]:
        return fmt.channel_maps(self.meta, list(widths))

    def plan(self, profile: ProfileKey) -> _Plan:
        """The (cached) per-op channel indices of a width setting."""
        widths = self.widths(profile)
        plan = self._plans.get(widths)
        if plan is not None:
            self._plans.move_to_end(widths)
            return plan
        infos = self._maps(widths)
        ops = []
        for op in self.ops:
            src, dst = infos[op.inputs[0]], infos[op.output]
            ops.append(_OpPlan(_rows(src.channel_index()), _rows(dst.channel_index()), dst.width))
        masks = {}
        for name, info in infos.items():
            if len(info.shape) >= 2:
                m = torch.zeros(info.shape[1])
                m[torch.from_numpy(info.channel_index().astype(np.int64))] = 1.0
                masks[name] = m
        named = [i for i, p in enumerate(self.profiles) if tuple(p["widths"]) == widths]
        plan = _Plan(widths, named[0] if named else None, tuple(ops), masks)
        self._plans[widths] = plan
        if len(self._plans) > 512:
            self._plans.popitem(last=False)
        return plan

    def macs(self, profile: ProfileKey) -> int:
        """MACs per sample at the model's default input shape."""
        return fmt.profile_cost(self.meta, list(self.widths(profile)))[0]

    def sample_widths(self, generator: torch.Generator, mode: str = "uniform") -> Widths:
        """A random width setting: a uniform multiplier in [min, 1] (US-Nets) or a named profile."""
        if mode == "profiles":
            return tuple(self.profiles[int(torch.randint(len(self.profiles), (1,), generator=generator))]["widths"])
        m = self.min_multiplier + (1.0 - self.min_multiplier) * float(torch.rand(1, generator=generator))
        return self.widths(m)

    # -- forward --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, profile: ProfileKey = 1.0, *, slices: Sequence[ProfileKey] | None = None,
                sizes: Sequence[int] | None = None, bn_stats: str = "auto", impl: str = "mask") -> torch.Tensor:
        """Run at ``profile``; returns the output's active channels (as the engine does).

        With ``slices``, runs :meth:`forward_parallel` instead (so DistributedDataParallel,
        which hooks ``forward``, wraps both modes).

        Batch norm uses batch statistics in training mode and running statistics in eval mode
        (the profile's own row for a named profile, the shared row for any other widths).
        ``bn_stats`` (training mode): ``"auto"`` updates the profile's own row when the widths
        are a named profile, ``"none"`` updates nothing.
        """
        if bn_stats not in ("auto", "none"):
            raise ValueError(f"bn_stats must be 'auto' or 'none', got {bn_stats!r}")
        if slices is not None:
            return self.forward_parallel(x, slices, sizes, bn_stats=bn_stats, impl=impl)
        plan = self.plan(profile)
        if not self.training:
            row = plan.profile if plan.profile is not None else self.shared_row
        else:
            row = plan.profile if bn_stats == "auto" else None
        return self._run(x, plan, self.training, row, None)

    def _run(self, x: torch.Tensor, plan: _Plan, train: bool, row: int | None,
             momentum: float | None) -> torch.Tensor:
        values = {self.input_name: x}
        self._run_ops(values, plan, 0, len(self.ops), train, row, momentum)
        return values[self.meta["output"]]

    def _run_ops(self, values: dict[str, torch.Tensor], plan: _Plan, start: int, stop: int, train: bool,
                 row: int | None, momentum: float | None) -> None:
        for op, p in zip(self.ops[start:stop], plan.ops[start:stop]):
            ins = [values[t] for t in op.inputs]
            values[op.output] = self._op(op, p, ins, train, row, momentum)

    def run_ops(self, values: dict[str, torch.Tensor], profile: ProfileKey, start: int, stop: int) -> None:
        """Run ops ``start..stop-1`` at ``profile``, reading and writing tensors by name in
        ``values`` (for a gate that splits the graph). Batch norm as in :meth:`forward`."""
        plan = self.plan(profile)
        if self.training:
            row = plan.profile
        else:
            row = plan.profile if plan.profile is not None else self.shared_row
        self._run_ops(values, plan, start, stop, self.training, row, None)

    def _op(self, op: fmt.Op, p: _OpPlan, ins: list[torch.Tensor], train: bool,
            row: int | None, momentum: float | None) -> torch.Tensor:
        if op.kind in ("conv", "linear"):
            z = self._linear_or_conv(op, p, ins[0])
            return _act(op, self._epilogue(op, p.out_rows, z, train, row, momentum))
        if op.kind == "prelu":
            return F.prelu(ins[0], _take(self.slopes[_key(op.name)], p.in_rows))
        if op.kind == "scale_bias":
            return _act(op, self._epilogue(op, p.out_rows, self._shift(op, p.out_rows, ins[0]), train, row, momentum))
        if op.kind == "add":
            a, b = ins
            if a.shape[1] < b.shape[1]:
                a, b = b, a
            if b.shape[1] < a.shape[1]:
                b = F.pad(b, (0, 0, 0, 0, 0, a.shape[1] - b.shape[1]))
            return _act(op, a + b)
        return self._stateless(op, ins)

    def _linear_or_conv(self, op: fmt.Op, p: _OpPlan, x: torch.Tensor) -> torch.Tensor:
        w = self.weights[_key(op.name)]
        kind = self._kinds[op.name]
        bias = self.biases[_key(op.name)] if _key(op.name) in self.biases else None
        if bias is not None:
            bias = _take(bias, p.out_rows)
        if kind == "linear":
            return F.linear(x, _take(_take(w, p.out_rows), p.in_rows, 1), bias)
        if kind == "depthwise":
            weight, groups = _take(w, p.out_rows), p.out_width
        elif kind == "grouped":
            weight, groups = w, op.groups
        else:
            weight, groups = _take(_take(w, p.out_rows), p.in_rows, 1), 1
        return _conv2d(op, x, weight, bias, groups)

    def _shift(self, op: fmt.Op, rows: Any, z: torch.Tensor) -> torch.Tensor:
        """z plus a scale_bias's plain bias (one without batch norm), if it has one."""
        bias = self.biases[_key(op.name)] if _key(op.name) in self.biases else None
        if bias is None:
            return z
        return z + _take(bias, rows).reshape((1, -1) + (1,) * (z.dim() - 2))

    def _epilogue(self, op: fmt.Op, rows: Any, z: torch.Tensor, train: bool, row: int | None,
                  momentum: float | None) -> torch.Tensor:
        key = _key(op.name)
        if key not in self.norms:
            return z
        if self._observer is not None:
            self._observer(op.name, z)
        return self.norms[key](z, rows, row, train, momentum)

    def _stateless(self, op: fmt.Op, ins: list[torch.Tensor]) -> torch.Tensor:
        x = ins[0]
        if op.kind == "concat":
            return torch.cat(ins, dim=1)
        if op.kind == "mul":
            return x * ins[1]
        if op.kind == "unflatten":
            return x.reshape(x.shape + (1, 1))
        if op.kind == "slice":
            return x[:, op.start:op.end]
        if op.kind == "resize":
            kwargs = {"align_corners": False} if op.mode == "bilinear" else {}
            return F.interpolate(x, scale_factor=tuple(float(s) for s in op.scale), mode=op.mode, **kwargs)
        if op.kind == "maxpool":
            return _pool(op, x, self._out_hw(op, x), "max")
        if op.kind == "avgpool":
            return _pool(op, x, self._out_hw(op, x), "avg")
        if op.kind == "global_avgpool":
            return x.mean(dim=(2, 3), keepdim=True)
        if op.kind == "flatten":
            return x.reshape(x.shape[0], -1)
        if op.kind == "softmax":
            return torch.softmax(x, dim=1)
        if op.kind == "shuffle":
            n, c, h, w = x.shape
            g = op.groups
            return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
        return _act(op, x)

    def _full_layout(self, out: torch.Tensor, profile: ProfileKey) -> torch.Tensor:
        """An output at ``profile`` (its active channels) placed in the full channel layout."""
        name = self.meta["output"]
        channels = self._shapes[name][1]
        if out.shape[1] == channels:
            return out
        plan = self.plan(profile)
        rows = next(p.out_rows for op, p in zip(self.ops, plan.ops) if op.output == name)
        if isinstance(rows, slice):
            return F.pad(out, (0, 0) * (out.dim() - 2) + (0, channels - out.shape[1]))
        return out.new_zeros((out.shape[0], channels) + out.shape[2:]).index_copy(1, rows, out)

    def _out_hw(self, op: fmt.Op, x: torch.Tensor) -> tuple[int, int]:
        shape = fmt.op_output_shape(op, [tuple(x.shape)], self.groups)
        return shape[2], shape[3]

    # -- parallel sub-networks ------------------------------------------------------------

    def forward_parallel(self, x: torch.Tensor, slices: Sequence[ProfileKey],
                         sizes: Sequence[int] | None = None, *, bn_stats: str = "auto",
                         impl: str = "mask") -> torch.Tensor:
        """PSE-Net parallel sub-networks: slice ``i`` of the batch runs at ``slices[i]``.

        ``sizes`` gives the samples per slice (default: as equal as possible). Returns the full
        output [N, ...], each sample computed by its own slice's sub-network: channels beyond a
        sample's widths are zero, batch norm normalises each slice with its own statistics and,
        in training mode with ``bn_stats="auto"``, updates the slice's named profile's row.

        ``impl`` chooses how: ``"mask"`` runs the whole batch once at full width and zeroes the
        dropped channels per sample (one pass, the layout of a GPU); ``"slice"`` runs each slice
        through its prefix-sliced weights, so a narrow slice costs only its own MACs (the same
        function and gradients, cheaper on a CPU).
        """
        if impl not in ("mask", "slice"):
            raise ValueError(f"impl must be 'mask' or 'slice', got {impl!r}")
        n = x.shape[0]
        if sizes is None:
            base, extra = divmod(n, len(slices))
            sizes = [base + (i < extra) for i in range(len(slices))]
        if sum(sizes) != n or any(s <= 0 for s in sizes):
            raise ValueError(f"slice sizes {list(sizes)} do not split a batch of {n} into non-empty slices")
        if impl == "slice":
            return torch.cat([self._full_layout(self.forward(part, s, bn_stats=bn_stats), s)
                              for part, s in zip(torch.split(x, list(sizes), 0), slices)], 0)
        plans = [self.plan(s) for s in slices]
        train = self.training
        mask_cache: dict[str, torch.Tensor] = {}

        def mask(name: str) -> torch.Tensor:
            m = mask_cache.get(name)
            if m is None:
                per = [pl.masks[name].expand(s, -1) for pl, s in zip(plans, sizes)]
                m = torch.cat(per, 0)
                m = m[:, :, None, None] if len(self._shapes[name]) == 4 else m
                mask_cache[name] = m
            return m

        values = {self.input_name: x}
        full = slice(None)
        for op in self.ops:
            ins = [values[t] for t in op.inputs]
            if op.kind in fmt.EPILOGUED:
                z = self._linear_or_conv_full(op, ins[0]) if op.kind != "scale_bias" else \
                    self._shift(op, full, ins[0])
                key = _key(op.name)
                if key in self.norms:
                    parts = torch.split(z, list(sizes), 0)
                    outs = []
                    for part, pl in zip(parts, plans):
                        if train:
                            row = pl.profile if bn_stats == "auto" else None
                        else:
                            row = pl.profile if pl.profile is not None else self.shared_row
                        outs.append(self.norms[key](part, full, row, train))
                    z = torch.cat(outs, 0)
                y = _act(op, z)
            elif op.kind == "add":
                y = _act(op, ins[0] + ins[1])
            elif op.kind == "prelu":
                y = F.prelu(ins[0], self.slopes[_key(op.name)])
            elif op.kind == "softmax":
                m = mask(op.inputs[0])
                y = torch.softmax(ins[0].masked_fill(m == 0, float("-inf")), dim=1)
            else:
                y = self._stateless(op, ins)
            if op.kind not in ("concat", "flatten", "shuffle", "add", "maxpool", "avgpool", "global_avgpool") \
                    or op.act != "none":
                y = y * mask(op.output)
            values[op.output] = y
        return values[self.meta["output"]]

    def _linear_or_conv_full(self, op: fmt.Op, x: torch.Tensor) -> torch.Tensor:
        w = self.weights[_key(op.name)]
        key = _key(op.name)
        bias = self.biases[key] if key in self.biases else None
        kind = self._kinds[op.name]
        if kind == "linear":
            return F.linear(x, w, bias)
        groups = w.shape[0] if kind == "depthwise" else (op.groups if kind == "grouped" else 1)
        return _conv2d(op, x, w, bias, groups)

    # -- batch-norm statistics ------------------------------------------------------------

    def bn_layers(self) -> list[SlimBatchNorm]:
        return list(self.norms.values())

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[torch.Tensor], profiles: Sequence[ProfileKey] | None = None,
                    shared: bool = True) -> None:
        """Recompute the running statistics of named profiles from data (US-Nets post-statistics).

        The model stays in whatever mode it is in; the pass runs without gradients.

        Every profile in ``profiles`` (default: all named ones) gets the exact mean and variance
        over ``batches`` at its own widths; ``shared`` then copies the largest profile's row into
        the shared row used by other widths. Weights and affine parameters are untouched.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("calibration needs at least one batch of data")
        keys = range(len(self.profiles)) if profiles is None else [self._profile_index(p) for p in profiles]
        for index in keys:
            for bn in self.bn_layers():
                bn.running_mean[index].zero_()
                bn.running_var[index].fill_(1.0)
            plan = self.plan(index)
            for count, batch in enumerate(batches, 1):
                self._run(batch, plan, True, index, 1.0 / count)  # cumulative average
        if shared:
            self.share_largest()

    @contextmanager
    def calibrated(self, profile: ProfileKey, batches: Sequence[torch.Tensor]) -> Iterator[None]:
        """Within the block, widths that are not a named profile run (eval mode) with batch-norm
        statistics measured on ``batches`` at ``profile``'s widths: how a search scores a
        candidate sub-network without adding it as a profile. The shared row is restored after."""
        plan = self.plan(profile)
        saved = [(bn.running_mean[self.shared_row].clone(), bn.running_var[self.shared_row].clone())
                 for bn in self.bn_layers()]
        try:
            if plan.profile is None:
                with torch.no_grad():
                    for count, batch in enumerate(batches, 1):
                        self._run(batch, plan, True, self.shared_row, 1.0 / count)
            yield
        finally:
            with torch.no_grad():
                for bn, (mean, var) in zip(self.bn_layers(), saved):
                    bn.running_mean[self.shared_row] = mean
                    bn.running_var[self.shared_row] = var

    @torch.no_grad()
    def share_largest(self) -> None:
        """The shared row (widths that are not a named profile) := the largest profile's row."""
        for bn in self.bn_layers():
            bn.running_mean[self.shared_row] = bn.running_mean[self.largest_profile]
            bn.running_var[self.shared_row] = bn.running_var[self.largest_profile]

    @torch.no_grad()
    def init_bn_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Turn folded epilogues into batch norm with real statistics, without changing the function.

        For every op with batch norm that was trained (a fresh one, gamma 1, beta 0, mean 0,
        var 1, is left as it is), the mean and variance of its raw output at full width are
        measured on ``batches`` (eval mode, so the network computes what the file does); gamma
        and beta are rescaled so that the eval output is unchanged, and every row gets those
        statistics. Training then starts from batch statistics close to the running ones.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("needs at least one batch of data")
        sums: dict[str, list[Any]] = {}

        def observe(name: str, z: torch.Tensor) -> None:
            z64 = z.double().transpose(0, 1).reshape(z.shape[1], -1)
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + z64.sum(1)
            s[1] = s[1] + (z64 * z64).sum(1)
            s[2] += z64.shape[1]

        was_training = self.training
        self.eval()
        self._observer = observe
        try:
            for batch in batches:
                self.forward(batch, self.full_widths)
        finally:
            self._observer = None
            self.train(was_training)
        plan = self.plan(self.full_widths)
        used = plan.profile if plan.profile is not None else self.shared_row
        for name, (s1, s2, count) in sums.items():
            bn = self.norms[_key(name)]
            scale, bias = (torch.from_numpy(v) for v in bn.fold(used))
            if _untrained(scale, bias, bn.eps):
                continue  # a fresh batch norm (gamma 1, beta 0, mean 0, var 1): nothing to recover
            mean = s1 / count
            var = torch.clamp(s2 / count - mean * mean, min=0.0)
            bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
            bn.bias.copy_(bias + scale * mean)
            bn.running_mean.copy_(mean.float().expand_as(bn.running_mean))
            bn.running_var.copy_(var.float().expand_as(bn.running_var))

    def _profile_index(self, profile: ProfileKey) -> int:
        plan = self.plan(profile)
        if plan.profile is None:
            raise ProfileError(f"{profile!r} is not a named profile of this model "
                               f"(named: {', '.join(self.profile_names)})")
        return plan.profile

    # -- profiles and channel order (pruning, search) -------------------------------------

    def set_profiles(self, profiles: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Replace the named profiles by ``(name, widths)`` pairs (stored ordered by MACs).

        A profile kept by name keeps its batch-norm statistics; a new one starts from the shared
        row's, to be recalibrated (:meth:`recalibrate`) or trained.
        """
        entries = []
        for name, widths in profiles:
            w = self.widths(list(widths))
            macs, params = fmt.profile_cost(self.meta, list(w))
            entries.append({"name": str(name), "widths": list(w), "macs": macs, "params": params})
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names) or not entries:
            raise ProfileError(f"profile names must be unique and non-empty, got {names}")
        entries.sort(key=lambda e: (e["macs"], e["params"]))
        old = {name: row for row, name in enumerate(self.profile_names)}
        for bn in self.bn_layers():
            rows = [old.get(e["name"], self.shared_row) for e in entries] + [self.shared_row]
            index = torch.tensor(rows)
            bn.running_mean = bn.running_mean.index_select(0, index).clone()
            bn.running_var = bn.running_var.index_select(0, index).clone()
        self.profiles = entries
        self.meta["profiles"] = [dict(e) for e in entries]
        self.profile_names = names
        self.shared_row = len(entries)
        self._plans.clear()

    def group_layouts(self) -> dict[str, list[tuple[int | None, int, int]]]:
        """Per tensor, its full channel (or feature) axis as segments ``(group, channels, pixels)``:
        ``channels`` of channel group ``group`` (None: the network input, or after a shuffle),
        each channel spanning ``pixels`` consecutive positions (more than 1 after a flatten)."""
        layouts: dict[str, list[tuple[int | None, int, int]]] = {
            self.input_name: [(None, self.input_shape[1], 1)]}
        for op in self.ops:
            src = layouts[op.inputs[0]]
            if op.kind in ("conv", "linear") and self._kinds[op.name] != "depthwise":
                layouts[op.output] = [(op.out_group, self.groups[op.out_group].size, 1)]
            elif op.kind == "concat":
                layouts[op.output] = [seg for t in op.inputs for seg in layouts[t]]
            elif op.kind == "flatten":
                hw = self._shapes[op.inputs[0]][2] * self._shapes[op.inputs[0]][3]
                layouts[op.output] = [(g, c, px * hw) for g, c, px in src]
            elif op.kind == "shuffle":
                layouts[op.output] = [(None, self._shapes[op.output][1], 1)]
            elif op.kind == "add":
                a, b = layouts[op.inputs[0]], layouts[op.inputs[1]]
                layouts[op.output] = a if sum(c for _, c, _ in a) >= sum(c for _, c, _ in b) else b
            else:
                layouts[op.output] = src
        return layouts

    def sortable_groups(self) -> list[int]:
        """Groups whose channels may be reordered: free, and not added to a different group."""
        layouts = self.group_layouts()
        blocked = {i for i, g in enumerate(self.groups) if g.fixed}
        for op in self.ops:
            if op.kind == "add":
                a, b = layouts[op.inputs[0]], layouts[op.inputs[1]]
                if [g for g, _, _ in a] != [g for g, _, _ in b]:
                    blocked.update(g for g, _, _ in a + b if g is not None)
        return [i for i in range(len(self.groups)) if i not in blocked]

    @torch.no_grad()
    def permute_groups(self, perms: dict[int, np.ndarray]) -> None:
        """Reorder channel groups in place: ``perms[g][new_position] = old_channel``.

        Every producer, depthwise conv and reader of each group is reordered (weights, biases,
        batch-norm affine and statistics), so the network's function at full width
        stays the same and a narrower width of group ``g`` keeps the channels put first.
        """
        sortable = set(self.sortable_groups())
        for g, perm in perms.items():
            if g not in sortable:
                raise ValueError(f"channel group '{self.groups[g].name}' cannot be reordered (fixed, or "
                                 "added to a different group)")
            if sorted(np.asarray(perm).tolist()) != list(range(self.groups[g].size)):
                raise ValueError(f"not a permutation of the {self.groups[g].size} channels of "
                                 f"group '{self.groups[g].name}'")
        layouts = self.group_layouts()

        def index(layout: list[tuple[int | None, int, int]]) -> torch.Tensor | None:
            parts, offset, moved = [], 0, False
            for g, c, px in layout:
                if g in perms:
                    order = np.asarray(perms[g], dtype=np.int64)
                    moved = True
                else:
                    order = np.arange(c)
                parts.append(offset + (order[:, None] * px + np.arange(px)[None, :]).reshape(-1))
                offset += c * px
            return torch.from_numpy(np.concatenate(parts)) if moved else None

        for op in self.ops:
            if op.kind not in ("conv", "linear"):
                continue
            key, kind = _key(op.name), self._kinds[op.name]
            out = index(layouts[op.output])
            if out is not None:  # its output channels move (producer or depthwise)
                w = self.weights[key]
                w.copy_(w.index_select(0, out))
                if key in self.biases:
                    self.biases[key].copy_(self.biases[key].index_select(0, out))
                if key in self.norms:
                    bn = self.norms[key]
                    for t in (bn.weight, bn.bias):
                        t.copy_(t.index_select(0, out))
                    for t in (bn.running_mean, bn.running_var):
                        t.copy_(t.index_select(1, out))
            if kind in ("dense", "linear"):
                rows = index(layouts[op.inputs[0]])
                if rows is not None:
                    w = self.weights[key]
                    w.copy_(w.index_select(1, rows))

    # -- back to the engine ---------------------------------------------------------------

    def to_slim(self, name: str | None = None) -> fmt.SlimFile:
        """One weight copy plus every profile's batch-norm statistics as per-profile epilogues.

        The shared ``<op>.scale``/``<op>.bias`` come from the shared row; a profile whose own
        row differs from it gets ``<op>.scale@<profile>``/``<op>.bias@<profile>``.
        """
        meta = copy.deepcopy(self.meta)
        if name:
            meta["name"] = name
        tensors: dict[str, np.ndarray] = {}
        for op in self.ops:
            if op.kind == "prelu":
                tensors[f"{op.name}.slope"] = self.slopes[_key(op.name)].detach().cpu().numpy().astype(np.float32)
                continue
            if op.kind not in fmt.EPILOGUED:
                continue
            key = _key(op.name)
            if op.kind != "scale_bias":
                w = self.weights[key].detach().cpu().numpy()
                kind = self._kinds[op.name]
                if kind == "linear":
                    fw = w.T
                elif kind == "depthwise":
                    fw = w[:, 0].transpose(1, 2, 0)
                else:
                    fw = w.transpose(2, 3, 1, 0)
                tensors[f"{op.name}.weight"] = np.ascontiguousarray(fw, dtype=np.float32)
            if key in self.biases:
                tensors[f"{op.name}.bias"] = self.biases[key].detach().numpy().astype(np.float32).copy()
            if key not in self.norms:
                continue
            bn = self.norms[key]
            shared_s, shared_b = bn.fold(self.shared_row)
            tensors[f"{op.name}.scale"] = shared_s.astype(np.float32)
            tensors[f"{op.name}.bias"] = shared_b.astype(np.float32)
            for row, p in enumerate(self.profiles):
                active = self._maps(tuple(p["widths"]))[op.output].channel_index()
                s, b = bn.fold(row)
                s32, b32 = s[active].astype(np.float32), b[active].astype(np.float32)
                if np.array_equal(s32, tensors[f"{op.name}.scale"][active]) and \
                        np.array_equal(b32, tensors[f"{op.name}.bias"][active]):
                    continue
                tensors[fmt.epilogue_tensor_name(op.name, "scale", p["name"])] = s32
                tensors[fmt.epilogue_tensor_name(op.name, "bias", p["name"])] = b32
        for p in meta["profiles"]:
            p["macs"], p["params"] = fmt.profile_cost(meta, p["widths"], profile=p["name"], tensor_names=tensors)
        slim = fmt.SlimFile(meta, tensors)
        fmt.validate(slim)
        return slim


def _untrained(scale: torch.Tensor, bias: torch.Tensor, eps: float) -> bool:
    """Is this the epilogue of a batch norm that never saw data (gamma 1, beta 0, mean 0, var 1)?"""
    return bool(torch.all(torch.abs(scale * math.sqrt(1.0 + eps) - 1.0) < 1e-6)) and \
        bool(torch.all(torch.abs(bias) < 1e-7))


def _key(name: str) -> str:
    """Module dict keys may not contain dots."""
    return name.replace(".", "__")


def _conv2d(op: fmt.Op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            groups: int) -> torch.Tensor:
    """conv2d with the op's geometry; asymmetric padding is applied explicitly."""
    top, left, bottom, right = op.pads
    if top == bottom and left == right:
        padding = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return F.conv2d(x, weight, bias, op.stride, padding, op.dilation, groups)


def _pool(op: fmt.Op, x: torch.Tensor, out_hw: tuple[int, int], how: str) -> torch.Tensor:
    """Max / average pooling with the format's semantics (asymmetric pads, ceil mode, counts)."""
    (kh, kw), (sh, sw) = op.kernel, op.stride
    top, left, bottom, right = op.pads
    h, w = x.shape[2], x.shape[3]
    oh, ow = out_hw
    extra_h = max((oh - 1) * sh + kh - (top + h + bottom), 0)
    extra_w = max((ow - 1) * sw + kw - (left + w + right), 0)
    pads = (left, right + extra_w, top, bottom + extra_h)
    if how == "max":
        padded = F.pad(x, pads, value=float("-inf"))
        out = None
        for i in range(kh):
            for j in range(kw):
                tap = padded[:, :, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw]
                out = tap if out is None else torch.maximum(out, tap)
        return out
    padded = F.pad(x, pads)
    ones = torch.ones((1, 1, h, w), dtype=x.dtype)
    if op.count_include_pad:
        counted = F.pad(torch.ones((1, 1, top + h + bottom, left + w + right), dtype=x.dtype),
                        (0, extra_w, 0, extra_h))
    else:
        counted = F.pad(ones, pads)
    total, count = 0.0, 0.0
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))
            total = total + padded[sl]
            count = count + counted[sl]
    return total / count
