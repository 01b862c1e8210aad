"""The paper-named sweep scripts exist, call the shared sweep CLI, and accept the SPEC 8 flags and --config."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from multisource.cli import sweep as sweep_cli
from multisource.config import ConfigError
from multisource.experiment.sweep import DEFAULT_METHODS
from multisource.methods.base import list_methods

ROOT = Path(__file__).resolve().parents[1]
METHODS = tuple(list_methods())  # every registered method has its wrappers and README
DATASETS = ("clear10", "clear100", "yearbook", "drift_digits")
COMMON = ["--num_trials", "2", "--model", "mobilevit-xxs", "--seed", "7", "--batch_size", "16",
          "--precision", "16-mixed", "--data_root", "/data/x", "--results_dir", "/tmp/r", "--device", "cpu",
          "--num_workers", "0"]
METHOD_FLAGS = {
    "ensemble": (["--voting", "hard"], {"voting": "hard"}),
    "fusion": (["--finetune_epochs", "2", "--learning_rate", "1e-4"], {"finetune_epochs": 2, "learning_rate": 1e-4}),
    "grasp": (["--initial_epochs", "2", "--finetune_epochs", "4", "--num_alignment_batches", "2",
               "--alignment_threshold", "0.5", "--learning_rate", "1e-4"],
              {"initial_epochs": 2, "finetune_epochs": 4, "num_alignment_batches": 2, "alignment_threshold": 0.5,
               "learning_rate": 1e-4}),
    "pearl": (["--adapter_dim", "8", "--composition_epochs", "2", "--learning_rate", "1e-4", "--adapter_init",
               "zero", "--adapter_data", "source"],
              {"adapter_dim": 8, "composition_epochs": 2, "learning_rate": 1e-4, "adapter_init": "zero",
               "adapter_data": "source"}),
    "target_only": (["--head_lr_multiplier", "5"], {"head_lr_multiplier": 5.0}),
    "source_finetune": (["--pick", "best-val"], {"pick": "best-val"}),
    "task_arithmetic": (["--lambdas", "0.5", "1.0"], {"lambdas": (0.5, 1.0)}),
    "ties": (["--density", "0.5"], {"density": 0.5}),
    "dare": (["--drop_rate", "0.3", "--merge", "ties"], {"drop_rate": 0.3, "merge": "ties"}),
    "soup": (["--recalibrate_bn"], {"recalibrate_bn": True}),
}


def parse(argv, method=None, dataset=None):
    """(SweepConfig, SweepOptions) exactly as the sweep command resolves them."""
    from multisource.experiment.settings import cli_layer, read_settings, resolve_sweep

    parser, owners = sweep_cli.build_parser(method, dataset)
    args = parser.parse_args(argv)
    cli = cli_layer(args, exclude=("config", "verbose", "dry_run"))
    return resolve_sweep(read_settings(args.config), cli, method=method, dataset=dataset, method_flags=owners)


def values(cfg, method: str, expected: dict) -> dict:
    """The fields of ``method``'s resolved config that ``expected`` names."""
    return {k: getattr(cfg.method_configs[method], k) for k in expected}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_wrapper_calls_the_shared_sweep_with_its_method_and_dataset(method, dataset, monkeypatch):
    script = ROOT / "experiments" / method / f"run_all_{method}_{dataset}.py"
    assert script.is_file() and len(script.read_text().splitlines()) <= 8  # thin
    seen = {}
    monkeypatch.setattr(sweep_cli, "sweep_main", lambda argv=None, **kw: seen.update(kw) or 0)
    monkeypatch.setattr(sys, "argv", [str(script)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 0 and seen == {"method": method, "dataset": dataset}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_wrapper_accepts_the_paper_flags(method, dataset):
    flags, expected = METHOD_FLAGS[method]
    target = {"clear10": "year_1-2", "clear100": "year_3-4", "yearbook": "1950s_1960s", "drift_digits": "era_2"}
    cfg, opts = parse(COMMON + ["--targets", target[dataset]] + flags, method, dataset)
    assert (cfg.dataset, cfg.methods, cfg.models, cfg.num_trials, cfg.seed, cfg.batch_size) == (
        dataset, (method,), ("mobilevit-xxs",), 2, 7, 16)
    assert cfg.targets == (target[dataset],)
    assert values(cfg, method, expected) == expected
    assert (opts.precision, opts.data_root, opts.results_dir, opts.device) == ("16-mixed", "/data/x", "/tmp/r", "cpu")
    assert opts.executor == "local"


def test_every_method_has_a_paper_flag_row():
    assert sorted(METHOD_FLAGS) == sorted(METHODS)


def test_run_all_takes_the_merging_baselines_flags_when_it_runs_them():
    merges = ["task_arithmetic", "ties", "dare", "soup"]
    flags = [f for m in merges for f in METHOD_FLAGS[m][0]]
    cfg, _ = parse(["--dataset", "clear10", "--methods", *merges, *COMMON, *flags])
    assert cfg.methods == tuple(merges)
    assert {m: cfg.method_configs[m].lambdas for m in ("task_arithmetic", "ties", "dare")} == dict.fromkeys(
        ("task_arithmetic", "ties", "dare"), (0.5, 1.0))  # a shared flag applies to each method that has it
    assert (cfg.method_configs["ties"].density, cfg.method_configs["dare"].density) == (0.5, 0.5)
    assert cfg.method_configs["soup"].recalibrate_bn and cfg.method_configs["dare"].merge == "ties"


def test_run_all_accepts_every_method_flag_and_applies_shared_ones_to_each():
    all_flags = [f for m in DEFAULT_METHODS for f in METHOD_FLAGS[m][0]]
    cfg, sweep = parse(["--dataset", "clear10"] + COMMON + all_flags + ["--executor", "ray", "--ray_address",
                                                                            "auto", "--train_missing"])
    assert cfg.methods == DEFAULT_METHODS
    assert cfg.method_configs["ensemble"].voting == "hard"
    assert {m: cfg.method_configs[m].learning_rate for m in ("fusion", "grasp", "pearl")} == dict.fromkeys(
        ("fusion", "grasp", "pearl"), 1e-4)
    assert cfg.method_configs["grasp"].alignment_threshold == 0.5
    assert not hasattr(cfg.method_configs["grasp"], "adapter_dim")
    assert (sweep.executor, sweep.ray_address, sweep.train_missing) == ("ray", "auto", True)


def test_config_file_with_per_method_settings_and_cli_override(tmp_path):
    cfg_file = tmp_path / "sweep.yaml"
    cfg_file.write_text(
        "dataset: drift_digits\nmodel: tiny-resnet\nnum_trials: 2\ntargets: [era_3, era_5]\n"
        "learning_rate: 1e-3  # every method that has it\nworkers: 2\n"
        "methods:\n  grasp: {learning_rate: 2e-3, initial_epochs: 5}\n  fusion: {}\n  ensemble: {voting: logits}\n"
        "source_training: {max_epochs: 10}\n")
    cfg, sweep = parse(["--config", str(cfg_file), "--finetune_epochs", "7"])
    assert cfg.methods == ("grasp", "fusion", "ensemble") and cfg.targets == ("era_3", "era_5")
    grasp = {"learning_rate": 2e-3, "initial_epochs": 5, "finetune_epochs": 7}
    assert values(cfg, "grasp", grasp) == grasp
    assert values(cfg, "fusion", {"learning_rate": 1e-3, "finetune_epochs": 7}) == {"learning_rate": 1e-3,
                                                                                    "finetune_epochs": 7}
    assert cfg.method_configs["ensemble"].voting == "logits"
    # a top-level setting applies to every stage that has it: training's learning rate too
    assert cfg.source_training == {"max_epochs": 10, "learning_rate": 1e-3} and sweep.workers == 2
    cfg, _ = parse(["--config", str(cfg_file), "--methods", "grasp", "--learning_rate", "3e-3"])
    assert cfg.methods == ("grasp",) and cfg.method_configs["grasp"].learning_rate == 3e-3
    # a paper wrapper reads the same file and keeps to its own method
    cfg, _ = parse(["--config", str(cfg_file)], "pearl", "drift_digits")
    assert cfg.methods == ("pearl",) and cfg.method_configs["pearl"].learning_rate == 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--methods", "grasp", "--voting", "hard"], "--voting"),
    (["--methods", "grasp", "--targets", "year_1-2"], "not bins"),
    (["--num_trials", "0"], "num_trials"),
])
def test_bad_sweep_settings_fail_with_a_clear_message(argv, message, capsys):
    with pytest.raises((ConfigError, KeyError), match=message):
        parse(["--dataset", "drift_digits"] + argv)


def test_an_unknown_method_lists_the_registered_ones(capsys):
    with pytest.raises(SystemExit):
        parse(["--methods", "nope"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "'grasp'" in err


@pytest.mark.slow
def test_a_wrapper_runs_from_its_own_folder(trained_sources, tmp_path, monkeypatch, capsys):
    """The paper's command as written (cd experiments/ensemble && python run_all_...), here as a dry run."""
    monkeypatch.chdir(ROOT / "experiments" / "ensemble")
    monkeypatch.setattr(sys, "argv", [
        "run_all_ensemble_drift_digits.py", "--num_trials", "2", "--model", "tiny-resnet", "--targets", "era_1",
        "era_2", "--data_root", str(trained_sources["data_root"]), "--checkpoint_dir",
        str(trained_sources["checkpoint_dir"]), "--results_dir", str(tmp_path), "--dry_run"])
    with pytest.raises(SystemExit) as done:  # in this interpreter (run_grasp_experiment.py has the subprocess test)
        runpy.run_path("run_all_ensemble_drift_digits.py", run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "2 experiments" in out and "ensemble era_2 trial 1" in out and "to run" in out
    assert "ensemble once per target: deterministic" in out and "trial 2" not in out


def test_a_sectioned_config_file_is_accepted(tmp_path):
    """A sectioned file: sweep/run sections, sources (source training, kept for --train_missing) and data."""
    cfg_file = tmp_path / "demo.yaml"
    cfg_file.write_text(
        "dataset: drift_digits\nmodel: tiny-resnet\ndata: {image_size: 32, seed: 42}\n"
        "sources: {max_epochs: 10, learning_rate: 1.0e-3}\n"
        "sweep:\n  targets: [era_1, era_2]\n  num_trials: 2\n  methods: [ensemble, grasp]\n"
        "  method_configs:\n    ensemble: {voting: soft}\n    grasp: {initial_epochs: 3, learning_rate: 1.0e-3}\n"
        "    pearl: {adapter_dim: 16}\nrun: {workers: 2}\n")
    cfg, sweep = parse(["--config", str(cfg_file)])
    assert cfg.methods == ("ensemble", "grasp") and cfg.num_trials == 2 and cfg.targets == ("era_1", "era_2")
    assert values(cfg, "grasp", {"initial_epochs": 3, "learning_rate": 1e-3}) == {"initial_epochs": 3,
                                                                                 "learning_rate": 1e-3}
    assert cfg.source_training == {"max_epochs": 10, "learning_rate": 1e-3} and sweep.workers == 2


@pytest.mark.parametrize("method", METHODS)
def test_each_method_readme_documents_its_flags(method):
    import dataclasses

    from multisource.methods import get_method

    text = (ROOT / "experiments" / method / "README.md").read_text()
    assert f"run_all_{method}_clear10.py --num_trials 3 --model mobilevit-xxs" in text
    for f in dataclasses.fields(get_method(method).config_cls):
        assert f"--{f.name}" in text


def test_the_shipped_variants_file_dry_runs_every_variant(trained_sources, tmp_path, capsys):
    """configs/variants.yaml (the README's GRASP and PEARL variant table): every variant is planned as its own row."""
    from multisource.cli.sweep import sweep_main

    assert sweep_main(["--config", str(ROOT / "configs" / "variants.yaml"), "--data_root",
                       str(trained_sources["data_root"]), "--checkpoint_dir", str(trained_sources["checkpoint_dir"]),
                       "--results_dir", str(tmp_path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "120 experiments" in out
    for label in ("grasp[near-best]", "grasp[far-guard]", "pearl[base-rest]", "target_only era_5 trial 2"):
        assert label in out


def _table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first markdown table after ``heading``, keyed by the first cell's `label`."""
    block = text[text.index(heading):]
    rows, started = {}, False
    for line in block.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            label = cells[0].split("`")[1] if cells[0].count("`") >= 2 else cells[0]
            rows[label] = cells[1:]
        elif started:
            break
    return rows


def test_the_readme_variant_table_quotes_the_measured_tables_in_docs_methods():
    """The README's GRASP/PEARL variant rows are copies of docs/methods.md's two measured tables (drifting digits,
    then own data): a re-measured table there must be copied here too."""
    readme = (ROOT / "README.md").read_text()
    methods = (ROOT / "docs" / "methods.md").read_text()
    quoted = _table_rows(readme, "## Which GRASP setting to use")
    digits = _table_rows(methods, "## Options measured on the built-in benchmark")
    own = _table_rows(methods, "**The same sweep under stronger drift with little data**")
    rows = {k: v for k, v in quoted.items() if k.startswith(("grasp", "pearl"))}
    assert len(rows) >= 5
    for label, cells in rows.items():
        assert cells[0] == digits[label][0] and cells[1] == own[label][0], label
