"""Model zoo: the architectures, and their conversion at every uniform profile.

For each zoo model (at a reduced input size, batch 1): the engine, onnxruntime on the exported
pruned ONNX and the pruned PyTorch module agree at every profile; at full width the engine
equals the original module; profile MACs equal the MACs counted from the exported ONNX.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import slimrt
from slimrt import zoo
from slimrt.convert import to_onnx, to_torch, torch_to_slim
from slimrt.convert.export import count_macs
from slimrt.format import to_bytes

RTOL = 1e-4
WIDTHS = (0.25, 0.5, 0.75, 1.0)
# name -> (constructor kwargs, input side); small inputs keep CI fast, the graphs are unchanged.
CASES = {
    "mobilenet_v2": ({"num_classes": 100}, 32),
    "resnet18": ({"num_classes": 100}, 32),
    "resnet50": ({"num_classes": 100}, 32),
    "vgg16_bn": ({"num_classes": 100, "image_size": 32}, 32),
    "mobilenet_v3_large": ({"num_classes": 100}, 32),
    "mobilenet_v3_small": ({"num_classes": 100}, 32),
    "efficientnet_b0": ({"num_classes": 100}, 32),
    "preact_resnet18": ({"num_classes": 100}, 32),
    "densenet121": ({"num_classes": 100}, 32),
    "shufflenet_v2": ({"num_classes": 100}, 32),
    "unet_small": ({"num_classes": 5}, 32),
}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def randomize_bn(module: torch.nn.Module, seed: int) -> None:
    """Trained-looking BN statistics, so folding and sorting are not trivially the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=gen) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.25)
            m.bias.data.copy_((torch.rand(c, generator=gen) - 0.5) * 0.2)


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request):
    name = request.param
    kwargs, side = CASES[name]
    torch.manual_seed(0)
    net = zoo.create(name, **kwargs)
    randomize_bn(net, 1)
    net.eval()
    x = np.random.default_rng(2).standard_normal((1, 3, side, side)).astype(np.float32)
    slim = torch_to_slim(net, x, widths=WIDTHS)
    return name, net, x, slim, slimrt.load(to_bytes(slim))


def test_full_width_equals_the_original(converted) -> None:
    name, net, x, _, model = converted
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert rel_err(model.run(x, profile="1.0"), expected) < RTOL, name


@pytest.mark.parametrize("profile", [str(w) for w in WIDTHS])
def test_engine_onnxruntime_and_torch_agree(converted, profile: str) -> None:
    name, _, x, slim, model = converted
    engine = model.run(x, profile=profile)
    proto = to_onnx(slim, profile)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": x})[0]
    with torch.no_grad():
        torch_out = to_torch(slim, profile)(torch.from_numpy(x)).numpy()
    assert rel_err(engine, onnx_out) < RTOL, (name, profile)
    assert rel_err(torch_out, onnx_out) < RTOL, (name, profile)
    assert count_macs(proto) == model.profile(profile).macs


def test_profiles_get_cheaper_and_only_the_classifier_stays_full(converted) -> None:
    name, _, _, slim, model = converted
    macs = [p.macs for p in model.profiles]
    assert [p.name for p in model.profiles] == [str(w) for w in WIDTHS]
    assert macs == sorted(macs) and len(set(macs)) == len(macs)
    fixed = [g for g in slim.meta["groups"] if g["fixed"]]
    if name == "shufflenet_v2":  # what the shuffles and splits read stays full, the branches' insides slim
        assert all(("channel shuffle" in g["why"] or "channel slice" in g["why"] or g["why"] == "network output")
                   for g in fixed)
        assert len(fixed) < len(slim.meta["groups"])
        return
    assert len(fixed) == 1 and fixed[0]["why"] == "network output", name


# Parameter counts of the ImageNet configurations (224x224, 1000 classes), as published for
# these architectures (torchvision's reference implementations report the same numbers).
PUBLISHED_PARAMS = {"mobilenet_v2": 3_504_872, "resnet18": 11_689_512, "resnet50": 25_557_032,
                    "vgg16_bn": 138_365_992, "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856,
                    "efficientnet_b0": 5_288_548, "densenet121": 7_978_856,
                    "shufflenet_v2": 2_278_604}


def test_the_newer_ops_are_exercised(converted) -> None:
    """The ops these architectures need: channel gates, standalone batch norms, their activations."""
    name, _, _, slim, _ = converted
    kinds = {op["op"] for op in slim.meta["ops"]}
    acts = {op.get("act") for op in slim.meta["ops"]}
    expect = {"mobilenet_v3_large": ({"mul"}, {"hardswish", "hardsigmoid"}),
              "mobilenet_v3_small": ({"mul"}, {"hardswish", "hardsigmoid"}),
              "efficientnet_b0": ({"mul"}, {"silu", "sigmoid"}),
              "preact_resnet18": ({"scale_bias"}, {"relu"}),
              "densenet121": ({"scale_bias", "concat", "avgpool"}, {"relu"}),
              "shufflenet_v2": ({"slice", "shuffle", "concat"}, {"relu"}),
              "unet_small": ({"resize", "concat", "maxpool"}, {"relu"})}.get(name, (set(), set()))
    assert expect[0] <= kinds and expect[1] <= acts, name


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_imagenet_configuration_parameter_count(name: str) -> None:
    with torch.device("meta"):
        net = zoo.create(name)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_num_classes(name: str) -> None:
    kwargs = {"image_size": 32} if name == "vgg16_bn" else {}
    with torch.device("meta"):
        net = zoo.create(name, num_classes=7, **kwargs)
    assert net(torch.zeros(2, 3, 32, 32, device="meta")).shape[:2] == (2, 7)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown zoo model 'alexnet'"):
        zoo.create("alexnet")
