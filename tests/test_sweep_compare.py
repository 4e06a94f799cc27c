"""Comparing one searched key's values, each at its best point: the choice, the paired tests, Holm, the files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import optuna
import pytest
from scipy import stats

from bertft.sweep.compare import compare, write_comparison
from bertft.sweep.spec import encode
from bertft.sweep.stats import holm

MEAN, CLS, POOLER = "MeanHead", "CLSHead", "PoolerHead"
# (head, lr) -> accuracy per seed 0..4. MeanHead is best at 1e-4, CLSHead at 2e-4, PoolerHead has one seed fewer.
RESULTS = {
    (1, MEAN, 1.0e-4): [0.912, 0.905, 0.921, 0.899, 0.913],
    (2, MEAN, 2.0e-4): [0.880, 0.890, 0.870, 0.885, 0.875],
    (3, CLS, 1.0e-4): [0.890, 0.880, 0.893, 0.870, 0.884],
    (4, CLS, 2.0e-4): [0.901, 0.907, 0.910, 0.890, 0.905],
    (5, POOLER, 1.0e-4): [0.850, 0.862, 0.858, 0.841],
    (6, POOLER, 2.0e-4): [0.700, 0.710, 0.690, 0.705],
}


def trials() -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    for (point, head, lr), values in RESULTS.items():
        params = {"model.head": encode({"class_path": f"bertft.heads.{head}"}), "model.lr": lr}
        for seed, value in enumerate(values):
            attrs = {"point": point, "seed": seed, "params": params}
            dist = {
                "model.head": optuna.distributions.CategoricalDistribution(
                    [encode({"class_path": f"bertft.heads.{h}"}) for h in (MEAN, CLS, POOLER)]
                )
            }
            dist["model.lr"] = optuna.distributions.CategoricalDistribution([1.0e-4, 2.0e-4])
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, value=value, user_attrs=attrs))
    return study.trials


def test_each_value_at_its_best_point_and_pairs_against_scipy() -> None:
    entries, pairs = compare(trials(), "model.head", "maximize")
    assert [(e.point, e.others["model.lr"], e.tried) for e in entries] == [
        (1, 1.0e-4, 2),
        (4, 2.0e-4, 2),
        (5, 1.0e-4, 2),
    ]
    assert entries[0].summary.mean == pytest.approx(sum(RESULTS[(1, MEAN, 1.0e-4)]) / 5)

    mean_cls = pairs[0]
    assert (mean_cls.first.point, mean_cls.second.point, mean_cls.n) == (1, 4, 5)
    reference = stats.ttest_rel(RESULTS[(1, MEAN, 1.0e-4)], RESULTS[(4, CLS, 2.0e-4)])
    assert (mean_cls.t, mean_cls.p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-8)
    with_pooler = [p for p in pairs if p.second.point == 5]
    assert [p.n for p in with_pooler] == [4, 4], "only the seeds both ran are paired"
    raw = [p.p for p in pairs]
    assert [p.p_holm for p in pairs] == pytest.approx(holm(raw))
    assert min(p.p_holm for p in pairs) == pytest.approx(min(1.0, 3 * min(raw)))


def test_minimize_picks_the_lowest() -> None:
    entries, _ = compare(trials(), "model.head", "minimize")
    assert [e.point for e in entries] == [6, 2, 3]


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ValueError, match="'model.heads' is not a searched key"):
        compare(trials(), "model.heads", "maximize")


def test_holm_by_hand() -> None:
    nan = math.nan
    adjusted = holm([0.01, 0.04, 0.03, nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert adjusted[4] == pytest.approx(0.02)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_compare_writes_the_ranking_the_pairs_and_the_plot(tmp_path: Path) -> None:
    write_comparison(trials(), "model.head", "val/acc", "maximize", tmp_path)
    with open(tmp_path / "compare.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rank"], r["head"], r["point"], r["lr"], r["n"]) for r in rows] == [
        ("1", "MeanHead", "1", "0.0001", "5"),
        ("2", "CLSHead", "4", "0.0002", "5"),
        ("3", "PoolerHead", "5", "0.0001", "4"),
    ]
    text = (tmp_path / "compare.md").read_text()
    assert "| MeanHead − PoolerHead | 4 |" in text
    assert "**differs**" in text  # MeanHead against PoolerHead: 5 to 6 points on every seed
    assert (tmp_path / "compare.png").stat().st_size > 1000
