"""Every phase of every merge stays flat in the number of sources K: resnet18-size sources, K = 2 and 6, one fresh
process per (method, K) through the memory bench's own measurement, and no phase's peak RSS may grow by more than
a quarter of one model. And the merges give back a checkpoint's whole mapping once done with it: the per-tensor
release leaves the pages the kernel maps around each read (hundreds of KiB per checkpoint, adding up over K)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import memory_vs_sources as bench  # noqa: E402
from common import run_forked  # noqa: E402

MODEL, SIZE, KS = "resnet18", 32, (2, 6)


@pytest.fixture(scope="module")
def resnet18_sources(digits_root, tmp_path_factory) -> dict:
    from multisource.data.loaders import open_dataset

    classes = open_dataset("drift_digits", digits_root).classes
    folder = tmp_path_factory.mktemp("resnet18_sources")
    return run_forked(bench.make_checkpoints, str(folder), MODEL, classes, SIZE, max(KS), 1e-3)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_phase_of_a_merge_grows_with_the_number_of_sources(digits_root, resnet18_sources):
    opts = {"data_root": str(digits_root), "model": MODEL, "image_size": SIZE, "device": "cpu", "batch_size": 8,
            "train_images": 8, "eval_images": 8, "epochs": 0}  # the merge phases alone, one batch scored
    rows = [run_forked(bench.measure, method, k, resnet18_sources, opts, timeout=300)
            for method in bench.FLAT for k in KS]
    assert all(r["steady_malloc"] for r in rows)  # RSS follows live memory, or the numbers are noise
    growth = bench.phase_growth(rows, list(KS))
    assert set(growth) == set(bench.FLAT)
    grown = {m: {p: g for p, g in phases.items() if g > 0.25} for m, phases in growth.items()}
    assert not any(grown.values()), f"phases whose peak RSS grew by more than 1/4 model from K=2 to K=6: {grown}"
    by = {(r["method"], r["K"]): r for r in rows}
    assert by["ties", 6]["max_models_resident"] <= 3 and by["grasp", 6]["max_models_resident"] == 2
    assert {"merge", "select"} <= set(by["ties", 6]["peak_rss_by_phase"])  # the phases measured are the merge's


def _resident_kib(path: Path) -> int:
    """This process's resident KiB of the mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_a_merge_gives_back_each_checkpoints_whole_mapping(digits_root, resnet18_sources, monkeypatch):
    from multisource.methods import base
    from multisource.methods.inputs import run_method, source_pool, target_data

    opened = []  # kept open past the merge, so their mappings can be inspected after it
    real_open = base.SourcePool.open_lazy

    def keep(pool, name):
        opened.append(real_open(pool, name))
        return opened[-1]

    monkeypatch.setattr(base.SourcePool, "open_lazy", keep)
    target = target_data("drift_digits", "era_5", model=MODEL, data_root=digits_root, batch_size=8, image_size=SIZE)
    names = list(resnet18_sources)[:3]
    pool = source_pool({n: resnet18_sources[n] for n in names}, target, model=MODEL)
    run_method("ties", pool, target, {"lambdas": (1.0,), "finetune_epochs": 0})
    assert len(opened) == 3
    for ckpt in opened:  # the per-tensor release alone leaves about 600 KiB of each resnet18 checkpoint here
        assert _resident_kib(ckpt.path) <= 64, ckpt.path
    ckpt = opened[0]
    for name in ckpt.keys():
        ckpt.read(name)
    ckpt.release_pages()
    assert _resident_kib(ckpt.path) <= 64
