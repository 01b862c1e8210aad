"""The comparison's columns, declared once: each column's value in comparison.json's rows, its CSV column and its
Markdown cell come from one declaration here, so adding a column is adding one :class:`Column`.

A row is computed from a method's summary (:class:`MethodRow`); comparison.csv holds the same values as raw
numbers (lists joined, per-target mappings spread into one column per target); comparison.md and comparison.tex
(booktabs) format the columns that have a header."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..utils.io import atomic_write, write_json, write_text


@dataclass(frozen=True)
class MethodRow:
    """What a comparison row is computed from: one method's summary and its paired comparison to the reference."""

    method: str
    summary: dict
    targets: list[str]
    paired: dict | None  # None for the reference method itself
    intervals: dict[str, list[float] | None] | None = None  # target -> 95% bootstrap interval of its accuracy

    def over_targets(self, metric: str) -> float | None:
        return self.summary["overall"]["mean_over_targets"][metric]["mean"]

    def pooled(self, metric: str, stat: str = "mean") -> float | None:
        return self.summary["overall"]["pooled"][metric][stat]

    def per_target(self, metric: str, stat: str = "mean") -> dict[str, float | None]:
        found = self.summary["targets"]
        return {t: found[t]["metrics"][metric][stat] if t in found else None for t in self.targets}


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def number(spec: str, scale: float = 1.0) -> Callable[[Any, dict, dict], str]:
    """A Markdown cell showing the value with ``spec`` after dividing by ``scale`` ('-' when null)."""
    return lambda value, row, comp: _fmt(value, spec, scale)


def _as_is(value: Any, row: dict, comp: dict) -> str:
    return "-" if value in (None, "") else str(value)


@dataclass(frozen=True)
class Column:
    """One column of the comparison.

    ``value``: the row's value, from the method's summary. ``header``: its Markdown header (formatted with the
    comparison, e.g. ``{reference}``; None keeps it out of the Markdown table). ``cell``: its Markdown text
    (value, row, comparison). ``per_target``: the value is {target: number}, spread into one column per target.
    ``in_csv``: whether comparison.csv carries it. ``shown``: whether the Markdown table shows it for this
    comparison."""

    key: str
    value: Callable[[MethodRow], Any]
    header: str | None = None
    cell: Callable[[Any, dict, dict], str] = _as_is
    per_target: bool = False
    in_csv: bool = True
    csv_name: str = "{key}_{target}"  # a per-target column's CSV names
    shown: Callable[[dict], bool] = lambda comp: True


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _accuracy_cell(value: Any, row: dict, comp: dict) -> str:
    text = _fmt(value, ".4f") + ("" if row["accuracy_std"] is None else f" ± {row['accuracy_std']:.4f}")
    if row["missing_targets"] and value is not None:
        n = len(comp["targets"])
        text += f" ({n - len(row['missing_targets'])}/{n} targets)"
    return text


def _difference_cell(value: Any, row: dict, comp: dict) -> str:
    if row["method"] == comp["reference"]:
        return "reference"
    return "-" if value is None else f"{value:+.4f} ({_fmt(row['p_value_holm_vs_reference'], '.3g')})"


def _merged(comp: dict) -> bool:
    return any(r.get("accuracy_before_finetune_mean") is not None for r in comp["methods"])


def _paired(key: str) -> Callable[[MethodRow], Any]:
    return lambda m: None if m.paired is None else m.paired.get(key)


COLUMNS: tuple[Column, ...] = (
    Column("method", lambda m: m.method, "method"),
    Column("num_experiments", lambda m: m.summary["num_experiments"], "n"),
    Column("num_failed", lambda m: m.summary["num_failed"], "failed"),
    Column("num_targets", lambda m: m.summary["num_targets"]),
    # targets others finished and this method did not: its mean is over fewer (maybe easier) targets
    Column("missing_targets", lambda m: [t for t in m.targets
                                         if not (m.summary["targets"].get(t) or {}).get("num_trials")]),
    Column("accuracy_mean", lambda m: m.over_targets("test_accuracy"), "accuracy (mean ± std)", _accuracy_cell),
    Column("accuracy_std", lambda m: m.summary["overall"]["mean_over_targets"]["test_accuracy"]["std"]),
    Column("accuracy_pooled_mean", lambda m: m.pooled("test_accuracy")),
    Column("accuracy_pooled_std", lambda m: m.pooled("test_accuracy", "std")),
    Column("f1_macro_mean", lambda m: m.over_targets("test_f1_macro")),
    Column("per_target_accuracy", lambda m: m.per_target("test_accuracy"), "{target}", number(".4f"),
           per_target=True, csv_name="accuracy_{target}"),
    Column("per_target_accuracy_std", lambda m: m.per_target("test_accuracy", "std"), per_target=True,
           in_csv=False),
    # over the target's test examples (trials averaged per example): what the figures' error bars show
    Column("per_target_accuracy_ci95", lambda m: {t: (m.intervals or {}).get(t) for t in m.targets}, per_target=True,
           in_csv=False),
    Column("accuracy_before_finetune_mean", lambda m: m.over_targets("test_accuracy_before_finetune"),
           "before fine-tuning", number(".4f"), shown=_merged),
    Column("flops_total_macs", lambda m: m.pooled("flops_total_macs"), "GMACs total", number(".2f", 1e9)),
    Column("flops_forward_per_image_macs", lambda m: m.pooled("flops_forward_per_image_macs"), "MMACs/image",
           number(".2f", 1e6)),
    Column("peak_memory_bytes", lambda m: m.pooled("peak_memory_bytes"), "peak memory MiB", number(".0f", 2**20)),
    Column("peak_memory_bytes_max", lambda m: m.pooled("peak_memory_bytes", "max")),
    Column("resident_model_bytes", lambda m: m.pooled("resident_model_bytes", "max"), "model memory MiB",
           number(".2f", 2**20)),
    Column("time_s", lambda m: m.pooled("time_s"), "time s", number(".1f")),
    Column("max_models_resident", lambda m: _int(m.pooled("max_models_resident", "max")), "max models",
           number(".0f")),
    Column("target_epochs", lambda m: m.pooled("target_epochs"), "target epochs", number(".0f")),
    Column("target_train_images", lambda m: m.pooled("target_train_images")),
    Column("information_used", lambda m: "; ".join(m.summary.get("information_used") or []), "information used"),
    Column("diff_vs_reference", _paired("mean_difference"), "Δ acc vs {reference} (p)", _difference_cell),
    Column("p_value_vs_reference", _paired("p_value")),
    Column("p_value_holm_vs_reference", _paired("p_value_holm")),
    Column("targets_vs_reference", _paired("n_targets")),
)


def comparison_row(m: MethodRow) -> dict[str, Any]:
    """A method's row of comparison.json: every declared column's value."""
    return {c.key: c.value(m) for c in COLUMNS}


def comparison_frame(comp: dict) -> pd.DataFrame:
    """The comparison as a pandas DataFrame of raw numbers (one row per method), as written to the CSV."""
    rows = []
    for r in comp["methods"]:
        row: dict[str, Any] = {}
        for c in (c for c in COLUMNS if c.in_csv):
            value = r.get(c.key)
            if c.per_target:
                row.update({c.csv_name.format(key=c.key, target=t): (value or {}).get(t) for t in comp["targets"]})
            else:
                row[c.key] = " ".join(value) if isinstance(value, list) else value
        rows.append(row)
    return pd.DataFrame(rows)


def table_cells(comp: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison's header and one row of cells per method: the columns that have a header, formatted as the
    Markdown and LaTeX tables show them."""
    shown = [c for c in COLUMNS if c.header is not None and c.shown(comp)]
    head = [h for c in shown for h in ([c.header.format(target=t, **comp) for t in comp["targets"]]
                                       if c.per_target else [c.header.format(**comp)])]
    rows = [[cell for c in shown for cell in ([c.cell((r.get(c.key) or {}).get(t), r, comp) for t in comp["targets"]]
                                              if c.per_target else [c.cell(r.get(c.key), r, comp)])]
            for r in comp["methods"]]
    return head, rows


def markdown_table(comp: dict) -> list[str]:
    """The comparison's Markdown table: one line per method, the columns that have a header."""
    head, rows = table_cells(comp)
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "±": r"$\pm$", "Δ": r"$\Delta$"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that prints it (the special characters escaped, ± and Δ in math mode)."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex_table(comp: dict) -> str:
    """The comparison's table as a LaTeX ``tabular`` with booktabs rules (\\usepackage{booktabs})."""
    head, rows = table_cells(comp)
    spec = "l" + "r" * (len(head) - 1)
    lines = [f"% {comp['dataset']} / {comp['model']}, protocol {comp.get('protocol')}: generated by multisource "
             "from comparison.json (needs \\usepackage{booktabs})", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in head) + r" \\", "\\midrule",
             *(" & ".join(latex_escape(c) for c in cells) + r" \\" for cells in rows),
             "\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_rows_summary(out: Path, stem: str, summary: dict, markdown: str,
                       plot: Callable[[dict, Path], Path] | None) -> dict[str, Path]:
    """Write a summary of rows (the data-efficiency and number-of-sources summaries) as ``<stem>.json`` (all of
    it), ``<stem>.csv`` (its rows, each interval as plain low/high columns), ``<stem>.md`` and, with ``plot``,
    ``<stem>.png`` and ``<stem>.pdf``; returns {"<stem>_<kind>": path}."""
    frame = pd.DataFrame(summary["rows"])
    intervals = [c for c in frame.columns if c.endswith("ci95")]
    for side in intervals:  # the CSV holds plain columns, not lists
        frame[f"{side}_low"] = [None if not isinstance(v, (list, tuple)) else v[0] for v in frame[side]]
        frame[f"{side}_high"] = [None if not isinstance(v, (list, tuple)) else v[1] for v in frame[side]]
    frame = frame.drop(columns=intervals)
    paths = {f"{stem}_json": write_json(out / f"{stem}.json", summary),
             f"{stem}_csv": atomic_write(out / f"{stem}.csv", lambda p: frame.to_csv(p, index=False)),
             f"{stem}_md": write_text(out / f"{stem}.md", markdown)}
    if plot is not None:
        paths[f"{stem}_png"] = plot(summary, out / f"{stem}.png")
        paths[f"{stem}_pdf"] = out / f"{stem}.pdf"
    return paths

