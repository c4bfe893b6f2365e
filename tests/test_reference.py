"""run_reference against physically pruned PyTorch networks, at every profile of every model.

The oracle below is independent of slimrt.format: it reads the raw model JSON, follows the
active channels as index tensors (not runs), slices the weights of each op with them and runs
torch.nn.functional in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from slimrt import format as fmt  # noqa: E402
from slimrt.builder import ModelBuilder  # noqa: E402
from slimrt.errors import ProfileError  # noqa: E402
from slimrt.models import concat_net, tiny_resnet, vgg_like  # noqa: E402
from slimrt.reference import run_reference  # noqa: E402



def shuffle_net(seed: int = 0) -> fmt.SlimFile:
    """Fixed-group convs, concatenated and channel-shuffled, then sliceable dense convs."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder("shuffle_net", input_shape=(1, 3, 9, 9))
    a = b.conv(b.input, rng.normal(size=(12, 3, 3, 3)), out_group=b.group("a", 12, fixed=True),
               padding=1, act="relu")
    c = b.conv(b.input, rng.normal(size=(4, 3, 1, 1)), out_group=b.group("c", 4, fixed=True))
    s = b.shuffle(b.concat([b.slice(a, 6, 12), c, b.slice(a, 0, 6)]), 4)
    y = b.conv(s, rng.normal(size=(16, 16, 3, 3)) / 12, out_group=b.group("d", 16), act="relu")
    b.conv(y, rng.normal(size=(8, 16, 1, 1)) / 4, out_group=b.group("e", 8))
    b.uniform_profiles()
    return b.build()


def act_net(seed: int = 0) -> fmt.SlimFile:
    """Every activation with parameters: fused into dense, depthwise and linear layers, an add and
    the act op; odd group sizes."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder("act_net", input_shape=(1, 3, 9, 7), min_multiplier=0.1)
    a = b.group("a", 13)
    x = b.conv(b.input, rng.normal(size=(13, 3, 3, 3)), out_group=a, padding=1, act="leaky_relu",
               act_alpha=0.2, bias=rng.normal(size=13))
    y = b.conv(x, rng.normal(size=(13, 1, 3, 3)), groups=13, padding=1, act="elu", act_alpha=0.7)
    z = b.conv(y, rng.normal(size=(13, 13, 1, 1)) / 4, out_group=a, act="hardsigmoid", act_alpha=1 / 6,
               act_beta=0.5)
    s = b.add(x, z, act="tanh")
    gate = b.conv(b.global_avgpool(s), rng.normal(size=(7, 13, 1, 1)) / 4, out_group=b.group("se", 7), act="relu")
    gate = b.conv(gate, rng.normal(size=(13, 7, 1, 1)), out_group=a, act="sigmoid")
    s = b.mul(s, gate)
    s = b.act(s, "gelu")
    s = b.act(s, "hardsigmoid")
    s = b.prelu(b.act(s, "leaky_relu"), rng.normal(size=13))
    s = b.scale_bias(s, rng.uniform(0.5, 1.5, 13), rng.normal(size=13), act="relu6", name="sb")
    s = b.scale_bias(s, bias=rng.normal(size=13))
    s = b.maxpool(b.resize(b.resize(s, (2, 3), "bilinear"), 2, "nearest"), 2)
    f = b.flatten(b.global_avgpool(b.act(s, "elu")))
    f = b.prelu(f, rng.normal(size=13))
    g = b.linear(f, rng.normal(size=(13, 13)) / 4, out_group=a, act="hardsigmoid")
    f = b.flatten(b.mul(b.unflatten(f), b.unflatten(g)))
    f = b.linear(f, rng.normal(size=(11, 13)), out_group=b.group("h", 11), act="gelu")
    b.linear(f, rng.normal(size=(5, 11)), out_group=b.group("cls", 5, fixed=True), act="tanh")
    b.uniform_profiles((0.1, 0.5, 1.0))
    b.profile("odd", {"a": 5, "h": 3, "se": 3})
    b.epilogue("sb", "odd", rng.uniform(0.5, 1.5, 5), rng.normal(size=5))
    return b.build()


def gate_net(seed: int = 0) -> fmt.SlimFile:
    """A dynamic gate on a fixed stem (so every multiplier runs), then sliceable layers."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder("gate_net", input_shape=(1, 3, 9, 7))
    s = b.conv(b.input, rng.normal(size=(7, 3, 3, 3)), out_group=b.group("stem", 7, fixed=True), stride=2,
               act="relu")
    g = b.gate(s, rng.normal(size=(3, 7)), rng.normal(size=3), rng.normal(size=(7, 3)), rng.normal(size=7),
               rng.normal(size=(3, 3)), rng.normal(size=3))
    y = b.conv(g, rng.normal(size=(19, 7, 3, 3)) / 6, out_group=b.group("body", 19), padding=1, act="relu")
    b.linear(b.flatten(b.global_avgpool(y)), rng.normal(size=(4, 19)), out_group=b.group("cls", 4, fixed=True))
    b.uniform_profiles((0.25, 0.5, 1.0))
    return b.build()


MODELS = {"tiny_resnet": tiny_resnet, "vgg_like": vgg_like, "concat_net": concat_net,
          "shuffle_net": shuffle_net, "act_net": act_net, "gate_net": gate_net}
# name -> f(x, alpha, beta), with the ONNX defaults of the parameters (model.h)
ACTS = {"none": lambda x, a, b: x, "relu": lambda x, a, b: F.relu(x), "relu6": lambda x, a, b: F.relu6(x),
        "hardswish": lambda x, a, b: F.hardswish(x), "silu": lambda x, a, b: F.silu(x),
        "sigmoid": lambda x, a, b: torch.sigmoid(x), "leaky_relu": lambda x, a, b: F.leaky_relu(x, a),
        "tanh": lambda x, a, b: torch.tanh(x), "gelu": lambda x, a, b: F.gelu(x),
        "hardsigmoid": lambda x, a, b: F.hardtanh(a * x + b, 0.0, 1.0), "elu": lambda x, a, b: F.elu(x, a)}
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0, "hardsigmoid": 0.2}


def activation(op: dict[str, Any], x: Any) -> Any:
    kind = op["act"]
    return ACTS[kind](x, op.get("act_alpha", DEFAULT_ALPHA.get(kind, 0.0)), op.get("act_beta", 0.5))


@pytest.fixture(scope="module")
def models() -> dict[str, fmt.SlimFile]:
    return {name: make() for name, make in MODELS.items()}


def uniform(meta: dict[str, Any], m: float) -> list[int]:
    """The nearest of the multiples of 8 below size and size itself to size*m (halves up), at
    least min(8, size)."""
    widths = []
    for g in meta["groups"]:
        target = g["size"] * m
        candidates = list(range(0, g["size"], 8)) + [g["size"]]
        best = min(candidates, key=lambda c: (abs(c - target), -c))
        widths.append(g["size"] if g["fixed"] else max(best, min(8, g["size"])))
    return widths


class PrunedTorch:
    """A model at fixed group widths, run as dense torch ops on sliced weights."""

    def __init__(self, slim: fmt.SlimFile, widths: list[int], profile: str | None) -> None:
        self.meta, self.widths, self.profile = slim.meta, widths, profile
        self.t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in slim.tensors.items()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        source = self.meta["input"]["name"]
        values = {source: torch.from_numpy(x.astype(np.float64))}
        active = {source: torch.arange(x.shape[1])}
        full = {source: x.shape[1]}
        for op in self.meta["ops"]:
            args = [(values[t], active[t], full[t]) for t in op["inputs"]]
            y, idx, channels = getattr(self, op["op"])(op, *args)
            values[op["output"]], active[op["output"]], full[op["output"]] = y, idx, channels
        return values[self.meta["output"]].numpy()

    def out_width(self, op: dict[str, Any]) -> tuple[int, int]:
        group = self.meta["groups"][op["out_group"]]
        return self.widths[op["out_group"]], group["size"]

    def epilogue(self, op: dict[str, Any], y: Any, idx: Any) -> Any:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        for which in ("scale", "bias"):
            own = self.t.get(f"{op['name']}.{which}@{self.profile}")
            base = self.t.get(f"{op['name']}.{which}")
            values = own if own is not None else base[idx] if base is not None else None
            if values is not None:
                y = y * values.reshape(shape) if which == "scale" else y + values.reshape(shape)
        return activation(op, y)

    def conv(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        w = self.t[f"{op['name']}.weight"]
        top, left, bottom, right = op["pads"]
        x = F.pad(x, (left, right, top, bottom))
        if w.dim() == 3:                                    # depthwise: [kh, kw, C]
            weight = w[:, :, idx].permute(2, 0, 1).unsqueeze(1)
            groups, out_idx, out_full = len(idx), idx, channels
        elif op["groups"] == 1:                             # dense: [kh, kw, Cin, Cout]
            width, out_full = self.out_width(op)
            weight = w[:, :, idx, :width].permute(3, 2, 0, 1)
            groups, out_idx = 1, torch.arange(width)
        else:                                               # grouped, full width
            assert len(idx) == channels
            weight = w.permute(3, 2, 0, 1)
            groups, out_full = op["groups"], w.shape[3]
            out_idx = torch.arange(out_full)
        y = F.conv2d(x, weight.contiguous(), stride=op["stride"], dilation=op["dilation"],
                     groups=groups)
        return self.epilogue(op, y, out_idx), out_idx, out_full

    def linear(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, _ = arg
        width, out_full = self.out_width(op)
        y = x @ self.t[f"{op['name']}.weight"][idx, :width]
        return self.epilogue(op, y, torch.arange(width)), torch.arange(width), out_full

    def add(self, op: dict[str, Any], a: tuple, b: tuple) -> tuple:
        width = max(len(a[1]), len(b[1]))
        for _, idx, _ in (a, b):
            assert torch.equal(idx, torch.arange(len(idx)))
        padded = [F.pad(v, (0, 0) * (v.dim() - 2) + (0, width - v.shape[1])) for v, _, _ in (a, b)]
        return activation(op, padded[0] + padded[1]), torch.arange(width), max(a[2], b[2])

    def concat(self, op: dict[str, Any], *args: tuple) -> tuple:
        offsets = np.cumsum([0] + [c for _, _, c in args])
        idx = torch.cat([i + int(o) for (_, i, _), o in zip(args, offsets)])
        return torch.cat([v for v, _, _ in args], dim=1), idx, int(offsets[-1])

    @staticmethod
    def symmetric(op: dict[str, Any]) -> tuple[int, int]:
        top, left, bottom, right = op["pads"]
        assert (top, left) == (bottom, right), "torch pools take symmetric padding only"
        return top, left

    def maxpool(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        y = F.max_pool2d(x, op["kernel"], op["stride"], self.symmetric(op),
                         ceil_mode=op.get("ceil_mode", False))
        return y, idx, channels

    def avgpool(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        y = F.avg_pool2d(x, op["kernel"], op["stride"], self.symmetric(op),
                         ceil_mode=op.get("ceil_mode", False),
                         count_include_pad=op.get("count_include_pad", False))
        return y, idx, channels

    def global_avgpool(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return x.mean(dim=(2, 3), keepdim=True), idx, channels

    def flatten(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        pixels = x.shape[2] * x.shape[3]
        features = (idx[:, None] * pixels + torch.arange(pixels)[None, :]).reshape(-1)
        return x.flatten(1), features, channels * pixels

    def softmax(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return F.softmax(x, dim=1), idx, channels

    def act(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return activation(op, x), idx, channels

    def unflatten(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return x.reshape(x.shape + (1, 1)), idx, channels

    def mul(self, op: dict[str, Any], x: tuple, gate: tuple) -> tuple:
        assert torch.equal(x[1], gate[1]), "a gate has its input's channels"
        return x[0] * gate[0], x[1], x[2]

    def scale_bias(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return self.epilogue(op, x, idx), idx, channels

    def prelu(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        return F.prelu(x, self.t[f"{op['name']}.slope"][idx]), idx, channels

    def resize(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        kwargs = {"align_corners": False} if op["mode"] == "bilinear" else {}
        return F.interpolate(x, scale_factor=tuple(float(s) for s in op["scale"]), mode=op["mode"], **kwargs), \
            idx, channels

    def slice(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        assert torch.equal(idx, torch.arange(channels)), "a slice runs at full width"
        width = op["end"] - op["start"]
        return x[:, op["start"]:op["end"]], torch.arange(width), width

    def gate(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        t = {k: self.t[f"{op['name']}.{k}"] for k in ("reduce.weight", "reduce.bias", "expand.weight", "expand.bias")}
        h = F.relu(x.mean(dim=(2, 3)) @ t["reduce.weight"] + t["reduce.bias"])
        return x * 2.0 * torch.sigmoid(h @ t["expand.weight"] + t["expand.bias"])[:, :, None, None], idx, channels

    def shuffle(self, op: dict[str, Any], arg: tuple) -> tuple:
        x, idx, channels = arg
        assert torch.equal(idx, torch.arange(channels)), "a shuffle runs at full width"
        n, c, h, w = x.shape
        g = op["groups"]
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w), idx, channels


def oracle(slim: fmt.SlimFile, x: np.ndarray, profile: str | float) -> np.ndarray:
    profiles = slim.meta["profiles"]
    if isinstance(profile, str):
        widths = next(p["widths"] for p in profiles if p["name"] == profile)
        name: str | None = profile
    else:
        widths = uniform(slim.meta, profile)
        name = next((p["name"] for p in profiles if p["widths"] == widths), None)
    return PrunedTorch(slim, widths, name)(x)


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert float(np.abs(actual - expected).max()) <= rel * scale


def random_input(slim: fmt.SlimFile, seed: int, batch: int = 1,
                 hw: tuple[int, int] | None = None) -> np.ndarray:
    n, c, h, w = slim.meta["input"]["shape"]
    h, w = hw or (h, w)
    return np.random.default_rng(seed).normal(size=(batch, c, h, w))


CASES = [(model, p["name"]) for model, make in MODELS.items() for p in make().meta["profiles"]]


@pytest.mark.parametrize("model, profile", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_every_profile_matches_pruned_torch(models: dict[str, fmt.SlimFile], model: str,
                                            profile: str) -> None:
    slim = models[model]
    x = random_input(slim, seed=len(CASES), batch=2)
    assert_close(run_reference(slim, x, profile), oracle(slim, x, profile))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("m", [0.25, 0.4, 0.6, 0.77, 1.0])
def test_uniform_multipliers_match_pruned_torch(models: dict[str, fmt.SlimFile], model: str,
                                                m: float) -> None:
    slim = models[model]
    x = random_input(slim, seed=11)
    assert_close(run_reference(slim, x, m), oracle(slim, x, m))


def test_profile_by_index_and_matching_multiplier(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["tiny_resnet"]
    x = random_input(slim, seed=5)
    for index, p in enumerate(slim.meta["profiles"]):
        np.testing.assert_array_equal(run_reference(slim, x, index),
                                      run_reference(slim, x, p["name"]))
    np.testing.assert_array_equal(run_reference(slim, x, 0.5), run_reference(slim, x, "0.5"))


def test_per_profile_epilogues_change_the_output(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["tiny_resnet"]
    assert any("@0.5" in name for name in slim.tensors)
    x = random_input(slim, seed=6)
    plain = fmt.SlimFile(slim.meta, {k: v for k, v in slim.tensors.items() if "@" not in k})
    assert not np.allclose(run_reference(slim, x, "0.5"), run_reference(plain, x, "0.5"))
    assert_close(run_reference(plain, x, "0.5"), PrunedTorch(plain, uniform(slim.meta, 0.5),
                                                             None)(x))


def test_other_input_sizes(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["tiny_resnet"]
    x = random_input(slim, seed=8, batch=3, hw=(40, 24))
    for profile in ("pruned", "1.0"):
        assert_close(run_reference(slim, x, profile), oracle(slim, x, profile))


def test_full_width_matches_an_unpruned_torch_model(models: dict[str, fmt.SlimFile]) -> None:
    slim = models["concat_net"]
    x = random_input(slim, seed=9)
    full = [g["size"] for g in slim.meta["groups"]]
    assert_close(run_reference(slim, x, 1.0), PrunedTorch(slim, full, None)(x))


def test_ops_are_exercised(models: dict[str, fmt.SlimFile]) -> None:
    kinds = {op["op"] for slim in models.values() for op in slim.meta["ops"]}
    acts = {op.get("act") for slim in models.values() for op in slim.meta["ops"]}
    assert kinds == set(fmt.OP_KINDS)
    assert set(fmt.ACTIVATIONS) <= acts


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (3, 32, 32), (1, 3, 2, 2)])
def test_bad_input_shapes(models: dict[str, fmt.SlimFile], shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        run_reference(models["vgg_like"], np.zeros(shape), "1.0")


def test_unknown_profile(models: dict[str, fmt.SlimFile]) -> None:
    with pytest.raises(ProfileError, match="unknown profile 'huge'"):
        run_reference(models["vgg_like"], random_input(models["vgg_like"], 0), "huge")
