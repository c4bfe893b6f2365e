"""The benchmark suite (bench/): each benchmark's core function on a tiny model, a couple of rounds.

These are smoke tests of structure and arithmetic, never of speed: no assertion depends on how
fast anything ran. Derived figures (ratios, GFLOP/s, overheads, verdicts) are recomputed here
from the raw figures each result carries; slimrt's outputs are checked against onnxruntime by
the latency benchmark itself (its ``agree`` field) and against onnxruntime here as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import gate  # noqa: E402
import latency  # noqa: E402
import memory  # noqa: E402
import peak  # noqa: E402
import run_all  # noqa: E402
import switch  # noqa: E402
from common import Timing  # noqa: E402

from slimrt.models import tiny_resnet  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = Timing(rounds=2, warmup=1, seed=3, gap_ms=0.0, max_seconds=None, min_rounds=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> common.BenchModel:
    return common.prepare(tiny_resnet(seed=1), "tiny_resnet", tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def latency_result(tiny: common.BenchModel) -> common.Result:
    return latency.run([tiny], [1], FAST)


@pytest.fixture(scope="module")
def switch_result(tiny: common.BenchModel) -> common.Result:
    return switch.run([tiny], [1], FAST, create_repeats=1)


@pytest.fixture(scope="module")
def memory_result(tiny: common.BenchModel) -> common.Result:
    return memory.run([tiny])


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


def assert_machine(machine: dict) -> None:
    assert machine["cpu"] and machine["cpu_count"] >= 1
    assert machine["packages"]["slimrt"] and machine["packages"]["numpy"] == np.__version__
    assert set(machine["simd"]) <= set(machine["flags"])


# ---------------------------------------------------------------------------------------------
# common
# ---------------------------------------------------------------------------------------------

class TestCommon:
    def test_prepare_writes_one_onnx_per_profile(self, tiny: common.BenchModel) -> None:
        import slimrt

        model = slimrt.load(tiny.slim_path)
        assert [p.name for p in tiny.profiles] == [p.name for p in model.profiles]
        assert [p.macs for p in tiny.profiles] == [p.macs for p in model.profiles]
        assert set(tiny.onnx_paths) == {p.name for p in model.profiles}
        assert all(path.exists() for path in tiny.onnx_paths.values())
        assert tiny.full.name == model.profiles[-1].name

    def test_prepare_reuses_files(self, tiny: common.BenchModel) -> None:
        before = {p: path.stat().st_mtime_ns for p, path in tiny.onnx_paths.items()}
        again = common.prepare(b"not read: model.slim exists", tiny.name, tiny.slim_path.parent)
        assert {p: path.stat().st_mtime_ns for p, path in again.onnx_paths.items()} == before

    def test_unknown_zoo_model_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="unknown zoo model 'resnet7'"):
            common.prepare_zoo("resnet7", root=tmp_path)

    def test_interleaved_runs_every_task_every_round_in_varying_order(self) -> None:
        calls: list[str] = []
        tasks = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
        samples = common.interleaved(tasks, rounds=6, warmup=2, seed=5)
        assert {k: len(v) for k, v in samples.items()} == {k: 6 for k in "abcd"}
        rounds = [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)]
        assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
        assert len(set(rounds)) > 1
        assert all(t >= 0 for v in samples.values() for t in v)

    def test_interleaved_stops_at_the_time_limit_after_min_rounds(self) -> None:
        samples = common.interleaved({"x": lambda: None}, rounds=1000, warmup=0, max_seconds=0.0, min_rounds=3)
        assert len(samples["x"]) == 3

    def test_stats_match_numpy(self) -> None:
        rng = np.random.default_rng(0)
        seconds = rng.uniform(0.001, 0.002, size=31)
        stats = common.Stats.of(list(seconds))
        assert stats.n == 31
        assert stats.median_ms == pytest.approx(np.median(seconds) * 1e3)
        assert stats.min_ms == pytest.approx(seconds.min() * 1e3)
        assert stats.p10_ms <= stats.median_ms <= stats.p90_ms

    def test_format_table_prints_verdicts_and_missing_cells(self) -> None:
        cols = [common.Column("a", "A"), common.Column("ok", "ok"), common.Column("x", "x", "{:.1f}")]
        text = common.format_table([{"a": 1, "ok": True, "x": 2.25}, {"a": 22, "ok": False}], cols, "title")
        lines = text.splitlines()
        assert lines[0] == "title"
        assert "PASS" in lines[4] and "2.2" in lines[4]
        assert "FAIL" in lines[5] and lines[5].rstrip().endswith("- |")
        assert len({len(line) for line in lines[2:]}) == 1

    def test_machine_info_records_cpu_threads_and_versions(self) -> None:
        info = common.machine_info([1, 2])
        assert_machine(info)
        assert info["threads"] == [1, 2]
        json.dumps(info)

    def test_busy_monitor_reports_non_negative_cores(self) -> None:
        with common.BusyMonitor() as busy:
            sum(range(10000))
        assert busy.others_cores is None or busy.others_cores >= 0


# ---------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------

class TestLatency:
    def test_one_row_per_profile_with_every_runtime(self, tiny: common.BenchModel,
                                                    latency_result: common.Result) -> None:
        rows = latency_result.rows
        assert [r["profile"] for r in rows] == [p.name for p in tiny.profiles]
        for row, p in zip(rows, tiny.profiles):
            assert row["macs"] == p.macs and row["threads"] == 1
            for rt in common.RUNTIMES:
                assert row["stats"][rt]["n"] == FAST.rounds
                assert len(row["samples_ms"][rt]) == FAST.rounds
                assert row[f"{rt}_ms"] == pytest.approx(np.median(row["samples_ms"][rt]), rel=1e-3, abs=1e-3)

    def test_ratios_and_verdicts_follow_from_the_medians(self, tiny: common.BenchModel,
                                                         latency_result: common.Result) -> None:
        full = latency_result.rows[-1]
        for row in latency_result.rows:
            assert row["slimrt_over_ort"] == pytest.approx(row["slimrt_ms"] / row["onnxruntime_ms"])
            assert row["torch_over_ort"] == pytest.approx(row["torch_ms"] / row["onnxruntime_ms"])
            assert row["ratio_ok"] == (row["slimrt_over_ort"] <= 1.0)
            assert row["macs_frac"] == pytest.approx(row["macs"] / tiny.full.macs)
            assert row["lat_frac"] == pytest.approx(row["slimrt_ms"] / full["slimrt_ms"])
            tol = latency.macs_tolerance(tiny.name)
            assert row["follows_macs"] == (row["lat_frac"] <= row["macs_frac"] + tol)
        assert full["lat_frac"] == pytest.approx(1.0)

    def test_slimrt_agrees_with_onnxruntime(self, tiny: common.BenchModel, latency_result: common.Result) -> None:
        assert all(r["agree"] for r in latency_result.rows)
        model = tiny.load()
        x = tiny.input(0)
        for p in tiny.profiles:
            session = common.ort_session(tiny.onnx_paths[p.name], 1)
            ref = session.run(None, {session.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(model.run(x, p.name), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    def test_summary_table_json_and_plot(self, latency_result: common.Result, tmp_path: Path) -> None:
        assert latency_result.extra["summary"]["agree"] is True
        text = latency.table(latency_result)
        assert all(r["profile"] in text for r in latency_result.rows)
        json_path, png_path = latency.write(latency_result, tmp_path)
        data = json.loads(json_path.read_text())
        assert data["benchmark"] == "latency" and len(data["rows"]) == len(latency_result.rows)
        assert_machine(data["machine"])
        assert_png(png_path)

    def test_subset_of_runtimes_leaves_ratios_out(self, tiny: common.BenchModel) -> None:
        rows = latency.measure_model(tiny, 1, FAST, runtimes=("slimrt",))
        assert all("slimrt_ms" in r and "onnxruntime_ms" not in r and "ratio_ok" not in r for r in rows)
        assert all(r["agree"] is None for r in rows)

    def test_unknown_runtime_is_refused(self, tiny: common.BenchModel) -> None:
        with pytest.raises(ValueError, match="unknown runtimes"):
            latency.measure_model(tiny, 1, FAST, runtimes=("tvm",))


# ---------------------------------------------------------------------------------------------
# switch
# ---------------------------------------------------------------------------------------------

class TestSwitch:
    def test_paired_samples_per_profile(self, tiny: common.BenchModel) -> None:
        samples = switch.switch_samples(tiny, 1, FAST)
        assert set(samples) == {(k, p.name) for k in switch.KINDS for p in tiny.profiles}
        assert all(len(v) == FAST.rounds for v in samples.values())

    def test_rows_overhead_interval_and_verdict(self, tiny: common.BenchModel,
                                                switch_result: common.Result) -> None:
        rows = switch_result.rows
        assert [r["profile"] for r in rows] == [p.name for p in tiny.profiles]
        for r in rows:
            lo, hi = r["overhead_ci95_us"]
            assert lo <= r["overhead_us"] <= hi
            assert r["overhead_pct"] == pytest.approx(100 * r["overhead_us"] / (r["fixed_ms"] * 1e3))
            assert r["switch_ok"] == (r["overhead_pct"] < switch.TARGET_PCT or r["overhead_us"] < switch.TARGET_US)
            assert r["ort_create_ms"] > 0 and r["ort_first_run_ms"] > 0 and r["slimrt_load_ms"] > 0

    def test_median_ci_matches_numpy_median(self) -> None:
        values = list(np.random.default_rng(2).normal(size=41))
        median, lo, hi = switch.median_ci(values, seed=0)
        assert median == pytest.approx(float(np.median(values)))
        assert lo <= median <= hi

    def test_table_json_and_plot(self, switch_result: common.Result, tmp_path: Path) -> None:
        assert "PASS" in switch.table(switch_result) or "FAIL" in switch.table(switch_result)
        json_path, png_path = switch.write(switch_result, tmp_path)
        assert json.loads(json_path.read_text())["benchmark"] == "switch"
        assert_png(png_path)

    def test_one_profile_cannot_switch(self, tiny: common.BenchModel) -> None:
        single = common.BenchModel(tiny.name, tiny.slim_path, tiny.onnx_paths, tiny.profiles[:1],
                                   tiny.input_shape, tiny.weight_bytes)
        with pytest.raises(ValueError, match="switching needs at least two"):
            switch.switch_samples(single, 1, FAST)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

class TestMemory:
    def test_status_fields_match_psutil(self) -> None:
        psutil = pytest.importorskip("psutil")
        rss = memory.read_status_kb("VmRSS") * 1024
        assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)
        assert memory.read_status_kb("VmHWM") > 0
        with pytest.raises(RuntimeError, match="no VmNothing line"):
            memory.read_status_kb("VmNothing")

    def test_every_case_measured_and_ratios_consistent(self, tiny: common.BenchModel,
                                                        memory_result: common.Result) -> None:
        (row,) = memory_result.rows
        assert row["weight_bytes"] == 4 * tiny.full.params
        for case in memory.CASES:
            assert row[f"{case}_mb"] >= row[f"{case}_rss_after_mb"] > 0
        assert row["slimrt_all_over_ort_full"] == pytest.approx(row["slimrt_all_mb"] / row["ort_full_mb"])
        assert row["slimrt_all_net_mb"] == pytest.approx(row["slimrt_all_mb"] - row["slimrt_base_mb"])
        assert row["ort_all_net_over_weights"] == pytest.approx(row["ort_all_net_mb"] * memory.MB / row["weight_bytes"])
        assert row["memory_ok"] == (row["slimrt_all_over_ort_full"] <= memory.TARGET_RATIO)

    def test_table_json_and_plot(self, memory_result: common.Result, tmp_path: Path) -> None:
        assert "tiny_resnet" in memory.table(memory_result)
        json_path, png_path = memory.write(memory_result, tmp_path)
        assert json.loads(json_path.read_text())["benchmark"] == "memory"
        assert_png(png_path)


# ---------------------------------------------------------------------------------------------
# peak
# ---------------------------------------------------------------------------------------------

class TestPeak:
    def test_sgemm_in_a_subprocess_with_the_asked_threads(self) -> None:
        result = peak.sgemm(1, size=64, repeats=2)
        assert result["threads"] == 1 and len(result["seconds"]) == 2
        assert result["gflops_best"] >= result["gflops_median"] > 0
        if "blas_threads" in result:
            assert result["blas_threads"] == 1

    def test_profile_gflops_and_target_row(self, latency_result: common.Result) -> None:
        rows = [dict(r) for r in latency_result.rows]
        rows[-1] = {**rows[-1], "model": peak.TARGET_MODEL, "profile": peak.TARGET_PROFILE}
        peaks = {1: 2.0 * max(r["macs"] for r in rows) / (min(r["slimrt_ms"] for r in rows) * 1e-3) / 1e9}
        out = peak.profile_rows(rows, peaks)
        for src, row in zip(rows, out):
            gflops = 2.0 * src["macs"] / (src["slimrt_ms"] * 1e-3) / 1e9
            assert row["slimrt_gflops"] == pytest.approx(gflops)
            assert row["slimrt_of_sgemm"] == pytest.approx(gflops / peaks[1])
        assert [("peak_ok" in r) for r in out] == [False] * (len(out) - 1) + [True]
        assert out[-1]["peak_ok"] == (out[-1]["slimrt_gflops"] >= peak.TARGET_FRACTION * peaks[1])

    def test_target_side_by_side_in_one_process(self, tiny: common.BenchModel,
                                                latency_result: common.Result) -> None:
        sbs = peak.side_by_side(tiny, size=64, rounds=2)
        assert sbs["model"] == "tiny_resnet" and sbs["profile"] == tiny.full.name and sbs["macs"] == tiny.full.macs
        assert len(sbs["sgemm_seconds"]) == len(sbs["slimrt_seconds"]) == 2
        assert sbs["slimrt_gflops"] == pytest.approx(2.0 * tiny.full.macs / float(np.median(sbs["slimrt_seconds"])) / 1e9)
        assert sbs["fraction"] == pytest.approx(sbs["slimrt_gflops"] / sbs["sgemm_gflops"])
        if "blas_threads" in sbs:
            assert sbs["blas_threads"] == 1
        result = peak.run([1], latency_result.rows, size=64, repeats=2, target=tiny, target_rounds=2)
        summary = result.extra["summary"]
        assert summary["peak_ok"] == (result.extra["side_by_side"]["fraction"] >= peak.TARGET_FRACTION)
        assert "side by side" in peak.table(result)

    def test_run_table_json_and_plot(self, latency_result: common.Result, tmp_path: Path) -> None:
        result = peak.run([1], latency_result.rows, size=64, repeats=2)
        assert [s["threads"] for s in result.extra["sgemm"]] == [1]
        assert len(result.rows) == len(latency_result.rows)
        assert "sgemm" in peak.table(result)
        json_path, png_path = peak.write(result, tmp_path)
        assert json.loads(json_path.read_text())["benchmark"] == "peak"
        assert_png(png_path)


# ---------------------------------------------------------------------------------------------
# run_all
# ---------------------------------------------------------------------------------------------

class TestRunAll:
    def test_targets_summarise_every_benchmark(self, latency_result: common.Result, switch_result: common.Result,
                                               memory_result: common.Result) -> None:
        results = {"latency": latency_result, "switch": switch_result, "memory": memory_result}
        lines = run_all.targets(results)
        assert len(lines) == 5
        ratio = lines[0]
        assert ratio["checked"] == len(latency_result.rows)
        assert ratio["failed"] == sum(not r["ratio_ok"] for r in latency_result.rows)
        assert ratio["ok"] == (ratio["failed"] == 0)
        assert "targets of issue 4" in run_all.targets_table(lines)

    def test_options(self) -> None:
        args = run_all.parse_args(["--quick", "--models", "resnet18", "--threads", "2", "--only", "memory,peak"])
        assert args.models == ["resnet18"] and args.threads == [2] and args.only == ["memory", "peak"]
        assert args.rounds <= 20 and args.max_seconds <= 5
        with pytest.raises(SystemExit):
            run_all.parse_args(["--only", "speed"])


# ---------------------------------------------------------------------------------------------
# gate
# ---------------------------------------------------------------------------------------------

def test_gate_benchmark_on_a_tiny_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    args = ["--data", "digits", "--nets", "resnet_small", "--epochs", "1", "--gate-epochs", "1",
            "--macs-weights", "0.5,8", "--train-limit", "96", "--latency-images", "3", "--threads", "1",
            "--out", str(out)]
    assert gate.main(args) == 0
    text = capsys.readouterr().out
    assert "dynamic gate on digits" in text and "choices" in text
    payload = json.loads((out / "gate.json").read_text())
    assert payload["benchmark"] == "gate"
    assert_machine(payload["machine"])
    assert_png(out / "gate.png")
    rows = payload["rows"]
    static = [r for r in rows if r["model"] == "static"]
    gated = [r for r in rows if r["model"] == "gated"]
    assert [r["profile"] for r in static] == ["0.25", "0.5", "0.75", "1.0"] and len(gated) == 2
    curve = [(r["macs"], r["accuracy"]) for r in static]
    full = static[-1]
    from slimrt.train.datasets import load_dataset

    test_images = len(load_dataset("digits").x_test)
    for r in gated:  # derived figures, recomputed
        assert sum(r["choices"].values()) == test_images
        assert r["macs"] == pytest.approx(sum(r["choice_macs"][k] * n for k, n in r["choices"].items()) / test_images)
        # a gated profile runs the layers before the gate at the shared (largest) width, plus the gate
        assert all(r["choice_macs"][s["profile"]] >= s["macs"] for s in static)
        assert r["static_at_macs"] == pytest.approx(gate.interpolate(r["macs"], curve))
        assert r["dominates"] == (r["accuracy"] >= r["static_at_macs"])
        assert r["macs_ratio"] == pytest.approx(r["macs"] / full["macs"])
        assert r["latency_ratio"] == pytest.approx(r["latency_ms"] / full["latency_ms"])
        assert r["latency_follows_macs"] == (r["latency_ratio"] <= r["macs_ratio"] + 0.1)
        assert 0 <= r["gate_share"] <= 1 and r["gate_cheap"] == (r["gate_share"] < 0.03)
    assert gate.interpolate(5.0, [(0.0, 10.0), (10.0, 30.0)]) == pytest.approx(20.0)


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------

class TestInt8:
    def test_rows_ratios_sizes_and_files(self, tiny: common.BenchModel, tmp_path: Path) -> None:
        import int8  # bench/int8.py

        result = int8.run([tiny], [1], FAST)
        assert [r["profile"] for r in result.rows] == [p.name for p in tiny.profiles]
        for row in result.rows:
            assert row["fp32_ms"] == row["stats"]["fp32"]["median_ms"]
            assert row["int8_ms"] == row["stats"]["int8"]["median_ms"]
            assert row["int8_over_fp32"] == pytest.approx(row["int8_ms"] / row["fp32_ms"])
            assert row["int8_weight_bytes"] < row["fp32_weight_bytes"]
            assert row["int8_file_bytes"] < row["fp32_file_bytes"]
        assert result.rows[0]["int8_ref_err"] <= 0.05  # whole model: a few quantization steps at most
        assert result.machine["slimrt_int8_isa"] in ("generic", "avx512vnni")
        assert "int8/fp32" in int8.table(result)
        json_path, png_path = common.write_result("int8", result, int8.plot, tmp_path)
        assert json.loads(json_path.read_text())["benchmark"] == "int8"
        assert_png(png_path)
