"""`slimrt train`, `eval`, `train-gate`, `calibrate`, `prune` and `profiles export|import`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DATA_HELP = "digits, cluttered-digits, or a .npz file with x, y (and optionally x_test, y_test)"


def add_commands(subparsers: Any) -> None:
    """Register train, eval, calibrate, prune, search and profiles on an argparse subparsers object."""
    p = subparsers.add_parser("train", help="train a slimmable model: every width accurate",
                              description="Slimmable training (sandwich rule or PSE-Net parallel sub-networks) "
                                          "of an ONNX model, a .slim model or a zoo model, written as one .slim file "
                                          "with per-profile batch norm.")
    p.add_argument("source", help="an .onnx file, a .slim file, or zoo:NAME (e.g. zoo:resnet_small)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="the .slim file to write")
    p.add_argument("--widths", default=None,
                   help="comma-separated uniform multipliers (default 0.25,0.5,0.75,1.0; a .slim source keeps "
                        "its own profiles unless given)")
    p.add_argument("--method", default="sandwich", choices=("sandwich", "parallel", "fixed"))
    p.add_argument("--distill", default="inplace", choices=("inplace", "ema", "none"))
    p.add_argument("--sampling", default="uniform", choices=("uniform", "profiles"),
                   help="random widths: uniform multipliers (US-Nets) or the named profiles (S-Net)")
    p.add_argument("--num-random", type=int, default=2, help="random widths per step (default: %(default)s)")
    p.add_argument("--profile", default=None,
                   help="--method fixed: the one width trained (a profile name or multiplier; default: the largest)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--label-weight", type=float, default=0.5,
                   help="share of the label loss for the distilled (narrower) widths (default: %(default)s)")
    p.add_argument("--batch-norm", default="add", choices=("add", "keep"),
                   help="add: give every sliced convolution without batch norm (exporters fold it "
                        "away) a trainable one; keep: train the graph as it is (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("eval", help="test accuracy and MACs of every profile, through the engine",
                              description="Test accuracy of every profile through the engine. With several "
                                          "models (e.g. MODEL.slim MODEL-int8.slim), one column per model and "
                                          "the difference of each to the first.")
    p.add_argument("model", nargs="+", help="the .slim file(s); several must have the same profiles")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--seed", type=int, default=0, help="split seed of the data (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help='print {"profiles": [{"name", "macs", "accuracy"}, ...]}; '
                   'a gated model adds the row "gate" (average MACs per sample, "choices": count per profile)')
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("train-gate", help="add a DS-Net dynamic gate: the model picks its width per input",
                              description="DS-Net stage II on a slimmable .slim model: a double-headed gate "
                                          "(attention + slimming head) at one tensor, trained with sandwich gate "
                                          "sparsification targets, Gumbel-softmax and a MACs penalty, batch norm "
                                          "frozen; written as a .slim file with a gate op.")
    p.add_argument("model", help="the slimmable .slim file (stage I, e.g. from slimrt train)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="the gated .slim file to write")
    p.add_argument("--gate-at", default=None,
                   help="the tensor the gate looks at (an op's output; default: the end of the first stage "
                        "after a downsampling that every path passes)")
    p.add_argument("--macs-weight", type=float, default=1.0,
                   help="weight of the expected-MACs penalty (higher: narrower choices; default: %(default)s)")
    p.add_argument("--choices", default=None,
                   help="comma-separated profile names the gate chooses among (default: every profile)")
    p.add_argument("--shared", default=None,
                   help="the profile whose widths the layers before the gate run at (default: the largest choice)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="the gate's learning rate (default: %(default)s)")
    p.add_argument("--supernet-lr", type=float, default=1e-4,
                   help="the supernet's learning rate while the gate trains, 0 to freeze it (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_train_gate)

    p = subparsers.add_parser("calibrate", help="recompute every profile's batch-norm statistics from data")
    p.add_argument("model", help="the .slim file")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="the .slim file to write")
    p.add_argument("--samples", type=int, default=2048, help="training images used (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_calibrate)
    add_profile_commands(subparsers)


def add_profile_commands(subparsers: Any) -> None:
    """Register prune, search and profiles (export / import)."""
    p = subparsers.add_parser("prune", help="find per-group widths by pruning (SP-Net BN scales, Taylor importance)",
                              description="Sort every channel group by importance and find, for each MACs target, "
                                          "the per-group widths kept by one global threshold; then train the "
                                          "pruned profiles slimmable.")
    p.add_argument("model", help="the .slim file (a trained model)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="the .slim file to write")
    p.add_argument("--method", default="bn", choices=("bn", "taylor", "l1"))
    p.add_argument("--targets", default="0.25,0.5,0.75", help="MACs fractions (default: %(default)s)")
    p.add_argument("--single-base", action="store_true", help="prune every target from full width (default: "
                                                               "multi-base, each from the next larger result)")
    p.add_argument("--sparsity-epochs", type=int, default=0,
                   help="full-width training with an L1 penalty on BN scales first (network slimming)")
    p.add_argument("--bn-l1", type=float, default=1e-4, help="that penalty (default: %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=5,
                   help="slimmable training of the pruned profiles afterwards (default: %(default)s; 0: only "
                        "recalibrate their batch norm)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run_prune)

    p = subparsers.add_parser("search", help="search per-group widths under MACs or measured-latency budgets",
                              description="Search the best per-group widths under each budget (PSE-Net's "
                                          "prior-guided evolution, random search or REINFORCE), scored on a "
                                          "validation split with per-candidate BN calibration, and add them to "
                                          "the model as profiles.")
    p.add_argument("model", help="the .slim file (a slimmable-trained model)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, help="the .slim file to write")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", help="comma-separated latency budgets (ms, batch 1, this machine)")
    budget.add_argument("--macs", help="comma-separated MACs budgets per sample (absolute, e.g. 2.5e6,5e6)")
    p.add_argument("--method", default="evolution", choices=("evolution", "random", "rl"))
    p.add_argument("--population", type=int, default=24)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prior", default=None, help="the training record with sampled widths and losses "
                                                 "(default: MODEL.train.json when it exists)")
    p.add_argument("--pareto", action="store_true", help="also add the Pareto front of the scored candidates")
    p.add_argument("--threads", type=int, default=1, help="engine threads the latency budgets refer to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run_search)

    p = subparsers.add_parser("profiles", help="export or import profiles as per-group ratios (JSON)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write a model's profiles as per-group ratios")
    e.add_argument("model")
    e.add_argument("-o", "--output", required=True, help="the .json file to write")
    e.add_argument("--profiles", default=None, help="comma-separated names (default: all)")
    e.set_defaults(func=run_profiles_export)
    i = sub.add_parser("import", help="apply exported profiles to another model of the same architecture")
    i.add_argument("model")
    i.add_argument("profiles_file", metavar="PROFILES.json")
    i.add_argument("-o", "--output", required=True, help="the .slim file to write")
    i.add_argument("--replace", action="store_true", help="drop the model's own profiles")
    i.add_argument("--data", default=None, help="calibrate the imported profiles' batch norm on this data")
    i.set_defaults(func=run_profiles_import)


def _widths(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--widths must be comma-separated numbers such as 0.25,0.5,1.0, got '{text}'") from None


def _profile_key(text: str) -> str | float:
    """A profile name, or a uniform multiplier when the text is a number."""
    try:
        return float(text)
    except ValueError:
        return text


def training_record_path(model_path: str) -> str:
    """Where `slimrt train` writes its record (config, epochs, sampled widths and losses)."""
    return str(Path(model_path).with_suffix("")) + ".train.json"


def build_supernet(source: str, data: Any, widths: tuple[float, ...] | None) -> Any:
    """A Supernet for ``source`` (.onnx, .slim or zoo:NAME) at the data's input size."""
    import torch

    from .supernet import Supernet

    c, h, w = data.input_shape
    grid = widths or (0.25, 0.5, 0.75, 1.0)
    if source.startswith("zoo:"):
        from .. import zoo

        name = source[4:]
        if name not in zoo.MODELS:
            raise ValueError(f"unknown zoo model '{name}'; choose one of {', '.join(zoo.MODELS)}")
        module = zoo.create(name, num_classes=data.num_classes, in_channels=c)
        return Supernet.from_torch(module, torch.zeros(1, c, h, w), grid, name=name)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    if path.suffix == ".onnx":
        return Supernet.from_onnx(path, grid, input_shape=(1, c, h, w), name=path.stem)
    net = Supernet.from_slim(str(path))
    if widths is not None:
        raise ValueError("a .slim source keeps its own profiles; leave out --widths "
                         "(or convert the source network again with other widths)")
    if net.input_shape[1] != c:
        raise ValueError(f"{path} takes {net.input_shape[1]} input channels, the data has {c}")
    return net


def run_train(args: argparse.Namespace) -> int:
    from .. import load
    from .. import format as fmt
    from .datasets import load_dataset
    from .evaluation import engine_accuracy
    from .slimmable import TrainConfig, batches, fit

    _init_distributed()
    data = load_dataset(args.data, seed=args.seed)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    net = build_supernet(args.source, data, _widths(args.widths))
    say(f"{args.source}: {len(net.groups)} channel groups, profiles {', '.join(net.profile_names)}; "
        f"{data.name}: {len(data.x_train)} training and {len(data.x_test)} test images {data.input_shape}")
    if args.batch_norm == "add":
        added = net.add_batch_norm()
        if added:
            say(f"batch norm added behind {len(added)} convolution(s) that had none (--batch-norm keep "
                "leaves them out); it folds into their epilogues")
    if not args.source.startswith("zoo:"):  # a trained source: recover its batch norm from data
        net.init_bn_statistics([xb for xb, _ in batches(data.x_train[:1024], None, 256)])
    profile = None if args.profile is None else _profile_key(args.profile)
    cfg = TrainConfig(method=args.method, distill=args.distill, epochs=args.epochs, batch_size=args.batch_size,
                      profile=profile,
                      lr=args.lr, num_random=args.num_random, sampling=args.sampling,
                      label_smoothing=args.label_smoothing, label_weight=args.label_weight, seed=args.seed,
                      threads=args.threads)
    from .slimmable import _distributed

    rank, _ = _distributed()
    history = fit(net, (data.x_train, data.y_train), (data.x_test, data.y_test), cfg, progress=not args.quiet,
                  log=say)
    if rank != 0:
        return 0
    slim = net.to_slim()
    fmt.write(slim, args.output)
    record = {"command": ["slimrt", *sys.argv[1:]], "source": args.source, "data": data.name,
              "profiles": net.profile_names, **history.to_json()}
    Path(training_record_path(args.output)).write_text(json.dumps(record) + "\n")
    model = load(args.output)
    print(f"wrote {args.output}; test accuracy through the engine:")
    _print_rows(engine_accuracy(model, data.x_test, data.y_test))
    return 0


def _init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1), join the process group (gloo: CPU) before training."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def run_eval(args: argparse.Namespace) -> int:
    from .. import load
    from .datasets import load_dataset
    from .evaluation import engine_accuracy

    models = [load(path) for path in args.model]
    names = [[p.name for p in m.profiles] for m in models]
    for path, have in zip(args.model[1:], names[1:]):
        if have != names[0]:
            raise ValueError(f"{path} has profiles {have}, {args.model[0]} has {names[0]}: models compared "
                             "side by side need the same profiles")
    data = load_dataset(args.data, seed=args.seed)
    tables = [engine_accuracy(m, data.x_test, data.y_test, threads=args.threads) for m in models]
    if len(models) == 1:
        model, rows = models[0], tables[0]
        if args.json:
            print(json.dumps({"model": model.name, "data": data.name, "test_images": len(data.x_test),
                              "precision": model.precision, "profiles": rows}))
        else:
            print(f"{model.name} ({model.precision}) on {data.name} ({len(data.x_test)} test images), "
                  "through the engine:")
            _print_rows(rows)
        return 0
    if args.json:
        print(json.dumps({"data": data.name, "test_images": len(data.x_test), "models": [
            {"path": str(path), "model": m.name, "precision": m.precision, "profiles": rows}
            for path, m, rows in zip(args.model, models, tables)]}))
        return 0
    print(f"{data.name} ({len(data.x_test)} test images), through the engine; accuracy per model:")
    for i, (path, m) in enumerate(zip(args.model, models)):
        print(f"  [{i}] {path}: {m.name}, {m.precision}")
    header = f"  {'profile':>12} {'MMACs':>9}" + "".join(f" {f'[{i}]':>8}" for i in range(len(models)))
    header += "".join(f" {f'[{i}]-[0]':>8}" for i in range(1, len(models)))
    print(header)
    for j, r in enumerate(tables[0]):
        acc = [t[j]["accuracy"] for t in tables]
        line = f"  {r['name']:>12} {r['macs'] / 1e6:9.3f}" + "".join(f" {a:7.2f}%" for a in acc)
        line += "".join(f" {a - acc[0]:+8.2f}" for a in acc[1:])
        print(line)
    return 0


def run_train_gate(args: argparse.Namespace) -> int:
    import torch

    from .. import format as fmt
    from .. import load
    from .datasets import load_dataset
    from .evaluation import engine_accuracy
    from .gate import GatedSupernet, train_gate
    from .supernet import Supernet

    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    slim = fmt.read(args.model)
    if fmt.gate_index(fmt.parse_ops(slim.meta)) is not None:
        raise ValueError(f"{args.model} has a gate already; train the gate of its slimmable source model")
    data = load_dataset(args.data, seed=args.seed)
    net = Supernet.from_slim(slim)
    if net.input_shape[1] != data.input_shape[0]:
        raise ValueError(f"{args.model} takes {net.input_shape[1]} input channels, the data has "
                         f"{data.input_shape[0]}")
    choices = None if args.choices is None else [c.strip() for c in args.choices.split(",") if c.strip()]
    gnet = GatedSupernet(net, gate_at=args.gate_at, choices=choices, shared=args.shared)
    say(f"gate at '{gnet.gate_at}' ({gnet.gate.reduce.in_features} channels), choices "
        f"{', '.join(gnet.choice_names)}; recalibrating their batch norm")
    gnet.prepare(data.x_train)
    train_gate(gnet, (data.x_train, data.y_train), epochs=args.epochs, macs_weight=args.macs_weight, lr=args.lr,
               supernet_lr=args.supernet_lr, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
               log=say)
    fmt.write(gnet.to_slim(), args.output)
    print(f"wrote {args.output}; test accuracy through the engine (the row 'gate' is the gated runs):")
    _print_rows(engine_accuracy(load(args.output), data.x_test, data.y_test))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from .. import load
    from .calibration import calibrate_slim
    from .datasets import load_dataset
    from .evaluation import engine_accuracy

    data = load_dataset(args.data, seed=args.seed)
    before = engine_accuracy(load(args.model), data.x_test, data.y_test)
    fmt.write(calibrate_slim(args.model, data, samples=args.samples, seed=args.seed), args.output)
    after = engine_accuracy(load(args.output), data.x_test, data.y_test)
    print(f"wrote {args.output}; test accuracy before -> after calibration:")
    for b, a in zip(before, after):
        print(f"  {a['name']:>12} {a['macs'] / 1e6:9.3f} MMACs  {b['accuracy']:6.2f}% -> {a['accuracy']:6.2f}%")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from .. import load
    from .datasets import load_dataset
    from .evaluation import engine_accuracy
    from .pruning import prune_profiles
    from .slimmable import TrainConfig, batches, calibrate_supernet, fit
    from .supernet import Supernet

    targets = _widths(args.targets) or ()
    data = load_dataset(args.data, seed=args.seed)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    net = Supernet.from_slim(args.model)
    net.init_bn_statistics([xb for xb, _ in batches(data.x_train[:1024], None, 256)])
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    if args.sparsity_epochs > 0:
        say(f"sparsity training: {args.sparsity_epochs} epochs at full width, L1 {args.bn_l1} on BN scales")
        fit(net, train, None, TrainConfig(method="fixed", profile=net.full_widths, epochs=args.sparsity_epochs,
                                          bn_l1=args.bn_l1, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
            progress=not args.quiet, log=say)
    probe = list(batches(data.x_train[:1024], data.y_train[:1024], 64))
    results = prune_profiles(net, targets, args.method, probe, multi_base=not args.single_base)
    for r in results:
        say(f"target {r.target:g}: MACs {r.macs_ratio:.3f} of full, threshold {r.threshold:.3g}")
    if args.finetune_epochs > 0:
        fit(net, train, test, TrainConfig(sampling="profiles", epochs=args.finetune_epochs,
                                          batch_size=args.batch_size, lr=args.lr, seed=args.seed),
            progress=not args.quiet, log=say)
    else:
        calibrate_supernet(net, data.x_train, seed=args.seed)
    fmt.write(net.to_slim(), args.output)
    print(f"wrote {args.output}; pruned profiles ({args.method}), test accuracy through the engine:")
    _print_rows(engine_accuracy(load(args.output), data.x_test, data.y_test))
    return 0


def run_search(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from .. import load
    from .datasets import load_dataset
    from .evaluation import engine_accuracy
    from .search import (Constraint, OpLatencyTable, candidate_json, evolutionary_search, pareto_front,
                         random_search, reinforce_search)
    from .slimmable import batches, calibrate_supernet
    from .supernet import Supernet

    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    data = load_dataset(args.data, seed=args.seed)
    fit_part, val_part = data.split(0.2, seed=args.seed)
    val = (val_part.x_test, val_part.y_test)
    calib = [xb for xb, _ in batches(fit_part.x_train[:1024], None, 256)]
    slim = fmt.read(args.model)
    net = Supernet.from_slim(slim).eval()
    table = None
    if args.latency_ms:
        limits, kind = _widths(args.latency_ms) or (), "latency_ms"
        say(f"measuring the per-op latency table ({args.threads} thread(s))")
        table = OpLatencyTable.measure(slim, threads=args.threads, seed=args.seed)
        say(f"latency table: median fit error {100 * table.fit_error:.1f}% on the measured settings")
        cost = table.predict
    else:
        limits, kind = _widths(args.macs) or (), "macs"
        cost = lambda w: float(net.macs(w))  # noqa: E731
    prior_path = Path(args.prior) if args.prior else Path(training_record_path(args.model))
    prior = []
    if prior_path.exists():
        record = json.loads(prior_path.read_text())
        prior = [(tuple(s["widths"]), float(s["loss"])) for s in record.get("samples", [])]
        say(f"prior: {len(prior)} sampled sub-networks from {prior_path}")
    found, everything = [], []
    for limit in limits:
        constraint = Constraint(kind, float(limit), cost)
        if args.method == "evolution":
            ranked = evolutionary_search(net, constraint, val, calib, prior=prior, population=args.population,
                                         generations=args.generations, seed=args.seed, log=say)
        elif args.method == "random":
            ranked = random_search(net, constraint, val, calib, samples=args.population * args.generations,
                                   seed=args.seed)
        else:
            full = net.macs(net.full_widths)
            target = (float(limit) / full) if kind == "macs" else _macs_ratio_for(net, table, float(limit))
            ranked = [c for c in reinforce_search([(net, val, calib)], target, seed=args.seed, log=say)
                      if constraint.ok(c.widths)]
        if not ranked:
            raise ValueError(f"no candidate met {kind} <= {limit:g}")
        name = f"{float(limit):g}ms" if kind == "latency_ms" else f"macs{float(limit):g}"
        found.append((name, ranked[0]))
        everything.extend(ranked)
        say(f"{name}: validation {ranked[0].accuracy:.2f}%, {kind} {ranked[0].cost:.4g}")
    if args.pareto:
        found += [(f"pareto{i}", c) for i, c in enumerate(pareto_front(everything))]
    existing = [(p["name"], tuple(p["widths"])) for p in net.profiles]
    taken = {w for _, w in existing}
    new = [(n, c.widths) for n, c in found if c.widths not in taken and not taken.add(c.widths)]
    net.set_profiles(existing + new)
    if new:
        calibrate_supernet(net, fit_part.x_train, seed=args.seed, profiles=[n for n, _ in new], shared=False)
    fmt.write(net.to_slim(), args.output)
    record = {"command": ["slimrt", *sys.argv[1:]], "constraint": kind, "limits": list(limits),
              "found": [{"name": n, **candidate_json(c)} for n, c in found],
              "latency_table": table.to_json() if table else None}
    Path(str(Path(args.output).with_suffix("")) + ".search.json").write_text(json.dumps(record) + "\n")
    model = load(args.output)
    print(f"wrote {args.output}; test accuracy through the engine:")
    _print_rows(engine_accuracy(model, data.x_test, data.y_test))
    return 0


def _macs_ratio_for(net: Any, table: Any, limit_ms: float) -> float:
    """The MACs ratio of the uniform width whose predicted latency is the budget (for the RL reward)."""
    full = net.macs(net.full_widths)
    best = net.min_multiplier
    for m in [net.min_multiplier + i * (1 - net.min_multiplier) / 40 for i in range(41)]:
        if table.predict(net.widths(m)) <= limit_ms:
            best = m
    return net.macs(net.widths(best)) / full


def run_profiles_export(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from .profiles import export_profiles, write_profiles

    names = [n.strip() for n in args.profiles.split(",")] if args.profiles else None
    data = export_profiles(fmt.read(args.model), names)
    write_profiles(data, args.output)
    print(f"wrote {len(data['profiles'])} profiles of {data['model']} to {args.output}")
    return 0


def run_profiles_import(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from .profiles import import_profiles

    slim = import_profiles(fmt.read(args.model), args.profiles_file, replace=args.replace)
    if args.data is not None:
        from .calibration import calibrate_slim
        from .datasets import load_dataset

        slim = calibrate_slim(slim, load_dataset(args.data))
    fmt.write(slim, args.output)
    names = ", ".join(p["name"] for p in slim.meta["profiles"])
    print(f"wrote {args.output} with profiles {names}"
          + ("" if args.data else " (calibrate the imported ones: slimrt calibrate)"))
    return 0


def _print_rows(rows: list[dict[str, Any]]) -> None:
    full = max(r["macs"] for r in rows) or 1
    print(f"  {'profile':>12} {'MMACs':>9} {'MACs/full':>10} {'accuracy':>9}")
    for r in rows:
        choices = r.get("choices")
        tail = "  choices " + ", ".join(f"{k} {v}" for k, v in choices.items()) if choices else ""
        print(f"  {r['name']:>12} {r['macs'] / 1e6:9.3f} {r['macs'] / full:10.3f} {r['accuracy']:8.2f}%{tail}")
