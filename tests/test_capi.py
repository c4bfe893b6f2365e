"""The plain C ABI (slimrt.h / libslimrt), driven through cffi and from a compiled C program."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import corrupt
import slimrt
from slimrt import format as fmt
from slimrt.models import tiny_resnet

cffi = pytest.importorskip("cffi")

HEADER = Path(slimrt.c_include_dir()) / "slimrt.h"


def cdef_source() -> str:
    """slimrt.h reduced to the declarations cffi parses (no preprocessor, no export macro)."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#") and 'extern "C"' not in ln]
    text = "\n".join(lines).replace("SLIMRT_API ", "")
    text = re.sub(r"^\}\s*$", "", text, flags=re.M)  # the closing brace of extern "C"
    return text + "\n#define SLIMRT_PROFILE_MULTIPLIER -1\n"


@pytest.fixture(scope="module")
def lib():
    ffi = cffi.FFI()
    ffi.cdef(cdef_source())
    return ffi, ffi.dlopen(slimrt.c_library_path())


@pytest.fixture(scope="module")
def model_path() -> str:
    return slimrt.default_model_path()


def load(ffi, lib, path: str):
    out = ffi.new("slimrt_model**")
    status = lib.slimrt_model_load(path.encode(), out)
    return status, out[0]


def test_version_matches_python(lib):
    ffi, c = lib
    assert ffi.string(c.slimrt_version()).decode() == slimrt.__version__


def test_load_list_and_run_every_profile(lib, model_path):
    run_every_profile(lib, model_path)


def test_int8_model_runs_through_the_c_abi(lib, tmp_path):
    from slimrt import format as fmt

    images = np.random.default_rng(1).random((8,) + slimrt.load(slimrt.default_model_path()).input_shape[1:],
                                             dtype=np.float32)
    path = tmp_path / "int8.slim"
    fmt.write(slimrt.quantize(slimrt.default_model_path(), images, depthwise=True), path)
    assert slimrt.load(path).precision == "int8"
    run_every_profile(lib, str(path))


def run_every_profile(lib, model_path: str) -> None:
    """Load through the C ABI, list the profiles, run each and a multiplier: the Python results."""
    ffi, c = lib
    status, model = load(ffi, c, model_path)
    assert status == c.SLIMRT_OK, ffi.string(c.slimrt_last_error())
    py = slimrt.load(model_path)
    count = ffi.new("int32_t*")
    assert c.slimrt_model_profile_count(model, count) == c.SLIMRT_OK
    assert count[0] == len(py.profiles)
    shape = ffi.new("int64_t[4]")
    assert c.slimrt_model_input_shape(model, shape) == c.SLIMRT_OK
    assert tuple(shape) == py.input_shape

    session = ffi.new("slimrt_session**")
    assert c.slimrt_session_create(model, 2, session) == c.SLIMRT_OK
    x = np.random.default_rng(0).standard_normal(py.input_shape).astype(np.float32)
    out = np.zeros(4096, np.float32)
    out_shape = ffi.new("int64_t[4]")
    out_rank = ffi.new("int32_t*")
    for p in py.profiles:
        name, macs, params = ffi.new("char**"), ffi.new("int64_t*"), ffi.new("int64_t*")
        assert c.slimrt_model_profile_info(model, p.index, ffi.cast("const char**", name), macs, params) == 0
        assert ffi.string(name[0]).decode() == p.name and macs[0] == p.macs and params[0] == p.params
        status = c.slimrt_session_run(session[0], ffi.from_buffer("float[]", x), shape, 4, p.index, 0.0,
                                      ffi.from_buffer("float[]", out), out.size, out_shape, out_rank)
        assert status == c.SLIMRT_OK, ffi.string(c.slimrt_last_error())
        want = py.run(x, p.index)
        assert tuple(out_shape)[:out_rank[0]] == want.shape
        np.testing.assert_allclose(out[:want.size].reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    # a uniform multiplier
    status = c.slimrt_session_run(session[0], ffi.from_buffer("float[]", x), shape, 4,
                                  c.SLIMRT_PROFILE_MULTIPLIER, 0.5, ffi.from_buffer("float[]", out), out.size,
                                  out_shape, out_rank)
    assert status == c.SLIMRT_OK
    want = py.run(x, 0.5)
    np.testing.assert_allclose(out[:want.size].reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    c.slimrt_session_free(session[0])
    c.slimrt_model_free(model)


def test_error_paths_return_status_and_message(lib, model_path, tmp_path):
    ffi, c = lib
    status, _ = load(ffi, c, str(tmp_path / "missing.slim"))
    assert status == c.SLIMRT_IO_ERROR
    assert "cannot open" in ffi.string(c.slimrt_last_error()).decode()

    data = Path(model_path).read_bytes()
    for case in corrupt.all_corruptions(data):
        out = ffi.new("slimrt_model**")
        status = c.slimrt_model_load_buffer(case.data, len(case.data), out)
        assert status == c.SLIMRT_INVALID_MODEL, case.name
        assert case.expect.lower() in ffi.string(c.slimrt_last_error()).decode().lower(), case.name
        assert out[0] == ffi.NULL

    assert c.slimrt_model_load(ffi.NULL, ffi.new("slimrt_model**")) == c.SLIMRT_INVALID_ARGUMENT
    status, model = load(ffi, c, model_path)
    session = ffi.new("slimrt_session**")
    assert c.slimrt_session_create(model, 0, session) == c.SLIMRT_INVALID_ARGUMENT
    assert "threads" in ffi.string(c.slimrt_last_error()).decode()
    assert c.slimrt_session_create(model, 1, session) == c.SLIMRT_OK

    shape = [1] + list(slimrt.load(model_path).input_shape[1:])
    x = np.zeros(shape, np.float32)
    out = np.zeros(4, np.float32)
    out_shape, out_rank = ffi.new("int64_t[4]"), ffi.new("int32_t*")

    def run(shape, rank, index, mult, capacity):
        return c.slimrt_session_run(session[0], ffi.from_buffer("float[]", x), ffi.new("int64_t[4]", shape), rank,
                                    index, mult, ffi.from_buffer("float[]", out), capacity, out_shape, out_rank)

    assert run(shape, 4, 99, 0.0, 4) == c.SLIMRT_INVALID_ARGUMENT
    assert "out of range" in ffi.string(c.slimrt_last_error()).decode()
    assert run(shape, 4, -1, 7.0, 4) == c.SLIMRT_INVALID_ARGUMENT
    assert run(shape, 4, -1, 0.0, 4) == c.SLIMRT_INVALID_ARGUMENT
    assert run([1, shape[1] + 4, shape[2], shape[3]], 4, 0, 0.0, 4) == c.SLIMRT_INVALID_ARGUMENT
    assert "channels" in ffi.string(c.slimrt_last_error()).decode()
    assert run(shape, 3, 0, 0.0, 4) == c.SLIMRT_INVALID_ARGUMENT
    assert run(shape, 4, 0, 0.0, 4) == c.SLIMRT_BUFFER_TOO_SMALL
    assert out_rank[0] == 2 and out_shape[1] > 4  # the needed shape is reported
    big = np.zeros(int(out_shape[0] * out_shape[1]), np.float32)
    status = c.slimrt_session_run(session[0], ffi.from_buffer("float[]", x), ffi.new("int64_t[4]", shape),
                                  4, 0, 0.0, ffi.from_buffer("float[]", big), big.size, out_shape, out_rank)
    assert status == c.SLIMRT_OK and ffi.string(c.slimrt_last_error()) == b""
    c.slimrt_session_free(session[0])
    c.slimrt_model_free(model)
    c.slimrt_model_free(ffi.NULL)
    c.slimrt_session_free(ffi.NULL)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_example_builds_and_runs(tmp_path, model_path):
    libdir = str(Path(slimrt.c_library_path()).parent)
    exe = tmp_path / "classify"
    src = Path(__file__).resolve().parents[1] / "examples" / "c" / "classify.c"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", str(src), "-I", slimrt.c_include_dir(), "-L", libdir,
                    "-lslimrt", f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), model_path], check=True, capture_output=True, text=True, timeout=60).stdout
    py = slimrt.load(model_path)
    assert f"{len(py.profiles)} profiles" in out
    n = int(np.prod(py.input_shape))
    x = (((np.arange(n, dtype=np.int64) * 7919) % 255).astype(np.float32) / np.float32(255.0) - np.float32(0.5))
    x = x.reshape(py.input_shape)
    for p in py.profiles:
        best = int(np.argmax(py.run(x, p.index)[0]))
        assert re.search(rf"profile {re.escape(p.name)}\s+{p.macs} MACs  argmax {best} ", out), out


def gated_path(tmp_path: Path) -> str:
    """A gated model (tests/gate_models.py) written to a file; its gate picks among 3 profiles."""
    from gate_models import per_image_model

    path = tmp_path / "gated.slim"
    fmt.write(per_image_model(), path)
    return str(path)


def test_gated_runs_through_the_c_abi(lib, tmp_path, model_path):
    from gate_models import inputs

    ffi, c = lib
    path = gated_path(tmp_path)
    status, model = load(ffi, c, path)
    assert status == c.SLIMRT_OK, ffi.string(c.slimrt_last_error())
    has = ffi.new("int32_t*")
    assert c.slimrt_model_has_gate(model, has) == c.SLIMRT_OK and has[0] == 1
    session = ffi.new("slimrt_session**")
    assert c.slimrt_session_create(model, 2, session) == c.SLIMRT_OK
    py = slimrt.load(path).session()
    x = inputs(9, seed=5)
    shape = ffi.new("int64_t[4]", x.shape)
    out = np.zeros(64, np.float32)
    out_shape, out_rank, choices = ffi.new("int64_t[4]"), ffi.new("int32_t*"), ffi.new("int32_t[9]")

    def run(cap, capacity=out.size, picks=choices):
        return c.slimrt_session_run_gated(session[0], ffi.from_buffer("float[]", x), shape, 4, cap,
                                          ffi.from_buffer("float[]", out), capacity, out_shape, out_rank, picks)

    for cap in (-1, 0, 1, 2):
        assert run(cap) == c.SLIMRT_OK, ffi.string(c.slimrt_last_error())
        want = py.run(x, "gate", max_profile=None if cap < 0 else cap)
        assert out_rank[0] == 2 and tuple(out_shape)[:2] == want.shape == (9, 5)
        np.testing.assert_allclose(out[:want.size].reshape(want.shape), want, rtol=1e-6, atol=1e-7)
        assert list(choices) == py.last_choice.tolist()
        assert max(choices) <= (2 if cap < 0 else cap)
    assert len(set(choices)) == 3  # the last cap (2) lets every image choose freely: they differ
    # errors: the cap, the choices buffer, the output buffer, a model without a gate
    before = list(choices)
    out_shape[0] = 0
    assert run(3) == c.SLIMRT_INVALID_ARGUMENT
    assert "max_profile 3 is out of range" in ffi.string(c.slimrt_last_error()).decode()
    assert run(-2) == c.SLIMRT_INVALID_ARGUMENT
    assert run(-1, picks=ffi.NULL) == c.SLIMRT_INVALID_ARGUMENT
    assert "out_choices" in ffi.string(c.slimrt_last_error()).decode()
    assert out_shape[0] == 0 and list(choices) == before  # a failed call changes nothing
    assert run(-1, capacity=44) == c.SLIMRT_BUFFER_TOO_SMALL
    assert tuple(out_shape)[:2] == (9, 5) and list(choices) == before
    status, plain = load(ffi, c, model_path)
    assert c.slimrt_model_has_gate(plain, has) == c.SLIMRT_OK and has[0] == 0
    other = ffi.new("slimrt_session**")
    assert c.slimrt_session_create(plain, 1, other) == c.SLIMRT_OK
    px = np.zeros(slimrt.load(model_path).input_shape, np.float32)
    status = c.slimrt_session_run_gated(other[0], ffi.from_buffer("float[]", px), ffi.new("int64_t[4]", px.shape), 4,
                                        -1, ffi.from_buffer("float[]", out), out.size, out_shape, out_rank, choices)
    assert status == c.SLIMRT_INVALID_ARGUMENT and "has no gate op" in ffi.string(c.slimrt_last_error()).decode()
    assert c.slimrt_model_has_gate(ffi.NULL, has) == c.SLIMRT_INVALID_ARGUMENT
    for s in (session, other):
        c.slimrt_session_free(s[0])
    c.slimrt_model_free(model)
    c.slimrt_model_free(plain)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer owns malloc: the counting allocator cannot replace it")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gated", [False, True])
def test_runs_allocate_nothing_after_warm_up(tmp_path, model_path, threads, gated):
    """Every profile (and a multiplier) run once, then again: the second round allocates nothing.
    A gated model also runs gated at batch 3 under every cap, in both rounds."""
    libdir = str(Path(slimrt.c_library_path()).parent)
    exe = tmp_path / "count_allocs"
    src = Path(__file__).resolve().parent / "c" / "count_allocs.c"
    subprocess.run(["cc", "-std=c99", "-O1", str(src), "-I", slimrt.c_include_dir(), "-L", libdir, "-lslimrt",
                    f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True)
    path = gated_path(tmp_path) if gated else model_path
    out = subprocess.run([str(exe), path, str(threads)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert out.strip() == "allocations 0", out


RANK_PROBE = r"""
import ctypes, json, mmap, sys
import cffi
import numpy as np
import slimrt

ffi = cffi.FFI()
ffi.cdef(open(sys.argv[1]).read())
c = ffi.dlopen(slimrt.c_library_path())
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = mmap.PAGESIZE
PROT_NONE = 0  # <sys/mman.h>; the mmap module does not export it
base = libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
assert base not in (None, ctypes.c_void_p(-1).value) and libc.mprotect(base + page, page, PROT_NONE) == 0
guard = ffi.cast("int64_t*", base + page)         # reading any value here faults
shape = ffi.cast("int64_t*", base + page - 32)    # exactly 4 readable values
model, session = ffi.new("slimrt_model**"), ffi.new("slimrt_session**")
assert c.slimrt_model_load(sys.argv[2].encode(), model) == c.SLIMRT_OK
assert c.slimrt_session_create(model[0], 1, session) == c.SLIMRT_OK
in_shape = ffi.new("int64_t[4]")
c.slimrt_model_input_shape(model[0], in_shape)
for i in range(4):
    shape[i] = in_shape[i]
x = np.zeros(tuple(in_shape), np.float32)
out = np.zeros(1 << 16, np.float32)
out_shape, out_rank = ffi.new("int64_t[4]"), ffi.new("int32_t*")
results = {}
for rank, where in [(4, shape), (5, guard), (2_000_000_000, guard), (3, guard), (0, guard), (-1, guard),
                    (-2_000_000_000, guard)]:
    status = c.slimrt_session_run(session[0], ffi.from_buffer("float[]", x), where, rank, 0, 0.0,
                                  ffi.from_buffer("float[]", out), out.size, out_shape, out_rank)
    results[rank] = [status, ffi.string(c.slimrt_last_error()).decode()]
c.slimrt_session_free(session[0])
c.slimrt_model_free(model[0])
print(json.dumps(results))
"""


def test_session_run_reads_no_more_shape_values_than_rank_4(tmp_path, model_path):
    """The shape array sits against an unreadable page: a run reads its 4 values for rank 4 and
    none for any other rank (rank 2e9 used to format 2e9 values into the message)."""
    cdef = tmp_path / "slimrt.cdef"
    cdef.write_text(cdef_source())
    run = subprocess.run([sys.executable, "-c", RANK_PROBE, str(cdef), model_path], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    results = json.loads(run.stdout)
    assert results.pop("4") == [0, ""]
    for rank, (status, message) in results.items():
        assert status == 1, rank  # SLIMRT_INVALID_ARGUMENT
        assert message == f"input must be NCHW (rank 4), got rank {rank}"


def test_hostile_buffers_give_the_exact_error(lib, model_path):
    """The loader refuses these before it infers shapes or allocates weights (see test_format)."""
    ffi, c = lib
    data = fmt.to_bytes(tiny_resnet(seed=0, input_hw=(96, 96)))  # the op names the messages quote
    classes = [g["name"] for g in corrupt._model(data)["groups"]].index("classes")
    cases = [
        (corrupt.linear_without_out_group(data).data, "op 'classifier' has no \"out_group\" field"),
        (corrupt.huge_group(data, classes).data,
         "tensor 'classifier.weight' has shape [320, 10], op 'classifier' needs [320, 1048576]"),
        (corrupt.shape_overflow(data, "I8").data, "tensor 'stem.weight' has shape [4294967296, 4294967296] of I8, "
                                                  "whose size overflows 64 bits (it holds 0 bytes)"),
        (corrupt.output_is_input(data).data,
         "the model's output is its input 'input': the output must be produced by an op"),
        (corrupt.deep_model_json(data).data, "the model JSON (__metadata__.slimrt) nests deeper than 64 levels"),
    ]
    for bad, message in cases:
        out = ffi.new("slimrt_model**")
        assert c.slimrt_model_load_buffer(bad, len(bad), out) == c.SLIMRT_INVALID_MODEL, message
        assert ffi.string(c.slimrt_last_error()).decode() == message
        assert out[0] == ffi.NULL


def test_load_refuses_non_regular_files_without_blocking(lib, tmp_path):
    ffi, c = lib
    with corrupt.unblocking_fifo(tmp_path / "model.slim") as fifo:
        for path in (fifo, tmp_path, Path(os.devnull)):
            start = time.monotonic()
            status, model = load(ffi, c, str(path))
            assert status == c.SLIMRT_IO_ERROR, path
            assert ffi.string(c.slimrt_last_error()).decode() == f"'{path}' is not a regular file"
            assert model == ffi.NULL
            assert time.monotonic() - start < 2.0, path
