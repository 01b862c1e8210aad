"""Protocols side by side: every method's accuracy under each protocol on the targets they share, and each
protocol's difference to the first one, paired on the same test examples (``summarize --protocols A B``).

A target's test split does not depend on the protocol (only which bins are its sources does), so a method's
results under two protocols are paired example by example, as two methods are in a comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..measure.statistics import holm, mean_over_targets_interval
from ..models.factory import resolve_model
from ..paths import model_results_dir
from ..utils.io import atomic_write, write_json, write_text
from ..utils.seed import derive_seed
from .protocols import canonical_protocol
from .summary import _dataset_name, collect, compare_collected, paired_vs_reference, screened_key, summary_dir

SIDE_BY_SIDE_SCHEMA_VERSION = 1


def _restricted(summary: dict, targets: Sequence[str]) -> dict:
    """A method summary holding only ``targets`` (the ones every protocol has)."""
    return {**summary, "targets": {t: r for t, r in summary["targets"].items() if t in targets}}


def protocols_side_by_side(results_dir: str | Path, dataset: str, model: str,
                           protocols: Sequence[str]) -> dict[str, Any]:
    """Rows per method: accuracy over the shared targets under each protocol (95% stratified bootstrap interval)
    and each later protocol minus the first (paired per target; a paired t-test over targets, Holm-corrected
    across methods)."""
    results_dir, model = Path(results_dir), resolve_model(model).name
    protocols = list(dict.fromkeys(canonical_protocol(p) for p in protocols))
    if len(protocols) < 2:
        raise ValueError(f"--protocols needs at least two protocols to put side by side, got {protocols}.")
    name = _dataset_name(dataset)
    per: dict[str, tuple[dict, dict, dict]] = {}
    for protocol in protocols:
        found = collect(results_dir, name, model, protocol)
        if not found:
            raise FileNotFoundError(f"No {protocol} results under {model_results_dir(results_dir, name, model, protocol)}"
                                    f"; run a sweep with --protocol {protocol} first.")
        per[protocol] = compare_collected(screened_key(dataset, found), model, found, protocol)
    shared = [t for t in per[protocols[0]][2]["targets"] if all(t in per[p][2]["targets"] for p in protocols)]
    methods = list(dict.fromkeys(m for p in protocols for m in per[p][0]))
    first = protocols[0]
    rows, diffs = [], {}
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for p in protocols:
            summaries, correct, _ = per[p]
            by_target = correct.get(m, {})
            parts = [by_target[t] for t in shared if t in by_target]
            means = [summaries[m]["targets"][t]["metrics"]["test_accuracy"]["mean"] for t in shared
                     if m in summaries and t in summaries[m]["targets"]]
            complete = len(means) == len(shared) and None not in means
            row[p] = {"accuracy": sum(means) / len(means) if complete else None,
                      "ci95": mean_over_targets_interval(parts, seed=derive_seed(0, "protocols", m, p))
                      if complete and len(parts) == len(shared) else None}
        for p in protocols[1:]:
            (s_first, c_first, _), (s_p, c_p, _) = per[first], per[p]
            if m in s_first and m in s_p:
                diffs[(m, p)] = paired_vs_reference(m, _restricted(s_p[m], shared), _restricted(s_first[m], shared),
                                                    c_p.get(m, {}), c_first.get(m, {}))
        rows.append(row)
    for p in protocols[1:]:  # one family of tests per protocol pair: Holm across methods
        for m, p_holm in holm({m: d.get("p_value") for (m, q), d in diffs.items() if q == p}).items():
            diffs[(m, p)]["p_value_holm"] = p_holm
    for row in rows:
        row["vs_" + first] = {p: diffs.get((row["method"], p)) for p in protocols[1:]}
    return {"schema_version": SIDE_BY_SIDE_SCHEMA_VERSION, "kind": "protocols_side_by_side", "dataset": name,
            "model": model, "protocols": protocols, "shared_targets": shared, "rows": rows,
            "notes": {"accuracy": "mean over the targets every protocol has of each target's test accuracy (mean "
                                  "over trials), with a 95% stratified bootstrap interval over test examples",
                      "difference": f"protocol - {first} for the same method, per target with a paired bootstrap "
                                    "interval on the same test examples, over targets a paired t-test "
                                    "(Holm-corrected across methods); trials are seeds, never samples"}}


def _cell(entry: dict) -> str:
    if entry["accuracy"] is None:
        return "-"
    ci = entry["ci95"]
    return f"{entry['accuracy']:.4f}" + ("" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]")


def _diff_cell(d: dict | None) -> str:
    if not d or d.get("mean_difference") is None:
        return "-"
    hits = [e for e in d["per_target"].values() if e.get("distinguishable")]
    p = d.get("p_value_holm")
    return (f"{d['mean_difference']:+.4f} (p {'-' if p is None else format(p, '.3g')}; "
            f"{len(hits)}/{len(d['per_target'])} targets apart)")


def side_by_side_markdown(sbs: dict) -> str:
    protocols, first = sbs["protocols"], sbs["protocols"][0]
    head = ["method", *protocols, *(f"{p} - {first}" for p in protocols[1:])]
    lines = [f"# {sbs['dataset']} / {sbs['model']}: protocols side by side", "",
             f"Test accuracy over the {len(sbs['shared_targets'])} target(s) every protocol has "
             f"({', '.join(sbs['shared_targets'])}), 95% interval; the difference to {first} is paired on the same "
             "test examples (p: Holm-corrected paired t-test over targets; targets apart: paired interval excludes 0).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sbs["rows"]:
        cells = [_cell(r[p]) for p in protocols] + [_diff_cell(r["vs_" + first][p]) for p in protocols[1:]]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_side_by_side(results_dir: str | Path, dataset: str, model: str, protocols: Sequence[str]) -> dict[str, Path]:
    """protocols_<a>_vs_<b>.{json,csv,md} in the first protocol's summaries."""
    sbs = protocols_side_by_side(results_dir, dataset, model, protocols)
    out = summary_dir(Path(results_dir), sbs["dataset"], sbs["model"], sbs["protocols"][0])
    stem = "protocols_" + "_vs_".join(p.replace(":", "-") for p in sbs["protocols"])
    first = sbs["protocols"][0]
    frame = pd.DataFrame([{"method": r["method"], "protocol": p, "accuracy": r[p]["accuracy"],
                           "ci95_low": (r[p]["ci95"] or [None])[0], "ci95_high": (r[p]["ci95"] or [None, None])[1],
                           f"diff_vs_{first}": (r["vs_" + first].get(p) or {}).get("mean_difference"),
                           "p_value_holm": (r["vs_" + first].get(p) or {}).get("p_value_holm")}
                          for r in sbs["rows"] for p in sbs["protocols"]])
    return {"protocols_json": write_json(out / f"{stem}.json", sbs),
            "protocols_csv": atomic_write(out / f"{stem}.csv", lambda p: frame.to_csv(p, index=False)),
            "protocols_md": write_text(out / f"{stem}.md", side_by_side_markdown(sbs))}
