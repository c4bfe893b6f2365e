"""Load benchmark of `slimrt serve`: adaptive width vs fixed full and fixed smallest width.

Starts the server (`python -m slimrt.serve`, budget policy) on loopback, then drives it with
open-loop Poisson arrivals (each request sent at its scheduled time, whatever the answers do):

  1. rising rates, each for --seconds, once per mode (default: 0.5, 0.75, 1 and 1.25 times the
     throughput the server sustains at full width, measured first with a short closed-loop
     run, so the rates fit the machine as it is, neighbours included);
  2. one run at --contention-load times that rate where a CPU-hungry process (a busy loop;
     --hog-procs for more) starts half way.

Modes: "adaptive" (the server's budget policy picks the width), "full" and "smallest" (the
request asks for the largest / cheapest profile). A request meets the budget when the client
sees its answer within --budget-ms (within_budget: end to end, HTTP and the client's own
delays included; within_budget_server: by the server's clock, from the request reaching the
app to its answer being ready); refused (503) and failed requests miss it. Writes
bench/results/serve_load.{json,png,md} with the machine info and load average, and prints
the table. Bounded: at most --max-requests per run and --seconds per run, loopback only.

The default model is slimrt.models.tiny_resnet at a 160x160 input (the bundled model's
network at a camera-sized input): at the bundled 96x96 a request's inference (1-3 ms) costs
about as much as its Python HTTP handling, so width would barely move throughput; at 160x160
inference is most of the cost of a full-width request, as with real edge models. --model runs
any .slim file instead.

    python bench/serve_load.py [--model PATH] [--budget-ms MS] [--rates 80,160,240,320]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import slimrt
from slimrt.control.stress import CpuHog

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("adaptive", "full", "smallest")
NPY = "application/x-npy"


@dataclass
class Sample:
    """One request: send time (s from the run's start), end-to-end latency (ms), status,
    and the server's profile and timings."""

    t: float
    latency_ms: float
    status: int
    profile: str | None = None
    server_ms: float | None = None
    queue_ms: float | None = None


# ---------------------------------------------------------------------------- server

free_port = common.free_port


class Server(common.ServeProcess):
    """The server under load: the budget policy, optional workers and queue size."""

    def __init__(self, model: str, budget_ms: float, workers: int | None, queue: int | None,
                 log: Path) -> None:
        flags = ["--policy", "budget", "--budget-ms", str(budget_ms)]
        if workers:
            flags += ["--workers", str(workers)]
        if queue is not None:
            flags += ["--queue-size", str(queue)]
        super().__init__(model, flags, log)


# ---------------------------------------------------------------------------- load

def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


class Http:
    """A lean HTTP/1.1 client for the load generator: keep-alive connections to one loopback
    server, one request per connection at a time, opened on demand (at most `limit`).
    Connections idle for longer than `max_idle_s` are dropped before the server's keep-alive
    timeout (uvicorn's default is 5 s) could close them under a request.

    It costs a fraction of a general-purpose client's CPU per request, which matters when the
    generator shares a small machine with the server it measures (as wrk does in C)."""

    def __init__(self, url: str, limit: int = 512, max_idle_s: float = 3.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open = 0
        self.limit = limit
        self.max_idle_s = max_idle_s

    def _reuse(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < self.max_idle_s:
                return reader, writer
            writer.close()
            self.open -= 1
        return None

    async def post(self, target: str, body: bytes, content_type: str
                   ) -> tuple[int, dict[str, str], bytes]:
        conn = self._reuse()
        if conn is not None:
            reader, writer = conn
        elif self.open < self.limit:
            self.open += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.open -= 1
                raise
        else:
            raise ConnectionError("client connection limit reached")
        head = (f"POST {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}"
                f"\r\nAccept: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            writer.close()
            self.open -= 1
            raise ConnectionError(f"request failed: {exc!r}") from None
        if headers.get("connection", "").lower() == "close":
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, headers, payload

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def _one(client: Http, target: str, body: bytes, t: float, out: list[Sample]) -> None:
    start = time.perf_counter()
    try:
        status, h, _ = await client.post(target, body, NPY)
    except ConnectionError:
        out.append(Sample(t, (time.perf_counter() - start) * 1e3, 0))
        return
    ok = status == 200
    out.append(Sample(t, (time.perf_counter() - start) * 1e3, status,
                      h.get("x-slimrt-profile") if ok else None,
                      float(h["x-slimrt-total-ms"]) if ok else None,
                      float(h["x-slimrt-queue-ms"]) if ok else None))


async def open_loop(url: str, body: bytes, params: dict[str, str], rate: float, seconds: float,
                    max_requests: int, seed: int, hog_at: float | None = None,
                    hog_procs: int | None = None) -> list[Sample]:
    """Poisson arrivals at `rate` per second for `seconds` (at most `max_requests`); a CPU
    hog starts at `hog_at` seconds when given."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, size=max_requests))
    times = times[times < seconds]
    target = "/v1/infer" + ("?" + "&".join(f"{k}={v}" for k, v in params.items())
                            if params else "")
    out: list[Sample] = []
    client = Http(url)
    hog = CpuHog(hog_procs, seconds=seconds) if hog_at is not None else None
    tasks = []
    t0 = time.perf_counter()
    try:
        for t in times:
            if hog is not None and not hog.running and t >= hog_at:
                hog.start()
            delay = t0 + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, target, body, float(t), out)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    finally:
        if hog is not None:
            hog.stop()
        client.close()
    return sorted(out, key=lambda s: s.t)


async def capacity(url: str, body: bytes, params: dict[str, str], seconds: float,
                   concurrency: int) -> float:
    """Closed-loop throughput (answers per second) with `concurrency` requests always open."""
    target = "/v1/infer" + ("?" + "&".join(f"{k}={v}" for k, v in params.items())
                            if params else "")
    client = Http(url)
    done = 0
    end = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            status, _, _ = await client.post(target, body, NPY)
            done += status == 200

    start = time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        client.close()
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- summary

def summarize(samples: list[Sample], budget_ms: float, macs: dict[str, int], full_macs: int,
              seconds: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    lat = np.array([s.latency_ms for s in ok]) if ok else np.array([np.nan])
    within = sum(s.latency_ms <= budget_ms for s in ok)
    within_server = sum(s.server_ms is not None and s.server_ms <= budget_ms for s in ok)
    served = [macs[s.profile] for s in ok if s.profile in macs]
    return {
        "sent": len(samples),
        "answered": len(ok),
        "refused": sum(s.status == 503 for s in samples),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "within_budget": within / max(1, len(samples)),
        "within_budget_server": within_server / max(1, len(samples)),
        "goodput_rps": within / seconds,
        "avg_mmacs": float(np.mean(served)) / 1e6 if served else float("nan"),
        "avg_width": float(np.mean(served)) / full_macs if served else float("nan"),
    }


def machine_info(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import fastapi
    import uvicorn
    return {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "slimrt": slimrt.__version__,
        "numpy": np.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__, "model": model.name, "input_shape": list(model.input_shape),
        "threads_per_session": 1, "workers": args.workers or "default (cores)",
    }


TABLE_COLUMNS = ("phase", "rate", "mode", "sent", "refused", "p50_ms", "p99_ms",
                 "within_budget", "within_budget_server", "goodput_rps", "avg_mmacs", "avg_width")


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(key: str, v: Any) -> str:
        if key.startswith("within_budget"):
            return f"{100 * v:.1f}%"
        if key == "avg_width":
            return f"{100 * v:.0f}%"
        if isinstance(v, float):
            return f"{v:.1f}" if key != "avg_mmacs" else f"{v:.2f}"
        return str(v)
    head = "| " + " | ".join(TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(fmt(k, r[k]) for k in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def plot(runs: dict[str, list[Sample]], budget_ms: float, hog_at: float, macs: dict[str, int],
         full_macs: int, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_w) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = {"adaptive": "tab:green", "full": "tab:red", "smallest": "tab:blue"}
    for mode, samples in runs.items():
        ok = [s for s in samples if s.status == 200]
        ax_lat.scatter([s.t for s in ok], [s.latency_ms for s in ok], s=4, alpha=0.5,
                       color=colors[mode], label=mode)
        refused = [s.t for s in samples if s.status != 200]
        if refused:
            ax_lat.scatter(refused, [budget_ms * 0.05] * len(refused), marker="x", s=10,
                           color=colors[mode], label=f"{mode}: refused")
        t = np.array([s.t for s in ok if s.profile is not None])
        w = np.array([macs[s.profile] / full_macs for s in ok if s.profile is not None])
        if len(t):
            k = max(1, len(t) // 60)
            smooth = np.convolve(w, np.ones(k) / k, mode="valid")
            ax_w.plot(t[k - 1:], 100 * smooth, color=colors[mode], label=mode)
    for ax in (ax_lat, ax_w):
        ax.axvline(hog_at, color="k", linestyle=":", label="CPU hog starts")
    ax_lat.axhline(budget_ms, color="k", linestyle="--", label="budget")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("end-to-end latency (ms)")
    ax_lat.legend(loc="upper left", fontsize=7, ncol=3)
    ax_w.set_ylabel("MACs served (% of full)")
    ax_w.set_xlabel("time (s)")
    ax_w.set_ylim(0, 105)
    ax_w.legend(loc="lower left", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main

def params_for(mode: str, names: list[str]) -> dict[str, str]:
    return {"adaptive": {}, "full": {"profile": names[-1]}, "smallest": {"profile": names[0]}}[mode]


def done_when(rows: list[dict[str, Any]]) -> str:
    """The issue's criterion at the lowest rate where fixed full width meets the budget for
    less than half of the requests: adaptive meets it for >= 99% with more MACs than fixed
    smallest. Judged on the client's clock, and on the server's."""
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["phase"] == "rates":
            by_rate.setdefault(r["rate"], {})[r["mode"]] = r
    for rate in sorted(by_rate):
        m = by_rate[rate]
        if m["full"]["within_budget"] < 0.5:
            a, s, f = m["adaptive"], m["smallest"], m["full"]
            wider = a["avg_mmacs"] > s["avg_mmacs"]
            verdicts = [f"{clock} clock: {'met' if a[key] >= 0.99 and wider else 'NOT met'}"
                        for clock, key in (("client", "within_budget"),
                                           ("server", "within_budget_server"))]
            return (f"at {rate:g} req/s fixed full width meets the budget for "
                    f"{100 * f['within_budget']:.1f}% of requests (server clock "
                    f"{100 * f['within_budget_server']:.1f}%); adaptive for "
                    f"{100 * a['within_budget']:.1f}% (server clock "
                    f"{100 * a['within_budget_server']:.1f}%) at {a['avg_mmacs']:.2f} MMACs on "
                    f"average (fixed smallest: {s['avg_mmacs']:.2f}). Criterion: "
                    + "; ".join(verdicts))
    return "no rate tried overloads fixed full width; add higher --rates"


def default_model(out: Path, hw: int) -> str:
    from slimrt.format import write
    from slimrt.models import tiny_resnet
    path = out / f"tiny_resnet_{hw}.slim"
    if not path.exists():
        write(tiny_resnet(seed=0, input_hw=(hw, hw)), path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .slim model (default: see above)")
    ap.add_argument("--input-hw", type=int, default=160,
                    help="input size of the default model (default 160)")
    ap.add_argument("--budget-ms", type=float, default=None,
                    help="latency budget (default: 3 x the calibrated full-width latency)")
    ap.add_argument("--rates", default=None, help="comma-separated request rates (req/s)")
    ap.add_argument("--loads", default="0.5,0.75,1,1.25",
                    help="rates as multiples of the full-width capacity, when no --rates")
    ap.add_argument("--contention-load", type=float, default=0.7,
                    help="rate of phase 2 as a multiple of the full-width capacity")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase-1 run")
    ap.add_argument("--contention-seconds", type=float, default=12.0)
    ap.add_argument("--max-requests", type=int, default=5000, help="cap per run")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--queue-size", type=int, default=None)
    ap.add_argument("--hog-procs", type=int, default=1,
                    help="busy-loop processes of the CPU hog (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from slimrt.control.latency import load_or_calibrate
    from slimrt.serve.pool import default_workers

    load_before = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = args.model or default_model(out, args.input_hw)
    model = slimrt.load(model_path)
    names = [p.name for p in model.profiles]
    macs = {p.name: int(p.macs) for p in model.profiles}
    full = macs[names[-1]]
    from slimrt.serve.app import ServeConfig

    # the server reads this cache entry (same threads and batch sizes)
    latency = load_or_calibrate(model, refresh=True,
                                batches=ServeConfig().calibration_batches())
    full_ms = latency.base_mean_ms[-1]
    budget = args.budget_ms or round(3 * full_ms, 1)
    workers = args.workers or default_workers()
    x = np.random.default_rng(args.seed).standard_normal(model.input_shape).astype(np.float32)
    body = npy(x)
    rows: list[dict[str, Any]] = []
    timeline: dict[str, list[Sample]] = {}

    with Server(model_path, budget, args.workers, args.queue_size,
                out / "serve_load.server.log") as server:
        info = httpx.get(server.url + "/v1/profiles").json()
        measured = {mode: asyncio.run(capacity(server.url, body, params_for(mode, names), 2.0,
                                               2 * workers))
                    for mode in ("full", "smallest")}
        cap = measured["full"]
        rates = ([float(r) for r in args.rates.split(",")] if args.rates else
                 [round(float(f) * cap) for f in args.loads.split(",")])
        c_rate = round(args.contention_load * cap)
        print(f"{model.name} {list(model.input_shape)}: full width {full_ms:.2f} ms, smallest "
              f"{latency.base_mean_ms[0]:.2f} ms (calibrated); measured throughput full "
              f"{cap:.0f} req/s, smallest {measured['smallest']:.0f} req/s; budget {budget:g} "
              f"ms; rates {rates}; contention run at {c_rate} req/s", flush=True)
        for i, rate in enumerate(rates):
            for j, mode in enumerate(MODES):
                samples = asyncio.run(open_loop(server.url, body, params_for(mode, names), rate,
                                                args.seconds, args.max_requests,
                                                args.seed + 10 * i + j))
                row = {"phase": "rates", "rate": rate, "mode": mode,
                       **summarize(samples, budget, macs, full, args.seconds)}
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
        hog_at = args.contention_seconds / 2
        for j, mode in enumerate(MODES):
            samples = asyncio.run(open_loop(server.url, body, params_for(mode, names), c_rate,
                                            args.contention_seconds, args.max_requests,
                                            args.seed + 100 + j, hog_at, args.hog_procs))
            timeline[mode] = samples
            for phase, part in (("hog: before", [s for s in samples if s.t < hog_at]),
                                ("hog: after", [s for s in samples if s.t >= hog_at])):
                row = {"phase": phase, "rate": c_rate, "mode": mode,
                       **summarize(part, budget, macs, full, hog_at)}
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)

    machine = machine_info(args, model)
    machine["loadavg_before"] = [round(v, 2) for v in load_before]
    machine["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    verdict = done_when(rows)
    text = table(rows)
    title = (f"slimrt serve, {model.name} {'x'.join(map(str, model.input_shape[2:]))}, "
             f"budget {budget:g} ms, hog at {c_rate:g} req/s, "
             f"{machine['cpu_count']} cores ({machine['cpu']})")
    plot(timeline, budget, hog_at, macs, full, out / "serve_load.png", title)
    result = {"machine": machine, "args": vars(args), "budget_ms": budget,
              "throughput_rps": measured, "profiles": info["profiles"], "rows": rows,
              "verdict": verdict,
              "timeline": {m: [asdict(s) for s in v] for m, v in timeline.items()}}
    (out / "serve_load.json").write_text(json.dumps(result, indent=1))
    loads = (f"load average (1, 5, 15 min) before {machine['loadavg_before']}, "
             f"after {machine['loadavg_after']}; the bench itself adds about 2")
    (out / "serve_load.md").write_text(f"{title}\n\n{text}\n\n{verdict}\n\n{loads}\n")
    print()
    print(title)
    print(loads)
    print(text)
    print(verdict)
    print(f"wrote {out / 'serve_load.json'}, {out / 'serve_load.png'}, {out / 'serve_load.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
