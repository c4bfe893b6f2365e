"""Search under MACs and latency budgets: the latency table, the searches' constraints, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import slimrt
from slimrt import format as fmt
from slimrt import zoo
from slimrt.cli import main
from slimrt.train import Supernet
from slimrt.train.search import (Candidate, Constraint, OpLatencyTable, _op_features, default_settings,
                                 evolutionary_search, pareto_front, prior_population, random_search,
                                 reinforce_search, score)


@pytest.fixture(scope="module")
def net() -> Supernet:
    torch.manual_seed(0)
    return Supernet.from_torch(zoo.resnet_small(10, in_channels=1, widths=(16, 24, 32)), torch.zeros(1, 1, 12, 12),
                               (0.25, 0.5, 1.0)).eval()


@pytest.fixture(scope="module")
def val():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int64)
    return (x, y), [torch.from_numpy(x[:24])]


def test_latency_table_recovers_per_op_costs(net) -> None:
    """Per-op times made from known coefficients are predicted exactly at unseen widths."""
    meta = net.meta
    rng = np.random.default_rng(1)
    truth = {op.name: [rng.uniform(0.001, 0.01), rng.uniform(0, 1e-5), rng.uniform(0, 1e-7)]
             for op in net.ops}
    settings = default_settings(meta, extra_random=10, seed=2)
    op_ms = [{k: float(np.dot(truth[k], f)) for k, f in _op_features(meta, w).items()} for w in settings]
    totals = [sum(d.values()) + 0.05 for d in op_ms]
    table = OpLatencyTable.fit(meta, settings, op_ms, totals)
    assert abs(table.overhead_ms - 0.05) < 1e-6
    for w in default_settings(meta, extra_random=5, seed=9)[6:]:
        want = sum(float(np.dot(truth[k], f)) for k, f in _op_features(meta, w).items()) + 0.05
        assert table.predict(w) == pytest.approx(want, rel=1e-6)


def test_latency_table_measures_the_engine(net) -> None:
    table = OpLatencyTable.measure(net.to_slim(), rounds=3, extra_random=2)
    assert table.predict(net.full_widths) > table.predict(net.widths(0.25)) > 0
    assert set(table.to_json()) == {"threads", "overhead_ms", "fit_error", "coef"}


def test_calibrated_scoring_restores_the_shared_statistics(net, val) -> None:
    before = [bn.running_mean.clone() for bn in net.bn_layers()]
    widths = net.widths(0.6)
    acc = score(net, widths, *val)
    assert 0 <= acc <= 100
    for bn, b in zip(net.bn_layers(), before):
        assert torch.equal(bn.running_mean, b)


@pytest.mark.parametrize("kind", ["macs", "latency_ms"])
def test_searches_respect_the_constraint(net, val, kind: str) -> None:
    full = net.macs(net.full_widths)
    if kind == "macs":
        constraint = Constraint("macs", 0.45 * full, lambda w: float(net.macs(w)))
    else:  # a latency model: cost proportional to MACs plus a constant
        constraint = Constraint("latency_ms", 2.0, lambda w: 0.5 + 3.0 * net.macs(w) / full)
    found = evolutionary_search(net, constraint, *val, population=8, generations=2, parents=3)
    assert found and all(constraint.ok(c.widths) for c in found)
    assert found[0].accuracy == max(c.accuracy for c in found)
    for c in random_search(net, constraint, *val, samples=6):
        assert constraint.ok(c.widths)
        assert all(1 <= w <= g.size for w, g in zip(c.widths, net.groups))


def test_prior_population_takes_the_best_recorded_near_the_budget(net) -> None:
    full = net.macs(net.full_widths)
    constraint = Constraint("macs", 0.5 * full, lambda w: float(net.macs(w)))
    near = [net.widths(m) for m in (0.45, 0.5)]
    samples = [(near[0], 2.0), (near[1], 1.0), (net.full_widths, 0.1), (net.widths(0.25), 0.5)]
    pop = prior_population(net, samples, constraint, 4, np.random.default_rng(0), band=0.5)
    assert pop[0] == near[1] and all(constraint.ok(w) for w in pop)
    assert net.full_widths not in pop


def test_reinforce_moves_towards_the_target(net, val) -> None:
    found = reinforce_search([(net, *val), (net, *val)], 0.4, steps=6, batch=4, penalty=1000.0)
    assert found
    ratios = [c.cost for c in found]
    assert min(abs(r - 0.4) for r in ratios) < 0.2


def test_pareto_front() -> None:
    cs = [Candidate((1,), 1, 1.0, 50.0), Candidate((2,), 2, 2.0, 40.0), Candidate((3,), 3, 3.0, 70.0),
          Candidate((4,), 4, 2.5, 60.0)]
    assert [c.widths for c in pareto_front(cs)] == [(1,), (4,), (3,)]


def test_cli_search_adds_a_profile_within_budget(tmp_path: Path, net) -> None:
    from slimrt.train.datasets import digits

    d = digits()
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(3)
    crop = d.x_train[:160, :, 2:14, 2:14].copy()
    np.savez(npz, x=crop, y=d.y_train[:160], x_test=d.x_test[:40, :, 2:14, 2:14].copy(), y_test=d.y_test[:40])
    model = tmp_path / "m.slim"
    fmt.write(net.to_slim(), model)
    budget = 0.4 * net.macs(net.full_widths)
    out = tmp_path / "s.slim"
    assert main(["search", str(model), "--data", str(npz), "--macs", f"{budget:.0f}", "--population", "6",
                 "--generations", "2", "--pareto", "-o", str(out), "-q"]) == 0
    searched = slimrt.load(out)
    found = [p for p in searched.profiles if p.name.startswith("macs")]
    assert len(found) == 1 and found[0].macs <= budget
    assert (tmp_path / "s.search.json").exists()
    assert rng is not None
