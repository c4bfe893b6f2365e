"""Differential fuzzing of the .slim loaders: the engine against the Python reader.

Every mutant of a few seed models (the bundled one and small models that use every op) is
loaded by the Python reader (slimrt.format.read) and by the engine, from its bytes and from a
file (mmap). A mutant is made either by structured edits of the header and model JSON (values
swapped for boundary numbers, names of other items, deletions, duplicated and reordered list
entries, shapes, dtypes and byte ranges of tensors, truncated or grown data) or by byte edits
of the file (flipped bits, boundary bytes, inserted, deleted and repeated runs, truncation).
Each mutant is a pure function of (seed, index), so any finding can be made again.

A mutant that loads is run at every profile and at the smallest uniform multiplier. Findings:

- crash: a worker process died (a signal, or a sanitizer's report ended it); its stderr is kept
- hang: one mutant took more than --hang seconds of CPU time (or a worker made no progress for
  --stall seconds of wall time, and was killed)
- sanitizer: an AddressSanitizer / UndefinedBehaviorSanitizer report in a worker's stderr
- disagree: one reader accepted what the other refused, or both accepted but differ on the
  profiles, input shape, MACs or params; or the two engine load paths differ
- error: a reader raised something else than InvalidModelError (a bug in its checks)
- memory: a load's peak RSS grew by more than 2x the file size + 64 MiB

Usage (the CI runs a short seeded campaign; the long one is the same command with more)::

    python tests/fuzz.py --mutants 3000 --seed 14            # CI, a couple of minutes
    nice -n 19 python tests/fuzz.py --mutants 1000000 --workers 2 --out /tmp/slimrt-fuzz

or, to fuzz the sanitized engine, `.ci/sanitizers --campaign 1000000` (its build, then this command).

Exit status 0 when there are no findings, 1 otherwise; mutants with findings are written to
--out with their index. Under a sanitizer build, run with the sanitizer runtime preloaded
(.ci/sanitizers does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")

# ---------------------------------------------------------------------------------------------
# Seed models
# ---------------------------------------------------------------------------------------------


def every_op_model() -> Any:
    """A small model that uses every op kind the format has, with profiles and epilogues."""
    from slimrt.builder import ModelBuilder

    rng = np.random.default_rng(5)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(max(1, int(np.prod(shape[1:]))))).astype(np.float32)

    def v(n: int, loc: float = 0.0) -> np.ndarray:
        return (loc + 0.1 * rng.standard_normal(n)).astype(np.float32)

    b = ModelBuilder("every_op", input_shape=(1, 3, 12, 12), min_multiplier=0.25)
    a = b.group("a", 16)
    x = b.conv(b.input, w(16, 3, 3, 3), out_group=a, padding=1, bias=v(16), act="relu6", name="stem")
    d = b.conv(x, w(16, 1, 3, 3), groups=16, padding=1, bias=v(16), act="hardswish", name="dw")
    x = b.add(x, b.conv(d, w(16, 16, 1, 1), out_group=a, bias=v(16), name="pw"), act="relu", name="res")
    x = b.maxpool(x, 3, stride=2, padding=1, name="mp")
    s = b.conv(b.global_avgpool(x, name="gap_se"), w(4, 16, 1, 1), out_group=b.group("se", 4), act="relu",
               name="se1")
    g = b.conv(s, w(16, 4, 1, 1), out_group=a, bias=v(16), act="hardsigmoid", name="se2")
    x = b.mul(x, g, name="gate")
    x = b.scale_bias(x, v(16, 1.0), v(16), act="silu", name="sb")
    x = b.prelu(x, rng.standard_normal(16), name="pr")
    f = b.conv(x, w(8, 16, 1, 1), out_group=b.group("f", 8, fixed=True, why="shuffle input"), name="fx")
    f = b.shuffle(f, 2, name="sh")
    x = b.concat([x, b.slice(f, 0, 4, name="sl")], name="cat")
    x = b.resize(x, 2, "bilinear", name="up")
    x = b.avgpool(x, 2, name="ap")
    x = b.act(x, "gelu", name="act")
    h = b.conv(x, w(8, 20, 1, 1), out_group=b.group("h", 8), act="tanh", name="head")
    q = b.flatten(b.global_avgpool(h, name="gap"), name="flat")
    q = b.linear(q, w(8, 8), out_group="h", bias=v(8), act="elu", name="fc1")
    q = b.unflatten(q, name="unflat")
    q = b.softmax(q, name="soft")
    b.set_output(b.flatten(q, name="out"))
    b.profile("small", {"a": 8, "se": 2, "h": 4})
    b.profile("mid", {"a": 12, "se": 3, "h": 6})
    b.profile("full", {"a": 16, "se": 4, "h": 8})
    b.epilogue("stem", "small", v(8, 1.0), v(8))
    return b.build()


def seed_models() -> list[tuple[str, bytes]]:
    import slimrt
    from slimrt import format as fmt
    from slimrt import models

    return [
        ("default", Path(slimrt.default_model_path()).read_bytes()),
        ("every_op", fmt.to_bytes(every_op_model())),
        ("tiny_resnet", fmt.to_bytes(models.tiny_resnet(seed=1, input_hw=(16, 16)))),
        ("concat_net", fmt.to_bytes(models.concat_net(seed=3))),
    ]


# ---------------------------------------------------------------------------------------------
# Mutators
# ---------------------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 63, 64, 255, 256, 1023, 4096, 65535, 1 << 20,
                    (1 << 31) - 1, 1 << 31, -(1 << 31), (1 << 32) - 1, 1 << 32, 1 << 53, (1 << 63) - 1,
                    1 << 63, -(1 << 63), (1 << 64) - 1, 1 << 64, 10 ** 30]
INTERESTING_FLOATS = [0.0, -0.0, 0.5, 1.5, -1.0, 1e-45, 1e-300, 1e38, 3.5e38, 1e308, -1e308, math.nan, math.inf,
                      -math.inf, 0.999999, 1.000001]
INTERESTING_OTHER: list[Any] = ["", "x", "none", "relu", "conv", "linear", "F32", "F16", "I8", "nearest",
                                None, True, False, [], {}, [0], [1, 1], [-1, -1, -1, -1], [0, 0, 0, 0],
                                {"name": "x"}, "\u0000", "\udcff" * 0 + "\u00e9", "a" * 300]
WEIGHT_VALUES = [0.0, -0.0, 1e-45, 1e-38, 3.4e38, -3.4e38, 1e20, math.nan, math.inf, -math.inf]
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "XX", ""]
BYTE_VALUES = b'\x00\xff\x7f\x80"{}[],:-.0123456789eE \\nN'


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _join(header: dict[str, Any], body: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _slots(node: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key) in a JSON tree, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((node, key))
            _slots(value, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((node, i))
            _slots(value, out)


def _names(model: dict[str, Any], header: dict[str, Any]) -> list[str]:
    names = [k for k in header if k != "__metadata__"]
    for key in ("ops", "groups", "profiles"):
        items = model.get(key)
        if isinstance(items, list):
            names += [i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
    inp = model.get("input")
    if isinstance(inp, dict) and isinstance(inp.get("name"), str):
        names.append(inp["name"])
    return names or ["x"]


def _new_value(rng: random.Random, old: Any, names: list[str], subtrees: list[Any]) -> Any:
    r = rng.random()
    if isinstance(old, bool) or old is None:
        pass
    elif isinstance(old, int) and r < 0.5:
        return rng.choice([old + rng.choice([-1, 1]), old + rng.randint(-9, 9), old * 2, old // 2, -old,
                           old << rng.randint(1, 40), rng.choice(INTERESTING_INTS)])
    elif isinstance(old, float) and r < 0.5:
        return rng.choice([old * 2, -old, old + 1, rng.choice(INTERESTING_FLOATS), int(old)])
    elif isinstance(old, str) and r < 0.6:
        return rng.choice([rng.choice(names), old + "_", old[:-1], old.upper(), ""])
    elif isinstance(old, list) and old and r < 0.4:
        return [_new_value(rng, item, names, subtrees) for item in old] if rng.random() < 0.3 else old * 2
    r = rng.random()
    if r < 0.35:
        return rng.choice(INTERESTING_INTS)
    if r < 0.5:
        return rng.choice(INTERESTING_FLOATS)
    if r < 0.65:
        return rng.choice(names)
    if r < 0.8 and subtrees:
        return json.loads(json.dumps(rng.choice(subtrees)))
    return json.loads(json.dumps(rng.choice(INTERESTING_OTHER)))


def _mutate_tree(rng: random.Random, tree: Any, names: list[str]) -> None:
    slots: list[tuple[Any, Any]] = []
    _slots(tree, slots)
    if not slots:
        return
    container, key = rng.choice(slots)
    value = container[key]
    r = rng.random()
    if r < 0.55:
        subtrees = [c[k] for c, k in rng.sample(slots, min(8, len(slots)))]
        container[key] = _new_value(rng, value, names, subtrees)
    elif r < 0.7:
        del container[key]
    elif r < 0.8 and isinstance(container, list):
        container.insert(rng.randint(0, len(container)), json.loads(json.dumps(value)))  # duplicate
    elif r < 0.9 and isinstance(container, list) and len(container) > 1:
        j = rng.randrange(len(container))
        container[key], container[j] = container[j], container[key]  # reorder
    elif isinstance(container, dict):
        extra = rng.choice(["extra", "name", "op", "inputs", "output", "widths", "kernel", "stride", "groups",
                            "act", "act_alpha", "out_group", "fixed", "shape", "dtype", "data_offsets"])
        container[extra] = _new_value(rng, value, names, [])
    else:
        container[key] = _new_value(rng, value, names, [])


def _mutate_entries(rng: random.Random, header: dict[str, Any], body_size: int) -> None:
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return
    name = rng.choice(names)
    entry = header[name]
    if not isinstance(entry, dict):
        header[name] = _new_value(rng, entry, names, [])
        return
    r = rng.random()
    if r < 0.2:
        entry["dtype"] = rng.choice(DTYPES)
    elif r < 0.45 and isinstance(entry.get("shape"), list):
        shape = entry["shape"]
        s = rng.random()
        if s < 0.3 and shape:
            i = rng.randrange(len(shape))
            shape[i] = rng.choice([shape[i] + 1, shape[i] - 1, 0, shape[i] * 2, rng.choice(INTERESTING_INTS)])
        elif s < 0.5 and shape:
            shape.pop(rng.randrange(len(shape)))
        elif s < 0.7:
            shape.insert(rng.randint(0, len(shape)), rng.choice([1, 1, 2, 0, 1 << 32]))
        else:
            rng.shuffle(shape)
    elif r < 0.75 and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2:
        off = entry["data_offsets"]
        i = rng.randrange(2)
        other = header[rng.choice(names)]
        other_offsets = other.get("data_offsets") if isinstance(other, dict) else None
        choices = [off[i] + rng.choice([-4, 4, -1, 1, 8]), 0, body_size, body_size + 4, -4,
                   rng.choice(INTERESTING_INTS)]
        if isinstance(other_offsets, list) and len(other_offsets) == 2:
            choices.append(other_offsets[i])
        off[i] = rng.choice(choices)
        if rng.random() < 0.2:
            off.reverse()
    elif r < 0.85:
        del header[name]
    elif r < 0.93:
        header[name + rng.choice(["_", ".weight", ""]) + "x"] = json.loads(json.dumps(entry))
    else:
        _mutate_tree(rng, entry, names)


def structured_mutant(rng: random.Random, data: bytes) -> bytes:
    header, body = _split(data)
    meta = header.get("__metadata__", {})
    model = json.loads(meta["slimrt"])
    names = _names(model, header)
    for _ in range(rng.choice([1, 1, 1, 1, 2, 2, 3, 5])):
        r = rng.random()
        if r < 0.68:
            _mutate_tree(rng, model, names)
        elif r < 0.9:
            _mutate_entries(rng, header, len(body))
        elif r < 0.94:
            body = body[:rng.randrange(len(body) + 1)]
        elif r < 0.96:
            body = body + bytes(rng.choice([1, 4, 64, 4096]))
        elif r < 0.98 and body:  # weight values: still a valid model, whose runs must stay sane
            raw = bytearray(body)
            for _ in range(rng.randint(1, 16)):
                i = rng.randrange(0, len(raw) - 3, 4) if len(raw) >= 4 else 0
                raw[i:i + 4] = struct.pack("<f", rng.choice(WEIGHT_VALUES + [rng.uniform(-1e6, 1e6)]))
            body = bytes(raw)
        else:
            _mutate_tree(rng, header, names)
    header["__metadata__"] = meta
    if isinstance(meta, dict):
        meta["slimrt"] = json.dumps(model, allow_nan=True)
    if rng.random() < 0.05:  # the whole header as the tree being edited
        _mutate_tree(rng, header, names)
    out = _join(header, body, pad=rng.random() < 0.9)
    if rng.random() < 0.03:  # the length prefix itself
        (n,) = struct.unpack("<Q", out[:8])
        n = rng.choice([n + 1, n - 1, n + 8, 0, len(out), len(out) - 8, (1 << 64) - 1, 1 << 63])
        out = struct.pack("<Q", n % (1 << 64)) + out[8:]
    return out


def byte_mutant(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    (length,) = struct.unpack("<Q", data[:8])
    head_end = min(len(raw), 8 + length)
    for _ in range(rng.choice([1, 1, 2, 3, 4, 8, 16])):
        if not raw:
            break
        # most edits fall in the header: the tensor data holds only weight values
        pos = rng.randrange(head_end) if rng.random() < 0.85 or head_end >= len(raw) else \
            rng.randrange(head_end, len(raw))
        pos = min(pos, len(raw) - 1)
        r = rng.random()
        if r < 0.3:
            raw[pos] ^= 1 << rng.randrange(8)
        elif r < 0.55:
            raw[pos] = rng.choice(BYTE_VALUES)
        elif r < 0.65:
            raw[pos:pos] = bytes(rng.choice(BYTE_VALUES) for _ in range(rng.randint(1, 8)))
        elif r < 0.75:
            del raw[pos:pos + rng.randint(1, 16)]
        elif r < 0.85:
            n = rng.randint(1, 64)
            raw[pos:pos] = raw[pos:pos + n]
        elif r < 0.9:
            del raw[pos:]
        elif r < 0.95 and pos + 2 < len(raw):  # a digit run replaced: numbers change size
            raw[pos:pos + 1] = str(rng.choice(INTERESTING_INTS)).encode()
        else:
            raw[0:8] = struct.pack("<Q", rng.choice([length + 1, length - 1, length + 8, 0, len(raw),
                                                      (1 << 64) - 1]) % (1 << 64))
    return bytes(raw)


def mutant(seed: int, index: int, seeds: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """Mutant `index` of campaign `seed`: (a description, its bytes)."""
    rng = random.Random(f"slimrt-fuzz:{seed}:{index}")
    name, data = seeds[rng.choice([0, 0, 1, 1, 1, 2, 3])]
    if rng.random() < 0.5:
        return f"{name}/structured", structured_mutant(rng, data)
    return f"{name}/bytes", byte_mutant(rng, data)


# ---------------------------------------------------------------------------------------------
# One mutant through both readers
# ---------------------------------------------------------------------------------------------


def _rss_and_peak() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    rss = hwm = 0
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


class PeakMeter:
    """Bounds the RSS growth of one call by the process peak (VmHWM) after it minus the RSS
    before it. Resetting the peak (clear_refs 5) costs more than most loads, so it is reset
    only when the bound grows past `reset_above`, and a call whose bound exceeds the limit is
    measured again from a fresh peak: the figure is exact for every call that could fail."""

    def __init__(self, reset_above: int = 8 * MIB) -> None:
        self.reset_above = reset_above
        self.works = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _once(self, fn: Callable[[], Any]) -> tuple[Any, BaseException | None, int]:
        before, _ = _rss_and_peak() if self.works else (0, 0)
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as exc:  # judged by the caller
            error = exc
        _, peak = _rss_and_peak() if self.works else (0, 0)
        return result, error, max(0, peak - before)

    def measure(self, fn: Callable[[], Any], limit: int) -> tuple[Any, BaseException | None, int]:
        result, error, growth = self._once(fn)
        if growth > limit and self.works:
            del result
            self._reset()
            result, error, growth = self._once(fn)
        if growth > self.reset_above:
            self._reset()
        return result, error, growth


MAX_RUN_MACS = 300_000_000  # per sample: larger (mutated input sizes) loads, but is not run
MAX_RUN_ELEMENTS = 1 << 22


@dataclass
class Verdict:
    findings: list[str] = field(default_factory=list)
    loaded: bool = False
    runs: int = 0
    skipped_run: bool = False
    peak: int = 0  # bytes, the larger of the two loads


def _profile_summary(core_model: Any) -> list[tuple[str, tuple[int, ...], int, int]]:
    return [(name, tuple(widths), int(macs), int(params)) for name, widths, macs, params in core_model.profiles]


def examine(data: bytes, path: Path, meter: PeakMeter, rng: np.random.Generator) -> Verdict:
    import slimrt
    from slimrt import _core
    from slimrt import format as fmt

    v = Verdict()
    limit = 2 * len(data) + 64 * MIB
    slim, py_err, py_peak = meter.measure(lambda: fmt.read(data), limit)
    core, eng_err, eng_peak = meter.measure(lambda: _core.Model.from_bytes(data), limit)
    v.peak = max(py_peak, eng_peak)
    if py_peak > limit:
        v.findings.append(f"memory: the Python reader's load grew RSS by {py_peak} bytes (limit {limit})")
    if eng_peak > limit:
        v.findings.append(f"memory: the engine's load grew RSS by {eng_peak} bytes (limit {limit})")
    for who, err in (("Python reader", py_err), ("engine", eng_err)):
        if err is not None and not isinstance(err, slimrt.InvalidModelError):
            v.findings.append(f"error: the {who} raised {type(err).__name__}: {err}")
    path.write_bytes(data)
    mapped, map_err, map_peak = meter.measure(lambda: _core.Model.load(str(path)), limit)
    v.peak = max(v.peak, map_peak)
    if map_peak > limit:
        v.findings.append(f"memory: the engine's load of a file grew RSS by {map_peak} bytes (limit {limit})")
    map_text = str(map_err).removeprefix(f"'{path}': ")
    if (mapped is None) != (core is None) or (map_err is not None and eng_err is not None
                                              and map_text != str(eng_err)):
        v.findings.append(f"disagree: engine from bytes {eng_err!r}, from a file {map_err!r}")
    if (slim is None) != (core is None):
        v.findings.append(f"disagree: Python reader {'accepts' if slim is not None else repr(py_err)}, "
                          f"engine {'accepts' if core is not None else repr(eng_err)}")
        return v
    if core is None:
        return v
    v.loaded = True
    meta = slim.meta
    want = []
    try:
        for p in meta["profiles"]:
            macs, params = fmt.profile_cost(slim, p["widths"], profile=p["name"])
            want.append((p["name"], tuple(p["widths"]), macs, params))
    except Exception as exc:
        v.findings.append(f"error: profile_cost of an accepted model raised {type(exc).__name__}: {exc}")
        return v
    got = _profile_summary(core)
    if sorted(got) != sorted(want):
        v.findings.append(f"disagree: profiles (name, widths, MACs, params): engine {got}, Python {want}")
    if tuple(core.input_shape) != tuple(meta["input"]["shape"]):
        v.findings.append(f"disagree: input shape: engine {tuple(core.input_shape)}, "
                          f"Python {meta['input']['shape']}")
    if v.findings:
        return v
    _, c, h, w = core.input_shape
    biggest = max([m for _, _, m, _ in got], default=0)
    if biggest > MAX_RUN_MACS or c * h * w > MAX_RUN_ELEMENTS:
        v.skipped_run = True
        return v
    model = slimrt.engine.Model(core, data)
    session = model.session(1)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    keys: list[Any] = [p.name for p in model.profiles] or [None]
    keys.append(model.min_multiplier)
    for key in keys:
        try:
            y = session.run(x, key)
        except (ValueError, slimrt.ProfileError) as exc:
            v.findings.append(f"error: an accepted model refused to run at {key!r}: {exc}")
            continue
        v.runs += 1
        if y.shape[0] != 1:
            v.findings.append(f"error: run at {key!r} gave batch {y.shape[0]}")
    return v


# ---------------------------------------------------------------------------------------------
# Worker and campaign
# ---------------------------------------------------------------------------------------------


def worker(seed: int, first: int, step: int, end: int, hang_s: float) -> None:
    """Examine mutants first, first + step, ... below end; one line per mutant on stdout:
    index, verdict code, peak bytes, CPU ms[, finding ...] (tab-separated)."""
    seeds = seed_models()
    meter = PeakMeter()
    tmp = os.environ.get("SLIMRT_FUZZ_TMP") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp")
    path = Path(tmp) / f"slimrt-fuzz-{os.getpid()}.slim"
    out = sys.stdout
    try:
        for index in range(first, end, step):
            _, data = mutant(seed, index, seeds)
            start = time.process_time()
            v = examine(data, path, meter, np.random.default_rng([seed, index]))
            cpu = time.process_time() - start
            if cpu > hang_s:
                v.findings.append(f"hang: {cpu:.1f} s of CPU time")
            code = "L" if v.loaded else "R"
            if v.skipped_run:
                code = "S"
            fields = [str(index), code, str(v.peak), f"{cpu * 1000:.2f}", str(v.runs)] + v.findings
            out.write("\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields) + "\n")
            out.flush()
    finally:
        path.unlink(missing_ok=True)


@dataclass
class Tally:
    mutants: int = 0
    loaded: int = 0
    refused: int = 0
    too_large_to_run: int = 0
    runs: int = 0
    peak_bytes: int = 0
    crashes: int = 0
    hangs: int = 0
    sanitizer: int = 0
    disagreements: int = 0
    errors: int = 0
    memory: int = 0
    structured: int = 0
    byte_level: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)

    def total_findings(self) -> int:
        return self.crashes + self.hangs + self.sanitizer + self.disagreements + self.errors + self.memory


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seeds = seed_models()
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.last_report = self.started
        self.stopped = False

    def spawn(self, slot: int, first: int) -> None:
        a = self.args
        if first >= a.first + a.mutants:
            return
        err = open(self.out / f"worker{slot}.stderr", "ab")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seed", str(a.seed),
               "--first", str(first), "--step", str(a.workers), "--end", str(a.first + a.mutants),
               "--hang", str(a.hang)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        os.set_blocking(proc.stdout.fileno(), False)
        self.workers[slot] = {"proc": proc, "next": first, "buf": b"", "seen": time.monotonic(), "err": err,
                              "err_at": err.tell(), "cpu_seen": 0.0, "started": False}
        self.selector.register(proc.stdout, selectors.EVENT_READ, slot)

    def record(self, kind: str, index: int, message: str) -> None:
        t = self.tally
        setattr(t, kind, getattr(t, kind) + 1)
        desc, data = mutant(self.args.seed, index, self.seeds)
        name = f"{kind}-{index}.slim"
        (self.out / name).write_bytes(data)
        if len(t.findings) < 200:
            t.findings.append({"kind": kind, "index": index, "mutant": desc, "file": name, "message": message[:2000]})
        print(f"FINDING {kind} mutant {index} ({desc}): {message[:500]}", flush=True)

    def line(self, slot: int, text: str) -> None:
        parts = text.split("\t")
        index, code, peak, _, runs = int(parts[0]), parts[1], int(parts[2]), parts[3], int(parts[4])
        t = self.tally
        t.mutants += 1
        if "structured" in mutant_kind(self.args.seed, index):
            t.structured += 1
        else:
            t.byte_level += 1
        t.loaded += code in "LS"
        t.refused += code == "R"
        t.too_large_to_run += code == "S"
        t.runs += runs
        t.peak_bytes = max(t.peak_bytes, peak)
        for finding in parts[5:]:
            kind = finding.split(":", 1)[0]
            kind = {"disagree": "disagreements", "hang": "hangs", "memory": "memory"}.get(kind, "errors")
            self.record(kind, index, finding)
        self.workers[slot]["next"] = index + self.args.workers

    def finish_worker(self, slot: int, killed_for_stall: bool) -> None:
        w = self.workers.pop(slot)
        proc = w["proc"]
        self.selector.unregister(proc.stdout)
        if killed_for_stall:
            proc.kill()
        rc = proc.wait()
        rest = proc.stdout.read() or b""
        proc.stdout.close()
        w["err"].close()
        w["buf"] += rest
        for raw in w["buf"].split(b"\n"):
            if raw.strip():
                self.line(slot, raw.decode())
        stderr = (self.out / f"worker{slot}.stderr").read_bytes()[w["err_at"]:].decode(errors="replace")
        index = w["next"]
        sanitized = any(mark in stderr for mark in SANITIZER_MARKS)
        if self.stopped:  # ended by --max-seconds: the mutant in progress is not counted
            return
        if killed_for_stall:
            self.tally.mutants += 1
            self.record("hangs", index, f"no result after {2 * self.args.hang:g} s of CPU time or "
                                        f"{self.args.stall:g} s of wall time; killed")
            self.spawn(slot, index + self.args.workers)
        elif rc != 0:
            self.tally.mutants += 1
            kind = "sanitizer" if sanitized else "crashes"
            self.record(kind, index, f"worker exited with {rc}: {stderr[-1500:]}")
            self.spawn(slot, index + self.args.workers)
        elif sanitized:  # a report that did not end the process
            self.record("sanitizer", index, stderr[-1500:])

    def stalled(self, w: dict[str, Any]) -> bool:
        """A worker is hung when it spent --hang seconds of CPU on one mutant (a worker that
        the machine does not run is not hung), or when nothing came for --stall seconds of wall
        time. Its start (imports, seed models) is not a mutant."""
        if not w["started"]:  # imports and seed models take a few seconds of CPU
            return _cpu_seconds(w["proc"].pid) > 60.0
        if time.monotonic() - w["seen"] > self.args.stall:
            return True
        return _cpu_seconds(w["proc"].pid) - w["cpu_seen"] > 2 * self.args.hang

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.args.report_every:
            return
        self.last_report = now
        t = self.tally
        rate = t.mutants / max(now - self.started, 1e-9)
        print(f"[{now - self.started:8.0f} s] {t.mutants} mutants ({rate:.0f}/s): {t.loaded} loaded, "
              f"{t.refused} refused, {t.runs} runs; findings {t.total_findings()}; "
              f"peak load growth {t.peak_bytes / MIB:.1f} MiB", flush=True)
        self.write_summary()

    def write_summary(self) -> None:
        t = self.tally
        elapsed = time.monotonic() - self.started
        summary = {k: v for k, v in t.__dict__.items() if k != "findings"}
        summary.update(seed=self.args.seed, first=self.args.first, requested=self.args.mutants,
                       workers=self.args.workers, seconds=round(elapsed, 1),
                       rate_per_s=round(t.mutants / max(elapsed, 1e-9), 1),
                       seeds=[(n, len(d)) for n, d in self.seeds], findings=t.findings,
                       memory_limit="2 x file size + 64 MiB per load", hang_cpu_s=self.args.hang)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))

    def run(self) -> int:
        a = self.args
        for slot in range(a.workers):
            self.spawn(slot, a.first + slot)
        while self.workers:
            if a.max_seconds and time.monotonic() - self.started > a.max_seconds and not self.stopped:
                self.stopped = True
                print(f"time budget of {a.max_seconds:.0f} s spent: stopping the workers", flush=True)
                for slot in list(self.workers):
                    self.workers[slot]["proc"].terminate()
                    self.finish_worker(slot, killed_for_stall=False)
                break
            for key, _ in self.selector.select(timeout=1.0):
                slot = key.data
                w = self.workers[slot]
                chunk = w["proc"].stdout.read()
                if not chunk:  # the worker ended
                    self.finish_worker(slot, killed_for_stall=False)
                    continue
                w["seen"] = time.monotonic()
                w["cpu_seen"] = _cpu_seconds(w["proc"].pid)
                w["started"] = True
                w["buf"] += chunk
                *lines, w["buf"] = w["buf"].split(b"\n")
                for raw in lines:
                    self.line(slot, raw.decode())
            for slot in [s for s, w in self.workers.items() if self.stalled(w)]:
                self.finish_worker(slot, killed_for_stall=True)
            self.progress()
        self.progress(force=True)
        t = self.tally
        print(f"mutants {t.mutants} (structured {t.structured}, byte-level {t.byte_level}); loaded by both "
              f"{t.loaded} ({t.too_large_to_run} too large to run), refused by both {t.refused}; runs {t.runs}")
        print(f"crashes {t.crashes}, hangs {t.hangs}, sanitizer reports {t.sanitizer}, disagreements "
              f"{t.disagreements}, reader errors {t.errors}, loads over the memory limit {t.memory}; "
              f"largest peak RSS growth of a load {t.peak_bytes / MIB:.2f} MiB")
        if self.stopped:
            print(f"stopped by --max-seconds after {t.mutants} of {a.mutants} mutants")
        return 0 if t.total_findings() == 0 and (t.mutants >= a.mutants or self.stopped) else 1


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def mutant_kind(seed: int, index: int) -> str:
    rng = random.Random(f"slimrt-fuzz:{seed}:{index}")
    rng.choice([0, 0, 1, 1, 1, 2, 3])
    return "structured" if rng.random() < 0.5 else "bytes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=3000, help="how many mutants (default 3000)")
    parser.add_argument("--seed", type=int, default=14, help="campaign seed (default 14)")
    parser.add_argument("--first", type=int, default=0, help="index of the first mutant (to resume)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--hang", type=float, default=5.0, help="CPU seconds per mutant counted as a hang")
    parser.add_argument("--stall", type=float, default=600.0,
                        help="wall seconds without a result before a worker is killed as hung "
                             "(default 600; CPU time past 2 x --hang kills it sooner)")
    parser.add_argument("--out", default="/tmp/slimrt-fuzz", help="directory for findings and summary.json")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop after this many seconds, reporting what was examined (0: no limit)")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        worker(args.seed, args.first, args.step, args.end, args.hang)
        return 0
    if args.mutants < 1 or args.workers < 1:
        parser.error("--mutants and --workers must be positive")
    return Campaign(args).run()


if __name__ == "__main__":
    sys.exit(main())
