"""Uncertainty of test-set numbers and paired comparisons (scipy.stats), as pure functions.

* Over test examples: a seeded bootstrap 95% interval of accuracy and macro F1 (``scipy.stats.bootstrap``),
  and the paired bootstrap of a difference between two methods on the *same* test examples.
* Over targets: a paired test of per-target differences (each target's mean over trials), Holm-corrected
  across methods, and no p-value at all below :data:`MIN_TARGETS` targets.

Trials of one target measure seed variance; they are averaged per target and never counted as independent
samples, so the across-target p-value cannot shrink by adding trials.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_TARGETS = 3


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray, axis: int = -1) -> np.ndarray:
    """Macro F1 over ``labels`` along ``axis`` (vectorised over resamples; a label with no support and no
    prediction in a resample counts 0, as sklearn's fixed-label macro average does)."""
    scores = []
    for c in labels:
        t, p = y_true == c, y_pred == c
        tp = np.sum(t & p, axis=axis)
        denom = np.sum(t, axis=axis) + np.sum(p, axis=axis)
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(scores, axis=0)


def _interval(result) -> list[float]:
    ci = result.confidence_interval
    return [float(ci.low), float(ci.high)]


def _group_index(groups: Sequence | None, n: int) -> tuple[np.ndarray, int] | None:
    """Each example's group number and the number of groups; None when every example is its own group."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} examples")
    _, inverse = np.unique(groups, return_inverse=True)
    count = int(inverse.max()) + 1 if n else 0
    return None if count == n else (inverse, count)


def _per_group(values: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """Sums of ``values`` (examples along axis 0) per group: shape (groups, ...)."""
    out = np.zeros((count, *values.shape[1:]))
    np.add.at(out, index, values)
    return out


def bootstrap_intervals(y_true: Sequence[int], y_pred: Sequence[int], seed: int, resamples: int = RESAMPLES,
                        labels: Sequence[int] | None = None,
                        groups: Sequence | None = None) -> dict[str, list[float] | None]:
    """Percentile bootstrap 95% intervals of accuracy and macro F1 over the test examples.

    ``labels``: the dataset's class indices, so a class absent from a split counts in the macro F1 as it does
    in the point estimate (default: the classes present). ``groups``: which examples are renderings of one
    underlying example (the built-in benchmark renders each test digit several times); whole groups are
    resampled together, since they are not independent (default: every example its own group)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    grouped = _group_index(groups, len(t))
    if len(t) < 2 or (grouped is not None and grouped[1] < 2):
        return {"accuracy_ci95": None, "f1_macro_ci95": None}
    labels = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    rng = np.random.default_rng(seed)
    kw = dict(confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile", random_state=rng,
              vectorized=True)
    correct = (t == p).astype(float)
    if grouped is None:
        acc = stats.bootstrap((correct,), np.mean, **kw)
        f1 = stats.bootstrap((t, p), lambda a, b, axis=-1: _macro_f1(a, b, labels, axis), paired=True, **kw)
        return {"accuracy_ci95": _interval(acc), "f1_macro_ci95": _interval(f1)}
    index, count = grouped
    right, size = _per_group(correct, index, count), _per_group(np.ones_like(correct), index, count)
    onehot = lambda y: (y[:, None] == labels[None, :]).astype(float)  # noqa: E731  (examples x classes)
    tp = _per_group(onehot(t) * onehot(p), index, count)
    support = _per_group(onehot(t), index, count) + _per_group(onehot(p), index, count)

    def accuracy(g: np.ndarray, axis: int = -1) -> np.ndarray:
        return right[g].sum(axis) / size[g].sum(axis)

    def macro_f1(g: np.ndarray, axis: int = -1) -> np.ndarray:
        both, denom = tp[g].sum(axis - 1), support[g].sum(axis - 1)  # summed over groups: (..., classes)
        return np.where(denom > 0, 2 * both / np.maximum(denom, 1), 0.0).mean(-1)

    groups_drawn = (np.arange(count),)
    return {"accuracy_ci95": _interval(stats.bootstrap(groups_drawn, accuracy, **kw)),
            "f1_macro_ci95": _interval(stats.bootstrap(groups_drawn, macro_f1, **kw))}


def _mean_interval(values: np.ndarray, seed: int, resamples: int, groups: Sequence | None) -> dict:
    """The mean of per-example ``values`` with a percentile bootstrap 95% interval that resamples examples (or
    whole ``groups`` of them, see :func:`bootstrap_intervals`); a constant has an interval of zero width."""
    grouped = _group_index(groups, len(values))
    units = len(values) if grouped is None else grouped[1]
    out = {"mean": float(values.mean()), "n_examples": int(len(values)), "ci95": None}
    if grouped is not None:
        out["n_groups"] = units
    if units >= 2 and np.ptp(values) > 0:
        kw = dict(confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile",
                  random_state=np.random.default_rng(seed), vectorized=True)
        if grouped is None:
            res = stats.bootstrap((values,), np.mean, **kw)
        else:
            index, count = grouped
            total, size = _per_group(values, index, count), _per_group(np.ones_like(values), index, count)
            res = stats.bootstrap((np.arange(count),), lambda g, axis=-1: total[g].sum(axis) / size[g].sum(axis),
                                  **kw)
        out["ci95"] = _interval(res)
    elif units >= 2:
        out["ci95"] = [float(values.mean())] * 2  # identical on every example: no sampling spread
    return out


def accuracy_interval(correct: np.ndarray, seed: int, resamples: int = RESAMPLES,
                      groups: Sequence | None = None) -> list[float] | None:
    """A 95% percentile bootstrap interval of accuracy from 0/1 correctness (rows: trials, averaged per example;
    columns: test examples), resampling examples (or whole ``groups``); None below two examples."""
    return _mean_interval(np.atleast_2d(np.asarray(correct, dtype=float)).mean(0), seed, resamples, groups)["ci95"]


def paired_bootstrap_difference(correct_a: np.ndarray, correct_b: np.ndarray, seed: int,
                                resamples: int = RESAMPLES, groups: Sequence | None = None) -> dict:
    """Accuracy of A minus B on the same test examples (rows: trials, averaged; columns: examples), with a
    paired bootstrap 95% interval that resamples examples (or whole ``groups`` of them, see
    :func:`bootstrap_intervals`) jointly for both methods."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float)).mean(0)
    b = np.atleast_2d(np.asarray(correct_b, dtype=float)).mean(0)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same test examples, got {a.shape} and {b.shape}")
    found = _mean_interval(a - b, seed, resamples, groups)
    out = {"mean_difference": found.pop("mean"), **found}
    out["distinguishable"] = bool(out["ci95"] is not None and (out["ci95"][0] > 0 or out["ci95"][1] < 0))
    return out


def paired_test_over_targets(differences: Sequence[float]) -> dict:
    """A two-sided paired t-test of per-target differences (each a mean over trials); None below 3 targets."""
    d = np.asarray(list(differences), dtype=float)
    out = {"test": "paired t-test over targets (scipy.stats.ttest_1samp of per-target mean differences)",
           "n_targets": int(len(d)), "mean_difference": float(d.mean()) if len(d) else None, "p_value": None}
    if len(d) < MIN_TARGETS:
        out["reason"] = (f"{len(d)} target(s): a p-value needs at least {MIN_TARGETS} targets (trials are seeds of "
                         "one target, not independent samples); see the per-target intervals instead")
    elif np.ptp(d) == 0:
        out["reason"] = "the per-target differences are all equal: a t-test is undefined"
    else:
        out["p_value"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    return out


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and does not count as a test)."""
    items = sorted(((p, k) for k, p in p_values.items() if p is not None))
    m, adjusted, running = len(items), {k: None for k in p_values}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return adjusted


def mean_over_targets_interval(correct_by_target: Sequence[tuple[np.ndarray, Sequence | None]], seed: int,
                               resamples: int = RESAMPLES) -> list[float] | None:
    """A 95% percentile bootstrap interval of the mean over targets of each target's test accuracy: each
    target's test examples (or whole ``groups`` of them) are resampled on their own, a stratified bootstrap, so
    the interval is the test sets' sampling spread of that mean (targets fixed, trials averaged per example).
    ``correct_by_target``: per target, 0/1 correctness (rows: trials; columns: examples) and its groups or None.
    None without targets or below two units in some target."""
    if not correct_by_target:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for correct, groups in correct_by_target:
        values = np.atleast_2d(np.asarray(correct, dtype=float)).mean(0)
        grouped = _group_index(groups, len(values))
        sums, sizes = ((values, np.ones_like(values)) if grouped is None else
                       (_per_group(values, *grouped), _per_group(np.ones_like(values), *grouped)))
        if len(sums) < 2:
            return None
        draw = rng.integers(0, len(sums), size=(resamples, len(sums)))
        total += sums[draw].sum(1) / sizes[draw].sum(1)
    means = total / len(correct_by_target)
    low, high = np.percentile(means, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]
