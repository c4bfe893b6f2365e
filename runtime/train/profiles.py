"""Profiles as data: per-group width ratios keyed by group names, exported from one model and
applied to another of the same architecture (profiles found on one data set transfer to others,
as "Out-of-the-box channel pruned networks" shows). numpy only.

File (JSON): ``{"format": "slimrt-profiles", "version": 1, "model": name, "groups": {name: size},
"profiles": [{"name": ..., "ratios": {group name: width / size}, "macs": ...}, ...]}``; fixed
groups are left out of the ratios (they always run whole).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .. import format as fmt
from ..errors import ProfileError

__all__ = ["export_profiles", "import_profiles", "read_profiles", "write_profiles", "apply_ratios"]

FORMAT = "slimrt-profiles"


def export_profiles(slim: fmt.SlimFile, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The profiles of ``slim`` (default: all) as plain data."""
    groups = fmt.parse_groups(slim.meta)
    chosen = [p for p in slim.meta["profiles"] if names is None or p["name"] in names]
    if names is not None and len(chosen) != len(set(names)):
        known = ", ".join(p["name"] for p in slim.meta["profiles"])
        raise ProfileError(f"unknown profile among {list(names)} (this model has: {known})")
    return {
        "format": FORMAT, "version": 1, "model": slim.meta.get("name", "model"),
        "groups": {g.name: g.size for g in groups if not g.fixed},
        "profiles": [{"name": p["name"], "macs": p["macs"],
                      "ratios": {g.name: w / g.size for g, w in zip(groups, p["widths"]) if not g.fixed}}
                     for p in chosen],
    }


def write_profiles(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def read_profiles(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a profiles file (ProfileError naming the problem)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not a profiles file: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProfileError(f"{path} is not a slimrt profiles file (no \"format\": \"{FORMAT}\")")
    profiles = data.get("profiles")
    if not isinstance(profiles, list) or not profiles:
        raise ProfileError(f"{path} lists no profiles")
    for i, p in enumerate(profiles):
        ratios = p.get("ratios") if isinstance(p, dict) else None
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(ratios, dict):
            raise ProfileError(f"{path}: profile {i} needs a \"name\" and \"ratios\" {{group: ratio}}")
        for g, r in ratios.items():
            if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r <= 1:
                raise ProfileError(f"{path}: profile '{p['name']}' gives group '{g}' the ratio {r!r}; "
                                   "ratios are in (0, 1]")
    return data


def apply_ratios(slim: fmt.SlimFile, data: Mapping[str, Any], replace: bool = False,
                 multiple: int = 8) -> fmt.SlimFile:
    """A copy of ``slim`` with the profiles of ``data`` added (or, with ``replace``, instead of its
    own). Widths are ratio x size rounded as uniform widths are (multiples of 8, whole at 1);
    ``multiple=1`` rounds to the nearest channel instead (for comparisons at equal MACs).

    Refuses data whose groups do not match the model's free groups, naming them. Per-profile
    epilogues of replaced or dropped profiles are removed: calibrate the result.
    """
    groups = fmt.parse_groups(slim.meta)
    free = {g.name for g in groups if not g.fixed}
    for p in data["profiles"]:
        given = set(p["ratios"])
        missing, extra = sorted(free - given), sorted(given - free)
        if missing or extra:
            parts = ([f"no ratio for {', '.join(missing)}"] if missing else []) + \
                    ([f"unknown groups {', '.join(extra)}"] if extra else [])
            raise ProfileError(f"profile '{p['name']}' does not fit model '{slim.meta.get('name')}': "
                               + "; ".join(parts))
    def width(size: int, ratio: float) -> int:
        if multiple == 8:
            return fmt.uniform_width(size, ratio)
        return min(size, max(1, multiple * round(size * ratio / multiple)))

    new = {p["name"]: [g.size if g.fixed else width(g.size, float(p["ratios"][g.name]))
                       for g in groups] for p in data["profiles"]}
    meta = json.loads(json.dumps(slim.meta))
    kept = [] if replace else [p for p in meta["profiles"] if p["name"] not in new]
    profiles = kept + [{"name": n, "widths": w} for n, w in new.items()]
    names = {p["name"] for p in profiles}
    tensors = {k: v for k, v in slim.tensors.items()
               if "@" not in k or (k.split("@", 1)[1] in names and k.split("@", 1)[1] not in new)}
    for p in profiles:
        p["macs"], p["params"] = fmt.profile_cost(meta, p["widths"], profile=p["name"], tensor_names=tensors)
    meta["profiles"] = sorted(profiles, key=lambda p: (p["macs"], p["params"]))
    out = fmt.SlimFile(meta, tensors)
    fmt.validate(out)
    return out


def import_profiles(slim: fmt.SlimFile, path: str | os.PathLike, replace: bool = False) -> fmt.SlimFile:
    """:func:`apply_ratios` with the profiles read from ``path``."""
    return apply_ratios(slim, read_profiles(path), replace)
