"""The conversion pipeline: IR graph -> fuse -> channel groups -> importance sort -> .slim.

Both front ends end here: :func:`graph_to_slim` takes an imported IR graph and writes it
through :class:`slimrt.builder.ModelBuilder`, with one profile per requested width.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import Analysis, analyse
from .importance import apply_permutations, group_permutations
from .ir import Graph, Node, act_attrs, fuse
from .profiles import DEFAULT_WIDTHS, DuplicateProfileWarning, ProfileRequest, WidthSpec, parse_widths, uniform_width

if TYPE_CHECKING:
    from ..builder import ModelBuilder
    from ..format import SlimFile

Progress = Callable[[str], None]


def graph_to_slim(graph: Graph, widths: WidthSpec = DEFAULT_WIDTHS, importance: str = "l1", *,
                  seed: int = 0, min_multiplier: float | None = None,
                  progress: Progress | None = None) -> SlimFile:
    """Convert an imported (unfused) IR graph into a validated SlimFile with the requested profiles.

    A requested profile whose widths equal an earlier one's (small groups round to the same
    widths) is written once, under the earlier name, with a :class:`DuplicateProfileWarning`.
    ``min_multiplier`` defaults to the smallest uniform multiplier requested (0.25 when only
    explicit widths are given).
    """
    say = progress or (lambda message: None)
    requests = parse_widths(widths)
    fuse(graph)
    say(f"fused into {len(graph.nodes)} ops")
    analysis = analyse(graph)
    fixed = sum(g.fixed for g in analysis.groups)
    say(f"found {len(analysis.groups)} channel groups ({fixed} fixed at full width)")
    perms = group_permutations(graph, analysis, importance, seed)
    apply_permutations(graph, analysis, perms)
    say(f"sorted channels by {importance} importance")
    if min_multiplier is None:
        uniform = [r.multiplier for r in requests if r.multiplier is not None]
        min_multiplier = min(uniform) if uniform else 0.25
    slim = _emit(graph, analysis, requests, min_multiplier)
    say(f"built {len(slim.meta['profiles'])} profiles")
    return slim


def onnx_to_slim(source: str | Path | bytes | Any, widths: WidthSpec = DEFAULT_WIDTHS, importance: str = "l1", *,
                 input_shape: tuple[int, int, int, int] | None = None, name: str | None = None, seed: int = 0,
                 min_multiplier: float | None = None, progress: Progress | None = None) -> SlimFile:
    """Convert an ONNX model (path, bytes or ModelProto) into a SlimFile. See :func:`from_onnx`."""
    from .onnx_import import import_onnx

    graph = import_onnx(source, input_shape=input_shape, name=name)
    if progress:
        progress(f"imported {len(graph.nodes)} ops from ONNX")
    return graph_to_slim(graph, widths, importance, seed=seed, min_multiplier=min_multiplier, progress=progress)


def _emit(graph: Graph, analysis: Analysis, requests: list[ProfileRequest], min_multiplier: float) -> SlimFile:
    from ..builder import ModelBuilder

    b = ModelBuilder(graph.name, input_shape=graph.input_shape, min_multiplier=min_multiplier)
    index = [b.group(g.name, g.size, fixed=g.fixed, why=g.why) for g in analysis.groups]
    names = {graph.input: b.input}
    for node in graph.nodes:
        group = analysis.out_group.get(node.name)
        names[node.output] = _emit_node(b, node, names, None if group is None else index[group])
    b.set_output(names[graph.output])
    written: dict[tuple[int, ...], str] = {}
    for request in requests:
        if request.multiplier is not None:
            widths = [uniform_width(g.size, request.multiplier, g.fixed) for g in analysis.groups]
        else:
            widths = b.resolve_widths(request.widths, request.name)  # type: ignore[arg-type]
        first = written.get(tuple(widths))
        if first is not None:
            _warn_duplicate(request, first)
            continue
        written[tuple(widths)] = request.name
        b.profile(request.name, widths)
    return b.build()


def _warn_duplicate(request: ProfileRequest, first: str) -> None:
    runs = f"; multiplier {request.multiplier} still runs it" if request.multiplier is not None else ""
    warnings.warn(f"profile '{request.name}' comes out identical to profile '{first}' (the same width in "
                  f"every channel group of this model), so the file holds '{first}' only{runs}",
                  DuplicateProfileWarning, stacklevel=2)


def _emit_node(b: ModelBuilder, node: Node, names: dict[str, str], group: int | None) -> str:
    xs = [names[t] for t in node.inputs]
    a = node.attrs
    if node.kind in ("conv", "linear"):
        scale, bias = node.epilogue()
        common = {"out_group": group, "scale": _f32(scale), "bias": _f32(bias), **act_attrs(node), "name": node.name}
        weight = np.ascontiguousarray(node.params["weight"], dtype=np.float32)
        if node.kind == "linear":
            return b.linear(xs[0], weight, **common)
        return b.conv(xs[0], weight, stride=tuple(a["stride"]), padding=tuple(a["pads"]),
                      dilation=tuple(a["dilation"]), groups=a["groups"], **common)
    name = node.name
    if node.kind == "add":
        return b.add(xs[0], xs[1], name=name, **act_attrs(node))
    if node.kind == "act":
        return b.act(xs[0], a["kind"], name=name, alpha=a.get("act_alpha"), beta=a.get("act_beta"))
    if node.kind == "concat":
        return b.concat(xs, name=name)
    if node.kind == "maxpool":
        return b.maxpool(xs[0], tuple(a["kernel"]), stride=tuple(a["stride"]), padding=tuple(a["pads"]),
                         ceil_mode=a["ceil_mode"], name=name)
    if node.kind == "avgpool":
        return b.avgpool(xs[0], tuple(a["kernel"]), stride=tuple(a["stride"]), padding=tuple(a["pads"]),
                         ceil_mode=a["ceil_mode"], count_include_pad=a["count_include_pad"], name=name)
    if node.kind == "global_avgpool":
        return b.global_avgpool(xs[0], name=name)
    if node.kind == "flatten":
        return b.flatten(xs[0], name=name)
    if node.kind == "softmax":
        return b.softmax(xs[0], name=name)
    if node.kind == "shuffle":
        return b.shuffle(xs[0], a["groups"], name=name)
    if node.kind == "slice":
        return b.slice(xs[0], a["start"], a["end"], name=name)
    if node.kind == "resize":
        return b.resize(xs[0], tuple(a["scale"]), a["mode"], name=name)
    if node.kind == "unflatten":
        return b.unflatten(xs[0], name=name)
    if node.kind == "mul":
        return b.mul(xs[0], xs[1], name=name)
    if node.kind == "scale_bias":
        return b.scale_bias(xs[0], _f32(node.params["scale"]), _f32(node.params["bias"]), name=name,
                            **act_attrs(node))
    if node.kind == "prelu":
        return b.prelu(xs[0], _f32(node.params["slope"]), name=name)
    raise AssertionError(f"IR kind '{node.kind}' has no .slim op")


def _f32(v: np.ndarray | None) -> np.ndarray | None:
    return None if v is None else np.ascontiguousarray(v, dtype=np.float32)
