"""Abusive and heavy clients against `slimrt serve`, on loopback: what they cost the server.

Starts `python -m slimrt.serve` (the bundled model, its default policy and limits unless told
otherwise) on a free loopback port and measures, from this process:

  1. slow clients, all at once: `--slowloris` connections sending one byte of a header every
     `--drip-s` (never a complete head), `--partial` connections sending part of a head and
     then nothing, `--stalled` requests sending their headers and 1 KiB of a 1 MiB body, and
     `--idle` connections sending nothing. Each must be closed by the server within its
     timeout (header or body) plus one second; the figure is when, and what it answered
     (408 for a partial head or a stalled body, nothing for silence);
  2. `--uploaders` clients each uploading `--upload-rounds` JSON bodies of the largest batch
     that fits the body limit (about 16 MiB; one upload first, unmeasured) while a probe in
     a process of its own asks for /healthz every 10 ms on a kept-alive connection: the
     probe's p50 / p99 / max (target p99 < 50 ms); then `--idle-requests` small requests
     with a budget of 10 calibrated full-width runs, of which all should run at full width
     (the uploads did not poison the controller), next to the same requests sent before the
     uploads (a busy machine may not give them full width either);
  3. overload: `--flood` clients in closed loop sending batches of 32 at full width (with
     `Expect: 100-continue`, so a refused body is never sent; a refused client retries after
     20 ms) for `--overload-s` seconds, while a probe in a process of its own sends such a
     head every 10 ms: the figure is the latency of the probe's 503 answers, from the head
     sent to the status line read;
  4. memory: the server's resident set size after 1,000 warm-up requests and after
     `--rss-requests` more (a mix of widths, multipliers, input sizes, JSON and .npy, bad
     requests, aborted uploads, /healthz and /metrics) from 8 clients.

Everything is bounded in count and time and stays on 127.0.0.1. Prints the table and writes
bench/results/serve_abuse.{json,png} (with the machine record and the server's flags).

    python bench/serve_abuse.py [--header-timeout 10] [--body-timeout 10] [--rss-requests 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import common
from common import Column, Result

HEAD = (b"POST /v1/infer HTTP/1.1\r\nHost: slimrt\r\nContent-Type: application/x-npy\r\n")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: slimrt\r\n\r\n"
MB = 1024 * 1024
PARTS = ("slow", "uploads", "overload", "memory")


# ---------------------------------------------------------------------------- the server

free_port = common.free_port


class Server(common.ServeProcess):
    """The server under abuse, without an API key from the environment."""

    def __init__(self, model: str, flags: list[str], log: Path) -> None:
        super().__init__(model, flags, log, {k: v for k, v in os.environ.items() if k != "SLIMRT_API_KEY"})


# ---------------------------------------------------------------------------- raw HTTP

async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer (status, headers, body) with a Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:])
               if k}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split(" ", 2)[1]), headers, body


async def request(port: int, data: bytes, timeout: float = 30.0
                  ) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(read_answer(reader), timeout)
    finally:
        writer.close()


async def until_closed(reader: asyncio.StreamReader, limit_s: float
                       ) -> tuple[bytes, float | None]:
    """What the server sends until it closes, and after how many seconds (None: open)."""
    start = time.monotonic()
    data = b""
    while True:
        left = start + limit_s - time.monotonic()
        if left <= 0:
            return data, None
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            return data, None
        except ConnectionError:
            chunk = b""
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def status_of(data: bytes) -> int | None:
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---------------------------------------------------------------------------- 1. slow clients

async def slow_clients(port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    bound = max(args.header_timeout, args.body_timeout) + 5.0

    async def slowloris() -> tuple[bytes, float | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/infer HTTP/1.1\r\nHost: slimrt\r\nX-Slow: ")
        start = time.monotonic()
        data = b""
        try:
            while time.monotonic() - start < bound:
                try:
                    writer.write(b"a")
                    await writer.drain()
                except ConnectionError:
                    break
                more, closed = await until_closed(reader, args.drip_s)
                data += more
                if closed is not None:
                    return data, time.monotonic() - start
            return data, None
        finally:
            writer.close()

    async def partial(i: int) -> tuple[bytes, float | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD[:16 + i % 40])
        try:
            return await until_closed(reader, bound)
        finally:
            writer.close()

    async def stalled() -> tuple[bytes, float | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % MB + b"\0" * 1024)
        try:
            return await until_closed(reader, bound)
        finally:
            writer.close()

    async def idle() -> tuple[bytes, float | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await until_closed(reader, bound)
        finally:
            writer.close()

    # a stalled body holds a place in the queue until its timeout: beyond the capacity,
    # the next ones are refused at once (503), and their connections closed at the timeout
    cases = [("slowloris (1 header byte per %g s)" % args.drip_s, args.header_timeout,
              [slowloris() for _ in range(args.slowloris)], {408}),
             ("partial request heads", args.header_timeout,
              [partial(i) for i in range(args.partial)], {408}),
             ("stalled bodies (1 KiB of 1 MiB)", args.body_timeout,
              [stalled() for _ in range(args.stalled)], {408, 503}),
             ("idle connections", args.header_timeout, [idle() for _ in range(args.idle)],
              {None})]
    results = await asyncio.gather(*(asyncio.gather(*c[2]) for c in cases))
    rows = []
    for (name, timeout, _, want), got in zip(cases, results):
        times = [t for _, t in got if t is not None]
        statuses = [status_of(d) if d else None for d, _ in got]
        in_time = sum(t is not None and t <= timeout + 1.0 for _, t in got)
        seen = ", ".join(f"{'nothing' if k is None else k} x{statuses.count(k)}"
                         for k in sorted(set(statuses), key=lambda v: v or 0))
        rows.append({
            "case": name, "clients": len(got), "figure": "closed within timeout + 1 s",
            "value": f"{in_time}/{len(got)} (max {max(times):.2f} s)" if times
                     else f"0/{len(got)}",
            "detail": f"answered {seen}; timeout {timeout:g} s; median close "
                      f"{pct(times, 50):.2f} s",
            "target": "all, answered " + " or ".join("nothing" if k is None else str(k)
                                                     for k in sorted(want, key=lambda v: v or 0)),
            "ok": in_time == len(got) and all(k in want for k in statuses),
            "close_s": times, "still_open": len(got) - len(times)})
    return rows


# ---------------------------------------------------------------------------- 2. large uploads

async def large_uploads(port: int, args: argparse.Namespace, model: Any,
                        profiles: dict[str, Any]) -> list[dict[str, Any]]:
    c, h, w = model.input_shape[1:]
    rng = np.random.default_rng(args.seed)
    one = len(json.dumps(rng.standard_normal((1, c, h, w)).tolist()))
    batch = max(1, min(args.max_batch, int(args.max_body_mb * MB * 0.98) // (one + 2)))
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    body = json.dumps(x.tolist()).encode()
    head = (b"POST /v1/infer HTTP/1.1\r\nHost: slimrt\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    uploads: list[tuple[int, dict[str, Any]]] = []

    async def uploader() -> None:
        for _ in range(args.upload_rounds):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            writer.write(body)
            status, _, answer = await asyncio.wait_for(read_answer(reader), 120)
            writer.close()
            out = json.loads(answer)
            uploads.append((status, out.get("timing_ms") or {"error": out.get("error")}))

    # the probe runs in a process of its own: in this one, the uploads' own work would
    # delay its clock as much as the server's
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    prober = context.Process(target=probe_healthz, args=(port, 0.01, stop, results))
    prober.start()
    if results.get(timeout=60) != "ready":
        raise RuntimeError("the /healthz probe did not start")
    full = profiles["profiles"][-1]
    budget = 10 * full["latency_ms"]["calibrated_tail_ms"] + 5.0
    small = npy(rng.standard_normal((1, c, h, w)).astype(np.float32))
    idle_head = (b"POST /v1/infer?budget_ms=%.3f HTTP/1.1\r\nHost: slimrt\r\nContent-Type: "
                 b"application/x-npy\r\nAccept: application/x-npy\r\nContent-Length: %d\r\n"
                 b"\r\n" % (budget, len(small)))

    async def idle_requests() -> tuple[list[str | None], list[dict[str, Any]]]:
        """`--idle-requests` one at a time, 20 ms apart: the profiles and the decisions."""
        chosen = []
        for _ in range(args.idle_requests):
            _, headers, _ = await request(port, idle_head + small)
            chosen.append(headers.get("x-slimrt-profile"))
            await asyncio.sleep(0.02)
        decisions = json.loads((await request(
            port, b"GET /v1/decisions?limit=%d HTTP/1.1\r\nHost: s\r\n\r\n"
            % args.idle_requests))[2])
        return chosen, decisions

    before, _ = await idle_requests()  # the same machine, before any upload
    warm = await request(port, head + body, timeout=120)  # first large run: arena, caches
    if warm[0] != 200:
        raise RuntimeError(f"a {len(body) / MB:.1f} MiB upload was answered {warm[0]}: "
                           f"{warm[2][:200]!r}")
    tasks = [asyncio.create_task(uploader()) for _ in range(args.uploaders)]
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    stop.set()
    latencies: list[float] = results.get(timeout=30)
    prober.join(30)
    await asyncio.sleep(0.2)
    chosen, decisions = await idle_requests()
    reasons = sorted({d["reason"] for d in decisions})
    queued = [d["signals"].get("queued_ms", 0.0) for d in decisions]
    slowdown = [d["signals"].get("slowdown", float("nan")) for d in decisions]
    served = [t for s, t in uploads if s == 200]
    p99 = pct(latencies, 99)
    return [
        {"case": f"/healthz during {args.uploaders} x {args.upload_rounds} JSON uploads of "
                 f"{len(body) / MB:.1f} MiB", "clients": args.uploaders + 1,
         "figure": "/healthz p99", "value": f"{p99:.1f} ms",
         "detail": f"p50 {pct(latencies, 50):.1f}, max {max(latencies):.1f} ms, n "
                   f"{len(latencies)}; uploads {len(served)}/{len(uploads)} answered 200, "
                   f"receive {pct([t['receive'] for t in served], 50):.0f} / parse "
                   f"{pct([t['parse'] for t in served], 50):.0f} / inference "
                   f"{pct([t['inference'] for t in served], 50):.0f} ms (median)",
         "target": "< 50 ms", "ok": p99 < 50 and len(served) == len(uploads),
         "healthz_ms": latencies, "uploads": [t for _, t in uploads], "batch": batch},
        {"case": "idle requests after the uploads", "clients": 1,
         "figure": "at full width", "value": f"{chosen.count(full['name'])}/{len(chosen)}",
         "detail": f"before the uploads {before.count(full['name'])}/{len(before)}; budget "
                   f"{budget:.1f} ms (10 calibrated full-width runs + 5 ms); after: queued "
                   f"{pct(queued, 50):.1f} ms, table slowdown {pct(slowdown, 50):.2f} "
                   f"(median); reasons: " + "; ".join(reasons),
         "target": "all", "ok": chosen.count(full["name"]) == len(chosen), "chosen": chosen,
         "chosen_before": before, "decisions": decisions},
    ]


def probe_healthz(port: int, interval_s: float, stop: Any, results: Any) -> None:
    """GET /healthz every `interval_s` on one kept-alive connection until `stop` is set
    (at most 10 minutes); puts "ready", then the latencies in ms, on `results`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    out: list[float] = []
    results.put("ready")
    end = time.monotonic() + 600
    try:
        while not stop.is_set() and time.monotonic() < end:
            start = time.perf_counter()
            sock.sendall(HEALTHZ)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n")
                              if line.startswith(b"content-length")))
            while len(body) < length:
                body += sock.recv(65536)
            out.append((time.perf_counter() - start) * 1e3)
            time.sleep(interval_s)
    finally:
        sock.close()
        results.put(out)


# ---------------------------------------------------------------------------- 3. overload

async def overload(port: int, args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    c, h, w = model.input_shape[1:]
    body = npy(np.random.default_rng(args.seed).standard_normal((32, c, h, w)).astype(np.float32))
    head = (b"POST /v1/infer?profile=%d HTTP/1.1\r\nHost: slimrt\r\nContent-Type: "
            b"application/x-npy\r\nAccept: application/x-npy\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(model.profiles) - 1, len(body)))
    flood_refused = 0
    served: list[float] = []
    end = time.monotonic() + args.overload_s

    async def client() -> None:
        """Closed loop: a refused client retries after 20 ms (as Retry-After asks, sooner)."""
        nonlocal flood_refused
        reader = writer = None
        while time.monotonic() < end and flood_refused + len(served) < args.overload_max:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.perf_counter()
            status, answer = await expect_continue(reader, writer, head, body)
            if status == 200:
                served.append((time.perf_counter() - start) * 1e3)
                continue
            flood_refused += status == 503
            writer.close()  # the body it declared was never sent: start a new connection
            reader = writer = None
            await asyncio.sleep(0.02)
        if writer is not None:
            writer.close()

    # the probe runs in a process of its own, so that its clock measures the server only
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    prober = context.Process(target=probe_admission, args=(port, head, 0.01, stop, results))
    prober.start()
    if results.get(timeout=60) != "ready":
        raise RuntimeError("the admission probe did not start")
    await asyncio.gather(*(client() for _ in range(args.flood)))
    stop.set()
    refused, admitted, health = results.get(timeout=30)
    prober.join(30)
    p99 = pct(refused, 99)
    return [{"case": f"overload: {args.flood} clients, batches of 32 at full width, and a "
                     f"probe every 10 ms", "clients": args.flood + 1,
             "figure": "503 p99 (head sent to status)", "value": f"{p99:.2f} ms",
             "detail": f"p50 {pct(refused, 50):.2f} ms over {len(refused)} probes refused "
                       f"({admitted} admitted); /healthz on a new connection meanwhile: p50 "
                       f"{pct(health, 50):.2f}, p99 {pct(health, 99):.2f} ms; the flood: "
                       f"{flood_refused} refused, {len(served)} served (p50 "
                       f"{pct(served, 50):.0f} ms) in {args.overload_s:g} s",
             "target": "< 50 ms, about /healthz's",
             "ok": bool(refused) and p99 < 50 and p99 < 2 * pct(health, 99) + 1,
             "refused_ms": refused, "served_ms": served, "probe_healthz_ms": health}]


async def expect_continue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send a head with `Expect: 100-continue`; the body only if the server asks for it."""
    writer.write(head)
    line = await reader.readuntil(b"\r\n\r\n")
    if line.startswith(b"HTTP/1.1 100"):
        writer.write(body)
        status, _, answer = await read_answer(reader)
        return status, answer
    length = int(next((x.split(b":")[1] for x in line.lower().split(b"\r\n")
                       if x.startswith(b"content-length")), b"0"))
    return status_of(line) or 0, await reader.readexactly(length)


def probe_admission(port: int, head: bytes, interval_s: float, stop: Any, results: Any) -> None:
    """Every `interval_s` until `stop` is set (at most 10 minutes), on a new connection each
    time and alternately: send `head` (with Expect: 100-continue), or GET /healthz, and time
    the first line of the answer. Puts "ready", then (latencies in ms of the 503 answers,
    count of heads admitted, latencies of /healthz) on `results`. /healthz is the cheapest
    request there is: what it takes is the server's floor at that moment."""
    refused: list[float] = []
    health: list[float] = []
    admitted = 0
    results.put("ready")
    end = time.monotonic() + 600
    k = 0
    while not stop.is_set() and time.monotonic() < end:
        k += 1
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            start = time.perf_counter()
            sock.sendall(head if k % 2 else HEALTHZ)
            data = b""
            while b"\r\n" not in data:
                data += sock.recv(65536)
            elapsed = (time.perf_counter() - start) * 1e3
        if not k % 2:
            health.append(elapsed)
        elif data.startswith(b"HTTP/1.1 503"):
            refused.append(elapsed)
        else:
            admitted += 1  # 100 Continue: it was given a place, and the body is not sent
        time.sleep(interval_s)
    results.put((refused, admitted, health))


# ---------------------------------------------------------------------------- 4. memory

async def memory(server: Server, args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    c, h, w = model.input_shape[1:]
    rng = np.random.default_rng(args.seed)
    names = [p.name for p in model.profiles]
    sizes = [(h, w), (h // 2, w // 2), (h + 32, w), (64, 80)]
    bodies = {hw: npy(rng.standard_normal((1, c, *hw)).astype(np.float32)) for hw in sizes}
    js = json.dumps({"input": rng.standard_normal((1, c, h, w)).tolist()}).encode()

    def one(i: int) -> bytes:
        kind = i % 10
        if kind < 5:  # width by name, index or multiplier, at several input sizes
            hw = sizes[i % len(sizes)]
            key = (names[i % len(names)] if kind < 3
                   else f"{rng.uniform(model.min_multiplier, 1):.4f}")
            return (b"POST /v1/infer?profile=%s HTTP/1.1\r\nHost: s\r\nContent-Type: "
                    b"application/x-npy\r\nContent-Length: %d\r\n\r\n"
                    % (key.encode(), len(bodies[hw]))) + bodies[hw]
        if kind == 5:
            return (b"POST /v1/infer?budget_ms=20 HTTP/1.1\r\nHost: s\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n" % len(js)) + js
        if kind == 6:
            return (b"POST /v1/infer HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 6\r\n\r\n[[1, 2")
        if kind == 7:
            return b"GET /nope/%d HTTP/1.1\r\nHost: s\r\n\r\n" % i
        if kind == 8:
            return b"GET /metrics HTTP/1.1\r\nHost: s\r\n\r\n"
        return HEALTHZ

    async def client(k: int, count: int, counts: dict[int, int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for i in range(k, count, 8):
            if i % 200 == 199:  # an aborted upload now and then
                r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
                w2.write(HEAD + b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000)
                await w2.drain()
                w2.close()
            writer.write(one(i))
            status, _, _ = await read_answer(reader)
            counts[status] = counts.get(status, 0) + 1
        writer.close()

    async def run(count: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        await asyncio.gather(*(client(k, count, counts) for k in range(8)))
        return counts

    await run(1000)
    before = server.rss()
    start = time.monotonic()
    counts = await run(args.rss_requests)
    seconds = time.monotonic() - start
    await asyncio.sleep(0.5)
    after = server.rss()
    growth = (after - before) / MB
    return [{"case": f"RSS over {args.rss_requests:,} requests", "clients": 8,
             "figure": "growth", "value": f"{growth:+.1f} MiB",
             "detail": f"{before / MB:.0f} -> {after / MB:.0f} MiB after 1,000 warm-up "
                       f"requests; {args.rss_requests / seconds:.0f} req/s; answers "
                       + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
             "target": "< 10 MiB", "ok": growth < 10, "rss_before": before,
             "rss_after": after, "answers": counts}]


# ---------------------------------------------------------------------------- output

COLUMNS = [Column("case", "case", align="<"), Column("clients", "clients"),
           Column("figure", "figure", align="<"), Column("value", "value"),
           Column("target", "target", align="<"), Column("ok", "ok"),
           Column("detail", "detail", align="<")]


def table(result: Result) -> str:
    return common.format_table(result.rows, COLUMNS, title=(
        f"slimrt serve under abuse, loopback ({' '.join(result.config['server_flags'])})\n"
        + common.machine_line(result.machine)))


def plot(result: Result, path: Path) -> Path:
    fig, axes = common.figure(2, 1, (5.5, 4.0))
    ax = axes[0][0]
    slow = [r for r in result.rows if "close_s" in r]
    for k, r in enumerate(slow):
        ax.scatter(r["close_s"], [k] * len(r["close_s"]), s=6, alpha=0.5)
    ax.set_yticks(range(len(slow)), [r["case"].split(" (")[0] for r in slow], fontsize=7)
    ax.set_xlabel("seconds until the server closed the connection")
    ax.set_title("slow clients", fontsize=9)
    ax = axes[0][1]
    for r in result.rows:
        for key, label in (("healthz_ms", "/healthz during uploads"),
                           ("refused_ms", "503 under overload"),
                           ("probe_healthz_ms", "/healthz under overload")):
            if key in r and r[key]:
                v = np.sort(r[key])
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
    ax.axvline(50, color="k", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of answers")
    ax.legend(fontsize=7)
    ax.set_title("latency of cheap answers under load", fontsize=9)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .slim model (default: the bundled one)")
    ap.add_argument("--header-timeout", type=float, default=10.0)
    ap.add_argument("--body-timeout", type=float, default=10.0)
    ap.add_argument("--max-body-mb", type=float, default=16.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--slowloris", type=int, default=5)
    ap.add_argument("--drip-s", type=float, default=1.0)
    ap.add_argument("--partial", type=int, default=500)
    ap.add_argument("--stalled", type=int, default=20)
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--uploaders", type=int, default=4)
    ap.add_argument("--upload-rounds", type=int, default=3)
    ap.add_argument("--idle-requests", type=int, default=20)
    ap.add_argument("--flood", type=int, default=16)
    ap.add_argument("--overload-s", type=float, default=5.0)
    ap.add_argument("--overload-max", type=int, default=50_000, help="cap on overload requests")
    ap.add_argument("--rss-requests", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None,
                    help="the server's --workers (default: its own, cores / threads)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--only takes some of {', '.join(PARTS)}, got {args.only!r}")

    import slimrt
    from slimrt.models import default_model_path

    model_path = args.model or str(default_model_path())
    model = slimrt.load(model_path)
    flags = ["--header-timeout", str(args.header_timeout), "--body-timeout",
             str(args.body_timeout), "--max-body-mb", str(args.max_body_mb),
             "--max-batch", str(args.max_batch)]
    if args.workers is not None:
        flags += ["--workers", str(args.workers)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # a fresh calibration: a cached table may come from a busier (or quieter) hour
    with tempfile.TemporaryDirectory(prefix="slimrt-abuse-cache-") as cache, \
            Server(model_path, [*flags, "--latency-cache", cache],
                   args.out / "serve_abuse.server.log") as server:
        profiles = json.loads(asyncio.run(request(
            server.port, b"GET /v1/profiles HTTP/1.1\r\nHost: s\r\n\r\n"))[2])
        if "slow" in parts:
            common.log("slow clients ...")
            rows += asyncio.run(slow_clients(server.port, args))
        if "uploads" in parts:
            common.log("large uploads ...")
            rows += asyncio.run(large_uploads(server.port, args, model, profiles))
        if "overload" in parts:
            common.log("overload ...")
            rows += asyncio.run(overload(server.port, args, model))
        if "memory" in parts:
            common.log("memory ...")
            rows += asyncio.run(memory(server, args, model))
    result = Result("serve_abuse", common.machine_info(1),
                    {"model": model.name, "model_path": model_path, "server_flags": flags,
                     "args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()}},
                    rows)
    paths = [common.write_json(args.out / "serve_abuse.json", result.to_json()),
             plot(result, args.out / "serve_abuse.png")]
    return common.publish(table(result), paths)


if __name__ == "__main__":
    raise SystemExit(main())
