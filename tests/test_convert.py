"""Converter: ONNX / PyTorch -> .slim, channel groups, importance sorting, profiles, export.

Oracles: onnxruntime on the source ONNX model, the source PyTorch module, the numpy reference
executor (slimrt.reference), onnxruntime on the exported pruned ONNX, and the pruned PyTorch
module of a profile.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import slimrt
from onnx import TensorProto, helper, numpy_helper
from slimrt.convert import ConversionError, DuplicateProfileWarning, from_onnx, from_torch, onnx_to_slim, to_onnx, to_torch, torch_to_slim
from slimrt.convert.cli import add_commands, format_info
from slimrt.convert.export import count_macs
from slimrt.errors import ProfileError
from slimrt.format import profile_cost, read, to_bytes
from slimrt.reference import run_reference

RTOL = 1e-4


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def run_ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check_all_profiles(slim, x: np.ndarray, engine: bool = True) -> None:
    """Engine = numpy reference = onnxruntime on the export = pruned torch module, every profile."""
    model = slimrt.load(to_bytes(slim)) if engine else None
    for p in slim.meta["profiles"]:
        ref = run_reference(slim, x, p["name"])
        proto = to_onnx(slim, p["name"])
        if model is not None:
            assert rel_err(model.run(x, profile=p["name"]), ref) < RTOL, p["name"]
        assert rel_err(run_ort(proto, x), ref) < RTOL, p["name"]
        with torch.no_grad():
            assert rel_err(to_torch(slim, p["name"])(torch.from_numpy(x)).numpy(), ref) < RTOL, p["name"]
        assert count_macs(proto) == p["macs"]


# ---- models -----------------------------------------------------------------------------


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def handmade_onnx(seed: int = 0) -> onnx.ModelProto:
    """A CNN written with onnx.helper (not by this converter): BN, Sum, Clip, SiLU, Concat, pools,
    depthwise conv, HardSwish, a Shape-computed Reshape, Gemm, MatMul + Add, Dropout, Softmax."""
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.5

    def bn(prefix: str, c: int) -> list[onnx.TensorProto]:
        return [_init(f"{prefix}.g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
                _init(f"{prefix}.b", f(c)), _init(f"{prefix}.m", f(c)),
                _init(f"{prefix}.v", rng.uniform(0.5, 2, c).astype(np.float32))]

    inits = [_init("w1", f(8, 3, 3, 3)), _init("b1", f(8)), _init("w2", f(8, 8, 3, 3)), _init("w3raw", f(6, 8, 1, 1)),
             _init("w4", f(14, 1, 3, 3)), _init("wg", f(16, 14)), _init("bg", f(16)), _init("wm", f(16, 5)),
             _init("minus1", np.array([-1], np.int64)), _init("zero", np.array(0, np.int64)),
             _init("axes0", np.array([0], np.int64))] + bn("bn1", 8) + bn("bn2", 8) + bn("bn4", 14)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["n1"], name="bn1", epsilon=1e-3),
        n("Relu", ["n1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["n2"], name="bn2"),
        n("Sum", ["n2", "r1"], ["s"], name="sum"),
        n("Constant", [], ["lo"], name="lo", value=_init("lo_v", np.array(0, np.float32))),
        n("Constant", [], ["hi"], name="hi", value=_init("hi_v", np.array(6, np.float32))),
        n("Clip", ["s", "lo", "hi"], ["s6"], name="relu6"),
        n("Identity", ["w3raw"], ["w3"], name="w3_identity"),
        n("Conv", ["s6", "w3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        n("Sigmoid", ["c3"], ["sig3"], name="sig3"),
        n("Mul", ["c3", "sig3"], ["silu3"], name="silu3"),
        n("Concat", ["s6", "silu3"], ["cat"], name="cat", axis=1),
        n("MaxPool", ["cat"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["mp"], ["ap"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
        n("Conv", ["ap", "w4"], ["c4"], name="dwconv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=14),
        n("BatchNormalization", ["c4", "bn4.g", "bn4.b", "bn4.m", "bn4.v"], ["n4"], name="bn4"),
        n("HardSwish", ["n4"], ["h4"], name="hswish"),
        n("GlobalAveragePool", ["h4"], ["gap"], name="gap"),
        n("Shape", ["gap"], ["shape"], name="shape"),
        n("Gather", ["shape", "zero"], ["batch"], name="batch", axis=0),
        n("Unsqueeze", ["batch", "axes0"], ["batch1"], name="batch1"),
        n("Concat", ["batch1", "minus1"], ["target"], name="target", axis=0),
        n("Reshape", ["gap", "target"], ["flat"], name="reshape"),
        n("Gemm", ["flat", "wg", "bg"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
        n("Relu", ["g"], ["gr"], name="relu_g"),
        n("Dropout", ["gr"], ["gd"], name="dropout"),
        n("MatMul", ["gd", "wm"], ["mm"], name="matmul"),
        n("Constant", [], ["bm"], name="bm", value=_init("bm_v", f(5))),
        n("Add", ["mm", "bm"], ["logits"], name="bias"),
        n("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    graph = helper.make_graph(nodes, "handmade", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


class SmallNet(torch.nn.Module):
    """Residual block, depthwise conv with BN, concat, spatial flatten into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.body = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16))
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
                                      torch.nn.BatchNorm2d(16), torch.nn.SiLU())
        self.side = torch.nn.Conv2d(16, 24, 1, stride=2)
        self.pool = torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(40 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = self.pool(torch.cat([self.dw(x), self.side(x)], 1))
        return self.fc(x.view(x.size(0), -1))


def randomize_bn(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    randomize_bn(net, 1)
    return net.eval()


@pytest.fixture(scope="module")
def x16() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)


# ---- ONNX import --------------------------------------------------------------------------


class TestOnnxImport:
    def test_handmade_full_width_matches_onnxruntime(self) -> None:
        proto = handmade_onnx()
        x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
        model = from_onnx(proto, widths=(0.5, 1.0))
        assert isinstance(model, slimrt.Model)
        assert rel_err(model.run(x, profile="1.0"), run_ort(proto, x)) < RTOL

    def test_handmade_every_profile_agrees_across_oracles(self) -> None:
        widths = {"0.5": 0.5, "narrow": {"conv1": 3, "conv3": 5, "gemm": 9}, "1.0": 1.0}
        slim = onnx_to_slim(handmade_onnx(), widths=widths)
        assert len(slim.meta["profiles"]) == 3
        check_all_profiles(slim, np.random.default_rng(2).standard_normal((1, 3, 12, 12)).astype(np.float32))

    def test_from_path_with_input_shape_override(self, tmp_path: Path) -> None:
        proto = handmade_onnx()
        for axis in (2, 3):
            proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "HW"[axis - 2]
        path = tmp_path / "m.onnx"
        onnx.save(proto, str(path))
        slim = onnx_to_slim(path, widths=(1.0,), input_shape=(1, 3, 16, 16))
        assert slim.meta["input"]["shape"] == [1, 3, 16, 16]
        x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
        assert rel_err(run_reference(slim, x, "1.0"), run_ort(proto, x)) < RTOL

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            onnx_to_slim(tmp_path / "nope.onnx")


# ---- PyTorch front end and interop ------------------------------------------------------


class TestTorch:
    def test_full_width_equals_module(self, small_net, x16) -> None:
        model = from_torch(small_net, torch.from_numpy(x16))
        with torch.no_grad():
            expected = small_net(torch.from_numpy(x16)).numpy()
        assert rel_err(model.run(x16, profile="1.0"), expected) < RTOL
        assert model.input_shape == (1, 3, 16, 16)

    def test_every_profile_agrees_across_oracles(self, small_net, x16) -> None:
        check_all_profiles(torch_to_slim(small_net, x16), x16)

    def test_module_mode_is_restored(self, small_net, x16) -> None:
        small_net.train()
        try:
            torch_to_slim(small_net, x16, widths=(1.0,))
            assert small_net.training
        finally:
            small_net.eval()

    def test_export_onnx_and_to_torch_accept_model_slimfile_and_path(self, small_net, x16, tmp_path: Path) -> None:
        slim = torch_to_slim(small_net, x16)
        model = slimrt.load(to_bytes(slim))
        path = tmp_path / "m.slim"
        model.save(str(path))
        expected = run_reference(slim, x16, "0.5")
        for source in (model, slim, path):
            out = tmp_path / "p.onnx"
            slimrt.convert.export_onnx(source, out, "0.5")
            assert rel_err(run_ort(onnx.load(str(out)), x16), expected) < RTOL
            with torch.no_grad():
                assert rel_err(to_torch(source, "0.5")(torch.from_numpy(x16)).numpy(), expected) < RTOL

    def test_pruned_module_is_physically_smaller(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)

        def count(m: torch.nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        layers = [m for m in small_net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert count(to_torch(slim, "1.0")) == sum(m.weight.numel() + m.weight.shape[0] for m in layers)
        assert count(to_torch(slim, "0.25")) < count(to_torch(slim, "0.5")) < count(to_torch(slim, "1.0"))

    def test_export_at_multiplier_between_profiles(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)
        model = slimrt.load(to_bytes(slim))
        assert rel_err(run_ort(to_onnx(slim, 0.6), x16), model.run(x16, profile=0.6)) < RTOL


# ---- channel groups ---------------------------------------------------------------------


def _groups(slim) -> dict[str, dict]:
    return {g["name"]: g for g in slim.meta["groups"]}


class TestChannelGroups:
    def test_residual_operands_share_one_group(self, small_net, x16) -> None:
        groups = _groups(torch_to_slim(small_net, x16))
        assert "stem.0" in groups and not any(name.startswith("body") for name in groups)

    def test_depthwise_keeps_its_input_group(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)
        dw = next(op for op in slim.meta["ops"] if op["op"] == "conv" and op["groups"] > 1)
        assert "out_group" not in dw

    def test_input_and_classifier_stay_full(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)
        fc = _groups(slim)["fc"]
        assert fc["fixed"] and "network output" in fc["why"]
        assert all(p["widths"][-1] == 10 for p in slim.meta["profiles"])

    def test_grouped_conv_stays_full_and_info_says_why(self) -> None:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, groups=4),
                                  torch.nn.ReLU(), torch.nn.Conv2d(32, 16, 1), torch.nn.Flatten(),
                                  torch.nn.Linear(16 * 6 * 6, 4)).eval()
        x = np.random.default_rng(4).standard_normal((1, 3, 10, 10)).astype(np.float32)
        slim = torch_to_slim(net, x, widths=(0.5, 1.0))
        groups = list(_groups(slim).values())
        assert [g["fixed"] for g in groups] == [True, True, False, True]
        assert "input of grouped conv" in groups[0]["why"] and "output of grouped conv" in groups[1]["why"]
        assert "grouped conv" in format_info(slim.meta)
        check_all_profiles(slim, x)

    def test_add_of_a_concat_fixes_its_groups(self) -> None:
        class CatAdd(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a, self.b, self.c = (torch.nn.Conv2d(3, n, 1) for n in (8, 8, 16))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.cat([self.a(x), self.b(x)], 1) + self.c(x)

        x = np.random.default_rng(5).standard_normal((1, 3, 4, 4)).astype(np.float32)
        slim = torch_to_slim(CatAdd().eval(), x, widths=(1.0,))
        assert all(g["fixed"] and "concat" in g["why"] for g in slim.meta["groups"])
        check_all_profiles(slim, x, engine=False)


class ShuffleUnit(torch.nn.Module):
    """ShuffleNet-style: grouped 1x1 conv and a side branch, concatenated, channel shuffle,
    depthwise 3x3, then dense convs whose widths can be sliced."""

    def __init__(self, groups: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.groups = groups
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.gconv = nn.Sequential(nn.Conv2d(16, 24, 1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.side = nn.Conv2d(3, 8, 1)
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32))
        self.expand = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.gconv(self.stem(x)), self.side(x)], 1)
        n, c, h, w = y.shape
        y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        y = torch.relu(self.head(self.expand(self.dw(y))))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def shuffle_converted():
    net = ShuffleUnit().eval()
    randomize_bn(net, seed=21)
    x = np.random.default_rng(21).standard_normal((2, 3, 8, 8)).astype(np.float32)
    return net, x, torch_to_slim(net, x)


class TestChannelShuffle:
    @pytest.fixture
    def converted(self, shuffle_converted):
        return shuffle_converted

    def test_becomes_one_shuffle_op(self, converted) -> None:
        _, _, slim = converted
        shuffles = [op for op in slim.meta["ops"] if op["op"] == "shuffle"]
        assert [op["groups"] for op in shuffles] == [4]
        assert not any(op["op"] in ("Reshape", "Transpose") for op in slim.meta["ops"])

    def test_groups_around_it_are_fixed_and_info_says_why(self, converted) -> None:
        _, _, slim = converted
        groups = _groups(slim)
        feeding = [g for g in groups.values() if "input of channel shuffle" in g["why"]]
        assert sorted(g["size"] for g in feeding) == [8, 24]
        assert all(g["fixed"] for g in feeding)
        sliced = [g for g in groups.values() if not g["fixed"]]
        assert sorted(g["size"] for g in sliced) == [16, 32]
        shuffle = next(op["name"] for op in slim.meta["ops"] if op["op"] == "shuffle")
        assert f"full: input of channel shuffle '{shuffle}' (groups=4)" in format_info(slim.meta)

    def test_full_width_equals_the_source_module(self, converted) -> None:
        net, x, slim = converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x, profile="1.0"), want) < RTOL

    def test_every_profile_engine_onnxruntime_torch(self, converted) -> None:
        _, x, slim = converted
        assert len({p["macs"] for p in slim.meta["profiles"]}) == len(slim.meta["profiles"])
        check_all_profiles(slim, x)

    def test_export_writes_the_shuffle_as_reshape_transpose_reshape(self, converted) -> None:
        _, _, slim = converted
        ops = [n.op_type for n in to_onnx(slim, "0.5").graph.node]
        i = ops.index("Transpose")
        assert ops[i - 1:i + 2] == ["Reshape", "Transpose", "Reshape"]


# ---- activations -------------------------------------------------------------------------


class ActNet(torch.nn.Module):
    """Every activation PyTorch exports: LeakyReLU, Tanh, GELU (written out with Erf by the
    exporter), Hardsigmoid, ELU, after convs (fused) and on their own, on odd channel counts."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.LeakyReLU(0.2))
        self.c2 = nn.Sequential(nn.Conv2d(13, 13, 3, padding=1, groups=13), nn.BatchNorm2d(13), nn.ELU(0.7))
        self.c3 = nn.Sequential(nn.Conv2d(13, 21, 1), nn.GELU())
        self.c4 = nn.Sequential(nn.Conv2d(21, 13, 3, padding=1), nn.Hardsigmoid())
        self.fc = nn.Sequential(nn.Linear(13, 17), nn.Tanh(), nn.Linear(17, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y = torch.tanh(y + self.c4(self.c3(self.c2(y))))
        y = torch.nn.functional.gelu(torch.nn.functional.elu(y))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def act_converted():
    torch.manual_seed(3)
    net = ActNet().eval()
    randomize_bn(net, 4)
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 11)).astype(np.float32)
    return net, x, torch_to_slim(net, x, widths={"0.25": 0.25, "odd": {"c1.0": 5, "c3.0": 11, "fc.0": 3}, "1.0": 1.0})


def _gelu_pattern(order: str) -> onnx.ModelProto:
    """conv -> GELU written out with Erf as exporters write it, in several factor orders."""
    rng = np.random.default_rng(6)
    n = helper.make_node
    inits = [_init("w", rng.standard_normal((7, 3, 3, 3)).astype(np.float32)),
             _init("sqrt2", np.array(np.sqrt(2), np.float32)), _init("rsqrt2", np.array(1 / np.sqrt(2), np.float32)),
             _init("one", np.array(1, np.float32)), _init("half", np.array(0.5, np.float32))]
    nodes = [n("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    if order == "torch":       # ((x * (erf(x / sqrt2) + 1)) * 0.5
        nodes += [n("Div", ["c", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]),
                  n("Mul", ["c", "p"], ["m"]), n("Mul", ["m", "half"], ["y"])]
    elif order == "half_first":  # (0.5 * x) * (1 + erf(x * rsqrt2))
        nodes += [n("Mul", ["c", "rsqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["one", "e"], ["p"]),
                  n("Mul", ["half", "c"], ["h"]), n("Mul", ["h", "p"], ["y"])]
    else:                       # x * ((1 + erf(x / sqrt2)) * 0.5)
        nodes += [n("Div", ["c", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]),
                  n("Mul", ["p", "half"], ["q"]), n("Mul", ["q", "c"], ["y"])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 6, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _opset20_acts() -> onnx.ModelProto:
    """The ONNX Gelu op (opset 20) and the parameterised activations with their default attributes."""
    rng = np.random.default_rng(7)
    n = helper.make_node
    inits = [_init("w1", rng.standard_normal((9, 3, 3, 3)).astype(np.float32)),
             _init("w2", rng.standard_normal((9, 9, 1, 1)).astype(np.float32))]
    nodes = [n("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Gelu", ["c1"], ["g"], name="gelu"), n("LeakyRelu", ["g"], ["l"], name="leaky"),
             n("Conv", ["l", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             n("HardSigmoid", ["c2"], ["h"], name="hsig"), n("Elu", ["h"], ["y"], name="elu")]
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9, 5, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


class TestActivations:
    def test_full_width_equals_the_source_module(self, act_converted) -> None:
        net, x, slim = act_converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL

    def test_activations_fuse_into_their_layers(self, act_converted) -> None:
        _, _, slim = act_converted
        fused = {op["name"]: (op["act"], op.get("act_alpha")) for op in slim.meta["ops"] if op["op"] in ("conv", "linear")}
        assert fused["c1.0"] == ("leaky_relu", pytest.approx(0.2)) and fused["c2.0"] == ("elu", pytest.approx(0.7))
        assert fused["c3.0"] == ("gelu", None) and fused["fc.0"] == ("tanh", None)
        assert fused["c4.0"][0] == "hardsigmoid"
        assert [o["act"] for o in slim.meta["ops"] if o["op"] == "add"] == ["tanh"]
        assert [o["act"] for o in slim.meta["ops"] if o["op"] == "act"] == ["elu", "gelu"]

    def test_hardsigmoid_keeps_torchs_parameters(self, act_converted) -> None:
        _, _, slim = act_converted
        op = next(o for o in slim.meta["ops"] if o["name"] == "c4.0")
        assert op["act_alpha"] == pytest.approx(1 / 6) and op["act_beta"] == pytest.approx(0.5)

    def test_every_profile_engine_onnxruntime_torch(self, act_converted) -> None:
        _, x, slim = act_converted
        assert sorted(p["name"] for p in slim.meta["profiles"]) == ["0.25", "1.0", "odd"]
        check_all_profiles(slim, x)

    @pytest.mark.parametrize("order", ["torch", "half_first", "half_last"])
    def test_gelu_written_out_with_erf_becomes_one_activation(self, order: str) -> None:
        proto = _gelu_pattern(order)
        slim = onnx_to_slim(proto, widths=(1.0,))
        assert [(op["op"], op["act"]) for op in slim.meta["ops"]] == [("conv", "gelu")]
        x = np.random.default_rng(8).standard_normal((1, 3, 6, 5)).astype(np.float32)
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), run_ort(proto, x)) < RTOL

    def test_gelu_op_and_default_attributes(self) -> None:
        proto = _opset20_acts()
        slim = onnx_to_slim(proto, widths={"small": {"conv1": 3}, "1.0": 1.0})
        acts = [(op["act"], op.get("act_alpha"), op.get("act_beta")) for op in slim.meta["ops"]]
        assert acts == [("gelu", None, None), ("leaky_relu", pytest.approx(0.01), None),
                        ("hardsigmoid", pytest.approx(0.2), pytest.approx(0.5)), ("elu", 1.0, None)]
        x = np.random.default_rng(9).standard_normal((1, 3, 5, 6)).astype(np.float32)
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), run_ort(proto, x)) < RTOL
        check_all_profiles(slim, x)

    def test_export_writes_gelu_with_erf_for_opset_17(self, act_converted) -> None:
        _, _, slim = act_converted
        ops = [n.op_type for n in to_onnx(slim, "odd").graph.node]
        assert "Erf" in ops and "Gelu" not in ops
        assert {"LeakyRelu", "Elu", "HardSigmoid", "Tanh"} <= set(ops)

    def test_tanh_approximation_of_gelu_is_refused(self) -> None:
        node = helper.make_node("Gelu", ["c"], ["y"], name="fast_gelu", approximate="tanh")
        model = _single_node_model(node, [1, 8, 4, 4])
        model.opset_import[0].version = 20
        with pytest.raises(ConversionError, match="Gelu 'fast_gelu' has approximate='tanh'"):
            onnx_to_slim(model, (1.0,))

    def test_erf_outside_gelu_is_refused(self) -> None:
        nodes = [helper.make_node("Erf", ["c"], ["y"], name="erf")]
        with pytest.raises(ConversionError, match="Erf 'erf' is not the Erf of GELU"):
            onnx_to_slim(_single_node_model(nodes[0], [1, 8, 4, 4]), (1.0,))


class PReluNet(torch.nn.Module):
    """PReLU with a slope per channel (a prelu op, sliced with the group) and with one slope
    (LeakyRelu, fused into the conv before it), on a residual and after a concat."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.a = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.PReLU(13))
        self.b = nn.Sequential(nn.Conv2d(13, 13, 3, padding=1), nn.BatchNorm2d(13), nn.PReLU())
        self.c = nn.Conv2d(3, 7, 1)
        self.act = nn.PReLU(20)
        self.fc = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = self.act(torch.cat([y + self.b(y), self.c(x)], 1))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def prelu_converted():
    torch.manual_seed(11)
    net = PReluNet().eval()
    randomize_bn(net, 12)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape) - 0.5)
    x = np.random.default_rng(13).standard_normal((2, 3, 7, 6)).astype(np.float32)
    return net, x, torch_to_slim(net, x, widths={"small": {"a.0": 3, "c": 5}, "0.5": 0.5, "1.0": 1.0})


class TestPRelu:
    @pytest.fixture
    def converted(self, prelu_converted):
        return prelu_converted

    def test_per_channel_slopes_become_prelu_ops_and_one_slope_a_fused_leaky_relu(self, converted) -> None:
        net, _, slim = converted
        prelus = [op for op in slim.meta["ops"] if op["op"] == "prelu"]
        assert len(prelus) == 2
        b = next(op for op in slim.meta["ops"] if op["name"] == "b.0")
        assert b["act"] == "leaky_relu" and b["act_alpha"] == pytest.approx(float(net.b[2].weight.detach()))

    def test_full_width_equals_the_source_module(self, converted) -> None:
        net, x, slim = converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL

    def test_slopes_follow_the_channel_sort(self, converted) -> None:
        net, _, slim = converted
        first = next(op for op in slim.meta["ops"] if op["op"] == "prelu")["name"]
        assert sorted(slim.tensors[first + ".slope"]) == pytest.approx(sorted(net.a[2].weight.detach().numpy()))
        assert not np.allclose(slim.tensors[first + ".slope"], net.a[2].weight.detach().numpy())

    def test_every_profile_engine_onnxruntime_torch(self, converted) -> None:
        _, x, slim = converted
        check_all_profiles(slim, x)
        assert "PRelu" in [n.op_type for n in to_onnx(slim, "small").graph.node]


class SegHead(torch.nn.Module):
    """A per-pixel classifier: convs, then softmax over the channels of an NCHW map."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(3, 21, 3, padding=1), nn.BatchNorm2d(21), nn.ReLU(),
                                  nn.Conv2d(21, 13, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(13, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(x)), dim=1)


def _softmax_model(axis: int, opset: int, shape: list[int]) -> onnx.ModelProto:
    model = _single_node_model(helper.make_node("Softmax", ["c"], ["y"], name="sm", axis=axis), [1, 8] + shape[2:])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = shape[2]
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = shape[3]
    model.opset_import[0].version = opset
    return model


class TestSpatialSoftmax:
    def test_every_profile_engine_onnxruntime_torch(self) -> None:
        torch.manual_seed(14)
        net = SegHead().eval()
        randomize_bn(net, 15)
        x = np.random.default_rng(16).standard_normal((2, 3, 9, 7)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"body.0": 5, "body.3": 3}, "0.5": 0.5, "1.0": 1.0})
        assert slim.meta["ops"][-1]["op"] == "softmax"
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL
        check_all_profiles(slim, x)

    @pytest.mark.parametrize("axis,opset,shape,ok", [
        (1, 17, [1, 4, 4, 4], True), (-3, 13, [1, 4, 4, 4], True), (1, 11, [1, 4, 1, 1], True),
        (1, 11, [1, 4, 4, 4], False), (-1, 17, [1, 4, 4, 4], False), (2, 17, [1, 4, 4, 4], False)])
    def test_only_the_channel_axis(self, axis: int, opset: int, shape: list[int], ok: bool) -> None:
        model = _softmax_model(axis, opset, shape)
        if ok:
            slim = onnx_to_slim(model, (1.0,))
            x = np.random.default_rng(17).standard_normal(shape).astype(np.float32)
            assert rel_err(slimrt.load(to_bytes(slim)).run(x), run_ort(model, x)) < RTOL
        else:
            with pytest.raises(ConversionError, match=r"Softmax 'sm' over .* slimrt converts the softmax over the "
                                                      r"channels \(axis 1\)"):
                onnx_to_slim(model, (1.0,))


class PadNet(torch.nn.Module):
    """Zero padding written as its own op (TensorFlow-style 'SAME' on strided convs, padded pools):
    ZeroPad2d and F.pad before convs (dense, depthwise), an AveragePool and a MaxPool after a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 13, 3, stride=2), nn.BatchNorm2d(13),
                                nn.ReLU())
        self.pool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))
        self.dw = nn.Sequential(nn.ZeroPad2d((1, 2, 2, 1)), nn.Conv2d(13, 13, 4, groups=13), nn.BatchNorm2d(13))
        self.avg = nn.AvgPool2d(4, stride=1, padding=1)  # count_include_pad=True, PyTorch's default
        self.c2 = nn.Conv2d(13, 7, 3, padding=1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.pool(self.c1(x)))
        y = self.c2(self.avg(torch.nn.functional.pad(y, (1, 0, 0, 1))) + y)
        return self.fc(y.mean((2, 3)))


def _pad_model(pads: list[int], mode: str = "constant", value: float = 0.0, then: str = "Conv") -> onnx.ModelProto:
    """conv -> relu? -> Pad -> Conv | MaxPool | AveragePool | Relu."""
    n = helper.make_node
    inits = [_init("w", np.random.default_rng(18).standard_normal((8, 4, 1, 1)).astype(np.float32)),
             _init("w2", np.random.default_rng(19).standard_normal((5, 8, 3, 3)).astype(np.float32)),
             _init("pads", np.array(pads, np.int64)), _init("value", np.array(value, np.float32))]
    nodes = [n("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1])]
    src = "c"
    if then == "MaxPool+relu":
        nodes.append(n("Relu", ["c"], ["r"], name="relu"))
        src = "r"
    nodes.append(n("Pad", [src, "pads", "value"], ["p"], name="pad", mode=mode))
    if then == "Conv":
        nodes.append(n("Conv", ["p", "w2"], ["y"], name="conv2", kernel_shape=[3, 3]))
    elif then.startswith("MaxPool"):
        nodes.append(n("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[3, 3]))
    elif then == "AveragePool":
        nodes.append(n("AveragePool", ["p"], ["y"], name="pool", kernel_shape=[2, 2], pads=[1, 1, 0, 0]))
    else:
        nodes.append(n(then, ["p"], ["y"], name="after"))
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class TestZeroPad:
    @pytest.fixture
    def converted(self, pad_converted):
        return pad_converted

    def test_no_pad_op_is_left_and_convs_and_pools_carry_it(self, converted) -> None:
        _, _, slim = converted
        ops = {op["name"]: op for op in slim.meta["ops"]}
        assert ops["c1.1"]["pads"] == [0, 0, 1, 1] and ops["dw.1"]["pads"] == [2, 1, 1, 2]
        pools = [op for op in slim.meta["ops"] if op["op"] in ("maxpool", "avgpool")]
        assert [(p["op"], p["pads"]) for p in pools] == [("maxpool", [1, 1, 1, 1]), ("avgpool", [1, 2, 2, 1])]
        assert pools[1]["count_include_pad"]

    def test_full_width_equals_the_source_module(self, converted) -> None:
        net, x, slim = converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL

    def test_every_profile_engine_onnxruntime_torch(self, converted) -> None:
        _, x, slim = converted
        check_all_profiles(slim, x)

    @pytest.mark.parametrize("then", ["Conv", "MaxPool+relu"])
    def test_onnx_pad_folds(self, then: str) -> None:
        proto = _pad_model([0, 0, 1, 2, 0, 0, 2, 1], then=then)
        slim = onnx_to_slim(proto, (1.0,))
        assert [op["pads"] for op in slim.meta["ops"] if "pads" in op][-1] == [1, 2, 2, 1]
        x = np.random.default_rng(20).standard_normal((1, 4, 6, 6)).astype(np.float32)
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), run_ort(proto, x)) < RTOL

    @pytest.mark.parametrize("pads,mode,value,then,expect", [
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", 0.0, "Conv", r"Pad 'pad' with mode 'reflect'"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "edge", 0.0, "Conv", r"Pad 'pad' with mode 'edge'"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 1.0, "Conv", r"Pad 'pad' with value 1.0"),
        ([0, 1, 0, 0, 0, 0, 0, 0], "constant", 0.0, "Conv", r"Pad 'pad' with pads \[0, 1, 0, 0, 0, 0, 0, 0\]"),
        ([0, 0, -1, 0, 0, 0, 0, 0], "constant", 0.0, "Conv", r"Pad 'pad' with pads"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 0.0, "Relu", r"Pad 'pad' feeds Relu 'after'; slimrt folds"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 0.0, "MaxPool", r"a zero can be the maximum of a window"),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 0.0, "AveragePool", r"AveragePool 'pool' has pads \[1, 1, 0, 0\] it does "
                                                                     r"not count, after Pad 'pad'"),
    ], ids=["reflect", "edge", "value", "channels", "negative", "read-by-relu", "maxpool-of-signed", "avgpool-uncounted"])
    def test_other_pads_are_refused_naming_the_node(self, pads, mode, value, then, expect) -> None:
        with pytest.raises(ConversionError, match=expect):
            onnx_to_slim(_pad_model(pads, mode, value, then), (1.0,))


@pytest.fixture(scope="module")
def pad_converted():
    torch.manual_seed(21)
    net = PadNet().eval()
    randomize_bn(net, 22)
    x = np.random.default_rng(23).standard_normal((2, 3, 17, 15)).astype(np.float32)
    return net, x, torch_to_slim(net, x, widths={"small": {"c1.1": 5, "c2": 3}, "0.5": 0.5, "1.0": 1.0})


class PreActBlock(torch.nn.Module):
    """Pre-activation ResNet (He et al., 2016b): BN -> ReLU -> conv, twice, on the residual branch
    of an identity shortcut, and a final BN -> ReLU before the pool; the first BN reads the block
    input, which the shortcut reads too, so no conv can absorb it."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 13, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(13), nn.Conv2d(13, 21, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(21), nn.Conv2d(21, 13, 3, padding=1, bias=False)
        self.bn, self.fc = nn.BatchNorm2d(13), nn.Linear(13, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = x + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return self.fc(torch.relu(self.bn(y)).mean((2, 3)))


class Caffe2Style(torch.nn.Module):
    """Per-channel constants written as Mul / Add / Sub / Div: input normalisation, a scale after
    a conv (folds into it), a shift after a ReLU (stays), one with zero shift before a padded conv
    (folds forward)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 13, 3, padding=1), nn.Conv2d(13, 11, 3, padding=1), \
            nn.Conv2d(11, 7, 3, padding=1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 13).view(1, 13, 1, 1))
        self.register_buffer("shift", torch.linspace(-0.3, 0.3, 13).view(1, 13, 1, 1))
        self.register_buffer("k", torch.linspace(0.7, 1.3, 11).view(1, 11, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1((x - self.mean) / self.std) * self.gain + self.shift
        y = torch.relu(y) + self.shift
        y = self.c2(y)
        return self.c3(torch.relu(y) * self.k)


@pytest.fixture(scope="module")
def preact_converted():
    torch.manual_seed(24)
    net = PreActBlock().eval()
    randomize_bn(net, 25)
    x = np.random.default_rng(26).standard_normal((2, 3, 10, 9)).astype(np.float32)
    return net, x, torch_to_slim(net, x, widths={"small": {"stem": 5, "conv1": 7}, "0.5": 0.5, "1.0": 1.0})


class TestScaleBias:
    def test_preact_batch_norms_become_scale_bias_ops_with_their_relu(self, preact_converted) -> None:
        _, _, slim = preact_converted
        ops = [op for op in slim.meta["ops"] if op["op"] == "scale_bias"]
        assert [(op["act"], sorted(k for k in slim.tensors if k.startswith(op["name"] + "."))) for op in ops] == \
            [("relu", [f"{op['name']}.bias", f"{op['name']}.scale"]) for op in ops]
        assert len(ops) == 2  # bn1 and the final bn; bn2 folds into conv1 before it
        assert any(op["name"] == "conv1" and op["act"] == "relu" for op in slim.meta["ops"])

    def test_full_width_equals_the_source_module(self, preact_converted) -> None:
        net, x, slim = preact_converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL

    def test_every_profile_engine_onnxruntime_torch(self, preact_converted) -> None:
        _, x, slim = preact_converted
        check_all_profiles(slim, x)

    def test_per_channel_constants(self) -> None:
        torch.manual_seed(27)
        net = Caffe2Style().eval()
        x = np.random.default_rng(28).standard_normal((1, 3, 8, 9)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"c1": 5, "c2": 3}, "1.0": 1.0})
        kinds = [op["op"] for op in slim.meta["ops"]]
        # the normalisation stays (the padded c1 reads it), gain and shift fold into c1, the shift after
        # the ReLU stays, k (no shift) folds into c3
        assert kinds == ["scale_bias", "conv", "scale_bias", "conv", "conv"]
        assert slim.meta["ops"][1]["act"] == "relu" and slim.meta["ops"][3]["act"] == "relu"
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL
        check_all_profiles(slim, x)

    def test_shift_free_or_unpadded_input_affine_folds_forward(self) -> None:
        class Fold(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c1, self.bn = torch.nn.Conv2d(3, 13, 1), torch.nn.BatchNorm2d(13)
                self.c2, self.c3 = torch.nn.Conv2d(13, 9, 3, padding=1), torch.nn.Conv2d(13, 9, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.bn(torch.relu(self.c1(x * 2.0 - 1.0)))  # the network input, unpadded 1x1 reader
                return self.c2(y) + self.c3(y)                    # a BN with no shift, read by two convs

        net = Fold().eval()
        with torch.no_grad():
            net.bn.running_mean.zero_()
            net.bn.bias.zero_()
            net.bn.weight.copy_(torch.linspace(0.5, 2.0, 13))
        x = np.random.default_rng(29).standard_normal((1, 3, 6, 7)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"c1": 5}, "1.0": 1.0})
        assert [op["op"] for op in slim.meta["ops"]] == ["conv", "conv", "conv", "add"]
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL
        check_all_profiles(slim, x)

    def test_final_batch_norm_at_the_output(self) -> None:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(8)).eval()
        randomize_bn(net, 30)
        x = np.random.default_rng(31).standard_normal((1, 3, 4, 4)).astype(np.float32)
        slim = torch_to_slim(net, x, widths=(1.0,))
        assert [op["op"] for op in slim.meta["ops"]] == ["conv", "scale_bias"]
        with torch.no_grad():
            assert rel_err(slimrt.load(to_bytes(slim)).run(x), net(torch.from_numpy(x)).numpy()) < RTOL


class SqueezeExcite(torch.nn.Module):
    """Squeeze-and-excitation as MobileNetV3 (torchvision) and EfficientNet write it: global pool,
    1x1 conv, activation, 1x1 conv, (hard) sigmoid, then ``scale * input``."""

    def __init__(self, channels: int, reduced: int, act: type[torch.nn.Module], gate: type[torch.nn.Module]) -> None:
        super().__init__()
        self.fc1, self.act = torch.nn.Conv2d(channels, reduced, 1), act()
        self.fc2, self.gate = torch.nn.Conv2d(reduced, channels, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return scale * x


class SENet(torch.nn.Module):
    """Inverted residuals with SE on the depthwise output (hardsigmoid and sigmoid gates), an SE on
    a residual sum, odd channel counts."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.BatchNorm2d(13), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(13, 37, 1), nn.BatchNorm2d(37), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(37, 37, 3, padding=1, groups=37), nn.BatchNorm2d(37), nn.Hardswish())
        self.se1 = SqueezeExcite(37, 11, nn.ReLU, nn.Hardsigmoid)
        self.project = nn.Sequential(nn.Conv2d(37, 13, 1), nn.BatchNorm2d(13))
        self.se2 = SqueezeExcite(13, 5, nn.SiLU, nn.Sigmoid)
        self.fc = nn.Linear(13, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se1(self.dw(self.expand(x))))
        return self.fc(self.se2(x).mean((2, 3)))


@pytest.fixture(scope="module")
def se_converted():
    torch.manual_seed(32)
    net = SENet().eval()
    randomize_bn(net, 33)
    x = np.random.default_rng(34).standard_normal((2, 3, 9, 8)).astype(np.float32)
    widths = {"small": {"stem.0": 5, "expand.0": 9, "se1.fc1": 3, "se2.fc1": 2}, "0.5": 0.5, "1.0": 1.0}
    return net, x, torch_to_slim(net, x, widths=widths)


class TestChannelGate:
    def test_se_blocks_become_mul_ops_whose_gate_writes_the_input_group(self, se_converted) -> None:
        _, _, slim = se_converted
        ops = {op["name"]: op for op in slim.meta["ops"]}
        muls = [op for op in slim.meta["ops"] if op["op"] == "mul"]
        assert len(muls) == 2
        groups = slim.meta["groups"]
        assert ops["se1.fc2"]["out_group"] == ops["expand.0"]["out_group"]
        assert ops["se2.fc2"]["out_group"] == ops["stem.0"]["out_group"]
        reduced = {groups[ops[n]["out_group"]]["name"]: groups[ops[n]["out_group"]] for n in ("se1.fc1", "se2.fc1")}
        assert {g["size"] for g in reduced.values()} == {11, 5} and not any(g["fixed"] for g in reduced.values())
        assert ops["se1.fc2"]["act"] == "hardsigmoid" and ops["se2.fc2"]["act"] == "sigmoid"
        assert ops["se2.fc1"]["act"] == "silu"

    def test_full_width_equals_the_source_module(self, se_converted) -> None:
        net, x, slim = se_converted
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), want) < RTOL

    def test_every_profile_engine_onnxruntime_torch(self, se_converted) -> None:
        _, x, slim = se_converted
        check_all_profiles(slim, x)

    def test_gate_over_a_concat_fixes_its_groups(self) -> None:
        class CatSE(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(3, 8, 1)
                self.se = SqueezeExcite(16, 4, torch.nn.ReLU, torch.nn.Sigmoid)
                self.c = torch.nn.Conv2d(16, 8, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.c(self.se(torch.cat([self.a(x), self.b(x)], 1)))

        x = np.random.default_rng(35).standard_normal((1, 3, 5, 5)).astype(np.float32)
        slim = torch_to_slim(CatSE().eval(), x, widths={"small": {"se.fc1": 2}, "1.0": 1.0})
        fixed = [g for g in slim.meta["groups"] if "channel gate" in g["why"]]
        assert len(fixed) == 3 and all(g["fixed"] for g in fixed)
        check_all_profiles(slim, x)

    @pytest.mark.parametrize("shape_gate", ["view", "none_index", "unsqueeze"])
    def test_se_with_linears(self, shape_gate: str) -> None:
        class LinearSE(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 21, 3, padding=1)
                self.fc1, self.fc2 = torch.nn.Linear(21, 6), torch.nn.Linear(6, 21)
                self.head = torch.nn.Conv2d(21, 5, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.conv(x))
                g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
                if shape_gate == "view":
                    g = g.view(y.shape[0], y.shape[1], 1, 1)
                elif shape_gate == "none_index":
                    g = g[:, :, None, None]
                else:
                    g = g.unsqueeze(-1).unsqueeze(-1)
                return self.head(y * g)

        torch.manual_seed(36)
        net = LinearSE().eval()
        x = np.random.default_rng(37).standard_normal((2, 3, 6, 7)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"conv": 5, "fc1": 2}, "0.5": 0.5, "1.0": 1.0})
        kinds = [op["op"] for op in slim.meta["ops"]]
        assert kinds[-3:] == ["unflatten", "mul", "conv"]
        with torch.no_grad():
            assert rel_err(slimrt.load(to_bytes(slim)).run(x), net(torch.from_numpy(x)).numpy()) < RTOL
        check_all_profiles(slim, x)

    def test_product_of_two_maps_is_refused(self) -> None:
        node = helper.make_node("Mul", ["c", "c"], ["y"], name="square")
        with pytest.raises(ConversionError, match=r"Mul 'square' multiplies activations of shapes \(1, 8, 4, 4\) and "
                                                  r"\(1, 8, 4, 4\).*channel gate"):
            onnx_to_slim(_single_node_model(node, [1, 8, 4, 4]), (1.0,))


class TestChannelSplit:
    def test_chunk_and_slice_of_channels(self) -> None:
        class Split(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c, self.d, self.e = torch.nn.Conv2d(3, 12, 1), torch.nn.Conv2d(6, 9, 3, padding=1), \
                    torch.nn.Conv2d(4, 5, 1)
                self.f = torch.nn.Conv2d(20, 4, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.c(x))
                a, b = y.chunk(2, dim=1)
                return self.f(torch.cat([self.d(b), a, self.e(y[:, 3:7])], 1))

        torch.manual_seed(38)
        net = Split().eval()
        x = np.random.default_rng(39).standard_normal((1, 3, 6, 5)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"d": 3, "e": 2}, "1.0": 1.0})
        assert [(op["start"], op["end"]) for op in slim.meta["ops"] if op["op"] == "slice"] == [(0, 6), (6, 12), (3, 7)]
        assert "input of channel slice" in next(g["why"] for g in slim.meta["groups"] if g["name"] == "c")
        with torch.no_grad():
            assert rel_err(slimrt.load(to_bytes(slim)).run(x), net(torch.from_numpy(x)).numpy()) < RTOL
        check_all_profiles(slim, x)

    def test_onnx_split_node(self) -> None:
        split = _init("sizes", np.array([3, 5], np.int64))
        node = helper.make_node("Split", ["c", "sizes"], ["p", "q"], name="split", axis=1)
        conv = helper.make_node("Conv", ["q", "w5"], ["y"], name="after", kernel_shape=[1, 1])
        model = _single_node_model(node, [1, 2, 4, 4], [split, _init("w5", np.ones((2, 5, 1, 1), np.float32))])
        model.graph.node.append(conv)
        slim = onnx_to_slim(model, (1.0,))
        assert [(op["op"], op.get("start"), op.get("end")) for op in slim.meta["ops"]][1:] == \
            [("slice", 3, 8), ("conv", None, None)]
        x = np.random.default_rng(40).standard_normal((1, 4, 4, 4)).astype(np.float32)
        assert rel_err(slimrt.load(to_bytes(slim)).run(x), run_ort(model, x)) < RTOL

    def test_slices_of_other_axes_are_refused(self) -> None:
        inits = [_init(k, np.array(v, np.int64)) for k, v in (("s", [1]), ("e", [3]), ("ax", [2]))]
        node = helper.make_node("Slice", ["c", "s", "e", "ax"], ["y"], name="rows")
        with pytest.raises(ConversionError, match=r"Slice 'rows' .* slimrt converts a slice of whole channels"):
            onnx_to_slim(_single_node_model(node, [1, 8, 2, 4], inits), (1.0,))


@pytest.mark.parametrize("make", [ActNet, SENet, PReluNet, PreActBlock], ids=lambda c: c.__name__)
def test_models_from_torchs_default_exporter(make) -> None:
    """torch.onnx.export's default (the dynamo exporter, onnxscript, opset 18+: Gelu as one op)."""
    pytest.importorskip("onnxscript")
    import warnings

    torch.manual_seed(42)
    net = make().eval()
    randomize_bn(net, 43)
    x = torch.from_numpy(np.random.default_rng(44).standard_normal((1, 3, 9, 11)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(net, (x,), dynamo=True, verbose=False).model_proto
    slim = onnx_to_slim(proto, {"small": 0.5, "1.0": 1.0})
    assert rel_err(slimrt.load(to_bytes(slim)).run(x.numpy()), run_ort(proto, x.numpy())) < RTOL
    check_all_profiles(slim, x.numpy())


class TestResize:
    def test_upsampling_as_pytorch_writes_it(self) -> None:
        class Up(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c, self.d = torch.nn.Conv2d(3, 13, 3, stride=2, padding=1), torch.nn.Conv2d(16, 5, 3, padding=1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.c(x))
                u = torch.nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
                v = torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
                w = torch.nn.Upsample(size=(x.shape[2], x.shape[3]), mode="nearest")(y)
                return self.d(torch.cat([u + v + w, x], 1))

        torch.manual_seed(45)
        net = Up().eval()
        x = np.random.default_rng(46).standard_normal((1, 3, 8, 10)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"small": {"c": 3}, "1.0": 1.0})
        assert [op["mode"] for op in slim.meta["ops"] if op["op"] == "resize"] == ["bilinear", "nearest", "nearest"]
        with torch.no_grad():
            assert rel_err(slimrt.load(to_bytes(slim)).run(x), net(torch.from_numpy(x)).numpy()) < RTOL
        check_all_profiles(slim, x)

    @pytest.mark.parametrize("attrs,scales,expect", [
        ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 2], "align_corners"),
        ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_floor"},
         [1, 1, 3, 3], "asymmetric, round_prefer_floor"),
        ({"mode": "cubic"}, [1, 1, 2, 2], "cubic"),
        ({"mode": "nearest"}, [1, 1, 1.5, 1.5], "integer factors"),
        ({"mode": "nearest"}, [1, 2, 1, 1], "integer factors"),
    ], ids=["align-corners", "asymmetric-round", "cubic", "fractional", "channels"])
    def test_other_resizes_are_refused_naming_the_node(self, attrs: dict, scales: list, expect: str) -> None:
        node = helper.make_node("Resize", ["c", "", "scales"], ["y"], name="up", **attrs)
        model = _single_node_model(node, None, [_init("scales", np.array(scales, np.float32))])
        with pytest.raises(ConversionError, match=f"Resize 'up' .*{expect}"):
            onnx_to_slim(model, (1.0,))


# ---- importance sorting -----------------------------------------------------------------


def _skewed_net(important: np.ndarray, seed: int) -> torch.nn.Module:
    """conv1 (32 filters) whose `important` filters are large and the rest nearly zero."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4)).eval()
    gain = torch.full((32,), 1e-3)
    gain[torch.from_numpy(important)] = 1.0
    with torch.no_grad():
        net[0].weight.mul_(gain[:, None, None, None])
        net[0].bias.mul_(gain)
    return net


def _prefix_keeps(slim, original: torch.Tensor, important: np.ndarray) -> bool:
    """Do the first len(important) filters of the converted conv1 equal the important originals?"""
    converted = to_torch(slim, "full").layers["op0"].weight.detach()
    k = len(important)
    flat = original.reshape(32, -1)
    matches = [int(torch.cdist(row.reshape(1, -1), flat).argmin()) for row in converted.reshape(32, -1)[:k]]
    return set(matches) == set(important.tolist())


class TestImportance:
    important = np.sort(np.random.default_rng(6).choice(32, 8, replace=False))

    def _convert(self, importance: str):
        net = _skewed_net(self.important, 7)
        x = np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)
        slim = torch_to_slim(net, x, widths={"narrow": {"0": 8, "2": 8}, "full": 1.0}, importance=importance)
        return net, x, slim

    @pytest.mark.parametrize("criterion", ["l1", "l2"])
    def test_prefix_keeps_the_important_channels(self, criterion: str) -> None:
        net, x, slim = self._convert(criterion)
        assert _prefix_keeps(slim, net[0].weight.detach(), self.important)
        full = run_reference(slim, x, "full")
        assert rel_err(run_reference(slim, x, "narrow"), full) < 0.05

    def test_random_order_fails_the_check(self) -> None:
        net, x, slim = self._convert("random")
        assert not _prefix_keeps(slim, net[0].weight.detach(), self.important)
        assert rel_err(run_reference(slim, x, "narrow"), run_reference(slim, x, "full")) > 0.05

    def test_bn_gamma_criterion(self) -> None:
        torch.manual_seed(9)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                  torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 3)).eval()
        gamma = torch.from_numpy(np.random.default_rng(10).permutation(16).astype(np.float32) - 7.5)
        with torch.no_grad():
            net[1].weight.copy_(gamma)
        x = np.random.default_rng(11).standard_normal((1, 3, 6, 6)).astype(np.float32)
        slim = torch_to_slim(net, x, widths=(0.5, 1.0), importance="bn")
        op = next(o for o in slim.meta["ops"] if o["op"] == "conv")
        stored = slim.tensors[op["name"] + ".scale"]
        order = np.argsort(-np.abs(gamma.numpy()), kind="stable")
        var = net[1].running_var.numpy()
        np.testing.assert_allclose(stored, gamma.numpy()[order] / np.sqrt(var[order] + 1e-5), rtol=1e-5)

    def test_none_keeps_the_source_order(self) -> None:
        net, x, slim = self._convert("none")
        conv = next(o for o in slim.meta["ops"] if o["op"] == "conv")
        # file layout [kh, kw, Cin, Cout]; torch [Cout, Cin, kh, kw]: the same, unpermuted
        np.testing.assert_array_equal(slim.tensors[conv["name"] + ".weight"],
                                      net[0].weight.detach().numpy().transpose(2, 3, 1, 0))
        narrow = copy.deepcopy(net)
        with torch.no_grad():  # the narrow profile is the first 8 channels of the source, as they were
            narrow[0].weight[8:] = 0
            narrow[0].bias[8:] = 0
            want = narrow(torch.from_numpy(x)).numpy()
        assert rel_err(run_reference(slim, x, "narrow"), want) < RTOL

    @pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random", "none"])
    def test_full_width_is_unchanged_by_sorting(self, small_net, x16, criterion: str) -> None:
        slim = torch_to_slim(small_net, x16, widths=(1.0,), importance=criterion)
        with torch.no_grad():
            expected = small_net(torch.from_numpy(x16)).numpy()
        assert rel_err(run_reference(slim, x16, "1.0"), expected) < RTOL

    def test_unknown_criterion(self, small_net, x16) -> None:
        with pytest.raises(ValueError, match="unknown importance criterion 'l3'"):
            torch_to_slim(small_net, x16, importance="l3")


# ---- profiles ---------------------------------------------------------------------------


class TestProfiles:
    def test_uniform_widths_follow_the_rule(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16, widths=(0.3, 1.0))
        p = next(p for p in slim.meta["profiles"] if p["name"] == "0.3")
        for g, w in zip(slim.meta["groups"], p["widths"]):
            expected = g["size"] if g["fixed"] else min(max(8 * int(np.floor(g["size"] * 0.3 / 8 + 0.5)), 8), g["size"])
            assert w == expected
        assert slim.meta["min_multiplier"] == 0.3

    def test_full_profile_is_the_original_net_for_every_group_size(self) -> None:
        """Group sizes 1..67 (a chain of 1x1 convs): the "1.0" profile keeps every channel and
        computes exactly what the module does, in the engine and in the reference."""
        torch.manual_seed(5)
        sizes = list(range(1, 68))
        layers, cin = [], 3
        for s in sizes:
            layers += [torch.nn.Conv2d(cin, s, 1), torch.nn.ReLU()]
            cin = s
        net = torch.nn.Sequential(*layers, torch.nn.Conv2d(cin, 16, 1)).eval()
        x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
        slim = torch_to_slim(net, x, widths=(0.25, 1.0))
        full = next(p for p in slim.meta["profiles"] if p["name"] == "1.0")
        assert full["widths"] == [g["size"] for g in slim.meta["groups"]]
        assert sorted(g["size"] for g in slim.meta["groups"] if not g["fixed"]) == sizes
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(slimrt.load(to_bytes(slim)).run(x, profile="1.0"), want) < RTOL
        assert rel_err(run_reference(slim, x, "1.0"), want) < RTOL
        assert rel_err(slimrt.load(to_bytes(slim)).run(x, profile=1.0), want) < RTOL

    @pytest.mark.parametrize("size", [57, 58, 59, 66])
    def test_full_profile_of_sizes_just_above_a_multiple_of_8(self, size: int) -> None:
        torch.manual_seed(size)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, size, 1), torch.nn.Conv2d(size, 16, 1)).eval()
        x = np.random.default_rng(size).standard_normal((1, 3, 4, 4)).astype(np.float32)
        model = from_torch(net, x)
        assert model.widths("1.0") == tuple(g.size for g in model.groups)
        assert size in model.widths("1.0")
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert rel_err(model.run(x, profile="1.0"), want) < RTOL

    def test_explicit_per_group_widths(self, small_net, x16) -> None:
        names = [g["name"] for g in torch_to_slim(small_net, x16, widths=(1.0,)).meta["groups"]]
        assert names == ["stem.0", "side", "fc"]
        slim = torch_to_slim(small_net, x16, widths={"custom": {"stem.0": 5, "side": 3}, "1.0": 1.0})
        custom = next(p for p in slim.meta["profiles"] if p["name"] == "custom")
        assert custom["widths"] == [5, 3, 10]
        check_all_profiles(slim, x16)

    def test_macs_and_params_come_from_the_graph(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)
        for p in slim.meta["profiles"]:
            assert (p["macs"], p["params"]) == profile_cost(slim, p["widths"], profile=p["name"])
            assert p["macs"] == count_macs(to_onnx(slim, p["name"]))
        macs = [p["macs"] for p in slim.meta["profiles"]]
        assert macs == sorted(macs) and len(set(macs)) == len(macs)

    @pytest.mark.parametrize("widths", [(0.0, 1.0), (1.5,), ()])
    def test_bad_multipliers(self, small_net, x16, widths) -> None:
        with pytest.raises(ProfileError):
            torch_to_slim(small_net, x16, widths=widths)

    def test_identical_profiles_are_written_once_with_a_warning(self) -> None:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(16 * 4 * 4, 3)).eval()
        x = np.random.default_rng(13).standard_normal((1, 3, 6, 6)).astype(np.float32)
        with pytest.warns(DuplicateProfileWarning) as caught:
            slim = torch_to_slim(net, x, widths=(0.25, 0.5, 0.75, 1.0))
        assert [str(w.message) for w in caught] == [
            "profile '0.5' comes out identical to profile '0.25' (the same width in every channel group of this "
            "model), so the file holds '0.25' only; multiplier 0.5 still runs it",
            "profile '1.0' comes out identical to profile '0.75' (the same width in every channel group of this "
            "model), so the file holds '0.75' only; multiplier 1.0 still runs it"]
        assert [(p["name"], p["widths"]) for p in slim.meta["profiles"]] == [("0.25", [8, 3]), ("0.75", [16, 3])]
        model = slimrt.load(to_bytes(slim))
        np.testing.assert_array_equal(model.run(x, 0.5), model.run(x, "0.25"))

    def test_identical_explicit_profiles_are_written_once(self, small_net, x16) -> None:
        same = {"stem.0": 8, "side": 16}
        with pytest.warns(DuplicateProfileWarning, match="profile 'b' comes out identical to profile 'a'.*holds 'a' only$"):
            slim = torch_to_slim(small_net, x16, widths={"a": same, "b": dict(same), "1.0": 1.0})
        assert [p["name"] for p in slim.meta["profiles"]] == ["a", "1.0"]

    def test_unknown_profile_on_export(self, small_net, x16) -> None:
        slim = torch_to_slim(small_net, x16)
        with pytest.raises(ProfileError, match="unknown profile 'huge'"):
            to_onnx(slim, "huge")


# ---- unsupported constructs -------------------------------------------------------------


def _single_node_model(node: onnx.NodeProto, out_shape: list, inits: list | None = None) -> onnx.ModelProto:
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1])
    graph = helper.make_graph([conv, node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [_init("w", np.ones((8, 4, 1, 1), np.float32))] + (inits or []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class TestUnsupported:
    def test_unknown_op_names_op_and_node(self) -> None:
        node = helper.make_node("LRN", ["c"], ["y"], name="my_lrn", size=3)
        with pytest.raises(ConversionError, match=r"unsupported ONNX op 'LRN' at node 'my_lrn'"):
            onnx_to_slim(_single_node_model(node, [1, 8, 4, 4]))

    @pytest.mark.parametrize("middle, expect", [
        (lambda v: v.transpose(1, 3), r"unsupported ONNX op 'Transpose' at node .*channel shuffle"),
        (lambda v: torch.relu(v).transpose(1, 2), r"reads .*the \[1, 2, 4, 4, 4\] view of .* made by Reshape"),
        (lambda v: v, r"Reshape '.*' turns the \[1, 2, 4, 4, 4\] view .* into \(1, 8, 4, 4\)"),
    ], ids=["other-perm", "view-read-by-relu", "split-and-merge"])
    def test_channel_moves_other_than_a_shuffle_are_refused(self, middle, expect) -> None:
        class Moves(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.conv(x)
                n, c, h, w = y.shape
                return middle(y.view(n, 2, c // 2, h, w)).reshape(n, c, h, w)

        with pytest.raises(ConversionError, match=expect):
            torch_to_slim(Moves().eval(), np.zeros((1, 3, 4, 4), np.float32))

    def test_reshape_mixing_channels_is_refused(self) -> None:
        class Mix(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.conv(x).reshape(1, 2, 4, 16)

        with pytest.raises(ConversionError, match=r"Reshape '.*' from \(1, 8, 4, 4\) to \(1, 2, 4, 16\)"):
            torch_to_slim(Mix().eval(), np.zeros((1, 3, 4, 4), np.float32))

    def test_transpose_names_channel_movement(self) -> None:
        node = helper.make_node("Transpose", ["c"], ["y"], name="tr", perm=[0, 2, 3, 1])
        with pytest.raises(ConversionError, match="'Transpose' at node 'tr'.*channel shuffle"):
            onnx_to_slim(_single_node_model(node, [1, 4, 4, 8]))

    def test_clip_other_than_relu6(self) -> None:
        inits = [_init("lo", np.array(-1, np.float32)), _init("hi", np.array(1, np.float32))]
        node = helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="hardtanh")
        with pytest.raises(ConversionError, match=r"Clip 'hardtanh' clips to \[-1.0, 1.0\]"):
            onnx_to_slim(_single_node_model(node, [1, 8, 4, 4], inits))

    def test_constant_varying_over_the_image_is_refused(self) -> None:
        inits = [_init("k", np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))]
        node = helper.make_node("Mul", ["c", "k"], ["y"], name="ramp")
        with pytest.raises(ConversionError, match=r"Mul 'ramp' applies a constant of shape \(1, 1, 4, 4\)"):
            onnx_to_slim(_single_node_model(node, [1, 8, 4, 4], inits), (1.0,))

    def test_symbolic_spatial_input_needs_input_shape(self) -> None:
        model = _single_node_model(helper.make_node("Relu", ["c"], ["y"], name="r"), [1, 8, 4, 4])
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
        with pytest.raises(ConversionError, match="pass input_shape"):
            onnx_to_slim(model)
        assert onnx_to_slim(model, (1.0,), input_shape=(1, 4, 5, 5)).meta["input"]["shape"] == [1, 4, 5, 5]


# ---- command line -----------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slimrt")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


class TestCli:
    def test_convert_info_export(self, tmp_path: Path, capsys) -> None:
        src, slim_path, out = tmp_path / "in.onnx", tmp_path / "m.slim", tmp_path / "p.onnx"
        onnx.save(handmade_onnx(), str(src))
        assert _cli(["convert", str(src), "-o", str(slim_path), "--widths", "0.5,1.0", "--importance", "l2"]) == 0
        assert "found" in capsys.readouterr().err
        assert _cli(["info", str(slim_path)]) == 0
        text = capsys.readouterr().out
        slim = read(slim_path)
        for p in slim.meta["profiles"]:
            assert p["name"] in text and f"{p['macs']:,}" in text
        assert "network output" in text
        assert _cli(["export-onnx", str(slim_path), "--profile", "0.5", "-o", str(out)]) == 0
        x = np.random.default_rng(12).standard_normal((1, 3, 12, 12)).astype(np.float32)
        assert rel_err(run_ort(onnx.load(str(out)), x), run_reference(slim, x, "0.5")) < RTOL

    def test_convert_prints_identical_profiles(self, tmp_path: Path, capsys) -> None:
        src, slim_path = tmp_path / "in.onnx", tmp_path / "m.slim"
        onnx.save(handmade_onnx(), str(src))
        assert _cli(["convert", str(src), "-o", str(slim_path), "--widths", "0.25,0.5,1.0", "-q"]) == 0
        err = capsys.readouterr().err
        assert "slimrt: warning: profile '0.5' comes out identical to profile '0.25'" in err
        assert [p["name"] for p in read(slim_path).meta["profiles"]] == ["0.25", "1.0"]

    def test_errors_are_reported_not_raised(self, tmp_path: Path, capsys) -> None:
        assert _cli(["info", str(tmp_path / "missing.slim")]) == 2
        assert "error" in capsys.readouterr().err
        src = tmp_path / "in.onnx"
        onnx.save(handmade_onnx(), str(src))
        assert _cli(["convert", str(src), "-o", str(tmp_path / "m.slim"), "--widths", "2.0", "-q"]) == 2
        assert "outside" in capsys.readouterr().err


def test_to_torch_can_be_called_repeatedly():
    from slimrt import models
    from slimrt.convert import to_torch

    slim = models.tiny_resnet(seed=4)
    first = to_torch(slim, "0.5")
    second = to_torch(slim, "1.0")
    assert callable(to_torch) and first is not second
