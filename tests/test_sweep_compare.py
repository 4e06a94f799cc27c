"""Comparing one searched key's values, each at its best point: the choice, the paired tests, Holm, the files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
from scipy import stats

from bertft.sweep.compare import compare, write_comparison
from bertft.sweep.imported import merge
from bertft.sweep.spec import encode, label
from bertft.sweep.stats import holm
from bertft.sweep.study import sweep_trials

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


# ----- --with: a new sweep's values ranked against an earlier sweep's published trials.csv --------------------------


def stored_study(folder: Path, name: str, results: dict[tuple[int, str, float], list[float]]) -> optuna.Study:
    """A sweep folder as `bertft sweep` leaves it: its storage, sweep.json and report."""
    from bertft.sweep.report import write_report
    from bertft.sweep.study import trial_key

    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'sweep.db'}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for (point, head, lr), values in results.items():
        params = {"model.head": encode({"class_path": f"bertft.heads.{head}"}), "model.lr": lr}
        for seed, value in enumerate(values):
            attrs = {"point": point, "seed": seed, "params": params, "key": trial_key(params, seed)}
            study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    record = {"name": name, "storage": url, "metric": "val/acc", "direction": "maximize", "compare": "model.head"}
    (folder / "sweep.json").write_text(json.dumps(record))
    write_report(study, folder, "val/acc", "maximize", plot=False, compare="model.head")
    return study


def test_report_with_an_earlier_sweeps_trials_ranks_both_over_shared_seeds(tmp_path: Path, capsys) -> None:
    from bertft.sweep.command import main

    stored_study(tmp_path / "old", "old", RESULTS)
    summary = (tmp_path / "old" / "summary.md").read_text()
    assert "At the edge of the search: lr=0.0001 is the lowest value searched (0.0001, 0.0002)" in summary
    new = {
        (1, "MeanMaxHead", 2.0e-4): [0.915, 0.910, 0.925, 0.905, 0.915],
        (2, MEAN, 1.0e-4): [0.800, 0.800, 0.800, 0.800, 0.800],  # rerun here: these, not the earlier file's, count
    }
    stored_study(tmp_path / "new", "new", new)
    published = tmp_path / "old" / "trials.csv"
    main(["--report", str(tmp_path / "new"), "--with", str(published)])

    out = capsys.readouterr().out
    assert out.index("1. MeanMaxHead") < out.index("2. CLSHead") < out.index("3. MeanHead") < out.index("4. PoolerHead")
    text = (tmp_path / "new" / "compare.md").read_text()
    assert f"Points 3 to 7 are an earlier sweep's finished trials, read from `{published}`" in text
    with (tmp_path / "new" / "compare.csv").open() as f:
        rows = {r["head"]: r for r in csv.DictReader(f)}
    assert rows["MeanHead"]["points_tried"] == "2"  # this sweep's 1e-4 and the file's 2e-4: 2e-4 is better now
    assert float(rows["MeanHead"]["mean"]) == pytest.approx(sum(RESULTS[(2, MEAN, 2.0e-4)]) / 5)
    entries, pairs = compare(
        merge(sweep_trials(optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'sweep.db'}")),
              [published], "val/acc"), "model.head", "maximize")  # fmt: skip
    first = next(p for p in pairs if label(p.first.value) == "MeanMaxHead" and label(p.second.value) == CLS)
    reference = stats.ttest_rel(new[(1, "MeanMaxHead", 2.0e-4)], RESULTS[(4, CLS, 2.0e-4)])
    assert (first.t, first.p) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-6)
    assert len(pairs) == 6  # 4 heads, Holm over their 6 pairs


def test_report_with_a_file_that_is_not_a_sweeps_trials_is_refused(tmp_path: Path, capsys) -> None:
    from bertft.sweep.command import main

    stored_study(tmp_path / "new", "new", {(1, MEAN, 1.0e-4): [0.9, 0.91]})
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("trial,point,seed,state,model.head,val/f1\n0,1,0,finished,MeanHead,0.5\n")
    broken = tmp_path / "broken.csv"
    broken.write_text("trial,point,seed,state,model.head,val/acc\n0,1,zero,finished,MeanHead,0.5\n")
    for path, message in [
        (wrong, f"--with {wrong}: no column 'val/acc'"),
        (broken, f"--with {broken}, row 2: invalid literal"),
        (tmp_path / "nope.csv", "no such file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--report", str(tmp_path / "new"), "--with", str(path)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "x.yaml", "--with", str(wrong)])
    assert "--with goes with --report" in capsys.readouterr().err


# ----- the edge of the search: a best point at the end of a searched range is said, with what to try next --------


def test_a_best_point_at_the_edge_of_the_grid_is_said_with_the_next_range(tmp_path: Path) -> None:
    from bertft.sweep.points import edge_notes

    every = trials()
    assert edge_notes(every, {"model.lr": 2.0e-4}) == [
        "lr=0.0002 is the highest value searched (0.0001, 0.0002): the best may lie higher; "
        "try lr: [0.0002, 0.0004, 0.0008]"
    ]
    assert edge_notes(every, {"model.lr": 1.0e-4})[0].endswith("lie lower; try lr: [2.5e-05, 5e-05, 0.0001]")
    dropout = [optuna.trial.create_trial(value=0.5, user_attrs={"params": {"d": d}}) for d in (0.0, 0.1, 0.2)]
    assert edge_notes(dropout, {"d": 0.1}) == []  # inside the range
    assert edge_notes(dropout, {"d": 0.0}) == ["d=0 is the lowest value searched (0, 0.1, 0.2): the best may lie lower"]

    write_comparison(every, "model.head", "val/acc", "maximize", tmp_path, plot=False)
    text = (tmp_path / "compare.md").read_text()
    assert "- MeanHead: lr=0.0001 is the lowest value searched (0.0001, 0.0002)" in text
    assert "- CLSHead: lr=0.0002 is the highest value searched" in text
