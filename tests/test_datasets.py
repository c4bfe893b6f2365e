"""Training data: the built-in digit sets, .npz loading and its errors, stratified splits.

Shapes, dtypes and ranges of every set; bit-identical regeneration for a seed; cluttered-digits
split by source digit; every defect of a .npz file raises DataError with a message naming it;
splits are stratified (each class held out in proportion) and seeded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from slimrt.train.datasets import DATASETS, DataError, Dataset, cluttered_digits, digits, load_dataset


@pytest.fixture(scope="module")
def plain() -> Dataset:
    return digits()


@pytest.fixture(scope="module")
def cluttered() -> Dataset:
    return cluttered_digits()


def check_arrays(ds: Dataset, shape: tuple[int, int, int]) -> None:
    assert ds.input_shape == shape
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:] == shape
        assert y.dtype == np.int64 and y.shape == (x.shape[0],)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < ds.num_classes


def test_import_needs_no_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import slimrt.train.datasets"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits(plain: Dataset) -> None:
    check_arrays(plain, (1, 16, 16))
    assert plain.num_classes == 10 and plain.name == "digits" and "seed 0" in plain.source
    assert plain.x_train.shape[0] + plain.x_test.shape[0] == 1797
    assert plain.x_test.shape[0] == 359
    assert plain.x_train.max() == 1.0
    # Nearest upsampling: every 2x2 block is one source pixel.
    x = plain.x_train[:, 0]
    assert np.array_equal(x[:, ::2, ::2], x[:, 1::2, 1::2])
    assert set(plain.train_groups.tolist()).isdisjoint(plain.test_groups.tolist())


def test_digits_seed_picks_the_split(plain: Dataset) -> None:
    again = digits(0)
    assert np.array_equal(again.x_train, plain.x_train) and np.array_equal(again.y_test, plain.y_test)
    other = digits(1)
    assert other.x_test.shape == plain.x_test.shape
    assert not np.array_equal(other.test_groups, plain.test_groups)
    assert np.array_equal(np.bincount(other.y_test), np.bincount(plain.y_test))  # same stratified counts


def test_cluttered_digits(cluttered: Dataset, plain: Dataset) -> None:
    check_arrays(cluttered, (1, 24, 24))
    assert cluttered.num_classes == 10 and cluttered.name == "cluttered-digits"
    assert cluttered.x_train.shape[0] == 3 * plain.x_train.shape[0] == 4314
    assert cluttered.x_test.shape[0] == 3 * plain.x_test.shape[0]
    x = cluttered.x_train[:, 0]
    assert (x.max(axis=(1, 2)) > 0.5).all()  # every image shows its digit
    row = (x.sum(2) * np.arange(24)).sum(1) / x.sum((1, 2))
    assert row.std() > 1.0  # shifted on the canvas, not centred


def test_cluttered_digits_split_by_source(cluttered: Dataset, plain: Dataset) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    train, test = cluttered.train_groups, cluttered.test_groups
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert np.array_equal(np.unique(test), plain.test_groups)  # the test digits of digits(seed)
    assert np.array_equal(np.unique(train), plain.train_groups)
    assert np.array_equal(np.bincount(train, minlength=1797), np.where(np.isin(np.arange(1797), train), 3, 0))
    assert np.array_equal(cluttered.y_train, target[train]) and np.array_equal(cluttered.y_test, target[test])
    # Copies of one source are different images.
    assert not np.array_equal(cluttered.x_train[0], cluttered.x_train[1])


def test_cluttered_digits_deterministic(cluttered: Dataset) -> None:
    again = cluttered_digits(0)
    for field in ("x_train", "y_train", "x_test", "y_test", "train_groups", "test_groups"):
        assert np.array_equal(getattr(again, field), getattr(cluttered, field)), field
    assert again.x_train.tobytes() == cluttered.x_train.tobytes()


def test_load_dataset_by_name(plain: Dataset) -> None:
    assert DATASETS == ("digits", "cluttered-digits")
    assert np.array_equal(load_dataset("digits").x_test, plain.x_test)
    with pytest.raises(DataError, match=r"unknown dataset 'mnist': expected one of digits, cluttered-digits"):
        load_dataset("mnist")


# ---- Dataset.split ----------------------------------------------------------------------


def test_split_is_stratified_and_seeded(plain: Dataset) -> None:
    fit, val = plain.split(0.25, seed=3)
    n = plain.y_train.size
    assert val.x_test.shape[0] == round(0.25 * n) and fit.x_train.shape[0] == n - round(0.25 * n)
    assert np.array_equal(fit.x_train, val.x_train) and np.array_equal(fit.x_test, plain.x_test)
    assert val.name == "digits/validation" and "validation" in val.source
    counts = np.bincount(plain.y_train, minlength=10)
    held = np.bincount(val.y_test, minlength=10)
    assert np.all(np.abs(held - 0.25 * counts) < 1.0)
    # A partition of the training part.
    assert np.array_equal(np.sort(np.concatenate([fit.train_groups, val.test_groups])), np.sort(plain.train_groups))
    check_arrays(fit, (1, 16, 16))
    check_arrays(val, (1, 16, 16))
    same, _ = plain.split(0.25, seed=3)
    other, _ = plain.split(0.25, seed=4)
    assert np.array_equal(same.train_groups, fit.train_groups)
    assert not np.array_equal(other.train_groups, fit.train_groups)


def test_split_keeps_copies_of_a_source_together(cluttered: Dataset) -> None:
    fit, val = cluttered.split(0.2)
    assert set(fit.train_groups.tolist()).isdisjoint(val.test_groups.tolist())
    assert val.x_test.shape[0] == 3 * round(0.2 * cluttered.x_train.shape[0] / 3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_split_fraction_out_of_range(plain: Dataset, fraction: float) -> None:
    with pytest.raises(ValueError, match="must be in"):
        plain.split(fraction)


# ---- .npz files ------------------------------------------------------------------------


def images(n: int, shape: tuple[int, int, int] = (1, 4, 4), dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(n).random((n, *shape)).astype(dtype)


def labels(n: int, classes: int = 2) -> np.ndarray:
    return np.arange(n) % classes


def write(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_split_sizes(tmp_path: Path) -> None:
    path = write(tmp_path, x=images(100), y=labels(100))
    ds = load_dataset(path, seed=5)
    assert ds.name == "data" and ds.num_classes == 2 and ds.input_shape == (1, 4, 4)
    assert ds.x_train.shape[0] == 80 and ds.x_test.shape[0] == 20
    assert np.array_equal(np.bincount(ds.y_test), [10, 10])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert np.array_equal(load_dataset(str(path), seed=5).x_test, ds.x_test)
    assert not np.array_equal(load_dataset(path, seed=6).x_test, ds.x_test)
    fit, val = ds.split(0.25)  # no groups: a split of images
    assert fit.x_train.shape[0] == 60 and np.array_equal(np.bincount(val.y_test), [10, 10])


def test_npz_with_test_part(tmp_path: Path) -> None:
    x_test = images(7)
    path = write(tmp_path, x=images(10).astype(np.float64), y=labels(10).astype(np.uint8),
                 x_test=x_test.astype(np.float16), y_test=labels(7, 4))
    ds = load_dataset(path)
    assert ds.x_train.shape[0] == 10 and ds.x_test.shape[0] == 7
    assert ds.num_classes == 4  # largest label, over train and test, + 1
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert np.allclose(ds.x_test, x_test, atol=1e-3)


def test_npz_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.npz: no such file"):
        load_dataset(tmp_path / "missing.npz")
    with pytest.raises(DataError, match=r"missing\.npz: no such file"):
        load_dataset(str(tmp_path / "missing.npz"))


def test_npz_not_an_archive(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"notes\.npz: not an \.npz archive"):
        load_dataset(text)
    npy = tmp_path / "array.npy"
    np.save(npy, images(4))
    with pytest.raises(DataError, match=r"array\.npy: not an \.npz archive"):
        load_dataset(npy)


def test_npz_corrupt(tmp_path: Path) -> None:
    path = write(tmp_path, x=images(20), y=labels(20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"data\.npz: corrupt \.npz archive"):
        load_dataset(path)
    path = write(tmp_path, x=images(20), y=labels(20))
    data = bytearray(path.read_bytes())
    data[data.index(b"x.npy") + 200] ^= 0xFF  # inside the array bytes of 'x'
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"key 'x' is corrupt"):
        load_dataset(path)


@pytest.mark.parametrize("missing", ["x", "y"])
def test_npz_missing_key(tmp_path: Path, missing: str) -> None:
    arrays = {"x": images(10), "y": labels(10)}
    del arrays[missing]
    with pytest.raises(DataError, match=rf"data\.npz: no key '{missing}'"):
        load_dataset(write(tmp_path, **arrays))


@pytest.mark.parametrize(("given", "absent"), [("x_test", "y_test"), ("y_test", "x_test")])
def test_npz_half_a_test_part(tmp_path: Path, given: str, absent: str) -> None:
    extra = {"x_test": images(5)} if given == "x_test" else {"y_test": labels(5)}
    with pytest.raises(DataError, match=rf"has '{given}' but no '{absent}': give both or neither"):
        load_dataset(write(tmp_path, x=images(10), y=labels(10), **extra))


CASES = {
    "x rank": ({"x": images(10)[:, 0], "y": labels(10)}, r"'x' has shape \(10, 4, 4\) \(rank 3\): expected rank 4"),
    "y rank": ({"x": images(10), "y": labels(10)[:, None]}, r"'y' has shape \(10, 1\) \(rank 2\): expected rank 1"),
    "lengths": ({"x": images(10), "y": labels(9)}, r"'x' has 10 images but 'y' has 9 labels"),
    "test lengths": ({"x": images(10), "y": labels(10), "x_test": images(4), "y_test": labels(5)},
                     r"'x_test' has 4 images but 'y_test' has 5 labels"),
    "int x": ({"x": (images(10) * 255).astype(np.uint8), "y": labels(10)},
              r"'x' has dtype uint8: expected floating point images"),
    "bool x": ({"x": images(10) > 0.5, "y": labels(10)}, r"'x' has dtype bool: expected floating point"),
    "object x": ({"x": np.array([None, 1], dtype=object), "y": labels(2)},
                 r"key 'x' holds an object \(pickled\) array"),
    "nan x": ({"x": np.where(np.arange(160).reshape(10, 1, 4, 4) == 21, np.nan, images(10)), "y": labels(10)},
              r"'x' has 1 NaN or Inf values .* the first at index \(1, 0, 1, 1\)"),
    "inf x_test": ({"x": images(10), "y": labels(10), "x_test": np.full((2, 1, 4, 4), np.inf), "y_test": labels(2)},
                   r"'x_test' has 32 NaN or Inf values"),
    "float64 overflow": ({"x": np.full((4, 1, 4, 4), 1e300), "y": labels(4)}, r"'x' has 64 NaN or Inf values"),
    "float y": ({"x": images(10), "y": labels(10) + 0.5}, r"'y' has dtype float64: expected integer class indices"),
    "negative y": ({"x": images(10), "y": labels(10) - 1}, r"'y' has negative labels \(min -1\)"),
    "negative y_test": ({"x": images(10), "y": labels(10), "x_test": images(3), "y_test": -labels(3)},
                        r"'y_test' has negative labels"),
    "test shape": ({"x": images(10), "y": labels(10), "x_test": images(3, (3, 4, 4)), "y_test": labels(3)},
                   r"'x_test' images are 3x4x4 \(C x H x W\) but 'x' images are 1x4x4"),
    "test size": ({"x": images(10), "y": labels(10), "x_test": images(3, (1, 4, 5)), "y_test": labels(3)},
                  r"same channels, height and width"),
    "empty x": ({"x": images(0), "y": labels(0)}, r"'x' has no images"),
    "empty x_test": ({"x": images(10), "y": labels(10), "x_test": images(0), "y_test": labels(0)},
                     r"'x_test' has no images"),
    "zero width": ({"x": np.zeros((10, 1, 4, 0), np.float32), "y": labels(10)},
                   r"channels, height and width must be positive"),
    "one class": ({"x": images(10), "y": np.full(10, 3)}, r"only 1 class \(\[3\]\): a classifier needs at least 2"),
    "too few": ({"x": images(2), "y": labels(2)}, r"2 images are too few to hold out 20%"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_npz_errors(tmp_path: Path, case: str) -> None:
    arrays, message = CASES[case]
    path = write(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, ValueError)
