"""Channel importance per group, and the sort that makes every profile a prefix.

A group's score is aggregated over its members: the convs/linears that produce it and the
depthwise convs that run on it. Each member contributes one score per channel, normalised by
its mean so that no layer dominates by scale, and the group sorts by the sum, most important
first. Criteria:

``l1``      L1 norm of each member's filter (the weights that produce the channel; default)
``l2``      L2 norm of the same filters
``bn``      |gamma| of the BatchNormalization folded into each member (Network Slimming,
            SP-Net); a group with no BatchNormalization falls back to ``l1``
``random``  a seeded random order, for ablations
``none``    keep the source's order: for a net trained slimmable already, whose prefixes are
            its sub-networks

Fixed groups keep their order (they always run at full width), so the network input and the
classifier output are never permuted. :func:`apply_permutations` reorders every member and
every reader of a group, so the full-width model computes exactly what the original did.
"""

from __future__ import annotations

import numpy as np

from .analysis import Analysis
from .ir import Graph, Node

CRITERIA = ("l1", "l2", "bn", "random", "none")


def group_permutations(graph: Graph, analysis: Analysis, criterion: str = "l1", seed: int = 0) -> list[np.ndarray]:
    """One permutation per group: ``perm[new_position] = old_channel``, most important first."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    rng = np.random.default_rng(seed)
    members = _members(graph, analysis)
    perms = []
    for group in analysis.groups:
        if group.fixed or criterion == "none":
            perms.append(np.arange(group.size))
            continue
        if criterion == "random":
            perms.append(rng.permutation(group.size))
            continue
        score = _group_score(members[group.index], criterion)
        perms.append(np.argsort(-score, kind="stable"))
    return perms


def _members(graph: Graph, analysis: Analysis) -> list[list[tuple[Node, np.ndarray]]]:
    """Per group: (node, channel indices of the node's output rows that belong to the group)."""
    members: list[list[tuple[Node, np.ndarray]]] = [[] for _ in analysis.groups]
    for node in graph.nodes:
        if node.name in analysis.out_group:
            g = analysis.out_group[node.name]
            members[g].append((node, np.arange(analysis.groups[g].size)))
        elif node.is_depthwise:
            offset = 0
            for seg in analysis.layouts[node.inputs[0]]:
                if seg.group >= 0:
                    members[seg.group].append((node, np.arange(offset, offset + seg.size)))
                offset += seg.size
    return members


def _group_score(members: list[tuple[Node, np.ndarray]], criterion: str) -> np.ndarray:
    if criterion == "bn" and not any("bn_gamma" in n.params for n, _ in members):
        criterion = "l1"
    total = None
    for node, rows in members:
        if criterion == "bn" and "bn_gamma" not in node.params:
            continue
        score = _channel_score(node, criterion)[rows]
        mean = float(np.mean(score))
        score = score / mean if mean > 0 else score
        total = score if total is None else total + score
    assert total is not None
    return total


def _channel_score(node: Node, criterion: str) -> np.ndarray:
    if criterion == "bn":
        return np.abs(node.params["bn_gamma"])
    w = node.params["weight"].astype(np.float64).reshape(node.params["weight"].shape[0], -1)
    if criterion == "l1":
        return np.abs(w).sum(axis=1)
    return np.sqrt((w * w).sum(axis=1))


def apply_permutations(graph: Graph, analysis: Analysis, perms: list[np.ndarray]) -> None:
    """Reorder every producer, depthwise conv and reader of each group (in place, new arrays)."""
    for node in graph.nodes:
        if node.name in analysis.out_group:
            _permute_outputs(node, perms[analysis.out_group[node.name]])
        elif node.is_depthwise:
            _permute_outputs(node, analysis.channel_index(node.inputs[0], perms))
        if node.kind in ("conv", "linear") and not node.is_depthwise and not node.is_grouped:
            idx = analysis.channel_index(node.inputs[0], perms)
            node.params["weight"] = np.ascontiguousarray(node.params["weight"][:, idx])
        elif node.kind in ("prelu", "scale_bias"):  # per-channel vectors follow their input's channels
            _permute_outputs(node, analysis.channel_index(node.inputs[0], perms))


def _permute_outputs(node: Node, perm: np.ndarray) -> None:
    for key, value in node.params.items():
        node.params[key] = np.ascontiguousarray(value[perm])
