"""The dynamic gate (DS-Net stage II) on a supernet: choices, per-sample gating, caps, training."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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
