"""Every kernel, through single-op models, against the numpy reference executor.

Odd channel counts (1, 3, 7, 13, 127) and every prefix width of the channels
under test; strides, padding and dilation; each instruction-set variant of the
dense convolution that this CPU runs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import slimrt
from slimrt import _core
from slimrt.builder import ModelBuilder
from slimrt.format import to_bytes
from slimrt.reference import run_reference

ISAS = [isa for isa in ("generic", "avx2", "avx512f") if _core.set_isa(isa)]
_core.set_isa("avx512f") or _core.set_isa("avx2") or _core.set_isa("generic")


@pytest.fixture(params=ISAS)
def isa(request):
    before = _core.isa()
    assert _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


def weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def vec(rng: np.random.Generator, n: int, loc: float = 0.0) -> np.ndarray:
    return (loc + 0.2 * rng.standard_normal(n)).astype(np.float32)


def check_all_profiles(builder: ModelBuilder, x: np.ndarray, rtol: float = 1e-4) -> int:
    slim = builder.build()
    model = slimrt.load(to_bytes(slim))
    session = model.session()
    for profile in model.profiles:
        got = session.run(x, profile.name)
        want = run_reference(slim, x, profile.name)
        assert got.shape == want.shape, profile.name
        scale = max(float(np.abs(want).max()), 1e-6)
        err = float(np.abs(got - want).max()) / scale
        assert err <= rtol, f"profile {profile.name}: relative error {err:.2e}"
    return len(model.profiles)


# Every activation, the parameterised ones with their defaults and with other values.
ACTIVATIONS = [("none", {}), ("relu", {}), ("relu6", {}), ("hardswish", {}), ("silu", {}), ("sigmoid", {}),
               ("leaky_relu", {}), ("leaky_relu", {"act_alpha": 0.3}), ("tanh", {}), ("gelu", {}),
               ("hardsigmoid", {}), ("hardsigmoid", {"act_alpha": 1 / 6, "act_beta": 0.5}), ("elu", {}),
               ("elu", {"act_alpha": 0.4})]
ACT_IDS = [a + "".join(f"-{v:.3g}" for v in kw.values()) for a, kw in ACTIVATIONS]


def stem(b: ModelBuilder, rng, cin: int, size: int, name: str = "a") -> tuple[str, int]:
    """A 1x1 conv from the input into a new group of `size` channels."""
    g = b.group(name, size)
    t = b.conv(b.input, weights(rng, size, cin, 1, 1), out_group=g, bias=vec(rng, size), act="relu")
    return t, g


@pytest.mark.parametrize(
    "cin,cout,kernel,stride,pad,dil",
    [
        (1, 3, 3, 1, 1, 1),
        (3, 7, 3, 2, 1, 1),
        (7, 13, 1, 1, 0, 1),
        (13, 1, 5, 1, 2, 2),
        (13, 127, 3, 2, (0, 1, 2, 1), 1),
        (7, 33, (3, 5), (2, 1), (1, 2), (2, 1)),
    ],
)
def test_dense_conv_every_width(isa, cin, cout, kernel, stride, pad, dil):
    rng = np.random.default_rng(cin * 1000 + cout)
    b = ModelBuilder("conv", input_shape=(2, 3, 11, 13), min_multiplier=0.01)
    a, ga = stem(b, rng, 3, cin)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    gb = b.group("b", cout)
    y = b.conv(a, weights(rng, cout, cin, kh, kw), out_group=gb, scale=vec(rng, cout, 1.0), bias=vec(rng, cout),
               stride=stride, padding=pad, dilation=dil, act="none")
    b.set_output(y)
    pairs = {(wa, cout) for wa in range(1, cin + 1)} | {(cin, wb) for wb in range(1, cout + 1)}
    pairs |= {(max(1, cin // 2), max(1, cout // 3))}
    for wa, wb in sorted(pairs):
        b.profile(f"{wa}x{wb}", {"a": wa, "b": wb})
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    assert check_all_profiles(b, x) == len(pairs)


@pytest.mark.parametrize("cin,kernel,stride,pad,dil", [(3, 7, 2, 3, 1), (13, 3, 1, 1, 1), (16, 3, 2, (0, 1, 1, 0), 1),
                                                     (7, 3, 1, 2, 2), (24, 1, 1, 0, 1)])
def test_dense_conv_long_rows(isa, cin, kernel, stride, pad, dil):
    """Output rows long enough for tiles that read their input in place, next to padded borders."""
    rng = np.random.default_rng(cin + 100 * kernel)
    b = ModelBuilder("rows", input_shape=(2, 3, 9, 61), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, cin)
    g = b.group("b", 37)
    y = b.conv(a, weights(rng, 37, cin, kernel, kernel), out_group=g, bias=vec(rng, 37), stride=stride,
               padding=pad, dilation=dil, act="relu")
    b.set_output(y)
    for wa, wb in [(cin, 37), (1, 37), (cin, 5), (max(1, cin // 2), 17), (cin, 33)]:
        b.profile(f"{wa}x{wb}", {"a": wa, "b": wb})
    check_all_profiles(b, rng.standard_normal((2, 3, 9, 61)).astype(np.float32))


@pytest.mark.parametrize("cin,kernel,stride,pad", [(512, 1, 1, 0), (256, 3, 2, 1), (512, 3, 1, 1), (200, 3, 1, 1)])
def test_dense_conv_wide_inputs(isa, cin, kernel, stride, pad):
    """Several K chunks, read in place or, at pixel strides that are multiples of 2 KiB, from copied tiles."""
    rng = np.random.default_rng(cin + kernel)
    b = ModelBuilder("wide", input_shape=(1, 3, 7, 9), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, cin)
    g = b.group("b", 45)
    y = b.conv(a, weights(rng, 45, cin, kernel, kernel) / np.sqrt(cin), out_group=g, bias=vec(rng, 45),
               stride=stride, padding=pad, act="relu")
    b.set_output(y)
    for wa, wb in [(cin, 45), (cin, 16), (cin, 1), (cin // 2, 45), (cin - 1, 33)]:
        b.profile(f"{wa}x{wb}", {"a": wa, "b": wb})
    check_all_profiles(b, rng.standard_normal((1, 3, 7, 9)).astype(np.float32))


@pytest.mark.parametrize("conv_last", [True, False])
def test_residual_add_after_conv(isa, conv_last):
    """A conv feeding an Add performs it in its epilogue when both operands have the same width at that profile,
    and leaves it to the Add otherwise; the other operand produced before or after the conv."""
    rng = np.random.default_rng(11)
    b = ModelBuilder("res", input_shape=(1, 3, 9, 14), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 21, "a")
    gc = b.group("c", 21)
    if conv_last:
        r, _ = stem(b, rng, 3, 17, "r")
        y = b.conv(a, weights(rng, 21, 21, 3, 3) / 5, out_group=gc, bias=vec(rng, 21), padding=1)
        out = b.add(r, y, act="relu")
    else:
        y = b.conv(a, weights(rng, 21, 21, 3, 3) / 5, out_group=gc, bias=vec(rng, 21), padding=1)
        r, _ = stem(b, rng, 3, 17, "r")
        out = b.add(y, r, act="relu6")
    b.set_output(b.conv(out, weights(rng, 5, 21, 1, 1), out_group=b.group("o", 5), act="none"))
    for wa, wc, wr in [(21, 21, 17), (21, 17, 17), (9, 12, 12), (21, 3, 12), (1, 1, 1), (5, 16, 17)]:
        b.profile(f"{wa}-{wc}-{wr}", {"a": wa, "c": wc, "r": wr, "o": 5})
    check_all_profiles(b, rng.standard_normal((1, 3, 9, 14)).astype(np.float32))


@pytest.mark.parametrize("cin,kernel,stride,pad", [(3, 7, 2, 3), (3, 3, 2, 1), (1, 3, 1, 1), (4, 5, 2, (2, 0, 1, 2)),
                                                    (3, 3, 1, 0), (2, 7, 2, 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_first_conv_reads_nchw_input(isa, cin, kernel, stride, pad, threads):
    """A first layer over few input channels reads the caller's NCHW buffer in place."""
    rng = np.random.default_rng(cin * 100 + kernel * 10 + stride)
    shape = (2, cin, 23, 29)
    b = ModelBuilder("first", input_shape=shape, min_multiplier=0.01)
    g = b.group("a", 35)
    y = b.conv(b.input, weights(rng, 35, cin, kernel, kernel), out_group=g, scale=vec(rng, 35, 1.0),
               bias=vec(rng, 35), stride=stride, padding=pad, act="relu")
    b.set_output(y)
    for w in (35, 32, 17, 16, 3, 1):
        b.profile(str(w), {"a": w})
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = rng.standard_normal(shape).astype(np.float32)
    for w in (35, 32, 17, 16, 3, 1):
        want = run_reference(slim, x, str(w))
        got = session.run(x, str(w))
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4 * max(float(np.abs(want).max()), 1e-6), w


@pytest.mark.parametrize("act,params", ACTIVATIONS, ids=ACT_IDS)
def test_fused_activations(isa, act, params):
    rng = np.random.default_rng(7)
    b = ModelBuilder("act", input_shape=(1, 3, 9, 9), min_multiplier=0.1)
    a, _ = stem(b, rng, 3, 19)
    g = b.group("b", 21)
    y = b.conv(a, 3 * weights(rng, 21, 19, 3, 3), out_group=g, bias=vec(rng, 21), padding=1, act=act, **params)
    b.set_output(y)
    for wa, wb in [(19, 21), (3, 17), (1, 1), (11, 5)]:
        b.profile(f"{wa}x{wb}", {"a": wa, "b": wb})
    check_all_profiles(b, rng.standard_normal((1, 3, 9, 9)).astype(np.float32))


@pytest.mark.parametrize("c,kernel,stride,pad,dil", [(3, 3, 1, 1, 1), (7, 3, 2, 1, 1), (13, 5, 1, 2, 1),
                                                     (127, 3, 2, (1, 0, 1, 2), 2)])
def test_depthwise_every_width(isa, c, kernel, stride, pad, dil):
    rng = np.random.default_rng(c)
    b = ModelBuilder("dw", input_shape=(2, 3, 12, 10), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, c)
    y = b.conv(a, weights(rng, c, 1, kernel, kernel), groups=c, scale=vec(rng, c, 1.0), bias=vec(rng, c),
               stride=stride, padding=pad, dilation=dil, act="relu6")
    b.set_output(y)
    for w in range(1, c + 1):
        b.profile(str(w), {"a": w})
    assert check_all_profiles(b, rng.standard_normal((2, 3, 12, 10)).astype(np.float32)) == c


@pytest.mark.parametrize("kernel,stride,pad", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (7, 2, 3)])
def test_depthwise_long_rows(isa, kernel, stride, pad):
    """Rows long enough for runs of interior pixels that share their loads, next to padded borders."""
    rng = np.random.default_rng(kernel * 10 + stride)
    b = ModelBuilder("dwrows", input_shape=(1, 3, 9, 45), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 37)
    y = b.conv(a, weights(rng, 37, 1, kernel, kernel), groups=37, bias=vec(rng, 37), stride=stride,
               padding=pad, act="relu")
    b.set_output(y)
    for w in (37, 16, 21, 5, 1):
        b.profile(str(w), {"a": w})
    check_all_profiles(b, rng.standard_normal((1, 3, 9, 45)).astype(np.float32))


def test_grouped_conv_full_width():
    rng = np.random.default_rng(3)
    b = ModelBuilder("grouped", input_shape=(1, 3, 8, 8), min_multiplier=1.0)
    a = b.conv(b.input, weights(rng, 12, 3, 1, 1), out_group=b.group("a", 12, fixed=True, why="grouped conv"))
    g = b.group("b", 8, fixed=True, why="grouped conv output")
    y = b.conv(a, weights(rng, 8, 3, 3, 3), out_group=g, groups=4, padding=1, bias=vec(rng, 8), act="relu")
    b.set_output(y)
    b.profile("full", {})
    check_all_profiles(b, rng.standard_normal((1, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("kind", ["maxpool", "avgpool", "avgpool_pad"])
@pytest.mark.parametrize("kernel,stride,pad,ceil", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False),
                                                    (2, 3, 0, True)])
def test_pooling_every_width(isa, kind, kernel, stride, pad, ceil):
    rng = np.random.default_rng(11)
    b = ModelBuilder("pool", input_shape=(2, 3, 11, 9), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 13)
    if kind == "maxpool":
        y = b.maxpool(a, kernel, stride=stride, padding=pad, ceil_mode=ceil)
    else:
        y = b.avgpool(a, kernel, stride=stride, padding=pad, ceil_mode=ceil, count_include_pad=kind == "avgpool_pad")
    b.set_output(y)
    for w in range(1, 14):
        b.profile(str(w), {"a": w})
    check_all_profiles(b, rng.standard_normal((2, 3, 11, 9)).astype(np.float32))


def test_add_with_unequal_widths():
    """Zero padding match: operands of different widths; the sum has the wider one."""
    rng = np.random.default_rng(5)
    b = ModelBuilder("add", input_shape=(1, 3, 7, 7), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 13, "a")
    c, _ = stem(b, rng, 3, 7, "c")
    y = b.add(a, c, act="relu")
    b.set_output(y)
    for wa, wc in itertools.product([1, 5, 7, 13], [1, 3, 7]):
        b.profile(f"{wa}+{wc}", {"a": wa, "c": wc})
    check_all_profiles(b, rng.standard_normal((1, 3, 7, 7)).astype(np.float32))


def test_concat_then_depthwise_and_dense(isa):
    """A concat's channels are segments: consumers read their weight rows per segment."""
    rng = np.random.default_rng(9)
    b = ModelBuilder("concat", input_shape=(1, 3, 8, 8), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 7, "a")
    c, _ = stem(b, rng, 3, 13, "c")
    cat = b.concat([a, c])
    d = b.conv(cat, weights(rng, 20, 1, 3, 3), groups=20, padding=1, bias=vec(rng, 20), act="silu")
    g = b.group("out", 11)
    y = b.conv(d, weights(rng, 11, 20, 3, 3), out_group=g, padding=1, bias=vec(rng, 11), act="hardswish")
    b.set_output(y)
    for wa, wc, wo in [(7, 13, 11), (1, 13, 11), (7, 1, 5), (3, 5, 1), (1, 1, 1)]:
        b.profile(f"{wa}-{wc}-{wo}", {"a": wa, "c": wc, "out": wo})
    check_all_profiles(b, rng.standard_normal((1, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("spatial", [1, 3])
def test_linear_after_flatten_every_width(isa, spatial):
    rng = np.random.default_rng(spatial)
    hw = 2 * spatial
    b = ModelBuilder("linear", input_shape=(3, 3, hw, hw), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 13)
    t = b.maxpool(a, 2, stride=2) if spatial > 1 else b.global_avgpool(a)
    f = b.flatten(t)
    g = b.group("fc", 127)
    h = b.linear(f, weights(rng, 127, 13 * spatial * spatial), out_group=g, bias=vec(rng, 127), act="relu")
    g2 = b.group("cls", 5, fixed=True, why="classifier output")
    y = b.softmax(b.linear(h, weights(rng, 5, 127), out_group=g2, bias=vec(rng, 5)))
    b.set_output(y)
    for wa, wf in [(13, 127), (1, 127), (13, 1), (7, 64), (2, 3)]:
        b.profile(f"{wa}-{wf}", {"a": wa, "fc": wf})
    check_all_profiles(b, rng.standard_normal((3, 3, hw, hw)).astype(np.float32))


@pytest.mark.parametrize("act,params", ACTIVATIONS, ids=ACT_IDS)
def test_standalone_activation(act, params):
    rng = np.random.default_rng(2)
    b = ModelBuilder("act", input_shape=(1, 3, 5, 5), min_multiplier=0.01)
    a = b.conv(b.input, 4 * weights(rng, 9, 3, 1, 1), out_group=b.group("a", 9))
    b.set_output(b.act(a, act, alpha=params.get("act_alpha"), beta=params.get("act_beta")))
    for w in (1, 4, 9):
        b.profile(str(w), {"a": w})
    check_all_profiles(b, rng.standard_normal((1, 3, 5, 5)).astype(np.float32))


@pytest.mark.parametrize("c,groups", [(12, 3), (13, 1), (13, 13), (32, 4), (127, 127)])
def test_channel_shuffle_between_fixed_and_sliceable_groups(c, groups):
    """fixed-group conv -> shuffle -> dense conv whose output group is sliced at every width."""
    rng = np.random.default_rng(17)
    b = ModelBuilder("shuffle", input_shape=(2, 3, 5, 7), min_multiplier=0.01)
    a = b.conv(b.input, weights(rng, c, 3, 1, 1), out_group=b.group("a", c, fixed=True, why="shuffle input"),
               bias=vec(rng, c), act="relu")
    s = b.shuffle(a, groups)
    out = 7
    y = b.conv(s, weights(rng, out, c, 3, 3), out_group=b.group("b", out), padding=1, bias=vec(rng, out))
    b.set_output(y)
    for w in range(1, out + 1):
        b.profile(str(w), {"b": w})
    assert check_all_profiles(b, rng.standard_normal((2, 3, 5, 7)).astype(np.float32)) == out


@pytest.mark.parametrize("act,params", ACTIVATIONS, ids=ACT_IDS)
def test_activations_of_every_kernel_propagate_nan(isa, act, params):
    """One NaN input pixel: every kernel that applies an activation (dense, depthwise and grouped
    conv epilogues, add, the act op, linear) gives NaN exactly where numpy does, and the
    reference's values elsewhere, at every width of the odd-sized group."""
    rng = np.random.default_rng(23)
    b = ModelBuilder("nan", input_shape=(2, 3, 7, 19), min_multiplier=0.01)
    g = b.group("a", 13)
    a = b.conv(b.input, 3 * weights(rng, 13, 3, 3, 3), out_group=g, bias=vec(rng, 13), padding=1, act=act,
               **params)
    d = b.conv(a, 3 * weights(rng, 13, 1, 3, 3), groups=13, bias=vec(rng, 13), padding=1, act=act, **params)
    s = b.add(a, d, act=act, **params)
    t = b.act(s, act, alpha=params.get("act_alpha"), beta=params.get("act_beta"))
    fixed = b.group("fixed", 12, fixed=True, why="grouped conv")
    q = b.conv(b.input, 3 * weights(rng, 12, 3, 1, 1), out_group=fixed)
    q = b.conv(q, 3 * weights(rng, 12, 4, 3, 3), out_group=b.group("grouped", 12, fixed=True, why="grouped conv"),
               groups=3, padding=1, act=act, **params)
    h = b.linear(b.flatten(b.global_avgpool(t)), 3 * weights(rng, 11, 13), out_group=b.group("fc", 11), act=act,
                 **params)
    y = b.concat([b.conv(t, weights(rng, 5, 13, 1, 1), out_group=b.group("o", 5)),
                  b.conv(q, weights(rng, 5, 12, 1, 1), out_group=b.group("p", 5))])
    for w in range(1, 14):
        b.profile(str(w), {"a": w, "fc": 11 - w % 3, "o": 5, "p": 5})
    x = 2 * rng.standard_normal((2, 3, 7, 19)).astype(np.float32)
    x[0, 1, 0, 0] = np.nan  # image 1 stays finite
    for output in (y, h):
        b.set_output(output)
        slim = b.build()
        model = slimrt.load(to_bytes(slim))
        for p in model.profiles:
            got, want = model.run(x, p.name), run_reference(slim, x, p.name)
            assert np.array_equal(np.isnan(got), np.isnan(want)), p.name
            assert 0 < np.isnan(want).sum() < want.size
            ok = ~np.isnan(want)
            assert float(np.abs(got[ok] - want[ok]).max()) <= 1e-4 * float(np.abs(want[ok]).max()), p.name


@pytest.mark.parametrize("threads", [1, 2])
def test_prelu_every_width_after_a_concat_and_a_flatten(threads):
    """Slopes follow the channel map: a prefix, a concat's runs, the features of a flatten."""
    rng = np.random.default_rng(29)
    b = ModelBuilder("prelu", input_shape=(2, 3, 5, 7), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 7, "a")
    c, _ = stem(b, rng, 3, 13, "c")
    pa = b.prelu(b.conv(a, weights(rng, 7, 7, 1, 1), out_group="a"), rng.standard_normal(7))
    p = b.prelu(b.concat([pa, c]), rng.standard_normal(20))
    y = b.prelu(b.flatten(b.avgpool(p, 2)), rng.standard_normal(20 * 6))
    b.set_output(y)
    for wa, wc in [(7, 13), (1, 13), (7, 1), (3, 5), (1, 1), (6, 12)]:
        b.profile(f"{wa}-{wc}", {"a": wa, "c": wc})
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    x[1, 2, 3, 5] = np.nan
    for p in slim.meta["profiles"]:
        got, want = session.run(x, p["name"]), run_reference(slim, x, p["name"])
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).any()
        ok = ~np.isnan(want)
        assert float(np.abs(got[ok] - want[ok]).max()) <= 1e-5 * float(np.abs(want[ok]).max()), p["name"]


@pytest.mark.parametrize("threads", [1, 2])
def test_softmax_over_the_channels_of_every_pixel(threads):
    """Softmax of an NCHW map (a segmentation head) over the active channels of each pixel,
    a concat's runs included, at every width."""
    rng = np.random.default_rng(31)
    b = ModelBuilder("softmax", input_shape=(2, 3, 9, 11), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 7, "a")
    c, _ = stem(b, rng, 3, 13, "c")
    b.set_output(b.softmax(b.concat([a, c])))
    for wa, wc in [(7, 13), (1, 13), (7, 1), (3, 5), (1, 1)] + [(w, 13) for w in range(2, 7)]:
        b.profile(f"{wa}-{wc}", {"a": wa, "c": wc})
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = 3 * rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    for p in slim.meta["profiles"]:
        got, want = session.run(x, p["name"]), run_reference(slim, x, p["name"])
        assert got.shape == want.shape == (2, sum(p["widths"]), 9, 11)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
        assert float(np.abs(got - want).max()) <= 1e-5, p["name"]


@pytest.mark.parametrize("threads", [1, 2])
def test_scale_bias_every_width_with_profile_epilogues(isa, threads):
    """A standalone per-channel affine (+ activation) on a prefix, on a concat's runs and on the
    features of a flatten; shared vectors gathered per channel map, a profile's own in its order."""
    rng = np.random.default_rng(37)
    b = ModelBuilder("scale_bias", input_shape=(2, 3, 5, 7), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 7, "a")
    c, _ = stem(b, rng, 3, 13, "c")
    pa = b.scale_bias(a, vec(rng, 7, 1.0), vec(rng, 7), act="hardswish", name="pa")
    p = b.scale_bias(b.concat([pa, c]), vec(rng, 20, 1.0), vec(rng, 20), act="relu6", name="p")
    q = b.scale_bias(p, bias=vec(rng, 20), name="q")
    y = b.scale_bias(b.flatten(b.avgpool(q, 2)), vec(rng, 120, 1.0), name="y")
    b.set_output(y)
    pairs = [(7, 13), (1, 13), (7, 1), (3, 5), (1, 1)] + [(w, 13 - w) for w in range(2, 7)]
    for wa, wc in pairs:
        b.profile(f"{wa}-{wc}", {"a": wa, "c": wc})
    b.epilogue("p", "3-5", vec(rng, 8, 1.0), vec(rng, 8))
    b.epilogue("pa", "1-1", None, vec(rng, 1))
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    for p in slim.meta["profiles"]:
        got, want = session.run(x, p["name"]), run_reference(slim, x, p["name"])
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).any()
        ok = ~np.isnan(want)
        assert float(np.abs(got[ok] - want[ok]).max()) <= 1e-5 * float(np.abs(want[ok]).max()), p["name"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c,r", [(3, 1), (13, 5), (37, 11), (127, 7)])
def test_channel_gate_every_width(isa, threads, c, r):
    """Squeeze-and-excitation: pool -> conv -> relu -> conv -> hardsigmoid gates the depthwise
    output; the gate's conv writes the gated group, the reduced channels are a group of their own;
    every width of both."""
    rng = np.random.default_rng(41 + c)
    b = ModelBuilder("se", input_shape=(2, 3, 7, 9), min_multiplier=0.01)
    a, ga = stem(b, rng, 3, c, "a")
    d = b.conv(a, weights(rng, c, 1, 3, 3), groups=c, padding=1, bias=vec(rng, c), act="relu6")
    s = b.conv(b.global_avgpool(d), weights(rng, r, c, 1, 1), out_group=b.group("se", r), bias=vec(rng, r), act="relu")
    g = b.conv(s, 3 * weights(rng, c, r, 1, 1), out_group=ga, bias=vec(rng, c), act="hardsigmoid", act_alpha=1 / 6)
    y = b.mul(d, g)
    b.set_output(b.conv(y, weights(rng, 5, c, 1, 1), out_group=b.group("o", 5, fixed=True)))
    pairs = {(wa, r) for wa in range(1, c + 1, max(1, c // 13))} | {(c, ws) for ws in range(1, r + 1)}
    for wa, ws in sorted(pairs):
        b.profile(f"{wa}-{ws}", {"a": wa, "se": ws})
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    for p in slim.meta["profiles"]:
        got, want = session.run(x, p["name"]), run_reference(slim, x, p["name"])
        assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max()), p["name"]


def test_channel_gate_made_by_linears(isa):
    """pool -> flatten -> linear -> relu -> linear -> sigmoid -> unflatten gates a map; the
    unflatten is the same memory."""
    rng = np.random.default_rng(43)
    b = ModelBuilder("se_linear", input_shape=(3, 3, 5, 6), min_multiplier=0.01)
    a, ga = stem(b, rng, 3, 21, "a")
    s = b.linear(b.flatten(b.global_avgpool(a)), weights(rng, 6, 21), out_group=b.group("se", 6), act="relu")
    g = b.unflatten(b.linear(s, 3 * weights(rng, 21, 6), out_group=ga, bias=vec(rng, 21), act="sigmoid"))
    b.set_output(b.mul(a, g))
    for wa, ws in [(21, 6), (1, 1), (7, 3), (20, 5), (13, 6), (21, 1)]:
        b.profile(f"{wa}-{ws}", {"a": wa, "se": ws})
    check_all_profiles(b, rng.standard_normal((3, 3, 5, 6)).astype(np.float32))


@pytest.mark.parametrize("act,params", [a for a in ACTIVATIONS if a[0] != "none"], ids=ACT_IDS[1:])
def test_vector_activations_are_accurate_everywhere(isa, act, params):
    """The act op over [-30, 30] and over tiny magnitudes of both signs: every vector form (the exp
    built ones from their own exp, tanh, expm1 and erfc) within 1e-6 of numpy's float64 value,
    relative, plus 1e-7 |x| for the rounding of x itself (hardsigmoid's 0.2 x + 0.5 near 0, GELU's
    exp(-x^2 / 2) far out); near 0 that leaves the relative bound alone."""
    values = np.concatenate([np.linspace(-30, 30, 3001), np.geomspace(1e-7, 1, 101), -np.geomspace(1e-7, 1, 101),
                             [0.0, -0.0, np.nan]])
    x = values.astype(np.float32).reshape(1, 1, 1, -1)
    b = ModelBuilder("act", input_shape=x.shape, min_multiplier=1.0)
    b.act(b.input, act, alpha=params.get("act_alpha"), beta=params.get("act_beta"))
    slim = b.build()
    got, want = slimrt.load(to_bytes(slim)).run(x), run_reference(slim, x, 1.0)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    bound = 1e-6 * np.abs(want[ok]) + 1e-7 * np.abs(x[ok]) + 1e-30
    assert np.all(err <= bound), f"worst at x = {x[ok][np.argmax(err / bound)]}: {got[ok][np.argmax(err / bound)]}"


@pytest.mark.parametrize("threads", [1, 2])
def test_channel_slices_of_a_fixed_group(threads):
    """A channel split of a fixed group into odd parts; the parts feed sliced layers at every width."""
    rng = np.random.default_rng(47)
    b = ModelBuilder("split", input_shape=(2, 3, 5, 7), min_multiplier=0.01)
    a = b.conv(b.input, weights(rng, 13, 3, 1, 1), out_group=b.group("a", 13, fixed=True, why="split input"),
               bias=vec(rng, 13), act="relu")
    parts = [b.slice(a, 0, 5), b.slice(a, 5, 6), b.slice(a, 6, 13)]
    g = b.group("g", 9)
    y = b.conv(parts[2], weights(rng, 9, 7, 3, 3), out_group=g, padding=1, bias=vec(rng, 9))
    y = b.concat([parts[0], b.conv(parts[1], weights(rng, 9, 1, 1, 1), out_group=g), y])
    b.set_output(y)
    for w in range(1, 10):
        b.profile(str(w), {"g": w})
    slim = b.build()
    session = slimrt.load(to_bytes(slim)).session(threads)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    for p in slim.meta["profiles"]:
        got, want = session.run(x, p["name"]), run_reference(slim, x, p["name"])
        assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max()), p["name"]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [1, 2, 3, (2, 3)])
def test_resize_every_width(mode, scale):
    """Upsampling by integer factors, on a concat's runs at every width; odd sizes and factors."""
    rng = np.random.default_rng(53)
    b = ModelBuilder("resize", input_shape=(2, 3, 5, 7), min_multiplier=0.01)
    a, _ = stem(b, rng, 3, 7, "a")
    c, _ = stem(b, rng, 3, 13, "c")
    b.set_output(b.resize(b.concat([a, c]), scale, mode))
    for wa, wc in [(7, 13), (1, 13), (7, 1), (3, 5), (1, 1)]:
        b.profile(f"{wa}-{wc}", {"a": wa, "c": wc})
    check_all_profiles(b, rng.standard_normal((2, 3, 5, 7)).astype(np.float32), rtol=1e-5)


def assert_same_specials(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """NaN, +Inf and -Inf exactly where numpy has them, numpy's values elsewhere."""
    want = want.astype(np.float32)
    assert got.shape == want.shape, what
    for kind, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        assert np.array_equal(test(got), test(want)), f"{what}: {kind} at {np.argwhere(test(got) != test(want))[:3]}"
    ok = np.isfinite(want)
    if ok.any():
        assert float(np.abs(got[ok] - want[ok]).max()) <= 1e-4 * max(float(np.abs(want[ok]).max()), 1.0), what


# Single-op models over a 19-channel input (a full vector and a partial one per pixel).
SPECIAL_OPS = {
    "maxpool 3x3/2 pad 1": lambda b, rng: b.maxpool(b.input, 3, stride=2, padding=1),
    "maxpool 2x2 ceil": lambda b, rng: b.maxpool(b.input, 2, ceil_mode=True),
    "maxpool after a concat": lambda b, rng: b.maxpool(
        b.concat([b.conv(b.input, weights(rng, 13, 19, 1, 1), out_group=b.group("a", 13)), b.input]), 3, stride=1),
    "avgpool 3x3/2 pad 1": lambda b, rng: b.avgpool(b.input, 3, stride=2, padding=1),
    "global avgpool": lambda b, rng: b.flatten(b.global_avgpool(b.input)),
    "resize nearest": lambda b, rng: b.resize(b.input, 2, "nearest"),
    "resize bilinear": lambda b, rng: b.resize(b.input, (2, 3), "bilinear"),
    "softmax": lambda b, rng: b.softmax(b.input),
    "shuffle": lambda b, rng: b.shuffle(b.input, 19),
    "prelu": lambda b, rng: b.prelu(b.input, rng.standard_normal(19)),
    "dense conv relu": lambda b, rng: b.conv(b.input, weights(rng, 21, 19, 3, 3), out_group=b.group("a", 21),
                                             padding=1, act="relu"),
    "depthwise 5x5/2 relu6": lambda b, rng: b.conv(b.input, weights(rng, 19, 1, 5, 5), groups=19, padding=2,
                                                   stride=2, act="relu6"),
}
SLICED_SPECIAL_OPS = {"maxpool after a concat", "dense conv relu"}
SPECIAL_INPUTS = ["one nan", "one +inf", "one -inf", "all nan", "all +inf", "all -inf"]


@pytest.mark.parametrize("inputs", SPECIAL_INPUTS)
@pytest.mark.parametrize("op", sorted(SPECIAL_OPS))
def test_nan_and_inf_propagate_as_in_numpy(isa, op, inputs):
    """Pooling (max pooling above all: an IEEE max written so NaN survives), resize, softmax,
    shuffle, prelu and conv epilogues give NaN and +-Inf exactly where numpy does, for single
    special values and for inputs made of nothing else, at every width."""
    rng = np.random.default_rng(59)
    b = ModelBuilder("special", input_shape=(2, 19, 7, 9), min_multiplier=0.01)
    b.set_output(SPECIAL_OPS[op](b, rng))
    if op in SLICED_SPECIAL_OPS:
        for w in (1, 7, 13, 16, 21):
            b.profile(str(w), {"a": min(w, b.group_size("a"))})
    slim = b.build()
    value = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[inputs.split()[1]]
    x = rng.standard_normal((2, 19, 7, 9)).astype(np.float32)
    if inputs.startswith("all"):
        x[:] = value
    else:  # a corner, an interior pixel and a channel of the partial vector
        x[0, 0, 0, 0] = x[1, 7, 3, 4] = x[0, 18, 6, 8] = value
    model = slimrt.load(to_bytes(slim))
    keys = [p.name for p in model.profiles] or [1.0]
    for key in keys:
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, inf * 0: NaN is the point
            want = run_reference(slim, x, key)
        assert_same_specials(model.run(x, key), want, f"{op}, profile {key}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c1, c2, hidden", [(1, 2, 1), (3, 4, 5), (7, 6, 3), (13, 11, 8), (127, 5, 7)])
def test_gate_head_on_a_concat_every_choice(threads, c1, c2, hidden):
    """The gate reads its input's active channels in channel-map order: here a concat of two
    narrowed groups, so its channels are two runs, not a prefix."""
    from slimrt import format as fmt
    from slimrt.reference import run_reference_gated

    rng = np.random.default_rng(c1 + c2)
    b = ModelBuilder("gate", input_shape=(2, 3, 5, 7))
    a = b.conv(b.input, weights(rng, c1 + 2, 3, 1, 1), out_group=b.group("a", c1 + 2), act="relu")
    c = b.conv(b.input, weights(rng, c2 + 1, 3, 3, 3), out_group=b.group("c", c2 + 1), padding=1, act="relu")
    cat = b.concat([a, c])
    cg = c1 + c2
    g = b.gate(cat, weights(rng, hidden, cg) * 3, vec(rng, hidden), weights(rng, cg, hidden), vec(rng, cg),
               weights(rng, 3, hidden) * 5, vec(rng, 3))
    y = b.conv(g, weights(rng, 9, cg + 3, 3, 3), out_group=b.group("body", 9), padding=1, act="relu")
    b.conv(y, weights(rng, 4, 9, 1, 1), out_group=b.group("out", 4, fixed=True))
    for w in (2, 5, 9):
        b.profile(f"w{w}", {"a": c1, "c": c2, "body": w})
    slim = b.build()
    assert fmt.channel_maps(slim.meta, slim.meta["profiles"][0]["widths"])[g].runs == ((0, c1), (c1 + 2, c2))
    x = rng.standard_normal((6, 3, 5, 7)).astype(np.float32)
    assert check_all_profiles(b, x) == 3
    session = slimrt.load(to_bytes(slim)).session(threads)
    got = session.run(x, "gate")
    want, choice, logits = run_reference_gated(slim, x)
    np.testing.assert_allclose(session.last_logits, logits, rtol=1e-4, atol=1e-4)
    same = session.last_choice == choice
    assert same.sum() >= 5  # a near tie may differ in float32
    np.testing.assert_allclose(got[same], want[same], rtol=1e-4, atol=1e-4)

