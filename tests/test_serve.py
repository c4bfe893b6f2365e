"""slimrt serve: endpoints in-process and over a real loopback socket, on the real engine.

Outputs are checked against slimrt.reference (a numpy executor that physically prunes the
weights of each profile). The only wrapper around the engine is the gated model that holds
inference to fill the queue for the 503 test.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import subprocess
import sys
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import slimrt  # noqa: E402
from slimrt.format import read  # noqa: E402
from slimrt.models import default_model_path  # noqa: E402
from slimrt.reference import run_reference  # noqa: E402
from slimrt.serve import BackgroundServer, ServeConfig, create_app  # noqa: E402
from slimrt.serve.cli import add_commands, serve_command  # noqa: E402

NPY = "application/x-npy"
TOL = dict(rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(default_model_path())


@pytest.fixture(scope="module")
def model(model_path):
    return slimrt.load(model_path)


@pytest.fixture(scope="module")
def slim(model_path):
    return read(model_path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("latency-cache"))


@pytest.fixture(scope="module")
def config(cache_dir) -> ServeConfig:
    return ServeConfig(policy="budget", budget_ms=1000.0, workers=2, latency_cache=cache_dir,
                       calibrate_repeats=2, max_batch=4)


class InProcess:
    """A synchronous client calling the app in-process (httpx's ASGI transport), with the
    app's lifespan (worker warm-up, shutdown) run around it."""

    def __init__(self, app) -> None:
        self.app = app
        self._runner = asyncio.Runner()

    def __enter__(self) -> InProcess:
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._runner.run(self._lifespan.__aenter__())
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url="http://slimrt")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._runner.run(self._client.aclose())
            self._runner.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self._runner.close()

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self._runner.run(self._client.post(url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self._runner.run(self._client.get(url, **kwargs))


@pytest.fixture(scope="module")
def client(model, config):
    with InProcess(create_app(model, config)) as c:
        yield c


def sample(model, n: int = 1, seed: int = 0) -> np.ndarray:
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@dataclass(frozen=True)
class PromSample:
    name: str
    labels: dict
    value: float


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([^ ]+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _parse_exposition(text: str) -> dict[str, list]:
    """A strict reader of the Prometheus text format 0.0.4, for machines without
    prometheus_client: every line must be a HELP/TYPE comment or a sample of a declared
    family; counters are keyed without their _total suffix, as prometheus_client does."""
    families: dict[str, list] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.groups()
        labels = {k: re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), v)
                  for k, v in _LABEL.findall(labels_text or "")}
        base = next(f for f in sorted(types, key=len, reverse=True)
                    if name == f or name.startswith(f + "_"))
        key = base[:-len("_total")] if types[base] == "counter" and base.endswith("_total") \
            else base
        families.setdefault(key, []).append(PromSample(name, labels, float(value)))
    return families


def prom(text: str) -> dict[str, list]:
    """Metric families of an exposition, read by prometheus_client's parser when installed."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return _parse_exposition(text)
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# ---------------------------------------------------------------------------- correct answers

class TestInfer:
    def test_json_at_each_profile(self, client, model, slim):
        x = sample(model, seed=1)
        for p in model.profiles:
            r = client.post("/v1/infer", json={"input": x.tolist(), "profile": p.name})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["profile"] == p.name and body["policy"] == "request"
            np.testing.assert_allclose(np.asarray(body["output"], np.float32),
                                       run_reference(slim, x, p.name), **TOL)
            t = body["timing_ms"]
            assert min(t.values()) >= 0
            assert t["total"] == pytest.approx(t["queue"] + t["inference"])

    def test_npy_in_and_out_by_index(self, client, model, slim):
        x = sample(model, n=2, seed=2)
        for p in model.profiles:
            r = client.post(f"/v1/infer?profile={p.index}", content=npy_bytes(x),
                            headers={"Content-Type": NPY, "Accept": NPY})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == NPY
            assert r.headers["x-slimrt-profile"] == p.name
            y = np.load(io.BytesIO(r.content), allow_pickle=False)
            np.testing.assert_allclose(y, run_reference(slim, x, p.name), **TOL)

    def test_bare_json_array_uses_the_policy(self, client, model, slim):
        x = sample(model, seed=3)
        r = client.post("/v1/infer", json=x.tolist())
        body = r.json()
        assert r.status_code == 200 and body["policy"] == "budget"
        assert body["budget_ms"] == 1000.0 and body["within_budget"] is True
        # a second-long budget fits every profile: the policy picks the largest
        assert body["profile"] == model.profiles[-1].name
        np.testing.assert_allclose(np.asarray(body["output"], np.float32),
                                   run_reference(slim, x, body["profile"]), **TOL)

    def test_budget_too_small_for_any_profile_gets_the_cheapest(self, client, model):
        r = client.post("/v1/infer?budget_ms=0.001", content=npy_bytes(sample(model)),
                        headers={"Content-Type": "application/octet-stream"})
        body = r.json()
        assert body["profile"] == model.profiles[0].name
        assert "no profile fits" in body["reason"] and body["within_budget"] is False

    def test_profiles_endpoint(self, client, model):
        body = client.get("/v1/profiles").json()
        assert body["model"] == model.name and body["input_shape"] == list(model.input_shape)
        assert [(p["name"], p["macs"], tuple(p["widths"])) for p in body["profiles"]] == \
               [(p.name, p.macs, p.widths) for p in model.profiles]
        assert all(p["latency_ms"]["predicted_tail_ms"] > 0 for p in body["profiles"])

    def test_decisions_record_their_signals(self, client, model):
        client.post("/v1/infer?budget_ms=250", json=sample(model).tolist())
        rows = client.get("/v1/decisions?limit=1").json()
        assert len(rows) == 1
        d = rows[0]
        assert d["policy"] == "budget" and d["profile"] in [p.name for p in model.profiles]
        assert d["signals"]["budget_ms"] == 250.0 and "predicted_ms" in d["signals"]
        assert d["outcome"]["total_ms"] >= d["outcome"]["inference_ms"] > 0
        assert client.get("/v1/decisions?limit=0").status_code == 422

    def test_healthz(self, client, model):
        body = client.get("/healthz").json()
        assert body["status"] == "ok" and body["model"] == model.name
        assert body["capacity"] == 5 * body["workers"] and body["in_flight"] == 0


# ---------------------------------------------------------------------------- bad requests

def _bad_cases(model):
    x = sample(model)
    c, h, w = model.input_shape[1:]
    js = {"Content-Type": "application/json"}
    npy = {"Content-Type": NPY}
    good = x.tolist()
    return [
        ("malformed json", b"[[1, 2", js, 400, "not valid JSON"),
        ("empty body", b"", js, 400, "not valid JSON"),
        ("garbage npy", b"\x93NUMPY garbage", npy, 400, "not a valid .npy"),
        ("text content type", b"hello", {"Content-Type": "text/plain"}, 415, "Content-Type"),
        ("wrong rank", json.dumps(x[0].tolist()).encode(), js, 422, "input shape"),
        ("wrong channels", npy_bytes(np.zeros((1, c + 1, h, w), np.float32)), npy, 422,
         "input shape"),
        ("wrong spatial size", npy_bytes(np.zeros((1, c, h + 1, w), np.float32)), npy, 422,
         "input shape"),
        ("float64 npy", npy_bytes(x.astype(np.float64)), npy, 422, "dtype"),
        ("int npy", npy_bytes(x.astype(np.int32)), npy, 422, "dtype"),
        ("ragged json", json.dumps([[[[1.0, 2.0], [3.0]]]]).encode(), js, 422, "rectangular"),
        ("strings", json.dumps([[[["a"]]]]).encode(), js, 422, "numbers"),
        ("object without input", json.dumps({"x": good}).encode(), js, 422, "unknown field"),
        ("missing input", json.dumps({"profile": 0}).encode(), js, 422, "no 'input'"),
        ("unknown profile", json.dumps({"input": good, "profile": "huge"}).encode(), js, 422,
         "unknown profile 'huge'"),
        ("profile index out of range",
         json.dumps({"input": good, "profile": len(model.profiles)}).encode(), js, 422,
         "out of range"),
        ("float profile", json.dumps({"input": good, "profile": 0.5}).encode(), js, 422,
         "name (string) or index"),
        ("negative budget", json.dumps({"input": good, "budget_ms": -1}).encode(), js, 422,
         "budget_ms"),
        ("text budget", json.dumps({"input": good, "budget_ms": "soon"}).encode(), js, 422,
         "budget_ms"),
        ("batch over limit", npy_bytes(np.zeros((5, c, h, w), np.float32)), npy, 422,
         "batch size 5"),
        ("nan input", npy_bytes(np.full((1, c, h, w), np.nan, np.float32)), npy, 422, "NaN"),
    ]


class TestBadRequests:
    def test_every_case_gets_a_clear_4xx(self, client, model):
        for what, body, headers, status, words in _bad_cases(model):
            r = client.post("/v1/infer", content=body, headers=headers)
            assert r.status_code == status, (what, r.text)
            assert words in r.json()["error"], (what, r.json())

    def test_deeply_nested_json(self, client):
        # refused by the JSON parser (stdlib: recursion) or as an array (orjson parses it)
        r = client.post("/v1/infer", content=b"[" * 100_000 + b"]" * 100_000,
                        headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422) and r.json()["error"]

    def test_query_profile_unknown(self, client, model):
        r = client.post("/v1/infer?profile=nope", json=sample(model).tolist())
        assert r.status_code == 422 and "GET /v1/profiles" in r.json()["error"]

    def test_body_over_the_size_limit(self, model, cache_dir):
        config = ServeConfig(policy="fixed", latency_cache=cache_dir, max_body_bytes=1024)
        with InProcess(create_app(model, config)) as c:
            r = c.post("/v1/infer", content=npy_bytes(sample(model)),
                       headers={"Content-Type": NPY})
            assert r.status_code == 413 and "limit of 1024 bytes" in r.json()["error"]

            async def chunks():  # no Content-Length: the limit applies while reading
                for _ in range(4):
                    yield b"0" * 512
            r = c.post("/v1/infer", content=chunks(), headers={"Content-Type": NPY})
            assert r.status_code == 413

    def test_config_errors(self, model):
        with pytest.raises(ValueError, match="needs a latency budget"):
            create_app(model, ServeConfig(policy="budget"))
        with pytest.raises(ValueError, match="unknown policy"):
            create_app(model, ServeConfig(policy="fastest"))


# ---------------------------------------------------------------------------- full queue

class GatedModel:
    """The real model whose sessions wait for `gate` before running (to fill the queue)."""

    def __init__(self, model, gate: threading.Event) -> None:
        self._model = model
        self.gate = gate
        self.name, self.input_shape, self.profiles = model.name, model.input_shape, model.profiles

    def session(self, threads: int = 1):
        inner = self._model.session(threads=threads)
        gate = self.gate

        class Gated:
            def run(self, x, profile):
                if not gate.wait(30):
                    raise TimeoutError("gate never opened")
                return inner.run(x, profile=profile)
        return Gated()


def test_full_queue_answers_503_at_once(model, cache_dir):
    gate = threading.Event()
    app = create_app(GatedModel(model, gate),
                     ServeConfig(policy="fixed", workers=1, queue_size=1, latency_cache=cache_dir))
    pool = app.state.slimrt.pool
    body = npy_bytes(sample(model))
    headers = {"Content-Type": NPY}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slimrt") as c:
            held = [asyncio.create_task(c.post("/v1/infer", content=body, headers=headers))
                    for _ in range(pool.capacity)]
            for _ in range(3000):
                if pool.in_flight == pool.capacity:
                    break
                await asyncio.sleep(0.01)
            assert pool.in_flight == pool.capacity and pool.queue_depth == 1
            rejected = await c.post("/v1/infer", content=body, headers=headers)
            metrics = (await c.get("/metrics")).text
            gate.set()
            done = await asyncio.gather(*held)
            return rejected, metrics, done

    try:
        rejected, metrics, done = asyncio.run(scenario())
    finally:
        gate.set()
        pool.close()
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert "busy" in rejected.json()["error"]
    assert [r.status_code for r in done] == [200] * len(done)
    families = prom(metrics)
    assert ("slimrt_queue_depth", {}, 1) in [(s.name, s.labels, s.value)
                                            for s in families["slimrt_queue_depth"]]
    codes = {s.labels["code"]: s.value for s in families["slimrt_requests"]}
    assert codes == {"503": 1}


# ---------------------------------------------------------------------------- metrics

def test_fallback_exposition_reader_agrees_with_prometheus_client():
    parser = pytest.importorskip("prometheus_client.parser")
    text = """# HELP a_total things
# TYPE a_total counter
a_total{code="200"} 3
a_total{code="5\\"03"} 1
# HELP h_seconds latency
# TYPE h_seconds histogram
h_seconds_bucket{le="0.5"} 1
h_seconds_bucket{le="+Inf"} 2
h_seconds_sum 1.25
h_seconds_count 2
# HELP q depth
# TYPE q gauge
q 0
"""
    ours = _parse_exposition(text)
    theirs = {f.name: [(s.name, s.labels, s.value) for s in f.samples]
              for f in parser.text_string_to_metric_families(text)}
    assert {k: [(s.name, s.labels, s.value) for s in v] for k, v in ours.items()} == theirs


def test_metrics_count_what_was_served(model, cache_dir):
    config = ServeConfig(policy="budget", budget_ms=1000.0, latency_cache=cache_dir,
                         calibrate_repeats=2)
    names = [p.name for p in model.profiles]
    rng = np.random.default_rng(4)
    asked = [names[int(i)] for i in rng.integers(len(names), size=12)]
    with InProcess(create_app(model, config)) as c:
        for name in asked:
            assert c.post("/v1/infer", json={"input": sample(model).tolist(),
                                             "profile": name}).status_code == 200
        assert c.post("/v1/infer?budget_ms=0.001", json=sample(model).tolist()).status_code == 200
        assert c.post("/v1/infer", content=b"{", headers={"Content-Type": "application/json"}
                      ).status_code == 400
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fam = prom(r.text)
    codes = {s.labels["code"]: s.value for s in fam["slimrt_requests"]}
    assert codes == {"200": 13, "400": 1}
    counts = {s.labels["profile"]: s.value for s in fam["slimrt_profile_requests"]}
    expected = {n: asked.count(n) for n in set(asked)}
    expected[names[0]] = expected.get(names[0], 0) + 1
    assert counts == expected
    served = {s.name: s.value for s in fam["slimrt_request_latency_seconds"]
              if s.name.endswith(("_count", "_sum")) or s.labels.get("le") == "+Inf"}
    assert served["slimrt_request_latency_seconds_count"] == 13
    assert served["slimrt_request_latency_seconds_bucket"] == 13
    assert {s.value for s in fam["slimrt_budget_requests"]} == {13}
    assert {s.value for s in fam["slimrt_budget_misses"]} == {1}  # the 1 µs budget
    macs = sum(model.profile(n).macs for n in asked) + model.profiles[0].macs
    assert fam["slimrt_served_macs"][0].value == macs
    assert fam["slimrt_queue_depth"][0].value == 0


# ---------------------------------------------------------------------------- real socket

def test_over_a_loopback_socket(model, slim, config):
    x = sample(model, seed=5)
    with BackgroundServer(create_app(model, config)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for p in model.profiles:
                r = c.post("/v1/infer", json={"input": x.tolist(), "profile": p.name})
                np.testing.assert_allclose(np.asarray(r.json()["output"], np.float32),
                                           run_reference(slim, x, p.name), **TOL)
            results: list[int] = []

            def client_thread(seed: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as own:
                    for _ in range(5):
                        r = own.post("/v1/infer", content=npy_bytes(sample(model, seed=seed)),
                                     headers={"Content-Type": NPY, "Accept": NPY})
                        results.append(r.status_code)
            threads = [threading.Thread(target=client_thread, args=(s,)) for s in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert results == [200] * 20
            assert c.post("/v1/infer", content=b"x", headers={"Content-Type": NPY}
                          ).status_code == 400
            fam = prom(c.get("/metrics").text)
            codes = {s.labels["code"]: s.value for s in fam["slimrt_requests"]}
            assert codes == {"200": len(model.profiles) + 20, "400": 1}
            assert c.get("/healthz").json()["status"] == "ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_until_interrupted(model_path, model, slim, cache_dir, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "slimrt.serve", model_path, "--policy", "budget",
           "--budget-ms", "500", "--port", str(port), "--latency-cache", cache_dir,
           "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as err, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                  stderr=err) as proc:
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            x = sample(model, seed=6)
            r = httpx.post(url + "/v1/infer", json={"input": x.tolist()}, timeout=30)
            body = r.json()
            assert r.status_code == 200 and body["policy"] == "budget"
            np.testing.assert_allclose(np.asarray(body["output"], np.float32),
                                       run_reference(slim, x, body["profile"]), **TOL)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert f"http://127.0.0.1:{port}" in log.read_text()


def test_cli_parser_and_errors(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser(prog="slimrt")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "m.slim", "--policy", "fixed", "--profile", "2"])
    assert args.func is serve_command and args.profile == 2 and args.host == "127.0.0.1"
    missing = str(tmp_path / "missing.slim")
    args = parser.parse_args(["serve", missing, "--budget-ms", "20"])
    assert serve_command(args) == 2
    assert "missing.slim" in capsys.readouterr().err
    args = parser.parse_args(["serve", missing])  # budget policy without a budget
    assert serve_command(args) == 2
