"""Bad user files through the CLI: every one is a one-line `error: ...` and exit code 2, never a traceback or
a silently wrong run (labels with gaps, robustness measured on training points).

Runtime: about 10 s.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from armor.app.cli import app
from armor.data import load_dataset

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(tmp_path, dataset, path, out="run"):
    return invoke("train", "--dataset", dataset, "--data-dir", path, "--epochs", "1", "--quiet", "--out",
                  tmp_path / out)


def assert_clean_error(r, *needles):
    """Exit 2 with `error: ...`, no traceback, and the message names what is wrong."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an exception escaping the command
    assert "Traceback" not in r.output and r.output.lstrip().startswith("error:"), r.output
    flat = " ".join(r.output.split())  # rich wraps long lines at the terminal width
    for needle in needles:
        assert needle in flat, (needle, flat)


def blobs(n=40, d=4, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.clip(0.5 + 0.3 * (y[:, None] - (classes - 1) / 2) + 0.1 * rng.standard_normal((n, d)), 0, 1)
    x[:, 0] = np.arange(n) / (n - 1)  # every row distinct, so rows can be told apart
    return x.astype(np.float32), y


@pytest.fixture()
def good(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "good.npz", x=x, y=y)
    return tmp_path / "good.npz"


# --- issue 16: unreadable and malformed files ------------------------------------------------------------

def test_corrupt_npz_truncated_or_garbage(tmp_path, good):
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    assert_clean_error(train(tmp_path, "npz", tmp_path / "trunc.npz"), "trunc.npz", "corrupt or truncated .npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not an archive at all" * 4)
    assert_clean_error(train(tmp_path, "npz", tmp_path / "junk.npz"), "junk.npz", "not an .npz archive")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_clean_error(train(tmp_path, "npz", tmp_path / "empty.npz"), "empty file")


def test_damaged_npz_bytes_are_always_a_value_error(tmp_path):
    """Truncations and flipped bytes anywhere in plain and compressed archives: ValueError, whatever the
    zip or zlib layer raises underneath."""
    x, y = blobs(20)
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "a.npz", x=x, y=y)
        raw = (tmp_path / "a.npz").read_bytes()
        rng = np.random.default_rng(0)
        variants = [raw[:k] for k in (4, 30, 100, len(raw) // 2, len(raw) - 1)]
        for pos in rng.integers(0, len(raw), 30):
            b = bytearray(raw)
            b[pos] ^= 0xFF
            variants.append(bytes(b))
        for v in variants:
            (tmp_path / "b.npz").write_bytes(v)
            try:
                load_dataset("npz", "train", data_dir=tmp_path / "b.npz")
            except ValueError as e:
                assert "b.npz" in str(e) and "\n" not in str(e)
            # a flipped byte in padding or an unused header field can leave the archive readable: fine


def test_npy_file_given_for_the_npz_dataset(tmp_path):
    x, _ = blobs()
    np.save(tmp_path / "x.npy", x)
    assert_clean_error(train(tmp_path, "npz", tmp_path / "x.npy"), "x.npy", "a .npy file holds one array",
                       "np.savez('data.npz', x=x, y=y)")


@pytest.mark.parametrize("arrays, needles", [
    (lambda x, y: {"x": x}, ["missing array(s) ['y'] (it has ['x'])", "np.savez(path, x=x, y=y)"]),
    (lambda x, y: {"y": y}, ["missing array(s) ['x'] (it has ['y'])"]),
    (lambda x, y: {"features": x, "labels": y}, ["missing array(s) ['x', 'y']", "it has ['features', 'labels']"]),
    (lambda x, y: {"x": np.where(x > 0.9, np.nan, x), "y": y},
     ["x contains NaN", "the first in row", "remove or impute"]),
    (lambda x, y: {"x": x * 255, "y": y},
     ["values must lie in [0, 1]", "the first row outside is row 0", "divide uint8 images by 255"]),
    (lambda x, y: {"x": x, "y": y[:30]}, ["x has 40 rows but y has 30 labels"]),
    (lambda x, y: {"x": x[:0], "y": y[:0]}, ["x has no rows"]),
    (lambda x, y: {"x": x, "y": y, "num_classes": np.array([2, 3])}, ["num_classes must be a single integer"]),
    (lambda x, y: {"x": x.astype(object), "y": y}, ["object (pickled) arrays"]),
])
def test_npz_contents_errors(tmp_path, arrays, needles):
    x, y = blobs()
    np.savez(tmp_path / "bad.npz", **arrays(x, y))
    assert_clean_error(train(tmp_path, "npz", tmp_path / "bad.npz"), "bad.npz", *needles)


@pytest.mark.parametrize("text, needles", [
    ("a,b,y\n0,0,0\n0.5,abc,1\n", ["non-numeric value 'abc' at line 3, column 'b'"]),
    ("", ["empty CSV (no rows)"]),
    ("a,b,y\n", ["a header row", "but no data rows"]),
    ("a,b,y\n0,0,0\n0.5,1\n", ["line 3 has 2 fields"]),
    ("y\n0\n1\n", ["only one column"]),
])
def test_csv_errors(tmp_path, text, needles):
    (tmp_path / "bad.csv").write_text(text)
    assert_clean_error(train(tmp_path, "csv", tmp_path / "bad.csv"), "bad.csv", *needles)


def test_binary_and_undecodable_files_given_as_csv(tmp_path, good):
    assert_clean_error(train(tmp_path, "csv", good), "good.npz", "use --dataset npz")
    (tmp_path / "latin.csv").write_bytes("a,y\n0.5,0\n\xe9,1\n".encode("latin-1"))
    assert_clean_error(train(tmp_path, "csv", tmp_path / "latin.csv"), "latin.csv", "not a UTF-8 text CSV")


def test_missing_file_and_directory_without_split_files(tmp_path):
    assert_clean_error(train(tmp_path, "npz", tmp_path / "nowhere.npz"), "nowhere.npz", "does not exist")
    (tmp_path / "d").mkdir()
    assert_clean_error(train(tmp_path, "npz", tmp_path / "d"), "train.npz", "does not exist")


# --- issue 11: labels that are not 0..K-1 ------------------------------------------------------------------

def test_a_stray_label_is_refused_not_trained_as_a_100_class_model(tmp_path):
    x, _ = blobs(60)
    y = np.arange(60) % 3
    y[7] = 99
    np.savez(tmp_path / "stray.npz", x=x, y=y)
    r = train(tmp_path, "npz", tmp_path / "stray.npz")
    assert_clean_error(r, "stray.npz", "labels are not the classes 0..K-1", "odd label(s): 99 (1 row)",
                       "num_classes=100")
    assert not (tmp_path / "run" / "model.safetensors").exists() and not list((tmp_path / "run").glob("*.json"))
    # stated in the file, the classes without examples are the user's choice
    y[8] = 99
    np.savez(tmp_path / "declared.npz", x=x, y=y, num_classes=100)
    r = train(tmp_path, "npz", tmp_path / "declared.npz", out="declared")
    assert r.exit_code == 0, r.output
    assert load_dataset("npz", "test", data_dir=tmp_path / "declared.npz").num_classes == 100


# --- issue 12: train on a single file, then evaluate on points it never trained on ------------------------

def test_single_file_run_is_attacked_and_evaluated_on_held_out_points_only(tmp_path, good):
    r = train(tmp_path, "npz", good)
    assert r.exit_code == 0, r.output
    x, _ = blobs()
    train_rows = set(load_dataset("npz", "train", data_dir=good).x[:, 0].tolist())
    r = invoke("attack", tmp_path / "run", "--attack", "fgsm", "--out", tmp_path / "adv.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "adv.npz") as f:
        attacked = f["x"]
    assert len(attacked) == 12  # the held-out 30% of 40 rows, not the whole (training) file
    assert train_rows.isdisjoint(attacked[:, 0].tolist())
    assert set(attacked[:, 0].tolist()) | train_rows == set(x[:, 0].tolist())
    r = invoke("evaluate", tmp_path / "run", "--suite", "fgsm", "--no-extras", "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["n"] == 12
    test = load_dataset("npz", "test", data_dir=good)
    assert test.split_source == "held-out 30% of good.npz (fixed stratified split)"


def test_explicit_test_split_is_used_whole(tmp_path):
    x, y = blobs(50)
    np.savez(tmp_path / "split.npz", x_train=x[:35], y_train=y[:35], x_test=x[35:], y_test=y[35:])
    r = train(tmp_path, "npz", tmp_path / "split.npz")
    assert r.exit_code == 0, r.output
    r = invoke("attack", tmp_path / "run", "--attack", "fgsm", "--out", tmp_path / "adv.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "adv.npz") as f:
        assert np.array_equal(f["x"], x[35:])
    ds = load_dataset("npz", "test", data_dir=tmp_path / "split.npz")
    assert torch.equal(ds.x, torch.from_numpy(x[35:])) and ds.split_source.startswith("file:")
