"""Time stamps and time bins for imported datasets (pure functions over pandas; no images, no torch).

A column of time stamps (ISO dates or datetimes, years, or Unix seconds) is parsed into one datetime per row;
a bin rule (``year``, ``quarter``, ``month``, ``years:N``, ``edges:A,B,...`` or ``quantiles:N``) groups the rows
into bins named by their time range and ordered in time. Every problem names the row and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

import re

import numpy as np
import pandas as pd

# A time stamp before the first photograph or after tomorrow is a data error, not a date.
EARLIEST = pd.Timestamp("1826-01-01")
YEAR_RANGE = (1000, 9999)  # integers in this range are years; other numbers are Unix seconds
RULES = ("year", "quarter", "month", "years:N", "edges:A,B,...", "quantiles:N")
# A time zone offset is dropped, not converted: bins follow the local date the stamp was written in (a photo
# taken on the evening of 31 December belongs to that year, whatever UTC says).
# Only after a time of day: the "-08" of "2020-01-08" is a day, not an offset.
_OFFSET = re.compile(r"([T ]\d{2}:\d{2}(?::\d{2}(?:\.\d*)?)?)\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$")


def _wall_clock(text: pd.Series) -> pd.Series:
    return text.str.replace(_OFFSET, r"\1", regex=True)


class TimeStampError(ValueError):
    """A time stamp cannot be parsed or is implausible; the message names the row and the value."""


@dataclass(frozen=True)
class BinRule:
    kind: str  # year | quarter | month | years | edges | quantiles
    n: int = 0  # years:N, quantiles:N
    edges: tuple[pd.Timestamp, ...] = ()
    edges_are_years: bool = False

    def __str__(self) -> str:
        if self.kind in ("years", "quantiles"):
            return f"{self.kind}:{self.n}"
        if self.kind == "edges":
            return "edges:" + ",".join(str(e.year) if self.edges_are_years else e.date().isoformat()
                                       for e in self.edges)
        return self.kind


def latest_plausible() -> pd.Timestamp:
    return pd.Timestamp(datetime.now() + timedelta(days=1))


def parse_bin_rule(text: str) -> BinRule:
    """``year | quarter | month | years:N | edges:1990,2000,2010 | quantiles:N`` (edges: years or ISO dates)."""
    kind, _, arg = str(text).strip().partition(":")
    kind = kind.lower()
    fix = f"--bin_by {text!r} is not a bin rule; use one of {', '.join(RULES)}."
    if kind in ("year", "quarter", "month") and not arg:
        return BinRule(kind)
    if kind in ("years", "quantiles"):
        if not arg.isdigit() or int(arg) < 1 or (kind == "quantiles" and int(arg) < 2):
            raise ValueError(f"{fix} ({kind}:N needs a whole number N >= {2 if kind == 'quantiles' else 1}.)")
        return BinRule(kind, n=int(arg))
    if kind == "edges" and arg:
        parts = [p.strip() for p in arg.split(",") if p.strip()]
        years = all(p.isdigit() and len(p) == 4 for p in parts)
        try:
            edges = tuple(pd.Timestamp(int(p), 1, 1) if years else pd.Timestamp(_OFFSET.sub(r"\1", p)) for p in parts)
        except (ValueError, TypeError):
            raise ValueError(f"{fix} (edges are years such as 1990 or ISO dates such as 2020-03-01.)") from None
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"{fix} (edges must increase: {', '.join(parts)}.)")
        return BinRule("edges", edges=edges, edges_are_years=years)
    raise ValueError(fix)


def _row(index: Any) -> str:
    return f"row {int(index) + 1}"


TIME_FORMATS = ("auto", "iso", "year", "unix", "excel")
# Unix seconds below this (1973-03-03) are far likelier Excel serial days (43831 = 2020-01-01) or a counter
# (era 1, 2, 3) than a real photo's time stamp: ``auto`` refuses them instead of binning them all into 1970.
MIN_AUTO_UNIX_S = 10**8
EXCEL_EPOCH = "1899-12-30"  # Excel's day 0 (its 1900 leap-year bug included), as pandas and openpyxl read it


def parse_timestamps(values: pd.Series, column: str = "timestamp", time_format: str = "auto") -> pd.Series:
    """One naive (UTC) datetime per row, from ISO strings, years, Unix seconds or Excel serial days.

    ``auto`` decides the column's kind once for all rows: all numbers in 1000-9999 are years, other numbers
    Unix seconds (refused below 1973, see MIN_AUTO_UNIX_S), anything else ISO 8601; the other formats say which.
    Rows are numbered from 1 (the first data row) in messages."""
    if time_format not in TIME_FORMATS:
        raise TimeStampError(f"--time_format {time_format!r} is not valid; choose one of {', '.join(TIME_FORMATS)}.")
    values = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):  # a typed column (Parquet): local wall-clock, as for text
        values = values.dt.tz_localize(None) if values.dt.tz is not None else values
        values = values.map(lambda t: t.isoformat() if pd.notna(t) else None)
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise TimeStampError(f"Empty time stamp in column '{column}' at {_row(i)} ({int(missing.sum())} empty in "
                             "all); fill it in or drop the row.")
    numbers = pd.to_numeric(values, errors="coerce")
    if time_format in ("year", "unix", "excel"):
        parsed = _numbers_as(numbers, values, column, time_format)
    elif numbers.notna().all() and time_format == "auto":
        year_like = (numbers == numbers.round()) & numbers.between(*YEAR_RANGE)
        if year_like.all():
            parsed = pd.to_datetime(numbers.astype(int).astype(str) + "-01-01", format="%Y-%m-%d")
        elif year_like.any():  # read as Unix seconds, a year would silently become 1970-01-01
            i = int(np.flatnonzero(year_like.to_numpy())[0])
            raise TimeStampError(f"Column '{column}' mixes years and Unix seconds: {values[i]!r} at {_row(i)} is a "
                                 "year, other rows are not; write every row the same way.")
        else:
            ymd = pd.to_datetime(numbers.astype("int64").astype(str), format="%Y%m%d", errors="coerce") \
                if bool((numbers == numbers.round()).all()) else pd.Series(pd.NaT, index=numbers.index)
            if ymd.notna().all():  # 20190301 read as Unix seconds would silently be August 1970
                raise TimeStampError(f"Column '{column}' holds numbers like {values[0]!r} that read as dates "
                                     "(YYYYMMDD), not Unix seconds; write them as ISO dates (2019-03-01).")
            if bool((numbers.abs() < MIN_AUTO_UNIX_S).all()):
                raise TimeStampError(
                    f"Column '{column}' holds small numbers ({numbers.min():g} .. {numbers.max():g}) that read as "
                    "Unix seconds would all fall in 1970-1973: Excel serial days or a counter? Say which with "
                    "--time_format excel (days since 1899-12-30) or --time_format unix, or give each row's bin in "
                    "a bin column (--bin_column, without --bin_by).")
            parsed = pd.to_datetime(numbers, unit="s", errors="coerce")
    else:
        text = _wall_clock(values.astype(str).str.strip())
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
        bad = parsed.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise TimeStampError(f"Cannot parse the time stamp {values[i]!r} in column '{column}' at {_row(i)} "
                                 f"({int(bad.sum())} unparsable in all); use ISO dates (2019-03-31, "
                                 "2019-03-31T14:05:00), years (2019) or Unix seconds.")
    late = latest_plausible()
    out_of_range = parsed.isna() | (parsed < EARLIEST) | (parsed > late)
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range.to_numpy())[0])
        raise TimeStampError(f"Time stamp {values[i]!r} in column '{column}' at {_row(i)} is outside the plausible "
                             f"range {EARLIEST.date()} .. {late.date()} ({int(out_of_range.sum())} such rows); "
                             "fix the value (a year read as Unix seconds, or a typo?).")
    return parsed


def _numbers_as(numbers: pd.Series, values: pd.Series, column: str, time_format: str) -> pd.Series:
    """A column read as years, Unix seconds or Excel serial days, as the user said."""
    bad = numbers.isna() | ((numbers != numbers.round()) if time_format == "year" else False)
    if bool(bad.any()):
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TimeStampError(f"--time_format {time_format} reads numbers, but column '{column}' holds {values[i]!r} at "
                             f"{_row(i)}; fix the value, or use another --time_format (auto reads ISO dates).")
    if time_format == "year":
        return pd.to_datetime(numbers.astype(int).astype(str) + "-01-01", format="%Y-%m-%d", errors="coerce")
    if time_format == "excel":
        return pd.to_datetime(numbers, unit="D", origin=EXCEL_EPOCH, errors="coerce")
    return pd.to_datetime(numbers, unit="s", errors="coerce")


def _fmt(t: pd.Timestamp) -> str:
    return t.date().isoformat() if t == t.normalize() else t.isoformat(timespec="seconds")


def _edge_name(rule: BinRule, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> str:
    if rule.edges_are_years:
        if lo is None:
            return f"before_{hi.year}"
        return f"{lo.year}_and_later" if hi is None else (f"{lo.year}" if hi.year - lo.year == 1
                                                          else f"{lo.year}-{hi.year - 1}")
    if lo is None:
        return f"before_{_fmt(hi)}"
    return f"{_fmt(lo)}_and_later" if hi is None else f"{_fmt(lo)}_to_{_fmt(hi - pd.Timedelta(days=1))}"


def _periods(times: pd.Series, rule: BinRule) -> tuple[pd.Series, dict[Any, tuple[str, Any, Any]]]:
    """A sortable key per row and, per key, (name, start, end-exclusive) of its bin."""
    if rule.kind in ("year", "quarter", "month"):
        freq = {"year": "Y", "quarter": "Q", "month": "M"}[rule.kind]
        periods = times.dt.to_period(freq)
        fmt = {"year": lambda p: str(p.year), "quarter": lambda p: f"{p.year}-Q{p.quarter}",
               "month": lambda p: f"{p.year}-{p.month:02d}"}[rule.kind]
        return periods, {p: (fmt(p), p.start_time, p.end_time.normalize() + pd.Timedelta(days=1))
                         for p in periods.unique()}
    if rule.kind == "years":
        y0 = int(times.dt.year.min())
        keys = (times.dt.year - y0) // rule.n
        info = {}
        for k in keys.unique():
            lo = y0 + int(k) * rule.n
            hi = lo + rule.n - 1
            info[k] = (f"{lo}" if rule.n == 1 else f"{lo}-{hi}", pd.Timestamp(lo, 1, 1), pd.Timestamp(hi + 1, 1, 1))
        return keys, info
    if rule.kind == "edges":
        keys = pd.Series(np.searchsorted(np.array(rule.edges, dtype="datetime64[ns]"), times.to_numpy(),
                                         side="right"), index=times.index)
        bounds = (None,) + rule.edges + (None,)
        return keys, {k: (_edge_name(rule, bounds[k], bounds[k + 1]), bounds[k], bounds[k + 1])
                      for k in keys.unique()}
    # quantiles: equal-count bins of the sorted time stamps; equal time stamps always share a bin
    codes = pd.qcut(times.astype("int64"), rule.n, labels=False, duplicates="drop") if times.nunique() > 1 else None
    if codes is None or codes.isna().any() or codes.nunique() < rule.n:
        made = 0 if codes is None else int(codes.nunique())
        raise ValueError(f"--bin_by quantiles:{rule.n} makes only {made} distinct bin(s): too many equal time stamps "
                         f"({times.nunique()} distinct); use fewer quantiles or another rule.")
    info = {}
    for k in sorted(codes.unique()):
        member = times[codes == k]
        info[k] = (f"{_fmt(member.min().normalize())}_to_{_fmt(member.max().normalize())}", member.min(),
                   None)
    names = [v[0] for v in info.values()]
    if len(set(names)) != len(names):  # bins within one day: name them to the second
        info = {k: (f"{_fmt(times[codes == k].min())}_to_{_fmt(times[codes == k].max())}", lo, hi)
                for k, (_, lo, hi) in info.items()}
    return codes, info


def assign_bins(times: pd.Series, rule: BinRule) -> tuple[pd.Series, list[dict[str, Any]]]:
    """(bin name per row, the non-empty bins in time order with their bounds and the rows' time range)."""
    times = pd.Series(times).reset_index(drop=True)
    keys, info = _periods(times, rule)
    names = keys.map(lambda k: info[k][0])
    bins = []
    for k in sorted(info):
        member = times[keys == k]
        name, lo, hi = info[k]
        bins.append({"name": name, "start": None if lo is None else _fmt(lo), "end_exclusive": None if hi is None
                     else _fmt(hi), "first": _fmt(member.min()), "last": _fmt(member.max()), "count": len(member)})
    return names, bins


def natural_key(name: str) -> list:
    """Sort key comparing runs of digits as numbers: era_2 before era_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def order_named_bins(names: Sequence[str], order: Sequence[str] = ()) -> list[str]:
    """Explicit bin names in the given order (every present bin must be named), else in natural order."""
    present = sorted(set(names), key=natural_key)
    if len(set(order)) != len(order):
        raise ValueError(f"--bins names a bin twice: {list(order)}.")
    if not order:
        return present
    unknown = [b for b in present if b not in order]
    if unknown:
        raise ValueError(f"Bins {unknown} are in the data but not in --bins {list(order)}; list every bin in time "
                         "order (or leave --bins out to sort the names).")
    return [b for b in order if b in present]
