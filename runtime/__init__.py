"""slimrt: an edge inference runtime for CNNs whose width changes per request.

One .slim file holds one copy of the weights with every layer's channels
sorted by importance; any profile (width per channel group) runs from it by
prefix slicing. See README.md for the tasks (run, convert, serve, embed in C).
"""

from __future__ import annotations

from pathlib import Path

from ._core import version as _core_version
from .engine import Group, Model, Profile, Session, load
from .errors import InvalidModelError, NonFiniteInputError, ProfileError
from .quantization import quantize

__version__ = _core_version()

__all__ = [
    "Group",
    "InvalidModelError",
    "Model",
    "NonFiniteInputError",
    "Profile",
    "ProfileError",
    "Session",
    "__version__",
    "c_include_dir",
    "c_library_path",
    "default_model_path",
    "load",
    "quantize",
]

_HERE = Path(__file__).resolve().parent


def c_library_path() -> str:
    """Path of the plain C shared library (libslimrt.so) installed with the package."""
    path = _HERE / "lib" / "libslimrt.so"
    if not path.exists():
        raise FileNotFoundError(f"libslimrt is not installed at {path}; reinstall slimrt with `pip install .`")
    return str(path)


def c_include_dir() -> str:
    """Directory holding slimrt.h, the C ABI header."""
    path = _HERE / "include"
    if not (path / "slimrt.h").exists():
        raise FileNotFoundError(f"slimrt.h is not installed in {path}; reinstall slimrt with `pip install .`")
    return str(path)


def default_model_path() -> str:
    """Path of the bundled default model: MobileNetV2-small trained slimmable on cluttered-digits
    (input 1x24x24, profiles 0.25 / 0.5 / 0.75 / 1.0; scripts/make_default_model.py)."""
    return str(_HERE / "data" / "default.slim")
