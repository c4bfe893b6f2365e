"""Loading and running .slim models: the Python face of the C++ engine.

A :class:`Model` is immutable and may be shared by threads; a :class:`Session`
owns scratch memory and a thread count and serves one request at a time. Run
any profile of the model by name, index or uniform width multiplier::

    model = slimrt.load("model.slim")
    session = model.session(threads=2)
    y = session.run(x, profile="0.5")      # or profile=1, or profile=0.6

A model with a gate op picks its own profile per image: ``session.run(x, profile="gate")``,
then ``session.last_choice`` holds the profile index chosen for each image.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from . import _core
from .errors import NonFiniteInputError, ProfileError

if TYPE_CHECKING:
    from .format import SlimFile

ProfileKey = Union[str, int, float, "Profile"]
GATE = "gate"  # the profile argument of a gated run


@dataclass(frozen=True)
class Profile:
    """A named width profile: the prefix width of every channel group."""

    index: int
    name: str
    macs: int  # multiply-accumulates per sample at the model's default input shape
    params: int
    widths: tuple[int, ...]


@dataclass(frozen=True)
class Group:
    """A channel group: dimensions that share one channel order."""

    name: str
    size: int
    fixed: bool
    why: str


def nonfinite_message(x: np.ndarray) -> str | None:
    """None when every value of ``x`` is finite, else what is wrong: how many NaN and
    infinite values and the index of the first."""
    finite = np.isfinite(x)
    if finite.all():
        return None
    bad = finite.size - int(np.count_nonzero(finite))
    first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite.ravel())), x.shape))
    return (f"input holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or infinity), "
            f"the first at index {first}: {float(x[first])}")


class Session:
    """Runs a model; one request at a time. Create one per thread."""

    def __init__(self, model: "Model", threads: int = 1) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.model = model
        self._core = _core.Session(model._core, threads)
        self.last_choice: np.ndarray | None = None  # profile index per image of the last gated run
        self.last_logits: np.ndarray | None = None  # its gate logits [N, profiles]

    @property
    def threads(self) -> int:
        return self._core.threads

    def run(self, x: np.ndarray, profile: ProfileKey | None = None,
            max_profile: Union[str, int, "Profile", None] = None, *, check_finite: bool = False) -> np.ndarray:
        """Run on float32 NCHW input ``x`` at ``profile``.

        ``profile`` is a profile name (str), an index into ``model.profiles`` (int),
        a :class:`Profile`, or a uniform width multiplier (float) in
        ``[model.min_multiplier, 1]``; None (the default) runs the most expensive
        profile, the full model. Returns a new float32 array: NCHW for a spatial
        output, ``[N, F]`` otherwise.

        ``profile="gate"`` on a model with a gate op (:attr:`Model.has_gate`) is a gated run:
        each image runs at the profile its gate chooses, at most ``max_profile`` (a name, an
        index or a :class:`Profile`; None: no cap). :attr:`last_choice` then holds the chosen
        profile index per image and :attr:`last_logits` the gate's logits.

        NaN and infinity propagate as in IEEE arithmetic (as numpy computes the same
        network). With ``check_finite=True`` an input holding any is refused with a
        :class:`NonFiniteInputError` (a ValueError) naming how many and where the first is,
        and nothing runs.
        """
        x = self._check_input(x)
        if check_finite:
            problem = nonfinite_message(x)
            if problem is not None:
                raise NonFiniteInputError(problem)
        if isinstance(profile, str) and profile == GATE and self.model.has_gate:
            cap = -1 if max_profile is None else self.model._max_profile(max_profile)
            out, choice, logits = self._core.run_gated(x, cap)
            self.last_choice, self.last_logits = choice.astype(np.int64), logits
            return out
        if max_profile is not None:
            raise ValueError("max_profile caps the choice of a gated run: pass profile='gate' "
                             + ("" if self.model.has_gate else "(this model has no gate op)"))
        if isinstance(profile, str) and profile == GATE and profile not in self.model._by_name:
            raise ProfileError(f"model {self.model.name!r} has no gate op: profile='gate' needs a gated model "
                               f"(profiles: {', '.join(p.name for p in self.model.profiles)})")
        index, multiplier = self.model._resolve(profile)
        return self._core.run(x, index, multiplier)

    def profile_ops(self, x: np.ndarray, profile: ProfileKey | None = None) -> list[tuple[str, float]]:
        """Run once and return the wall time of every op: ``[(op name, seconds), ...]``.

        ``profile`` as in :meth:`run` (default: the most expensive profile)."""
        x = self._check_input(x)
        index, multiplier = self.model._resolve(profile)
        return self._core.profile_ops(x, index, multiplier)

    @staticmethod
    def _check_input(x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"input must be float32, got {x.dtype} (convert with x.astype(np.float32))")
        if x.ndim != 4:
            raise ValueError(f"input must be NCHW (4 dimensions), got shape {x.shape}")
        return np.ascontiguousarray(x)


class Model:
    """A loaded .slim model: one copy of the weights, every profile runnable."""

    def __init__(self, core: "_core.Model", source: Union[Path, bytes]) -> None:
        self._core = core
        self._source = source
        self.profiles: list[Profile] = [
            Profile(i, name, int(macs), int(params), tuple(widths))
            for i, (name, widths, macs, params) in enumerate(core.profiles)
        ]
        self.groups: list[Group] = [Group(*g) for g in core.groups]
        self._by_name = {p.name: p for p in self.profiles}
        self._local = threading.local()

    # --- description -------------------------------------------------------
    @property
    def name(self) -> str:
        return self._core.name

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Default input shape (N, C, H, W)."""
        return tuple(self._core.input_shape)

    @property
    def min_multiplier(self) -> float:
        return float(self._core.min_multiplier)

    @property
    def has_gate(self) -> bool:
        """Whether the model has a gate op, which picks the profile per image (``run(x, "gate")``)."""
        return int(self._core.gate_op) >= 0

    def _max_profile(self, key: Union[str, int, Profile]) -> int:
        if isinstance(key, float):
            raise ProfileError(f"max_profile is a profile name, an index or a Profile, got the multiplier {key!r}")
        return self.profile(key).index

    @property
    def precision(self) -> str:
        """"int8" when any op of the model is int8 (format_version 2), else "float32"."""
        import json

        ops = json.loads(self._core.json).get("ops", [])
        return "int8" if any(op.get("precision") == "int8" for op in ops) else "float32"

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights the engine holds (one copy, packed)."""
        return int(self._core.weight_bytes)

    def profile(self, key: Union[str, int, Profile]) -> Profile:
        """The named profile ``key`` (name or index)."""
        if isinstance(key, Profile):
            return key
        if isinstance(key, str):
            if key not in self._by_name:
                known = ", ".join(p.name for p in self.profiles)
                raise ProfileError(f"unknown profile {key!r} (this model has: {known})")
            return self._by_name[key]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not 0 <= key < len(self.profiles):
                raise ProfileError(f"profile index {key} is out of range (model has {len(self.profiles)} profiles)")
            return self.profiles[int(key)]
        raise ProfileError(f"a profile is a name, an index or a Profile, got {key!r}")

    def widths(self, profile: ProfileKey | None = None) -> tuple[int, ...]:
        """Channel widths per group that ``profile`` runs."""
        index, multiplier = self._resolve(profile)
        if multiplier > 0:
            return tuple(self._core.uniform_widths(multiplier))
        return self.profiles[index].widths

    def macs(self, profile: ProfileKey | None = None, input_hw: tuple[int, int] | None = None) -> int:
        """Multiply-accumulates per sample of ``profile`` (default: the most expensive) at the
        default input shape, or at input size ``input_hw`` = (H, W). Raises ValueError when the
        model cannot run that size (for example a flatten whose size no longer matches the
        linear layer after it)."""
        h, w = (0, 0) if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        if input_hw is not None and (h < 1 or w < 1):
            raise ValueError(f"input size {h}x{w} is not valid")
        return int(self._core.cost(list(self.widths(profile)), h, w)[0])

    def _resolve(self, profile: ProfileKey | None) -> tuple[int, float]:
        if profile is None:  # the most expensive profile, or the full widths of a model without profiles
            return (len(self.profiles) - 1, 0.0) if self.profiles else (0, 1.0)
        if isinstance(profile, (float, np.floating)):
            m = float(profile)
            if not (self.min_multiplier - 1e-6 <= m <= 1.0 + 1e-6):
                raise ProfileError(
                    f"multiplier {m} is outside this model's range [{self.min_multiplier}, 1]")
            return 0, m
        return self.profile(profile).index, 0.0

    # --- running -------------------------------------------------------------
    def session(self, threads: int = 1) -> Session:
        """A new session with its own scratch memory and ``threads`` threads."""
        return Session(self, threads)

    def run(self, x: np.ndarray, profile: ProfileKey | None = None,
            max_profile: Union[str, int, Profile, None] = None, *, check_finite: bool = False) -> np.ndarray:
        """Convenience: run on a single-threaded session cached per calling thread.

        ``profile``, ``max_profile`` and ``check_finite`` as in :meth:`Session.run` (default:
        the most expensive profile, no cap, no check)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self.session(1)
        return session.run(x, profile, max_profile, check_finite=check_finite)

    # --- persistence and interop -------------------------------------------
    def to_bytes(self) -> bytes:
        """The .slim file this model was loaded from."""
        if isinstance(self._source, bytes):
            return self._source
        from .format import read_regular_file

        return read_regular_file(self._source)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the model as a .slim file."""
        Path(path).write_bytes(self.to_bytes())

    def to_slimfile(self) -> "SlimFile":
        """The model as plain data (metadata JSON and numpy tensors)."""
        from .format import read

        return read(self.to_bytes())

    def export_onnx(self, path: Union[str, os.PathLike], profile: ProfileKey) -> None:
        """Write a physically pruned ONNX model of one profile (needs the `convert` extra)."""
        from .convert import export_onnx

        export_onnx(self, path, profile)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.profiles)
        return f"<slimrt.Model {self.name!r} input={self.input_shape} profiles=[{names}]>"


def load(source: Union[str, os.PathLike, bytes]) -> Model:
    """Load a .slim model from a path or from the bytes of a .slim file.

    Raises FileNotFoundError / OSError if the file cannot be read or is not a
    regular file (a FIFO is refused at once, not waited on) and
    :class:`slimrt.InvalidModelError` if it is not a valid model.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return Model(_core.Model.from_bytes(data), data)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    return Model(_core.Model.load(str(path)), path.resolve())
