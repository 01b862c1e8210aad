"""The deployable answer: which method to use for the newest bin, with the uncertainty that decides it.

For the newest target bin (the last in time order), the methods ranked by test accuracy (mean over trials)
with a 95% bootstrap interval over its test examples, their cost on that bin, and whether each can be told
apart from the best one: a paired bootstrap interval of the difference on the same test examples (renderings
of one example resampled together) that excludes 0. Methods that cannot be told apart from the best are
equally good answers on this evidence; the cheapest of them is the one to deploy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..measure.statistics import paired_bootstrap_difference
from ..utils.seed import derive_seed

COSTS = ("max_models_resident", "time_s", "target_epochs")


def newest_bin_answer(targets: list[str], summaries: dict[str, dict],
                      correct: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]],
                      intervals: dict[str, dict[str, list[float] | None]]) -> dict[str, Any] | None:
    """The ranked methods on ``targets[-1]`` (None when no method has a result there). ``correct``: per method,
    target -> (trials x test examples 0/1 correctness, each example's group or None); ``intervals``: per method,
    target -> the 95% interval of its accuracy (the summary's, so every table and figure shows the same one)."""
    if not targets:
        return None
    newest = targets[-1]
    rows = []
    for method, s in summaries.items():
        found = s["targets"].get(newest)
        if not found or not found["num_trials"]:
            continue
        metrics = found["metrics"]
        ci = intervals.get(method, {}).get(newest)
        rows.append({"method": method, "accuracy": metrics["test_accuracy"]["mean"], "ci95": ci,
                     "trials": found["num_trials"],
                     **{k: metrics[k]["max" if k == "max_models_resident" else "mean"] for k in COSTS}})
    if not rows:
        return None
    rows.sort(key=lambda r: -r["accuracy"])
    best = rows[0]
    b, b_groups = correct.get(best["method"], {}).get(newest, (None, None))
    for r in rows:
        r["difference_to_best"], r["difference_ci95"], r["tied_with_best"] = r["accuracy"] - best["accuracy"], None, None
        if r is best:
            r["tied_with_best"] = True
            continue
        a, groups = correct.get(r["method"], {}).get(newest, (None, None))
        if a is not None and b is not None and a.shape[1] == b.shape[1]:
            d = paired_bootstrap_difference(a, b, seed=derive_seed(0, "newest-vs-best", r["method"], newest),
                                            groups=groups if groups is not None else b_groups)
            r["difference_ci95"], r["tied_with_best"] = d["ci95"], not d["distinguishable"]
    return {"target": newest, "best": best["method"], "methods": rows,
            "tied_with_best": [r["method"] for r in rows if r["tied_with_best"]],
            "note": "accuracy: mean over trials on the newest bin's test split, 95% percentile bootstrap interval "
                    "over its test examples (trials averaged per example); difference to best: paired bootstrap "
                    "on the same examples; 'tied' when that interval includes 0."}


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "-"
    spec = "+.3f" if signed else ".3f"
    return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def answer_markdown(answer: dict[str, Any] | None) -> list[str]:
    """The answer as the opening section of comparison.md."""
    if answer is None:
        return []
    lines = [f"## Which method for the newest bin ({answer['target']})?", "",
             "| rank | method | test accuracy [95% CI] | Δ to best [95% CI] | tied with best | models | time s | "
             "target epochs |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(answer["methods"], 1):
        tied = "best" if r["method"] == answer["best"] else {True: "yes", False: "no", None: "-"}[r["tied_with_best"]]
        diff = "-" if r["method"] == answer["best"] else (f"{r['difference_to_best']:+.3f} "
                                                          f"{_interval(r['difference_ci95'], signed=True)}")
        lines.append(f"| {i} | {r['method']} | {r['accuracy']:.3f} {_interval(r['ci95'])} | {diff} | {tied} | "
                     f"{'-' if r['max_models_resident'] is None else int(r['max_models_resident'])} | "
                     f"{'-' if r['time_s'] is None else format(r['time_s'], '.1f')} | "
                     f"{'-' if r['target_epochs'] is None else format(r['target_epochs'], '.0f')} |")
    tied = [m for m in answer["tied_with_best"] if m != answer["best"]]
    names = [answer["best"], *tied]
    lines += ["", (f"On this evidence {', '.join(names[:-1])} and {names[-1]} cannot be told apart (the paired "
                   "intervals to the best include 0): choose among them by cost."
                   if tied else f"{answer['best']} is ahead of every other method on this bin (each paired "
                   "interval to it excludes 0)."), f"({answer['note']})", ""]
    return lines
