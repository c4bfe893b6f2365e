"""Small gated .slim models for the tests of the gate op (test_gate_op.py, test_capi.py)."""

from __future__ import annotations

import copy

import numpy as np

from slimrt import format as fmt
from slimrt.builder import ModelBuilder
from slimrt.reference import run_reference

# (stem channels, shared stem width, hidden, body widths per profile): odd sizes
SIZES = [(5, 3, 1, (1, 4)), (9, 7, 3, (3, 5, 13)), (16, 13, 7, (2, 7, 11, 13))]


def gated_model(stem: int = 9, shared: int = 7, hidden: int = 3, body: tuple[int, ...] = (3, 5, 13),
                seed: int = 0, slim_scale: float = 1.0, hw: tuple[int, int] = (9, 11)) -> fmt.SlimFile:
    """stem conv (stride 2) -> gate -> body conv -> residual-free head: pool, flatten, linear to 5
    classes. The stem runs at `shared` channels in every profile; the body's width is the choice."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder("gated", input_shape=(1, 3) + hw, min_multiplier=0.25)
    s = b.group("stem", stem)
    x = b.conv(b.input, rng.normal(size=(stem, 3, 3, 3)) * 0.5, out_group=s, stride=2, padding=1,
               scale=rng.uniform(0.5, 1.5, stem), bias=rng.normal(size=stem) * 0.1, act="relu", name="stem")
    k = len(body)
    g = b.gate(x, rng.normal(size=(hidden, shared)), rng.normal(size=hidden) * 0.1,
               rng.normal(size=(shared, hidden)) * 0.5, rng.normal(size=shared) * 0.1,
               rng.normal(size=(k, hidden)) * slim_scale, rng.normal(size=k) * 0.1, name="g")
    y = b.conv(g, rng.normal(size=(max(body), stem, 3, 3)) * 0.3, out_group=b.group("body", max(body)),
               padding=1, bias=rng.normal(size=max(body)) * 0.1, act="relu", name="body")
    f = b.flatten(b.global_avgpool(y))
    b.linear(f, rng.normal(size=(5, max(body))), out_group=b.group("classes", 5, fixed=True), name="fc")
    for i, w in enumerate(body):
        b.profile(f"p{i}", {"stem": shared, "body": w})
    return b.build()


def inputs(n: int, seed: int = 1, hw: tuple[int, int] = (9, 11)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3) + hw).astype(np.float32)


def force(slim: fmt.SlimFile, choice: int) -> fmt.SlimFile:
    """The model with its slimming head rewritten so that every image takes `choice`."""
    tensors = dict(slim.tensors)
    bias = np.zeros_like(tensors["g.slim.bias"])
    bias[choice] = 100.0
    tensors["g.slim.weight"], tensors["g.slim.bias"] = np.zeros_like(tensors["g.slim.weight"]), bias
    out = fmt.SlimFile(slim.meta, tensors)
    fmt.validate(out)
    return out


def per_image_model() -> fmt.SlimFile:
    """A model whose gate sends different images of one batch to different profiles."""
    base = gated_model(9, 7, 3, (3, 5, 13), seed=3)
    h = _hidden(base, inputs(9, seed=5))
    j = int(np.argmax(h.std(axis=0)))  # the hidden feature that varies most over the images
    v = np.sort(h[:, j])
    t1, t2 = (v[2] + v[3]) / 2, (v[5] + v[6]) / 2
    assert v[3] - v[2] > 1e-2 and v[6] - v[5] > 1e-2
    # logits [0, 10 (h - t1), 10 (h - t1) + 10 (h - t2)]: choice 0 below t1, 1 between, 2 above t2
    t = dict(base.tensors)
    t["g.slim.weight"] = np.zeros_like(t["g.slim.weight"])
    t["g.slim.weight"][j] = [0.0, 10.0, 20.0]
    t["g.slim.bias"] = np.array([0.0, -10.0 * t1, -10.0 * (t1 + t2)], np.float32)
    slim = fmt.SlimFile(base.meta, t)
    fmt.validate(slim)
    return slim


def _hidden(slim: fmt.SlimFile, x: np.ndarray) -> np.ndarray:
    """The gate's hidden features [N, D] (reference arithmetic)."""
    meta = copy.deepcopy(slim.meta)
    meta["output"] = "stem"
    stem = run_reference(fmt.SlimFile(meta, slim.tensors), x, 0)
    return np.maximum(stem.mean(axis=(2, 3)) @ slim.tensors["g.reduce.weight"] + slim.tensors["g.reduce.bias"], 0)
