"""Post-training int8 quantization of a .slim model, on its one weight copy.

Weights are quantized symmetrically per output channel (int8 in [-127, 127], one float scale per
output channel): a prefix of the output channels keeps its scales and a prefix of the input
channels is a row prefix of the int8 weights, so every profile still runs from the one copy.
Activations are quantized per tensor, symmetrically, with scales calibrated **per profile**
(a narrow profile's activations have other ranges than the full model's): every int8 op gets
``<op>.xscale@<profile>`` for each named profile, and ``<op>.xscale`` (the largest of them, so no
width clips) for uniform multipliers that are not a named profile. model.h defines the format
and the semantics, slimrt.reference computes them.

Quantized by default: the dense convolutions and linears that do not read the model's input.
Activations between ops are float32, so each int8 op quantizes its input as it reads it; that
makes two kinds of layer slower in int8 than in float32 (measured on MobileNetV2 at 224x224, one
thread, AVX-512 VNNI) and they stay float32 unless asked for:

* depthwise convolutions (``depthwise=True``): each input value is quantized once per tap that
  reads it, 2x the float32 time, until producers hand them int8 activations;
* the first layer over the model's input (``first_layer=True``): a few input channels give a
  K of taps x 4 rows, and float32 has a kernel reading the NCHW input in place (13x).

Grouped convolutions and the other ops always stay float32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np

from . import format as fmt
from .reference import reference_trace

__all__ = ["CalibrationWarning", "quantize", "quantize_weights", "calibration_inputs", "add_commands"]

ModelLike = Union[fmt.SlimFile, str, "os.PathLike[str]", bytes, Any]
DataLike = Union[str, "os.PathLike[str]", np.ndarray, None]


class CalibrationWarning(UserWarning):
    """Activation scales were calibrated without real data (random inputs)."""


def quantize_weights(weight: np.ndarray, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization of a float weight.

    Returns (q, scale): q int8 in [-127, 127] with weight ~ q * scale along `out_axis`, scale
    float32 > 0 (max |w| / 127 of the channel; 1 for a channel of zeros).
    """
    w = np.asarray(weight, dtype=np.float32)
    axes = tuple(a for a in range(w.ndim) if a != out_axis % w.ndim)
    amax = np.abs(w).max(axis=axes).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[out_axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def calibration_inputs(data: DataLike, input_shape: Sequence[int], *, samples: int = 512,
                       seed: int = 0) -> np.ndarray:
    """The images used for calibration: ``samples`` training images of a data set ("digits",
    "cluttered-digits" or a .npz file, through slimrt.train.datasets), an array of NCHW images,
    or (data None) random normal inputs of the model's input shape, with a CalibrationWarning."""
    rng = np.random.default_rng(seed)
    if data is None:
        warnings.warn("calibrating activation scales on random inputs: int8 accuracy on real data "
                      "may suffer; pass data (digits, cluttered-digits, a .npz file or an array)",
                      CalibrationWarning, stacklevel=3)
        n = max(1, min(samples, 64))
        return rng.standard_normal((n, *input_shape[1:])).astype(np.float32)
    if isinstance(data, np.ndarray):
        x = data
    else:
        from .train.datasets import load_dataset

        x = load_dataset(data, seed=seed).x_train
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != input_shape[1]:
        raise ValueError(f"calibration data must be NCHW with {input_shape[1]} channels, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("calibration data holds no images")
    take = np.sort(rng.permutation(len(x))[:samples])
    return np.ascontiguousarray(x[take])


def _as_slimfile(model: ModelLike) -> fmt.SlimFile:
    if isinstance(model, fmt.SlimFile):
        fmt.validate(model)
        return model
    if hasattr(model, "to_slimfile"):
        return model.to_slimfile()
    return fmt.read(model)


def _quantizable(slim: fmt.SlimFile, depthwise: bool, first_layer: bool) -> list[fmt.Op]:
    shapes = fmt.infer_shapes(slim.meta)
    source = slim.meta["input"]["name"]
    ops = []
    for op in fmt.parse_ops(slim.meta):
        if op.precision == "int8":
            raise ValueError(f"op '{op.name}' is int8 already: quantize the float32 model")
        kind = fmt.conv_kind(op, shapes[op.inputs[0]][1]) if op.kind == "conv" else op.kind
        if kind not in ("linear", "dense", "depthwise"):
            continue
        if (kind == "depthwise" and not depthwise) or (op.inputs[0] == source and not first_layer):
            continue
        ops.append(op)
    return ops


def _input_ranges(slim: fmt.SlimFile, ops: Iterable[fmt.Op], x: np.ndarray, profile: str,
                  batch_size: int) -> dict[str, float]:
    """max |input| of each op over the images `x` at `profile` (float32 semantics)."""
    wanted = {op.name for op in ops}
    amax = dict.fromkeys(wanted, 0.0)
    for start in range(0, len(x), batch_size):
        for op, inputs in reference_trace(slim, x[start:start + batch_size], profile):
            if op.name in wanted:
                v = np.abs(inputs[0])
                amax[op.name] = max(amax[op.name], float(np.nanmax(v)) if v.size else 0.0)
    return amax


def quantize(model: ModelLike, data: DataLike = None, *, samples: int = 512, seed: int = 0,
             batch_size: int = 64, skip: Sequence[str] = (), depthwise: bool = False,
             first_layer: bool = False) -> fmt.SlimFile:
    """An int8 model (a SlimFile; write it with slimrt.format.write) made from a float32 one.

    `model` is a path, the bytes of a .slim file, a SlimFile or a loaded slimrt.Model. `data`
    calibrates the activation scales of every named profile: "digits", "cluttered-digits", a
    .npz file (its training images), an NCHW float32 array, or None for random inputs (with a
    CalibrationWarning). `samples` images are drawn (seeded); `skip` names ops to keep float32;
    `depthwise` and `first_layer` quantize those layers too (module docstring: why not by
    default). Raises ValueError for data that does not fit the model, an op that is int8
    already, or nothing to quantize.
    """
    slim = _as_slimfile(model)
    names = {op["name"] for op in slim.meta["ops"]}
    unknown = sorted(set(skip) - names)
    if unknown:
        raise ValueError(f"skip names op '{unknown[0]}', which the model does not have")
    ops = [op for op in _quantizable(slim, depthwise, first_layer) if op.name not in set(skip)]
    if not ops:
        raise ValueError("the model has no conv or linear to quantize (dense or depthwise; depthwise ones "
                         "with depthwise=True, the first layer with first_layer=True)")
    x = calibration_inputs(data, slim.meta["input"]["shape"], samples=samples, seed=seed)
    profiles = [p["name"] for p in slim.meta["profiles"]]
    ranges = {p: _input_ranges(slim, ops, x, p, batch_size) for p in profiles}

    def scale_of(amax: float) -> np.ndarray:
        return np.array([amax / 127.0 if amax > 0 and np.isfinite(amax) else 1.0], dtype=np.float32)

    tensors = dict(slim.tensors)
    meta = {**slim.meta, "ops": [dict(op) for op in slim.meta["ops"]]}
    by_name = {op["name"]: op for op in meta["ops"]}
    for op in ops:
        weight = tensors[f"{op.name}.weight"]
        q, wscale = quantize_weights(weight, -1)  # [.., Cout] (depthwise [kh, kw, C]): the last axis
        tensors[f"{op.name}.weight"] = q
        tensors[f"{op.name}.wscale"] = wscale
        per_profile = [ranges[p][op.name] for p in profiles]
        tensors[f"{op.name}.xscale"] = scale_of(max(per_profile, default=0.0))
        for p, amax in zip(profiles, per_profile):
            tensors[fmt.xscale_tensor_name(op.name, p)] = scale_of(amax)
        by_name[op.name]["precision"] = "int8"
    meta["format_version"] = max(int(meta["format_version"]), fmt.INT8_FORMAT_VERSION)
    meta["quantization"] = {
        "weights": "int8, symmetric per output channel",
        "activations": "int8, symmetric per tensor, max |x| per profile",
        "calibration": "random" if data is None else "array" if isinstance(data, np.ndarray) else str(data),
        "samples": int(len(x)), "seed": seed,
    }
    out = fmt.SlimFile(meta, tensors)
    fmt.validate(out)
    return out


# ---- command line: `slimrt quantize` ----------------------------------------------------------

def add_commands(subparsers: Any) -> None:
    """Register `slimrt quantize` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "quantize", help="int8 model from a float32 one: per-channel weights, per-profile activation scales",
        description="Quantize a .slim model to int8 on its one weight copy: weights per output channel, "
                    "activation scales calibrated for every profile from data.")
    p.add_argument("model", help="the float32 .slim file")
    p.add_argument("--data", default=None,
                   help="calibration images: digits, cluttered-digits or a .npz file (its training part); "
                        "without it, random inputs (with a warning)")
    p.add_argument("-o", "--output", required=True, help="the int8 .slim file to write")
    p.add_argument("--samples", type=int, default=512, help="calibration images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated op names to keep float32")
    p.add_argument("--depthwise", action="store_true",
                   help="quantize depthwise convs too (slower than float32 for now: see slimrt.quantization)")
    p.add_argument("--first-layer", action="store_true",
                   help="quantize the layer over the model's input too (slower than float32)")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args: Any) -> int:
    import sys

    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    skip = [s for s in args.skip.split(",") if s]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        q = quantize(args.model, args.data, samples=args.samples, seed=args.seed, skip=skip,
                     depthwise=args.depthwise, first_layer=args.first_layer)
    for w in caught:
        print(f"slimrt quantize: warning: {w.message}", file=sys.stderr)
    fmt.write(q, args.output)
    n = sum(1 for op in q.meta["ops"] if op.get("precision") == "int8")
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: {n} int8 ops, {size / 1e6:.3f} MB, activation scales for "
          f"{len(q.meta['profiles'])} profiles from {q.meta['quantization']['samples']} images "
          f"({q.meta['quantization']['calibration']})")
    return 0
