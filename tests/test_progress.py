"""Progress bars in a log file: lines, not one line of carriage-return redraws."""

from __future__ import annotations

import io
import time

from multisource.utils import progress


def test_a_bar_writing_to_a_file_writes_whole_lines(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.001)
    out = io.StringIO()  # not a terminal, like nohup's or SLURM's output file
    for _ in progress.progress_bar(range(5), desc="Rendering", stream=out, leave=False, mininterval=0, miniters=1):
        time.sleep(0.01)  # longer than the interval: every step redraws
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("Rendering:") for line in lines), lines
    assert "0/5" in lines[0] and any("5/5" in line for line in lines)


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    list(progress.progress_bar(range(3), enabled=False, stream=out))
    assert out.getvalue() == ""
