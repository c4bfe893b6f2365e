"""Every ```python block of README.md runs as written.

Each block runs in a fresh namespace, in a temporary working directory (blocks write files).
A block whose first lines hold the marker comment ``# readme-test: skip`` (one that needs a
running server, say) is reported as skipped with the reason the comment gives. Blocks that need
an optional extra are skipped when it is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARKER = "# readme-test: skip"
OPTIONAL = {"torch", "onnx", "httpx"}  # modules of the optional extras
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of every python block of the README."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def _imports(source: str) -> set[str]:
    """Top-level modules a block imports."""
    names = set(re.findall(r"^\s*from\s+(\w+)", source, re.M))
    for m in re.finditer(r"^\s*import\s+(.+)$", source, re.M):
        names |= {part.split()[0].split(".")[0] for part in m.group(1).split(",")}
    return names


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 4


@pytest.mark.parametrize("line,source", python_blocks(), ids=[f"line{n}" for n, _ in python_blocks()])
def test_readme_block_runs(line: int, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = [s.strip() for s in source.splitlines()[:3]]
    marker = next((s for s in head if s.startswith(SKIP_MARKER)), None)
    if marker is not None:
        pytest.skip(f"README line {line}: {marker[len(SKIP_MARKER):].strip(' :,()') or 'marked skip'}")
    for module in sorted(_imports(source) & OPTIONAL):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    code = compile(source, f"README.md, block at line {line}", "exec")
    with _one_torch_thread():
        exec(code, {"__name__": "__readme__"})


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread while a block runs: its thread pool spins badly on a shared machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
