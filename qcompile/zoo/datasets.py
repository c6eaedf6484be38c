"""Offline, deterministic data sets for the model zoo.

Every loader returns ``(x_train, y_train, x_test, y_test)`` as torch tensors: inputs are
``float32`` with a channel dimension (``[N, C, ...]``), labels are ``int64`` class indices.
Nothing here touches the network:

* :func:`load_fashion_mnist` reads the IDX files that the Debian package
  ``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist``.
* :func:`load_mnist1d` *generates* MNIST-1D with the ``mnist1d`` package's own procedural
  generator (``make_dataset``); it never calls the downloading ``get_dataset``.
* :func:`load_digits` uses the 8x8 digits that ship inside scikit-learn.

The loaders do not mutate global random state: MNIST-1D's generator seeds Python's and
NumPy's global RNGs, so their states are saved and restored around it.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = [
    "Dataset",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FASHION_MNIST_CLASSES",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_digits",
    "read_idx",
]

#: ``(x_train, y_train, x_test, y_test)``
Dataset = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: Where ``apt-get install dataset-fashion-mnist`` puts the files. Overridable with the
#: ``QCOMPILE_FASHION_MNIST_DIR`` environment variable or the ``root`` argument.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Per-pixel mean and standard deviation of the Fashion-MNIST training images (pixels in [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array.

    The IDX format is a 4-byte magic ``0x00 0x00 <dtype> <ndim>`` followed by ``ndim``
    big-endian ``uint32`` sizes and the row-major data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) "
            f"but the file holds {len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _fashion_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("QCOMPILE_FASHION_MNIST_DIR")
    return Path(env) if env else FASHION_MNIST_DIR


def load_fashion_mnist(root: str | os.PathLike[str] | None = None, normalize: bool = True) -> Dataset:
    """Load Fashion-MNIST from the local IDX files.

    Returns ``x_train [60000, 1, 28, 28]``, ``y_train [60000]``, ``x_test [10000, 1, 28, 28]``,
    ``y_test [10000]``. Pixels are scaled to ``[0, 1]`` and, if ``normalize`` (the default),
    standardized with :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD`.

    Raises:
        FileNotFoundError: the files are missing; install them with
            ``apt-get install dataset-fashion-mnist``.
    """
    base = _fashion_root(root)
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    paths = {k: base / v for k, v in names.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "Fashion-MNIST files not found: " + ", ".join(missing) + ". "
            "Install them with `apt-get install dataset-fashion-mnist` "
            "(or point QCOMPILE_FASHION_MNIST_DIR at a directory holding the four *-ubyte.gz files)."
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
        if normalize:
            x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        return x.contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    out = (
        images(arrays["x_train"]), labels(arrays["y_train"]),
        images(arrays["x_test"]), labels(arrays["y_test"]),
    )
    if out[0].shape != (60000, 1, 28, 28) or out[2].shape != (10000, 1, 28, 28):
        raise ValueError(f"{base}: unexpected Fashion-MNIST shapes {tuple(out[0].shape)}, {tuple(out[2].shape)}")
    return out


@contextlib.contextmanager
def _preserve_global_rngs() -> Iterator[None]:
    """Restore Python's and NumPy's global RNG states on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def load_mnist1d(seed: int = 42) -> Dataset:
    """Generate MNIST-1D (Greydanus 2020) offline with the package's default arguments.

    Returns ``x_train [4000, 1, 40]``, ``y_train [4000]``, ``x_test [1000, 1, 40]``,
    ``y_test [1000]``. The generator already standardizes the signals (mean 0, std 1).
    ``seed=42`` reproduces the reference data set. Takes about 2 s.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("load_mnist1d needs the `mnist1d` package: pip install mnist1d") from exc
    args = get_dataset_args()
    args.seed = seed
    with _preserve_global_rngs():
        d = make_dataset(args)  # procedural generator; never downloads

    def signals(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(1).contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return signals(d["x"]), labels(d["y"]), signals(d["x_test"]), labels(d["y_test"])


def load_digits(test_size: int = 360, seed: int = 0) -> Dataset:
    """Load scikit-learn's 8x8 handwritten digits (1797 images, shipped with sklearn).

    Returns ``x_train [1437, 1, 8, 8]``, ``y_train``, ``x_test [360, 1, 8, 8]``, ``y_test``
    with pixels scaled from ``0..16`` to ``[0, 1]``. The split is a stratified
    ``train_test_split(random_state=seed)``, so it is the same on every machine.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    x = np.asarray(bunch.images, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return (
        torch.from_numpy(np.ascontiguousarray(x_tr)).unsqueeze(1),
        torch.from_numpy(np.ascontiguousarray(y_tr)),
        torch.from_numpy(np.ascontiguousarray(x_te)).unsqueeze(1),
        torch.from_numpy(np.ascontiguousarray(y_te)),
    )
