"""recsys data: the loaders of every layout agree on generated files, bad input gets a clear error or its
documented handling, and the leave-one-out split is deterministic under a seed and never leaks."""

import os

import numpy as np
import pytest

from armor.domains.recsys.data import (Interactions, Split, check_no_leak, leave_one_out, load_interactions,
                                       synthetic)

# (user, item, rating, timestamp): user 30 has one interaction only (dropped), user 10 a tie in time.
ROWS = [("10", "100", 4, 5), ("10", "101", 3, 9), ("10", "102", 5, 9), ("20", "100", 2, 1), ("20", "103", 1, 2),
        ("20", "104", 5, 3), ("30", "101", 4, 7), ("40", "102", 3, 4), ("40", "103", 4, 8)]


def _write(path, text):
    path.write_text(text)
    return path


def _files(tmp_path, rows=ROWS):
    udata = _write(tmp_path / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    csv = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"
                 + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))
    dat = _write(tmp_path / "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    inter = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                   + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return udata, csv, dat, inter


def _pairs(d: Interactions):
    return sorted((d.user_ids[u], d.item_ids[i], t) for u, i, t in zip(d.user, d.item, d.timestamp))


def test_every_layout_reads_the_same_interactions(tmp_path):
    loaded = [load_interactions(p) for p in _files(tmp_path)]
    expected = sorted((u, i, float(t)) for u, i, _, t in ROWS if u != "30")
    for d in loaded:
        assert _pairs(d) == expected
        assert (d.n_users, d.n_items) == (3, 5)  # user 30 dropped; item ids compacted to those present
        assert d.info["dropped_users"] == 1
        assert d.fingerprint() == loaded[0].fingerprint()
    # a directory: its u.data is found
    assert load_interactions(tmp_path).fingerprint() == loaded[0].fingerprint()
    # min_rating keeps ratings >= it (user 20 keeps only item 104 and is then dropped)
    kept = load_interactions(tmp_path / "u.data", min_rating=3)
    assert "20" not in kept.user_ids and len(kept) == 5


def test_the_canonical_order_does_not_depend_on_the_file_order(tmp_path):
    a = load_interactions(_files(tmp_path)[0])
    shuffled = [ROWS[k] for k in np.random.default_rng(1).permutation(len(ROWS))]
    sub = tmp_path / "s"
    sub.mkdir()
    b = load_interactions(_files(sub, shuffled)[0])
    assert _pairs(a) == _pairs(b)
    sa, sb = leave_one_out(a, 3), leave_one_out(b, 3)
    ta = {a.user_ids[u]: a.item_ids[i] for u, i in enumerate(sa.test_item)}
    tb = {b.user_ids[u]: b.item_ids[i] for u, i in enumerate(sb.test_item)}
    assert ta == tb


@pytest.mark.parametrize("text,match", [
    ("userId,rating,timestamp\n1,4,5\n", "no item column"),
    ("movieId,rating\n1,4\n", "no user column"),
    ("1\t2\n", "2 column"),
    ("1\t2\t4\tnoon\n", "timestamp 'noon' is not a number"),
    ("userId,movieId,rating,timestamp\n", "no interactions"),
    ("", "empty"),
])
def test_malformed_files_name_the_problem(tmp_path, text, match):
    name = "ratings.csv" if text.startswith(("userId", "movieId")) else "u.data"
    with pytest.raises(ValueError, match=match):
        load_interactions(_write(tmp_path / name, text))


def test_missing_files_and_packages_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a built-in dataset"):
        load_interactions(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="u.data, ratings.csv"):
        load_interactions(tmp_path)
    (tmp_path / "u.data").write_bytes(b"\xff\xfe1\t2\t3\t4")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_interactions(tmp_path / "u.data")


def test_duplicates_keep_the_latest_or_raise(tmp_path):
    rows = ROWS + [("10", "100", 1, 12)]  # user 10 meets item 100 again, later
    p = _files(tmp_path, rows)[0]
    d = load_interactions(p)
    assert d.info["duplicates_merged"] == 1 and len(d) == 8
    u10 = d.user_ids.index("10")
    ts = {d.item_ids[i]: t for u, i, t in zip(d.user, d.item, d.timestamp) if u == u10}
    assert ts["100"] == 12.0  # the latest one is kept
    with pytest.raises(ValueError, match="duplicate interaction of user 10 with item 100"):
        load_interactions(p, duplicates="error")


def test_from_arrays_checks_ranges_and_drops_empty_users():
    with pytest.raises(ValueError, match="item id 7 at row 1 is out of range"):
        Interactions.from_arrays([0, 0], [1, 7], n_users=2, n_items=5)
    with pytest.raises(ValueError, match="user id -1"):
        Interactions.from_arrays([-1, 0], [1, 2], n_users=2, n_items=5)
    with pytest.raises(ValueError, match="integers"):
        Interactions.from_arrays([0.5, 0], [1, 2])
    # user 1 has no interactions, user 2 only one: both dropped and counted; items keep their indices
    d = Interactions.from_arrays([0, 0, 2, 3, 3], [1, 2, 4, 0, 4], n_users=4, n_items=6)
    assert (d.n_users, d.n_items) == (2, 6) and d.info["dropped_users"] == 2
    assert d.user_ids == ("0", "3")
    with pytest.raises(ValueError, match="no user has at least 2"):
        Interactions.from_arrays([0, 1], [1, 2])


def test_split_holds_out_the_latest_and_is_deterministic_under_a_seed():
    d = synthetic(60, 40, 8, seed=3)
    s1, s2 = leave_one_out(d, 0), leave_one_out(d, 0)
    assert np.array_equal(s1.test_item, s2.test_item) and np.array_equal(s1.train_item, s2.train_item)
    latest = {}
    for u, i, t in zip(d.user, d.item, d.timestamp):
        if u not in latest or t > latest[u][1]:
            latest[u] = (i, t)
    assert all(s1.test_item[u] == latest[u][0] for u in latest)  # synthetic times have no ties
    assert len(s1.train_user) == len(d) - d.n_users


def test_ties_in_time_are_broken_by_the_seed():
    # every interaction at the same time: the held-out item is the seed's draw
    d = Interactions.from_arrays(np.repeat(np.arange(30), 6), np.tile(np.arange(6), 30), 30, 6,
                                 np.zeros(180))
    held = [tuple(leave_one_out(d, s).test_item) for s in range(3)]
    assert held[0] == tuple(leave_one_out(d, 0).test_item)
    assert len(set(held)) == 3


def test_the_leak_check_catches_a_leaking_split():
    d = synthetic(40, 30, 6, seed=1)
    s = leave_one_out(d, 0)
    check_no_leak(s, d)  # the real split passes
    leaky = Split(np.append(s.train_user, 5), np.append(s.train_item, s.test_item[5]), s.test_item, s.n_users,
                  s.n_items, 0)
    with pytest.raises(AssertionError, match="user 5's held-out item"):
        check_no_leak(leaky)
    lost = Split(s.train_user[1:], s.train_item[1:], s.test_item, s.n_users, s.n_items, 0)
    with pytest.raises(AssertionError, match="not exactly the data"):
        check_no_leak(lost, d)


REQUIRED = os.environ.get("ARMOR_REQUIRE_REFERENCE", "") not in ("", "0")


def test_movielens_100k_from_the_recbole_wheel():
    import importlib.util

    if importlib.util.find_spec("recbole") is None:
        why = "recbole is not installed (pip install --no-deps recbole==1.2.1)"
        if REQUIRED:
            pytest.fail(f"ARMOR_REQUIRE_REFERENCE is set but {why}", pytrace=False)
        pytest.skip(why)
    d = load_interactions("ml-100k")
    assert (d.n_users, d.n_items, len(d)) == (943, 1682, 100_000)  # MovieLens-100k's published counts
    s = leave_one_out(d, 0)
    check_no_leak(s, d)
    assert s.train_user.size == 100_000 - 943
