"""bench/data_loading.py --quick runs end to end (synthetic JPEGs -> CLEAR-10 build + cache -> throughput)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_reports_every_path(tmp_path):
    out = tmp_path / "data_loading.json"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "data_loading.py"), "--quick",
                           "--output", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synthetic" in proc.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["image_size"] == 224 and report["cache_size"] == 256
    assert "synthetic" in report["data"]["kind"]
    assert report["results"] and report["results"][0]["workers"] == 0
    for row in report["results"]:
        assert row["folder"]["images_per_s"] > 0 and row["packed"]["images_per_s"] > 0
        assert row["ratio_packed_over_folder"] == round(row["packed"]["images_per_s"] /
                                                        row["folder"]["images_per_s"], 2)
        assert row["packed_batch"]["images_per_s"] > 0 and row["packed_batch"]["images"] >= row["folder"]["images"]
        assert row["ratio_packed_batch_over_folder"] == round(row["packed_batch"]["images_per_s"] /
                                                              row["folder"]["images_per_s"], 2)
        assert row["packed_crops"]["images_per_s"] > 0
    assert report["device"] == "cpu" and set(report["paths"]) == {"folder", "packed", "packed_batch", "packed_crops"}
