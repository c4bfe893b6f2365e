"""Channel groups: which channel dimensions of a fused IR graph must share one order.

Rules (as in DepGraph-style dependency analysis):

* a dense conv or a linear starts a new group for its output channels; the layer reading a
  tensor takes its input rows from the groups of that tensor;
* BN, activations, pools, softmax and depthwise convs keep their input's channels (in = out);
* both operands of an add join one group, and so do the input of a channel gate (``mul``) and
  the gate: the squeeze-and-excitation layer that makes the gate writes its input's group, while
  its reduced channels are a group of their own;
* concat lays its inputs' groups side by side as segments;
* flatten turns each channel of an H x W map into H*W consecutive features, so a linear after
  a (global) pool and flatten reads its rows in channel blocks.

Groups that cannot be sliced are *fixed* and carry a reason: the network input and output,
the input and output of a grouped conv that is not depthwise, the input of a channel shuffle
(whose output then mixes no group a later layer could slice) or of a channel slice (a split: its
parts start at fixed offsets), and the operands of an add whose
channels come from a concat. A tensor's channel axis is described by its :class:`Segment`
list; a segment of group -1 is the network input, which is never permuted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ir import Graph, Node

INPUT = -1


@dataclass(frozen=True)
class Segment:
    """``size`` consecutive channels of one group; each channel spans ``hw`` features (1 before flatten)."""

    group: int
    size: int
    hw: int = 1


@dataclass
class ChannelGroup:
    """A channel group of the converted model."""

    index: int
    name: str
    size: int
    fixed: bool = False
    why: str = ""
    producers: list[Node] = field(default_factory=list)


@dataclass
class Analysis:
    """The channel groups of a graph and the segment layout of every tensor."""

    groups: list[ChannelGroup]
    out_group: dict[str, int]
    layouts: dict[str, list[Segment]]

    def channel_index(self, tensor: str, perms: list[np.ndarray]) -> np.ndarray:
        """Indices that reorder ``tensor``'s channel (or feature) axis by the group permutations."""
        parts, offset = [], 0
        for seg in self.layouts[tensor]:
            perm = np.arange(seg.size) if seg.group == INPUT else perms[seg.group]
            idx = (perm[:, None] * seg.hw + np.arange(seg.hw)[None, :]).reshape(-1)
            parts.append(idx + offset)
            offset += seg.size * seg.hw
        return np.concatenate(parts)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.why: dict[int, list[str]] = {}

    def add(self, why: str = "") -> int:
        self.parent.append(len(self.parent))
        if why:
            self.why[len(self.parent) - 1] = [why]
        return len(self.parent) - 1

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.why.setdefault(ra, []).extend(self.why.pop(rb, []))

    def fix(self, e: int, why: str) -> None:
        reasons = self.why.setdefault(self.find(e), [])
        if why not in reasons:
            reasons.append(why)


def analyse(graph: Graph) -> Analysis:
    """Find the channel groups of a fused graph (see the module docstring for the rules)."""
    uf = _UnionFind()
    input_elem = uf.add("network input")
    layouts: dict[str, list[tuple[int, int, int]]] = {graph.input: [(input_elem, graph.input_shape[1], 1)]}
    producer_elem: dict[str, int] = {}
    for node in graph.nodes:
        layouts[node.output] = _visit(node, graph, layouts, uf, producer_elem)
    for elem, _, _ in layouts[graph.output]:
        uf.fix(elem, "network output")
    return _finish(graph, uf, layouts, producer_elem, input_elem)


def _visit(node: Node, graph: Graph, layouts: dict[str, list[tuple[int, int, int]]], uf: _UnionFind,
           producer_elem: dict[str, int]) -> list[tuple[int, int, int]]:
    src = layouts[node.inputs[0]]
    if node.kind in ("conv", "linear") and not node.is_depthwise:
        size = node.params["weight"].shape[0]
        if node.is_grouped:
            why = f"grouped conv '{node.name}' (groups={node.attrs['groups']})"
            for elem, _, _ in src:
                uf.fix(elem, "input of " + why)
            elem = uf.add("output of " + why)
        else:
            elem = uf.add()
        producer_elem[node.name] = elem
        return [(elem, size, 1)]
    if node.kind in ("shuffle", "slice"):
        why = f"channel shuffle '{node.name}' (groups={node.attrs['groups']})" if node.kind == "shuffle" else \
            f"channel slice '{node.name}' [{node.attrs['start']}, {node.attrs['end']})"
        for elem, _, _ in src:
            uf.fix(elem, "input of " + why)
        size = sum(size for _, size, _ in src) if node.kind == "shuffle" else node.attrs["end"] - node.attrs["start"]
        return [(uf.add("output of " + why), size, 1)]
    if node.kind in ("add", "mul"):
        return _visit_add(node, layouts, uf)
    if node.kind == "concat":
        return [seg for t in node.inputs for seg in layouts[t]]
    if node.kind == "flatten":
        hw = int(np.prod(graph.shapes[node.inputs[0]][2:]))
        return [(e, size, k * hw) for e, size, k in src]
    return list(src)


def _visit_add(node: Node, layouts: dict[str, list[tuple[int, int, int]]],
               uf: _UnionFind) -> list[tuple[int, int, int]]:
    """Both operands of an add (or a channel gate) in one group; from a concat, all fixed."""
    a, b = layouts[node.inputs[0]], layouts[node.inputs[1]]
    if len(a) == 1 and len(b) == 1 and a[0][2] == b[0][2]:
        uf.union(a[0][0], b[0][0])
        return list(a)
    what = "add" if node.kind == "add" else "channel gate"
    for elem, _, _ in a + b:
        uf.fix(elem, f"operand of {what} '{node.name}', whose channels come from a concat")
    return list(a)


def _finish(graph: Graph, uf: _UnionFind, layouts: dict[str, list[tuple[int, int, int]]],
            producer_elem: dict[str, int], input_elem: int) -> Analysis:
    nodes = {n.name: n for n in graph.nodes}
    root_index: dict[int, int] = {}
    groups: list[ChannelGroup] = []
    for name, elem in producer_elem.items():
        root = uf.find(elem)
        if root not in root_index:
            root_index[root] = len(groups)
            reasons = uf.why.get(root, [])
            groups.append(ChannelGroup(len(groups), name, nodes[name].params["weight"].shape[0],
                                       bool(reasons), "; ".join(reasons)))
        groups[root_index[root]].producers.append(nodes[name])
    out_group = {name: root_index[uf.find(elem)] for name, elem in producer_elem.items()}
    segs = {t: [Segment(root_index.get(uf.find(e), INPUT), size, hw) for e, size, hw in lay]
            for t, lay in layouts.items()}
    return Analysis(groups, out_group, segs)
