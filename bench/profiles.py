"""Uniform, pruned (SP-Net, PruneNet), searched and transferred profiles of one supernet.

Per seed: a slimmable supernet is trained on the target data with uniform profiles. From it,
each method finds per-group widths at the MACs of the uniform profiles (equal MACs, within 3%),
the profiles go through the same slimmable fine-tuning (named profiles, per-profile BN), and
every profile's test accuracy is measured through the engine, with its engine latency (batch 1,
one thread, interleaved medians). ``transfer`` prunes a supernet trained on the *source* data
(digits) and applies its profiles, as per-group ratios, to the target supernet.

    python bench/profiles.py                                   # cluttered-digits, resnet_small, 3 seeds
    python bench/profiles.py --seeds 1 --epochs 4 --finetune-epochs 2   # a first look
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

METHODS = ("uniform", "spnet", "prunenet", "search", "transfer")
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _supernet(net_name: str, data: Any, seed: int, epochs: int, bn_l1: float = 0.0) -> Any:
    import torch

    from slimrt import zoo
    from slimrt.train import Supernet, TrainConfig, fit

    c, h, w = data.input_shape
    torch.manual_seed(seed)
    net = Supernet.from_torch(zoo.create(net_name, num_classes=data.num_classes, in_channels=c),
                              torch.zeros(1, c, h, w), WIDTHS)
    fit(net, (data.x_train, data.y_train), None, TrainConfig(epochs=epochs, seed=seed, bn_l1=bn_l1), progress=False)
    return net


def _finetune(net: Any, data: Any, epochs: int, seed: int) -> None:
    from slimrt.train import TrainConfig, fit
    from slimrt.train.slimmable import calibrate_supernet

    if epochs > 0:
        fit(net, (data.x_train, data.y_train), None,
            TrainConfig(sampling="profiles", epochs=epochs, seed=seed, lr=1e-3), progress=False)
    else:
        calibrate_supernet(net, data.x_train, seed=seed)


def _measure(net: Any, data: Any, rounds: int) -> list[dict[str, Any]]:
    import slimrt
    from slimrt import format as fmt
    from slimrt.train.evaluation import engine_accuracy

    model = slimrt.load(fmt.to_bytes(net.to_slim()))
    acc = {r["name"]: r for r in engine_accuracy(model, data.x_test, data.y_test)}
    session = model.session(1)
    x = np.ascontiguousarray(data.x_test[:1])
    tasks = {p.name: (lambda i=p.index: session.run(x, i)) for p in model.profiles}
    stats = {k: common.Stats.of(v) for k, v in common.interleaved(tasks, rounds).items()}
    full = model.profiles[-1].macs
    return [{"profile": name, "macs": acc[name]["macs"], "macs_ratio": acc[name]["macs"] / full,
             "accuracy": acc[name]["accuracy"], "latency_ms": stats[name].median_ms} for name in acc]


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    from slimrt.train.datasets import load_dataset
    from slimrt.train.profiles import apply_ratios, export_profiles
    from slimrt.train.pruning import prune_profiles
    from slimrt.train.search import Constraint, evolutionary_search
    from slimrt.train.slimmable import batches
    from slimrt.train.supernet import Supernet

    data = load_dataset(args.data, seed=seed)
    base = _supernet(args.net, data, seed, args.epochs)
    uniform_names = [p["name"] for p in base.profiles if p["name"] != "1.0"]
    full = base.macs(base.full_widths)
    targets = [base.macs(n) / full for n in uniform_names]
    probe = list(batches(data.x_train[:1024], data.y_train[:1024], 64))
    rows: list[dict[str, Any]] = []

    def finish(method: str, net: Any) -> None:
        _finetune(net, data, args.finetune_epochs, seed)
        for r in _measure(net, data, args.rounds):
            rows.append({"method": method, "seed": seed, **r})
        common.log(f"seed {seed} {method}: " + ", ".join(f"{r['profile']} {r['accuracy']:.1f}%"
                                                         for r in rows if r["method"] == method and r["seed"] == seed))

    for method in args.methods:
        t0 = time.perf_counter()
        net = copy.deepcopy(base)
        if method == "spnet":
            sparse = _supernet(args.net, data, seed, args.epochs, bn_l1=args.bn_l1)
            net = sparse
            prune_profiles(net, targets, "bn", prefix="spnet-", names=uniform_names)
        elif method == "prunenet":
            prune_profiles(net, targets, "taylor", probe, prefix="prunenet-", names=uniform_names)
        elif method == "search":
            fit_part, val_part = data.split(0.2, seed=seed)
            val = (val_part.x_test, val_part.y_test)
            calib = [xb for xb, _ in batches(fit_part.x_train[:512], None, 256)]
            found = []
            for name, t in zip(uniform_names, targets):
                constraint = Constraint("macs", t * full, lambda w: float(net.macs(w)), minimum=0.97 * t * full)
                best = evolutionary_search(net, constraint, val, calib, population=args.population,
                                           generations=args.generations, seed=seed)[0]
                found.append((f"search-{name}", best.widths))
            net.set_profiles(found + [("1.0", net.full_widths)])
        elif method == "transfer":
            source = load_dataset(args.source_data, seed=seed)
            donor = _supernet(args.net, source, seed, args.epochs)
            prune_profiles(donor, targets, "taylor", list(batches(source.x_train[:1024], source.y_train[:1024], 64)),
                           prefix="transfer-", names=uniform_names)
            ratios = export_profiles(donor.to_slim())
            net = Supernet.from_slim(apply_ratios(net.to_slim(), ratios, replace=True, multiple=1))
        finish(method, net)
        common.log(f"  ({time.perf_counter() - t0:.0f} s)")
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        for rank in range(len({r["profile"] for r in mine}) if mine else 0):
            per_seed = [sorted((r for r in mine if r["seed"] == s), key=lambda r: r["macs"])[rank]
                        for s in sorted({r["seed"] for r in mine})]
            out.append({"method": method, "profile": per_seed[0]["profile"],
                        "macs_ratio": float(np.mean([r["macs_ratio"] for r in per_seed])),
                        "accuracy": float(np.mean([r["accuracy"] for r in per_seed])),
                        "accuracy_std": float(np.std([r["accuracy"] for r in per_seed])),
                        "latency_ms": float(np.mean([r["latency_ms"] for r in per_seed])),
                        "seeds": len(per_seed)})
    return out


def table(result: common.Result) -> str:
    cols = [common.Column("method", "method", "{}"), common.Column("profile", "profile", "{}"),
            common.Column("macs_ratio", "MACs/full", "{:.3f}"), common.Column("accuracy", "accuracy %", "{:.2f}"),
            common.Column("accuracy_std", "std", "{:.2f}"), common.Column("latency_ms", "engine ms", "{:.4f}")]
    title = f"{result.config['data']}, {result.config['net']}: mean of {result.config['seeds']} seed(s)"
    return common.format_table(result.rows, cols, title) + "\n" + common.machine_line(result.machine)


def plot(result: common.Result, path: Path) -> Path:
    fig, axes = common.figure(ncols=2, size=(5.0, 4.0))
    for method in dict.fromkeys(r["method"] for r in result.rows):
        mine = sorted((r for r in result.rows if r["method"] == method), key=lambda r: r["macs_ratio"])
        for ax, key, label in ((axes[0, 0], "macs_ratio", "MACs / full"), (axes[0, 1], "latency_ms", "engine ms")):
            ax.plot([r[key] for r in mine], [r["accuracy"] for r in mine], marker="o", label=method)
            ax.set_xlabel(label)
    common.style_accuracy_axes(axes)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="cluttered-digits")
    parser.add_argument("--source-data", default="digits", help="where the transferred profiles are found")
    parser.add_argument("--net", default="resnet_small")
    parser.add_argument("--methods", type=common.name_list, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--bn-l1", type=float, default=1e-4)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=50, help="timed engine runs per profile")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    import torch

    torch.set_num_threads(args.threads)
    result = common.Result("profiles", common.machine_info(1), vars(args).copy())
    raw = [row for seed in range(args.seeds) for row in run_seed(args, seed)]
    result.rows = summarise(raw)
    result.extra["per_seed"] = raw
    args.out.mkdir(parents=True, exist_ok=True)
    return common.publish(table(result), common.write_result("profiles", result, plot, args.out))


if __name__ == "__main__":
    sys.exit(main())
