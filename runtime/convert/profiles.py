"""Width profiles: what the converter is asked for, and what a profile activates in a .slim model.

Asking (``widths=`` of the converters):

* a sequence of uniform multipliers, e.g. ``(0.25, 0.5, 0.75, 1.0)``: profiles named
  ``"0.25"``, ``"0.5"``, ... (Slimmable Networks / US-Nets);
* a mapping ``{profile name: multiplier | per-group widths}``, where per-group widths are a
  mapping ``{group name: width}`` (fixed groups may be left out) or a sequence over all groups,
  as pruning and search produce them.

Uniform widths follow csrc/core/model.h (:func:`slimrt.format.uniform_width`): a group that is
not fixed runs at the multiple of 8 nearest to ``size * m``, or at ``size`` itself when that is
nearer, so ``m = 1`` is the original network exactly; fixed groups (the network input, the
classifier output, unsliceable dimensions) stay full.

What a profile activates inside a .slim model (channel maps, MACs) is defined once, in
:mod:`slimrt.format`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from ..errors import ProfileError
from ..format import uniform_width as fmt_uniform_width

GroupWidths = Union[Mapping[str, int], Sequence[int]]
WidthSpec = Union[Sequence[float], Mapping[str, Union[float, GroupWidths]]]
DEFAULT_WIDTHS = (0.25, 0.5, 0.75, 1.0)


class DuplicateProfileWarning(UserWarning):
    """Two requested profiles come out with the same widths; the later one is not written."""


@dataclass(frozen=True)
class ProfileRequest:
    """One profile to build: a uniform multiplier or explicit per-group widths."""

    name: str
    multiplier: float | None = None
    widths: GroupWidths | None = None


def parse_widths(spec: WidthSpec) -> list[ProfileRequest]:
    """Normalise the ``widths=`` argument of the converters into profile requests."""
    if isinstance(spec, Mapping):
        return [_request(str(name), value) for name, value in spec.items()]
    if isinstance(spec, str):
        spec = [float(s) for s in spec.split(",") if s.strip()]
    requests = [ProfileRequest(str(float(m)), multiplier=_multiplier(m)) for m in spec]
    if not requests:
        raise ProfileError("no profiles requested; pass widths such as (0.25, 0.5, 0.75, 1.0)")
    return requests


def _request(name: str, value: float | GroupWidths) -> ProfileRequest:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ProfileRequest(name, multiplier=_multiplier(value))
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, str):
        return ProfileRequest(name, widths=value)
    raise ProfileError(f"profile '{name}': expected a multiplier or per-group widths, got {value!r}")


def _multiplier(m: Any) -> float:
    m = float(m)
    if not 0 < m <= 1:
        raise ProfileError(f"width multiplier {m} is outside (0, 1]; use e.g. 0.25, 0.5, 0.75, 1.0")
    return m


def uniform_width(size: int, m: float, fixed: bool) -> int:
    """The width of one group at uniform multiplier ``m`` (rule of csrc/core/model.h)."""
    return size if fixed else fmt_uniform_width(size, m)
