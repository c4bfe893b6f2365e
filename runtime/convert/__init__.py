"""Convert trained CNNs (PyTorch or ONNX) into width-slimmable .slim models, and back.

Pipeline: graph capture into one IR (:mod:`.ir`, :mod:`.onnx_import`, :mod:`.torch_import`)
-> channel groups (:mod:`.analysis`) -> importance sort (:mod:`.importance`) -> profiles
(:mod:`.profiles`) -> .slim through :class:`slimrt.builder.ModelBuilder`. Interop back out:
:func:`export_onnx` and :func:`to_torch` rebuild one profile as a physically pruned model.

torch and onnx are optional dependencies (``pip install slimrt[convert]``); they are imported
only when one of these functions runs, so ``import slimrt.convert`` works without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .ir import ConversionError
from .profiles import DEFAULT_WIDTHS, DuplicateProfileWarning, WidthSpec

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

    from ..engine import Model
    from ..format import SlimFile

ModelLike = Union["Model", "SlimFile", str, Path, bytes]
ProfileKey = Union[str, int, float]

__all__ = ["ConversionError", "DuplicateProfileWarning", "export_onnx", "from_onnx", "from_torch", "onnx_to_slim", "to_onnx",
           "to_torch", "torch_to_slim"]


def from_torch(module: torch.nn.Module, example_input: torch.Tensor | np.ndarray,
               widths: WidthSpec = DEFAULT_WIDTHS, importance: str = "l1", *, name: str | None = None,
               seed: int = 0, min_multiplier: float | None = None, progress: Any = None) -> Model:
    """Convert a PyTorch CNN into a loaded :class:`slimrt.Model`.

    ``example_input`` is one NCHW float batch; its shape becomes the model's default input shape.
    ``widths``: uniform multipliers ``(0.25, 0.5, 0.75, 1.0)`` or ``{name: multiplier | per-group
    widths}``. ``importance``: ``"l1"`` (default), ``"l2"``, ``"bn"``, ``"random"`` (seeded by ``seed``)
    or ``"none"`` (keep the source's order, for a net trained slimmable already).
    Raises ConversionError naming the op and node of anything that cannot be converted.
    """
    return _load(torch_to_slim(module, example_input, widths, importance, name=name, seed=seed,
                               min_multiplier=min_multiplier, progress=progress))


def from_onnx(source: str | Path | bytes | onnx.ModelProto, widths: WidthSpec = DEFAULT_WIDTHS,
              importance: str = "l1", *, input_shape: tuple[int, int, int, int] | None = None,
              name: str | None = None, seed: int = 0, min_multiplier: float | None = None,
              progress: Any = None) -> Model:
    """Convert an ONNX CNN (path, bytes or ModelProto) into a loaded :class:`slimrt.Model`.

    ``input_shape`` overrides the declared input shape (needed when H or W are symbolic).
    Other arguments as in :func:`from_torch`.
    """
    return _load(onnx_to_slim(source, widths, importance, input_shape=input_shape, name=name, seed=seed,
                              min_multiplier=min_multiplier, progress=progress))


def torch_to_slim(module: torch.nn.Module, example_input: torch.Tensor | np.ndarray,
                  widths: WidthSpec = DEFAULT_WIDTHS, importance: str = "l1", *, name: str | None = None,
                  seed: int = 0, min_multiplier: float | None = None, progress: Any = None) -> SlimFile:
    """As :func:`from_torch`, returning the :class:`slimrt.format.SlimFile` instead of a loaded model."""
    from .pipeline import onnx_to_slim as convert
    from .torch_import import torch_to_onnx

    proto = torch_to_onnx(module, example_input)
    if progress:
        progress(f"exported {type(module).__name__} to ONNX ({len(proto.graph.node)} nodes)")
    return convert(proto, widths, importance, name=name or type(module).__name__, seed=seed,
                   min_multiplier=min_multiplier, progress=progress)


def onnx_to_slim(source: str | Path | bytes | onnx.ModelProto, widths: WidthSpec = DEFAULT_WIDTHS,
                 importance: str = "l1", *, input_shape: tuple[int, int, int, int] | None = None,
                 name: str | None = None, seed: int = 0, min_multiplier: float | None = None,
                 progress: Any = None) -> SlimFile:
    """As :func:`from_onnx`, returning the :class:`slimrt.format.SlimFile` instead of a loaded model."""
    from .pipeline import onnx_to_slim as convert

    return convert(source, widths, importance, input_shape=input_shape, name=name, seed=seed,
                   min_multiplier=min_multiplier, progress=progress)


def export_onnx(model: ModelLike, path: str | Path, profile: ProfileKey) -> None:
    """Write one profile of ``model`` as a standard, physically pruned ONNX file.

    ``model``: a :class:`slimrt.Model`, a SlimFile, or a .slim path / bytes. ``profile``: a
    profile name, index or uniform multiplier. Raises ProfileError for an unknown profile.
    """
    from .export import export_onnx as impl

    impl(model, path, profile)


def to_onnx(model: ModelLike, profile: ProfileKey) -> onnx.ModelProto:
    """One profile of ``model`` as a physically pruned ONNX ModelProto (see :func:`export_onnx`)."""
    from .export import to_onnx as impl

    return impl(model, profile)


def to_torch(model: ModelLike, profile: ProfileKey) -> torch.nn.Module:
    """One profile of ``model`` as a plain, physically pruned ``torch.nn.Module`` (eval mode)."""
    from .torch_module import to_torch as impl

    return impl(model, profile)


def _load(slim: SlimFile) -> Model:
    from .. import load
    from ..format import to_bytes

    return load(to_bytes(slim))
