"""Tabular schemas: parsing, clear errors for inconsistent schemas, fitting, data validation, round-trips.

Runtime: about 2 s.
"""

import json
import math

import numpy as np
import pytest
import torch

from armor import ThreatModel
from armor.domains.tabular import Schema, feature_eps, load_schema, schema_path, threat_from_schema
from armor.domains.tabular.constraints import constraints_from_dict

BASE = {
    "name": "shop",
    "eps": 0.5,
    "feature": [
        {"name": "age", "type": "integer", "lower": 0, "mutable": False, "std": 10.0},
        {"name": "n", "type": "integer", "lower": 0, "monotone": "increase", "std": 4.0},
        {"name": "goods", "lower": 0.0, "std": 50.0},
        {"name": "ship", "lower": 0.0, "std": 10.0, "eps_scale": 0.5},
        {"name": "total", "lower": 0.0, "upper": 1000.0},
        {"name": "m", "type": "categorical", "categories": ["a", "b", "c"]},
    ],
    "relation": [
        {"type": "equality", "name": "sum", "target": "total", "terms": {"goods": 1.0, "ship": 1.0}},
        {"type": "inequality", "name": "ship<=goods", "terms": {"ship": 1.0, "goods": -1.0}, "bound": 0.0},
    ],
}


def variant(**changes):
    d = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = d
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        if value is _DROP:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return d


_DROP = object()


def test_parse_expands_categories_and_keeps_column_order():
    s = Schema.from_dict(BASE)
    assert s.feature_names == ["age", "n", "goods", "ship", "total", "m=a", "m=b", "m=c"]
    assert [f.kind for f in s.features] == ["integer", "integer", "continuous", "continuous", "continuous",
                                           "onehot", "onehot", "onehot"]
    assert s.feature("n").monotone == 1 and not s.feature("age").mutable
    assert s.groups[0].members == ("m=a", "m=b", "m=c") and s.dependents == ["total"]
    assert s.feature("goods").lower == 0 and s.feature("goods").upper == math.inf


@pytest.mark.parametrize("changes, message", [
    ({"feature__2__lower": 5.0, "feature__2__upper": 1.0}, "contradictory bounds"),
    ({"relation__1__terms": {"nope": 1.0}}, "unknown feature 'nope'"),
    ({"relation__0__target": "ghost"}, "target must name a declared feature"),
    ({"feature__0__type": "float"}, "type must be one of"),
    ({"feature__2__monotone": "up"}, "monotone must be"),
    ({"feature__2__eps_scale": -1.0}, "eps_scale must be finite and >= 0"),
    ({"feature__2__std": 0.0}, "std must be finite and > 0"),
    ({"feature__2__lowr": 0.0}, "unknown key(s) ['lowr']"),
    ({"epsilon": 0.1}, "unknown top-level key(s) ['epsilon']"),
    ({"feature__5__categories": ["a"]}, ">= 2 distinct strings"),
    ({"feature__1__name": "age"}, "declared twice"),
    ({"relation__0__terms": {"goods": 1.0, "total": 1.0}}, "also appears in its own terms"),
    ({"relation__0__terms": {"goods": 0.0}}, "must be finite and non-zero"),
    ({"relation__1__sense": "=<"}, "sense must be"),
    ({"feature__4__mutable": False}, "dependent feature 'total' is immutable"),
    ({"feature__4__type": "integer"}, "integer feature 'total' can only depend on integer features"),
    ({"feature__0__lower": 0.5}, "bounds must be whole numbers"),
    ({"feature__5__lower": 0.0}, "takes only categories and mutable"),
    # a relation no point of the bounds satisfies: ship - goods <= -2000 with goods <= 1000 is impossible
    ({"feature__2__upper": 1000.0, "relation__1__bound": -2000.0}, "cannot be satisfied"),
    # total = goods + ship with goods, ship >= 0 cannot be <= -1
    ({"feature__4__upper": -1.0, "feature__4__lower": -5.0}, "cannot be satisfied"),
    ({"feature": []}, "at least one [[feature]]"),
])
def test_inconsistent_schemas_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=None) as e:
        Schema.from_dict(variant(**changes))
    assert message in str(e.value)


def test_dependent_in_another_equality_is_rejected():
    d = variant()
    d["feature"].append({"name": "grand", "lower": 0.0})
    d["relation"].append({"type": "equality", "target": "grand", "terms": {"total": 1.0}})
    with pytest.raises(ValueError, match="also a term of an equality"):
        Schema.from_dict(d)


def test_observed_bounds_and_std_are_fitted_from_data():
    d = variant(feature__2__lower="observed", feature__2__upper="observed", feature__2__std=_DROP)
    s = Schema.from_dict(d)
    assert not s.is_fitted
    with pytest.raises(ValueError, match="call schema.fit"):
        threat_from_schema(s)
    x_train = np.array([[30, 1, 10.0, 1, 11, 1, 0, 0], [40, 2, 30.0, 2, 32, 0, 1, 0]])
    x_all = np.vstack([x_train, [[50, 3, 90.0, 3, 93, 0, 0, 1]]])
    f = s.fit(x_train, x_all)
    assert f.is_fitted and f.feature("goods").lower == 10 and f.feature("goods").upper == 90
    assert f.feature("goods").std == pytest.approx(10.0)  # from the training rows only
    assert f.feature("ship").std == 10.0  # declared values are kept
    with pytest.raises(ValueError, match="N×8 table"):
        s.fit(np.zeros((3, 5)))


def test_validate_names_the_row_and_feature_at_fault():
    s = Schema.from_dict(BASE)
    ok = np.array([[30, 1, 10.0, 1, 11, 1, 0, 0]])
    s.validate(ok)
    cases = [
        ([[30, 1, -1.0, 0, -1, 1, 0, 0]], "feature 'goods' = -1 is outside its bounds"),
        ([[30, 1.5, 10.0, 1, 11, 1, 0, 0]], "feature 'n' = 1.5 is not an integer"),
        ([[30, 1, 10.0, 1, 11, 1, 1, 0]], "categorical 'm' is not one-hot"),
        ([[30, 1, 10.0, 1, 12, 1, 0, 0]], "violates relation 'sum'"),
        ([[30, 1, 10.0, 20, 30, 1, 0, 0]], "violates relation 'ship<=goods'"),
        ([[30, 1, np.nan, 1, 11, 1, 0, 0]], "is not finite"),
    ]
    for row, message in cases:
        with pytest.raises(ValueError) as e:
            s.validate(np.vstack([ok, row]))
        assert "row 1" in str(e.value) and message in str(e.value), str(e.value)


def test_to_dict_round_trips_through_json():
    s = Schema.from_dict(BASE)
    again = Schema.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


def test_toml_files_load_and_syntax_errors_name_the_file(tmp_path):
    for name in ("breast_cancer.toml", "german_credit.toml", "fraud_synthetic.toml", "creditcard.toml"):
        s = load_schema(schema_path(name))
        assert s.n_features > 0 and s.positive_class is not None and s.eps is not None
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[feature]\nname = 1\n')
    with pytest.raises(ValueError, match="bad.toml: not valid TOML"):
        load_schema(bad)
    with pytest.raises(FileNotFoundError):
        load_schema(tmp_path / "missing.toml")


def test_feature_eps_in_standard_deviations():
    s = Schema.from_dict(BASE)
    eps = feature_eps(s, 0.5)
    # immutable 0; integer and continuous eps * std * eps_scale; one-hot 1; total = sum of its terms' budgets
    assert eps[:4].tolist() == pytest.approx([0.0, 2.0, 25.0, 2.5])
    assert eps[5:].tolist() == [1.0, 1.0, 1.0]
    assert eps[4].item() == pytest.approx(27.5 * 1.001)
    relaxed = feature_eps(s, 0.5, constrained=False)
    assert relaxed[0].item() == 5.0 and bool((relaxed >= eps).all())
    with pytest.raises(ValueError, match="eps must be finite"):
        feature_eps(s, -1.0)


def test_threat_from_schema_path_and_dict_round_trip(tmp_path):
    threat = threat_from_schema(schema_path("breast_cancer.toml"))
    assert threat.norm.value == "linf" and torch.is_tensor(threat.eps) and threat.eps.shape == (30,)
    names = threat.constraints.schema.feature_names
    assert threat.eps[names.index("mean texture")] == 0  # immutable
    assert threat.eps[names.index("mean radius")].item() == pytest.approx(0.5 * 3.61813, rel=1e-6)
    d = json.loads(json.dumps(threat.to_dict()))
    rebuilt = ThreatModel(d["norm"], torch.tensor(d["eps"]), tuple(torch.tensor(b) for b in d["bounds"]),
                          constraints_from_dict(d["constraints"]))
    assert torch.equal(rebuilt.eps, threat.eps) and rebuilt.constraints.schema == threat.constraints.schema
    with pytest.raises(ValueError, match="not a tabular constraints dict"):
        constraints_from_dict({"kind": "image"})
    with pytest.raises(ValueError, match="pass eps="):
        threat_from_schema(variant(eps=_DROP))


# --- issue 15: relations satisfiable one at a time but not together; infeasible clean data ----------------

def _with_relation(rel, **changes):
    d = variant(**changes)
    d["relation"].append(rel)
    return d


@pytest.mark.parametrize("schema, names, absent", [
    # ship <= goods, and goods <= ship - 5: each holds somewhere (goods is unbounded above), never both
    (_with_relation({"type": "inequality", "name": "goods<ship", "terms": {"goods": 1.0, "ship": -1.0},
                     "bound": -5.0}), ["relations 'ship<=goods', 'goods<ship' cannot all hold at once"], "'sum'"),
    # total = goods + ship <= 1000 (total's bound), yet goods >= 2000
    (_with_relation({"type": "inequality", "name": "big goods", "terms": {"goods": 1.0}, "sense": ">=",
                     "bound": 2000.0}), ["relations 'sum', 'big goods' cannot all hold", "total in [0, 1000]"],
     "ship<=goods"),
    # two categories of one one-hot group at once
    (_with_relation({"type": "inequality", "name": "two cats", "terms": {"m=a": 1.0, "m=b": 1.0},
                     "sense": ">=", "bound": 2.0}), ["relation 'two cats' cannot hold", "one-hot group(s) ['m']"],
     "'sum'"),
    # "observed" bounds count as unbounded at load time: the conflict is found before any data are seen
    (_with_relation({"type": "inequality", "name": "goods<ship", "terms": {"goods": 1.0, "ship": -1.0},
                     "bound": -5.0}, feature__2__lower="observed", feature__2__upper="observed"),
     ["relations 'ship<=goods', 'goods<ship' cannot all hold at once"], "'sum'"),
])
def test_relations_that_conflict_together_are_refused_at_load(schema, names, absent):
    with pytest.raises(ValueError) as e:
        Schema.from_dict(schema)
    msg = str(e.value)
    assert all(n in msg for n in names) and absent not in msg and "\n" not in msg, msg


def test_relations_conflicting_with_fitted_bounds_are_refused_at_fit():
    # ship <= goods and ship >= 50 hold together until goods' observed bounds come out below 50
    d = _with_relation({"type": "inequality", "name": "ship>=50", "terms": {"ship": 1.0}, "sense": ">=",
                        "bound": 50.0}, feature__2__lower="observed", feature__2__upper="observed")
    s = Schema.from_dict(d)
    with pytest.raises(ValueError, match=r"relations 'ship<=goods', 'ship>=50' cannot all hold.*goods in \[10, 30\]"):
        s.fit(np.array([[30, 1, 10.0, 1, 11, 1, 0, 0], [40, 2, 30.0, 2, 32, 0, 1, 0]]))


def test_shipped_schemas_are_satisfiable():
    for name in ("breast_cancer.toml", "german_credit.toml", "fraud_synthetic.toml", "creditcard.toml"):
        load_schema(schema_path(name))  # the joint check passes on every shipped schema


@pytest.mark.parametrize("row, message", [
    ([30, 1, -1.0, 0, -1, 1, 0, 0], "data: row 1, feature 'goods' = -1 is outside its bounds"),
    ([30, 1.5, 10.0, 1, 11, 1, 0, 0], "data: row 1, feature 'n' = 1.5 is not an integer"),
    ([30, 1, 10.0, 1, 11, 0, 0, 0], "data: row 1, categorical 'm' is not one-hot"),
    ([30, 1, 10.0, 1, 12, 1, 0, 0], "data: row 1 violates relation 'sum'"),
])
def test_threat_from_schema_refuses_data_that_break_the_schema(row, message):
    ok = [30, 1, 10.0, 1, 11, 1, 0, 0]
    with pytest.raises(ValueError, match=None) as e:
        threat_from_schema(BASE, 0.5, data=np.array([ok, row]))
    assert message in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="data_all: row 1"):
        threat_from_schema(BASE, 0.5, data=np.array([ok]), data_all=np.array([ok, row]))
    assert threat_from_schema(BASE, 0.5, data=np.array([ok, ok])).constraints is not None


def test_float32_data_at_a_decimal_bound_are_feasible():
    d = variant(feature__3__upper=0.1)  # float32(0.1) > 0.1: stored data must still be inside
    s = Schema.from_dict(d)
    s.validate(np.array([[30, 1, 10.0, 0.1, 10.1, 1, 0, 0]], dtype=np.float32).astype(np.float64))
