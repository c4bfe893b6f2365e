"""The engine on whole models, its Python API, bad input and concurrency."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import corrupt
import slimrt
from slimrt import models
from slimrt.builder import ModelBuilder
from slimrt.format import profile_cost, to_bytes
from slimrt.reference import run_reference

MODELS = {
    "tiny_resnet": lambda: models.tiny_resnet(seed=1, input_hw=(33, 29)),
    "vgg_like": lambda: models.vgg_like(seed=2),
    "concat_net": lambda: models.concat_net(seed=3),
}


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    slim = MODELS[request.param]()
    return slim, slimrt.load(to_bytes(slim))


@pytest.fixture(scope="module")
def default_model() -> slimrt.Model:
    return slimrt.load(slimrt.default_model_path())


def test_every_profile_matches_reference(built):
    slim, model = built
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + model.input_shape[1:]).astype(np.float32)
    session = model.session()
    assert len(model.profiles) >= 3
    for p in model.profiles:
        assert rel_error(session.run(x, p.name), run_reference(slim, x, p.name)) <= 1e-4, p.name


@pytest.mark.parametrize("multiplier", [0.3, 0.45, 0.6, 0.8, 1.0])
def test_uniform_multipliers_match_reference(built, multiplier):
    slim, model = built
    m = max(multiplier, model.min_multiplier)
    x = np.random.default_rng(1).standard_normal(model.input_shape).astype(np.float32)
    assert rel_error(model.run(x, m), run_reference(slim, x, m)) <= 1e-4


def test_macs_and_params_agree_with_python_twin(built):
    slim, model = built
    for p in model.profiles:
        assert (p.macs, p.params) == profile_cost(slim, p.widths, profile=p.name)
        assert model.macs(p) == p.macs
    assert [p.macs for p in model.profiles] == sorted(p.macs for p in model.profiles)


def test_macs_at_other_input_sizes_agree_with_python_twin(default_model):
    slim = default_model.to_slimfile()
    h, w = default_model.input_shape[2:]
    for hw in [(h, w), (64, 80), (2 * h, 2 * w), (7, 7)]:
        for p in default_model.profiles:
            assert default_model.macs(p, hw) == profile_cost(slim, p.widths, input_hw=hw)[0]
        m = default_model.min_multiplier
        assert default_model.macs(m, hw) == profile_cost(slim, default_model.widths(m),
                                                         input_hw=hw)[0]
    assert default_model.macs(default_model.profiles[-1], (h, w)) == \
        default_model.profiles[-1].macs
    with pytest.raises(ValueError, match="not valid"):
        default_model.macs(0, (0, 8))


def test_macs_refuses_a_size_the_model_cannot_run():
    from slimrt.models import vgg_like
    model = slimrt.load(to_bytes(vgg_like()))  # flattens a 4x4 map into a linear layer
    h, w = model.input_shape[2:]
    assert model.macs(0, (h, w)) == model.profiles[0].macs
    with pytest.raises(ValueError):
        model.macs(0, (2 * h, 2 * w))


def test_profile_keys_are_equivalent(default_model):
    x = np.random.default_rng(2).standard_normal(default_model.input_shape).astype(np.float32)
    p = default_model.profiles[1]
    by_name = default_model.run(x, p.name)
    np.testing.assert_array_equal(by_name, default_model.run(x, p.index))
    np.testing.assert_array_equal(by_name, default_model.run(x, p))
    uniform = [q for q in default_model.profiles if q.name == "0.5"][0]
    np.testing.assert_array_equal(default_model.run(x, 0.5), default_model.run(x, uniform.name))


def test_no_profile_runs_the_most_expensive_one(default_model):
    x = np.random.default_rng(4).standard_normal(default_model.input_shape).astype(np.float32)
    full = default_model.profiles[-1]
    assert full.macs == max(p.macs for p in default_model.profiles)
    want = default_model.run(x, full.name)
    np.testing.assert_array_equal(default_model.run(x), want)
    np.testing.assert_array_equal(default_model.session().run(x), want)
    np.testing.assert_array_equal(default_model.run(x, None), want)
    assert default_model.widths() == full.widths and default_model.macs() == full.macs
    assert [name for name, _ in default_model.session().profile_ops(x)] == \
        [name for name, _ in default_model.session().profile_ops(x, full.name)]


def test_no_profile_on_a_model_without_profiles_runs_full_width():
    b = ModelBuilder("bare", input_shape=(1, 3, 6, 6))
    b.conv(b.input, np.ones((4, 3, 1, 1), np.float32), out_group=b.group("a", 4), act="relu")
    slim = b.build()
    model = slimrt.load(to_bytes(slim))
    assert model.profiles == []
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(model.run(x), run_reference(slim, x, 1.0), rtol=1e-5)


def test_switching_profiles_gives_identical_results(default_model):
    x = np.random.default_rng(3).standard_normal(default_model.input_shape).astype(np.float32)
    session = default_model.session()
    first = [session.run(x, p.index) for p in default_model.profiles]
    again = [session.run(x, p.index) for p in reversed(default_model.profiles)][::-1]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    widths = {p.widths for p in default_model.profiles}
    assert len(widths) == len(default_model.profiles)
    assert not np.allclose(first[0], first[-1])


def test_other_batch_and_spatial_size(default_model):
    slim = default_model.to_slimfile()
    x = np.random.default_rng(4).standard_normal((3, default_model.input_shape[1], 50, 70)).astype(np.float32)
    for p in default_model.profiles:
        assert rel_error(default_model.run(x, p.name), run_reference(slim, x, p.name)) <= 1e-4


def test_multithreaded_session_matches_single(default_model):
    x = np.random.default_rng(5).standard_normal((2,) + default_model.input_shape[1:]).astype(np.float32)
    one, two = default_model.session(1), default_model.session(2)
    assert two.threads == 2
    for p in default_model.profiles:
        np.testing.assert_allclose(two.run(x, p.index), one.run(x, p.index), rtol=1e-5, atol=1e-6)


def test_concurrent_sessions_on_one_model(default_model):
    """4 threads x 50 runs, mixed profiles, one model: every output correct."""
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal(default_model.input_shape).astype(np.float32) for _ in range(3)]
    expected = {(i, p.index): default_model.session().run(x, p.index)
                for i, x in enumerate(inputs) for p in default_model.profiles}
    failures: list[str] = []

    def worker(seed: int) -> None:
        session = default_model.session()
        r = np.random.default_rng(seed)
        for _ in range(50):
            i = int(r.integers(len(inputs)))
            p = int(r.integers(len(default_model.profiles)))
            if not np.array_equal(session.run(inputs[i], p), expected[(i, p)]):
                failures.append(f"thread {seed}: input {i} profile {p}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_save_and_reload(tmp_path, default_model):
    path = tmp_path / "copy.slim"
    default_model.save(path)
    again = slimrt.load(path)
    assert [p.name for p in again.profiles] == [p.name for p in default_model.profiles]
    x = np.random.default_rng(7).standard_normal(default_model.input_shape).astype(np.float32)
    np.testing.assert_array_equal(again.run(x, 0), default_model.run(x, 0))


# --- bad input -----------------------------------------------------------------

def test_unknown_profiles(default_model):
    x = np.zeros(default_model.input_shape, np.float32)
    with pytest.raises(slimrt.ProfileError, match="unknown profile 'huge'"):
        default_model.run(x, "huge")
    with pytest.raises(slimrt.ProfileError, match="out of range"):
        default_model.run(x, len(default_model.profiles))
    with pytest.raises(slimrt.ProfileError, match="outside this model's range"):
        default_model.run(x, 0.01)
    with pytest.raises(slimrt.ProfileError, match="outside this model's range"):
        default_model.run(x, 1.5)
    with pytest.raises(slimrt.ProfileError):
        default_model.run(x, "")
    assert default_model.run(x, 0).shape[0] == 1


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda s: np.zeros(s, np.float64), TypeError, "float32"),
        (lambda s: np.zeros(s, np.int32), TypeError, "float32"),
        (lambda s: [[0.0]], TypeError, "numpy.ndarray"),
        (lambda s: np.zeros(s[1:], np.float32), ValueError, "NCHW"),
        (lambda s: np.zeros((1, s[1] + 3) + s[2:], np.float32), ValueError, "4 channels, the model takes 1"),
        (lambda s: np.zeros((0,) + s[1:], np.float32), ValueError, "not valid"),
    ],
)
def test_bad_inputs_raise_and_leave_session_usable(default_model, make, error, message):
    session = default_model.session()
    x = np.random.default_rng(8).standard_normal(default_model.input_shape).astype(np.float32)
    before = session.run(x, 1)
    with pytest.raises(error, match=message):
        session.run(make(default_model.input_shape), 1)
    np.testing.assert_array_equal(session.run(x, 1), before)


def test_spatial_size_checked_against_the_graph():
    slim = models.vgg_like(seed=2)
    model = slimrt.load(to_bytes(slim))
    n, c, h, w = model.input_shape
    with pytest.raises(ValueError, match="input features"):  # flatten of a larger map
        model.run(np.zeros((1, c, h + 8, w + 8), np.float32), 0)
    with pytest.raises(ValueError, match="smaller than"):
        model.run(np.zeros((1, c, 1, 1), np.float32), 0)
    x = np.random.default_rng(10).standard_normal(model.input_shape).astype(np.float32)
    assert rel_error(model.run(x, 0), run_reference(slim, x, 0)) <= 1e-4


def test_non_contiguous_input_is_accepted(default_model):
    c = default_model.input_shape[1]
    x = np.random.default_rng(9).standard_normal((1, c) + default_model.input_shape[2:][::-1]).astype(np.float32)
    xt = x.transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(default_model.run(xt, 0), default_model.run(np.ascontiguousarray(xt), 0))


def test_corrupt_files_are_refused_with_clear_errors(tmp_path, default_model):
    data = default_model.to_bytes()
    cases = corrupt.all_corruptions(data)
    assert len(cases) >= 15
    for case in cases:
        with pytest.raises(slimrt.InvalidModelError) as info:
            slimrt.load(case.data)
        assert case.expect.lower() in str(info.value).lower(), (case.name, str(info.value))
        path = tmp_path / f"{case.name}.slim"
        path.write_bytes(case.data)
        with pytest.raises(slimrt.InvalidModelError, match=str(path.name).replace(".", r"\.")):
            slimrt.load(path)
    # the process is still fine
    x = np.zeros(default_model.input_shape, np.float32)
    assert np.isfinite(slimrt.load(data).run(x, 0)).all()


def test_missing_and_non_model_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        slimrt.load(tmp_path / "nope.slim")
    with pytest.raises(OSError):
        slimrt.load(tmp_path)
    empty = tmp_path / "empty.slim"
    empty.write_bytes(b"")
    with pytest.raises(slimrt.InvalidModelError, match="empty"):
        slimrt.load(empty)
    text = tmp_path / "text.slim"
    text.write_bytes(b"hello, this is not a model at all" * 10)
    with pytest.raises(slimrt.InvalidModelError):
        slimrt.load(text)


def test_session_thread_count_validated(default_model):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            default_model.session(bad)


def test_fresh_multithreaded_sessions_run_at_once(default_model):
    """A session's first job may be posted before its worker threads have started."""
    x = np.random.default_rng(11).standard_normal(default_model.input_shape).astype(np.float32)
    want = default_model.session(1).run(x, 0)
    for _ in range(30):
        np.testing.assert_allclose(default_model.session(2).run(x, 0), want, rtol=1e-5, atol=1e-6)


def test_profile_ops_reports_every_op(default_model):
    x = np.random.default_rng(12).standard_normal(default_model.input_shape).astype(np.float32)
    session = default_model.session()
    times = session.profile_ops(x, 0)
    names = [name for name, _ in times]
    ops = [op["name"] for op in default_model.to_slimfile().meta["ops"]]
    assert names and set(names) <= set(ops) and names == [n for n in ops if n in names]
    assert all(t >= 0 for _, t in times)
    np.testing.assert_array_equal(session.run(x, 0), default_model.run(x, 0))


def test_nan_and_inf_reach_the_output_as_in_numpy(default_model):
    """The bundled model (convs with fused relu6, depthwise, residual adds, pooling, a linear):
    one NaN pixel leaves NaN in the logits where numpy's run has it, an all-NaN input gives all
    NaN, and an all-+Inf input gives numpy's output for it (not merely the all-NaN one's)."""
    slim = slimrt.format.read(default_model.to_bytes())
    x = np.random.default_rng(61).standard_normal(default_model.input_shape).astype(np.float32)
    x[0, 0, 11, 12] = np.nan
    for p in default_model.profiles:
        got = default_model.run(x, p.name)
        with np.errstate(invalid="ignore"):
            want = run_reference(slim, x, p.name)
        assert np.isnan(want).any() and np.array_equal(np.isnan(got), np.isnan(want)), p.name
    assert np.isnan(default_model.run(np.full(default_model.input_shape, np.nan, np.float32))).all()
    inf = np.full(default_model.input_shape, np.inf, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        want = run_reference(slim, inf, default_model.profiles[-1].name).astype(np.float32)
    np.testing.assert_array_equal(default_model.run(inf), want)  # equal_nan: NaN where numpy has NaN


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_finite_refuses_nan_and_inf_input(default_model, value):
    """check_finite=True refuses an input holding NaN or +-Inf with a message that counts them and
    names the first; nothing runs, the session stays usable; finite input runs as without it."""
    session = default_model.session()
    x = np.random.default_rng(67).standard_normal(default_model.input_shape).astype(np.float32)
    before = session.run(x, 1)
    np.testing.assert_array_equal(session.run(x, 1, check_finite=True), before)
    np.testing.assert_array_equal(default_model.run(x, 1, check_finite=True), before)
    bad = x.copy()
    bad[0, 0, 3, 4] = bad[0, 0, 5, 6] = value
    for run in (session.run, default_model.run):
        with pytest.raises(slimrt.NonFiniteInputError,
                           match=r"2 non-finite values \(NaN or infinity\), the first at index \(0, 0, 3, 4\)"):
            run(bad, 1, check_finite=True)
    assert issubclass(slimrt.NonFiniteInputError, ValueError)
    np.testing.assert_array_equal(session.run(x, 1), before)
    assert not np.isfinite(session.run(bad, 1)).all()  # unchecked, it propagates
