"""int8 models: the format (both readers), the quantizer, and every int8 kernel per instruction
set against the numpy reference of the quantized model (slimrt.reference), at every prefix width
and odd sizes.

Kernel tests feed the int8 op from a float stem whose outputs are exact small integers (integer
inputs, weights and biases), so the engine and the reference quantize identical values: the
integer accumulators agree exactly and only the float32 epilogue differs (relative 1e-5).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import safetensors.numpy

import slimrt
from slimrt import _core
from slimrt import format as fmt
from slimrt.builder import ModelBuilder
from slimrt.cli import main
from slimrt.quantization import CalibrationWarning, quantize, quantize_weights
from slimrt.reference import quantize_input, run_reference

I8_ISAS = [isa for isa in ("generic", "avx512vnni") if _core.set_i8_isa(isa)]
_core.set_i8_isa("avx512vnni") or _core.set_i8_isa("generic")


@pytest.fixture(params=I8_ISAS)
def i8_isa(request):
    before = _core.i8_isa()
    assert _core.set_i8_isa(request.param)
    yield request.param
    _core.set_i8_isa(before)


def weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def vec(rng: np.random.Generator, n: int, loc: float = 0.0) -> np.ndarray:
    return (loc + 0.2 * rng.standard_normal(n)).astype(np.float32)


def integer_input(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(-8, 9, size=shape).astype(np.float32)


def integer_stem(b: ModelBuilder, rng: np.random.Generator, cin: int, size: int, name: str) -> str:
    """A float 1x1 conv from the input into a new group `name`: integer weights and biases, so its
    outputs are exact integers in float32 and float64 alike."""
    g = b.group(name, size)
    w = rng.integers(-2, 3, size=(size, cin, 1, 1)).astype(np.float32)
    bias = rng.integers(-3, 4, size=size).astype(np.float32)
    return b.conv(b.input, w, out_group=g, bias=bias, act="relu", name=f"stem_{name}")


def stems(slim: fmt.SlimFile) -> list[str]:
    return [op["name"] for op in slim.meta["ops"] if op["name"].startswith("stem_")]


def quantized(b: ModelBuilder, calib: np.ndarray) -> fmt.SlimFile:
    slim = b.build()
    return quantize(slim, calib, skip=stems(slim), depthwise=True)


def check_int8(q: fmt.SlimFile, x: np.ndarray, threads: int = 1, rtol: float = 1e-5) -> int:
    """Engine against reference at every profile; returns the number of profiles checked."""
    assert any(op.get("precision") == "int8" for op in q.meta["ops"])
    model = slimrt.load(fmt.to_bytes(q))
    session = model.session(threads)
    for p in model.profiles:
        got = session.run(x, p.name)
        want = run_reference(q, x, p.name)
        assert got.shape == want.shape, p.name
        scale = max(float(np.abs(want).max()), 1e-6)
        err = float(np.abs(got - want).max()) / scale
        assert err <= rtol, f"profile {p.name}: relative error {err:.2e}"
    return len(model.profiles)


# ---- kernels ------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "cin,cout,kernel,stride,pad,dil",
    [
        (1, 3, 3, 1, 1, 1),
        (3, 7, 3, 2, 1, 1),
        (7, 13, 1, 1, 0, 1),
        (13, 1, 5, 1, 2, 2),
        (13, 127, 3, 2, (0, 1, 2, 1), 1),
        (7, 33, (3, 5), (2, 1), (1, 2), (2, 1)),
        (37, 20, 1, 1, 0, 1),
    ],
)
def test_int8_dense_conv_every_width(i8_isa, threads, cin, cout, kernel, stride, pad, dil):
    rng = np.random.default_rng(cin * 1000 + cout)
    b = ModelBuilder("conv8", input_shape=(2, 3, 11, 13), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, cin, "a")
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    y = b.conv(a, weights(rng, cout, cin, kh, kw), out_group=b.group("b", cout), scale=vec(rng, cout, 1.0),
               bias=vec(rng, cout), stride=stride, padding=pad, dilation=dil, act="none")
    b.set_output(y)
    pairs = {(wa, cout) for wa in range(1, cin + 1)} | {(cin, wb) for wb in range(1, cout + 1)}
    pairs |= {(max(1, cin // 2), max(1, cout // 3))}
    for wa, wb in sorted(pairs):
        b.profile(f"{wa}x{wb}", {"a": wa, "b": wb})
    q = quantized(b, integer_input(rng, (4, 3, 11, 13)))
    assert check_int8(q, integer_input(rng, (2, 3, 11, 13)), threads) == len(pairs)


@pytest.mark.parametrize("c,kernel,stride,pad,dil", [(3, 3, 1, 1, 1), (7, 3, 2, 1, 1), (13, 5, 1, 2, 1),
                                                     (33, 3, 1, 2, 2), (127, 3, 2, (0, 1, 1, 0), 1)])
def test_int8_depthwise_every_width(i8_isa, c, kernel, stride, pad, dil):
    rng = np.random.default_rng(c + 7 * kernel)
    b = ModelBuilder("dw8", input_shape=(2, 3, 9, 10), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, c, "a")
    y = b.conv(a, weights(rng, c, 1, kernel, kernel), groups=c, scale=vec(rng, c, 1.0), bias=vec(rng, c),
               stride=stride, padding=pad, dilation=dil, act="relu6")
    b.set_output(y)
    for w in range(1, c + 1):
        b.profile(f"w{w}", {"a": w})
    q = quantized(b, integer_input(rng, (4, 3, 9, 10)))
    assert check_int8(q, integer_input(rng, (2, 3, 9, 10))) == c


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("spatial", [1, 3])
def test_int8_linear_after_flatten_every_width(i8_isa, threads, spatial):
    """Linears of 1x1 and 3x3 maps; 3 images and 127 outputs: with 2 threads the weights are split."""
    rng = np.random.default_rng(spatial)
    hw = 2 * spatial
    b = ModelBuilder("linear8", input_shape=(3, 3, hw, hw), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, 13, "a")
    t = b.maxpool(a, 2, stride=2)
    f = b.flatten(t)
    h = b.linear(f, weights(rng, 127, 13 * spatial * spatial), out_group=b.group("fc", 127),
                 bias=vec(rng, 127), act="relu")
    y = b.linear(h, weights(rng, 5, 127), out_group=b.group("cls", 5, fixed=True, why="classes"),
                 bias=vec(rng, 5))
    b.set_output(y)
    for wa, wf in [(13, 127), (1, 127), (13, 1), (7, 64), (2, 3), (13, 33)]:
        b.profile(f"{wa}-{wf}", {"a": wa, "fc": wf})
    slim = b.build()
    # only the first linear: the second one's input is not an exact integer
    q = quantize(slim, integer_input(rng, (6, 3, hw, hw)), skip=stems(slim) + [slim.meta["ops"][-1]["name"]])
    assert [op["name"] for op in q.meta["ops"] if op.get("precision") == "int8"] == [slim.meta["ops"][3]["name"]]
    check_int8(q, integer_input(rng, (3, 3, hw, hw)), threads)


def test_int8_after_a_concat(i8_isa):
    """A concat's channels are runs, not a prefix: the int8 dense conv reads its rows per run and the
    int8 depthwise conv its weight columns per run."""
    rng = np.random.default_rng(9)
    b = ModelBuilder("concat8", input_shape=(1, 3, 8, 8), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, 7, "a")
    c = integer_stem(b, rng, 3, 13, "c")
    cat = b.concat([a, c])
    dense = b.conv(cat, weights(rng, 11, 20, 3, 3), out_group=b.group("out", 11), padding=1, bias=vec(rng, 11),
                   act="hardswish")
    dw = b.conv(cat, weights(rng, 20, 1, 3, 3), groups=20, padding=1, bias=vec(rng, 20), act="silu")
    b.set_output(b.concat([b.global_avgpool(dense), b.global_avgpool(dw)]))
    for wa, wc, wo in [(7, 13, 11), (1, 13, 11), (7, 1, 5), (3, 5, 1), (1, 1, 1), (6, 9, 7)]:
        b.profile(f"{wa}-{wc}-{wo}", {"a": wa, "c": wc, "out": wo})
    q = quantized(b, integer_input(rng, (4, 3, 8, 8)))
    check_int8(q, integer_input(rng, (2, 3, 8, 8)))


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_conv_performs_the_residual_add(i8_isa, threads):
    """An int8 conv feeding an Add performs it in its epilogue when the widths match, and leaves it
    to the Add otherwise."""
    rng = np.random.default_rng(11)
    b = ModelBuilder("res8", input_shape=(1, 3, 9, 14), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, 21, "a")
    r = integer_stem(b, rng, 3, 17, "r")
    y = b.conv(a, weights(rng, 21, 21, 3, 3) / 5, out_group=b.group("c", 21), bias=vec(rng, 21), padding=1)
    b.set_output(b.add(y, r, act="relu6"))
    for wa, wc, wr in [(21, 21, 17), (21, 17, 17), (9, 12, 12), (21, 3, 12), (1, 1, 1), (5, 16, 17)]:
        b.profile(f"{wa}-{wc}-{wr}", {"a": wa, "c": wc, "r": wr})
    q = quantized(b, integer_input(rng, (4, 3, 9, 14)))
    check_int8(q, integer_input(rng, (1, 3, 9, 14)), threads)


@pytest.mark.parametrize("act", ["none", "relu", "relu6", "hardswish", "gelu", "leaky_relu"])
def test_int8_activations(i8_isa, act):
    rng = np.random.default_rng(3)
    b = ModelBuilder("act8", input_shape=(1, 3, 6, 7), min_multiplier=0.01)
    a = integer_stem(b, rng, 3, 19, "a")
    d = b.conv(a, weights(rng, 19, 1, 3, 3), groups=19, padding=1, bias=vec(rng, 19), act=act)
    b.set_output(b.conv(d, weights(rng, 23, 19, 1, 1), out_group=b.group("o", 23), bias=vec(rng, 23), act=act))
    b.profile("small", {"a": 5, "o": 9})
    b.profile("full", {"a": 19, "o": 23})
    slim = b.build()
    q = quantize(slim, integer_input(rng, (4, 3, 6, 7)), skip=stems(slim) + [slim.meta["ops"][-1]["name"]],
                 depthwise=True)
    check_int8(q, integer_input(rng, (1, 3, 6, 7)))


def test_int8_quantizes_nan_to_zero_and_saturates(i8_isa):
    """q(NaN) = 0, q(+-inf) and values beyond 127 steps saturate at +-127, in both readers."""
    rng = np.random.default_rng(5)
    b = ModelBuilder("nan8", input_shape=(1, 5, 4, 4), min_multiplier=0.01)
    y = b.conv(b.input, weights(rng, 9, 5, 3, 3), out_group=b.group("o", 9), padding=1, bias=vec(rng, 9))
    b.set_output(y)
    b.profile("half", {"o": 4})
    b.profile("full", {"o": 9})
    q = quantize(b.build(), rng.standard_normal((4, 5, 4, 4)).astype(np.float32), first_layer=True)
    x = rng.standard_normal((1, 5, 4, 4)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 1, 2, 3], x[0, 2, 1, 1], x[0, 3, 3, 3] = np.nan, np.inf, -np.inf, 1e6
    check_int8(q, x)
    got = slimrt.load(fmt.to_bytes(q)).run(x, "full")
    assert np.isfinite(got).all()
    assert list(quantize_input(np.array([np.nan, np.inf, -np.inf, 2.5, 3.5, -2.5, 1e9], np.float32),
                               np.float32(1.0))) == [0, 127, -127, 2, 4, -2, 127]


def test_int8_scales_are_per_profile_and_uniform_multipliers_use_the_default():
    rng = np.random.default_rng(8)
    b = ModelBuilder("scales8", input_shape=(1, 3, 6, 6), min_multiplier=0.1)
    # the later channels are the larger ones: the full width's range is wider than half width's
    a = b.conv(b.input, rng.integers(-2, 3, size=(24, 3, 1, 1)).astype(np.float32), out_group=b.group("a", 24),
               bias=np.arange(24, dtype=np.float32), act="relu", name="stem_a")
    b.set_output(b.conv(a, weights(rng, 32, 24, 3, 3), out_group=b.group("o", 32), padding=1))
    b.uniform_profiles((0.5, 1.0))
    q = quantized(b, integer_input(rng, (4, 3, 6, 6)))
    op = [o["name"] for o in q.meta["ops"] if o.get("precision") == "int8"][0]
    own = {p["name"]: float(q.tensors[fmt.xscale_tensor_name(op, p["name"])][0]) for p in q.meta["profiles"]}
    assert own["0.5"] != own["1.0"]  # calibrated per profile
    assert float(q.tensors[f"{op}.xscale"][0]) == max(own.values())
    x = integer_input(rng, (1, 3, 6, 6))
    model = slimrt.load(fmt.to_bytes(q))
    # a profile's own scale is what runs: change it and that profile (only) changes, as in the reference
    q2 = fmt.SlimFile(q.meta, dict(q.tensors))
    q2.tensors[fmt.xscale_tensor_name(op, "0.5")] = np.array([own["0.5"] * 3], np.float32)
    model2 = slimrt.load(fmt.to_bytes(q2))
    assert not np.allclose(model.run(x, "0.5"), model2.run(x, "0.5"))
    assert np.array_equal(model.run(x, "1.0"), model2.run(x, "1.0"))
    check_int8(q2, x)
    # a multiplier that is no named profile runs with "<op>.xscale"
    got, want = model.run(x, 0.75), run_reference(q, x, 0.75)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---- the quantizer --------------------------------------------------------------------------

def test_weight_quantization_is_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 7, 11)).astype(np.float32)
    w[..., 4] = 0.0
    q, scale = quantize_weights(w, -1)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (11,)
    assert np.abs(q).max() == 127 and q.min() >= -127
    assert scale[4] == 1.0 and not q[..., 4].any()
    assert np.abs(q * scale - w).max() <= scale.max() / 2 * (1 + 1e-6)
    # an out-channel prefix keeps its scales: quantizing the prefix alone gives the same
    q5, s5 = quantize_weights(w[..., :5], -1)
    assert np.array_equal(q5, q[..., :5]) and np.array_equal(s5, scale[:5])


@pytest.fixture(scope="module")
def default_int8() -> fmt.SlimFile:
    return quantize(slimrt.default_model_path(), "cluttered-digits", samples=256)


def test_quantized_default_model_keeps_its_accuracy_at_every_profile(default_int8):
    """The int8 drop of the bundled model is at most 0.5 points at every profile (cluttered-digits test set)."""
    from slimrt.train.datasets import load_dataset
    from slimrt.train.evaluation import engine_accuracy

    data = load_dataset("cluttered-digits")
    fp32 = engine_accuracy(slimrt.load(slimrt.default_model_path()), data.x_test, data.y_test)
    int8 = engine_accuracy(slimrt.load(fmt.to_bytes(default_int8)), data.x_test, data.y_test)
    for f, i in zip(fp32, int8):
        assert f["name"] == i["name"]
        assert i["accuracy"] >= f["accuracy"] - 0.5, (f, i)


def test_quantized_default_model_agrees_with_the_reference(i8_isa, default_int8):
    """Whole model: every int8 op downstream of others quantizes float32 (engine) and float64
    (reference) values, which may straddle a rounding boundary: outputs agree to within a few
    quantization steps, and almost all logits to float precision."""
    model = slimrt.load(fmt.to_bytes(default_int8))
    assert model.precision == "int8"
    x = np.random.default_rng(1).random((3,) + model.input_shape[1:]).astype(np.float32)
    session = model.session(2)
    for p in model.profiles:
        got, want = session.run(x, p.name), run_reference(default_int8, x, p.name)
        scale = float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 0.05 * scale, p.name
        assert np.mean(np.abs(got - want) <= 1e-4 * scale) >= 0.9, p.name


def test_quantized_file_is_smaller_and_records_how_it_was_made(default_int8, tmp_path):
    path = tmp_path / "q.slim"
    fmt.write(default_int8, path)
    again = fmt.read(path)
    assert again.meta["format_version"] == fmt.INT8_FORMAT_VERSION
    assert again.meta["quantization"]["calibration"] == "cluttered-digits"
    assert again.meta["quantization"]["samples"] == 256
    float_bytes = len(fmt.read_regular_file(slimrt.default_model_path()))
    assert path.stat().st_size < 0.6 * float_bytes
    assert slimrt.load(path).weight_bytes < 0.6 * slimrt.load(slimrt.default_model_path()).weight_bytes
    # profiles, MACs and params are the float model's
    assert again.meta["profiles"] == fmt.read(slimrt.default_model_path()).meta["profiles"]


def test_quantize_refuses_bad_requests():
    rng = np.random.default_rng(0)
    path = slimrt.default_model_path()
    with pytest.raises(ValueError, match="channels"):
        quantize(path, rng.standard_normal((4, 3, 24, 24)).astype(np.float32))
    with pytest.raises(ValueError, match="skip names op 'nope'"):
        quantize(path, rng.standard_normal((4, 1, 24, 24)).astype(np.float32), skip=["nope"])
    q = quantize(path, rng.standard_normal((2, 1, 24, 24)).astype(np.float32), samples=2)
    with pytest.raises(ValueError, match="int8 already"):
        quantize(q, rng.standard_normal((2, 1, 24, 24)).astype(np.float32))
    with pytest.warns(CalibrationWarning, match="random inputs"):
        quantize(path, None, samples=2)


def test_quantize_command_writes_a_model_and_eval_compares(tmp_path, capsys):
    out = tmp_path / "int8.slim"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["quantize", slimrt.default_model_path(), "-o", str(out), "--samples", "8"]) == 0
    captured = capsys.readouterr()
    assert "warning: calibrating activation scales on random inputs" in captured.err
    assert f"wrote {out}" in captured.out
    assert slimrt.load(out).precision == "int8"
    assert main(["eval", slimrt.default_model_path(), str(out), "--data", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["precision"] for m in report["models"]] == ["float32", "int8"]
    names = [[p["name"] for p in m["profiles"]] for m in report["models"]]
    assert names[0] == names[1] == [p.name for p in slimrt.load(out).profiles]
    assert main(["eval", slimrt.default_model_path(), str(out), "--data", "digits"]) == 0
    text = capsys.readouterr().out
    assert "[1]-[0]" in text and "int8" in text


# ---- the format, in both readers ------------------------------------------------------------

@pytest.fixture(scope="module")
def small_int8() -> fmt.SlimFile:
    rng = np.random.default_rng(4)
    b = ModelBuilder("fmt8", input_shape=(1, 3, 6, 6), min_multiplier=0.25)
    g = b.group("a", 8)
    t = b.conv(b.input, weights(rng, 8, 3, 3, 3), out_group=g, padding=1, act="relu", name="c1")
    t = b.conv(t, weights(rng, 8, 1, 3, 3), groups=8, padding=1, act="relu", name="dw")
    t = b.flatten(b.global_avgpool(t))
    b.set_output(b.linear(t, weights(rng, 4, 8), out_group=b.group("cls", 4, fixed=True, why="classes"),
                          name="fc"))
    b.uniform_profiles((0.5, 1.0))
    return quantize(b.build(), rng.standard_normal((4, 3, 6, 6)).astype(np.float32), depthwise=True,
                    first_layer=True)


def raw_bytes(meta: dict, tensors: dict) -> bytes:
    """A .slim container without validation (to reach the engine's own checks)."""
    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                  metadata={"slimrt": json.dumps(meta)})


def with_op(slim: fmt.SlimFile, name: str, **fields) -> dict:
    meta = json.loads(json.dumps(slim.meta))
    for op in meta["ops"]:
        if op["name"] == name:
            op.update(fields)
            for k, v in fields.items():
                if v is None:
                    del op[k]
    return meta


BAD_CASES = ["version_1", "unknown_precision", "precision_on_pool", "float_weight_of_int8", "int8_weight_of_float",
             "no_wscale", "no_xscale", "wscale_shape", "xscale_shape", "profile_xscale_shape", "zero_scale",
             "nan_scale", "negative_scale", "xscale_f64"]


def bad_cases(slim: fmt.SlimFile) -> dict[str, tuple[dict, dict, str]]:
    t = slim.tensors
    drop = lambda name: {k: v for k, v in t.items() if k != name}  # noqa: E731
    put = lambda name, value: {**t, name: value}  # noqa: E731
    v1 = json.loads(json.dumps(slim.meta))
    v1["format_version"] = 1
    cases = [
        ("version_1", v1, t, "needs format_version 2"),
        ("unknown_precision", with_op(slim, "c1", precision="int4"), t, "precision"),
        ("precision_on_pool", {**slim.meta, "ops": slim.meta["ops"][:2] + [
            {**slim.meta["ops"][2], "precision": "int8"}] + slim.meta["ops"][3:]}, t, "precision"),
        ("float_weight_of_int8", slim.meta, put("c1.weight", t["c1.weight"].astype(np.float32)), "'c1.weight'"),
        ("int8_weight_of_float", with_op(slim, "c1", precision=None), t, "'c1.weight'"),
        ("no_wscale", slim.meta, drop("fc.wscale"), "'fc.wscale'"),
        ("no_xscale", slim.meta, drop("dw.xscale"), "'dw.xscale'"),
        ("wscale_shape", slim.meta, put("c1.wscale", np.ones(7, np.float32)), "'c1.wscale'"),
        ("xscale_shape", slim.meta, put("fc.xscale", np.ones(2, np.float32)), "'fc.xscale'"),
        ("profile_xscale_shape", slim.meta, put("fc.xscale@0.5", np.ones(3, np.float32)), "'fc.xscale@0.5'"),
        ("zero_scale", slim.meta, put("dw.wscale", np.zeros(8, np.float32)), "finite and > 0"),
        ("nan_scale", slim.meta, put("c1.xscale@1.0", np.array([np.nan], np.float32)), "finite and > 0"),
        ("negative_scale", slim.meta, put("fc.xscale", np.array([-1.0], np.float32)), "finite and > 0"),
        ("xscale_f64", slim.meta, put("fc.xscale", np.ones(1, np.float64)), "'fc.xscale'"),
    ]
    return {name: (meta, tensors, expect) for name, meta, tensors, expect in cases}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_int8_files_are_refused_by_both_readers(small_int8, case):
    cases = bad_cases(small_int8)
    assert sorted(cases) == sorted(BAD_CASES)
    meta, tensors, expect = cases[case]
    data = raw_bytes(meta, tensors)
    with pytest.raises(slimrt.InvalidModelError, match=re.escape(expect)):
        fmt.read(data)
    with pytest.raises(slimrt.InvalidModelError, match=re.escape(expect)):
        slimrt.load(data)


def test_int8_files_round_trip_and_float_files_stay_version_1(small_int8, tmp_path):
    path = tmp_path / "m.slim"
    fmt.write(small_int8, path)
    again = fmt.read(path)
    for name, array in small_int8.tensors.items():
        assert again.tensors[name].dtype == array.dtype and np.array_equal(again.tensors[name], array)
    assert {op["name"]: op.get("precision") for op in again.meta["ops"]} == {
        "c1": "int8", "dw": "int8", "fc": "int8", **{op["name"]: None for op in again.meta["ops"][2:-1]}}
    assert slimrt.load(path).precision == "int8"
    # old (version 1, float) files are read, and a float model is still written as version 1
    assert fmt.read(slimrt.default_model_path()).meta["format_version"] == 1
    assert slimrt.load(slimrt.default_model_path()).precision == "float32"
    b = ModelBuilder("f", input_shape=(1, 3, 4, 4))
    b.set_output(b.conv(b.input, np.ones((2, 3, 1, 1), np.float32), out_group=b.group("g", 2)))
    b.uniform_profiles((1.0,))
    assert b.build().meta["format_version"] == fmt.FLOAT_FORMAT_VERSION == 1


def test_grouped_conv_has_no_int8_form():
    rng = np.random.default_rng(0)
    b = ModelBuilder("g8", input_shape=(1, 4, 5, 5))
    y = b.conv(b.input, weights(rng, 6, 2, 3, 3), groups=2, out_group=b.group("o", 6, fixed=True, why="grouped"),
               padding=1, name="gconv")
    b.set_output(y)
    b.uniform_profiles((1.0,))
    slim = b.build()
    with pytest.raises(ValueError, match="no conv or linear to quantize"):
        quantize(slim, rng.standard_normal((2, 4, 5, 5)).astype(np.float32))
    meta = with_op(slim, "gconv", precision="int8")
    meta["format_version"] = 2
    q, s = quantize_weights(slim.tensors["gconv.weight"], -1)
    tensors = {**slim.tensors, "gconv.weight": q, "gconv.wscale": s, "gconv.xscale": np.ones(1, np.float32)}
    for read in (fmt.read, slimrt.load):
        with pytest.raises(slimrt.InvalidModelError, match="grouped conv, which has no int8 form"):
            read(raw_bytes(meta, tensors))


def test_by_default_depthwise_and_first_layers_stay_float32(default_int8):
    slim = fmt.read(slimrt.default_model_path())
    shapes = fmt.infer_shapes(slim.meta)
    kinds = {op.name: (fmt.conv_kind(op, shapes[op.inputs[0]][1]) if op.kind == "conv" else op.kind,
                       op.inputs[0] == slim.meta["input"]["name"]) for op in fmt.parse_ops(slim.meta)}
    precision = {op["name"]: op.get("precision", "float32") for op in default_int8.meta["ops"]}
    for name, (kind, first) in kinds.items():
        want = "int8" if kind in ("dense", "linear") and not first else "float32"
        assert precision[name] == want, (name, kind, first)
    assert "int8" in precision.values() and any(k == "depthwise" for k, _ in kinds.values())
    everything = quantize(slim, np.random.default_rng(0).random((4, 1, 24, 24)).astype(np.float32), samples=4,
                          depthwise=True, first_layer=True)
    assert {op["name"] for op in everything.meta["ops"] if op.get("precision") == "int8"} == {
        name for name, (kind, _) in kinds.items() if kind in ("dense", "linear", "depthwise")}
