"""Shared pieces of the benchmark suite: models, machine record, timing, writers.

* :func:`prepare_zoo` / :func:`prepare` turn a model into a :class:`BenchModel`: one .slim file
  plus one physically pruned ONNX file per profile, cached under ``bench/results/cache/`` in a
  directory keyed by model name and slimrt version (delete it, or pass ``--rebuild-cache``, to
  convert again).
* :func:`machine_info` is the record every result file carries: CPU model and flags, core count,
  thread counts, package versions, BLAS build, slimrt's conv kernel ISA, load average.
* :func:`interleaved` runs timed tasks round by round in a fresh seeded order each round, so
  slow drifts of a shared machine (neighbours, frequency, thermal) fall on every task alike.
* :func:`format_table`, :func:`write_json`, :func:`save_figure` write the outputs.

Heavy packages (torch, onnxruntime, matplotlib) are imported inside the functions that need
them, so the subprocesses of ``memory`` and ``peak`` stay lean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from matplotlib.figure import Figure

    import slimrt
    from slimrt.format import SlimFile

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
CACHE = RESULTS / "cache"
ZOO_MODELS = ("mobilenet_v2", "resnet18", "resnet50")
WIDTHS = (0.25, 0.5, 0.75, 1.0)
INPUT_SHAPE = (1, 3, 224, 224)
RUNTIMES = ("slimrt", "onnxruntime", "torch")
PACKAGES = ("slimrt", "numpy", "onnxruntime", "torch", "onnx", "matplotlib", "psutil")

K = TypeVar("K", bound=Hashable)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileInfo:
    """One profile as the benchmarks see it: name, MACs per sample, parameters."""

    name: str
    macs: int
    params: int


@dataclass(frozen=True)
class BenchModel:
    """A model ready to benchmark: its .slim file and one pruned ONNX file per profile.

    ``profiles`` are ordered by cost, cheapest first, so ``profiles[-1]`` is the full width.
    """

    name: str
    slim_path: Path
    onnx_paths: dict[str, Path]
    profiles: tuple[ProfileInfo, ...]
    input_shape: tuple[int, int, int, int]
    weight_bytes: int  # bytes of the weights slimrt holds (one packed copy)

    @property
    def full(self) -> ProfileInfo:
        return self.profiles[-1]

    def load(self) -> slimrt.Model:
        import slimrt

        return slimrt.load(self.slim_path)

    def torch_module(self, profile: str) -> torch.nn.Module:
        """The physically pruned PyTorch module of ``profile`` (eval mode)."""
        from slimrt.convert import to_torch

        return to_torch(self.slim_path, profile).eval()

    def input(self, seed: int = 0) -> np.ndarray:
        """A seeded standard-normal input of the model's default shape."""
        return np.random.default_rng(seed).standard_normal(self.input_shape, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slim": str(self.slim_path), "input_shape": list(self.input_shape),
                "weight_bytes": self.weight_bytes, "profiles": [asdict(p) for p in self.profiles]}


def cache_dir(name: str, root: Path = CACHE) -> Path:
    """Where a converted model lives: keyed by model name and slimrt version."""
    import slimrt

    return root / f"{name}-slimrt{slimrt.__version__}"


def prepare(slim: SlimFile | bytes, name: str, directory: Path) -> BenchModel:
    """Write ``slim`` to ``directory/model.slim`` and export every profile to ONNX there.

    Files already present are reused, so the first call converts and later calls only load.
    """
    from slimrt.format import to_bytes

    directory.mkdir(parents=True, exist_ok=True)
    slim_path = directory / "model.slim"
    if not slim_path.exists():
        _atomic_write(slim_path, slim if isinstance(slim, bytes) else to_bytes(slim))
    return _finish(name, directory)


def prepare_zoo(name: str, root: Path = CACHE, rebuild: bool = False,
                progress: Callable[[str], None] | None = None) -> BenchModel:
    """A zoo model (``slimrt.zoo``) at 1x3x224x224, uniform profiles 0.25/0.5/0.75/1.0, cached.

    Weights are the zoo's seeded initialisation (torch seed 0): speed does not depend on
    training, and a fixed seed keeps reruns identical.
    """
    from slimrt import zoo

    if name not in zoo.MODELS:
        raise ValueError(f"unknown zoo model {name!r}; choose from {', '.join(zoo.MODELS)}")
    directory = cache_dir(name, root)
    if rebuild and directory.exists():
        for path in directory.iterdir():
            path.unlink()
    slim_path = directory / "model.slim"
    if not slim_path.exists():
        import torch

        from slimrt.convert import torch_to_slim
        from slimrt.format import to_bytes

        if progress:
            progress(f"converting {name} (cached in {directory})")
        torch.manual_seed(0)
        module = zoo.create(name).eval()
        example = torch.zeros(INPUT_SHAPE)
        slim = torch_to_slim(module, example, WIDTHS, name=name)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(slim_path, to_bytes(slim))
    return _finish(name, directory, progress)


def _finish(name: str, directory: Path, progress: Callable[[str], None] | None = None) -> BenchModel:
    from slimrt.convert import export_onnx

    model = _load(directory / "model.slim")
    onnx_paths: dict[str, Path] = {}
    for p in model.profiles:
        path = directory / f"profile-{p.name}.onnx"
        if not path.exists():
            if progress:
                progress(f"exporting {name} profile {p.name} to ONNX")
            tmp = path.with_suffix(".tmp")
            export_onnx(model, tmp, p.name)
            tmp.replace(path)
        onnx_paths[p.name] = path
    profiles = tuple(ProfileInfo(p.name, p.macs, p.params) for p in model.profiles)
    return BenchModel(name, directory / "model.slim", onnx_paths, profiles,
                      tuple(model.input_shape), model.weight_bytes)  # type: ignore[arg-type]


def _load(path: Path) -> slimrt.Model:
    import slimrt

    return slimrt.load(path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def prepare_models(names: Sequence[str], rebuild: bool = False, log: Callable[[str], None] | None = None
                   ) -> list[BenchModel]:
    return [prepare_zoo(n, rebuild=rebuild, progress=log) for n in names]


# ---------------------------------------------------------------------------------------------
# Runtimes
# ---------------------------------------------------------------------------------------------

def ort_session(path: Path | str, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session as the issue specifies: ``threads`` intra-op threads, one
    inter-op thread, all graph optimizations, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: onnxruntime.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    feed = {name: x}
    return lambda: session.run(None, feed)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the duration of the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(module: torch.nn.Module, x: np.ndarray) -> Callable[[], object]:
    import torch

    tensor = torch.from_numpy(x)

    def run() -> object:
        with torch.inference_mode():
            return module(tensor)

    return run


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """Summary of one task's timings, in milliseconds."""

    n: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float

    @staticmethod
    def of(seconds: Sequence[float]) -> Stats:
        if not seconds:
            raise ValueError("no timings to summarise; use at least one round")
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p10, p50, p90 = np.percentile(ms, [10, 50, 90])
        return Stats(len(ms), float(p50), float(p10), float(p90), float(ms.min()))


def time_call(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (monotonic high-resolution clock)."""
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) * 1e-9


def interleaved(tasks: Mapping[K, Callable[[], object]], rounds: int, warmup: int = 2, seed: int = 0,
                gap_s: float = 0.0, max_seconds: float | None = None, min_rounds: int = 5
                ) -> dict[K, list[float]]:
    """Time every task once per round, up to ``rounds`` rounds; returns seconds per task.

    Each round (warm-up rounds included, which are not recorded) runs the tasks in a fresh
    order drawn from a generator seeded with ``seed``, so no task always follows the same one.
    ``gap_s`` of idle time precedes every timed call, so threads a runtime leaves spinning
    after its call (onnxruntime's pool, OpenMP in torch) go idle before another runtime runs;
    that takes tens of milliseconds with thread pools (see ``Timing.pool_gap_ms``).
    With ``max_seconds``, rounds stop once that much time has passed and at least
    ``min_rounds`` are recorded: a busy machine then yields fewer samples, not a longer run.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    keys = list(tasks)
    order = random.Random(seed)
    samples: dict[K, list[float]] = {k: [] for k in keys}
    start = time.monotonic()
    for r in range(warmup + rounds):
        order.shuffle(keys)
        for k in keys:
            if gap_s > 0:
                time.sleep(gap_s)
            elapsed = time_call(tasks[k])
            if r >= warmup:
                samples[k].append(elapsed)
        done = r + 1 - warmup
        if max_seconds is not None and done >= min_rounds and time.monotonic() - start > max_seconds:
            break
    return samples


class BusyMonitor:
    """CPU time the rest of the machine used while a block ran, in cores (from /proc/stat).

    ``others_cores`` is (busy CPU time of the whole machine - this process's CPU time) / wall
    time: 0 on a quiet machine, near the core count when neighbours keep every core busy.
    None where /proc/stat does not exist.
    """

    def __enter__(self) -> BusyMonitor:
        self.others_cores: float | None = None
        self._start = (time.monotonic(), _machine_busy_s(), _own_cpu_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        busy1 = _machine_busy_s()
        wall = time.monotonic() - wall0
        if busy0 is not None and busy1 is not None and wall > 0:
            self.others_cores = max(0.0, (busy1 - busy0 - (_own_cpu_s() - own0)) / wall)


def _machine_busy_s() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user / nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------------
# Machine record
# ---------------------------------------------------------------------------------------------

def _cpuinfo_field(key: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key) and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    flags = _cpuinfo_field("flags")
    return sorted(flags.split()) if flags else []


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "neon", "asimd")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import slimrt

    versions["slimrt"] = slimrt.__version__
    return versions


def blas_info() -> dict[str, Any]:
    """numpy's BLAS build (name, version, configuration), as numpy reports it."""
    try:
        config = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = config["Build Dependencies"]["blas"]
        return {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as exc:  # noqa: BLE001 - an old numpy only lacks the detail
        return {"error": f"numpy did not report its BLAS: {exc}"}


def machine_info(threads: Sequence[int] | int | None = None) -> dict[str, Any]:
    """Everything a figure needs to be read on another day: CPU, threads, versions."""
    import slimrt._core as core

    flags = cpu_flags()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "flags": flags,
        "threads": list(threads) if isinstance(threads, Sequence) else threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "blas": blas_info(),
        "slimrt_isa": core.isa(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def machine_line(machine: Mapping[str, Any]) -> str:
    """One line for the top of a printed table."""
    p = machine["packages"]
    load = machine.get("loadavg")
    return (f"{machine['cpu']} ({machine['cpu_count']} CPUs; {' '.join(machine['simd'])}); "
            f"slimrt {p['slimrt']} [{machine['slimrt_isa']}], onnxruntime {p['onnxruntime']}, "
            f"torch {p['torch']}, numpy {p['numpy']}"
            + (f"; load average {load[0]:.2f} at start" if load else ""))


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A table column: the row key, its header, and how to format a value (None prints '-')."""

    key: str
    header: str
    fmt: str = "{}"
    align: str = ">"


def _cell(column: Column, row: Mapping[str, Any]) -> str:
    value = row.get(column.key)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return verdict(value)
    return column.fmt.format(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], title: str = "") -> str:
    """A Markdown pipe table with padded columns (readable on a terminal, pasteable in a note).

    Boolean cells print as PASS / FAIL; missing or None cells as '-'.
    """
    cells = [[_cell(c, r) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if c.align == ">" else ("-" * (w + 2))
                          for c, w in zip(columns, widths)) + "|"
    out = [line([c.header for c in columns]), rule] + [line(r) for r in cells]
    return "\n".join(([title, ""] if title else []) + out)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[arg-type]
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def style_accuracy_axes(axes: Any) -> None:
    """The accuracy plots' y label, grid and legend on every axis of ``axes``."""
    for ax in np.atleast_1d(axes).ravel():
        ax.set_ylabel("test accuracy (%), engine")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def save_figure(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2; got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,2; got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated model names such as resnet18,resnet50")
    return names


@dataclass(frozen=True)
class Timing:
    """How a timed benchmark samples: see :func:`interleaved`."""

    rounds: int = 100
    warmup: int = 3
    seed: int = 0
    gap_ms: float = 1.0
    max_seconds: float | None = None
    min_rounds: int = 10
    # The gap when runtimes use thread pools (threads > 1): onnxruntime's workers spin for
    # about 40 ms after a call, torch's OpenMP threads about 10 ms.
    pool_gap_ms: float = 50.0

    def sample(self, tasks: Mapping[K, Callable[[], object]], threads: int = 1) -> dict[K, list[float]]:
        gap_ms = self.gap_ms if threads <= 1 else max(self.gap_ms, self.pool_gap_ms)
        return interleaved(tasks, self.rounds, self.warmup, self.seed, gap_ms * 1e-3,
                           self.max_seconds, self.min_rounds)

    @staticmethod
    def from_args(args: argparse.Namespace) -> Timing:
        return Timing(args.rounds, args.warmup, args.seed, args.gap_ms, args.max_seconds,
                      min(args.min_rounds, args.rounds), args.pool_gap_ms)


def add_common_args(parser: argparse.ArgumentParser, rounds: int, max_seconds: float | None) -> None:
    """Options every benchmark takes: models, threads, sampling, output directory."""
    parser.add_argument("--models", type=name_list, default=list(ZOO_MODELS),
                        help=f"zoo models, comma-separated (default: {','.join(ZOO_MODELS)})")
    parser.add_argument("--threads", type=int_list, default=[1, 2], help="thread counts (default: 1,2)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds (default: {rounds})")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: 3)")
    parser.add_argument("--max-seconds", type=float, default=max_seconds,
                        help="stop a model/thread block's rounds after this long, once --min-rounds "
                             f"are done (default: {max_seconds})")
    parser.add_argument("--min-rounds", type=int, default=10, help="rounds kept whatever --max-seconds says")
    parser.add_argument("--gap-ms", type=float, default=1.0,
                        help="idle time before every timed run, so threads left spinning by the "
                             "previous runtime go idle (default: 1.0)")
    parser.add_argument("--pool-gap-ms", type=float, default=50.0,
                        help="the idle time instead when runs use more than one thread (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input and the run order")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output directory (default: {RESULTS})")
    parser.add_argument("--rebuild-cache", action="store_true",
                        help="convert the models again instead of using bench/results/cache")


def write_result(name: str, result: Result, plot: Callable[[Result, Path], Path], out: Path) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.png`` for a benchmark result into ``out``."""
    return write_json(out / f"{name}.json", result.to_json()), plot(result, out / f"{name}.png")


def publish(table_text: str, paths: Sequence[Path]) -> int:
    """A benchmark's command-line ending: the table on stdout, the files written on stderr."""
    print(table_text, flush=True)
    for path in paths:
        log(f"wrote {path}")
    return 0


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    """What every benchmark returns and writes: the rows of its table plus its context."""

    kind: str
    machine: dict[str, Any]
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": self.kind, "machine": self.machine, "config": self.config,
                "rows": self.rows, **self.extra}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`python -m slimrt.serve MODEL --port P FLAGS` in a subprocess on loopback: started when
    entered (ready once /healthz answers 200, within 120 s), stopped on exit. ``env`` replaces
    the environment of the server when given."""

    def __init__(self, model: str, flags: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "slimrt.serve", model, "--port", str(self.port),
                    "--log-level", "warning", *flags]
        self.log, self.env = log, None if env is None else dict(env)

    def __enter__(self) -> "ServeProcess":
        import subprocess
        import urllib.error
        import urllib.request

        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self._log, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError("the server did not start within 120 s")

    def rss(self) -> int:
        """The server's resident memory, bytes (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc: the memory figure needs Linux")

    def __exit__(self, *exc: object) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
