"""Bootstrap intervals over test examples (measure/statistics.py): class lists and groups of renderings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from multisource.measure.statistics import bootstrap_intervals, paired_bootstrap_difference


def _predictions(n: int, classes: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, classes, n)
    p = np.where(rng.random(n) < accuracy, t, rng.integers(0, classes, n))
    return t, p


def test_macro_f1_interval_counts_an_absent_class_like_the_point_estimate():
    t, p = _predictions(300, 3, 0.9, seed=1)  # classes 0-2 present; the dataset declares 4
    point = f1_score(t, p, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    lo, hi = bootstrap_intervals(t, p, seed=0, labels=[0, 1, 2, 3])["f1_macro_ci95"]
    assert lo <= point <= hi and hi < 0.76  # three of four classes can score: at most 0.75
    lo_present, _ = bootstrap_intervals(t, p, seed=0)["f1_macro_ci95"]
    assert lo_present > point  # over the present classes only the interval misses its own point estimate


def test_grouped_renderings_resample_like_their_underlying_examples():
    t, p = _predictions(120, 5, 0.7, seed=2)
    single = bootstrap_intervals(t, p, seed=7, labels=range(5))
    tripled = (np.repeat(t, 3), np.repeat(p, 3))
    groups = np.repeat([f"d{i:04d}" for i in range(120)], 3)
    grouped = bootstrap_intervals(*tripled, seed=7, labels=range(5), groups=groups)
    # three identical renderings of each example carry the information of one: the same interval
    for key in ("accuracy_ci95", "f1_macro_ci95"):
        np.testing.assert_allclose(grouped[key], single[key], atol=0.02)
    naive = bootstrap_intervals(*tripled, seed=7, labels=range(5))
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    # treated as independent, the tripled examples give an interval about 1/sqrt(3) as wide: overconfident
    assert width(naive["accuracy_ci95"]) == pytest.approx(width(single["accuracy_ci95"]) / np.sqrt(3), rel=0.2)
    # every example its own group: exactly the ungrouped bootstrap
    assert bootstrap_intervals(t, p, seed=7, labels=range(5), groups=np.arange(120)) == single


def test_grouped_paired_difference_resamples_whole_groups():
    rng = np.random.default_rng(3)
    a, b = (rng.random((2, 150)) < 0.8).astype(float), (rng.random((2, 150)) < 0.7).astype(float)
    single = paired_bootstrap_difference(a, b, seed=5)
    grouped = paired_bootstrap_difference(np.repeat(a, 3, axis=1), np.repeat(b, 3, axis=1), seed=5,
                                          groups=np.repeat(np.arange(150), 3))
    assert grouped["mean_difference"] == pytest.approx(single["mean_difference"])
    assert grouped["n_groups"] == 150 and grouped["n_examples"] == 450
    np.testing.assert_allclose(grouped["ci95"], single["ci95"], atol=0.02)
    with pytest.raises(ValueError, match="group labels"):
        paired_bootstrap_difference(a, b, seed=5, groups=np.arange(3))
