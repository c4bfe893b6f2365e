"""Profiles found by pruning: per-group widths from channel importance, ranked globally.

Two criteria, as the literature defines them, plus a data-free one:

``bn``      |gamma| of the batch norm that produces each channel (Network Slimming; SP-Net trains
            with an L1 penalty on these, ``TrainConfig.bn_l1``, so a single global threshold
            separates the channels a network can drop);
``taylor``  first-order Taylor estimate of the loss change when a channel is removed, measured on
            data through the batch norm's affine: ``(gamma * dL/dgamma + beta * dL/dbeta)^2``,
            averaged over batches and normalised per layer (Molchanov et al. 2019; PruneNet's
            data-driven global importance);
``l1``      L1 norm of each channel's producing filters, normalised per layer.

A group's score per channel is the mean over its members (the ops producing it and the depthwise
convs running on it). :func:`sort_by_importance` reorders every free group so that its most
important channels come first (slimmable channel sorting): every profile is then a prefix.
:func:`threshold_widths` finds, for a MACs target, the one global threshold whose surviving
channels meet it (each group keeps at least 8 channels or 10% of them). :func:`prune_profiles`
does both for several targets; with ``multi_base`` each target is pruned from the previous,
larger result (SP-Net's multi-base pruning), importance re-measured at that base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import format as fmt
from .supernet import ProfileKey, Supernet, Widths, _key

__all__ = ["CRITERIA", "PruneResult", "channel_scores", "sort_by_importance", "threshold_widths",
           "prune_profiles", "min_width"]

CRITERIA = ("bn", "taylor", "l1")


@dataclass
class PruneResult:
    """Per-group widths found for one MACs target."""

    name: str
    target: float          # fraction of the full MACs asked for
    widths: Widths
    macs: int
    macs_ratio: float      # of the full MACs
    threshold: float


def min_width(size: int) -> int:
    """The floor of a pruned group: 8 channels or 10% of the group, never more than the group."""
    return min(size, max(8, math.ceil(0.1 * size)))


def _members(net: Supernet) -> dict[int, list[tuple[str, np.ndarray]]]:
    """Per free group: (op name, positions of the op's output channels that belong to it)."""
    layouts = net.group_layouts()
    members: dict[int, list[tuple[str, np.ndarray]]] = {}
    for op in net.ops:
        if op.kind not in ("conv", "linear"):
            continue
        offset = 0
        for g, c, px in layouts[op.output]:
            if g is not None and not net.groups[g].fixed and px == 1:
                members.setdefault(g, []).append((op.name, np.arange(offset, offset + c)))
            offset += c * px
    return members


def channel_scores(net: Supernet, method: str = "bn", batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                   profile: ProfileKey | None = None) -> dict[int, np.ndarray]:
    """Importance of every channel of every free group (higher: keep), as float64 arrays.

    ``taylor`` needs ``batches`` of (images, labels) and measures at ``profile`` (default: full
    width); channels inactive at that profile score 0.
    """
    if method not in CRITERIA:
        raise ValueError(f"unknown importance criterion '{method}'; choose one of {', '.join(CRITERIA)}")
    per_op: dict[str, np.ndarray] = {}
    if method == "taylor":
        per_op = _taylor(net, batches, profile)
    for op in net.ops:
        if op.kind not in ("conv", "linear") or op.name in per_op:
            continue
        key = _key(op.name)
        if method == "bn" and key in net.norms:
            per_op[op.name] = net.norms[key].weight.detach().abs().double().numpy()
        elif method != "taylor" or key not in net.norms:
            w = net.weights[key].detach().double()
            score = w.reshape(w.shape[0], -1).abs().sum(1).numpy()
            per_op[op.name] = score / max(float(score.mean()), 1e-12)
    scores = {}
    for g, members in _members(net).items():
        parts = [per_op[name][rows] for name, rows in members if name in per_op]
        if parts:
            scores[g] = np.mean(parts, axis=0)
    return scores


def _taylor(net: Supernet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
            profile: ProfileKey | None) -> dict[str, np.ndarray]:
    if not batches:
        raise ValueError("the taylor criterion needs data: pass batches of (images, labels)")
    bns = {name: net.norms[_key(name)] for name in (op.name for op in net.ops) if _key(name) in net.norms}
    total = {name: torch.zeros_like(bn.weight, dtype=torch.float64) for name, bn in bns.items()}
    was = net.training
    net.train()
    key = profile if profile is not None else net.full_widths
    try:
        for x, y in batches:
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, key, bn_stats="none"), y).backward()
            for name, bn in bns.items():
                gw = bn.weight.grad if bn.weight.grad is not None else torch.zeros_like(bn.weight)
                gb = bn.bias.grad if bn.bias.grad is not None else torch.zeros_like(bn.bias)
                total[name] += ((bn.weight.detach() * gw + bn.bias.detach() * gb).double()) ** 2
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was)
    out = {}
    for name, t in total.items():
        score = (t / len(batches)).numpy()
        norm = float(np.sqrt((score ** 2).sum()))
        out[name] = score / norm if norm > 0 else score
    return out


def sort_by_importance(net: Supernet, scores: dict[int, np.ndarray], within: Widths | None = None) -> None:
    """Reorder every sortable group by descending score (slimmable channel sorting).

    ``within``: reorder only inside the first ``within[g]`` channels of each group (a base
    profile), so that every profile of at least that width keeps its channel set.
    """
    sortable = set(net.sortable_groups())
    perms = {}
    for g, score in scores.items():
        if g not in sortable:
            continue
        n = net.groups[g].size if within is None else within[g]
        head = np.argsort(-score[:n], kind="stable")
        perm = np.concatenate([head, np.arange(n, net.groups[g].size)])
        if not np.array_equal(perm, np.arange(len(perm))):
            perms[g] = perm
        scores[g] = score[perm]
    if perms:
        net.permute_groups(perms)


def _widths_at(net: Supernet, scores: dict[int, np.ndarray], threshold: float, base: Widths) -> Widths:
    widths = list(base)
    for g, score in scores.items():
        if net.groups[g].fixed:
            continue
        keep = int(np.sum(score[:base[g]] >= threshold))
        widths[g] = min(base[g], max(keep, min_width(net.groups[g].size)))
    return tuple(widths)


def threshold_widths(net: Supernet, scores: dict[int, np.ndarray], target: float,
                     base: Widths | None = None) -> tuple[Widths, float]:
    """Widths at the single global threshold whose MACs are the largest not above ``target`` (a
    fraction of the full MACs), starting from ``base`` (default: full width). Scores must be
    sorted (see :func:`sort_by_importance`) for the kept channels to be a prefix."""
    base = net.full_widths if base is None else tuple(base)
    full = net.macs(net.full_widths)
    budget = target * full
    candidates = np.unique(np.concatenate([s[:base[g]] for g, s in scores.items()] + [np.array([np.inf])]))
    lo, hi = 0, len(candidates) - 1  # MACs fall as the threshold index rises
    if fmt.profile_cost(net.meta, list(_widths_at(net, scores, candidates[hi], base)))[0] > budget:
        return _widths_at(net, scores, float(candidates[hi]), base), float(candidates[hi])  # floors only
    while lo < hi:
        mid = (lo + hi) // 2
        if fmt.profile_cost(net.meta, list(_widths_at(net, scores, candidates[mid], base)))[0] <= budget:
            hi = mid
        else:
            lo = mid + 1
    return _widths_at(net, scores, float(candidates[lo]), base), float(candidates[lo])


def prune_profiles(net: Supernet, targets: Sequence[float] = (0.25, 0.5, 0.75), method: str = "bn",
                   batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), multi_base: bool = True,
                   prefix: str = "", names: Sequence[str] | None = None) -> list[PruneResult]:
    """Sort every free group by importance and find per-group widths for each MACs target.

    Replaces the net's named profiles by one per target (named ``<prefix><name>``, the name
    defaulting to the target) plus the full width (``"1.0"``); the new profiles' batch norm needs
    recalibration or training.
    """
    label = dict(zip(targets, names if names is not None else [f"{t:g}" for t in targets]))
    if any(not 0 < t < 1 for t in targets):
        raise ValueError(f"MACs targets must be fractions in (0, 1), got {list(targets)}")
    full = net.macs(net.full_widths)
    results: list[PruneResult] = []
    base: Widths = net.full_widths
    scores = channel_scores(net, method, batches)
    sort_by_importance(net, scores)
    for target in sorted(targets, reverse=True):
        if multi_base and results:
            scores = channel_scores(net, method, batches, profile=base)
            sort_by_importance(net, scores, within=base)
        widths, threshold = threshold_widths(net, scores, target, base if multi_base else None)
        macs = net.macs(widths)
        results.append(PruneResult(f"{prefix}{label[target]}", target, widths, macs, macs / full, threshold))
        base = widths
    results.reverse()
    net.set_profiles([(r.name, r.widths) for r in results] + [("1.0", net.full_widths)])
    return results
