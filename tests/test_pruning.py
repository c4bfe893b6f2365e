"""Profiles found by pruning, and profiles as transferable data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import slimrt
from slimrt import format as fmt
from slimrt import zoo
from slimrt.cli import main
from slimrt.errors import ProfileError
from slimrt.models import tiny_resnet
from slimrt.train import Supernet
from slimrt.train.profiles import apply_ratios, export_profiles, import_profiles, read_profiles, write_profiles
from slimrt.train.pruning import channel_scores, min_width, prune_profiles, sort_by_importance, threshold_widths


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def small_resnet(seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet.from_torch(zoo.resnet_small(10, in_channels=1), torch.zeros(1, 1, 16, 16), (0.25, 0.5, 1.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct, trained-looking batch norm
        for bn in net.bn_layers():
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 1.5 + 0.05)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
    return net.eval()


def test_reordering_groups_keeps_the_full_function() -> None:
    net = small_resnet(1)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net(x, 1.0)
    rng = np.random.default_rng(0)
    perms = {g: rng.permutation(net.groups[g].size) for g in net.sortable_groups()}
    assert perms
    net.permute_groups(perms)
    with torch.no_grad():
        assert rel_err(net(x, 1.0).numpy(), before.numpy()) < 1e-5
    engine = slimrt.load(fmt.to_bytes(net.to_slim()))
    assert rel_err(engine.run(x.numpy(), profile="1.0"), before.numpy()) < 1e-4


def test_sorting_puts_the_important_channels_first() -> None:
    net = small_resnet(2)
    scores = channel_scores(net, "bn")
    g = net.sortable_groups()[0]
    best = set(np.argsort(-scores[g])[:8].tolist())
    producer = next(op for op in net.ops if op.kind == "conv" and op.out_group == g)
    gamma = net.norms[producer.name.replace(".", "__")].weight.detach().clone()
    sort_by_importance(net, scores)
    after = net.norms[producer.name.replace(".", "__")].weight.detach()
    assert {int(torch.argmin((gamma - v).abs())) for v in after[:8]} == best
    assert np.all(np.diff(scores[g]) <= 0)  # the scores follow the new order


def test_groups_added_to_another_group_are_not_reordered() -> None:
    net = Supernet.from_slim(tiny_resnet(0, input_hw=(16, 16)))
    sortable = set(net.sortable_groups())
    fixed = {i for i, g in enumerate(net.groups) if g.fixed}
    assert not sortable & fixed
    assert len(sortable) < len(net.groups) - len(fixed)  # tiny_resnet adds different groups
    with pytest.raises(ValueError, match="cannot be reordered"):
        blocked = next(i for i in range(len(net.groups)) if i not in sortable and i not in fixed)
        net.permute_groups({blocked: np.arange(net.groups[blocked].size)})


@pytest.mark.parametrize("method", ["bn", "l1"])
def test_global_threshold_hits_each_macs_target(method: str) -> None:
    net = small_resnet(3)
    scores = channel_scores(net, method)
    sort_by_importance(net, scores)
    full = net.macs(net.full_widths)
    for target in (0.25, 0.5, 0.75):
        widths, _ = threshold_widths(net, scores, target)
        ratio = net.macs(widths) / full
        assert target - 0.03 <= ratio <= target, (target, ratio)
        for g, w in zip(net.groups, widths):
            assert (w == g.size) if g.fixed else (min_width(g.size) <= w <= g.size)


def test_prune_profiles_are_valid_nested_and_ordered() -> None:
    net = small_resnet(4)
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    results = prune_profiles(net, (0.3, 0.6), "taylor", [(x[:32], y[:32]), (x[32:], y[32:])])
    assert [p["name"] for p in net.profiles] == ["0.3", "0.6", "1.0"]
    macs = [p["macs"] for p in net.profiles]
    assert macs == sorted(macs)
    small, large = results[0].widths, results[1].widths
    assert all(a <= b for a, b in zip(small, large))  # multi-base: each from the larger result
    for r in results:
        assert r.target - 0.03 <= r.macs_ratio <= r.target
    net.recalibrate([x])
    model = slimrt.load(fmt.to_bytes(net.to_slim()))
    assert [p.name for p in model.profiles] == ["0.3", "0.6", "1.0"]
    with torch.no_grad():
        assert rel_err(model.run(x[:4].numpy(), profile="0.3"), net.eval()(x[:4], "0.3").numpy()) < 1e-4


def test_taylor_needs_data() -> None:
    with pytest.raises(ValueError, match="needs data"):
        channel_scores(small_resnet(5), "taylor")
    with pytest.raises(ValueError, match="unknown importance criterion 'l7'"):
        channel_scores(small_resnet(5), "l7")


def test_profiles_round_trip_and_transfer(tmp_path: Path) -> None:
    net = small_resnet(6)
    prune_profiles(net, (0.4,), "bn")
    source = net.to_slim()
    path = tmp_path / "p.json"
    write_profiles(export_profiles(source), path)
    data = read_profiles(path)
    assert [p["name"] for p in data["profiles"]] == ["0.4", "1.0"]
    other = Supernet.from_torch(zoo.resnet_small(10, in_channels=1), torch.zeros(1, 1, 16, 16), (0.5, 1.0)).to_slim()
    moved = import_profiles(other, path)
    names = [p["name"] for p in moved.meta["profiles"]]
    assert set(names) == {"0.4", "0.5", "1.0"}
    got = next(p for p in moved.meta["profiles"] if p["name"] == "0.4")["widths"]
    want = next(p for p in source.meta["profiles"] if p["name"] == "0.4")["widths"]
    for g, a, b in zip(fmt.parse_groups(moved.meta), got, want):
        assert a == (g.size if g.fixed else fmt.uniform_width(g.size, b / g.size))
    assert slimrt.load(fmt.to_bytes(moved)).macs("0.4") > 0
    assert [p["name"] for p in import_profiles(other, path, replace=True).meta["profiles"]] == ["0.4", "1.0"]


def test_import_refuses_another_architecture(tmp_path: Path) -> None:
    data = export_profiles(small_resnet(7).to_slim())
    other = Supernet.from_torch(zoo.mobilenet_v2_small(10, in_channels=1), torch.zeros(1, 1, 16, 16), (1.0,)).to_slim()
    with pytest.raises(ProfileError, match="does not fit model .*no ratio for .*unknown groups"):
        apply_ratios(other, data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "slimrt-profiles", "profiles": [{"name": "x", "ratios": {"a": 1.5}}]}))
    with pytest.raises(ProfileError, match="ratio 1.5"):
        read_profiles(bad)
    bad.write_text("{")
    with pytest.raises(ProfileError, match="invalid JSON"):
        read_profiles(bad)


def test_cli_prune_and_profiles(tmp_path: Path, capsys) -> None:
    from slimrt.train.datasets import digits

    d = digits()
    npz = tmp_path / "d.npz"
    np.savez(npz, x=d.x_train[:192], y=d.y_train[:192], x_test=d.x_test[:64], y_test=d.y_test[:64])
    model = tmp_path / "m.slim"
    fmt.write(small_resnet(8).to_slim(), model)
    out = tmp_path / "pruned.slim"
    assert main(["prune", str(model), "--data", str(npz), "--method", "taylor", "--targets", "0.3,0.6",
                 "--finetune-epochs", "1", "-o", str(out), "-q"]) == 0
    pruned = slimrt.load(out)
    assert [p.name for p in pruned.profiles] == ["0.3", "0.6", "1.0"]
    full = pruned.profiles[-1].macs
    assert abs(pruned.profiles[0].macs / full - 0.3) <= 0.03
    assert main(["profiles", "export", str(out), "-o", str(tmp_path / "p.json")]) == 0
    assert main(["profiles", "import", str(model), str(tmp_path / "p.json"), "-o", str(tmp_path / "t.slim"),
                 "--data", str(npz)]) == 0
    assert {p.name for p in slimrt.load(tmp_path / "t.slim").profiles} == {"0.25", "0.3", "0.5", "0.6", "1.0"}
    capsys.readouterr()
