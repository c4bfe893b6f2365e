"""The trainable supernet computes what the engine computes, at every profile and multiplier.

The C++ engine is the oracle: a Supernet built from a .slim model, in eval mode, must give the
engine's output at every named profile (with its per-profile epilogues) and at uniform
multipliers between them; its forward_parallel must give, per slice, what forward gives at
that slice's widths; to_slim() must round-trip the function.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import slimrt
from slimrt import format as fmt
from slimrt.builder import ModelBuilder
from slimrt.models import concat_net, default_model, tiny_resnet, vgg_like
from slimrt.train.supernet import Supernet

TOL = 1e-4
MULTIPLIERS = (0.3, 0.41, 0.6, 0.77, 0.93)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _weights(rng: np.random.Generator):
    """Fan-in scaled random weights of a shape."""
    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    return w


def _scale_bias(rng: np.random.Generator):
    """BN-like scale and bias vectors of length n, as builder keyword arguments."""
    def sb(n: int) -> dict:
        return {"scale": rng.uniform(0.5, 1.5, n).astype(np.float32),
                "bias": (rng.standard_normal(n) * 0.1).astype(np.float32)}
    return sb


def odd_net(seed: int = 0) -> fmt.SlimFile:
    """Odd channel counts, a residual add of unequal widths, concat, depthwise, pools,
    asymmetric padding, a conv with bias only and a linear with BN-like scale."""
    rng = np.random.default_rng(seed)
    w, sb = _weights(rng), _scale_bias(rng)

    b = ModelBuilder("odd", input_shape=(2, 3, 13, 11), min_multiplier=0.2)
    a = b.group("a", 13)
    c = b.group("c", 21)
    d = b.group("d", 7)
    t = b.conv(b.input, w(13, 3, 3, 3), out_group=a, padding=1, act="relu", **sb(13))
    u = b.conv(t, w(13, 1, 3, 3), groups=13, padding=(0, 1, 2, 1), act="hardswish", **sb(13))
    v = b.conv(u, w(21, 13, 1, 1), out_group=c, stride=1, act="relu6", **sb(21))
    r = b.conv(t, w(21, 13, 3, 3), out_group=c, padding=(1, 1, 1, 1), bias=rng.standard_normal(21) * 0.1)
    s = b.add(v, r, act="silu")
    p = b.maxpool(s, (3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)
    q = b.conv(t, w(7, 13, 1, 1), out_group=d, stride=2, act="sigmoid", **sb(7))
    q = b.avgpool(q, (2, 2), stride=(1, 1), padding=(1, 0, 0, 1), count_include_pad=False)
    q = b.maxpool(q, (2, 2), stride=(1, 1), padding=(0, 1, 1, 0))
    g = b.global_avgpool(s)
    h = b.global_avgpool(q)
    cat = b.concat([g, h])
    f = b.flatten(cat)
    hidden = b.group("hidden", 19)
    f = b.linear(f, w(19, 28), out_group=hidden, act="relu", **sb(19))
    cls = b.group("classes", 5, fixed=True, why="classifier output")
    b.set_output(b.linear(f, w(5, 19), out_group=cls, bias=rng.standard_normal(5) * 0.1))
    b.uniform_profiles((0.2, 0.5, 1.0))
    b.profile("uneven", {"a": 3, "c": 9, "d": 5, "hidden": 11})
    return b.build()


def act_net(seed: int = 0) -> fmt.SlimFile:
    """The parameterised and the newer activations, fused into convs, a linear and an add, and
    as act ops, over odd group sizes; BN-like scales so the supernet has batch norm on them."""
    rng = np.random.default_rng(seed)
    w, sb = _weights(rng), _scale_bias(rng)

    b = ModelBuilder("acts", input_shape=(2, 3, 9, 7), min_multiplier=0.2)
    a = b.group("a", 13)
    t = b.conv(b.input, w(13, 3, 3, 3), out_group=a, padding=1, act="leaky_relu", act_alpha=0.2, **sb(13))
    u = b.conv(t, w(13, 1, 3, 3), groups=13, padding=1, act="elu", act_alpha=0.6, **sb(13))
    v = b.conv(u, w(13, 13, 1, 1), out_group=a, act="hardsigmoid", act_alpha=1 / 6, act_beta=0.5, **sb(13))
    s = b.act(b.add(t, v, act="tanh"), "gelu")
    gate = b.conv(b.global_avgpool(s), w(7, 13, 1, 1), out_group=b.group("se", 7), act="relu", **sb(7))
    s = b.mul(s, b.conv(gate, w(13, 7, 1, 1), out_group=a, act="hardsigmoid", act_alpha=1 / 6))
    s = b.prelu(s, rng.uniform(-0.5, 0.5, 13))
    s = b.scale_bias(s, act="relu", name="bn", **sb(13))
    s = b.scale_bias(s, bias=rng.standard_normal(13) * 0.1)
    f = b.flatten(b.global_avgpool(b.act(s, "elu", alpha=0.3)))
    f = b.prelu(f, rng.uniform(-0.5, 0.5, 13))
    gate = b.unflatten(b.linear(f, w(13, 13), out_group=a, act="sigmoid"))
    f = b.flatten(b.mul(b.unflatten(f), gate))
    f = b.linear(f, w(11, 13), out_group=b.group("h", 11), act="gelu", **sb(11))
    b.set_output(b.linear(f, w(5, 11), out_group=b.group("classes", 5, fixed=True), act="hardsigmoid"))
    b.uniform_profiles((0.2, 0.5, 1.0))
    b.profile("uneven", {"a": 5, "h": 3, "se": 2})
    b.epilogue("bn", "uneven", rng.uniform(0.5, 1.5, 5), rng.standard_normal(5) * 0.1)
    return b.build()


def seg_net(seed: int = 0) -> fmt.SlimFile:
    """An NCHW output: softmax over the channels of every pixel of a concat of two groups."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    b = ModelBuilder("seg", input_shape=(2, 3, 7, 9), min_multiplier=0.2)
    a = b.conv(b.input, w(13, 3, 3, 3), out_group=b.group("a", 13), padding=1, act="relu",
               scale=rng.uniform(0.5, 1.5, 13), bias=rng.standard_normal(13) * 0.1)
    c = b.conv(a, w(11, 13, 1, 1), out_group=b.group("c", 11), bias=rng.standard_normal(11))
    b.softmax(b.resize(b.concat([a, c]), 2, "bilinear"))
    b.uniform_profiles((0.2, 0.5, 1.0))
    b.profile("uneven", {"a": 5, "c": 3})
    return b.build()


def split_net(seed: int = 0) -> fmt.SlimFile:
    """A channel split of a fixed group, a shuffle, and sliced convs on the parts."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    b = ModelBuilder("split", input_shape=(2, 3, 7, 9), min_multiplier=0.2)
    a = b.conv(b.input, w(12, 3, 3, 3), out_group=b.group("a", 12, fixed=True, why="split"), padding=1, act="relu")
    g = b.group("g", 11)
    c = b.conv(b.slice(a, 4, 12), w(11, 8, 1, 1), out_group=g, act="relu", scale=rng.uniform(0.5, 1.5, 11))
    c = b.conv(c, w(11, 1, 3, 3), groups=11, padding=1)
    y = b.concat([b.slice(a, 0, 4), b.conv(c, w(8, 11, 1, 1), out_group=b.group("p", 8, fixed=True, why="shuffle"))])
    y = b.shuffle(y, 2)
    b.conv(y, w(5, 12, 1, 1), out_group=b.group("o", 5, fixed=True))
    b.uniform_profiles((0.2, 0.5, 1.0))
    b.profile("uneven", {"g": 3})
    return b.build()


MODELS = {
    "odd": lambda: odd_net(0),
    "split": lambda: split_net(4),
    "seg": lambda: seg_net(3),
    "acts": lambda: act_net(1),
    "tiny_resnet": lambda: tiny_resnet(1, input_hw=(16, 16)),  # per-profile epilogues
    "vgg_like": lambda: vgg_like(2),
    "concat_net": lambda: concat_net(3),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    slim = MODELS[request.param]()
    return slim, slimrt.load(fmt.to_bytes(slim)), Supernet.from_slim(slim).eval()


def _input(slim: fmt.SlimFile, n: int = 3, seed: int = 0) -> np.ndarray:
    shape = list(slim.meta["input"]["shape"])
    shape[0] = n
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_eval_equals_engine_at_every_profile_and_multiplier(case) -> None:
    slim, model, net = case
    x = _input(slim)
    keys = [p["name"] for p in slim.meta["profiles"]] + [m for m in MULTIPLIERS if m >= model.min_multiplier]
    with torch.no_grad():
        for key in keys:
            got = net(torch.from_numpy(x), key).numpy()
            assert rel_err(got, model.run(x, profile=key)) < TOL, key


def test_parallel_slices_equal_their_own_forward(case) -> None:
    slim, _, net = case
    x = torch.from_numpy(_input(slim, n=7, seed=1))
    names = [p["name"] for p in slim.meta["profiles"]]
    slices = [names[0], names[-1], 0.6 if net.min_multiplier <= 0.6 else names[-1]]
    with torch.no_grad():
        out = net.forward_parallel(x, slices, sizes=[2, 3, 2])
        for (lo, hi), key in zip([(0, 2), (2, 5), (5, 7)], slices):
            want = net(x[lo:hi], key)
            # the output's active channels of the full-width parallel output (the rest is zero)
            info = fmt.channel_maps(net.meta, list(net.widths(key)))[net.meta["output"]]
            active = torch.from_numpy(info.channel_index())
            assert not out[lo:hi].index_fill(1, active, 0).any()
            np.testing.assert_allclose(out[lo:hi].index_select(1, active).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_parallel_masked_and_sliced_give_the_same_function_and_gradients(case, train: bool) -> None:
    slim, _, net = case
    net = net.train(train)
    x = torch.from_numpy(_input(slim, n=7, seed=4))
    names = [p["name"] for p in slim.meta["profiles"]]
    slices = [names[-1], names[0], 0.6 if net.min_multiplier <= 0.6 else names[0]]
    results = []
    for impl in ("mask", "slice"):
        net.zero_grad(set_to_none=True)
        out = net.forward_parallel(x, slices, sizes=[3, 2, 2], bn_stats="none", impl=impl)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (out_m, grad_m), (out_s, grad_s) = results
    np.testing.assert_allclose(out_s.numpy(), out_m.numpy(), rtol=1e-4, atol=1e-5)
    assert grad_m and set(grad_m) <= set(grad_s)
    for k, g in grad_s.items():
        want = grad_m.get(k, torch.zeros_like(g))
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=1e-3, atol=1e-4, err_msg=k)
    net.eval()


def test_parallel_refuses_an_unknown_implementation(case) -> None:
    slim, _, net = case
    with pytest.raises(ValueError, match="impl"):
        net.forward_parallel(torch.from_numpy(_input(slim, n=2)), [1.0, 1.0], impl="gpu")


def test_parallel_training_mode_normalises_each_slice_by_itself() -> None:
    slim = odd_net(4)
    net = Supernet.from_slim(slim).train()
    x = torch.from_numpy(_input(slim, n=6, seed=2))
    with torch.no_grad():
        out = net.forward_parallel(x, ["0.2", "1.0"], sizes=[3, 3], bn_stats="none")
        np.testing.assert_allclose(out[:3].numpy(), net(x[:3], "0.2", bn_stats="none").numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[3:].numpy(), net(x[3:], "1.0", bn_stats="none").numpy(), rtol=1e-4, atol=1e-5)


def test_to_slim_round_trips_the_function(case) -> None:
    slim, model, net = case
    again = net.to_slim()
    engine = slimrt.load(fmt.to_bytes(again))
    x = _input(slim, seed=3)
    for p in slim.meta["profiles"]:
        assert rel_err(engine.run(x, profile=p["name"]), model.run(x, profile=p["name"])) < TOL, p["name"]
    assert [p["macs"] for p in again.meta["profiles"]] == [p["macs"] for p in slim.meta["profiles"]]


@pytest.mark.parametrize("make", [odd_net, act_net], ids=["odd", "acts"])
def test_trained_bn_statistics_become_per_profile_epilogues(make) -> None:
    slim = make(5)
    net = Supernet.from_slim(slim)
    x = torch.from_numpy(_input(slim, n=16, seed=4))
    net.recalibrate([x[:8], x[8:]])
    net.eval()
    engine = slimrt.load(fmt.to_bytes(net.to_slim()))
    assert any("@" in name for name in net.to_slim().tensors)
    with torch.no_grad():
        for key in ["0.2", "0.5", "uneven", "1.0", 0.37, 0.81]:
            assert rel_err(engine.run(x.numpy(), profile=key), net(x, key).numpy()) < TOL, key


def test_recalibration_gives_exact_batch_statistics() -> None:
    """Recalibration on two batches stores the mean and (unbiased, as torch) variance of a
    layer's raw output over both; eval mode then tracks training mode on that data."""
    slim = odd_net(6)
    net = Supernet.from_slim(slim)
    x = torch.from_numpy(_input(slim, n=32, seed=5))
    net.recalibrate([x[:16], x[16:]], profiles=["uneven"])
    row = net.profile_names.index("uneven")
    first = slim.meta["ops"][0]["name"]
    weight = next(iter(net.weights.values()))[:3]  # group "a" runs 3 channels at "uneven"
    with torch.no_grad():
        raw = torch.nn.functional.conv2d(x, weight, padding=1).transpose(0, 1).reshape(3, -1)
    bn = net.norms[first.replace(".", "__")]
    np.testing.assert_allclose(bn.running_mean[row, :3].numpy(), raw.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    half = raw.shape[1] // 2  # each batch's unbiased variance, averaged
    halves = [raw[:, :half], raw[:, half:]]
    want = torch.stack([h.var(1, unbiased=True) for h in halves]).mean(0)
    np.testing.assert_allclose(bn.running_var[row, :3].numpy(), want.numpy(), rtol=1e-4)
    assert torch.equal(bn.running_mean[row, 3:], torch.zeros(10))  # inactive channels untouched
    with torch.no_grad():
        train_out = net.train()(x, "uneven", bn_stats="none")
        eval_out = net.eval()(x, "uneven")
    assert rel_err(eval_out.numpy(), train_out.numpy()) < 0.05


def test_init_bn_statistics_keeps_the_function() -> None:
    slim = default_model()
    net = Supernet.from_slim(slim).eval()
    x = torch.from_numpy(_input(slim, n=4, seed=6))
    with torch.no_grad():
        before = net(x, 1.0).numpy()
        net.init_bn_statistics([x])
        after = net(x, 1.0).numpy()
    assert rel_err(after, before) < TOL
    bn = net.bn_layers()[0]
    assert float(bn.running_var[0].std()) > 0  # real statistics now, not the 0/1 placeholders


def test_gradients_reach_only_the_active_prefix() -> None:
    slim = odd_net(7)
    net = Supernet.from_slim(slim).train()
    x = torch.from_numpy(_input(slim, n=4, seed=7))
    net(x, "uneven").square().sum().backward()
    first = next(iter(net.weights.values()))  # group "a", width 3 at "uneven"
    assert first.grad[:3].abs().sum() > 0
    assert first.grad[3:].abs().sum() == 0


def test_unknown_profile_and_bad_widths() -> None:
    net = Supernet.from_slim(odd_net(8))
    with pytest.raises(slimrt.ProfileError, match="unknown profile 'huge'"):
        net.widths("huge")
    with pytest.raises(slimrt.ProfileError, match="outside"):
        net.widths(0.05)
    with pytest.raises(slimrt.ProfileError, match="group 'classes'"):
        net.widths([3, 9, 5, 11, 4])


def test_prelu_slopes_train_on_the_active_channels_only() -> None:
    slim = act_net(2)
    net = Supernet.from_slim(slim).train()
    net(torch.from_numpy(_input(slim, n=4, seed=9)), "uneven").square().sum().backward()
    first, second = net.slopes.values()  # group "a" runs 5 channels at "uneven"
    assert first.grad[:5].abs().sum() > 0 and first.grad[5:].abs().sum() == 0
    assert second.grad[5:].abs().sum() == 0
