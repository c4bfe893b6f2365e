"""slimrt.control: monitors, latency table and policies on scripted readings (no timing)."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimrt.control import (BudgetPolicy, Controller, FeedbackPolicy, FixedPolicy, GatePolicy, LatencyTable,
                            Level, ManualMonitor, MinPolicy, Outcome, Request, ResourceMonitor,
                            ResourcePolicy, ResourceSample, Threshold, make_policy, read_sample)
from slimrt.control.latency import cache_key, calibrate, load_or_calibrate, quantile

NAMES = ("0.25", "0.5", "0.75", "1.0")
MEANS = (2.0, 4.0, 7.0, 11.0)
TAILS = (2.5, 5.0, 8.5, 13.0)
MACS = (1e6, 2.2e6, 4e6, 6.5e6)


def table(**kw) -> LatencyTable:
    return LatencyTable(NAMES, MEANS, TAILS, **kw)


# ---------------------------------------------------------------------------- monitors

class TestMonitors:
    def test_read_sample_is_consistent_with_the_os(self):
        s = read_sample()
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert 0 < s.memory_available_bytes <= total
        assert 0 <= s.memory_available_percent <= 100
        assert 0 <= s.cpu_percent <= 100
        assert s.load_per_cpu == pytest.approx(os.getloadavg()[0] / os.cpu_count(), abs=0.5)

    def test_background_thread_publishes_samples_and_stops(self):
        got = threading.Event()
        monitor = ResourceMonitor(period_s=0.01)
        assert monitor.latest().cpu_percent is None  # before the first sample
        with monitor:
            for _ in range(500):
                if monitor.latest().cpu_percent is not None:
                    got.set()
                    break
                got.wait(0.01)
            thread = monitor._thread
        assert got.is_set()
        assert thread is not None and not thread.is_alive()
        assert monitor.latest().process_cpu_percent is not None

    def test_bad_period(self):
        with pytest.raises(ValueError, match="period_s"):
            ResourceMonitor(period_s=0)

    def test_manual_monitor_and_external_cpu(self):
        m = ManualMonitor(cpu_percent=80.0, process_cpu_percent=30.0)
        assert m.latest().external_cpu_percent == pytest.approx(50.0)
        m.set(process_cpu_percent=90.0)
        assert m.latest().external_cpu_percent == 0.0
        assert m.latest().signal("battery_percent") is None
        with pytest.raises(KeyError, match="known"):
            m.latest().signal("gpu_percent")


# ---------------------------------------------------------------------------- latency table

class TestLatencyTable:
    @settings(derandomize=True, max_examples=60, deadline=None)
    @given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=50),
           st.floats(0.01, 0.99))
    def test_quantile_matches_numpy(self, values, q):
        assert quantile(values, q) == pytest.approx(np.quantile(values, q), rel=1e-9, abs=1e-9)

    def test_predictions_before_observations_are_the_calibration(self):
        t = table()
        for i, (mean, tail) in enumerate(zip(MEANS, TAILS)):
            assert t.predict(i).mean_ms == mean and t.predict(NAMES[i]).tail_ms == tail

    def test_slowdown_is_an_ewma_of_observed_over_calibrated(self):
        rng = np.random.default_rng(0)
        t = table(alpha=0.2)
        expected = 1.0
        for _ in range(40):
            i = int(rng.integers(len(NAMES)))
            ms = float(MEANS[i] * rng.uniform(0.8, 3.0))
            t.observe(i, ms)
            expected = 0.8 * expected + 0.2 * ms / MEANS[i]
        assert t.slowdown == pytest.approx(expected)
        assert t.predict(3).mean_ms == pytest.approx(MEANS[3] * expected)

    def test_tail_is_mean_plus_recent_jitter_on_every_profile(self):
        rng = np.random.default_rng(1)
        t = table(window=32, quantile=0.9, alpha=0.2)
        slowdown, residuals = 1.0, []
        for _ in range(100):  # contention seen only on the cheapest profile
            ms = float(MEANS[0] * rng.uniform(1.5, 2.5) + rng.exponential(1.0))
            t.observe(0, ms)
            residuals.append(ms - MEANS[0] * slowdown)
            slowdown += 0.2 * (ms / MEANS[0] - slowdown)
        jitter = np.quantile(residuals[-32:], 0.9)
        assert t.jitter_ms == pytest.approx(jitter)
        for i in range(len(NAMES)):
            p = t.predict(i)
            assert p.mean_ms == pytest.approx(MEANS[i] * slowdown)
            assert p.tail_ms == pytest.approx(max(MEANS[i] * slowdown + jitter, p.mean_ms))

    def test_few_observations_never_lower_the_calibrated_tail(self):
        t = table(min_tail_samples=16)
        t.observe(3, MEANS[3])
        assert t.predict(3).tail_ms == pytest.approx(TAILS[3] * t.slowdown)

    def test_overhead_is_a_quantile_of_recent_observations(self):
        rng = np.random.default_rng(5)
        t = table(window=16, quantile=0.9)
        assert t.overhead_ms == 0.0
        values = rng.exponential(2.0, size=40)
        for v in values:
            t.observe_overhead(float(v))
        assert t.overhead_ms == pytest.approx(np.quantile(values[-16:], 0.9))
        with pytest.raises(ValueError, match="overhead"):
            t.observe_overhead(-1.0)

    def test_observed_mean_per_profile(self):
        t = table(alpha=0.5)
        for ms in (10.0, 20.0):
            t.observe("0.5", ms)
        row = t.snapshot()[1]
        assert row["observed_mean_ms"] == pytest.approx(15.0) and row["observed_count"] == 2
        assert t.snapshot()[0]["observed_count"] == 0

    @pytest.mark.parametrize("args, match", [
        ((NAMES, MEANS[:3], TAILS), "one mean and one tail"),
        ((NAMES, MEANS, (1.0, 5.0, 8.5, 13.0)), "mean <= tail"),
        ((NAMES, (0.0, 4.0, 7.0, 11.0), None), "0 < mean"),
    ])
    def test_invalid_tables(self, args, match):
        with pytest.raises(ValueError, match=match):
            LatencyTable(*args)

    def test_bad_observations_and_profiles(self):
        t = table()
        with pytest.raises(ValueError, match="finite"):
            t.observe(0, float("nan"))
        with pytest.raises(KeyError, match="not in the latency table"):
            t.predict("2.0")
        with pytest.raises(IndexError):
            t.predict(4)

    def test_calibrated_batches_extend_the_points(self):
        t = table(macs=MACS, batch_ms={4: (60.0, 70.0)})  # 4 x full costs 60, not 44
        assert t.calibrated_at(4 * MACS[3]).mean_ms == pytest.approx(60.0)
        assert t.calibrated_at(2.5 * MACS[3]).mean_ms == pytest.approx((MEANS[3] + 60.0) / 2)
        assert t.calibrated_at(8 * MACS[3]).mean_ms == pytest.approx(120.0)
        t.observe(3, 60.0, macs=4 * MACS[3])
        assert t.slowdown == pytest.approx(1.0)
        with pytest.raises(ValueError, match="batch >= 2"):
            table(macs=MACS, batch_ms={1: (1.0, 2.0)})

    def test_costs_between_and_beyond_profiles_are_predicted_from_their_macs(self):
        t = table(macs=MACS)
        for i in range(len(NAMES)):  # a calibrated profile's own cost predicts its calibration
            assert t.predict_macs(MACS[i]) == t.predict(i)
        mid = (MACS[1] + MACS[2]) / 2  # half way between two profiles: half way in latency
        assert t.predict_macs(mid).mean_ms == pytest.approx((MEANS[1] + MEANS[2]) / 2)
        assert t.predict_macs(mid).tail_ms == pytest.approx((TAILS[1] + TAILS[2]) / 2)
        big = t.predict_macs(8 * MACS[3])  # a batch of 8 at full width: 8 full-width runs
        assert big.mean_ms == pytest.approx(8 * MEANS[3]) and big.tail_ms == pytest.approx(
            8 * TAILS[3])
        assert t.predict_macs(MACS[0] / 2).mean_ms == pytest.approx(MEANS[0] / 2)
        with pytest.raises(ValueError, match="no MACs"):
            table().predict_macs(MACS[0])
        with pytest.raises(ValueError, match="one positive MACs"):
            table(macs=MACS[:3])

    def test_a_large_run_at_its_expected_latency_does_not_move_the_predictions(self):
        t = table(macs=MACS, alpha=0.5, window=8, min_tail_samples=1)
        for _ in range(4):
            t.observe(3, MEANS[3])
        before = t.predict(0)
        for _ in range(4):  # batch 32 at full width, as calibrated
            t.observe(3, 32 * MEANS[3], macs=32 * MACS[3])
        assert t.slowdown == pytest.approx(1.0) and t.predict(0) == before
        assert t.snapshot()[3]["observed_count"] == 4  # only runs at the calibrated cost
        t.observe(None, 64 * MEANS[3], macs=32 * MACS[3])  # twice as slow as predicted
        assert t.slowdown == pytest.approx(1.5)
        # its residual counts at the size of one full-width sample, not 32 of them
        assert t.jitter_ms <= MEANS[3] * 2
        with pytest.raises(ValueError, match="profile a run used, or its MACs"):
            t.observe(None, 1.0)

    def test_json_round_trip(self):
        again = LatencyTable.from_json(table().to_json())
        assert again.names == NAMES and again.base_tail_ms == TAILS
        with pytest.raises(ValueError, match="malformed"):
            LatencyTable.from_json({"names": NAMES})


# ---------------------------------------------------------------------------- calibration

@pytest.fixture(scope="module")
def tiny_model():
    import slimrt
    from slimrt.format import to_bytes
    from slimrt.models import tiny_resnet
    return slimrt.load(to_bytes(tiny_resnet(seed=0)))


class TestCalibration:
    def test_calibrate_measures_every_profile(self, tiny_model):
        t = calibrate(tiny_model, warmup=1, repeats=3)
        assert t.names == tuple(p.name for p in tiny_model.profiles)
        assert all(0 < m <= tl for m, tl in zip(t.base_mean_ms, t.base_tail_ms))
        assert t.macs == tuple(float(p.macs) for p in tiny_model.profiles)

    def test_calibrate_large_batches_at_the_top_profile(self, tiny_model):
        t = calibrate(tiny_model, warmup=0, repeats=2, batches=(1, 4, 4, 8))
        assert sorted(t.batch_ms) == [4, 8]
        top = tiny_model.profiles[-1].macs
        for b, (mean, tail) in t.batch_ms.items():
            assert t.calibrated_at(b * top).mean_ms == pytest.approx(mean)
            assert t.calibrated_at(b * top).tail_ms == pytest.approx(tail)
        again = LatencyTable.from_json(t.to_json(), macs=t.macs)
        assert again.batch_ms == t.batch_ms
        assert again.calibrated_at(6 * top).mean_ms == pytest.approx(
            (t.batch_ms[4][0] + t.batch_ms[8][0]) / 2)

    def test_calibrate_at_another_input_size(self, tiny_model):
        t = calibrate(tiny_model, warmup=0, repeats=1, input_hw=(64, 48))
        assert t.macs == tuple(float(tiny_model.macs(p, (64, 48))) for p in tiny_model.profiles)

    def test_cache_is_keyed_and_reused(self, tiny_model, tmp_path, monkeypatch):
        first = load_or_calibrate(tiny_model, cache_dir=tmp_path, warmup=0, repeats=2)
        assert len(list(tmp_path.iterdir())) == 1

        def no_calibration(*a, **k):
            raise AssertionError("the cached table should have been used")
        monkeypatch.setattr("slimrt.control.latency.calibrate", no_calibration)
        again = load_or_calibrate(tiny_model, cache_dir=tmp_path)
        assert again.base_mean_ms == first.base_mean_ms
        assert cache_key(tiny_model, 1) != cache_key(tiny_model, 2)

    def test_corrupt_cache_is_recalibrated(self, tiny_model, tmp_path):
        load_or_calibrate(tiny_model, cache_dir=tmp_path, warmup=0, repeats=1)
        (path,) = tmp_path.iterdir()
        path.write_text("{not json")
        t = load_or_calibrate(tiny_model, cache_dir=tmp_path, warmup=0, repeats=1)
        assert len(t.names) == len(tiny_model.profiles)


# ---------------------------------------------------------------------------- policies

class TestFixedPolicy:
    @pytest.mark.parametrize("key, index", [("0.5", 1), (0, 0), (-1, 3)])
    def test_fixed(self, key, index):
        d = FixedPolicy(NAMES, key).decide(Request(budget_ms=1.0, queued_ms=100.0))
        assert (d.index, d.profile, d.policy) == (index, NAMES[index], "fixed")

    def test_unknown_profile(self):
        with pytest.raises(KeyError, match="unknown profile '2.0'"):
            FixedPolicy(NAMES, "2.0")


CPU = Threshold("external_cpu_percent", (Level(50, 35, -2), Level(75, 60, "0.5"),
                                         Level(90, 80, 0)))


class TestResourcePolicy:
    def run(self, policy, monitor, **readings):
        (name, values), = readings.items()
        out = []
        for v in values:
            monitor.set(**{name: v})
            out.append(policy.decide(Request()).index)
        return out

    def test_cpu_levels_with_hysteresis(self):
        monitor = ManualMonitor(process_cpu_percent=0.0)
        policy = ResourcePolicy(NAMES, monitor, [CPU])
        readings = [10, 55, 40, 30, 80, 65, 55, 95, 85, 79, 20]
        # enter 50 -> cap 2; stays until < 35; enter 75 -> cap 1, leaves below 60 to level 1;
        # enter 90 -> cap 0, leaves below 80
        expected = [3, 2, 2, 3, 1, 1, 2, 0, 0, 1, 3]
        assert self.run(policy, monitor, cpu_percent=readings) == expected

    def test_decision_records_the_signals(self):
        monitor = ManualMonitor(cpu_percent=77.0, process_cpu_percent=1.0, temperature_c=50.0)
        d = ResourcePolicy(NAMES, monitor).decide(Request())
        assert d.signals["external_cpu_percent"] == pytest.approx(76.0)
        assert d.signals["external_cpu_percent_level"] == 2
        assert d.signals["temperature_c"] == 50.0 and d.signals["temperature_c_level"] == 0
        assert d.reason == "external_cpu_percent at level 2"

    def test_missing_signals_impose_no_cap(self):
        assert ResourcePolicy(NAMES, ManualMonitor()).decide(Request()).index == 3

    def test_battery_counts_only_when_unplugged(self):
        monitor = ManualMonitor(battery_percent=10.0, power_plugged=True)
        policy = ResourcePolicy(NAMES, monitor)
        assert policy.decide(Request()).index == 3
        monitor.set(power_plugged=False)
        assert policy.decide(Request()).index == 0
        monitor.set(battery_percent=18.0)  # above 15 but below the exit at 20: stays severe
        assert policy.decide(Request()).index == 0
        monitor.set(battery_percent=25.0)
        assert policy.decide(Request()).index == (len(NAMES) - 1) // 2

    def test_memory_and_temperature(self):
        mid = (len(NAMES) - 1) // 2
        monitor = ManualMonitor(memory_available_percent=9.0)
        policy = ResourcePolicy(NAMES, monitor)
        assert policy.decide(Request()).index == mid
        monitor.set(memory_available_percent=50.0, temperature_c=92.0)
        assert policy.decide(Request()).index == 0

    def test_strictest_threshold_wins(self):
        monitor = ManualMonitor(cpu_percent=55.0, process_cpu_percent=0.0, temperature_c=81.0)
        d = ResourcePolicy(NAMES, monitor).decide(Request())
        assert d.index == 1 and d.reason.startswith("temperature_c")

    @pytest.mark.parametrize("kwargs, match", [
        (dict(signal="cpu_percent", levels=(Level(50, 60, 0),)), "hysteresis"),
        (dict(signal="battery_percent", levels=(Level(30, 20, 0),), below=True), "hysteresis"),
        (dict(signal="cpu_percent", levels=(Level(80, 70, 1), Level(60, 50, 0))), "ordered"),
        (dict(signal="gpu_percent", levels=(Level(80, 70, 1),)), "known"),
        (dict(signal="cpu_percent", levels=()), "no levels"),
    ])
    def test_invalid_thresholds(self, kwargs, match):
        with pytest.raises((ValueError, KeyError), match=match):
            Threshold(**kwargs)


def fits_oracle(budget, queued, margin, margin_ms, tails, waiting=0, workers=1) -> int:
    slack = budget - queued - margin_ms
    rounds = -(-(1 + waiting) // workers)
    ok = np.nonzero(rounds * np.asarray(tails) * (1 + margin) <= slack)[0]
    return int(ok.max()) if ok.size else 0


class TestBudgetPolicy:
    @settings(derandomize=True, max_examples=300, deadline=None)
    @given(budget=st.floats(0.5, 80), queued=st.floats(0, 30), margin=st.floats(0, 0.5),
           margin_ms=st.floats(0, 3), waiting=st.integers(0, 6), workers=st.integers(1, 3))
    def test_largest_profile_that_fits(self, budget, queued, margin, margin_ms, waiting,
                                       workers):
        policy = BudgetPolicy(NAMES, table(), budget_ms=1000.0, margin=margin, margin_ms=margin_ms)
        d = policy.decide(Request(budget_ms=budget, queued_ms=queued, waiting=waiting,
                                  workers=workers))
        assert d.index == fits_oracle(budget, queued, margin, margin_ms, TAILS, waiting, workers)
        assert d.signals["slack_ms"] == pytest.approx(budget - queued - margin_ms)
        assert d.signals["waiting"] == waiting

    def test_a_backlog_must_drain_within_the_deadline(self):
        policy = BudgetPolicy(NAMES, table(), budget_ms=30.0, margin=0.0)
        # alone: the full profile (tail 13 ms) fits 30 ms
        assert policy.decide(Request(workers=2)).index == 3
        # 3 waiting on 2 workers: two rounds of 13 ms still fit, three of 8.5 would too
        assert policy.decide(Request(waiting=3, workers=2)).index == 3
        # 5 waiting on 2 workers: three rounds; 3 x 13 > 30 but 3 x 8.5 fits
        assert policy.decide(Request(waiting=5, workers=2)).index == 2
        # 11 waiting on 2 workers: six rounds; only 6 x 2.5 and 6 x 5 fit
        assert policy.decide(Request(waiting=11, workers=2)).index == 1

    def test_overhead_after_inference_is_reserved(self):
        t = table(window=4, quantile=0.5)
        policy = BudgetPolicy(NAMES, t, budget_ms=15.0, margin=0.1)
        assert policy.decide(Request()).index == 3
        for _ in range(4):
            t.observe_overhead(3.0)
        d = policy.decide(Request())
        assert d.index == fits_oracle(15.0 - 3.0, 0, 0.1, 0, TAILS)
        assert d.signals["overhead_ms"] == 3.0 and d.signals["slack_ms"] == 12.0

    def test_default_budget_and_queueing(self):
        policy = BudgetPolicy(NAMES, table(), budget_ms=15.0, margin=0.1)
        assert policy.decide(Request()).index == 3
        assert policy.decide(Request(queued_ms=4.0)).index == 2
        d = policy.decide(Request(queued_ms=14.0))
        assert d.index == 0 and "no profile fits" in d.reason

    def test_mean_estimate(self):
        policy = BudgetPolicy(NAMES, table(), budget_ms=12.0, margin=0.0, estimate="mean")
        assert policy.decide(Request()).index == 3
        policy = BudgetPolicy(NAMES, table(), budget_ms=12.0, margin=0.0)
        assert policy.decide(Request()).index == 2

    def test_follows_contention_seen_in_the_table(self):
        # alpha=1 and steady observations: the window holds no jitter, predictions are exact
        t = table(window=20, min_tail_samples=5, alpha=1.0)
        policy = BudgetPolicy(NAMES, t, budget_ms=15.0, margin=0.0)
        for _ in range(25):
            t.observe(0, MEANS[0] * 2.0)  # the machine became twice as slow
        assert policy.decide(Request()).index == fits_oracle(15.0, 0, 0, 0, np.array(MEANS) * 2.0)
        for _ in range(25):
            t.observe(1, MEANS[1])  # and recovered
        assert policy.decide(Request()).index == fits_oracle(15.0, 0, 0, 0, MEANS) == 3

    def test_without_a_budget_the_largest_profile_runs(self):
        policy = BudgetPolicy(NAMES, table())
        d = policy.decide(Request(queued_ms=50.0, waiting=9))
        assert d.index == 3 and d.reason == "no budget: largest profile"
        assert policy.decide(Request(budget_ms=6.0)).index == 1  # a request's own budget

    def test_the_request_cost_is_predicted(self):
        policy = BudgetPolicy(NAMES, table(macs=MACS), budget_ms=30.0, margin=0.0)
        assert policy.decide(Request(cost=MACS)).index == 3
        # a batch of 4: predicted from its MACs (beyond the full profile: in proportion to
        # them), 4 x "0.75" misses 30 ms and 4 x "0.5" fits
        d = policy.decide(Request(cost=[4 * m for m in MACS]))
        assert TAILS[3] * 4 * MACS[2] / MACS[3] > 30.0 >= TAILS[3] * 4 * MACS[1] / MACS[3]
        assert d.index == 1
        assert d.signals["predicted_ms"] == pytest.approx(TAILS[3] * 4 * MACS[1] / MACS[3])

    @pytest.mark.parametrize("kwargs, match", [
        (dict(budget_ms=0.0), "budget"), (dict(budget_ms=float("inf")), "budget"),
        (dict(budget_ms=5.0, margin=-1.0), "margins"),
        (dict(budget_ms=5.0, estimate="p99"), "estimate"),
    ])
    def test_invalid(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            BudgetPolicy(NAMES, table(), **kwargs)

    def test_table_must_match_profiles(self):
        with pytest.raises(ValueError, match="differ"):
            BudgetPolicy(NAMES[:3], LatencyTable(("a", "b", "c"), (1, 2, 3)), budget_ms=5.0)


class TestFeedbackPolicy:
    def feed(self, policy, totals, index=None):
        for ms in totals:
            policy.observe(Outcome(policy.level if index is None else index, ms, ms))

    def test_multiplicative_decrease_additive_increase(self):
        p = FeedbackPolicy(NAMES, target_ms=10.0, window=10, quantile=0.9, slack=0.7)
        assert p.decide(Request()).index == 3
        self.feed(p, [5.0] * 8 + [12.0])  # one miss in 10 is within the 90th percentile
        assert p.level == 3
        self.feed(p, [12.0])  # the second miss: the tail is over the target
        assert p.level == 1 and "down from 1.0" in p.decide(Request()).reason
        self.feed(p, [6.0] * 9)
        assert p.level == 1  # no full window yet
        self.feed(p, [6.0])
        assert p.level == 2 and "up from 0.5" in p.decide(Request()).reason

    def test_dead_band_holds_the_level(self):
        p = FeedbackPolicy(NAMES, target_ms=10.0, window=5, slack=0.7, start=2)
        self.feed(p, [8.0] * 50)  # between 7 and 10 ms: neither slack nor over target
        assert p.level == 2
        d = p.decide(Request())
        assert d.signals["observed_tail_ms"] == pytest.approx(8.0) and d.signals["observed"] == 5

    def test_outcomes_above_the_level_are_ignored(self):
        p = FeedbackPolicy(NAMES, target_ms=10.0, window=4, start=1)
        self.feed(p, [50.0] * 10, index=3)
        assert p.level == 1
        self.feed(p, [50.0] * 2, index=0)
        assert p.level == 0

    def test_invalid(self):
        with pytest.raises(ValueError, match="window"):
            FeedbackPolicy(NAMES, target_ms=10.0, window=0)
        with pytest.raises(ValueError, match="budget"):
            FeedbackPolicy(NAMES, target_ms=-1.0)


class TestMinPolicy:
    def test_minimum_of_caps_with_signals(self):
        monitor = ManualMonitor(cpu_percent=80.0, process_cpu_percent=0.0)
        budget = BudgetPolicy(NAMES, table(), budget_ms=9.0, margin=0.0)
        policy = MinPolicy([budget, ResourcePolicy(NAMES, monitor)])
        d = policy.decide(Request())
        assert d.index == 1 and d.reason.startswith("resource:")
        assert d.signals["budget.choice"] == "0.75" and d.signals["resource.choice"] == "0.5"
        monitor.set(cpu_percent=0.0)
        assert policy.decide(Request()).reason.startswith("budget:")

    def test_observe_reaches_every_policy(self):
        fb = FeedbackPolicy(NAMES, target_ms=10.0, window=2)
        policy = MinPolicy([FixedPolicy(NAMES), fb])
        for _ in range(2):
            policy.observe(Outcome(3, 30.0, 30.0))
        assert policy.decide(Request()).index == fb.level == 1

    def test_profiles_must_agree(self):
        with pytest.raises(ValueError, match="disagree"):
            MinPolicy([FixedPolicy(NAMES), FixedPolicy(NAMES[:2])])


class TestGatePolicy:
    def test_without_a_cap_the_gate_chooses_freely(self):
        d = GatePolicy(NAMES).decide(Request(budget_ms=1.0))
        assert d.gate and d.index == 3 and d.profile == "1.0" and d.policy == "gate"
        assert d.as_dict()["gate"] == {"cap": "1.0", "choices": None}

    def test_the_cap_is_the_other_policys_choice_before_the_run(self):
        policy = GatePolicy(NAMES, BudgetPolicy(NAMES, table(), budget_ms=8.0, margin=0.0))
        d = policy.decide(Request())
        assert d.gate and d.index == 1 and d.signals["cap"] == "0.5"  # tail 5.0 fits 8 ms, 8.5 does not
        assert "at most 0.5" in d.reason and "budget" in d.reason
        assert policy.decide(Request(budget_ms=100.0)).index == 3
        assert policy.decide(Request(budget_ms=0.1)).index == 0
        capped = GatePolicy(NAMES, MinPolicy([FixedPolicy(NAMES, "0.75"), BudgetPolicy(NAMES, table())]))
        assert capped.decide(Request()).index == 2

    def test_outcomes_reach_the_cap_and_the_names_must_agree(self):
        fb = FeedbackPolicy(NAMES, target_ms=10.0, window=2)
        policy = GatePolicy(NAMES, fb)
        for _ in range(2):
            policy.observe(Outcome(policy.decide(Request()).index, 30.0, 30.0))
        assert fb.level < 3 and policy.decide(Request()).index == fb.level
        with pytest.raises(ValueError, match="differ"):
            GatePolicy(NAMES, FixedPolicy(NAMES[:2]))

    def test_make_policy_and_the_controller(self):
        assert make_policy("gate", NAMES).cap is None
        p = make_policy("gate", NAMES, table=table(), budget_ms=6.0)
        assert isinstance(p.cap, BudgetPolicy) and p.decide(Request()).index == 1
        with pytest.raises(ValueError, match="needs a latency table"):
            make_policy("gate", NAMES, budget_ms=6.0)
        t = table(macs=MACS, alpha=1.0)
        c = Controller(p, t)
        from dataclasses import replace

        d = replace(c.decide(Request()), choices=("0.25", "0.5"))
        c.observe(d, service_ms=2 * t.calibrated_at(1.6e6).mean_ms, total_ms=9.0, macs=1.6e6)
        assert t.slowdown == pytest.approx(2.0)  # learnt from the MACs of the images' choices
        assert [r["observed_count"] for r in t.snapshot()] == [0, 0, 0, 0]
        assert c.log()[-1].decision.as_dict()["gate"] == {"cap": "0.5", "choices": ["0.25", "0.5"]}


class TestControllerAndFactory:
    def test_controller_feeds_table_and_logs(self):
        t = table()
        fb = FeedbackPolicy(NAMES, target_ms=10.0, window=3)
        c = Controller(MinPolicy([BudgetPolicy(NAMES, t, budget_ms=20.0), fb]), t, log_size=2)
        for ms in (30.0, 30.0, 30.0):
            d = c.decide(Request())
            c.observe(d, service_ms=ms / 3, total_ms=ms)
        assert t.slowdown != 1.0 and fb.level < 3
        log = c.log()
        assert len(log) == 2 and log[-1].outcome.total_ms == 30.0

    @pytest.mark.parametrize("kind", ["budget", "fixed", "resource", "feedback", "adaptive", "gate"])
    def test_make_policy(self, kind):
        p = make_policy(kind, NAMES, table=table(), monitor=ManualMonitor(), budget_ms=20.0)
        assert p.decide(Request()).profile in NAMES

    def test_make_policy_errors(self):
        with pytest.raises(ValueError, match="needs a latency table"):
            make_policy("budget", NAMES, budget_ms=5.0)
        with pytest.raises(ValueError, match="unknown policy"):
            make_policy("random", NAMES)
        with pytest.raises(ValueError, match="needs a target"):
            make_policy("feedback", NAMES)

    @pytest.mark.parametrize("kind", ["budget", "adaptive"])
    def test_budget_policies_need_no_default_budget(self, kind):
        p = make_policy(kind, NAMES, table=table(), monitor=ManualMonitor())
        assert p.decide(Request()).index == 3
        assert p.decide(Request(budget_ms=3.0)).index == 0

    def test_controller_observes_multiplier_runs_by_their_macs(self):
        from slimrt.control import Decision
        t = table(macs=MACS, alpha=1.0)
        c = Controller(FixedPolicy(NAMES), t)
        d = Decision(-1, "0.6x", "request", "multiplier requested", multiplier=0.6)
        assert d.run_key == 0.6 and d.as_dict()["multiplier"] == 0.6
        c.observe(d, service_ms=2 * t.calibrated_at(3e6).mean_ms, total_ms=9.0, macs=3e6)
        assert t.slowdown == pytest.approx(2.0)
        assert [r["observed_count"] for r in t.snapshot()] == [0, 0, 0, 0]
        c.observe(d, service_ms=1.0, total_ms=1.0)  # without its MACs: nothing to learn
        assert t.slowdown == pytest.approx(2.0) and len(c.log()) == 2


def test_sample_dict_is_plain():
    d = ResourceSample(cpu_percent=1.0).as_dict()
    assert d["cpu_percent"] == 1.0 and d["battery_percent"] is None and "time" in d


# ---------------------------------------------------------------------------- demo stream

def test_stream_demo_summary_is_consistent(tiny_model):
    from rich.console import Console

    from slimrt.control.demo import run_stream_demo
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    out = run_stream_demo(tiny_model, seconds=1.5, budget_ms=50.0, console=console,
                          hog_procs=1, seed=3)
    phases = out["phases"]
    assert set(phases) == {"calm", "contention", "recovery"}
    assert sum(p["requests"] for p in phases.values()) == out["overall"]["requests"] > 0
    answered = out["overall"]["requests"] - out["overall"]["refused"]
    assert sum(out["profiles"].values()) == answered
    assert set(out["profiles"]) == {p.name for p in tiny_model.profiles}
    assert 0.0 <= out["overall"]["within_budget"] <= 1.0
    assert 0.0 < out["overall"]["avg_width"] <= 1.0
    assert out["budget_ms"] == 50.0 and out["hog"]["procs"] == 1
    text = console.file.getvalue()
    assert "width = MACs / full profile" in text
    assert "stream: policy budget, budget 50.0 ms per request" in text
    assert "1 busy process pinned to CPU" in text or "1 busy process unpinned" in text
    rows = [line for line in text.splitlines() if line.split()[:1] in (["calm"], ["CPU"],
                                                                         ["recovery"])]
    assert [r.split()[0] for r in rows[-3:]] == ["calm", "CPU", "recovery"]
    for row, key in zip(rows[-3:], ("calm", "contention", "recovery")):
        phase = phases[key]
        assert f"{100 * phase['within_budget']:.1f}%" in row  # the share within budget
        if phase["most_chosen"] is not None:
            assert phase["most_chosen"] in row and f"{100 * phase['avg_width']:.0f}%" in row


def test_stream_demo_at_another_input_size(tiny_model):
    from slimrt.control.demo import run_stream_demo
    out = run_stream_demo(tiny_model, seconds=0.6, budget_ms=80.0, hog_procs=1, seed=4,
                          input_hw=(48, 40), console=None)
    assert out["input_shape"] == [1, tiny_model.input_shape[1], 48, 40]
    assert sum(out["profiles"].values()) == out["overall"]["requests"] - out["overall"]["refused"]


def test_cpu_hog_starts_and_stops_its_own_processes():
    from slimrt.control.stress import CpuHog
    hog = CpuHog(procs=2, seconds=30)
    with hog:
        pids = [p.pid for p in hog._children]
        assert hog.running and hog.started and len(set(pids)) == 2
    assert not hog.running and not hog.started
    with pytest.raises(ValueError, match="procs"):
        CpuHog(procs=0)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity")
def test_cpu_hog_contends_for_every_cpu_the_engine_runs_on():
    from slimrt.control.stress import CpuHog, engine_cpus
    cpus = engine_cpus()
    assert cpus == sorted(os.sched_getaffinity(0))
    hog = CpuHog(seconds=30)
    assert hog.procs == len(cpus) and hog.pinned == cpus
    with hog:
        assert [os.sched_getaffinity(p.pid) for p in hog._children] == [{c} for c in cpus]
