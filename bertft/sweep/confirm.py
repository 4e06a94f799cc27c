"""Confirmation on new seeds (``--confirm K``): the chosen point rerun on K seeds the search never used.

The search picks its best point (and, with ``compare``, each value's best point) by the same seeds it then reports,
so its figures are optimistic: of several points that are equally good, the one that drew lucky seeds wins. Rerunning
the chosen point on new seeds gives an estimate that the choice did not touch. The new seeds start after the largest
seed of the search (seeds 0-4 searched: 5, 6, ...), so the two sets are disjoint whatever the sweep file lists.

Confirmation trials are ordinary trials of the study (claimed once, resumed, recorded), numbered with their point but
keyed apart (:data:`bertft.sweep.study.CONFIRM`): the search's ranking never includes them, and rerunning the
command runs only those that have not finished. They run in ``trials/confirm-point<P>-seed<S>/`` and are never
pruned by the median pruner. ``confirm.csv``, ``summary.md`` and ``compare.md`` report them beside the search's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bertft.sweep import study as studies
from bertft.sweep.compare import compare
from bertft.sweep.points import point_label, point_results, summarize_points
from bertft.sweep.spec import label
from bertft.sweep.stats import Summary, summarize
from bertft.sweep.tables import csv_text, number


def new_seeds(searched: Sequence[int], k: int) -> list[int]:
    """``k`` seeds after the largest one the search used: disjoint from ``searched`` by construction."""
    start = max(searched) + 1
    return list(range(start, start + k))


def chosen_points(trials: Sequence[FrozenTrial], direction: str, key: str | None = None) -> list[dict[str, Any]]:
    """The points to confirm: the best point, or with ``key`` each of its values' best point (``point``, ``params``)."""
    if key is None:
        rows, best = summarize_points(trials, direction)
        return [{"point": r["point"], "params": r["params"]} for r in rows if r["point"] == best]
    params = {r["point"]: r["params"] for r in point_results(trials)}
    return [{"point": e.point, "params": params[e.point]} for e in compare(trials, key, direction)[0]]


def enqueue(
    study: optuna.Study, searched: Sequence[int], k: int, direction: str, key: str | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """Enqueues the confirmation trials that no active trial holds yet; returns the chosen points and the new seeds.

    Call it once the search is over: the choice is made from its finished trials.
    """
    points = chosen_points(studies.sweep_trials(study), direction, key)
    seeds = new_seeds(searched, k)
    held = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False) if studies.is_active(t)}
    for chosen in points:
        for seed in seeds:
            trial_key = studies.CONFIRM + studies.trial_key(chosen["params"], seed)
            if trial_key not in held:
                attrs = {"point": chosen["point"], "seed": seed, "params": chosen["params"], "key": trial_key}
                study.enqueue_trial(chosen["params"], user_attrs=attrs)
    return points, seeds


def confirmation_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's ``--confirm`` trials, without dropped duplicates, in order."""
    return [
        t for t in study.get_trials(deepcopy=False) if studies.is_confirmation(t) and "duplicate_of" not in t.user_attrs
    ]


def figures(search: Sequence[FrozenTrial], confirmed: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """Per confirmed point: ``point``, ``params``, the search's and the new seeds' ``seeds`` and :class:`Summary`.

    Points with no finished confirmation trial are left out.
    """
    searched = {r["point"]: r for r in point_results(search)}
    rows = []
    for result in point_results([t for t in confirmed if t.state == TrialState.COMPLETE]):
        before = searched.get(result["point"])
        rows.append(
            {
                "point": result["point"],
                "params": result["params"],
                "search_seeds": before["seeds"] if before else [],
                "search": summarize(before["values"]) if before else None,
                "seeds": result["seeds"],
                "summary": summarize(result["values"]),
            }
        )
    return rows


def confirm_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``confirm.csv``: per point, its values, the new seeds' n, mean, sd and 95% interval, and the search's."""
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    header = ["point", *keys, "n", "mean", "sd", "ci95_low", "ci95_high", "seeds"]
    header += ["search_n", "search_mean", "search_sd", "search_seeds"]
    out = []
    for r in rows:
        s: Summary = r["summary"]
        before: Summary | None = r["search"]
        out.append(
            [r["point"], *(label(r["params"].get(k)) for k in keys), s.n]
            + [number(x) for x in (s.mean, s.sd, s.ci_low, s.ci_high)]
            + [" ".join(map(str, r["seeds"])), before.n if before else 0]
            + [number(before.mean if before else None), number(before.sd if before else None)]
            + [" ".join(map(str, r["search_seeds"]))]
        )
    return csv_text(header, out)


def confirm_markdown(rows: Sequence[dict[str, Any]], metric: str, key: str | None = None) -> list[str]:
    """The confirmation's section of ``summary.md`` (``key=None``) or ``compare.md`` (one row per value of ``key``)."""
    if not rows:
        return []
    new = sorted({s for r in rows for s in r["seeds"]})
    old = sorted({s for r in rows for s in r["search_seeds"]})
    what = f"each value's chosen point of `{key}`" if key else "the chosen point" + "s" * (len(rows) > 1)
    lines = [
        "",
        "## Confirmation on new seeds (`--confirm`)",
        "",
        f"{what[0].upper()}{what[1:]}, rerun on seeds {_seeds(new)}, which the search (seeds {_seeds(old)}) never "
        f"used. The search chose by its own seeds, so its figures are optimistic; these are the unbiased estimate of "
        f"`{metric}` at the chosen point.",
        "",
        "| "
        + (f"`{key}` | " if key else "")
        + "point | values | new seeds: mean ± sd | 95% CI | n | search: mean ± sd (n) |",
        "|" + ("---|" if key else "") + "---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        s: Summary = r["summary"]
        before: Summary | None = r["search"]
        cells = [label(r["params"].get(key))] if key else []
        cells += [str(r["point"]), point_label(r["params"]), s.mean_sd(), s.interval(), str(s.n)]
        cells.append(f"{before.mean_sd()} ({before.n})" if before else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compare_notes(
    trials: Sequence[FrozenTrial], confirmed: Sequence[dict[str, Any]], key: str, direction: str, metric: str
) -> list[str]:
    """The confirmation's section of ``compare.md``: the :func:`figures` of each ``key`` value's chosen point."""
    chosen = {c["point"] for c in chosen_points(trials, direction, key)}
    return confirm_markdown([r for r in confirmed if r["point"] in chosen], metric, key)


def _seeds(seeds: list[int]) -> str:
    """``5-9`` for a run of consecutive seeds, else ``1, 4, 7``."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))
