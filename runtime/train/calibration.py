"""Batch-norm calibration of any .slim model: every profile gets statistics of its own.

A net trained at full width only and then converted runs its narrow profiles with the full
width's batch-norm statistics, which no longer describe the narrower layers' outputs: those
profiles score near chance. Recomputing the statistics per profile from data (US-Nets'
post-statistics) recovers much of the accuracy without touching a weight.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np

from .. import format as fmt
from .datasets import Dataset

ModelLike = Union[fmt.SlimFile, str, os.PathLike, bytes, Any]

__all__ = ["calibrate", "calibrate_slim"]


def calibrate_slim(model: ModelLike, data: Dataset | np.ndarray, *, samples: int = 2048,
                   batch_size: int = 256, seed: int = 0) -> fmt.SlimFile:
    """As :func:`calibrate`, returning the SlimFile."""
    import torch

    from .slimmable import batches, calibrate_supernet
    from .supernet import Supernet

    x = data.x_train if isinstance(data, Dataset) else np.ascontiguousarray(data, dtype=np.float32)
    net = Supernet.from_slim(model)
    channels = net.input_shape[1]
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"calibration data must be NCHW with {channels} channels, got shape {x.shape}")
    with torch.no_grad():
        rng = np.random.default_rng(seed)
        take = np.sort(rng.permutation(len(x))[:samples])
        net.init_bn_statistics([xb for xb, _ in batches(x[take], None, batch_size)])
    narrower = [p for p in range(len(net.profiles)) if net.widths(p) != net.full_widths]
    if narrower:  # the full width keeps the statistics it was trained with (recovered above)
        calibrate_supernet(net, x, samples, batch_size, seed, profiles=narrower, shared=False)
    return net.to_slim()


def calibrate(model: ModelLike, data: Dataset | np.ndarray, *, samples: int = 2048,
              batch_size: int = 256, seed: int = 0) -> Any:
    """Recompute every profile's batch-norm statistics from ``data``; returns a loaded Model.

    ``model``: a :class:`slimrt.Model`, a SlimFile, or a .slim path / bytes. ``data``: a
    :class:`~slimrt.train.datasets.Dataset` (its training images) or an NCHW float32 array;
    ``samples`` images at most are used. Only the epilogues change: the weights stay
    byte-identical, the full profile computes what it did on this data, and every other profile
    gets per-profile scale/bias vectors. Needs torch (the ``train`` extra).
    """
    from .. import load

    return load(fmt.to_bytes(calibrate_slim(model, data, samples=samples, batch_size=batch_size, seed=seed)))
