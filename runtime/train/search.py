"""Profiles found by search, under a MACs budget or a latency budget measured on this device.

* :class:`OpLatencyTable`: per-op latency of the engine on this machine (``Session.profile_ops``)
  at a handful of width settings, fitted per op as ``a + b * out_width + c * macs``, so that any
  per-group widths get a predicted latency (Once-for-All's latency lookup table, per op).
* :func:`evolutionary_search` (PSE-Net): mutation and crossover over per-group widths; the first
  population comes from the prior recorded during supernet training (the sampled sub-networks
  with the lowest loss near the budget's cost, see ``History.samples``); candidates are scored on
  a validation split with their own batch-norm statistics (:meth:`Supernet.calibrated`).
* :func:`random_search`: the same constraint and scoring, candidates drawn uniformly.
* :func:`reinforce_search` ("Out-of-the-box channel pruned networks"): a per-group categorical
  policy over width ratios trained with REINFORCE; the reward is accuracy minus a penalty that
  drives the MACs ratio to the target; it can average the reward over several models of one
  architecture (profiles that transfer).

Every function returns :class:`Candidate` objects; :func:`pareto_front` keeps the non-dominated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .. import format as fmt
from .pruning import min_width
from .supernet import Supernet, Widths

__all__ = ["Candidate", "Constraint", "OpLatencyTable", "evolutionary_search", "random_search",
           "reinforce_search", "pareto_front", "score", "with_profiles"]


@dataclass
class Candidate:
    widths: Widths
    macs: int
    cost: float                 # what the constraint measures (MACs, or predicted ms)
    accuracy: float = float("nan")  # validation accuracy, %


@dataclass
class Constraint:
    """``minimum <= cost(widths) <= limit``; ``kind`` is "macs" or "latency_ms". A minimum (e.g.
    97% of the limit) makes a search compare sub-networks of about equal cost."""

    kind: str
    limit: float
    cost: Callable[[Widths], float] = field(repr=False)
    minimum: float = 0.0

    def ok(self, widths: Widths) -> bool:
        return self.minimum <= self.cost(widths) <= self.limit

    def within_limit(self, widths: Widths) -> bool:
        return self.cost(widths) <= self.limit


# -- the latency table -----------------------------------------------------------------------------


def with_profiles(slim: fmt.SlimFile, settings: Sequence[Widths], prefix: str = "s") -> fmt.SlimFile:
    """A copy of ``slim`` whose profiles are ``settings`` (named ``<prefix><index in settings>``,
    listed by cost), without per-profile epilogues: for timing width settings that are not
    profiles of the model. Pass settings sorted by cost to keep indices and names aligned."""
    meta = json.loads(json.dumps(slim.meta))
    tensors = {k: v for k, v in slim.tensors.items() if "@" not in k}
    profiles = []
    for i, w in enumerate(settings):
        macs, params = fmt.profile_cost(meta, list(w), tensor_names=tensors)
        profiles.append({"name": f"{prefix}{i}", "widths": list(w), "macs": macs, "params": params})
    meta["profiles"] = sorted(profiles, key=lambda p: p["macs"])
    return fmt.SlimFile(meta, tensors)


def _op_features(meta: dict[str, Any], widths: Widths) -> dict[str, list[float]]:
    """Per op: [1, active output elements per sample, MACs per sample] at ``widths``."""
    infos = fmt.channel_maps(meta, list(widths))
    out: dict[str, list[float]] = {}
    for op in fmt.parse_ops(meta):
        dst, src = infos[op.output], infos[op.inputs[0]]
        elems = float(np.prod(dst.active_shape[1:]))
        macs = 0.0
        if op.kind == "linear":
            macs = float(src.width * dst.width)
        elif op.kind == "conv":
            pixels = dst.shape[2] * dst.shape[3]
            kh, kw = op.kernel
            kind = fmt.conv_kind(op, src.shape[1])
            per = dst.width if kind == "depthwise" else (
                dst.width * src.shape[1] // op.groups if kind == "grouped" else dst.width * src.width)
            macs = float(pixels * kh * kw * per)
        out[op.name] = [1.0, elems, macs]
    return out


class OpLatencyTable:
    """Predicted engine latency (ms, batch 1) of any per-group widths, from per-op measurements."""

    def __init__(self, meta: dict[str, Any], coef: dict[str, list[float]], overhead_ms: float,
                 threads: int, fit_error: float = float("nan")) -> None:
        self.meta, self.coef, self.overhead_ms, self.threads = meta, coef, overhead_ms, threads
        self.fit_error = fit_error  # median relative error of the whole-run fit on the measured settings

    def predict(self, widths: Widths) -> float:
        feats = _op_features(self.meta, widths)
        total = sum(max(0.0, float(np.dot(self.coef[name], f))) for name, f in feats.items() if name in self.coef)
        return total + self.overhead_ms

    @classmethod
    def fit(cls, meta: dict[str, Any], settings: Sequence[Widths], op_ms: Sequence[dict[str, float]],
            total_ms: Sequence[float], threads: int = 1) -> OpLatencyTable:
        """Fit per-op coefficients to measured per-op times (``op_ms[i]`` at ``settings[i]``) and
        the fixed overhead to the whole runs' ``total_ms``."""
        if len(settings) < 4:
            raise ValueError("the latency table needs at least 4 measured width settings")
        feats = [_op_features(meta, w) for w in settings]
        coef = {}
        for name in feats[0]:
            a = np.array([f[name] for f in feats])
            b = np.array([m.get(name, 0.0) for m in op_ms])
            scale = np.maximum(np.abs(a).max(0), 1e-12)
            sol, *_ = np.linalg.lstsq(a / scale, b, rcond=None)
            coef[name] = (sol / scale).tolist()
        table = cls(meta, coef, 0.0, threads)
        ops_pred = np.array([table.predict(w) for w in settings])
        table.overhead_ms = max(0.0, float(np.median(np.asarray(total_ms) - ops_pred)))
        pred = ops_pred + table.overhead_ms
        table.fit_error = float(np.median(np.abs(pred - np.asarray(total_ms)) / np.asarray(total_ms)))
        return table

    @classmethod
    def measure(cls, slim: fmt.SlimFile, settings: Sequence[Widths] | None = None, *, threads: int = 1,
                rounds: int = 30, seed: int = 0, extra_random: int = 8) -> OpLatencyTable:
        """Time the engine at ``settings`` (default: uniform multipliers 0.25..1 plus
        ``extra_random`` random per-group widths), interleaved, medians of ``rounds``."""
        import slimrt

        if settings is None:
            settings = default_settings(slim.meta, extra_random, seed)
        settings = sorted(dict.fromkeys(tuple(w) for w in settings),  # a model lists profiles by cost
                          key=lambda w: fmt.profile_cost(slim.meta, list(w))[0])
        model = slimrt.load(fmt.to_bytes(with_profiles(slim, settings)))
        session = model.session(threads)
        x = np.random.default_rng(seed).standard_normal((1,) + tuple(slim.meta["input"]["shape"][1:])).astype(np.float32)
        for i in range(len(settings)):
            session.run(x, i)
        per_op: list[dict[str, list[float]]] = [{} for _ in settings]
        totals: list[list[float]] = [[] for _ in settings]
        for _ in range(rounds):
            for i in range(len(settings)):
                t0 = time.perf_counter()
                session.run(x, i)
                totals[i].append((time.perf_counter() - t0) * 1e3)
                for name, sec in session.profile_ops(x, i):
                    per_op[i].setdefault(name, []).append(sec * 1e3)
        op_ms = [{k: float(np.median(v)) for k, v in d.items()} for d in per_op]
        return cls.fit(slim.meta, settings, op_ms, [float(np.median(t)) for t in totals], threads)

    def to_json(self) -> dict[str, Any]:
        return {"threads": self.threads, "overhead_ms": self.overhead_ms, "fit_error": self.fit_error,
                "coef": self.coef}


def default_settings(meta: dict[str, Any], extra_random: int = 8, seed: int = 0) -> list[Widths]:
    groups = fmt.parse_groups(meta)
    low = float(meta.get("min_multiplier", 0.25))
    settings = [tuple(fmt.uniform_widths(meta, m)) for m in np.linspace(low, 1.0, 6)]
    rng = np.random.default_rng(seed)
    for _ in range(extra_random):
        settings.append(tuple(g.size if g.fixed else int(rng.integers(min_width(g.size), g.size + 1))
                              for g in groups))
    return list(dict.fromkeys(settings))


# -- scoring ---------------------------------------------------------------------------------------


@torch.no_grad()
def score(net: Supernet, widths: Widths, val: tuple[np.ndarray, np.ndarray],
          calib: Sequence[torch.Tensor], batch_size: int = 256) -> float:
    """Validation accuracy (%) of ``widths`` with batch-norm statistics calibrated on ``calib``."""
    was = net.training
    net.eval()
    correct = 0
    try:
        with net.calibrated(widths, calib):
            for start in range(0, len(val[0]), batch_size):
                xb = torch.from_numpy(val[0][start:start + batch_size])
                yb = torch.from_numpy(val[1][start:start + batch_size])
                correct += int((net(xb, widths).argmax(1) == yb).sum())
    finally:
        net.train(was)
    return 100.0 * correct / len(val[0])


def _choices(net: Supernet, g: int) -> np.ndarray:
    size = net.groups[g].size
    lo = min_width(size)
    options = sorted({lo, size} | set(range(8 * math.ceil(lo / 8), size, 8)))
    return np.array(options)


def _free(net: Supernet) -> list[int]:
    return [i for i, g in enumerate(net.groups) if not g.fixed]


def _repair(net: Supernet, widths: list[int], constraint: Constraint, rng: np.random.Generator) -> Widths | None:
    """Shrink random groups one step at a time until the constraint holds (None if it cannot)."""
    free = _free(net)
    for _ in range(10000):
        w = tuple(widths)
        if constraint.within_limit(w):
            return w if constraint.ok(w) else None
        shrinkable = [g for g in free if widths[g] > _choices(net, g)[0]]
        if not shrinkable:
            return None
        g = shrinkable[int(rng.integers(len(shrinkable)))]
        opts = _choices(net, g)
        widths[g] = int(opts[opts < widths[g]].max())
    return None


def _snap(net: Supernet, g: int, w: int) -> int:
    opts = _choices(net, g)
    return int(opts[np.abs(opts - w).argmin()])


def _evaluate(net: Supernet, pool: list[Widths], constraint: Constraint, val: Any, calib: Any,
              seen: dict[Widths, Candidate]) -> list[Candidate]:
    out = []
    for w in pool:
        if w not in seen:
            seen[w] = Candidate(w, net.macs(w), float(constraint.cost(w)), score(net, w, val, calib))
        out.append(seen[w])
    return out


def prior_population(net: Supernet, samples: Sequence[tuple[Widths, float]], constraint: Constraint,
                     size: int, rng: np.random.Generator, band: float = 0.15) -> list[Widths]:
    """The recorded sub-networks with the lowest training loss among those costing between
    (1 - band) and 1 times the limit, snapped to the search grid; repaired when over."""
    near = [(loss, w) for w, loss in samples
            if len(w) == len(net.groups) and (1 - band) * constraint.limit <= constraint.cost(tuple(w)) <= constraint.limit]
    near.sort(key=lambda t: t[0])
    population: list[Widths] = []
    for _, w in near:
        snapped = [int(v) if net.groups[g].fixed else _snap(net, g, int(v)) for g, v in enumerate(w)]
        fixed = _repair(net, snapped, constraint, rng)
        if fixed is not None and fixed not in population:
            population.append(fixed)
        if len(population) >= size:
            break
    return population


def _random_widths(net: Supernet, rng: np.random.Generator) -> list[int]:
    return [g.size if g.fixed else int(rng.choice(_choices(net, i))) for i, g in enumerate(net.groups)]


def random_search(net: Supernet, constraint: Constraint, val: Any, calib: Any, samples: int = 64,
                  seed: int = 0) -> list[Candidate]:
    """``samples`` random per-group widths (repaired to the constraint), scored; best first."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(samples * 4):
        w = _repair(net, _random_widths(net, rng), constraint, rng)
        if w is not None and w not in pool:
            pool.append(w)
        if len(pool) >= samples:
            break
    return sorted(_evaluate(net, pool, constraint, val, calib, {}), key=lambda c: -c.accuracy)


def evolutionary_search(net: Supernet, constraint: Constraint, val: Any, calib: Any, *,
                        prior: Sequence[tuple[Widths, float]] = (), population: int = 24, generations: int = 8,
                        parents: int = 8, mutation: float = 0.2, seed: int = 0,
                        log: Callable[[str], None] | None = None) -> list[Candidate]:
    """PSE-Net's prior-guided evolutionary search; returns every scored candidate, best first."""
    rng = np.random.default_rng(seed)
    seen: dict[Widths, Candidate] = {}
    pool = prior_population(net, prior, constraint, population // 2, rng) if prior else []
    while len(pool) < population:
        w = _repair(net, _random_widths(net, rng), constraint, rng)
        if w is None:
            raise ValueError(f"no width setting meets {constraint.kind} <= {constraint.limit:g}, even at the "
                             "smallest widths")
        if w not in pool:
            pool.append(w)
    free = _free(net)
    for gen in range(generations):
        ranked = sorted(_evaluate(net, pool, constraint, val, calib, seen), key=lambda c: -c.accuracy)
        if log:
            log(f"generation {gen + 1}/{generations}: best {ranked[0].accuracy:.2f}% at {constraint.kind} "
                f"{ranked[0].cost:.4g} (limit {constraint.limit:.4g})")
        elite = [c.widths for c in ranked[:parents]]
        children: list[Widths] = list(elite)
        while len(children) < population:
            a = list(elite[int(rng.integers(len(elite)))])
            if rng.random() < 0.5:  # crossover: each group from either parent
                b = elite[int(rng.integers(len(elite)))]
                a = [a[g] if rng.random() < 0.5 else b[g] for g in range(len(a))]
            for g in free:  # mutation: a group moves to another allowed width
                if rng.random() < mutation:
                    a[g] = int(rng.choice(_choices(net, g)))
            w = _repair(net, a, constraint, rng)
            if w is not None and w not in children:
                children.append(w)
        pool = children
    _evaluate(net, pool, constraint, val, calib, seen)
    return sorted(seen.values(), key=lambda c: -c.accuracy)


def reinforce_search(nets: Sequence[tuple[Supernet, Any, Any]], target: float, *, steps: int = 30,
                     batch: int = 8, lr: float = 0.1, penalty: float = 200.0, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> list[Candidate]:
    """Policy-gradient search for one MACs ratio ``target`` over one or several (net, val, calib)
    of one architecture: reward = mean accuracy - penalty * |MACs ratio - target|."""
    net0 = nets[0][0]
    names = [g.name for g in net0.groups]
    for other, _, _ in nets[1:]:
        if [g.name for g in other.groups] != names:
            raise ValueError("reinforce_search: the models do not share one architecture (channel groups differ)")
    rng = torch.Generator().manual_seed(seed)
    free = _free(net0)
    options = {g: _choices(net0, g) for g in free}
    logits = {g: torch.zeros(len(options[g]), requires_grad=True) for g in free}
    opt = torch.optim.Adam(list(logits.values()), lr=lr)
    full = net0.macs(net0.full_widths)
    baseline = None
    seen: dict[Widths, Candidate] = {}
    for step in range(steps):
        logps, rewards = [], []
        for _ in range(batch):
            widths = list(net0.full_widths)
            logp = torch.zeros(())
            for g in free:
                probs = torch.softmax(logits[g], 0)
                k = int(torch.multinomial(probs, 1, generator=rng))
                widths[g] = int(options[g][k])
                logp = logp + torch.log(probs[k])
            w = tuple(widths)
            if w not in seen:
                acc = float(np.mean([score(n, w, val, calib) for n, val, calib in nets]))
                seen[w] = Candidate(w, net0.macs(w), net0.macs(w) / full, acc)
            c = seen[w]
            rewards.append(c.accuracy - penalty * abs(c.cost - target))
            logps.append(logp)
        r = torch.tensor(rewards)
        baseline = float(r.mean()) if baseline is None else 0.8 * baseline + 0.2 * float(r.mean())
        loss = -(torch.stack(logps) * (r - baseline)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step + 1) % 10 == 0:
            best = max(seen.values(), key=lambda c: c.accuracy - penalty * abs(c.cost - target))
            log(f"step {step + 1}/{steps}: best {best.accuracy:.2f}% at MACs ratio {best.cost:.3f}")
    return sorted(seen.values(), key=lambda c: -(c.accuracy - penalty * abs(c.cost - target)))


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both cost and accuracy, cheapest first."""
    front = [c for c in candidates
             if not any(o.cost <= c.cost and o.accuracy >= c.accuracy and (o.cost < c.cost or o.accuracy > c.accuracy)
                        for o in candidates)]
    unique = {c.widths: c for c in front}
    return sorted(unique.values(), key=lambda c: c.cost)


def candidate_json(c: Candidate) -> dict[str, Any]:
    d = asdict(c)
    d["widths"] = list(c.widths)
    return d
