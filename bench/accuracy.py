"""Accuracy of every width after each training recipe, measured through the engine.

Rows (same nets, epochs, seeds and data for all):

* ``plain``       trained at full width only, then converted (what ``from_torch`` gives today);
* ``plain+calib`` the same model after per-profile BN calibration (``slimrt calibrate``);
* ``sandwich``    slimmable training, sandwich rule + in-place distillation;
* ``ema``         sandwich rule with the EMA teacher (DS-Net's in-place ensemble bootstrapping);
* ``parallel``    PSE-Net parallel sub-networks (one pass per step, batch slices per width);
* ``individual``  every width trained on its own (the reference each width is judged against).

Accuracy is the mean over seeds of each profile's test accuracy run by the C++ engine; training
wall time per epoch is the median epoch. Table on stdout, ``accuracy.json`` and ``accuracy.png``
(accuracy against MACs) in ``bench/results/``.

    python bench/accuracy.py                        # cluttered-digits and digits, both nets, 3 seeds
    python bench/accuracy.py --data cluttered-digits --nets resnet_small --seeds 1 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

RECIPES = ("plain", "plain+calib", "sandwich", "ema", "parallel", "individual")
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def train_unit(data_name: str, net_name: str, seed: int, recipes: Sequence[str], epochs: int,
               batch_size: int, lr: float, threads: int) -> dict[str, Any]:
    """Every recipe for one data set, net and seed: ``{recipe: (accuracy per profile through the
    engine, MACs per profile, training seconds per epoch)}``.

    ``plain`` and ``plain+calib`` share one training, and ``individual`` reuses it as its full
    width (the same config and seed train the same net).
    """
    import torch

    import slimrt
    from slimrt import format as fmt
    from slimrt import zoo
    from slimrt.train import Supernet, TrainConfig, fit
    from slimrt.train.calibration import calibrate_slim
    from slimrt.train.datasets import load_dataset
    from slimrt.train.evaluation import engine_accuracy

    torch.set_num_threads(threads)
    data = load_dataset(data_name, seed=seed)
    c, h, w = data.input_shape
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    base = dict(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
    configs = {"plain": TrainConfig(method="fixed", **base),
               "sandwich": TrainConfig(method="sandwich", distill="inplace", **base),
               "ema": TrainConfig(method="sandwich", distill="ema", **base),
               "parallel": TrainConfig(method="parallel", distill="inplace", **base)}
    trained: dict[str, tuple[Any, float]] = {}

    def fit_config(key: str, cfg: Any) -> tuple[Any, float]:
        if key not in trained:
            torch.manual_seed(seed)
            module = zoo.create(net_name, num_classes=data.num_classes, in_channels=c)
            net = Supernet.from_torch(module, torch.zeros(1, c, h, w), WIDTHS, name=net_name)
            t0 = time.perf_counter()
            hist = fit(net, train, None, cfg, progress=False)
            common.log(f"  {data_name} {net_name} seed {seed}: trained {key} in {time.perf_counter() - t0:.0f} s")
            trained[key] = (net.to_slim(), hist.seconds_per_epoch)
        return trained[key]

    def measure(slim: Any, profiles: Sequence[str] | None = None) -> tuple[dict[str, float], dict[str, int]]:
        model = slimrt.load(fmt.to_bytes(slim))
        rows = engine_accuracy(model, *test, profiles=profiles)
        return {r["name"]: r["accuracy"] for r in rows}, {p.name: p.macs for p in model.profiles}

    out: dict[str, Any] = {}
    for recipe in recipes:
        if recipe in ("plain", "plain+calib"):
            slim, sec = fit_config("plain", configs["plain"])
            # one set of statistics, as a converter writes it
            slim = fmt.SlimFile(slim.meta, {k: v for k, v in slim.tensors.items() if "@" not in k})
            for p in slim.meta["profiles"]:
                p["macs"], p["params"] = fmt.profile_cost(slim.meta, p["widths"], profile=p["name"],
                                                          tensor_names=slim.tensors)
            if recipe == "plain+calib":
                slim = calibrate_slim(slim, data, seed=seed)
            acc, macs = measure(slim)
        elif recipe == "individual":
            acc, seconds = {}, 0.0
            for key in (str(m) for m in WIDTHS):
                cfg = configs["plain"] if key == str(WIDTHS[-1]) else \
                    TrainConfig(method="fixed", profile=key, **base)
                slim, sec = fit_config("plain" if key == str(WIDTHS[-1]) else f"fixed {key}", cfg)
                one, macs = measure(slim, [key])
                acc[key] = one[key]
                seconds += sec
            sec = seconds
        else:
            slim, sec = fit_config(recipe, configs[recipe])
            acc, macs = measure(slim)
        out[recipe] = (acc, macs, sec)
    return out


def epoch_times(net_name: str, data: Any, rounds: int, batch_size: int, lr: float) -> dict[str, float]:
    """Median seconds per epoch of sandwich and parallel training, epochs alternating (side by side)."""
    import torch

    from slimrt import zoo
    from slimrt.train import Supernet, TrainConfig
    from slimrt.train.slimmable import train_one_epoch

    c, h, w = data.input_shape
    runs = {}
    for method in ("sandwich", "parallel"):
        torch.manual_seed(0)
        net = Supernet.from_torch(zoo.create(net_name, num_classes=data.num_classes, in_channels=c),
                                  torch.zeros(1, c, h, w), WIDTHS)
        cfg = TrainConfig(method=method, batch_size=batch_size, lr=lr)
        runs[method] = (net, cfg, torch.optim.AdamW(net.parameters(), lr=lr), torch.Generator().manual_seed(0))
    samples: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(rounds):
        for method, (net, cfg, opt, gen) in runs.items():
            t0 = time.perf_counter()
            train_one_epoch(net, net, (data.x_train, data.y_train), opt, None, cfg, gen)
            samples[method].append(time.perf_counter() - t0)
    return {m: float(np.median(v)) for m, v in samples.items()}


def run(args: argparse.Namespace) -> common.Result:
    import torch

    from slimrt.train.datasets import load_dataset

    torch.set_num_threads(args.threads)
    result = common.Result("accuracy", common.machine_info(args.threads), vars(args).copy())
    timing = result.extra.setdefault("epoch_seconds", [])
    for data_name in args.data:
        for net_name in args.nets:
            if args.timing_rounds > 0:
                times = epoch_times(net_name, load_dataset(data_name), args.timing_rounds, args.batch_size, args.lr)
                timing.append({"data": data_name, "net": net_name, **times,
                               "parallel_over_sandwich": times["parallel"] / times["sandwich"]})
                common.log(f"{data_name} {net_name}: s/epoch sandwich {times['sandwich']:.2f}, parallel "
                           f"{times['parallel']:.2f} (ratio {times['parallel'] / times['sandwich']:.2f}, side by side)")
    units = [(d, n, seed) for d in args.data for n in args.nets for seed in range(args.seeds)]
    work = dict(recipes=args.recipes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                threads=args.threads)
    saved = args.out / "accuracy-units"  # one file per finished job: a stopped run resumes
    saved.mkdir(parents=True, exist_ok=True)

    def unit_path(u: tuple[str, str, int]) -> Path:
        return saved / f"{u[0]}-{u[1]}-seed{u[2]}-e{args.epochs}-b{args.batch_size}-lr{args.lr:g}.json"

    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    for u in units:
        path = unit_path(u)
        if not args.fresh and path.exists():
            got = {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
            if set(args.recipes) <= set(got):
                done[u] = got
                common.log(f"{u[0]} {u[1]} seed {u[2]}: from {path}")

    def finish(u: tuple[str, str, int], got: dict[str, Any]) -> None:
        done[u] = got
        previous = json.loads(unit_path(u).read_text()) if unit_path(u).exists() else {}
        unit_path(u).write_text(json.dumps({**previous, **{k: list(v) for k, v in got.items()}}))
        common.log(f"{u[0]} {u[1]} seed {u[2]}: done")

    todo = [u for u in units if u not in done]
    if args.jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_unit, *u, **work): u for u in todo}
            for f in as_completed(futures):
                finish(futures[f], f.result())
    else:
        for u in todo:
            finish(u, train_unit(*u, **work))
    for data_name in args.data:
        for net_name in args.nets:
            for recipe in args.recipes:
                per_seed = [done[(data_name, net_name, seed)][recipe] for seed in range(args.seeds)]
                macs = per_seed[0][1]
                for seed, (acc, _, sec) in enumerate(per_seed):
                    common.log(f"{data_name} {net_name} {recipe} seed {seed}: "
                               + ", ".join(f"{k} {v:.1f}%" for k, v in acc.items()) + f" ({sec:.1f} s/epoch)")
                for key in per_seed[0][0]:
                    values = [a[key] for a, _, _ in per_seed]
                    result.rows.append({"data": data_name, "net": net_name, "recipe": recipe, "profile": key,
                                        "macs": macs[key], "accuracy": float(np.mean(values)),
                                        "accuracy_std": float(np.std(values)), "seeds": len(values),
                                        "seconds_per_epoch": float(np.mean([t for _, _, t in per_seed]))})
    return result


def table(result: common.Result) -> str:
    out = []
    for data_name in dict.fromkeys(r["data"] for r in result.rows):
        for net_name in dict.fromkeys(r["net"] for r in result.rows if r["data"] == data_name):
            rows = [r for r in result.rows if r["data"] == data_name and r["net"] == net_name]
            profiles = list(dict.fromkeys(r["profile"] for r in rows))
            lines = [f"{data_name}, {net_name} (accuracy %, mean of {rows[0]['seeds']} seed(s); s/epoch)",
                     f"{'recipe':>12} " + " ".join(f"{p:>7}" for p in profiles) + f" {'s/epoch':>8}"]
            for recipe in dict.fromkeys(r["recipe"] for r in rows):
                acc = {r["profile"]: r["accuracy"] for r in rows if r["recipe"] == recipe}
                sec = next(r["seconds_per_epoch"] for r in rows if r["recipe"] == recipe)
                lines.append(f"{recipe:>12} " + " ".join(f"{acc[p]:7.2f}" for p in profiles) + f" {sec:8.2f}")
            out.append("\n".join(lines))
    for t in result.extra.get("epoch_seconds", []):
        out.append(f"{t['data']}, {t['net']}: seconds per epoch side by side: sandwich {t['sandwich']:.2f}, "
                   f"parallel {t['parallel']:.2f}, ratio {t['parallel_over_sandwich']:.2f}")
    return "\n\n".join(out) + "\n\n" + common.machine_line(result.machine)


def plot(result: common.Result, path: Path) -> Path:
    groups = list(dict.fromkeys((r["data"], r["net"]) for r in result.rows))
    fig, axes = common.figure(ncols=len(groups), size=(5.0, 4.0))
    for ax, (data_name, net_name) in zip(axes.ravel(), groups):
        rows = [r for r in result.rows if r["data"] == data_name and r["net"] == net_name]
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            mine = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["macs"])
            ax.plot([r["macs"] / 1e6 for r in mine], [r["accuracy"] for r in mine], marker="o", label=recipe)
        ax.set_title(f"{data_name}, {net_name}")
        ax.set_xlabel("MMACs per image")
    common.style_accuracy_axes(axes)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=common.name_list, default=["cluttered-digits", "digits"])
    parser.add_argument("--nets", type=common.name_list, default=["resnet_small", "mobilenet_v2_small"])
    parser.add_argument("--recipes", type=common.name_list, default=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="epochs of sandwich and parallel training timed alternately, per data set and net")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    parser.add_argument("--fresh", action="store_true",
                        help="train every job again (default: reuse the jobs a stopped run finished)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training processes side by side (each data set, net and seed is one job)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    return common.publish(table(result), common.write_result("accuracy", result, plot, args.out))


if __name__ == "__main__":
    sys.exit(main())
