"""The typed result record: a metrics.json written by an earlier version (schema 1) is still read, reading and
writing keeps every key, and a value no summary may average is refused when read, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from multisource.experiment.record import (SCHEMA_VERSION, ExperimentRecord, RecordProblem, read_record,
                                           write_record)
from multisource.experiment.summary import METRICS, collect, write_summaries
from multisource.utils.io import read_json

from conftest import METRIC_PATHS, file_value

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_schema1.json"  # written by the runner of 8a7805f


def test_a_schema_1_file_reads_into_the_record_with_every_summary_value():
    raw = json.loads(FIXTURE.read_text())
    assert raw["schema_version"] == 1 and "before_finetune" in raw  # schema 1: a stage at the top level
    record = ExperimentRecord.from_json(raw)
    assert (record.method, record.target, record.trial, record.sources) == ("task_arithmetic", "era_3", 1,
                                                                            ["era_2", "era_4"])
    assert record.stages["before_finetune"].test_accuracy == raw["before_finetune"]["test_accuracy"]
    assert record.config.method_config == raw["config"]["method_config"]
    assert record.environment.git_commit == raw["environment"]["git_commit"]
    assert record.val.confusion_matrix == raw["val"]["confusion_matrix"]
    for key, read in METRICS.items():  # every metric the summaries average, against the file's own numbers
        assert read(record) == file_value(raw, key), key
    assert set(METRIC_PATHS) == set(METRICS)


def test_reading_and_writing_keeps_every_key(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    record = ExperimentRecord.from_json(raw)
    write_record(tmp_path, record)
    again = read_json(tmp_path / "metrics.json")
    assert again["schema_version"] == SCHEMA_VERSION == 2  # written in the current layout
    moved = {k: v for k, v in raw.items() if k not in ("before_finetune", "schema_version")}
    assert {k: again[k] for k in moved} == moved and again["stages"] == {"before_finetune": raw["before_finetune"]}
    assert ExperimentRecord.from_json(again).to_json() == record.to_json()
    assert read_record(tmp_path).folder == tmp_path


def test_the_summaries_read_an_old_result_beside_a_new_one(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    run = tmp_path / "drift_digits" / "tiny-resnet" / "task_arithmetic" / "era_3"
    for trial, schema in ((1, 1), (2, SCHEMA_VERSION)):
        folder = run / f"trial_{trial}"
        folder.mkdir(parents=True)
        shutil.copy(FIXTURE.with_name("test_predictions_schema1.csv"), folder / "test_predictions.csv")
        data = dict(raw, trial=trial)
        if schema != 1:
            data = ExperimentRecord.from_json(data).to_json()
            assert "before_finetune" not in data and "before_finetune" in data["stages"]
        (folder / "metrics.json").write_text(json.dumps(data))
    found = collect(tmp_path, "drift_digits", "tiny-resnet")["task_arithmetic"]
    assert not found["failed"] and [r.trial for r in found["finished"]] == [1, 2]
    summary = read_json(write_summaries(tmp_path, "drift_digits", "tiny-resnet", plots=False)["task_arithmetic"])
    before = summary["targets"]["era_3"]["metrics"]["test_accuracy_before_finetune"]
    assert before["values"] == [raw["before_finetune"]["test_accuracy"]] * 2


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["val"].update(accuracy=float("inf")), "'val.accuracy' is inf, not a finite number"),
    (lambda r: r["before_finetune"].update(test_accuracy=2.0), "'stages.before_finetune.test_accuracy' is 2.0"),
    (lambda r: r["memory"].update(max_models_resident=-1), "'memory.max_models_resident' is -1, outside"),
    (lambda r: r["information_used"].update(num_source_models=1.5), "'information_used.num_source_models' is 1.5"),
    (lambda r: r.update(schema_version=99), "schema_version 99 is not one this version reads"),
    (lambda r: r.update(status="failed"), "status is 'failed', not complete"),
    (lambda r: r.pop("test"), "'test' is missing"),
])
def test_a_value_no_summary_may_average_is_refused_by_name(edit, message):
    raw = json.loads(FIXTURE.read_text())
    edit(raw)
    with pytest.raises(RecordProblem, match=message.replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        ExperimentRecord.from_json(raw)
