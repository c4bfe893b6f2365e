"""ModelBuilder: write .slim models from numpy arrays, op by op.

Weights are given in PyTorch layouts (conv [Cout, Cin/groups, kh, kw], linear [Out, In]) and
stored in the file layouts of csrc/core/model.h. Every op is shape-checked when it is added;
build() fills in the profiles' MACs and params, orders them by cost and validates the file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from slimrt import format as fmt
from slimrt.errors import InvalidModelError, ProfileError

__all__ = ["ModelBuilder"]

Padding = Union[int, Sequence[int]]
GroupRef = Union[int, str]


@dataclass
class _ProfileSpec:
    name: str
    widths: Mapping[GroupRef, int] | Sequence[int] | None  # None: uniform multiplier
    multiplier: float = 1.0


def _pair(value: int | Sequence[int], what: str) -> list[int]:
    if isinstance(value, (int, np.integer)):
        return [int(value), int(value)]
    items = [int(v) for v in value]
    if len(items) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return items


def _pads(padding: Padding) -> list[int]:
    """int -> all sides; (ph, pw) -> symmetric; (top, left, bottom, right) as given."""
    if isinstance(padding, (int, np.integer)):
        return [int(padding)] * 4
    items = [int(v) for v in padding]
    if len(items) == 2:
        return [items[0], items[1], items[0], items[1]]
    if len(items) == 4:
        return items
    raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right), "
                     f"got {padding!r}")


def _act(act: str, alpha: float | None, beta: float | None) -> dict[str, Any]:
    """The "act" fields of an op: the parameters the activation reads are always written (given
    or default, format.ACT_PARAMS); a parameter it does not read is refused when the op is added."""
    fields: dict[str, Any] = {"act": act}
    defaults = fmt.ACT_PARAMS.get(act, {})
    for key, value in (("act_alpha", alpha), ("act_beta", beta)):
        if value is not None:
            fields[key] = float(value)
        elif key in defaults:
            fields[key] = defaults[key]
    return fields


def _vector(values: Any, length: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (length,):
        raise ValueError(f"{what} must have shape ({length},), got {array.shape}")
    return np.ascontiguousarray(array)


class ModelBuilder:
    """Builds a SlimFile op by op; see the method docstrings for each op's contract.

    Every op method returns the name of its output tensor, which is the op's name (given, or
    '<kind><counter>'). Groups are referred to by index or by name.
    """

    def __init__(self, name: str, input_shape: Sequence[int] = (1, 3, 32, 32),
                 min_multiplier: float = 0.25) -> None:
        if len(input_shape) != 4 or any(int(d) < 1 for d in input_shape):
            raise ValueError(f"input_shape must be 4 positive ints (N, C, H, W), got "
                             f"{tuple(input_shape)}")
        if not 0 < min_multiplier <= 1:
            raise ValueError(f"min_multiplier must be in (0, 1], got {min_multiplier}")
        self.name = name
        self.input = "input"
        self._input_shape = [int(d) for d in input_shape]
        self._min_multiplier = float(min_multiplier)
        self._groups: list[dict[str, Any]] = []
        self._ops: list[dict[str, Any]] = []
        self._shapes: dict[str, fmt.Shape] = {self.input: tuple(self._input_shape)}
        self._tensors: dict[str, np.ndarray] = {}
        self._profiles: list[_ProfileSpec] = []
        self._output: str | None = None
        self._counter = 0

    # -- groups ---------------------------------------------------------------------------

    def group(self, name: str, size: int, fixed: bool = False, why: str = "") -> int:
        """Declare a channel group of `size` channels; returns its index."""
        if any(g["name"] == name for g in self._groups):
            raise ValueError(f"channel group '{name}' already exists")
        if int(size) < 1:
            raise ValueError(f"channel group '{name}' must have size >= 1, got {size}")
        self._groups.append({"name": name, "size": int(size), "fixed": bool(fixed), "why": why})
        return len(self._groups) - 1

    def group_size(self, ref: GroupRef) -> int:
        """Size of a declared group (by index or name)."""
        return int(self._groups[self._group_index(ref)]["size"])

    def shape(self, tensor: str) -> tuple[int, ...]:
        """Full shape of a tensor of the model (at the default input shape)."""
        if tensor not in self._shapes:
            raise ValueError(f"unknown tensor '{tensor}'")
        return tuple(self._shapes[tensor])

    def _group_index(self, ref: GroupRef) -> int:
        if isinstance(ref, str):
            for i, g in enumerate(self._groups):
                if g["name"] == ref:
                    return i
            raise ValueError(f"unknown channel group '{ref}'; declare it with group()")
        index = int(ref)
        if not 0 <= index < len(self._groups):
            raise ValueError(f"channel group index {index} out of range: {len(self._groups)} "
                             "groups declared")
        return index

    # -- ops ------------------------------------------------------------------------------

    def _new_name(self, kind: str, name: str | None) -> str:
        if name is None:
            name = f"{kind}{self._counter}"
            self._counter += 1
        if name in self._shapes or any(op["name"] == name for op in self._ops):
            raise ValueError(f"op or tensor name '{name}' is already used")
        return name

    def _add(self, op: dict[str, Any], params: Mapping[str, np.ndarray] | None = None) -> str:
        for tensor in op["inputs"]:
            if tensor not in self._shapes:
                raise ValueError(f"op '{op['name']}' uses unknown tensor '{tensor}'")
        parsed = fmt.parse_op(len(self._ops), op, len(self._groups))
        groups = fmt.parse_groups({"groups": self._groups})
        shape = fmt.op_output_shape(parsed, [self._shapes[t] for t in op["inputs"]], groups)
        if params:
            expected = fmt.param_shapes(parsed, self._shapes[op["inputs"][0]], groups)
            for which, array in params.items():
                if array.shape != expected[which]:
                    raise ValueError(f"{op['op']} '{op['name']}': {which} has file-layout shape "
                                     f"{list(array.shape)}, expected {list(expected[which])}")
                self._tensors[f"{op['name']}.{which}"] = array
        self._ops.append(op)
        self._shapes[op["output"]] = shape
        return op["output"]

    def conv(self, x: str, weight: np.ndarray, *, out_group: GroupRef | None = None,
             scale: Any = None, bias: Any = None, stride: int | Sequence[int] = 1,
             padding: Padding = 0, dilation: int | Sequence[int] = 1, groups: int = 1,
             act: str = "none", act_alpha: float | None = None, act_beta: float | None = None,
             name: str | None = None) -> str:
        """Conv2d with weight [Cout, Cin/groups, kh, kw] and optional per-channel scale, bias, then
        activation ``act`` (``act_alpha``, ``act_beta``: its parameters, see format.ACT_PARAMS).

        Depthwise when groups == Cin == Cout (out_group must then be None). A dense conv given
        no out_group gets a new group named after the op; a grouped conv (other groups) gets a
        new fixed group, since it runs at full width only.
        """
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 4:
            raise ValueError(f"conv weight must be [Cout, Cin/groups, kh, kw], got shape {w.shape}")
        if x not in self._shapes:
            raise ValueError(f"conv input '{x}' is not a tensor of this model")
        name = self._new_name("conv", name)
        cout, _, kh, kw = w.shape
        cin = self._shapes[x][1]
        depthwise = groups > 1 and groups == cin == cout
        if depthwise and out_group is not None:
            raise ValueError(f"conv '{name}' is depthwise (groups == Cin == Cout); pass "
                             "out_group=None: its output keeps its input's channel group")
        op: dict[str, Any] = {
            "op": "conv", "name": name, "inputs": [x], "output": name,
            "kernel": [kh, kw], "stride": _pair(stride, "stride"), "pads": _pads(padding),
            "dilation": _pair(dilation, "dilation"), "groups": int(groups),
            **_act(act, act_alpha, act_beta),
        }
        n_groups = len(self._groups)
        try:
            if not depthwise:
                op["out_group"] = self._out_group(name, out_group, cout, fixed=groups > 1)
                stored = w.transpose(2, 3, 1, 0)
            else:
                stored = w[:, 0].transpose(1, 2, 0)
            params = self._params(np.ascontiguousarray(stored), scale, bias, cout, name)
            return self._add(op, params)
        except ValueError:
            del self._groups[n_groups:]  # drop a group created for this op
            raise

    def _out_group(self, name: str, ref: GroupRef | None, size: int, fixed: bool) -> int:
        if ref is None:
            why = "grouped conv runs at full width" if fixed else ""
            return self.group(name, size, fixed=fixed, why=why)
        index = self._group_index(ref)
        if self._groups[index]["size"] != size:
            raise ValueError(f"op '{name}' has {size} output channels, its group "
                             f"'{self._groups[index]['name']}' has size "
                             f"{self._groups[index]['size']}")
        return index

    @staticmethod
    def _params(weight: np.ndarray, scale: Any, bias: Any, cout: int,
                name: str) -> dict[str, np.ndarray]:
        params = {"weight": weight}
        if scale is not None:
            params["scale"] = _vector(scale, cout, f"'{name}' scale")
        if bias is not None:
            params["bias"] = _vector(bias, cout, f"'{name}' bias")
        return params

    def linear(self, x: str, weight: np.ndarray, *, out_group: GroupRef, scale: Any = None,
               bias: Any = None, act: str = "none", act_alpha: float | None = None,
               act_beta: float | None = None, name: str | None = None) -> str:
        """Linear with weight [Out, In] on a rank-2 input [N, In]; activation as in conv()."""
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"linear weight must be [Out, In], got shape {w.shape}")
        name = self._new_name("linear", name)
        op = {"op": "linear", "name": name, "inputs": [x], "output": name, **_act(act, act_alpha, act_beta),
              "out_group": self._out_group(name, out_group, w.shape[0], fixed=False)}
        params = self._params(np.ascontiguousarray(w.T), scale, bias, w.shape[0], name)
        return self._add(op, params)

    def add(self, a: str, c: str, act: str = "none", name: str | None = None, *,
            act_alpha: float | None = None, act_beta: float | None = None) -> str:
        """Residual add with zero padding match: the operands' widths may differ."""
        name = self._new_name("add", name)
        return self._add({"op": "add", "name": name, "inputs": [a, c], "output": name,
                          **_act(act, act_alpha, act_beta)})

    def mul(self, x: str, gate: str, name: str | None = None) -> str:
        """Channel gate x * gate with gate [N, C, 1, 1] (squeeze-and-excitation). The gate must
        have x's channels at every width: the layer that makes it writes x's channel group."""
        name = self._new_name("mul", name)
        return self._add({"op": "mul", "name": name, "inputs": [x, gate], "output": name})

    def concat(self, inputs: Sequence[str], name: str | None = None) -> str:
        """Concatenation along channels."""
        name = self._new_name("concat", name)
        return self._add({"op": "concat", "name": name, "inputs": list(inputs), "output": name})

    def _pool(self, kind: str, x: str, kernel: int | Sequence[int],
              stride: int | Sequence[int] | None, padding: Padding, ceil_mode: bool,
              name: str | None, extra: Mapping[str, Any]) -> str:
        name = self._new_name(kind, name)
        k = _pair(kernel, "kernel")
        op = {"op": kind, "name": name, "inputs": [x], "output": name, "kernel": k,
              "stride": k if stride is None else _pair(stride, "stride"), "pads": _pads(padding),
              "ceil_mode": bool(ceil_mode), **extra}
        return self._add(op)

    def maxpool(self, x: str, kernel: int | Sequence[int],
                stride: int | Sequence[int] | None = None, padding: Padding = 0,
                ceil_mode: bool = False, name: str | None = None) -> str:
        """Max pooling; stride defaults to the kernel; padding never wins a max."""
        return self._pool("maxpool", x, kernel, stride, padding, ceil_mode, name, {})

    def avgpool(self, x: str, kernel: int | Sequence[int],
                stride: int | Sequence[int] | None = None, padding: Padding = 0,
                ceil_mode: bool = False, count_include_pad: bool = False,
                name: str | None = None) -> str:
        """Average pooling; stride defaults to the kernel."""
        return self._pool("avgpool", x, kernel, stride, padding, ceil_mode, name,
                          {"count_include_pad": bool(count_include_pad)})

    def _simple(self, kind: str, x: str, name: str | None, **fields: Any) -> str:
        name = self._new_name(kind, name)
        return self._add({"op": kind, "name": name, "inputs": [x], "output": name, **fields})

    def global_avgpool(self, x: str, name: str | None = None) -> str:
        """[N, C, H, W] -> [N, C, 1, 1]."""
        return self._simple("global_avgpool", x, name)

    def flatten(self, x: str, name: str | None = None) -> str:
        """[N, C, H, W] -> [N, C*H*W], channel major."""
        return self._simple("flatten", x, name)

    def unflatten(self, x: str, name: str | None = None) -> str:
        """[N, F] -> [N, F, 1, 1]: features become channels (a gate made by linears)."""
        return self._simple("unflatten", x, name)

    def softmax(self, x: str, name: str | None = None) -> str:
        """Softmax over the channel axis."""
        return self._simple("softmax", x, name)

    def act(self, x: str, kind: str, name: str | None = None, *, alpha: float | None = None,
            beta: float | None = None) -> str:
        """Elementwise activation `kind` with its parameters `alpha`, `beta` (format.ACT_PARAMS)."""
        return self._simple("act", x, name, **_act(kind, alpha, beta))

    def scale_bias(self, x: str, scale: Any = None, bias: Any = None, *, act: str = "none",
                   act_alpha: float | None = None, act_beta: float | None = None, name: str | None = None) -> str:
        """act(scale * x + bias) with one scale and bias per channel (per feature of a rank-2
        input): a batch norm that no conv absorbs. Per-profile epilogues as for a conv."""
        name = self._new_name("scale_bias", name)
        if x not in self._shapes:
            raise ValueError(f"scale_bias input '{x}' is not a tensor of this model")
        c = self._shapes[x][1]
        params = {}
        if scale is not None:
            params["scale"] = _vector(scale, c, f"'{name}' scale")
        if bias is not None:
            params["bias"] = _vector(bias, c, f"'{name}' bias")
        op = {"op": "scale_bias", "name": name, "inputs": [x], "output": name, **_act(act, act_alpha, act_beta)}
        return self._add(op, params)

    def prelu(self, x: str, slope: Any, name: str | None = None) -> str:
        """PReLU with one slope per channel (per feature of a rank-2 input): x > 0 ? x : slope * x."""
        name = self._new_name("prelu", name)
        if x not in self._shapes:
            raise ValueError(f"prelu input '{x}' is not a tensor of this model")
        params = {"slope": _vector(slope, self._shapes[x][1], f"'{name}' slope")}
        return self._add({"op": "prelu", "name": name, "inputs": [x], "output": name}, params)

    def resize(self, x: str, scale: int | Sequence[int], mode: str = "nearest", name: str | None = None) -> str:
        """Upsampling by integer factors (an int or (sh, sw)): "nearest" or "bilinear" (half-pixel
        centres, as PyTorch's align_corners=False)."""
        return self._simple("resize", x, name, scale=_pair(scale, "scale"), mode=mode)

    def slice(self, x: str, start: int, end: int, name: str | None = None) -> str:
        """Channels [start, end) of a rank-4 tensor (a channel split). Its input must run at full
        width: every channel group feeding it must be fixed (build() checks)."""
        return self._simple("slice", x, name, start=int(start), end=int(end))

    def shuffle(self, x: str, groups: int, name: str | None = None) -> str:
        """Channel shuffle of a rank-4 tensor in `groups` groups (groups divides C). Its input
        must run at full width: every channel group feeding it must be fixed (build() checks)."""
        return self._simple("shuffle", x, name, groups=int(groups))

    def gate(self, x: str, reduce_weight: Any, reduce_bias: Any, expand_weight: Any, expand_bias: Any,
             slim_weight: Any, slim_bias: Any, name: str | None = None) -> str:
        """The dynamic gate (DS-Net) on rank-4 tensor ``x``, its layers in PyTorch layouts: reduce
        [D, C], expand [C, D], slim [K, D] (``nn.Linear`` weights) with their biases. C is the
        active channels ``x`` has at every profile (the ops before the gate run at one shared
        width), K the number of profiles: logit k chooses the k-th cheapest. The output is ``x``
        scaled by the attention head. build() checks the rules of a gated model (model.h)."""
        arrays = [np.asarray(a, dtype=np.float32) for a in (reduce_weight, reduce_bias, expand_weight, expand_bias,
                                                               slim_weight, slim_bias)]
        rw, rb, ew, eb, sw, sb = arrays
        if rw.ndim != 2 or sw.ndim != 2:
            raise ValueError(f"gate: reduce_weight must be [D, C] and slim_weight [K, D], got shapes {rw.shape} "
                             f"and {sw.shape}")
        hidden, channels = rw.shape
        name = self._new_name("gate", name)
        op = {"op": "gate", "name": name, "inputs": [x], "output": name, "channels": int(channels),
              "hidden": int(hidden), "choices": int(sw.shape[0])}
        stored = (rw.T, rb, ew.T if ew.ndim == 2 else ew, eb, sw.T, sb)
        return self._add(op, {which: np.ascontiguousarray(a) for which, a in zip(fmt.GATE_TENSORS, stored)})

    def set_output(self, tensor: str) -> None:
        """Make `tensor` the model output (default: the last op's output)."""
        if tensor not in self._shapes:
            raise ValueError(f"unknown tensor '{tensor}'")
        self._output = tensor

    # -- profiles -------------------------------------------------------------------------

    def profile(self, name: str, widths: Mapping[GroupRef, int] | Sequence[int]) -> None:
        """A named profile: widths per group, as a mapping (fixed groups may be omitted) or as a
        sequence over all groups. Resolved against the groups at build()."""
        self._check_new_profile(name)
        self._profiles.append(_ProfileSpec(name, widths))

    def uniform_profiles(self, multipliers: Sequence[float] = (0.25, 0.5, 0.75, 1.0)) -> None:
        """One profile per uniform multiplier, named by the multiplier ('0.25', '1.0')."""
        for m in multipliers:
            name = repr(float(m))
            self._check_new_profile(name)
            self._profiles.append(_ProfileSpec(name, None, float(m)))

    def _check_new_profile(self, name: str) -> None:
        if any(p.name == name for p in self._profiles):
            raise ValueError(f"profile '{name}' already exists")

    def epilogue(self, op_name: str, profile_name: str, scale: Any, bias: Any) -> None:
        """Per-profile epilogue of a conv, linear or scale_bias: scale and/or bias (None: keep the op's),
        each of the op's active output width at that profile."""
        op = next((o for o in self._ops if o["name"] == op_name), None)
        if op is None or op["op"] not in fmt.EPILOGUED:
            raise ValueError(f"epilogue: '{op_name}' is not a conv, linear or scale_bias op of this model")
        for which, values in (("scale", scale), ("bias", bias)):
            if values is not None:
                array = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
                if array.ndim != 1:
                    raise ValueError(f"epilogue {which} of '{op_name}' must be 1-D")
                self._tensors[fmt.epilogue_tensor_name(op_name, which, profile_name)] = array

    def resolve_widths(self, widths: Mapping[GroupRef, int] | Sequence[int], name: str = "") -> list[int]:
        """One width per declared group from a mapping (fixed groups may be omitted) or a sequence,
        as :meth:`profile` takes them; ProfileError names a group the mapping leaves out."""
        if isinstance(widths, Mapping):
            resolved = [g["size"] if g["fixed"] else None for g in self._groups]
            for ref, w in widths.items():
                resolved[self._group_index(ref)] = int(w)
            missing = [g["name"] for g, w in zip(self._groups, resolved) if w is None]
            if missing:
                raise ProfileError(f"profile '{name}' gives no width for groups {', '.join(missing)}")
            return resolved  # type: ignore[return-value]
        return [int(w) for w in widths]

    def _resolve(self, spec: _ProfileSpec, meta: Mapping[str, Any]) -> list[int]:
        if spec.widths is None:
            return fmt.uniform_widths(meta, spec.multiplier)
        return self.resolve_widths(spec.widths, spec.name)

    # -- output ---------------------------------------------------------------------------

    def build(self) -> fmt.SlimFile:
        """The validated SlimFile: profiles get MACs and params and are ordered by MACs."""
        if not self._ops:
            raise ValueError("the model has no ops")
        meta: dict[str, Any] = {
            "format": "slimrt", "format_version": fmt.FLOAT_FORMAT_VERSION, "name": self.name,
            "input": {"name": self.input, "shape": list(self._input_shape)},
            "output": self._output or self._ops[-1]["output"],
            "min_multiplier": self._min_multiplier,
            "groups": copy.deepcopy(self._groups), "ops": copy.deepcopy(self._ops),
            "profiles": [],
        }
        tensors = {k: v.copy() for k, v in self._tensors.items()}
        profiles = []
        for spec in self._profiles:
            widths = self._resolve(spec, meta)
            if len(widths) != len(self._groups):
                raise InvalidModelError(f"profile '{spec.name}' has {len(widths)} widths, the "
                                        f"model has {len(self._groups)} channel groups")
            macs, params = fmt.profile_cost(meta, widths, profile=spec.name,
                                            tensor_names=tensors)
            profiles.append({"name": spec.name, "widths": widths, "macs": macs,
                             "params": params})
        meta["profiles"] = sorted(profiles, key=lambda p: (p["macs"], p["params"]))
        slim = fmt.SlimFile(meta, tensors)
        fmt.validate(slim)
        return slim

    def save(self, path: str | os.PathLike[str]) -> None:
        """Build and write the model to `path`."""
        fmt.write(self.build(), path)
