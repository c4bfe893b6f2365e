"""The dynamic gate (DS-Net) against the static profiles of the same supernet, through the engine.

For each net: stage I trains a slimmable supernet (sandwich rule, in-place distillation); its
static profiles give the reference curve. Stage II adds a gate at the default point and trains it
at each MACs weight (``slimrt train-gate``); each gated model is run by the engine on the test
set: accuracy, average MACs per image, average measured latency per image (batch 1, one engine
thread), the distribution of choices, and the gate's own cost as a share of the narrowest
profile's latency (the gate op's time in a run at that profile).

Verdicts (issue #12): the gated model is at least as accurate as the static curve interpolated
at its average MACs; at the widest profile's accuracy (within 0.3 points) it uses at most 60% of
the full MACs; its latency ratio to the full profile is within 0.1 of its MACs ratio; the gate
costs under 3% of the narrowest profile's latency. Table on stdout, ``gate.json`` and
``gate.png`` (accuracy against MACs and against latency) in ``bench/results/``.

    python bench/gate.py                             # cluttered-digits, both nets
    python bench/gate.py --nets resnet_small --epochs 3 --gate-epochs 2 --macs-weights 1,4
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,2; got {text!r}")
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0 such as 0.5,2; got {text!r}")
    return values


def mean_latency_ms(session: Any, x: np.ndarray, profile: Any) -> float:
    """Mean wall time of runs of one image each (batch 1) over the images of ``x``, after a warm-up."""
    session.run(x[:1], profile)
    times = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        session.run(x[i:i + 1], profile)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.mean(times))


def gate_share(session: Any, x: np.ndarray, profile: str, gate_name: str, rounds: int = 20) -> float:
    """The gate op's share of a batch-1 run at ``profile`` (median over rounds of per-op times)."""
    shares = []
    for i in range(rounds):
        times = dict(session.profile_ops(x[i % len(x):i % len(x) + 1], profile))
        shares.append(times.get(gate_name, 0.0) / max(sum(times.values()), 1e-12))
    return float(np.median(shares))


def interpolate(macs: float, curve: list[tuple[float, float]]) -> float:
    """The static accuracy at ``macs`` on the piecewise-linear curve (MACs, accuracy), clamped."""
    xs, ys = zip(*sorted(curve))
    return float(np.interp(macs, xs, ys))


def run_net(net_name: str, data: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    import slimrt
    from slimrt import format as fmt
    from slimrt import zoo
    from slimrt.train import Supernet, TrainConfig, fit
    from slimrt.train.evaluation import engine_accuracy
    from slimrt.train.gate import GatedSupernet, train_gate

    c, h, w = data.input_shape
    torch.manual_seed(args.seed)
    module = zoo.create(net_name, num_classes=data.num_classes, in_channels=c)
    net = Supernet.from_torch(module, torch.zeros(1, c, h, w), WIDTHS, name=net_name)
    train = (data.x_train[:args.train_limit], data.y_train[:args.train_limit]) if args.train_limit else \
        (data.x_train, data.y_train)
    test_x, test_y = data.x_test, data.y_test
    fit(net, train, None, TrainConfig(method="sandwich", distill="inplace", epochs=args.epochs, seed=args.seed,
                                      batch_size=args.batch_size, lr=args.lr), progress=False)
    static = slimrt.load(fmt.to_bytes(net.to_slim()))
    session = static.session(1)
    lat_x = np.ascontiguousarray(test_x[:args.latency_images], dtype=np.float32)
    rows = []
    for r in engine_accuracy(static, test_x, test_y):
        rows.append({"net": net_name, "model": "static", "profile": r["name"], "macs_weight": None,
                     "macs": float(r["macs"]), "accuracy": r["accuracy"],
                     "latency_ms": mean_latency_ms(session, lat_x, r["name"])})
    full = rows[-1]
    common.log(f"{net_name}: static " + ", ".join(f"{r['profile']} {r['accuracy']:.1f}%" for r in rows))
    curve = [(r["macs"], r["accuracy"]) for r in rows]
    for weight in args.macs_weights:
        gnet = GatedSupernet(copy.deepcopy(net), shared=args.shared)
        gnet.prepare(train[0])
        train_gate(gnet, train, epochs=args.gate_epochs, macs_weight=weight, batch_size=args.batch_size,
                   seed=args.seed, progress=False)
        gated = slimrt.load(fmt.to_bytes(gnet.to_slim()))
        gate_name = next(op["name"] for op in gated.to_slimfile().meta["ops"] if op["op"] == "gate")
        gsession = gated.session(1)
        row = next(r for r in engine_accuracy(gated, test_x, test_y) if r["name"] == "gate")
        macs_ratio = row["macs"] / full["macs"]
        latency = mean_latency_ms(gsession, lat_x, "gate")
        latency_ratio = latency / full["latency_ms"]
        share = gate_share(gsession, lat_x, gated.profiles[0].name, gate_name)
        interpolated = interpolate(row["macs"], curve)
        rows.append({"net": net_name, "model": "gated", "profile": "gate", "macs_weight": weight,
                     "macs": row["macs"], "macs_ratio": macs_ratio, "accuracy": row["accuracy"],
                     "static_at_macs": interpolated, "latency_ms": latency, "latency_ratio": latency_ratio,
                     "gate_share": share, "choices": row["choices"],
                     "choice_macs": {p.name: p.macs for p in gated.profiles},  # before the gate: the shared width
                     "dominates": row["accuracy"] >= interpolated,
                     "latency_follows_macs": latency_ratio <= macs_ratio + 0.1, "gate_cheap": share < 0.03})
        common.log(f"{net_name}: macs weight {weight:g}: {row['accuracy']:.1f}% at {macs_ratio:.2f} of the full MACs, "
                   f"latency ratio {latency_ratio:.2f}, gate {100 * share:.1f}% of the narrowest; choices "
                   + ", ".join(f"{k} {v}" for k, v in row["choices"].items()))
    top = [r for r in rows if r["model"] == "gated" and r["accuracy"] >= full["accuracy"] - 0.3]
    best = min(top, key=lambda r: r["macs"]) if top else None
    for r in rows:
        if r["model"] == "gated":
            r["cheapest_at_full_accuracy"] = r is best
            r["within_60_percent"] = None if best is None else best["macs_ratio"] <= 0.6
    for r in rows:
        r["mmacs"] = r["macs"] / 1e6
    return rows


def run(args: argparse.Namespace) -> common.Result:
    import torch

    from slimrt.train.datasets import load_dataset

    torch.set_num_threads(args.threads)
    result = common.Result("gate", common.machine_info(1), vars(args).copy())
    data = load_dataset(args.data, seed=args.seed)
    for net_name in args.nets:
        result.rows.extend(run_net(net_name, data, args))
    return result


COLUMNS = [common.Column("net", "net"), common.Column("model", "model"), common.Column("profile", "profile"),
           common.Column("macs_weight", "MACs weight", "{:g}"), common.Column("mmacs", "MMACs", "{:.3f}"),
           common.Column("accuracy", "accuracy %", "{:.2f}"), common.Column("static_at_macs", "static there %", "{:.2f}"),
           common.Column("latency_ms", "latency ms", "{:.3f}"), common.Column("latency_ratio", "lat/full", "{:.2f}"),
           common.Column("macs_ratio", "MACs/full", "{:.2f}"), common.Column("gate_share", "gate share", "{:.3f}"),
           common.Column("dominates", "dominates"), common.Column("latency_follows_macs", "lat~MACs"),
           common.Column("gate_cheap", "gate <3%")]


def table(result: common.Result) -> str:
    text = common.format_table(result.rows, COLUMNS, f"dynamic gate on {result.config['data']} (engine, batch 1, "
                                                     "1 thread)")
    lines = [text]
    for r in result.rows:
        if r["model"] == "gated":
            lines.append(f"{r['net']}, MACs weight {r['macs_weight']:g}: choices "
                         + ", ".join(f"{k} {v}" for k, v in r["choices"].items()))
    for net in dict.fromkeys(r["net"] for r in result.rows):
        within = [r["within_60_percent"] for r in result.rows if r["net"] == net and r["model"] == "gated"]
        lines.append(f"{net}: at the widest profile's accuracy (-0.3) within 60% of the full MACs: "
                     f"{common.verdict(within[0] if within else None)}")
    return "\n".join(lines) + "\n\n" + common.machine_line(result.machine)


def plot(result: common.Result, path: Path) -> Path:
    nets = list(dict.fromkeys(r["net"] for r in result.rows))
    fig, axes = common.figure(ncols=2, nrows=len(nets), size=(5.0, 4.0))
    for row_axes, net in zip(axes, nets):
        rows = [r for r in result.rows if r["net"] == net]
        for ax, key, label in ((row_axes[0], "macs", "MMACs per image"), (row_axes[1], "latency_ms",
                                                                            "latency per image (ms), batch 1")):
            scale = 1e-6 if key == "macs" else 1.0
            static = sorted((r for r in rows if r["model"] == "static"), key=lambda r: r["macs"])
            ax.plot([r[key] * scale for r in static], [r["accuracy"] for r in static], marker="o", label="static")
            gated = [r for r in rows if r["model"] == "gated"]
            ax.plot([r[key] * scale for r in gated], [r["accuracy"] for r in gated], marker="*", linestyle="none",
                    markersize=10, label="gated (MACs weights)")
            ax.set_title(f"{net}")
            ax.set_xlabel(label)
    common.style_accuracy_axes(axes)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cluttered-digits")
    parser.add_argument("--nets", type=common.name_list, default=["resnet_small", "mobilenet_v2_small"])
    parser.add_argument("--epochs", type=int, default=15, help="stage I (slimmable training) epochs")
    parser.add_argument("--gate-epochs", type=int, default=5, help="stage II (gate training) epochs")
    parser.add_argument("--macs-weights", type=float_list, default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--shared", default=None,
                        help="the profile the layers before the gate run at (default: the largest)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all)")
    parser.add_argument("--latency-images", type=int, default=200, help="test images timed one by one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    return common.publish(table(result), common.write_result("gate", result, plot, args.out))


if __name__ == "__main__":
    sys.exit(main())
