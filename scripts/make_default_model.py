"""Write the bundled default model, runtime/data/default.slim: a trained slimmable net.

MobileNetV2-small (inverted residuals: pointwise, depthwise, residual adds) trained on
cluttered-digits (1x24x24, 10 classes) by slimmable training (sandwich rule + in-place
distillation, per-profile batch norm), profiles 0.25 / 0.5 / 0.75 / 1.0. Deterministic: fixed
seeds and two torch threads. About 5 minutes on 2 idle cores. Run from the repository root:

    python scripts/make_default_model.py [--epochs 12]

needs the train extra (pip install ".[train]"). `slimrt demo` prints each profile's test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "runtime" / "data" / "default.slim")
    args = parser.parse_args(argv)

    import torch

    from slimrt import format as fmt
    from slimrt import load, zoo
    from slimrt.train import Supernet, TrainConfig, fit
    from slimrt.train.datasets import load_dataset
    from slimrt.train.evaluation import engine_accuracy

    torch.set_num_threads(2)  # a fixed thread count: the same bytes on every run
    torch.use_deterministic_algorithms(True)
    data = load_dataset("cluttered-digits", seed=args.seed)
    c, h, w = data.input_shape
    torch.manual_seed(args.seed)
    module = zoo.mobilenet_v2_small(num_classes=data.num_classes, in_channels=c)
    net = Supernet.from_torch(module, torch.zeros(1, c, h, w), (0.25, 0.5, 0.75, 1.0), name="default")
    t0 = time.perf_counter()
    fit(net, (data.x_train, data.y_train), (data.x_test, data.y_test),
        TrainConfig(method="sandwich", distill="inplace", epochs=args.epochs, seed=args.seed))
    slim = net.to_slim("default")
    slim.meta["trained_on"] = {"data": "cluttered-digits", "seed": args.seed,
                               "command": f"python scripts/make_default_model.py --epochs {args.epochs}"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fmt.write(slim, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes) in {time.perf_counter() - t0:.0f} s")
    for row in engine_accuracy(load(args.output), data.x_test, data.y_test):
        print(f"  {row['name']:>5} {row['macs'] / 1e6:7.3f} MMACs  {row['accuracy']:6.2f}% test accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
