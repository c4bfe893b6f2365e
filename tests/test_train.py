"""Training: losses fall at every width, calibration touches only epilogues, the command line
runs end to end, and data-parallel ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import slimrt
from slimrt import format as fmt
from slimrt.cli import main
from slimrt.train import Supernet, TrainConfig, calibrate, fit
from slimrt.train.datasets import digits
from slimrt.train.evaluation import engine_accuracy
from slimrt.train.slimmable import evaluate


def tiny_module(seed: int = 0, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24 * 2 * 2, classes))


@pytest.fixture(scope="module")
def data():
    d = digits()
    return d.x_train[:384], d.y_train[:384], d.x_test[:128], d.y_test[:128]


def _loss(net: Supernet, x: np.ndarray, y: np.ndarray, key) -> float:
    net.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(torch.from_numpy(x), key), torch.from_numpy(y)))


@pytest.mark.parametrize("method,distill", [("sandwich", "inplace"), ("sandwich", "ema"), ("parallel", "inplace"),
                                            ("parallel", "none")])
def test_a_few_steps_lower_the_loss_at_every_width(data, method: str, distill: str) -> None:
    x, y, xt, yt = data
    net = Supernet.from_torch(tiny_module(), torch.zeros(1, 1, 16, 16), (0.25, 0.5, 1.0))
    net.recalibrate([torch.from_numpy(x[:128])])
    before = {p: _loss(net, x, y, p) for p in net.profile_names}
    fit(net, (x, y), None, TrainConfig(method=method, distill=distill, epochs=4, batch_size=32, lr=1e-2),
        progress=False)
    after = {p: _loss(net, x, y, p) for p in net.profile_names}
    for p in net.profile_names:
        assert after[p] < before[p] - 0.05, (p, before[p], after[p])


def test_fixed_width_training_trains_that_width(data) -> None:
    x, y, _, _ = data
    net = Supernet.from_torch(tiny_module(1), torch.zeros(1, 1, 16, 16), (0.5, 1.0))
    before = _loss(net, x, y, "0.5")
    fit(net, (x, y), None, TrainConfig(method="fixed", profile="0.5", epochs=2, batch_size=32), progress=False)
    assert _loss(net, x, y, "0.5") < before - 0.1


def test_engine_accuracy_equals_supernet_accuracy(data) -> None:
    x, y, xt, yt = data
    net = Supernet.from_torch(tiny_module(2), torch.zeros(1, 1, 16, 16), (0.25, 1.0))
    fit(net, (x, y), None, TrainConfig(epochs=1, batch_size=32), progress=False)
    model = slimrt.load(fmt.to_bytes(net.to_slim()))
    torch_acc = evaluate(net, xt, yt, net.profile_names)
    engine = {r["name"]: r["accuracy"] for r in engine_accuracy(model, xt, yt)}
    for name in net.profile_names:  # the same function: at most a borderline image may flip
        assert abs(engine[name] - torch_acc[name]) <= 100 / len(xt) + 1e-9


def test_calibration_changes_only_the_epilogues(data) -> None:
    x, y, xt, yt = data
    net = Supernet.from_torch(tiny_module(3), torch.zeros(1, 1, 16, 16), (0.25, 0.5, 1.0))
    fit(net, (x, y), None, TrainConfig(method="fixed", epochs=2, batch_size=32), progress=False)  # full width only
    plain = net.to_slim()
    plain = fmt.SlimFile(plain.meta, {k: v for k, v in plain.tensors.items() if "@" not in k})
    for p in plain.meta["profiles"]:  # as a converter writes it: one set of statistics
        p["macs"], p["params"] = fmt.profile_cost(plain.meta, p["widths"], profile=p["name"],
                                                  tensor_names=plain.tensors)
    model = calibrate(plain, x)
    out = model.to_slimfile()
    for name, value in plain.tensors.items():
        if name.endswith(".weight"):
            assert out.tensors[name].tobytes() == value.tobytes(), name
    own = [k for k in out.tensors if "@" in k]
    assert own and all(k.split("@")[1] in ("0.25", "0.5") for k in own)
    full_before = slimrt.load(fmt.to_bytes(plain)).run(xt[:16], profile="1.0")
    assert np.abs(model.run(xt[:16], profile="1.0") - full_before).max() < 1e-3 * np.abs(full_before).max()
    acc_before = {r["name"]: r["accuracy"] for r in engine_accuracy(slimrt.load(fmt.to_bytes(plain)), xt, yt)}
    acc_after = {r["name"]: r["accuracy"] for r in engine_accuracy(model, xt, yt)}
    assert acc_after["0.25"] > acc_before["0.25"]


class _BnFree(torch.nn.Module):
    """Convs without batch norm (as an exporter leaves them), a squeeze-and-excitation gate on a
    1x1 map and a fixed classifier conv: only the sliced convs over real maps get batch norm."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        nn = torch.nn
        self.a = nn.Conv2d(1, 37, 3, padding=1, bias=bias)
        self.b = nn.Conv2d(37, 51, 3, stride=2, padding=1, bias=bias)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(51, 17, 1), nn.ReLU(), nn.Conv2d(17, 51, 1),
                                nn.Sigmoid())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(51, 10, 1), nn.Flatten())

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(y * self.se(y))


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_batch_norm_is_added_where_an_exporter_folded_it_away(data, bias: bool) -> None:
    x, y, _, _ = data
    torch.manual_seed(3)
    module = _BnFree(bias).eval()
    net = Supernet.from_torch(module, torch.zeros(1, 1, 16, 16), (0.25, 0.5, 1.0))
    assert not net.norms
    xb = torch.from_numpy(x[:8])
    with torch.no_grad():
        before = net.eval()(xb, "1.0")
    added = net.add_batch_norm()
    assert len(added) == 2 and set(net.norms) == {k.replace(".", "__") for k in added}
    assert net.add_batch_norm() == []  # once
    for name in added:
        bn = net.norms[name.replace(".", "__")]
        if bias:  # the identity in eval mode, the bias now beta: recovered from data later
            assert torch.allclose(bn.weight, torch.full_like(bn.weight, (1 + bn.eps) ** 0.5))
            assert bn.bias.abs().max() > 0
        else:  # a fresh batch norm
            assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(xb, "1.0").numpy(), before.numpy(), rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)
    plain = Supernet.from_torch(_BnFree(bias).eval(), torch.zeros(1, 1, 16, 16), (0.25, 0.5, 1.0))
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2)
    fit(net, (x, y), None, cfg, progress=False)
    fit(plain, (x, y), None, cfg, progress=False)
    with_bn, without = ({k: _loss(n, x, y, k) for k in ("0.25", "0.5", "1.0")} for n in (net, plain))
    assert all(with_bn[k] < without[k] for k in with_bn) and with_bn["1.0"] < without["1.0"] - 0.1, \
        (with_bn, without)
    model = slimrt.load(fmt.to_bytes(net.to_slim()))
    with torch.no_grad():
        for key in ("0.25", "0.5", "1.0"):
            np.testing.assert_allclose(model.run(x[:8], profile=key), net.eval()(xb, key).numpy(),
                                       rtol=1e-4, atol=1e-4, err_msg=key)


def test_cli_train_eval_calibrate_end_to_end(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    d = digits()
    npz = tmp_path / "d.npz"
    np.savez(npz, x=d.x_train[:256], y=d.y_train[:256], x_test=d.x_test[:64], y_test=d.y_test[:64])
    onnx_path = tmp_path / "net.onnx"
    onnx = pytest.importorskip("onnx")
    from slimrt.convert.torch_import import torch_to_onnx

    onnx.save(torch_to_onnx(tiny_module(4), torch.zeros(1, 1, 16, 16)), str(onnx_path))
    out = tmp_path / "trained.slim"
    assert main(["train", str(onnx_path), "--data", str(npz), "-o", str(out), "--epochs", "1",
                 "--batch-size", "32", "-q"]) == 0
    model = slimrt.load(out)
    assert model.input_shape[1:] == (1, 16, 16) and [p.name for p in model.profiles] == ["0.25", "0.5", "0.75", "1.0"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(npz), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["profiles"]] == ["0.25", "0.5", "0.75", "1.0"]
    assert all(0 <= r["accuracy"] <= 100 and r["macs"] > 0 for r in report["profiles"])
    recal = tmp_path / "recal.slim"
    assert main(["calibrate", str(out), "--data", str(npz), "-o", str(recal)]) == 0
    assert "before -> after" in capsys.readouterr().out
    assert slimrt.load(recal).profiles[-1].macs == model.profiles[-1].macs
    assert rng is not None


def test_cli_train_refuses_bad_sources(tmp_path: Path, capsys) -> None:
    assert main(["train", "zoo:nope", "--data", "digits", "-o", str(tmp_path / "x.slim")]) == 1
    assert "unknown zoo model 'nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.onnx"), "--data", "digits", "-o", str(tmp_path / "x.slim")]) == 1


DDP_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_train import tiny_module
    from slimrt.train import Supernet, TrainConfig, fit
    from slimrt.train.datasets import digits
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    d = digits()
    net = Supernet.from_torch(tiny_module(dist.get_rank()), torch.zeros(1, 1, 16, 16), (0.25, 1.0))
    start = [p.detach().clone() for p in net.parameters()]
    fit(net, (d.x_train[:256], d.y_train[:256]), None, TrainConfig(epochs=1, batch_size=32), progress=False)
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    moved = float(sum((p.detach() - s).abs().sum() for p, s in zip(net.parameters(), start)))
    torch.save({{"flat": flat, "moved": moved}}, {out!r} + f"/rank{{dist.get_rank()}}.pt")
    dist.destroy_process_group()
""")


def test_data_parallel_ranks_hold_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(script)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert r0["moved"] > 0  # training happened (and rank 1's different seed was overwritten by rank 0's)
    assert torch.equal(r0["flat"], r1["flat"])
