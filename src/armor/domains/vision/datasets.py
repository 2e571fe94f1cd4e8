"""Image datasets: sklearn digits, MNIST and Fashion-MNIST (IDX files), CIFAR-10 (python pickle batches)."""

from __future__ import annotations

import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from ...data.base import Dataset, stratified_split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
USER_DATA_DIR = Path.home() / ".armor" / "data"

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _images(arr: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / np.float32(scale))


def load_digits(split: str, data_dir=None) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    idx = stratified_split(d.target, split)
    x = _images(d.data[idx].reshape(-1, 1, 8, 8), 16.0)  # pixel counts are 0..16
    return Dataset(x, torch.from_numpy(d.target[idx].astype(np.int64)), 10, "digits")


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not), strictly: a corrupt or truncated file is a ValueError."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # sniff rather than trust the extension
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e}); re-download or re-install the file") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
                         "expected 0000<type><ndim> as in train-images-idx3-ubyte")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header; re-download or re-install the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {problem}: dims {dims} need {expected} bytes, file has {len(raw)}; "
                         "re-download or re-install the file")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for p in (directory / (stem + ".gz"), directory / stem):
            if p.is_file():
                return p
    return None


def _load_idx_pair(name: str, split: str, dirs: list[Path], hint: str) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    # Kaggle and some mirrors write "train-images.idx3-ubyte" instead of the canonical dash
    img_stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]
    lbl_stems = [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"]
    for d in dirs:
        img, lbl = _find(d, img_stems), _find(d, lbl_stems)
        if img and lbl:
            break
    else:
        looked = ", ".join(str(d) for d in dirs)
        raise FileNotFoundError(f"{name} {split} files not found (looked in {looked}): {hint}, or pass --data-dir "
                                f"DIR containing {img_stems[0]}.gz and {lbl_stems[0]}.gz (uncompressed also works)")
    x, y = read_idx(img), read_idx(lbl)
    if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or y.dtype != np.uint8:
        raise ValueError(f"{img.name} / {lbl.name}: expected uint8 N×H×W images and N labels, got "
                         f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{img} has {len(x)} images but {lbl} has {len(y)} labels; the files do not belong together")
    if len(y) and y.max() > 9:
        raise ValueError(f"{lbl}: label {y.max()} outside 0..9; is this really {name}?")
    return Dataset(_images(x[:, None], 255.0), torch.from_numpy(y.astype(np.int64)), 10, name)


def _dirs(data_dir, *defaults: Path) -> list[Path]:
    return [Path(data_dir)] if data_dir is not None else list(defaults)


def load_fashion_mnist(split: str, data_dir=None) -> Dataset:
    return _load_idx_pair("fashion-mnist", split, _dirs(data_dir, FASHION_MNIST_DIR, USER_DATA_DIR / "fashion-mnist"),
                          "install with: sudo apt-get install dataset-fashion-mnist")


def load_mnist(split: str, data_dir=None) -> Dataset:
    return _load_idx_pair("mnist", split, _dirs(data_dir, USER_DATA_DIR / "mnist"),
                          f"armor downloads nothing; put the four MNIST IDX files in {USER_DATA_DIR / 'mnist'}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds the plain dicts of numpy arrays in CIFAR batches and refuses every other global, so a
    tampered file cannot run code. The files are still expected to be trusted local copies."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes; harmless

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        with warnings.catch_warnings():  # numpy 2 warns about the numpy.core paths that old pickles use
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e}); re-download cifar-10-python.tar.gz") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels' (CIFAR-10 python version)")
    x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
        raise ValueError(f"{path}: expected uint8 N×3072 data and N labels, got {x.dtype} {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return x, y


def load_cifar10(split: str, data_dir=None) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    base = Path(data_dir) if data_dir is not None else USER_DATA_DIR / "cifar10"
    # accept the directory the tarball extracts to as well as its parent
    root = next((d for d in (base, base / "cifar-10-batches-py") if (d / names[0]).is_file()), None)
    missing = [n for n in names if root is None or not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 {split} batches not found in {base} (missing {', '.join(missing)}): armor "
                                "downloads nothing; extract cifar-10-python.tar.gz and pass --data-dir DIR "
                                "containing data_batch_1..5 and test_batch")
    parts = [_read_cifar_batch(root / n) for n in names]
    x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)  # rows are 1024 R, then G, then B
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return Dataset(_images(x, 255.0), torch.from_numpy(y), 10, "cifar10")
