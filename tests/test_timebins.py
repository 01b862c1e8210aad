"""Time stamps and bin rules for imported datasets: parsing, naming, ordering, and the errors users meet."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multisource.data.build.timebins import (TimeStampError, assign_bins, order_named_bins, parse_bin_rule,
                                       parse_timestamps)

DATES = pd.Series(["2019-03-01", "2019-07-15T08:30:00", "2020-05-05T10:00:00Z", "2021-12-31", "2022-01-02"])


def test_iso_dates_years_and_unix_seconds_parse_to_the_same_instants():
    assert parse_timestamps(pd.Series(["2020-01-08", "2020-01-08 10:30", "2020-01-08T10:30:15.5-08"])).tolist() == \
        [pd.Timestamp("2020-01-08"), pd.Timestamp("2020-01-08 10:30"), pd.Timestamp("2020-01-08 10:30:15.5")]
    assert parse_timestamps(pd.Series(["2019-03-01", "2019-03-01T00:00:00+00:00", "2019-03-01T00:00:00Z"])
                            ).tolist() == [pd.Timestamp("2019-03-01")] * 3
    assert parse_timestamps(pd.Series(["2019", "2021"])).tolist() == [pd.Timestamp("2019-01-01"),
                                                                        pd.Timestamp("2021-01-01")]
    assert parse_timestamps(pd.Series([1551398400, 1609459200])).tolist() == [pd.Timestamp("2019-03-01"),
                                                                              pd.Timestamp("2021-01-01")]
    # an offset is dropped, not converted: New Year's Eve in Sydney stays in its year
    assert parse_timestamps(pd.Series(["2019-12-31T22:00:00+11:00", "2020-01-01T01:00:00-0500"])).tolist() == \
        [pd.Timestamp("2019-12-31 22:00"), pd.Timestamp("2020-01-01 01:00")]
    # a typed datetime column (as Parquet stores it), with or without a time zone: the same wall-clock rule
    typed = pd.Series(pd.to_datetime(["2019-12-31 22:00", "2020-06-01 00:00"])).dt.tz_localize("Australia/Sydney")
    assert parse_timestamps(typed).tolist() == [pd.Timestamp("2019-12-31 22:00"), pd.Timestamp("2020-06-01")]
    assert parse_timestamps(typed.dt.tz_localize(None)).tolist() == parse_timestamps(typed).tolist()


@pytest.mark.parametrize("values, words", [
    (["2019-01-01", "next tuesday", "2020-01-01"], ["'next tuesday'", "row 2", "ISO"]),
    (["2019-01-01", "1700-05-01"], ["'1700-05-01'", "row 2", "plausible range"]),
    (["2019-01-01", "2999-01-01"], ["'2999-01-01'", "row 2", "plausible range"]),
    ([2019, 1577836800], ["mixes years and Unix seconds", "row 1"]),
    ([20190301, 20200415], ["(YYYYMMDD), not Unix seconds", "2019-03-01"]),
    (["2019-01-01", ""], ["Empty time stamp", "row 2"]),
])
def test_bad_time_stamps_name_the_row_and_the_value(values, words):
    with pytest.raises(TimeStampError) as err:
        parse_timestamps(pd.Series(values), "taken")
    assert "'taken'" in str(err.value)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("rule, names, order", [
    ("year", ["2019", "2019", "2020", "2021", "2022"], ["2019", "2020", "2021", "2022"]),
    ("quarter", ["2019-Q1", "2019-Q3", "2020-Q2", "2021-Q4", "2022-Q1"],
     ["2019-Q1", "2019-Q3", "2020-Q2", "2021-Q4", "2022-Q1"]),
    ("month", ["2019-03", "2019-07", "2020-05", "2021-12", "2022-01"],
     ["2019-03", "2019-07", "2020-05", "2021-12", "2022-01"]),
    ("years:2", ["2019-2020", "2019-2020", "2019-2020", "2021-2022", "2021-2022"], ["2019-2020", "2021-2022"]),
    ("edges:2020,2022", ["before_2020", "before_2020", "2020-2021", "2020-2021", "2022_and_later"],
     ["before_2020", "2020-2021", "2022_and_later"]),
    ("edges:2019-06-01,2021-01-01", ["before_2019-06-01", "2019-06-01_to_2020-12-31", "2019-06-01_to_2020-12-31",
                                     "2021-01-01_and_later", "2021-01-01_and_later"],
     ["before_2019-06-01", "2019-06-01_to_2020-12-31", "2021-01-01_and_later"]),
])
def test_bin_rules_name_bins_by_their_time_range_in_time_order(rule, names, order):
    got, bins = assign_bins(parse_timestamps(DATES), parse_bin_rule(rule))
    assert got.tolist() == names
    assert [b["name"] for b in bins] == order
    assert sum(b["count"] for b in bins) == len(DATES)
    first = bins[0]
    assert first["first"] == "2019-03-01"


def test_year_bins_record_bounds_and_the_rows_time_range():
    _, bins = assign_bins(parse_timestamps(DATES), parse_bin_rule("year"))
    assert bins[0] == {"name": "2019", "start": "2019-01-01", "end_exclusive": "2020-01-01", "first": "2019-03-01",
                       "last": "2019-07-15T08:30:00", "count": 2}


def test_quantile_bins_have_equal_counts_and_keep_equal_times_together():
    times = pd.Series(pd.date_range("2020-01-01", periods=12, freq="7D"))
    names, bins = assign_bins(times, parse_bin_rule("quantiles:3"))
    assert [b["count"] for b in bins] == [4, 4, 4]
    assert bins[0]["name"] == "2020-01-01_to_2020-01-22"
    tied = pd.Series([pd.Timestamp("2020-01-01")] * 5 + [pd.Timestamp("2020-02-01")] * 5)
    names, bins = assign_bins(tied, parse_bin_rule("quantiles:2"))
    assert len(set(names[:5])) == 1 and len(set(names[5:])) == 1  # a tie never straddles two bins
    for n in (3, 4):  # ties leave fewer distinct bins than asked: said, not silently fewer
        with pytest.raises(ValueError, match=f"quantiles:{n} makes only [12] distinct bin"):
            assign_bins(tied, parse_bin_rule(f"quantiles:{n}"))
    with pytest.raises(ValueError, match="only 0 distinct"):
        assign_bins(pd.Series([pd.Timestamp("2020-01-01")] * 4), parse_bin_rule("quantiles:2"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20 * 365), min_size=6, max_size=60, unique=True),
       st.sampled_from(["year", "quarter", "month", "years:3", "quantiles:3", "edges:2005,2010"]))
def test_every_row_lands_in_exactly_one_bin_in_time_order(days, rule):
    times = pd.Series([pd.Timestamp("2000-01-01") + pd.Timedelta(days=d) for d in days])
    names, bins = assign_bins(times, parse_bin_rule(rule))
    order = [b["name"] for b in bins]
    assert set(names) == set(order) and sum(b["count"] for b in bins) == len(times)
    rank = {n: i for i, n in enumerate(order)}
    by_time = sorted(zip(times, names))
    assert all(rank[a[1]] <= rank[b[1]] for a, b in zip(by_time, by_time[1:]))  # later rows, later (or same) bins


@pytest.mark.parametrize("rule", ["decade", "years:0", "quantiles:1", "edges:2010,2000", "edges:", "edges:abc"])
def test_bad_bin_rules_list_the_valid_ones(rule):
    with pytest.raises(ValueError, match="year, quarter, month, years:N"):
        parse_bin_rule(rule)


def test_named_bins_follow_the_given_order():
    assert order_named_bins(["b", "a", "c", "a"]) == ["a", "b", "c"]
    assert order_named_bins(["era_10", "era_2", "era_1"]) == ["era_1", "era_2", "era_10"]  # numbers as numbers
    with pytest.raises(ValueError, match="names a bin twice"):
        order_named_bins(["a"], ["a", "b", "a"])
    assert order_named_bins(["spring", "autumn"], ["spring", "summer", "autumn"]) == ["spring", "autumn"]
    with pytest.raises(ValueError, match=r"\['winter'\] are in the data but not in --bins"):
        order_named_bins(["spring", "winter"], ["spring", "autumn"])
