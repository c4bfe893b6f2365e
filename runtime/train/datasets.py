"""Image classification data for training and searching slimmable models, as numpy arrays.

Every set is a :class:`Dataset`: float32 NCHW images and int64 labels, split into train and test.
Nothing is downloaded and nothing is cached on disk; the built-in sets are made from the 8x8
digits that scikit-learn ships (``pip install slimrt[train]``), and this module imports numpy
only (torch is not needed to make or load data).

* ``"digits"`` (:func:`digits`): the 1797 digits upsampled to 16x16, a stratified 80/20 split.
  Easy: every width scores 97% or more (below).
* ``"cluttered-digits"`` (:func:`cluttered_digits`): three augmented copies of every digit on a
  24x24 canvas (scaled, rotated, shifted, noisy, with distractor strokes and fragments of other
  digits). Hard enough that narrower widths visibly lose accuracy.
* a path to a ``.npz`` file (:func:`load_dataset`): keys ``x``, ``y`` and optionally ``x_test``,
  ``y_test``; checked, with a :class:`DataError` that names the key and the problem.

Test accuracy of a small CNN (3x [conv3x3, BN, ReLU, max-pool 2], 16/32/64 channels, 2x2
average pool, linear head; Adam 2e-3, cosine decay, batch 64, 10 epochs; mean of 2 runs, split
seed 0) at width 1 / 0.5 / 0.25 of every layer:

=================  ======  ======  ======
set                 1.0     0.5     0.25
=================  ======  ======  ======
digits              99.7%   98.8%   97.0%
cluttered-digits    93.6%   88.6%   74.1%
=================  ======  ======  ======

Splits are stratified and seeded. For a given seed the test part of ``cluttered-digits`` holds
copies of exactly the source digits that form the test part of ``digits``, and no copy of a test
digit is in training (nor is any fragment pasted from one).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "DataError", "Dataset", "cluttered_digits", "digits", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "cluttered-digits")

TEST_FRACTION = 0.2
CLUTTER_COPIES = 3  # augmented copies of each source digit
CLUTTER_SIDE = 24  # canvas side, pixels


class DataError(ValueError):
    """A data file or dataset spec that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images of one classification task.

    ``x_*`` are float32, NCHW and C-contiguous; ``y_*`` are int64 in ``[0, num_classes)``.
    ``train_groups`` / ``test_groups``, when given, hold for every image the index of the source
    it was derived from (several augmented copies share one); :meth:`split` keeps a group on one
    side so that validation never sees a copy of a training image. ``eq=False``: two datasets
    compare by identity (their arrays cannot be compared or hashed as a whole).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # how it was made, e.g. "sklearn digits, stratified 80/20 split, seed 0"
    train_groups: np.ndarray | None = None
    test_groups: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Hold out a seeded, stratified ``fraction`` of the training part for validation.

        Returns ``(fit, validation)``. Both train on the remaining training images; ``fit`` keeps
        this dataset's test part, ``validation`` has the held-out images as its test part (use it
        for search and early stopping, ``fit`` for the final figure). With ``train_groups`` the
        held-out fraction is of groups, and a group is never on both sides.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        if self.train_groups is None:
            keep, held = _stratified_split(self.y_train, fraction, rng)
        else:
            keep, held = _group_split(self.train_groups, self.y_train, fraction, rng)
        if keep.size == 0 or held.size == 0:
            raise ValueError(f"split fraction {fraction} of the {self.y_train.size} training images of "
                             f"{self.name!r} leaves one side empty: choose a fraction nearer 0.5")
        groups = self.train_groups
        fit = replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep],
                      train_groups=None if groups is None else groups[keep])
        validation = replace(fit, name=f"{self.name}/validation", x_test=self.x_train[held],
                             y_test=self.y_train[held], test_groups=None if groups is None else groups[held],
                             source=f"{self.source}; validation: stratified {fraction:g} of train, seed {seed}")
        return fit, validation


# ---- splits -----------------------------------------------------------------------------


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held) indices; ``round(fraction * n)`` held, each class in proportion.

    A class gets ``floor(fraction * count)`` held images; the few left to reach the total go to
    the classes with the largest remainders (ties broken at random), as scikit-learn does.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    missing = int(np.floor(fraction * labels.size + 0.5)) - int(take.sum())
    order = np.lexsort((rng.random(classes.size), -(quota - take)))
    take[order[:missing]] += 1
    held = np.zeros(labels.size, dtype=bool)
    for c in range(classes.size):
        members = np.flatnonzero(inverse == c)
        held[rng.permutation(members)[:take[c]]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _group_split(groups: np.ndarray, labels: np.ndarray, fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stratified_split` over groups (each labelled by its first image); image indices out."""
    ids, first = np.unique(groups, return_index=True)
    _, held_groups = _stratified_split(labels[first], fraction, rng)
    held = np.isin(groups, ids[held_groups])
    return np.flatnonzero(~held), np.flatnonzero(held)


# ---- digits -----------------------------------------------------------------------------


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 bundled digits: (images float64 [N, 8, 8] in [0, 1], labels int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits datasets need scikit-learn: pip install slimrt[train]") from e
    bunch = load_digits()
    return bunch.images / 16.0, bunch.target.astype(np.int64)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's digits upsampled (nearest) to [N, 1, 16, 16] in [0, 1]; stratified 80/20 split.

    ``seed`` picks the split (1438 train / 359 test); the default 0 is the reference split.
    """
    images, labels = _load_digits()
    x = np.kron(images, np.ones((2, 2))).astype(np.float32)[:, None]
    train, test = _stratified_split(labels, TEST_FRACTION, np.random.default_rng(seed))
    return Dataset(name="digits", x_train=x[train], y_train=labels[train], x_test=x[test],
                   y_test=labels[test], num_classes=10,
                   source=f"sklearn digits, 8x8 -> 16x16 nearest, stratified 80/20 split, seed {seed}",
                   train_groups=train, test_groups=test)


def _warp(images: np.ndarray, inverse: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resampling of ``images`` [N, h, w] onto float32 [N, side, side]; zero outside the source.

    ``inverse`` [N, 2, 3] maps an output pixel centre (column, row, 1) to source (column, row),
    pixel centres at integers.
    """
    n, h, w = images.shape
    padded = np.zeros((n, h + 2, w + 2), np.float32)
    padded[:, 1:-1, 1:-1] = images
    rows, cols = np.mgrid[0:side, 0:side].reshape(2, 1, -1).astype(np.float32)
    m = inverse.astype(np.float32)[..., None]
    # +1: coordinates in the padded image; clipping onto the zero border gives zero outside.
    sx = np.clip(m[:, 0, 0] * cols + m[:, 0, 1] * rows + (m[:, 0, 2] + 1), 0, w + 1)
    sy = np.clip(m[:, 1, 0] * cols + m[:, 1, 1] * rows + (m[:, 1, 2] + 1), 0, h + 1)
    x0 = np.minimum(sx.astype(np.intp), w)  # floor: sx >= 0
    y0 = np.minimum(sy.astype(np.intp), h)
    fx, fy = sx - x0.astype(np.float32), sy - y0.astype(np.float32)
    at = padded.reshape(-1)
    i00 = np.arange(n)[:, None] * ((h + 2) * (w + 2)) + y0 * (w + 2) + x0
    out = ((1 - fy) * ((1 - fx) * at[i00] + fx * at[i00 + 1])
           + fy * ((1 - fx) * at[i00 + w + 2] + fx * at[i00 + w + 3]))
    return out.reshape(n, side, side)


def _affine_inverse(scale: np.ndarray, angle: np.ndarray, centre_out: np.ndarray,
                    centre_src: np.ndarray) -> np.ndarray:
    """[N, 2, 3] inverse maps of "scale by ``scale``, rotate by ``angle``, move ``centre_src`` to ``centre_out``"."""
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    m = np.empty((scale.size, 2, 3))
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, :, 2] = centre_src - np.einsum("nij,nj->ni", m[:, :, :2], centre_out)
    return m


def _strokes(n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """[n, side, side] images of one short antialiased line segment each (length 4-9 px)."""
    start = rng.uniform(1, side - 2, (n, 2))
    angle = rng.uniform(0, np.pi, n)
    length = rng.uniform(4, 9, n)
    half_width = rng.uniform(0.5, 1.1, n)
    direction = np.stack([np.cos(angle), np.sin(angle)], 1) * length[:, None]
    rows, cols = np.mgrid[0:side, 0:side].reshape(2, -1).astype(np.float64)
    px, py = cols[None] - start[:, :1], rows[None] - start[:, 1:]
    t = np.clip((px * direction[:, :1] + py * direction[:, 1:]) / length[:, None] ** 2, 0, 1)
    dist = np.hypot(px - t * direction[:, :1], py - t * direction[:, 1:])  # to the nearest point of the segment
    return np.clip(half_width[:, None] + 0.5 - dist, 0, 1).astype(np.float32).reshape(n, side, side)


def _fragments(images: np.ndarray, donors: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """[n, side, side] images of a random 3-5 px square crop of ``images[donors]``, scaled 1.5-2.5x, any angle."""
    n, h, w = donors.size, images.shape[1], images.shape[2]
    size = rng.integers(3, 6, n)
    corner = np.stack([rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)], 1)
    rows, cols = np.mgrid[0:h, 0:w]
    inside = ((cols[None] >= corner[:, 0, None, None]) & (cols[None] < (corner[:, 0] + size)[:, None, None])
              & (rows[None] >= corner[:, 1, None, None]) & (rows[None] < (corner[:, 1] + size)[:, None, None]))
    crops = images[donors] * inside
    inverse = _affine_inverse(rng.uniform(1.5, 2.5, n), rng.uniform(-np.pi, np.pi, n),
                              rng.uniform(2, side - 3, (n, 2)), corner + (size[:, None] - 1) / 2)
    return _warp(crops, inverse, side)


def _clutter(images: np.ndarray, sources: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmented float32 [len(sources), side, side] copies of ``images[sources]``.

    Fragments are cut from digits of ``pool`` (sorted source indices) only, so that a test image
    carries no piece of a training digit.
    """
    n, side = sources.size, CLUTTER_SIDE
    scale = rng.uniform(1.5, 2.2, n)
    angle = np.deg2rad(rng.uniform(-25, 25, n))
    reach = 0.7 * np.maximum(1.0, side / 2 - 4.4 * scale)  # keep the digit on the canvas, mostly
    centre = (side - 1) / 2 + rng.uniform(-1, 1, (n, 2)) * reach[:, None]
    contrast = rng.uniform(0.7, 1.0, n)
    canvas = _warp(images[sources], _affine_inverse(scale, angle, centre, np.full((n, 2), 3.5)), side)
    canvas *= contrast.astype(np.float32)[:, None, None]
    # 2-4 distractors per image, each a short stroke or (with probability 1/2) a fragment of
    # another digit of the pool; overlaid by taking the maximum, then noise on everything.
    count = rng.integers(2, 5, n)
    owner = np.repeat(np.arange(n), count)
    fragment = rng.random(owner.size) < 0.5
    layers = np.empty((owner.size, side, side), np.float32)
    donors = pool[rng.integers(0, pool.size, int(fragment.sum()))]
    own = sources[owner[fragment]]  # never the image's own digit: take the next one of the pool
    donors = np.where(donors == own, pool[(np.searchsorted(pool, donors) + 1) % pool.size], donors)
    layers[fragment] = _fragments(images, donors, side, rng)
    layers[~fragment] = _strokes(int((~fragment).sum()), side, rng)
    layers *= rng.uniform(0.25, 0.6, owner.size).astype(np.float32)[:, None, None]
    rank = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)  # 0..3 within an image
    for r in range(4):
        mine = rank == r
        canvas[owner[mine]] = np.maximum(canvas[owner[mine]], layers[mine])
    sigma = rng.uniform(0.02, 0.08, n).astype(np.float32)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * sigma[:, None, None]
    return np.clip(canvas, 0, 1)


def cluttered_digits(seed: int = 0) -> Dataset:
    """Harder digits: [N, 1, 24, 24] augmented copies, split by source digit; bit-identical for a seed.

    Each of the 1797 digits gives three copies, bilinearly scaled to 1.5-2.2x of 8 px, rotated
    within +-25 degrees, shifted on a 24x24 canvas, with 2-4 distractors (short strokes, or
    fragments of other digits of the same side of the split) at lower intensity and gaussian
    noise; values in [0, 1]. ``seed`` picks the split of source digits (the same as
    :func:`digits` with that seed) and the augmentation; train has 4314 images, test 1077.
    ``train_groups`` / ``test_groups`` give each image's source digit.
    """
    images, labels = _load_digits()
    train_src, test_src = _stratified_split(labels, TEST_FRACTION, np.random.default_rng(seed))
    rng = np.random.default_rng([seed, 1])  # augmentation stream, independent of the split
    parts = []
    for src in (train_src, test_src):
        copies = np.repeat(src, CLUTTER_COPIES)
        parts.append((_clutter(images, copies, src, rng)[:, None], labels[copies], copies))
    (x_train, y_train, g_train), (x_test, y_test, g_test) = parts
    return Dataset(name="cluttered-digits", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=10,
                   source=(f"sklearn digits, {CLUTTER_COPIES} copies each on {CLUTTER_SIDE}x{CLUTTER_SIDE}: scale "
                           "1.5-2.2x, rotation +-25 deg, shift, 2-4 strokes/fragments, gaussian noise; "
                           f"stratified 80/20 split by source digit, seed {seed}"),
                   train_groups=g_train, test_groups=g_test)


# ---- .npz files -------------------------------------------------------------------------


def _read(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: key {key!r} holds an object (pickled) array, which is never loaded: "
                            "store numeric arrays") from e
        raise DataError(f"{path}: key {key!r} is not a readable .npy array ({e}): write the file again "
                        "with np.savez") from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: key {key!r} is corrupt ({e}): write the file again with np.savez") from e


def _images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim != 4:
        raise DataError(f"{path}: {key!r} has shape {x.shape} (rank {x.ndim}): expected rank 4, N x C x H x W "
                        "(for grey images add a channel axis: x[:, None])")
    if x.shape[0] == 0:
        raise DataError(f"{path}: {key!r} has no images (shape {x.shape}): expected at least one")
    if min(x.shape[1:]) == 0:
        raise DataError(f"{path}: {key!r} has shape {x.shape}: channels, height and width must be positive")
    if x.dtype.kind != "f":
        raise DataError(f"{path}: {key!r} has dtype {x.dtype}: expected floating point images (float32; float16 "
                        "and float64 are converted); scale integer pixels first, e.g. x.astype(np.float32) / 255")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, reported below
        x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {key!r} has {int(bad.sum())} NaN or Inf values (after conversion to float32), "
                        f"the first at index {first}: expected finite pixel values")
    return x


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: {key!r} has shape {y.shape} (rank {y.ndim}): expected rank 1, one class "
                        "index per image")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: {key!r} has dtype {y.dtype}: expected integer class indices 0..K-1 "
                        "(non-integer labels; for one-hot rows use y.argmax(1))")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {key!r} has negative labels (min {int(y.min())}): expected class indices 0..K-1")
    return y.astype(np.int64)


def _arrays(archive: np.lib.npyio.NpzFile,
            path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Checked (x, y, x_test, y_test) of an open archive; the test pair is None when absent."""
    keys = set(archive.files)
    for key in ("x", "y"):
        if key not in keys:
            raise DataError(f"{path}: no key {key!r} (found {sorted(keys)}): expected 'x' (float32 images, "
                            "N x C x H x W), 'y' (integer labels, N) and optionally 'x_test', 'y_test'")
    has_test = {"x_test", "y_test"} & keys
    if len(has_test) == 1:
        (given,) = has_test
        other = "y_test" if given == "x_test" else "x_test"
        raise DataError(f"{path}: has {given!r} but no {other!r}: give both or neither "
                        "(without them 20% of 'x' is held out for test)")
    x = _images(_read(archive, "x", path), "x", path)
    y = _labels(_read(archive, "y", path), "y", path)
    if not has_test:
        return x, y, None, None
    x_test = _images(_read(archive, "x_test", path), "x_test", path)
    y_test = _labels(_read(archive, "y_test", path), "y_test", path)
    return x, y, x_test, y_test


def _load_npz(path: Path, seed: int) -> Dataset:
    if not path.is_file():
        problem = "not a file" if path.exists() else "no such file"
        raise DataError(f"{path}: {problem}: give an existing .npz file or one of {', '.join(DATASETS)}")
    with open(path, "rb") as f:  # numpy leaks the handle it opens when the zip is unreadable
        if f.read(4) != b"PK\x03\x04":
            raise DataError(f"{path}: not an .npz archive (a zip of .npy arrays): write it with "
                            "np.savez(path, x=images, y=labels)")
        f.seek(0)
        try:
            archive = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{path}: corrupt .npz archive ({e}): write it again with np.savez") from e
        with archive:
            x, y, x_test, y_test = _arrays(archive, path)
    has_test = x_test is not None
    pairs = [("x", x, "y", y)] + ([("x_test", x_test, "y_test", y_test)] if has_test else [])
    for xk, xv, yk, yv in pairs:
        if xv.shape[0] != yv.shape[0]:
            raise DataError(f"{path}: {xk!r} has {xv.shape[0]} images but {yk!r} has {yv.shape[0]} labels: "
                            "expected one label per image")
    if has_test and x_test.shape[1:] != x.shape[1:]:
        raise DataError(f"{path}: 'x_test' images are {'x'.join(map(str, x_test.shape[1:]))} (C x H x W) but 'x' "
                        f"images are {'x'.join(map(str, x.shape[1:]))}: train and test must have the same "
                        "channels, height and width")
    classes = np.unique(np.concatenate([y, y_test]) if has_test else y)
    if classes.size < 2:
        raise DataError(f"{path}: the labels name only {classes.size} class ({classes.tolist()}): "
                        "a classifier needs at least 2")
    if has_test:
        how = "x/y and x_test/y_test as given"
    else:
        train, test = _stratified_split(y, TEST_FRACTION, np.random.default_rng(seed))
        if train.size == 0 or test.size == 0:
            raise DataError(f"{path}: {y.size} images are too few to hold out 20% for test: "
                            "add images or give 'x_test' and 'y_test'")
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
        how = f"x/y, stratified 80/20 split, seed {seed}"
    return Dataset(name=path.stem, x_train=x, y_train=y, x_test=x_test, y_test=y_test,
                   num_classes=int(classes.max()) + 1, source=f"{path}: {how}")


def load_dataset(spec: str | os.PathLike[str], seed: int = 0) -> Dataset:
    """A dataset by name (one of :data:`DATASETS`) or from a ``.npz`` file.

    The file holds ``x`` (float images, N x C x H x W; float16/float64 are converted to float32),
    ``y`` (integer labels, N) and optionally both ``x_test`` and ``y_test``; without them a seeded
    stratified 20% of ``x`` is the test part. ``num_classes`` is the largest label + 1. The file
    is read with ``allow_pickle=False``. Raises :class:`DataError` for an unknown name or a file
    that cannot be used.
    """
    if isinstance(spec, str) and spec in DATASETS:
        return digits(seed) if spec == "digits" else cluttered_digits(seed)
    path = Path(spec)
    if isinstance(spec, str) and path.suffix != ".npz" and not path.exists():
        raise DataError(f"unknown dataset {spec!r}: expected one of {', '.join(DATASETS)}, "
                        "or a path to a .npz file with keys x, y (and optionally x_test, y_test)")
    return _load_npz(path, seed)
