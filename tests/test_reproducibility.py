"""Reproducible to the bit: a source model depends on its own stage seed only (SPEC: explicit seeds per stage)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import torch

from conftest import SOURCE_BATCH, SOURCE_EPOCHS, TINY_MODEL, UPSTREAM_EPOCHS


def test_source_model_is_bitwise_identical_with_or_without_the_upstream_checkpoint(digits_root, tmp_path,
                                                                                   monkeypatch):
    """The same source trained in a fresh results folder (the upstream pretraining runs first, in the same
    process, and consumes random numbers) and in one where the upstream checkpoint already exists (reused from
    disk): bitwise-equal weights. Its own folder and group, so it runs beside the trained-sources tests."""
    from multisource.models.checkpoint import read_checkpoint
    from multisource.options import TrainOptions
    from multisource.training import start as start_module
    from multisource.training.fit import SourceTrainConfig
    from multisource.training.source import train_source
    from multisource.training.upstream import ensure_upstream

    # The tests' shorter upstream recipe (the same on both sides), so the test takes seconds.
    monkeypatch.setattr(start_module, "ensure_upstream", functools.partial(ensure_upstream, epochs=UPSTREAM_EPOCHS))
    cfg = SourceTrainConfig(dataset="drift_digits", bin="era_2", model_name=TINY_MODEL, max_epochs=SOURCE_EPOCHS,
                            batch_size=SOURCE_BATCH, seed=0)
    upstream_rel = Path("drift_digits") / "upstream" / f"{TINY_MODEL}.ckpt"
    states = {}
    for name in ("upstream pretrained first", "upstream reused from disk"):
        results = tmp_path / name.replace(" ", "_")
        if name == "upstream reused from disk":
            (results / upstream_rel).parent.mkdir(parents=True)
            shutil.copy(tmp_path / "upstream_pretrained_first" / upstream_rel, results / upstream_rel)
        opts = TrainOptions(data_root=str(digits_root), results_dir=str(results), progress=False)
        states[name] = read_checkpoint(train_source(cfg, opts)["checkpoint"])["state_dict"]
    first, second = states.values()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_upstream_checkpoint_is_reused_on_the_same_build_and_pretrained_again_on_another(digits_root, tmp_path,
                                                                                         monkeypatch):
    """A rebuilt dataset may put upstream images into the bins' test splits: its upstream start is made again."""
    from multisource.data.loaders import DatasetHandle, open_dataset
    from multisource.models.checkpoint import read_checkpoint_meta
    from multisource.options import TrainOptions
    from multisource.training.fit import SourceTrainConfig
    from multisource.training.upstream import ensure_upstream

    opts = TrainOptions(data_root=str(digits_root), results_dir=str(tmp_path), progress=False)
    handle = open_dataset("drift_digits", digits_root)
    cfg = SourceTrainConfig(dataset="drift_digits", model_name=TINY_MODEL, batch_size=SOURCE_BATCH, seed=0)
    path = ensure_upstream(handle, cfg, opts, epochs=1)
    assert read_checkpoint_meta(path)["data_fingerprint"] == handle.fingerprint is not None
    made = path.stat().st_mtime_ns
    assert ensure_upstream(handle, cfg, opts, epochs=1) == path and path.stat().st_mtime_ns == made  # reused
    monkeypatch.setattr(DatasetHandle, "fingerprint", property(lambda self: "another-build"))
    ensure_upstream(handle, cfg, opts, epochs=1)
    assert read_checkpoint_meta(path)["data_fingerprint"] == "another-build" and path.stat().st_mtime_ns != made
