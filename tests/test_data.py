"""Datasets: exact round-trips through every file format, strict parsing, and the fixed train/test split."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from armor.data import DATASETS, Dataset, all_datasets, batches, list_datasets, load_dataset
from armor.domains.vision import read_idx
from armor.domains.vision.datasets import FASHION_MNIST_DIR


def test_digits_split_is_fixed_disjoint_stratified_and_in_range():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.x.shape == (1257, 1, 8, 8) and te.x.shape == (540, 1, 8, 8) and te.input_shape == (1, 8, 8)
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64 and tr.num_classes == 10
    for ds in (tr, te):
        assert ds.x.min() == 0 and ds.x.max() == 1
        assert ds.y.bincount().tolist() == pytest.approx([len(ds) / 10] * 10, abs=4)  # stratified
    # the seed must not move test points into train: same split for any seed, and no image in both halves
    other = load_dataset("digits", "test", seed=123)
    assert torch.equal(other.x, te.x) and torch.equal(other.y, te.y)
    tr_rows = {r.numpy().tobytes() for r in tr.x.flatten(1)}
    te_rows = [r.numpy().tobytes() for r in te.x.flatten(1)]
    assert not any(r in tr_rows for r in te_rows)
    from sklearn.datasets import load_digits
    assert len(tr) + len(te) == len(load_digits().target)


def test_registry_and_unknown_names():
    assert [n for n, _ in list_datasets()] == list(all_datasets())
    assert set(DATASETS) == {"npz", "csv"}  # the library's own loaders; every named dataset comes from a domain
    assert {"digits", "fashion-mnist", "mnist", "cifar10", "npz", "csv", "breast-cancer"} <= set(all_datasets())
    with pytest.raises(ValueError, match="digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="no option"):
        load_dataset("digits", colour=True)


def test_dataset_subset_tensors_and_batches():
    ds = load_dataset("digits", "test")
    assert len(ds.subset(10)) == 10 and len(ds.subset(10_000)) == len(ds)  # a too-large n means "all"
    sub = ds.subset([5, 2])
    assert torch.equal(sub.x, ds.x[[5, 2]]) and torch.equal(sub.tensors()[1], ds.y[[5, 2]])
    with pytest.raises(ValueError):
        ds.subset(-1)
    with pytest.raises(ValueError, match="labels"):
        Dataset(ds.x, ds.y, 5, "bad")
    got = list(batches(ds.x, ds.y, 128))
    assert [len(b[0]) for b in got] == [128, 128, 128, 128, 28]
    assert torch.equal(torch.cat([b[0] for b in got]), ds.x)
    shuf = lambda: torch.cat([b[1] for b in batches(ds.x, ds.y, 100, True, torch.Generator().manual_seed(1))])
    a = shuf()
    assert torch.equal(a, shuf()) and not torch.equal(a, ds.y) and torch.equal(a.sort().values, ds.y.sort().values)


# --- IDX -------------------------------------------------------------------------------------------------

def _idx(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[arr.dtype.type]
    return (bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(arr.dtype.newbyteorder(">")).tobytes())


def _write_idx_pair(d: Path, prefix: str, x: np.ndarray, y: np.ndarray, compress=True):
    for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
        name = f"{prefix}-{kind}-ubyte"
        if compress:
            (d / f"{name}.gz").write_bytes(gzip.compress(_idx(arr)))
        else:
            (d / name).write_bytes(_idx(arr))


@pytest.mark.parametrize("arr", [np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
                                 np.array([-5, 1 << 20], dtype=np.int32), np.array([[0.5, -1.25]], np.float32)])
def test_idx_round_trip_exact(tmp_path, arr):
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(arr)))
    (tmp_path / "a").write_bytes(_idx(arr))
    for p in ("a.gz", "a"):
        got = read_idx(tmp_path / p)
        assert got.dtype == arr.dtype and np.array_equal(got, arr)


def test_idx_rejects_truncated_trailing_bad_magic_and_bad_gzip(tmp_path):
    good = _idx(np.zeros((3, 2, 2), np.uint8))
    cases = {"truncated": good[:-1], "trailing": good + b"\0", "bad magic": b"\x08\x03" + good[2:],
             "bad type": good[:2] + b"\x07" + good[3:], "short header": good[:9], "empty": b""}
    for label, raw in cases.items():
        (tmp_path / "f").write_bytes(raw)
        with pytest.raises(ValueError, match="IDX|magic|truncated|trailing"):
            read_idx(tmp_path / "f")
    (tmp_path / "f.gz").write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "f.gz")


def test_mnist_from_data_dir_round_trips_and_missing_files_explain_the_fix(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx_pair(tmp_path, "t10k", x, y, compress=False)  # uncompressed files are accepted too
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.x.shape == (7, 1, 28, 28) and ds.name == "mnist"
    assert torch.equal(ds.x, torch.from_numpy(x[:, None].astype(np.float32) / 255))
    assert torch.equal(ds.y, torch.from_numpy(y.astype(np.int64)))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "nowhere")
    _write_idx_pair(tmp_path, "train", x, y[:6])
    with pytest.raises(ValueError, match="7 images but .* 6 labels"):
        load_dataset("mnist", "train", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} absent: sudo apt-get install dataset-fashion-mnist")
def test_fashion_mnist_real_files():
    ds = load_dataset("fashion-mnist", "test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x.min() == 0 and ds.x.max() == 1
    assert ds.y.bincount().tolist() == [1000] * 10


# --- CIFAR-10 --------------------------------------------------------------------------------------------

def _cifar_batch(path: Path, x: np.ndarray, labels: list):
    # like the real files: protocol 2, arrays rebuilt through numpy.core (numpy < 2 names)
    raw = pickle.dumps({b"batch_label": b"fake", b"data": x, b"labels": labels, b"filenames": []}, protocol=2)
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def test_cifar10_round_trips_values_and_channel_order(tmp_path):
    root = tmp_path / "cifar-10-batches-py"  # the parent directory is accepted too
    root.mkdir()
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 256, (2 + i, 3072), dtype=np.uint8) for i in range(6)]
    ys = [rng.integers(0, 10, 2 + i).tolist() for i in range(6)]
    for i in range(5):
        _cifar_batch(root / f"data_batch_{i + 1}", xs[i], ys[i])
    _cifar_batch(root / "test_batch", xs[5], ys[5])
    tr, te = load_dataset("cifar10", "train", data_dir=tmp_path), load_dataset("cifar10", "test", data_dir=root)
    assert tr.x.shape == (2 + 3 + 4 + 5 + 6, 3, 32, 32) and te.x.shape == (7, 3, 32, 32)
    assert tr.y.tolist() == sum(ys[:5], []) and te.y.tolist() == ys[5]
    # a row is 1024 red values, then 1024 green, then 1024 blue, each row-major 32×32
    r = xs[5][3]
    assert te.x[3, 0, 0, 0] == r[0] / 255 and te.x[3, 0, 0, 1] == r[1] / 255 and te.x[3, 0, 1, 0] == r[32] / 255
    assert te.x[3, 1, 0, 0] == r[1024] / 255 and te.x[3, 2, 31, 31] == r[3071] / 255
    assert torch.equal(te.x, torch.from_numpy(xs[5].reshape(7, 3, 32, 32).astype(np.float32) / 255))
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=root)


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="not allowed"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# --- npz / csv -------------------------------------------------------------------------------------------

def test_npz_round_trip_and_validation(tmp_path):
    x = np.random.default_rng(0).random((30, 3, 4, 4)).astype(np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    # a single file: armor holds out a fixed stratified 30%; together the splits are the file, exactly
    tr, te = (load_dataset("npz", split, data_dir=tmp_path / "d.npz") for split in ("train", "test"))
    assert len(tr) == 21 and len(te) == 9 and tr.num_classes == te.num_classes == 3
    assert te.y.bincount().tolist() == [3, 3, 3]
    both = torch.cat([tr.x, te.x]).flatten(1)
    order = sorted(range(30), key=lambda i: both[i].numpy().tobytes())
    assert torch.equal(both[order], torch.from_numpy(x).flatten(1)[sorted(range(30), key=lambda i: x[i].tobytes())])
    assert te.split_source == "held-out 30% of d.npz (fixed stratified split)"
    assert "70% of d.npz" in tr.split_source and tr.subset(3).split_source == tr.split_source
    np.savez(tmp_path / "test.npz", x=x[:, 0, 0], y=y, num_classes=5, feature_names=np.array(list("abcd")))
    ds = load_dataset("npz", "test", data_dir=tmp_path)  # a directory means {split}.npz, used whole
    assert ds.input_shape == (4,) and ds.num_classes == 5 and ds.feature_names == list("abcd") and len(ds) == 30
    assert ds.split_source.startswith("file:")
    bad = {"range": dict(x=x * 2, y=y), "finite": dict(x=np.where(x > 0.5, np.nan, x), y=y),
           "integer": dict(x=x, y=y.astype(np.float32)), "missing": dict(x=x)}
    for what, arrays in bad.items():
        np.savez(tmp_path / f"{what}.npz", **arrays)
        with pytest.raises(ValueError, match={"range": r"\[0, 1\]", "finite": "NaN", "integer": "integer",
                                              "missing": "'y'"}[what]):
            load_dataset("npz", data_dir=tmp_path / f"{what}.npz")
    with pytest.raises(FileNotFoundError):
        load_dataset("npz", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("npz")


def test_npz_explicit_split_arrays_are_used_as_they_are(tmp_path):
    rng = np.random.default_rng(1)
    xtr, xte = rng.random((7, 5)).astype(np.float32), rng.random((3, 5)).astype(np.float32)
    ytr, yte = np.array([0, 1, 2, 0, 1, 2, 0]), np.array([0, 2, 0])  # test lacks class 1: classes from both
    np.savez(tmp_path / "s.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    tr, te = (load_dataset("npz", split, data_dir=tmp_path / "s.npz") for split in ("train", "test"))
    assert torch.equal(tr.x, torch.from_numpy(xtr)) and torch.equal(te.x, torch.from_numpy(xte))
    assert te.y.tolist() == [0, 2, 0] and tr.num_classes == te.num_classes == 3
    assert te.split_source == "file: arrays x_test/y_test of s.npz"
    np.savez(tmp_path / "half.npz", x_train=xtr, y_train=ytr)
    with pytest.raises(ValueError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        load_dataset("npz", "test", data_dir=tmp_path / "half.npz")
    np.savez(tmp_path / "both.npz", x=xtr, y=ytr, x_test=xte, y_test=yte)
    with pytest.raises(ValueError, match="keep one layout"):
        load_dataset("npz", "test", data_dir=tmp_path / "both.npz")
    # a directory: a small test file may lack a class; the classes come from both files
    d = tmp_path / "dir"
    d.mkdir()
    np.savez(d / "train.npz", x=xtr, y=ytr)
    np.savez(d / "test.npz", x=xte, y=yte)
    te = load_dataset("npz", "test", data_dir=d)
    assert te.num_classes == 3 and te.split_source == "file: dir/test.npz" and len(te) == 3


def test_single_file_split_is_fixed_disjoint_and_refuses_what_it_cannot_stratify(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.random((50, 6)).astype(np.float32)
    x[:, 0] = np.arange(50) / 49  # every row distinct
    y = (np.arange(50) % 5 == 0).astype(np.int64)  # 10 of class 1
    np.savez(tmp_path / "u.npz", x=x, y=y)
    te = load_dataset("npz", "test", data_dir=tmp_path / "u.npz")
    tr = load_dataset("npz", "train", data_dir=tmp_path / "u.npz", seed=7)  # no seed moves a test point
    assert len(te) == 15 and int(te.y.sum()) == 3 and int(tr.y.sum()) == 7
    assert set(tr.x[:, 0].tolist()).isdisjoint(te.x[:, 0].tolist())
    assert torch.equal(load_dataset("npz", "test", data_dir=tmp_path / "u.npz", seed=123).x, te.x)
    lonely = y.copy()
    lonely[1] = 2  # a class with one row cannot be on both sides of a stratified split
    np.savez(tmp_path / "lonely.npz", x=x, y=lonely)
    with pytest.raises(ValueError, match=r"class\(es\) 2 have only 1.*x_train, y_train, x_test, y_test"):
        load_dataset("npz", "test", data_dir=tmp_path / "lonely.npz")
    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{v:.4f},{c}\n" for v, c in zip(x[:, 0], y)))
    cte = load_dataset("csv", "test", data_dir=tmp_path / "t.csv")
    assert torch.equal(cte.y, te.y) and cte.split_source == "held-out 30% of t.csv (fixed stratified split)"


@pytest.mark.parametrize("labels, expected", [
    ([0, 1, 2] * 10, None),
    ([0, 1, 2] * 9 + [99, 0, 1], "none of 3..98, so inferring num_classes=100 would make 96 classes without a "
                                 "single example; odd label(s): 99 (1 row)"),  # issue 11: a stray 99
    ([1, 2, 3] * 10, "odd label(s): 1 (10 rows), 2 (10 rows), 3 (10 rows). Fix the labels (relabel to 0..2; "
                     "they look 1-based: use y - 1)"),
    ([0, 2] * 15, "none of 1, so inferring num_classes=3 would make 1 class without a single example; odd "
                  "label(s): 2 (15 rows)"),
])
def test_npz_labels_must_be_the_classes_0_to_k_minus_1(tmp_path, labels, expected):
    x = np.random.default_rng(0).random((len(labels), 2)).astype(np.float32)
    np.savez(tmp_path / "g.npz", x=x, y=np.array(labels))
    if expected is None:
        assert load_dataset("npz", data_dir=tmp_path / "g.npz").num_classes == 3
        return
    with pytest.raises(ValueError, match="labels are not the classes 0..K-1") as e:
        load_dataset("npz", data_dir=tmp_path / "g.npz")
    odd = max(labels)
    assert expected in str(e.value) and f"pass num_classes={odd + 1}" in str(e.value) and "\n" not in str(e.value)
    # an explicit num_classes that covers the labels is the user's decision: accepted
    if labels.count(odd) >= 2:
        assert load_dataset("npz", data_dir=tmp_path / "g.npz", num_classes=odd + 1).num_classes == odd + 1
        np.savez(tmp_path / "k.npz", x=x, y=np.array(labels), num_classes=odd + 1)
        assert load_dataset("npz", data_dir=tmp_path / "k.npz").num_classes == odd + 1
    with pytest.raises(ValueError, match=rf"num_classes={odd} but label\(s\) {odd} lie outside"):
        load_dataset("npz", data_dir=tmp_path / "g.npz", num_classes=odd)


def test_csv_labels_with_gaps_and_negative_labels_are_refused(tmp_path):
    rows = "".join(f"0.5,{c}\n" for c in [0, 1] * 5 + [7])
    (tmp_path / "g.csv").write_text("a,y\n" + rows)
    with pytest.raises(ValueError, match=r"none of 2..6.*odd label\(s\): 7 \(1 row\)"):
        load_dataset("csv", data_dir=tmp_path / "g.csv")
    (tmp_path / "n.csv").write_text("a,y\n" + "".join(f"0.5,{c}\n" for c in [0, 1, -1] * 4))
    with pytest.raises(ValueError, match="negative label"):
        load_dataset("csv", data_dir=tmp_path / "n.csv")


def test_csv_round_trip_label_column_and_headerless(tmp_path):
    d = tmp_path / "labelled"
    d.mkdir()
    (d / "train.csv").write_text("a,label,b\n0.5,1,0\n1,0,0.25\n\n0,2,1\n")
    (d / "test.csv").write_text("a,label,b\n0,0,0\n")
    ds = load_dataset("csv", data_dir=d, label="label")
    assert ds.x.tolist() == [[0.5, 0], [1, 0.25], [0, 1]] and ds.y.tolist() == [1, 0, 2]
    assert ds.feature_names == ["a", "b"] and ds.num_classes == 3 and ds.name == "csv"
    assert ds.split_source == "file: labelled/train.csv"
    assert load_dataset("csv", "test", data_dir=d, label="label").num_classes == 3  # classes of both files
    d = tmp_path / "plain"
    d.mkdir()
    (d / "train.csv").write_text("0.5,0.25,1\n0,1,0\n")  # no header: label is the last column
    ds = load_dataset("csv", data_dir=d)
    assert ds.x.tolist() == [[0.5, 0.25], [0, 1]] and ds.y.tolist() == [1, 0] and ds.feature_names == ["x0", "x1"]


@pytest.mark.parametrize("body, match", [
    ("0.5,,1\n", r"missing value at line 3, column 'b'"),
    ("0.5,abc,1\n", r"non-numeric value 'abc' at line 3, column 'b'"),
    ("0.5,0.5,x\n", r"non-numeric value 'x' at line 3, column 'y'"),
    ("0.5,0.5,1.5\n", r"label '1.5' at line 3, column 'y' is not an integer"),
    ("0.5,3,1\n", r"column 'b'.*\[0, 1\]"),
    ("0.5,0.5\n", r"line 3 has 2 fields"),
])
def test_csv_errors_name_line_and_column(tmp_path, body, match):
    (tmp_path / "bad.csv").write_text("a,b,y\n0,0,0\n" + body)
    with pytest.raises(ValueError, match=match):
        load_dataset("csv", data_dir=tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="no label column 'z'"):
        load_dataset("csv", data_dir=tmp_path / "bad.csv", label="z")
