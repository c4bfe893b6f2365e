"""The dynamic gate (DS-Net stage II) on a supernet: choices, per-sample gating, caps, training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import slimrt
from slimrt import format as fmt
from slimrt import zoo
from slimrt.train import Supernet
from slimrt.train.gate import GatedSupernet, default_gate_point, evaluate_gate, gumbel_temperature, train_gate


@pytest.fixture()
def gated() -> GatedSupernet:
    torch.manual_seed(0)
    net = Supernet.from_torch(zoo.resnet_small(10, in_channels=1, widths=(16, 24, 32)), torch.zeros(1, 1, 12, 12),
                              (0.25, 0.5, 1.0)).eval()
    g = GatedSupernet(net, shared="0.25")
    g.prepare(np.random.default_rng(0).standard_normal((64, 1, 12, 12)).astype(np.float32))
    return g.eval()


def x_batch(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, 12, 12)).astype(np.float32))


def test_gate_point_and_choices(gated: GatedSupernet) -> None:
    net = gated.net
    assert gated.gate_at == default_gate_point(net)
    assert net._shapes[gated.gate_at][2] < 12  # after a downsampling
    assert gated.choice_names == ["0.25", "0.5", "1.0"]
    macs = gated.choice_macs.tolist()
    assert macs == sorted(macs)
    for w in gated.choice_widths:  # groups before the gate run at the shared width
        for g in gated.shared_groups:
            assert w[g] == gated.choice_widths[0][g]
    with pytest.raises(ValueError, match="no op outputs tensor 'nowhere'"):
        GatedSupernet(net, gate_at="nowhere")


def test_attention_starts_as_identity(gated: GatedSupernet) -> None:
    x = x_batch()
    with torch.no_grad():
        for k, widths in enumerate(gated.choice_widths):
            np.testing.assert_allclose(gated.static(x, k).numpy(), gated.net(x, widths).numpy(), rtol=1e-5, atol=1e-6)


def test_per_sample_choices_keep_the_batch_order(gated: GatedSupernet) -> None:
    x = x_batch(9, seed=2)
    with torch.no_grad():  # the gate picks the widest choice when its reduced feature 0 is above the median
        values, _ = gated.head(x)  # the attention head is the identity still
        h0 = torch.relu(gated.gate.reduce(values[gated.gate_at].mean(dim=(2, 3))))[:, 0]
        gated.gate.slim.weight.zero_()
        gated.gate.slim.weight[2, 0] = 50.0
        gated.gate.slim.bias.copy_(torch.tensor([0.0, -1e3, -50.0 * float(h0.median())]))
        out, choice = gated(x)
        assert len(set(choice.tolist())) > 1
        for i, k in enumerate(choice.tolist()):
            np.testing.assert_allclose(out[i].numpy(), gated.static(x[i:i + 1], k)[0].numpy(), rtol=1e-4, atol=1e-5)
        capped_out, capped = gated(x, max_choice=0)
        assert capped.max() == 0
        np.testing.assert_allclose(capped_out.numpy(), gated.static(x, 0).numpy(), rtol=1e-4, atol=1e-5)


def test_training_steers_the_choices_and_reports(gated: GatedSupernet) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 128).astype(np.int64)
    cheap = train_gate(gated, (x, y), epochs=2, macs_weight=20.0, supernet_lr=0.0, progress=False)
    assert len(cheap) == 2
    report = evaluate_gate(gated, x, y)
    assert sum(report.counts.values()) == len(x)
    assert float(gated.choice_macs[0]) <= report.macs <= float(gated.choice_macs[-1])
    assert report.counts["0.25"] >= report.counts["1.0"]  # a heavy MACs penalty prefers the narrow choice
    assert gumbel_temperature(0, 5) == pytest.approx(5.0) and gumbel_temperature(4, 5) == pytest.approx(0.5)


def randomise_gate(gated: GatedSupernet, seed: int = 0, slim_scale: float = 3.0) -> None:
    """Gate weights of a trained-looking gate: the attention is not the identity, the logits vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, scale in ((gated.gate.reduce, 1.0), (gated.gate.expand, 0.5), (gated.gate.slim, slim_scale)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * scale)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)


def spread_choices(gated: GatedSupernet, x: torch.Tensor) -> None:
    """A slimming head that sends a third of the images ``x`` to each of the 3 choices, by the hidden
    feature that varies most over them (thresholds between images, so no choice is a near tie)."""
    with torch.no_grad():
        values = {gated.net.input_name: x}  # the gate's input, as head() computes it
        gated.net.run_ops(values, gated.choice_widths[0], 0, gated.split)
        h = torch.relu(gated.gate.reduce(values[gated.gate_at].mean(dim=(2, 3))))
        j = int(h.std(0).argmax())
        v = h[:, j].sort().values
        n = len(v)
        t1, t2 = float(v[n // 3 - 1] + v[n // 3]) / 2, float(v[2 * n // 3 - 1] + v[2 * n // 3]) / 2
        scale = 10.0 / float(v[-1] - v[0])
        gated.gate.slim.weight.zero_()
        gated.gate.slim.weight[:, j] = torch.tensor([0.0, scale, 2 * scale])
        gated.gate.slim.bias.copy_(torch.tensor([0.0, -scale * t1, -scale * (t1 + t2)]))


def test_the_exported_gated_model_computes_what_the_gated_supernet_computes(gated: GatedSupernet, tmp_path) -> None:
    randomise_gate(gated)
    spread_choices(gated, x_batch(16, seed=4))
    slim = gated.to_slim("gated")
    gate_op = next(op for op in slim.meta["ops"] if op["op"] == "gate")
    assert gate_op["inputs"] == [gated.gate_at] and gate_op["choices"] == 3
    assert [p["name"] for p in slim.meta["profiles"]] == gated.choice_names
    path = tmp_path / "gated.slim"
    fmt.write(slim, path)
    model = slimrt.load(path)
    assert model.has_gate
    session = model.session()
    x = x_batch(16, seed=4)
    with torch.no_grad():
        want, choice = gated(x)
    got = session.run(x.numpy(), profile="gate")
    assert session.last_choice.tolist() == choice.tolist()
    assert sorted(np.bincount(choice.numpy(), minlength=3).tolist()) == [5, 5, 6]  # a third to each choice
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        _, logits = gated.head(x)
    np.testing.assert_allclose(session.last_logits, logits.numpy(), rtol=1e-4, atol=1e-4)
    for k in range(3):  # forced choices: the slimming head picks k for every image
        with torch.no_grad():
            gated.gate.slim.weight.zero_()
            gated.gate.slim.bias.copy_(torch.tensor([100.0 if j == k else 0.0 for j in range(3)]))
            want = gated.static(x, k)
        forced = slimrt.load(fmt.to_bytes(gated.to_slim())).session()
        np.testing.assert_allclose(forced.run(x.numpy(), "gate"), want.numpy(), rtol=1e-4, atol=1e-4)
        assert forced.last_choice.tolist() == [k] * 16
        np.testing.assert_allclose(forced.run(x.numpy(), k), want.numpy(), rtol=1e-4, atol=1e-4)


def test_eval_of_a_gated_model_adds_the_gate_row(gated: GatedSupernet, tmp_path) -> None:
    from slimrt.train.evaluation import engine_accuracy

    randomise_gate(gated, seed=1)
    spread_choices(gated, torch.from_numpy(np.random.default_rng(7).standard_normal((40, 1, 12, 12)).astype(np.float32)))
    model = slimrt.load(fmt.to_bytes(gated.to_slim()))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    rows = engine_accuracy(model, x, y, batch_size=16)
    assert [r["name"] for r in rows] == gated.choice_names + ["gate"]
    gate = rows[-1]
    with torch.no_grad():
        out, choice = gated(torch.from_numpy(x))
    counts = np.bincount(choice.numpy(), minlength=3)
    assert gate["choices"] == {n: int(c) for n, c in zip(gated.choice_names, counts)}
    assert gate["macs"] == pytest.approx(float(counts @ np.array([p.macs for p in model.profiles])) / 40)
    assert gate["accuracy"] == pytest.approx(100.0 * float((out.argmax(1).numpy() == y).mean()))
    assert rows[0]["macs"] <= gate["macs"] <= rows[2]["macs"]


def test_cli_train_gate_then_eval(tmp_path, capsys) -> None:
    import json

    from slimrt.cli import main

    torch.manual_seed(0)
    net = Supernet.from_torch(zoo.resnet_small(10, in_channels=1, widths=(16, 24, 32)), torch.zeros(1, 1, 12, 12),
                              (0.25, 0.5, 1.0))
    source = tmp_path / "slimmable.slim"
    fmt.write(net.to_slim(), source)
    rng = np.random.default_rng(8)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=rng.standard_normal((96, 1, 12, 12)).astype(np.float32), y=rng.integers(0, 10, 96),
             x_test=rng.standard_normal((24, 1, 12, 12)).astype(np.float32), y_test=rng.integers(0, 10, 24))
    out = tmp_path / "gated.slim"
    args = ["train-gate", str(source), "--data", str(npz), "-o", str(out), "--epochs", "1", "--batch-size", "32",
            "--macs-weight", "2", "--threads", "1", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "  gate " in printed and "choices 0.25" in printed
    model = slimrt.load(out)
    assert model.has_gate and [p.name for p in model.profiles] == ["0.25", "0.5", "1.0"]
    assert main(["eval", str(out), "--data", str(npz), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["profiles"]
    gate = rows[-1]
    assert [r["name"] for r in rows] == ["0.25", "0.5", "1.0", "gate"]
    assert sum(gate["choices"].values()) == 24 and rows[0]["macs"] <= gate["macs"] <= rows[2]["macs"]
    # a gated model, an unknown gate point: refused with what to do
    assert main(["train-gate", str(out), "--data", str(npz), "-o", str(tmp_path / "again.slim")]) == 1
    assert "has a gate already" in capsys.readouterr().err
    assert main(args[:6] + ["--gate-at", "nowhere", "-q"]) == 1
    assert "no op outputs tensor 'nowhere'" in capsys.readouterr().err
